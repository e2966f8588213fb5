import torch

from features import InteractionDataModule
from features.sources import Synthetic
from features.split import TemporalSplit


def _module(**kwargs) -> InteractionDataModule:
    source = Synthetic(num_users=50, num_items=40, num_clusters=4, seed=1)
    return InteractionDataModule(source, TemporalSplit(), history_length=5, batch_size=16, **kwargs)


def test_train_batches_are_tensors_with_the_target_masked_out_of_the_history():
    dm = _module()
    batch = next(iter(dm.train_dataloader()))
    assert batch["user"].shape == (16,) and batch["history"].shape == (16, 5)
    assert batch["item_genres"].shape[0] == 16 and batch["item_year"].shape == (16,)
    assert not (batch["history"] == batch["item"][:, None]).any()
    assert all(isinstance(v, torch.Tensor) for v in batch.values())


def test_the_target_can_stay_in_the_history_as_in_simplex():
    masked = next(iter(_module(seed=3).train_dataloader()))
    dm = _module(seed=3, mask_target_in_history=False)
    kept = next(iter(dm.train_dataloader()))
    assert torch.equal(masked["item"], kept["item"])
    full = torch.from_numpy(dm.data.train_histories)[kept["user"]]
    assert torch.equal(kept["history"], full)  # the user's whole history, untouched
    assert (kept["history"] == kept["item"][:, None]).any()  # targets among it
    assert not (masked["history"] == masked["item"][:, None]).any()


def test_train_order_is_deterministic_for_a_seed():
    first = next(iter(_module(seed=3).train_dataloader()))["item"]
    again = next(iter(_module(seed=3).train_dataloader()))["item"]
    other = next(iter(_module(seed=4).train_dataloader()))["item"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_val_batches_cover_every_validation_user_with_seen_and_relevant_items():
    dm = _module(eval_batch_size=7)
    data = dm.data if dm.data else (dm.setup() or dm.data)
    users, relevant = [], 0
    for batch in dm.val_dataloader():
        users += batch["user"].tolist()
        relevant += int(batch["num_relevant"].sum())
        # Seen items are training items of that user, never validation items.
        for u, seen, rel in zip(batch["user"], batch["seen"], batch["relevant"], strict=True):
            train_items = set(data.train[data.train[:, 0] == int(u), 1].tolist())
            assert set(seen[seen >= 0].tolist()) == train_items
            assert not (set(rel[rel >= 0].tolist()) & train_items)
    assert users == data.val.users.tolist()
    assert relevant == data.val.num_interactions
