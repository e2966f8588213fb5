import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import towers.towers as towers_module
from towers import (
    ConfigError,
    CosineContrastiveLoss,
    FeatureSpec,
    ItemCatalogue,
    NegativeConfig,
    OptimConfig,
    SampledSoftmaxLoss,
    TowerConfig,
    TwoTowerModule,
)
from towers.inputs import TowerInput
from towers.matryoshka import MatryoshkaError
from towers.optim import RowAdam

NUM_USERS, NUM_ITEMS = 6, 10
USER_ID = TowerInput("user_id", "id", "index", rows=NUM_USERS)
HISTORY = TowerInput("history", "history", "history", rows=NUM_ITEMS, width=4, pooling="mean")
ITEM_ID = TowerInput("item_id", "id", "index", rows=NUM_ITEMS)
GENRES = TowerInput("genres", "multi_hot", "bag", rows=3, width=2, pooling="mean")  # pad 2
YEAR = TowerInput("year", "numeric", "index", rows=4)  # 3 buckets, then missing
BRAND = TowerInput("brand", "categorical", "index", rows=5)  # 3 brands, an OOV row, missing


def spec(user=(USER_ID, HISTORY), item=(ITEM_ID, GENRES, YEAR)) -> FeatureSpec:
    return FeatureSpec(user, item, num_users=NUM_USERS, num_items=NUM_ITEMS)


SPEC = spec()


def catalogue(feature_spec: FeatureSpec = SPEC, item_ids=None) -> ItemCatalogue:
    """The item tower's inputs for every catalogue row (the item id's code is the row unless
    `item_ids` says otherwise) and counts 0..9."""
    draws = torch.Generator().manual_seed(0)
    every = {
        "item_id": torch.arange(NUM_ITEMS) if item_ids is None else torch.tensor(item_ids),
        "genres": torch.randint(0, 3, (NUM_ITEMS, 2), generator=draws),
        "year": torch.randint(0, 4, (NUM_ITEMS,), generator=draws),
        "brand": torch.arange(NUM_ITEMS) % 5,
    }
    inputs = {i.name: every[i.name] for i in feature_spec.item_inputs}
    return ItemCatalogue(inputs=inputs, counts=torch.arange(NUM_ITEMS))


def _module(towers: TowerConfig | None = None, **kwargs) -> TwoTowerModule:
    towers = towers or TowerConfig(embedding_dim=8, sparse=True)
    return TwoTowerModule(SPEC, catalogue(), towers, **kwargs)


def batch(users, items, user_ids=None) -> dict:
    """A training batch: user and item rows, and the user tower's inputs (the id's code is the
    user row unless `user_ids` says otherwise; histories: the user's rows after it, padded)."""
    users, items = torch.as_tensor(users), torch.as_tensor(items)
    histories = (users[:, None] + torch.arange(1, 5)) % NUM_ITEMS  # (B, 4)
    histories[:, 3] = -1
    ids = users if user_ids is None else torch.as_tensor(user_ids)
    return {"user": users, "item": items, "user_inputs": {"user_id": ids, "history": histories}}


def fit(model: TwoTowerModule, batches: list[dict], callbacks=(), epochs: int = 1) -> None:
    """`epochs` epochs over `batches` under Lightning (the module optimises by hand: it needs a
    trainer for its optimisers), no validation."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    trainer.fit(model, DataLoader(batches, batch_size=None))


def inputs_seen(tower: torch.nn.Module) -> list[dict]:
    """A list that receives the inputs of each call of `tower` (a forward pre-hook)."""
    seen = []
    tower.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return seen


def _params(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_index_tables_are_updated_row_wise_the_bags_densely_and_the_rest_by_adamw():
    model = _module()
    rows, tables, dense = model.configure_optimizers()[0]
    assert isinstance(rows, RowAdam)
    assert type(tables) is torch.optim.Adam and isinstance(dense, torch.optim.AdamW)
    user, item = model.user_tower.encoders, model.item_tower.encoders
    index = [user["user_id"].table, item["item_id"].table, item["year"].table]
    assert all(table.sparse for table in index)
    assert _params(rows) == {id(table.weight) for table in index}
    bags = [user["history"].table, item["genres"].table]
    assert not any(table.sparse for table in bags)
    assert _params(tables) == {id(table.weight) for table in bags}
    assert _params(dense) == {id(user["history"].projection.weight)}  # the gate is fixed


def test_without_sparse_every_table_gets_dense_adam():
    model = _module(TowerConfig(embedding_dim=8, sparse=False))
    optimizers = model.configure_optimizers()[0]
    assert not any(isinstance(opt, RowAdam) for opt in optimizers)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert _params(optimizers[0]) == embeddings


def test_popularity_negatives_are_drawn_by_training_counts_with_their_log_q():
    torch.manual_seed(0)
    model = _module(negatives=NegativeConfig(num_negatives=5000, distribution="popularity"))
    ids, log_q = model._sample_negatives(torch.device("cpu"))
    counts = torch.bincount(ids, minlength=10).float()
    assert counts[9] > 5 * counts[1]  # item 9 has count 9, item 1 count 1 (+1 smoothing)
    share = (torch.arange(10) + 1.0) / (torch.arange(10) + 1.0).sum()  # +1 smoothing
    expected = torch.log(torch.tensor(5000.0)) + share.log()[ids]
    torch.testing.assert_close(log_q, expected)
    uniform = _module(negatives=NegativeConfig(num_negatives=4))
    _, log_q = uniform._sample_negatives(torch.device("cpu"))
    torch.testing.assert_close(log_q, torch.full((4,), float(torch.log(torch.tensor(0.4)))))


def test_catalogue_vectors_match_the_item_tower_on_the_catalogues_inputs(monkeypatch):
    monkeypatch.setattr(towers_module, "ROWS_PER_PASS", 3)  # the catalogue in several passes
    model = _module().eval()
    vectors = model.encode_catalogue()
    assert vectors.shape == (10, 8)
    torch.testing.assert_close(vectors[4:6], model.encode_items(torch.tensor([4, 5])))
    inputs = {name: values[4:6] for name, values in catalogue().inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(vectors[4:6], model.item_tower(inputs))
    assert model.similarity.value == "cosine"


@pytest.mark.parametrize(
    "make, setting",
    [
        (lambda: NegativeConfig(distribution="zipf"), "model.negatives.distribution"),
        (lambda: NegativeConfig(num_negatives=-1), "model.negatives.num_negatives"),
        (lambda: NegativeConfig(in_batch=False, num_negatives=0), "model.negatives.num_negatives"),
        (lambda: OptimConfig(schedule="step"), "model.optim.schedule"),
        (lambda: OptimConfig(dense_lr=float("nan")), "model.optim.dense_lr"),
        (lambda: OptimConfig(warmup_steps=-1), "model.optim.warmup_steps"),
        (lambda: TowerConfig(item_id_dropout=1.0), "model.towers.item_id_dropout"),
        (lambda: SampledSoftmaxLoss(temperature=-0.1), "model.loss.temperature"),
        (lambda: CosineContrastiveLoss(negative_weight=-1.0), "model.loss.negative_weight"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_its_config_class(make, setting):
    with pytest.raises(ConfigError) as raised:
        make()
    assert raised.value.setting == setting


def test_a_frozen_optimiser_and_in_batch_only_negatives_are_settings_that_work():
    assert OptimConfig(lr=0.0, dense_lr=None, text_lr=0.0).lr == 0.0
    assert NegativeConfig(num_negatives=0).in_batch


def test_shared_item_embeddings_are_one_table_in_training():
    model = _module(TowerConfig(embedding_dim=8, share_item_embeddings=True, sparse=True))
    item_ids = model.item_tower.id_table()
    assert model.user_tower.history_encoder.table is item_ids
    assert model.user_tower.history_encoder.projection is not None
    optimizers, _ = model.configure_optimizers()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})  # the shared table is optimised once
    # The pooled history makes its gradient dense: it is not among the row-wise tables.
    rows = next(opt for opt in optimizers if isinstance(opt, RowAdam))
    assert id(item_ids.weight) not in _params(rows)
    dense_tables = next(opt for opt in optimizers if type(opt) is torch.optim.Adam)
    bags = [item_ids, model.item_tower.encoders["genres"].table]
    assert _params(dense_tables) == {id(table.weight) for table in bags}
    # A training step (the item tower's sparse rows and the history's dense pool on one table)
    # moves the one table and leaves it shared.
    before = item_ids.weight.detach().clone()
    fit(model, [batch([0, 1, 2], [3, 4, 5])])
    assert model.user_tower.history_encoder.table is model.item_tower.id_table()
    assert not torch.equal(item_ids.weight.detach(), before)
    unshared = _module(TowerConfig(embedding_dim=8))
    assert unshared.user_tower.history_encoder.table is not unshared.item_tower.id_table()


def test_linear_schedule_decays_to_zero_and_dense_parameters_get_their_own_rate():
    model = _module(optim=OptimConfig(lr=0.01, dense_lr=0.001, schedule="linear"))
    optimizers, schedulers = model.configure_optimizers()  # no trainer: a one-step run
    tables, _, dense = optimizers
    assert isinstance(tables, RowAdam) and isinstance(dense, torch.optim.AdamW)
    assert tables.param_groups[0]["lr"] == 0.01 and dense.param_groups[0]["lr"] == 0.001
    schedulers[0].step()
    assert tables.param_groups[0]["lr"] == 0.0


def _dropped(codes: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Which codes were dropped (-1); the others must be the original codes."""
    dropped = codes == -1
    assert torch.equal(codes[~dropped], original[~dropped])
    return dropped


def test_id_dropout_drops_the_id_input_of_a_share_of_the_training_examples():
    torch.manual_seed(0)
    towers = TowerConfig(embedding_dim=8, user_id_dropout=0.5, item_id_dropout=0.25)
    model = _module(towers, negatives=NegativeConfig(num_negatives=400))
    users_seen, items_seen = inputs_seen(model.user_tower), inputs_seen(model.item_tower)
    step = batch(torch.arange(400) % NUM_USERS, torch.arange(400) % NUM_ITEMS)
    fit(model, [step])
    (user_inputs,) = users_seen
    positives, negatives = items_seen
    dropped = _dropped(user_inputs["user_id"], step["user_inputs"]["user_id"])
    assert 0.4 < dropped.float().mean() < 0.6  # 400 draws at 0.5: 4 standard deviations
    assert torch.equal(user_inputs["history"], step["user_inputs"]["history"])  # only the id
    dropped = _dropped(positives["item_id"], step["item"])  # the item id's code is its row
    assert 0.15 < dropped.float().mean() < 0.35
    assert torch.equal(positives["genres"], catalogue().inputs["genres"][step["item"]])
    # The shared negatives are dropped apart from the positives (their rows: their years).
    assert 0.15 < (negatives["item_id"] == -1).float().mean() < 0.35
    kept = negatives["item_id"] >= 0
    years = catalogue().inputs["year"]
    assert torch.equal(years[negatives["item_id"][kept]], negatives["year"][kept])
    # Outside training (validation ranks the catalogue) every id is read.
    items_seen.clear()
    model.eval().encode_catalogue()
    assert torch.equal(items_seen[0]["item_id"], torch.arange(NUM_ITEMS))


class HandStep(L.Callback):
    """Before each training step: the loss a hand-written step computes (the towers on the
    batch's own inputs, the negatives the module's sampler draws), and the random state after
    it; the stream is then put back for the module's own step. After the step: the loss it
    returned and the random state."""

    def __init__(self):
        self.expected, self.got, self.state_expected, self.state_got = [], [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        state = torch.get_rng_state()
        with torch.no_grad():
            negatives, _ = module._sample_negatives(torch.device("cpu"))
            users = module.user_tower(batch["user_inputs"])
            items = module.item_tower(module.item_inputs(batch["item"]))
            extra = module.item_tower(module.item_inputs(negatives))
            loss = module.loss(users, items, batch["item"], extra, negatives, in_batch=True)
        self.expected.append(loss)
        self.state_expected.append(torch.get_rng_state())
        torch.set_rng_state(state)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.got.append(outputs["loss"].detach())
        self.state_got.append(torch.get_rng_state())


def test_at_rate_zero_no_id_is_dropped_and_the_random_stream_is_untouched():
    """Each step's loss is the hand-written step's, and the step draws its negatives and nothing
    else: the next step's negatives are those a module without id dropout draws."""
    torch.manual_seed(0)
    towers = TowerConfig(embedding_dim=8, user_id_dropout=0.0, item_id_dropout=0.0)
    model = _module(
        towers,
        loss=SampledSoftmaxLoss(logq_correction=False),
        negatives=NegativeConfig(num_negatives=8),
    )
    users_seen = inputs_seen(model.user_tower)
    hand = HandStep()
    steps = [batch([0, 1, 2, 3], [4, 5, 6, 7]), batch([5, 4, 3], [1, 2, 9])]
    fit(model, steps, [hand])
    module_calls = users_seen[1::2]  # each step: the hand-written step's call, then the module's
    assert [seen["user_id"].tolist() for seen in module_calls] == [[0, 1, 2, 3], [5, 4, 3]]
    torch.testing.assert_close(hand.got, hand.expected)
    for got, expected in zip(hand.state_got, hand.state_expected, strict=True):
        assert torch.equal(got, expected)


def test_row_adam_catches_up_every_index_table_on_the_batchs_codes(monkeypatch):
    """Every row-wise table (the ids, a categorical, ...) is brought up to date on the codes the
    step reads, positives and negatives, and never on -1 (an id without a row)."""
    caught = {}
    catch_up = RowAdam.catch_up

    def spy(self, param, ids):
        caught.setdefault(id(param), []).append(ids.clone())
        catch_up(self, param, ids)

    monkeypatch.setattr(RowAdam, "catch_up", spy)
    brands = spec(item=(ITEM_ID, GENRES, BRAND))
    item_ids = [*range(9), -1]  # item 9: no id row (content only)
    model = TwoTowerModule(
        brands,
        catalogue(brands, item_ids),
        TowerConfig(embedding_dim=8, sparse=True),
        negatives=NegativeConfig(num_negatives=4),
    )
    items_seen = inputs_seen(model.item_tower)
    fit(model, [batch([0, 1, 2], [3, 9, 7], user_ids=[0, -1, 2])])
    _, negatives = items_seen
    user, item = model.user_tower.encoders, model.item_tower.encoders
    assert set(caught) == {id(user["user_id"].table.weight), id(item["item_id"].table.weight),
                           id(item["brand"].table.weight)}  # fmt: skip
    assert caught[id(user["user_id"].table.weight)][0].tolist() == [0, 2]
    negative_ids = negatives["item_id"][negatives["item_id"] >= 0]
    expected = torch.cat([torch.tensor([3, 7]), negative_ids])
    assert torch.equal(caught[id(item["item_id"].table.weight)][0], expected)
    expected = torch.cat([torch.tensor([3, 4, 2]), negatives["brand"]])  # brand = row % 5
    assert torch.equal(caught[id(item["brand"].table.weight)][0], expected)


class HandMatryoshkaStep(HandStep):
    """HandStep's loss written out for `model.matryoshka=[2, 4]` of 8 dimensions, weights
    (0.5, 2, 1): the loss on each prefix of the towers' outputs, renormalised, weighted; in the
    first `warmup` epochs the loss on the whole vector alone; `losses`: a prefix's own loss
    (dimension → loss), else the module's."""

    def __init__(self, warmup: int = 0, losses: dict | None = None):
        super().__init__()
        self.warmup, self.losses = warmup, losses or {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch < self.warmup:
            super().on_train_batch_start(trainer, module, batch, batch_idx)
            return
        state = torch.get_rng_state()
        with torch.no_grad():
            negatives, _ = module._sample_negatives(torch.device("cpu"))
            users = module.user_tower(batch["user_inputs"])
            items = module.item_tower(module.item_inputs(batch["item"]))
            extra = module.item_tower(module.item_inputs(negatives))
            loss = 0.0
            for dim, weight in ((2, 0.5), (4, 2.0), (8, 1.0)):
                cut = [F.normalize(v[:, :dim], dim=1) for v in (users, items, extra)]
                loss += weight * self.losses.get(dim, module.loss)(
                    cut[0], cut[1], batch["item"], cut[2], negatives, in_batch=True
                )
        self.expected.append(loss)
        self.state_expected.append(torch.get_rng_state())
        torch.set_rng_state(state)


def test_a_matryoshka_step_trains_the_weighted_loss_of_each_prefix_and_validates_the_full():
    torch.manual_seed(0)
    model = _module(
        TowerConfig(embedding_dim=8),
        loss=SampledSoftmaxLoss(logq_correction=False),
        negatives=NegativeConfig(num_negatives=8),
        matryoshka=[2, 4],
        matryoshka_weights=[0.5, 2.0, 1.0],
    )
    assert model.matryoshka.dims == (2, 4, 8)
    assert model.hparams["matryoshka"] == [2, 4]
    hand = HandMatryoshkaStep()
    fit(model, [batch([0, 1, 2, 3], [4, 5, 6, 7]), batch([5, 4, 3], [1, 2, 9])], [hand])
    torch.testing.assert_close(hand.got, hand.expected)
    assert model.scorer.dim is None  # validation ranks by the full vector
    assert model.eval().encode_catalogue().shape == (NUM_ITEMS, 8)


def test_a_prefix_trains_with_its_own_loss_settings_and_learns_its_own_temperature():
    """model.matryoshka_loss=[{temperature: 0.5}, null]: the 2-dim prefix's loss is a copy of
    the run's loss at temperature 0.5 (learned, as the run's is), the 4-dim prefix uses the
    run's loss itself; each step is the weighted sum with those losses, by hand."""
    torch.manual_seed(0)
    model = _module(
        TowerConfig(embedding_dim=8),
        loss=SampledSoftmaxLoss(logq_correction=False, learn_temperature=True),
        negatives=NegativeConfig(num_negatives=8),
        matryoshka=[2, 4],
        matryoshka_weights=[0.5, 2.0, 1.0],
        matryoshka_loss=[{"temperature": 0.5}, None],
    )
    (prefix_loss,) = model.prefix_losses
    assert prefix_loss.settings == {
        "temperature": 0.5, "learn_temperature": True, "logq_correction": False}  # fmt: skip
    assert prefix_loss.temperature == pytest.approx(0.5)
    assert model.loss.temperature == pytest.approx(0.15)
    assert model.hparams["matryoshka_loss"] == [{"temperature": 0.5}, {}]
    start = prefix_loss.log_scale.detach().clone()
    hand = HandMatryoshkaStep(losses={2: prefix_loss})
    fit(model, [batch([0, 1, 2, 3], [4, 5, 6, 7]), batch([5, 4, 3], [1, 2, 9])], [hand])
    torch.testing.assert_close(hand.got, hand.expected)
    assert not torch.equal(prefix_loss.log_scale.detach(), start)  # trained with the towers


def test_in_the_warmup_the_whole_vector_trains_alone_then_the_prefixes_join():
    torch.manual_seed(0)
    model = _module(
        TowerConfig(embedding_dim=8),
        loss=SampledSoftmaxLoss(logq_correction=False),
        negatives=NegativeConfig(num_negatives=8),
        matryoshka=[2, 4],
        matryoshka_weights=[0.5, 2.0, 1.0],
        matryoshka_warmup=1,
    )
    assert model.hparams["matryoshka_warmup"] == 1
    hand = HandMatryoshkaStep(warmup=1)
    fit(model, [batch([0, 1, 2, 3], [4, 5, 6, 7]), batch([5, 4, 3], [1, 2, 9])], [hand], epochs=2)
    assert len(hand.got) == 4  # two steps of the whole vector, then two of the weighted sum
    torch.testing.assert_close(hand.got, hand.expected)


def _validation_batch() -> dict:
    users = torch.arange(NUM_USERS)
    inputs = batch(users, users)["user_inputs"]
    seen = torch.stack([users, -torch.ones_like(users)], 1)  # (U, 2): item u seen, padded
    relevant = torch.stack([(users + 5) % NUM_ITEMS, (users * 3 + 1) % NUM_ITEMS], 1)  # (U, 2)
    relevant[::2, 1] = -1  # even users hold one item out
    return {"user_inputs": inputs, "seen": seen, "relevant": relevant,
            "num_relevant": (relevant >= 0).sum(1)}  # fmt: skip


def _recall_by_hand(
    model: TwoTowerModule, step: dict, dim: int, k: int, prior: float | None = None
) -> float:
    """recall@k when users and items are ranked by the cosine of their first `dim` coordinates
    plus the popularity prior's beta * log p(item) (beta: `prior`, else the model's), the user's
    seen item excluded."""
    prior = model.popularity_prior if prior is None else prior
    with torch.no_grad():
        users = F.normalize(model.user_tower(step["user_inputs"])[:, :dim], dim=1)
        items = F.normalize(model.item_tower(catalogue().inputs)[:, :dim], dim=1)
    counts = catalogue().counts.double() + 1
    scores = (users @ items.T).double() + prior * (counts / counts.sum()).log()
    recalls = []
    for user in range(NUM_USERS):
        scores[user, step["seen"][user, 0]] = float("-inf")
        top = set(scores[user].topk(k).indices.tolist())
        held_out = {i for i in step["relevant"][user].tolist() if i >= 0}
        recalls.append(len(top & held_out) / len(held_out))
    return sum(recalls) / len(recalls)


def test_validation_logs_each_trained_prefix_ranked_by_its_own_renormalised_cosine():
    """Each prefix with the prior it serves with: the 2-dim prefix its own
    (matryoshka_prior), the 4-dim one and the full vector the model's."""
    torch.manual_seed(0)
    model = _module(
        TowerConfig(embedding_dim=8, init_std=1.0),
        matryoshka=[2, 4],
        matryoshka_prior=[0.5, None],
        popularity_prior=0.05,
        ks=(1, 3),
    )
    assert [model.served_prior(d) for d in (2, 4, None, 8)] == [0.5, 0.05, 0.05, 0.05]
    step = _validation_batch()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    (logged,) = trainer.validate(model.eval(), DataLoader([step], batch_size=None), verbose=False)
    for dim, stage, prior in ((2, "val_d2", 0.5), (4, "val_d4", 0.05), (8, "val", 0.05)):
        for k in (1, 3):
            assert logged[f"{stage}/recall@{k}"] == pytest.approx(
                _recall_by_hand(model, step, dim, k, prior)
            )
    # The 2-dim prefix's own prior changes its ranking: the model's would rank otherwise.
    assert any(
        _recall_by_hand(model, step, 2, k, 0.05) != logged[f"val_d2/recall@{k}"] for k in (1, 3)
    )
    recalls = {logged[f"{stage}/recall@3"] for stage in ("val_d2", "val_d4", "val")}
    assert len(recalls) > 1  # the prefixes rank differently: each stage is its own ranking


def test_bad_matryoshka_settings_are_named_when_the_module_is_built():
    with pytest.raises(MatryoshkaError, match="embedding_dim=8") as raised:
        _module(TowerConfig(embedding_dim=8), matryoshka=[4, 16])
    assert raised.value.setting == "model.matryoshka"
