import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler

from features import InteractionDataModule
from features.datamodule import EpochShuffle, _EpochBatches
from features.sources import Synthetic
from features.split import TemporalSplit
from tests.features.test_prepare import ids_and_history

FEATURES = ids_and_history(
    length=5,
    genres={"kind": "multi_hot", "column": "genres"},
    year={"kind": "numeric", "column": "year", "normalization": "quantile", "buckets": 4},
)


def _module(**kwargs) -> InteractionDataModule:
    source = Synthetic(num_users=50, num_items=40, num_clusters=4, seed=1)
    return InteractionDataModule(
        source, TemporalSplit(), features=FEATURES, batch_size=16, **kwargs
    )


def _item_codes(dm: InteractionDataModule, items: torch.Tensor) -> torch.Tensor:
    """The item id codes of item rows `items` (what a history holds)."""
    return torch.from_numpy(dm.data.item_inputs["item_id"])[items]


def test_train_batches_are_tensors_with_the_target_masked_out_of_the_history():
    dm = _module()
    batch = next(iter(dm.train_dataloader()))
    inputs = batch["user_inputs"]
    assert batch["user"].shape == (16,) and batch["item"].shape == (16,)
    assert set(inputs) == {"user_id", "history"}  # the item tower's inputs are the catalogue's
    assert inputs["history"].shape == (16, 5)
    assert torch.equal(
        inputs["user_id"], torch.from_numpy(dm.data.user_inputs["user_id"])[batch["user"]]
    )
    assert not (inputs["history"] == _item_codes(dm, batch["item"])[:, None]).any()
    tensors = [batch["user"], batch["item"], *inputs.values()]
    assert all(isinstance(v, torch.Tensor) for v in tensors)


def test_the_target_can_stay_in_the_history_as_in_simplex():
    masked = next(iter(_module(seed=3).train_dataloader()))
    dm = _module(seed=3, mask_target_in_history=False)
    kept = next(iter(dm.train_dataloader()))
    assert torch.equal(masked["item"], kept["item"])
    full = torch.from_numpy(dm.data.history_codes(dm.data.train_histories))[kept["user"]]
    history, target = kept["user_inputs"]["history"], _item_codes(dm, kept["item"])
    assert torch.equal(history, full)  # the user's whole history, untouched
    assert (history == target[:, None]).any()  # targets among it
    assert not (masked["user_inputs"]["history"] == target[:, None]).any()


def test_a_masked_history_drops_exactly_the_target():
    dm = _module(seed=5)
    batch = next(iter(dm.train_dataloader()))
    full = dm.data.train_histories[batch["user"].numpy()]  # (B, N) item rows
    expected = np.where(full == batch["item"].numpy()[:, None], dm.data.num_items, full)
    np.testing.assert_array_equal(
        batch["user_inputs"]["history"].numpy(), dm.data.history_codes(expected)
    )


def test_train_order_is_deterministic_for_a_seed():
    first = next(iter(_module(seed=3).train_dataloader()))["item"]
    again = next(iter(_module(seed=3).train_dataloader()))["item"]
    other = next(iter(_module(seed=4).train_dataloader()))["item"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_val_batches_cover_every_validation_user_with_seen_and_relevant_items():
    dm = _module(eval_batch_size=7)
    dm.setup()
    data = dm.data
    users, relevant = [], 0
    for batch in dm.val_dataloader():
        users += batch["user"].tolist()
        relevant += int(batch["num_relevant"].sum())
        expected = data.history_codes(data.train_histories[batch["user"].numpy()])
        np.testing.assert_array_equal(batch["user_inputs"]["history"].numpy(), expected)
        # Seen items are training items of that user, never validation items.
        for u, seen, rel in zip(batch["user"], batch["seen"], batch["relevant"], strict=True):
            train_items = set(data.train[data.train[:, 0] == int(u), 1].tolist())
            assert set(seen[seen >= 0].tolist()) == train_items
            assert not (set(rel[rel >= 0].tolist()) & train_items)
    assert users == data.val.users.tolist()
    assert relevant == data.val.num_interactions


def test_a_module_without_declared_features_says_so():
    dm = InteractionDataModule(Synthetic(num_users=5, num_items=5, num_clusters=1), TemporalSplit())
    with pytest.raises(ValueError, match="no features declared"):
        dm.setup()


@pytest.mark.parametrize("drop_last", [True, False])
def test_epoch_batches_are_a_batch_samplers_over_the_epochs_order(drop_last):
    """The batches cut from the permutation tensor are torch's BatchSampler's over the same
    order, for any epoch (the one-process case of features.datamodule._EpochBatches)."""
    order = EpochShuffle(103, seed=4)
    cut = _EpochBatches(order, 10, drop_last)
    for epoch in (2, 0):
        cut.set_epoch(epoch)
        assert list(cut) == list(BatchSampler(list(order), 10, drop_last))
