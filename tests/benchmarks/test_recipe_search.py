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
from features.spec import FeaturesConfig
from tests.conftest import ROOT, TINY, compose_config
from towers import FeatureSpec

sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe_search

OVERRIDES = [o for o in TINY if o.split("=")[0].startswith(("data", "features", "model"))]
NO_USER_ID = "~features.user.features.user_id"
OPTIONS = {"accelerator": "cpu", "threads": 1, "val_every": 2, "limit_train_batches": 1.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    recipe_search.prepare(None, out, OVERRIDES)
    return out


@pytest.fixture(scope="module")
def prepared_without_user_id(tmp_path_factory):
    """The recipe without a user id (SimpleX's tower): the id is prepared all the same."""
    out = tmp_path_factory.mktemp("search-no-user-id")
    recipe_search.prepare(None, out, [*OVERRIDES, NO_USER_ID])
    return out


def test_prepare_writes_the_split_train_py_trains_on(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    tensors, _ = recipe_search._load(str(prepared), "cpu")
    assert meta["batch_size"] == 128
    assert meta["features"]["user"]["features"]["history"]["length"] == 10
    assert meta["mask_target_in_history"] is True
    assert meta["model"]["negatives"]["num_negatives"] == 64
    assert not any(name.startswith("test") for name in tensors)  # a search never sees test
    data = train.prepare_data(compose_config(prepared / "unused")).data
    assert meta["features"] == meta["prepared"] == data.features.config.to_config()
    assert torch.equal(tensors["train"].long(), torch.from_numpy(data.train))
    for side, inputs in (("user", data.user_inputs), ("item", data.item_inputs)):
        assert {n.split(".")[1] for n in tensors if n.startswith(side + ".")} == set(inputs)
        for name, values in inputs.items():
            assert torch.equal(tensors[f"{side}.{name}"], torch.from_numpy(values)), name
    spec = recipe_search.tower_spec(meta, meta["features"])
    assert spec.to_dict() == FeatureSpec(**data.tower_spec()).to_dict()
    users = torch.cat([tensors[f"val.{n}.user"] for n in range(meta["val_chunks"])])
    assert sorted(users.tolist()) == sorted(data.val.users.tolist())
    relevant = sum(int(tensors[f"val.{n}.num_relevant"].sum()) for n in range(meta["val_chunks"]))
    assert relevant == data.val.num_interactions


def test_a_side_without_an_id_has_one_prepared_for_the_variants_that_add_it(
    prepared, prepared_without_user_id
):
    meta = json.loads((prepared_without_user_id / "meta.json").read_text())
    assert "user_id" not in meta["features"]["user"]["features"]  # the recipe has none
    assert meta["prepared"]["user"]["features"]["user_id"] == {
        "kind": "id", "min_count": 1, "oov_buckets": 0, "hash_buckets": 0
    }  # fmt: skip
    baseline = recipe_search.apply_overrides(meta, {})
    assert [i.name for i in recipe_search.tower_spec(meta, baseline["features"]).user_inputs] == [
        "history"
    ]
    added = recipe_search.apply_overrides(meta, recipe_search.VARIANTS["user-id"])
    spec = recipe_search.tower_spec(meta, added["features"])
    assert [i.name for i in spec.user_inputs] == ["history", "user_id"]
    # The same fitted id as a split prepared with it declared.
    full, _ = recipe_search._load(str(prepared), "cpu")
    tensors, _ = recipe_search._load(str(prepared_without_user_id), "cpu")
    assert torch.equal(tensors["user.user_id"], full["user.user_id"])
    with pytest.raises(KeyError, match=r"feature user\.user_id .*'min_count': 5"):
        other = {recipe_search.USER_ID: {"kind": "id", "min_count": 5}}
        recipe_search.tower_spec(meta, recipe_search.apply_overrides(meta, other)["features"])
    with pytest.raises(KeyError, match=r"feature item\.price .*no such feature"):
        price = {"+features.item.features.price": {"kind": "numeric"}}
        recipe_search.tower_spec(meta, recipe_search.apply_overrides(meta, price)["features"])
    row = recipe_search.train_variant(
        ("user-id", {**recipe_search.VARIANTS["user-id"], "max_epochs": 1},
         {**OPTIONS, "data": str(prepared_without_user_id)})
    )  # fmt: skip
    assert "error" not in row and 0.0 < row["recall@20"] <= 1.0


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
    tensors, meta = recipe_search._load(str(prepared), "cpu")
    batches = recipe_search.TrainBatches(tensors, meta, batch_size=32, seed=0)
    batch = next(iter(batches))
    assert set(batch) == {"user", "item", "user_inputs"}
    assert set(batch["user_inputs"]) == {"user_id", "history"}
    assert len(batches) == len(tensors["train"]) // 32
    assert torch.equal(batch["user_inputs"]["user_id"], tensors["user.user_id"][batch["user"]])
    # Histories are item id codes (-1: padding); every training item has its own code.
    codes = tensors["item_codes"]
    history = batch["user_inputs"]["history"]
    assert not (history == codes[batch["item"]][:, None]).any()
    # The history is the user's own, only the target replaced by padding.
    full = codes[tensors["histories"].long()[batch["user"]]]
    kept = history != -1
    assert torch.equal(history[kept], full[kept])
    # Without the mask (the `mask_target_in_history` of the data config), the whole history.
    unmasked = next(iter(recipe_search.TrainBatches(tensors, meta, 32, 0, mask_target=False)))
    assert torch.equal(unmasked["item"], batch["item"])
    assert torch.equal(unmasked["user_inputs"]["history"], full)
    validation = next(iter(recipe_search.ValBatches(tensors, meta)))
    users = validation["user"]
    assert torch.equal(
        validation["user_inputs"]["history"], codes[tensors["histories"][users].long()]
    )


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


def test_feature_overrides_drop_add_and_set_as_hydra_does():
    meta = {
        "model": {},
        "features": {
            "user": {"combine": "sum", "features": {"user_id": {"kind": "id"}, "history": {}}},
            "item": {"combine": "sum", "features": {"item_id": {"kind": "id"}}},
        },
        "batch_size": 1,
        "max_epochs": 1,
        "seed": 0,
    }
    dropped = recipe_search.apply_overrides(meta, {NO_USER_ID: None})
    assert list(dropped["features"]["user"]["features"]) == ["history"]
    again = recipe_search.apply_overrides(dropped, {recipe_search.USER_ID: {"kind": "id"}})
    assert list(again["features"]["user"]["features"]) == ["history", "user_id"]
    concat = recipe_search.apply_overrides(meta, {"features.item.combine": "concat"})
    assert concat["features"]["item"]["combine"] == "concat"
    assert meta["features"]["user"]["features"]["user_id"] == {"kind": "id"}  # untouched
    with pytest.raises(KeyError, match="'user_id' is already in the declared features"):
        recipe_search.apply_overrides(meta, {recipe_search.USER_ID: {"kind": "id"}})
    with pytest.raises(KeyError, match="no 'price' in the declared features"):
        recipe_search.apply_overrides(meta, {"~features.item.features.price": None})
    with pytest.raises(KeyError, match="only features are added"):
        recipe_search.apply_overrides(meta, {"~towers.embedding_dim": None})
    with pytest.raises(KeyError, match="prepared without features"):
        recipe_search.apply_overrides({**meta, "features": None}, {NO_USER_ID: None})


def test_every_shipped_variant_names_real_fields_of_the_gowalla_recipe():
    """The recipe as it was searched (no user id: the variants that add one)."""
    cfg = train.compose(["experiment=gowalla", NO_USER_ID])
    meta = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "features": FeaturesConfig.parse(OmegaConf.to_container(cfg.features)).to_config(),
        "batch_size": 1,
        "max_epochs": 1,
        "seed": 0,
    }
    for name, overrides in recipe_search.VARIANTS.items():
        recipe = recipe_search.apply_overrides(meta, overrides)
        # Every config object of the module built (towers, loss, negatives, optim): a key that
        # moved or a value of the wrong kind fails here, not in a worker on a borrowed GPU.
        built = recipe_search.build(recipe["model"])
        assert isinstance(built, functools.partial), name
        FeaturesConfig.parse(recipe["features"])  # declarations a split can be prepared with


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
    options = {**OPTIONS, "data": str(prepared)}
    row = recipe_search.train_variant(("epochs-3", {"max_epochs": 3}, options))
    assert [point["epoch"] for point in row["curve"]] == [2, 3]
    assert 0.0 < row["recall@20"] <= 1.0 and row["recall@20"] == row["curve"][-1]["val/recall@20"]
    failed = recipe_search.train_variant(("bad", {"loss.margin": "wide"}, options))
    assert "error" in failed and "recall@20" not in failed
    assert "failed: " in recipe_search.table([row, failed])
