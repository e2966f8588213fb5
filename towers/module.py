"""`TwoTowerModule`: the LightningModule that trains a `UserTower` and an `ItemTower` together.

It owns the training step (sampled softmax over in-batch + extra negatives, summed over the
Matryoshka prefixes when `matryoshka` lists some), the optimisers (`RowAdam` over the id
tables, so a step touches only the rows in the batch; Adam over the bags and any dense table;
AdamW over everything else), and full-catalogue validation. It is not what serving loads:
export takes the plain tower modules out of it.

Under DDP (`trainer=ddp`) it trains what one process would train on the ranks' batches put
together (towers.distributed): item vectors gathered from every rank, shared negatives, metric
sums added up over ranks. DDP all-reduces dense gradients, which `RowAdam`'s lazy per-row updates
cannot take, so there the sparse id tables are trained with dense gradients and Adam: the same
arithmetic, since `RowAdam`'s weights follow dense Adam's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch import nn

from towers.config import NegativeConfig, OptimConfig
from towers.distributed import all_reduce_sum, gather_rows, world
from towers.losses import CosineContrastiveLoss, SampledSoftmaxLoss
from towers.matryoshka import Matryoshka
from towers.metrics import KS, RankingMetrics
from towers.optim import RowAdam
from towers.ranking import exact_top_k
from towers.scoring import Scorer, log_popularity
from towers.similarity import Similarity
from towers.text_model import TextModelEncoder
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower


@dataclass
class ItemCatalogue:
    """Every catalogue item's tower inputs and training popularity, indexed by item row."""

    inputs: dict[str, torch.Tensor]  # the item tower's inputs, (I, ...) each (towers.inputs)
    counts: torch.Tensor  # (I,) training interactions per item


class TwoTowerModule(L.LightningModule):
    def __init__(
        self,
        spec: FeatureSpec,
        catalogue: ItemCatalogue,
        towers: TowerConfig | None = None,
        loss: SampledSoftmaxLoss | CosineContrastiveLoss | None = None,
        negatives: NegativeConfig | None = None,
        optim: OptimConfig | None = None,
        popularity_prior: float = 0.0,
        matryoshka: Sequence[int] = (),
        matryoshka_weights: Sequence[float] | None = None,
        matryoshka_warmup: int = 0,
        matryoshka_loss: Sequence[Mapping[str, object] | None] | None = None,
        matryoshka_prior: Sequence[float | None] | None = None,
        ks: tuple[int, ...] = KS,
    ):
        """`popularity_prior`: beta of the served score's + beta log p(item) (towers.scoring),
        from the training counts; validation ranks with it, the loss never sees it. The
        `matryoshka*` settings: towers.matryoshka's `Matryoshka.parse` (empty: the loss on the
        full vector alone); validation monitors the full vector, logs each prefix beside it,
        each ranked with the prior it serves with (`served_prior`)."""
        super().__init__()
        self._epoch_loss: torch.Tensor | None = None  # training loss summed over the epoch
        self._epoch_steps = 0
        towers, negatives, optim = (
            towers or TowerConfig(),
            negatives or NegativeConfig(),
            optim or OptimConfig(),
        )
        self.spec, self.tower_config, self.negatives, self.optim = spec, towers, negatives, optim
        self.matryoshka = Matryoshka.parse(
            matryoshka,
            matryoshka_weights,
            towers.embedding_dim,
            towers.similarity,
            matryoshka_warmup,
            matryoshka_loss,
            matryoshka_prior,
        )
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "spec": spec.to_dict(),
                "towers": towers.to_dict(),
                "negatives": asdict(negatives),
                "optim": asdict(optim),
                "popularity_prior": popularity_prior,
                **_matryoshka_hparams(
                    matryoshka,
                    matryoshka_weights,
                    matryoshka_warmup,
                    matryoshka_loss,
                    matryoshka_prior,
                ),
            }
        )
        self.automatic_optimization = False  # one optimiser each: id tables, dense tables, the rest
        self._build_towers(towers, catalogue, popularity_prior)
        self.loss = loss or SampledSoftmaxLoss()
        # The loss of each trained dimension (the full vector's last); the prefixes' own losses,
        # where their settings differ, are registered (a learnable temperature trains with them).
        self._dimension_losses = (
            [self.loss] if self.matryoshka is None else self.matryoshka.losses(self.loss)
        )
        self.prefix_losses = nn.ModuleList(m for m in self._dimension_losses if m is not self.loss)
        self._register_catalogue(catalogue)
        # What validation and test rank by: the full vector (None), then each trained prefix.
        self.ks = tuple(ks)
        prefixes = self.matryoshka.prefixes if self.matryoshka is not None else ()
        self.rankings = {dim: RankingMetrics(ks) for dim in (None, *prefixes)}
        self._catalogue_vectors: dict[int | None, torch.Tensor] = {}
        # Set by configure_optimizers (under Lightning or a plain loop).
        self._row_adams: list[RowAdam] = []

    def _build_towers(
        self, towers: TowerConfig, catalogue: ItemCatalogue, popularity_prior: float
    ) -> None:
        """The user and item towers (the history reading the item id table when shared) and
        the scorer validation ranks by: the towers plus the prior, from the training counts."""
        self.user_tower = UserTower(self.spec, towers)
        self.item_tower = ItemTower(self.spec, towers)
        if towers.share_item_embeddings:
            self._tie_item_embeddings()
        self.popularity_prior = popularity_prior
        self.scorer = Scorer(
            [(self.user_tower, self.item_tower)],
            popularity_prior=popularity_prior,
            item_counts=catalogue.counts,
        )

    def _tie_item_embeddings(self) -> None:
        """The history reads the item tower's id table, where both exist. Tied in training;
        export writes each tower's own copy. The pooled history makes the tied table's gradient
        dense, so it is updated as one (see _row_wise)."""
        history, item_ids = self.user_tower.history_encoder, self.item_tower.id_table()
        if history is not None and item_ids is not None:
            history.table = item_ids

    def _register_catalogue(self, catalogue: ItemCatalogue) -> None:
        """The catalogue's item inputs and log popularity as buffers (they follow the module to
        its device; not saved in checkpoints)."""
        self._item_input_names = list(catalogue.inputs)
        for i, name in enumerate(self._item_input_names):
            self.register_buffer(f"_item_input_{i}", catalogue.inputs[name], persistent=False)
        self.register_buffer(
            "log_popularity", log_popularity(catalogue.counts).float(), persistent=False
        )

    @property
    def similarity(self) -> Similarity:
        return Similarity.parse(self.tower_config.similarity)

    # -- encoding -------------------------------------------------------------------------
    def item_inputs(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The item tower's inputs for catalogue rows (B,)."""
        return {
            name: getattr(self, f"_item_input_{i}")[rows]
            for i, name in enumerate(self._item_input_names)
        }

    def encode_users(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tower(inputs)  # (B, D)

    def encode_items(self, rows: torch.Tensor) -> torch.Tensor:
        return self.item_tower(self.item_inputs(rows))  # (B, D)

    @torch.no_grad()
    def encode_catalogue(self) -> torch.Tensor:
        """Served vectors of every item (I, D'): what validation ranks (towers.scoring)."""
        return self.scorer.served_items([self._catalogue_outputs()], self._catalogue_rows())

    def _catalogue_rows(self) -> torch.Tensor:
        return torch.arange(self.spec.num_items, device=self.log_popularity.device)  # (I,)

    @torch.no_grad()
    def _catalogue_outputs(self) -> torch.Tensor:
        """The item tower's output for every item (I, D), a pass at a time."""
        rows = self._catalogue_rows().split(self.scorer.items_per_pass)
        return torch.cat([self.encode_items(part) for part in rows])

    # -- training ---------------------------------------------------------------------------
    def _sample_negatives(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) extra negatives and their log expected counts, from torch's random stream: under
        DDP every rank's stream is seeded and advanced alike, so every rank draws the same ones."""
        m = self.negatives.num_negatives
        if self.negatives.distribution == "uniform":
            ids = torch.randint(0, self.spec.num_items, (m,), device=device)
            log_q = torch.full((m,), math.log(m / self.spec.num_items), device=device)
        else:
            ids = torch.multinomial(self.log_popularity.exp(), m, replacement=True)
            log_q = math.log(m) + self.log_popularity[ids]
        return ids, log_q

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.step_loss(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
        schedulers = self.lr_schedulers()
        for scheduler in (
            schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []
        ):
            scheduler.step()
        # Lightning's self.log costs about a millisecond a call on CPU (10% of a small step): the
        # epoch mean is accumulated here and the step loss logged every log_every_n_steps only.
        value = loss.detach()
        self._epoch_loss = value if self._epoch_loss is None else self._epoch_loss + value
        self._epoch_steps += 1
        if self._trainer is not None and batch_idx % self.trainer.log_every_n_steps == 0:
            self.log(
                "train/loss_step",
                value,
                prog_bar=True,
                on_step=True,
                on_epoch=False,
                sync_dist=True,
            )
        return loss

    def step_loss(self, batch: dict) -> torch.Tensor:
        """The training loss of `batch` (the optimisation is `training_step`'s). Under DDP: the
        loss of this rank's rows against every rank's items and the shared negatives, so that
        the ranks' mean is the loss one process computes over their batches put together."""
        rank, size = world()
        items = batch["item"]  # (B,) catalogue rows
        negatives, negative_log_q = (
            self._sample_negatives(items.device)
            if self.negatives.num_negatives > 0
            else (None, None)
        )
        user_inputs = batch["user_inputs"]
        item_inputs = self.item_inputs(items)
        negative_inputs = None if negatives is None else self.item_inputs(negatives)
        self._catch_up_rows(user_inputs, item_inputs, negative_inputs)
        user_vectors = self.encode_users(self._id_dropped("user", user_inputs, rank, size))
        item_vectors = self.item_tower(self._id_dropped("item", item_inputs, rank, size))  # (B, D)
        extra = {}
        if negatives is not None:
            negative_vectors = self.item_tower(self._id_dropped("item", negative_inputs))
            extra = {"negative_vectors": negative_vectors, "negatives": negatives}  # (M, D)
        batch_size = size * len(items)  # the global batch
        if size > 1 and self.negatives.in_batch:  # every rank's items are candidates
            start = rank * len(items)
            extra["positive_rows"] = torch.arange(start, start + len(items), device=items.device)
            item_vectors, items = gather_rows(item_vectors), gather_rows(items)  # (W * B, ...)
        if self.loss.corrects_sampling_bias:
            extra["item_log_q"] = math.log(batch_size) + self.log_popularity[items]  # (G,)
            if negatives is not None:
                extra["negative_log_q"] = negative_log_q  # (M,)
        extra["in_batch"] = self.negatives.in_batch
        if self.matryoshka is None or not self.matryoshka.trains_prefixes(self.current_epoch):
            loss = self.loss(user_vectors, item_vectors, items, **extra)
        else:  # the weighted sum of the loss on each trained prefix
            loss = self.matryoshka.loss(
                self._dimension_losses, user_vectors, item_vectors, items, **extra
            )
        if self.optim.embedding_l2 > 0:
            loss = loss + self.optim.embedding_l2 * self._touched_l2(user_inputs, item_inputs)
        return loss

    def _id_dropped(
        self, side: str, inputs: dict[str, torch.Tensor], rank: int = 0, size: int = 1
    ) -> dict[str, torch.Tensor]:
        """`inputs` with the id input of a random share of the examples dropped (-1: read as
        unknown), the share `TowerConfig.{side}_id_dropout` (DropoutNet); unchanged at 0. Rank
        `rank` of `size` draws for the whole global batch and keeps its slice: the examples one
        process would drop, and the ranks' random streams stay alike."""
        rate = getattr(self.tower_config, f"{side}_id_dropout")
        tower = self.user_tower if side == "user" else self.item_tower
        if rate <= 0 or tower.id_name is None:
            return inputs
        codes = inputs[tower.id_name]  # (B,)
        rows = len(codes)
        draws = torch.rand((size * rows, *codes.shape[1:]), device=codes.device)
        dropped = draws[rank * rows : (rank + 1) * rows] < rate
        return {**inputs, tower.id_name: codes.masked_fill(dropped, -1)}

    def _catch_up_rows(
        self,
        user_inputs: dict[str, torch.Tensor],
        item_inputs: dict[str, torch.Tensor],
        negative_inputs: dict[str, torch.Tensor] | None,
    ) -> None:
        """`RowAdam` applies a row's idle steps when the row is next updated; the rows this step
        reads are brought up to date first, so their gradients are taken where dense Adam's
        would be. Every index table the towers read and the rows they read from it (the bags,
        the history and the multi-hot lists, are never row-wise)."""
        if not self._row_adams:
            return
        reads = [(table, user_inputs[name]) for name, table in self.user_tower.index_tables()]
        for name, table in self.item_tower.index_tables():
            ids = item_inputs[name]
            if negative_inputs is not None:
                ids = torch.cat([ids, negative_inputs[name]])
            reads.append((table, ids))
        for table, ids in reads:
            if self._row_wise(table):
                for optimizer in self._row_adams:
                    optimizer.catch_up(table.weight, ids[ids >= 0])

    def setup(self, stage: str) -> None:
        if stage == "fit" and world()[1] > 1:  # before DDP wraps the module
            self._dense_gradients()

    def _dense_gradients(self) -> None:
        """Every id table trained with dense gradients (and so Adam, not `RowAdam`): what DDP's
        gradient all-reduce takes. The same arithmetic, since RowAdam's weights follow Adam's."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = False

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_steps = None, 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The random stream (shared negatives, the loader's seed) as it stands between two
        # epochs: a resumed run continues it where the interrupted one stopped.
        checkpoint["rng_state"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Restored before the fit loop creates the next epoch's loader iterator, which draws
        # from the stream as it does between two epochs of an uninterrupted run.
        if "rng_state" in checkpoint:
            _set_rng_state(checkpoint["rng_state"])

    def on_train_epoch_end(self) -> None:
        # Before the checkpoint callbacks, which run after this hook.
        self._flush_row_updates()
        if self._epoch_steps:
            mean = self._epoch_loss / self._epoch_steps  # under DDP: the ranks' mean, below
            self.log("train/loss_epoch", mean, prog_bar=True, sync_dist=True)

    def on_train_end(self) -> None:
        self._flush_row_updates()

    def _flush_row_updates(self) -> None:
        """Apply the updates `RowAdam` defers, so the weights are read as dense Adam has them."""
        for optimizer in self._row_adams:
            optimizer.flush()

    def _touched_l2(
        self, user_inputs: dict[str, torch.Tensor], item_inputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean squared norm of the id rows the batch reads, on each side that has an id. Under
        DDP the global batch's mean: this rank's sum over the count of every rank's rows, times
        the number of ranks (DDP averages the ranks' gradients)."""
        total = torch.zeros((), device=self.log_popularity.device)
        _, size = world()
        for tower, inputs in ((self.item_tower, item_inputs), (self.user_tower, user_inputs)):
            if tower.id_name is not None:
                codes = inputs[tower.id_name]
                squares = tower.id_table()(codes[codes >= 0]).pow(2).sum(-1)  # (B',)
                if size == 1:
                    total = total + squares.mean()
                else:
                    count = all_reduce_sum(squares.new_tensor(float(len(squares))))
                    total = total + squares.sum() * size / count
        return total

    def _row_wise(self, table: nn.Embedding) -> bool:
        """Whether `RowAdam` updates `table`: a table with sparse gradients, except the history
        table (its pooled gradient is dense, also when tied to the item table)."""
        history = self.user_tower.history_encoder
        return table.sparse and (history is None or table is not history.table)

    def configure_optimizers(self):
        """Embedding tables with sparse gradients: `RowAdam` (a step touches only the batch's
        rows; the weights follow dense Adam's); other tables: Adam; every other parameter: AdamW
        at `dense_lr`; a text model's fine-tuned layers: AdamW at `text_lr`. Fused kernels where torch has them for the device."""
        row_tables, tables, dense, text = [], [], [], []
        text_params = {
            id(p)
            for m in self.modules()
            if isinstance(m, TextModelEncoder)
            for p in m.backbone.parameters()
        }
        for module in self.modules():  # each module once, a tied table too
            for param in module.parameters(recurse=False):
                if not param.requires_grad:
                    continue
                if id(param) in text_params:
                    text.append(param)
                elif not isinstance(module, nn.Embedding):
                    dense.append(param)
                else:
                    (row_tables if self._row_wise(module) else tables).append(param)
        optim = self.optim
        dense_lr = optim.lr if optim.dense_lr is None else optim.dense_lr
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        optimizers = []
        if row_tables:
            optimizers.append(RowAdam(row_tables, lr=optim.lr))
        if tables:
            optimizers.append(torch.optim.Adam(tables, lr=optim.lr, **fused))
        if dense:
            optimizers.append(
                torch.optim.AdamW(dense, lr=dense_lr, weight_decay=optim.weight_decay, **fused)
            )
        if text:
            optimizers.append(
                torch.optim.AdamW(text, lr=optim.text_lr, weight_decay=optim.weight_decay, **fused)
            )
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer else 1
        warmup, schedule = optim.warmup_steps, optim.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if schedule == "linear":
                return 1.0 - progress
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return 1.0

        self._row_adams = [opt for opt in optimizers if isinstance(opt, RowAdam)]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
        return optimizers, schedulers

    # -- evaluation -------------------------------------------------------------------------
    def served_prior(self, dim: int | None) -> float:
        """The popularity prior served at prefix `dim` (None: the full vector): the prefix's own
        (`matryoshka_prior`) or the model's."""
        if self.matryoshka is None:
            return self.popularity_prior
        return self.matryoshka.prior(dim, self.popularity_prior)

    def _scorers(self) -> dict[int | None, Scorer]:
        return {dim: self.scorer.at_dim(dim, self.served_prior(dim)) for dim in self.rankings}

    @torch.no_grad()
    def _start_ranking(self) -> None:
        """Every served dimension's catalogue vectors, from one pass of the item tower."""
        items, outputs = self._catalogue_rows(), self._catalogue_outputs()  # (I,), (I, D)
        for metrics in self.rankings.values():
            metrics.reset()
        self._catalogue_vectors = {
            dim: scorer.served_items([outputs], items) for dim, scorer in self._scorers().items()
        }

    def _rank(self, batch: dict) -> None:
        outputs = self.encode_users(batch["user_inputs"])  # (U, D)
        relevant, counts = batch["relevant"].cpu(), batch["num_relevant"].cpu()
        for dim, scorer in self._scorers().items():
            metrics = self.rankings[dim]
            _, top = exact_top_k(
                scorer.served_users([outputs]),
                self._catalogue_vectors[dim],
                metrics.max_k,
                batch["seen"],
            )
            metrics.update(top.cpu(), relevant, counts)

    def _log_ranking(self, stage: str) -> dict[str, float]:
        """`stage/...` for the full vector, `stage_d<d>/...` for each trained prefix."""
        values = {}
        for dim, metrics in self.rankings.items():
            metrics.all_reduce(self.log_popularity.device)  # DDP: each rank ranked its share
            values |= metrics.compute(stage if dim is None else f"{stage}_d{dim}")
        for name, value in values.items():
            # Alike on every rank already: the max over ranks (DDP) is the value itself.
            prog_bar = name.endswith("recall@20") and name.startswith(f"{stage}/")
            self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")
        self._catalogue_vectors = {}
        return values

    def on_validation_epoch_start(self) -> None:
        self._flush_row_updates()  # validation runs before on_train_epoch_end
        self._start_ranking()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._rank(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_ranking("val")

    def on_test_epoch_start(self) -> None:
        self._start_ranking()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._rank(batch)

    def on_test_epoch_end(self) -> None:
        self._log_ranking("test")


def _matryoshka_hparams(
    prefixes: Sequence[int],
    weights: Sequence[float] | None,
    warmup: int,
    loss: Sequence[Mapping[str, object] | None] | None,
    prior: Sequence[float | None] | None,
) -> dict:
    """The Matryoshka settings as plain values, for the checkpoint's hyper-parameters."""
    return {
        "matryoshka": [int(d) for d in prefixes],
        "matryoshka_weights": None if weights is None else [float(w) for w in weights],
        "matryoshka_warmup": int(warmup),
        "matryoshka_loss": None if loss is None else [dict(c or {}) for c in loss],
        "matryoshka_prior": None
        if prior is None
        else [None if p is None else float(p) for p in prior],
    }


def _rng_state() -> dict:
    """torch's global random state (CPU and every CUDA device, and the current device's apart),
    as tensors a checkpoint holds under torch.load(weights_only=True)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_current"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_current" in state and torch.cuda.is_available():
        # Under DDP rank 0 saves and rank k draws on its own device: each rank's device continues
        # the stream rank 0's device was at (the ranks' streams are alike).
        torch.cuda.set_rng_state(state["cuda_current"])
