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
        pairs = self.pairs[torch.as_tensor(rows)]
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
        users = self.held_out.users[rows]
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
        features: FeaturesConfig | None = None,  # train.py passes the parsed conf/features
        mask_target_in_history: bool = True,  # drop a training pair's item from its user's history
        batch_size: int = 512,  # training examples per step (also the in-batch negatives)
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

    def train_dataloader(self) -> DataLoader:
        data = self._prepared()
        drop_last = len(data.train) > self.batch_size
        batches = TrainBatches(data, mask_target=self.mask_target_in_history)
        return _loader(batches, self.batch_size, True, self.seed, drop_last)

    def val_dataloader(self) -> DataLoader:
        data = self._prepared()
        seen = csr_by_user(data.train, data.num_users)
        dataset = HeldOutBatches(data.val, UserInputs(data, data.train_histories), seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False)

    def test_dataloader(self) -> DataLoader:
        """Test users with everything known before the test period (train + val) as features."""
        data = self._prepared()
        seen = csr_by_user(data.before_test, data.num_users)
        dataset = HeldOutBatches(data.test, UserInputs(data, data.before_test_histories), seen)
        return _loader(dataset, self.eval_batch_size, False, self.seed, False)
