"""benchmarks/recipe_search.py: its data, its overrides and one variant trained end to end, on a
tiny synthetic split (CPU)."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, is_dataclass

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import train
from features import InteractionDataModule
from tests.conftest import ROOT, TINY, compose_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe_search

OVERRIDES = [o for o in TINY if o.split("=")[0].startswith(("data", "model"))]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    recipe_search.prepare(None, out, OVERRIDES)
    return out


def test_prepare_writes_the_split_train_py_trains_on(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    tensors, _ = recipe_search._load(str(prepared), "cpu")
    assert meta["batch_size"] == 128 and meta["spec"]["history_length"] == 10
    assert meta["mask_target_in_history"] is True
    assert meta["model"]["negatives"]["num_negatives"] == 64
    assert not any(name.startswith("test") for name in tensors)  # a search never sees test
    dm: InteractionDataModule = instantiate(compose_config(prepared / "unused").data)
    dm.setup()
    assert torch.equal(tensors["train"].long(), torch.from_numpy(dm.data.train))
    users = torch.cat([tensors[f"val.{n}.user"] for n in range(meta["val_chunks"])])
    assert sorted(users.tolist()) == sorted(dm.data.val.users.tolist())
    relevant = sum(int(tensors[f"val.{n}.num_relevant"].sum()) for n in range(meta["val_chunks"]))
    assert relevant == dm.data.val.num_interactions


def _plain(value):
    """A built config object as comparable values: a dataclass's fields; a module's class,
    public attributes and weights."""
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, torch.nn.Module):
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        weights = {k: v.tolist() for k, v in value.state_dict().items()}
        return type(value), public, weights
    return value


def test_the_prepared_model_builds_as_train_py_builds_it(prepared):
    """`run` builds the module without Hydra (`build`): the same objects instantiate gives."""
    meta = json.loads((prepared / "meta.json").read_text())
    ours = recipe_search.build(recipe_search.apply_overrides(meta, {})["model"])
    theirs = instantiate(compose_config(prepared / "unused").model)
    assert isinstance(ours, functools.partial) and ours.func is theirs.func
    assert {k: _plain(v) for k, v in ours.keywords.items()} == {
        k: _plain(v) for k, v in theirs.keywords.items()
    }


def test_train_batches_mask_the_target_out_of_its_history(prepared):
    tensors, _ = recipe_search._load(str(prepared), "cpu")
    batches = recipe_search.TrainBatches(tensors, batch_size=32, seed=0)
    batch = next(iter(batches))
    assert set(batch) == {"user", "history", "item", "item_genres", "item_year"}
    assert len(batches) == len(tensors["train"]) // 32
    assert not (batch["history"] == batch["item"][:, None]).any()
    # The history is the user's own, only the target replaced by padding.
    full = tensors["histories"].long()[batch["user"]]
    kept = batch["history"] != batches.pad
    assert torch.equal(batch["history"][kept], full[kept])
    # Without the mask (the `mask_target_in_history` of the data config), the whole history.
    unmasked = next(iter(recipe_search.TrainBatches(tensors, 32, seed=0, mask_target=False)))
    assert torch.equal(unmasked["item"], batch["item"])
    assert torch.equal(unmasked["history"], full)


def test_overrides_are_applied_and_unknown_ones_are_named():
    meta = {
        "model": {"towers": {"embedding_dim": 64}, "loss": {"_target_": "x.A", "margin": 0.9}},
        "batch_size": 512,
        "max_epochs": 12,
        "seed": 42,
    }
    recipe = recipe_search.apply_overrides(
        meta, {"towers.embedding_dim": 128, "max_epochs": 8, "loss": {"_target_": "x.B"}}
    )
    assert recipe["model"]["towers"]["embedding_dim"] == 128 and recipe["max_epochs"] == 8
    assert recipe["model"]["loss"] == {"_target_": "x.B"}
    assert recipe["mask_target_in_history"] is True  # the default for a split prepared before it
    keep = recipe_search.apply_overrides(meta, {"mask_target_in_history": False})
    assert keep["mask_target_in_history"] is False
    assert meta["model"]["towers"]["embedding_dim"] == 64  # the experiment's config is untouched
    with pytest.raises(KeyError, match=r"towers\.embedding_dims"):
        recipe_search.apply_overrides(meta, {"towers.embedding_dims": 128})


def test_every_shipped_variant_names_real_fields_of_the_gowalla_recipe():
    cfg = train.compose(["experiment=gowalla"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    meta = {"model": model, "batch_size": 1, "max_epochs": 1, "seed": 0}
    for name, overrides in recipe_search.VARIANTS.items():
        recipe = recipe_search.apply_overrides(meta, overrides)
        # Every config object of the module built (towers, loss, negatives, optim): a key that
        # moved or a value of the wrong kind fails here, not in a worker on a borrowed GPU.
        built = recipe_search.build(recipe["model"])
        assert isinstance(built, functools.partial), name


def test_a_split_prepared_before_the_scoring_layer_still_builds():
    """meta.json written when the popularity prior was a tower setting (towers.popularity_prior)
    trains with the same prior, now the module's argument."""
    old = {
        "model": {
            "_target_": "towers.TwoTowerModule",
            "_partial_": True,
            "towers": {"_target_": "towers.TowerConfig", "popularity_prior": 0.0005},
        },
        "batch_size": 512,
        "max_epochs": 12,
        "seed": 42,
    }
    model = recipe_search.apply_overrides(old, {})["model"]
    assert model["popularity_prior"] == 0.0005 and "popularity_prior" not in model["towers"]
    assert recipe_search.build(model).keywords["popularity_prior"] == 0.0005
    assert old["model"]["towers"]["popularity_prior"] == 0.0005  # the meta itself is untouched


def test_a_variant_trains_and_reports_validation_only(prepared):
    options = {
        "data": str(prepared),
        "accelerator": "cpu",
        "threads": 1,
        "val_every": 2,
        "limit_train_batches": 1.0,
    }
    row = recipe_search.train_variant(("epochs-3", {"max_epochs": 3}, options))
    assert [point["epoch"] for point in row["curve"]] == [2, 3]
    assert 0.0 < row["recall@20"] <= 1.0 and row["recall@20"] == row["curve"][-1]["val/recall@20"]
    failed = recipe_search.train_variant(("bad", {"loss.margin": "wide"}, options))
    assert "error" in failed and "recall@20" not in failed
    assert "failed: " in recipe_search.table([row, failed])
