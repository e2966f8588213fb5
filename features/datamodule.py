"""`InteractionDataModule`: prepares a source once and hands batches of tensors on.

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
from features.prepare import HeldOut, PreparedData, prepare
from features.sources.base import Source


class TrainBatches(Dataset):
    """Index batch → dict of tensors: user, history, item and its features.

    With `mask_target` (the default) the item being predicted is masked out of the user's history,
    so the user tower never sees the answer. Without it the history is the user's whole training
    history, target included, as in SimpleX (there the history shares the item tower's table, and
    measured as good as a masked history with a table of its own; benchmarks/README.md)."""

    def __init__(self, data: PreparedData, mask_target: bool = True):
        self.mask_target = mask_target
        self.pairs = torch.from_numpy(data.train)
        self.histories = torch.from_numpy(data.train_histories)
        self.item_genres = torch.from_numpy(data.item_genres)
        self.item_year = torch.from_numpy(data.item_year)
        self.pad = data.num_items

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        pairs = self.pairs[torch.as_tensor(rows)]
        user, item = pairs[:, 0], pairs[:, 1]  # (B,), (B,)
        history = self.histories[user]  # (B, N)
        if self.mask_target:
            history = history.masked_fill(history == item[:, None], self.pad)
        return {
            "user": user,
            "history": history,
            "item": item,
            "item_genres": self.item_genres[item],  # (B, G)
            "item_year": self.item_year[item],  # (B,)
        }


class HeldOutBatches(Dataset):
    """Chunk of users → dict: user, history, seen items (to exclude), held-out items (relevant)."""

    def __init__(
        self, held_out: HeldOut, histories: np.ndarray, seen: tuple[np.ndarray, np.ndarray]
    ):
        self.held_out = held_out
        self.histories = histories
        self.seen_indptr, self.seen_items = seen

    def __len__(self) -> int:
        return len(self.held_out)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows)
        users = self.held_out.users[rows]
        relevant = padded_rows(self.held_out.indptr, self.held_out.items, rows, pad=-1)
        counts = self.held_out.indptr[rows + 1] - self.held_out.indptr[rows]
        return {
            "user": torch.from_numpy(users),
            "history": torch.from_numpy(self.histories[users]),
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

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        # The earlier epochs' permutations, drawn and dropped: one each, as a RandomSampler's
        # generator gives them when the loop stops after len(loader) batches (as Lightning does).
        for _ in range(self.epoch):
            torch.randperm(self.size, generator=generator)
        yield from torch.randperm(self.size, generator=generator).tolist()


class _EpochBatches(BatchSampler):
    """A BatchSampler that passes `set_epoch` on to its sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool
) -> DataLoader:
    if shuffle:
        batches = _EpochBatches(EpochShuffle(len(dataset), seed), batch_size, drop_last)
    else:
        batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0)


class InteractionDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: Source,
        split: Callable[[pl.LazyFrame], pl.LazyFrame],
        history_length: int = 50,  # recent training items per user fed to the user tower
        mask_target_in_history: bool = True,  # drop a training pair's item from its user's history
        batch_size: int = 512,  # training examples per step (also the in-batch negatives)
        eval_batch_size: int = 1024,  # users per chunk in full-catalogue evaluation
        seed: int = 0,  # shuffling order
    ):
        super().__init__()
        self.source = source
        self.split = split
        self.history_length = history_length
        self.mask_target_in_history = mask_target_in_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.data: PreparedData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = prepare(self.source, self.split, history_length=self.history_length)

    def _prepared(self) -> PreparedData:
        self.setup()
        assert self.data is not None
        return self.data

    def train_dataloader(self) -> DataLoader:
        data = self._prepared()
        drop_last = len(data.train) > self.batch_size
        batches = TrainBatches(data, mask_target=self.mask_target_in_history)
        return _loader(batches, self.batch_size, True, self.seed, drop_last)

    def val_dataloader(self) -> DataLoader:
        data = self._prepared()
        seen = csr_by_user(data.train, data.num_users)
        dataset = HeldOutBatches(data.val, data.train_histories, seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False)

    def test_dataloader(self) -> DataLoader:
        """Test users with everything known before the test period (train + val) as features."""
        data = self._prepared()
        seen = csr_by_user(data.before_test, data.num_users)
        dataset = HeldOutBatches(data.test, data.before_test_histories, seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False)
