"""`InteractionDataModule`: prepares a source once (its declared features fitted) and hands
batches of tensors on.

Training batches are built by vectorised indexing (a sampler yields index batches, the dataset
gathers a whole batch at once), so there is no per-example Python in the hot path.
Validation batches are chunks of users with their held-out items, for full-catalogue ranking.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from features.arrays import csr_by_user, padded_rows
from features.fitted import item_codes_of
from features.fitting import TextEncoderFactory
from features.prepare import HeldOut, PreparedData, prepare
from features.ranks import check_same_on_every_rank
from features.sources.base import Source
from features.spec import FeaturesConfig


class UserInputs:
    """The user tower's inputs for rows of the users table: the table features (fitted
    transforms, computed once) and the history, item rows mapped to item id codes."""

    def __init__(self, data: PreparedData, histories: np.ndarray):
        self.tables = {name: torch.from_numpy(a) for name, a in data.user_inputs.items()}
        history = data.features.user.spec.of_kind("history")
        self.history_name = None if history is None else history.name
        self.histories = torch.from_numpy(histories)  # (U, N) item rows padded with num_items
        self.item_codes = torch.from_numpy(item_codes_of(data.item_inputs, data.features.item))

    def __call__(self, users: torch.Tensor, histories: torch.Tensor | None = None) -> dict:
        """Inputs of `users` (B,); `histories` (B, N) item rows in place of the stored ones."""
        inputs = {name: table[users] for name, table in self.tables.items()}
        if self.history_name is not None:
            rows = self.histories[users] if histories is None else histories
            inputs[self.history_name] = self.item_codes[rows]  # (B, N) codes, -1 = padding
        return inputs


class TrainBatches(Dataset):
    """Index batch → dict: user and item rows, and the user tower's inputs (the item tower's are
    the module's: towers.ItemCatalogue).

    With `mask_target` (the default) the item being predicted is masked out of the user's history,
    so the user tower never sees the answer. Without it the history is the user's whole training
    history, target included, as in SimpleX (there the history shares the item tower's table, and
    measured as good as a masked history with a table of its own; benchmarks/README.md)."""

    def __init__(self, data: PreparedData, mask_target: bool = True):
        self.mask_target = mask_target
        self.pairs = torch.from_numpy(data.train)
        self.user_inputs = UserInputs(data, data.train_histories)
        self.pad = data.num_items

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, rows: list[int]) -> dict:
        pairs = self.pairs[torch.as_tensor(rows)].long()  # stored int32 when it fits
        user, item = pairs[:, 0], pairs[:, 1]  # (B,), (B,)
        history = self.user_inputs.histories[user]  # (B, N)
        if self.mask_target:
            history = history.masked_fill(history == item[:, None], self.pad)
        return {"user": user, "item": item, "user_inputs": self.user_inputs(user, history)}


class HeldOutBatches(Dataset):
    """Chunk of users → dict: user rows and inputs, seen items (to exclude), held-out items
    (relevant)."""

    def __init__(
        self, held_out: HeldOut, user_inputs: UserInputs, seen: tuple[np.ndarray, np.ndarray]
    ):
        self.held_out = held_out
        self.user_inputs = user_inputs
        self.seen_indptr, self.seen_items = seen

    def __len__(self) -> int:
        return len(self.held_out)

    def __getitem__(self, rows: list[int]) -> dict:
        rows = np.asarray(rows)
        users = self.held_out.users[rows].astype(np.int64)  # stored int32 when it fits
        relevant = padded_rows(self.held_out.indptr, self.held_out.items, rows, pad=-1)
        counts = self.held_out.indptr[rows + 1] - self.held_out.indptr[rows]
        return {
            "user": torch.from_numpy(users),
            "user_inputs": self.user_inputs(torch.from_numpy(users)),
            "seen": torch.from_numpy(padded_rows(self.seen_indptr, self.seen_items, users, pad=-1)),
            "relevant": torch.from_numpy(relevant),  # (U, R), -1 = padding or unknown item
            "num_relevant": torch.from_numpy(counts),  # (U,)
        }


class EpochShuffle(Sampler[int]):
    """A permutation per epoch: the order a RandomSampler with a generator seeded once gives over
    a training loop, but fixed by (seed, epoch), so a run resumed at epoch e sees the batches an
    uninterrupted one does (Lightning calls `set_epoch` before each epoch)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def permutation(self) -> torch.Tensor:
        """(size,) int64: this epoch's order."""
        generator = torch.Generator().manual_seed(self.seed)
        # The earlier epochs' permutations, drawn and dropped: one each, as a RandomSampler's
        # generator gives them when the loop stops after len(loader) batches (as Lightning does).
        for _ in range(self.epoch):
            torch.randperm(self.size, generator=generator)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        for chunk in self.permutation().split(1 << 16):  # no Python list of the whole epoch
            yield from chunk.tolist()


class _EpochBatches(BatchSampler):
    """A BatchSampler that passes `set_epoch` on to its sampler. With several ranks (DDP) it cuts
    the sampler's order into global batches of `num_ranks * batch_size` and yields rank `rank`'s
    slice of each: the ranks' batches put together, in rank order, are the global batch one
    process with that batch size would get. Every rank gets as many rows: when the whole set is
    one global batch smaller than that, the last (n mod num_ranks) rows are left out."""

    def __init__(
        self,
        sampler: EpochShuffle,
        batch_size: int,
        drop_last: bool,
        rank: int = 0,
        num_ranks: int = 1,
    ):
        super().__init__(sampler, batch_size * num_ranks, drop_last)
        self.rank, self.num_ranks = rank, num_ranks

    def __iter__(self):
        order = self.sampler.permutation()  # cut as tensors: a 25M-row epoch is no Python list
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, end, self.batch_size):
            batch = order[start : start + self.batch_size]
            share = len(batch) // self.num_ranks
            yield batch[self.rank * share : (self.rank + 1) * share].tolist()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class TooFewForRanksError(ValueError):
    """A split with fewer rows than training processes: some rank would get nothing."""

    def __init__(self, what: str, rows: int, num_ranks: int):
        self.what, self.rows, self.num_ranks = what, rows, num_ranks
        super().__init__(
            f"{what}: {rows} rows for {num_ranks} training processes; every process needs at "
            "least one (train on fewer processes)"
        )


def _loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    ranks: tuple[int, int] = (0, 1),
) -> DataLoader:
    """Shuffled: rank `ranks[0]` of `ranks[1]`'s slices of each global batch (_EpochBatches).
    In order (evaluation): the rank's contiguous share of the rows, in chunks of `batch_size`."""
    rank, num_ranks = ranks
    if 0 < len(dataset) < num_ranks:
        raise TooFewForRanksError(type(dataset).__name__, len(dataset), num_ranks)
    if shuffle:
        order = EpochShuffle(len(dataset), seed)
        batches = _EpochBatches(order, batch_size, drop_last, rank, num_ranks)
    elif num_ranks == 1:
        batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last)
    else:
        share = np.array_split(np.arange(len(dataset)), num_ranks)[rank]
        batches = BatchSampler(share.tolist(), batch_size, drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0)


class InteractionDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: Source,
        split: Callable[[pl.LazyFrame], pl.LazyFrame],
        features: FeaturesConfig | None = None,  # train.py passes the parsed conf/features
        mask_target_in_history: bool = True,  # drop a training pair's item from its user's history
        batch_size: int = 512,  # training examples per step and process; the global batch (the
        # in-batch negatives) is devices * num_nodes * batch_size (towers.distributed)
        eval_batch_size: int = 1024,  # users per chunk in full-catalogue evaluation
        seed: int = 0,  # shuffling order
        text_encoder: TextEncoderFactory | None = None,  # model name → encoder (tests)
    ):
        super().__init__()
        self.source = source
        self.split = split
        self.features = features
        self.mask_target_in_history = mask_target_in_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.text_encoder = text_encoder
        self.data: PreparedData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            if self.features is None:
                raise ValueError("InteractionDataModule: no features declared (conf/features)")
            self.data = prepare(self.source, self.split, self.features, self.text_encoder)

    def _prepared(self) -> PreparedData:
        self.setup()
        assert self.data is not None
        return self.data

    def _ranks(self) -> tuple[int, int]:
        """(rank, number of ranks) of the trainer using this module; (0, 1) without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        """Under DDP each rank's slice of the global batch (`batch_size` per rank); every rank
        prepared the data itself, and they are checked to be alike first."""
        data = self._prepared()
        ranks = self._ranks()
        if ranks[1] > 1:
            check_same_on_every_rank("the prepared data", _fingerprinted(data))
        drop_last = len(data.train) > self.batch_size * ranks[1]
        batches = TrainBatches(data, mask_target=self.mask_target_in_history)
        return _loader(batches, self.batch_size, True, self.seed, drop_last, ranks)

    def val_dataloader(self) -> DataLoader:
        """Under DDP each rank ranks its share of the users (the metric sums are added up)."""
        data = self._prepared()
        seen = csr_by_user(data.train, data.num_users)
        dataset = HeldOutBatches(data.val, UserInputs(data, data.train_histories), seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False, self._ranks())

    def test_dataloader(self) -> DataLoader:
        """Test users with everything known before the test period (train + val) as features."""
        data = self._prepared()
        seen = csr_by_user(data.before_test, data.num_users)
        dataset = HeldOutBatches(data.test, UserInputs(data, data.before_test_histories), seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False, self._ranks())


def _fingerprinted(data: PreparedData) -> list[np.ndarray]:
    """What the ranks must hold alike: pairs, popularity, histories, both towers' inputs, and
    the held-out splits."""
    held_out = [
        a for split in (data.val, data.test) for a in (split.users, split.indptr, split.items)
    ]
    return [
        data.train,
        data.before_test,
        data.item_counts,
        data.train_histories,
        data.before_test_histories,
        *(data.user_inputs[name] for name in sorted(data.user_inputs)),
        *(data.item_inputs[name] for name in sorted(data.item_inputs)),
        *held_out,
    ]
