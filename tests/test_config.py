"""One source for every default: each config group whose objects the code builds states the same
values as those objects' Python defaults, so `python train.py` and a bare `TowerConfig()` (a
notebook, a test, a benchmark) mean the same recipe.

Each test builds the object twice, from the shipped YAML (`hydra.utils.instantiate` on the node
`train.compose()` gives) and from Python with no arguments, and compares them field by field.
Changing a default on one side only fails here: change both, and say why where the value is
chosen (conf/..., with its measurement).

Not compared, by design:
- conf/trainer, conf/callbacks, conf/logger build Lightning's own classes (`lightning.Trainer`,
  its callbacks and loggers): their Python defaults are Lightning's, not this project's, and the
  YAML is the only place ours are stated.
- conf/paths: locations, no object.
- conf/features: declarations with no Python default; each file is parsed instead (and each data
  config has the features file of its name, which conf/train.yaml picks: `features: ${data}`).
- arguments with no Python default (the data's sizes, `spec` and `catalogue`; the data module's
  `source` and `split`): nothing to compare with; the tests name each one they leave out.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields, is_dataclass
from functools import cache
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import train
from features import InteractionDataModule
from features.sources import MovieLens
from features.spec import FeaturesConfig
from features.split import TemporalSplit
from serve.index import IndexConfig
from towers import (
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


@cache
def _compose(*overrides: str) -> DictConfig:
    """`python train.py OVERRIDES...`'s config (no override: the shipped default recipe)."""
    return train.compose(list(overrides))


def _node(overrides: tuple[str, ...], path: str) -> DictConfig:
    node = OmegaConf.select(_compose(*overrides), path)
    assert node is not None, f"{path}: not in the config composed with {list(overrides)}"
    return node


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as {dotted.key: value}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(from_yaml: dict, from_python: dict) -> dict[str, tuple]:
    """{field: (YAML's value, Python's default)} for every field on which they disagree."""
    yaml_flat, python_flat = _flat(from_yaml), _flat(from_python)
    missing = "<not set>"
    return {
        key: (yaml_flat.get(key, missing), python_flat.get(key, missing))
        for key in sorted(yaml_flat.keys() | python_flat.keys())
        if yaml_flat.get(key, missing) != python_flat.get(key, missing)
    }


# -- what each built object holds --------------------------------------------------------------
# Constructor arguments a loss does not keep under their own name: how to read them back.
_LOSS_READERS = {
    (SampledSoftmaxLoss, "learn_temperature"): lambda loss: loss.log_scale.requires_grad,
}


def _loss_settings(loss: torch.nn.Module) -> dict:
    """The loss's class and every constructor argument, read back from the built loss (the
    temperature through its property: what the logits use)."""
    settings = {"class": type(loss).__name__}
    for name in inspect.signature(type(loss)).parameters:
        reader = _LOSS_READERS.get((type(loss), name))
        if reader is None and not hasattr(loss, name):
            raise AssertionError(
                f"{type(loss).__name__}({name}=...) is not kept as `.{name}`: add a reader to "
                "tests/test_config.py's _LOSS_READERS"
            )
        settings[name] = reader(loss) if reader else getattr(loss, name)
    return settings


def _settings(obj) -> dict:
    return asdict(obj) if is_dataclass(obj) else _loss_settings(obj)


# -- the model group ---------------------------------------------------------------------------
# Each node the model group builds, beside the Python object it must equal:
# (test id, overrides, node, Python default).
MODEL_GROUPS = [
    ("towers", (), "model.towers", TowerConfig),
    ("negatives", (), "model.negatives", NegativeConfig),
    ("optim", (), "model.optim", OptimConfig),
    ("loss/sampled_softmax", (), "model.loss", SampledSoftmaxLoss),
    (
        "loss/cosine_contrastive",
        ("model/loss=cosine_contrastive",),
        "model.loss",
        CosineContrastiveLoss,
    ),
]


@pytest.mark.parametrize(
    ("overrides", "path", "python_default"),
    [pytest.param(o, p, d, id=i) for i, o, p, d in MODEL_GROUPS],
)
def test_each_model_node_builds_its_python_default(overrides, path, python_default):
    from_yaml = instantiate(_node(overrides, path))
    assert type(from_yaml) is python_default
    assert _differences(_settings(from_yaml), _settings(python_default())) == {}


# The module's arguments without a Python default: the data's inputs and catalogue, which
# train.py passes (these are the smallest that build: ids and a history on the user side).
SPEC = FeatureSpec(
    user_inputs=(
        TowerInput("user_id", "id", "index", rows=3),
        TowerInput("history", "history", "history", rows=4, width=2, pooling="mean"),
    ),
    item_inputs=(TowerInput("item_id", "id", "index", rows=4),),
    num_users=3,
    num_items=4,
)


def _catalogue() -> ItemCatalogue:
    return ItemCatalogue(
        inputs={"item_id": torch.arange(SPEC.num_items)},
        counts=torch.ones(SPEC.num_items, dtype=torch.long),
    )


def _module_settings(module: TwoTowerModule) -> dict:
    return {
        "towers": asdict(module.tower_config),
        "negatives": asdict(module.negatives),
        "optim": asdict(module.optim),
        "loss": _loss_settings(module.loss),
        "popularity_prior": module.popularity_prior,
        "matryoshka": module.matryoshka,
        "ks": module.ks,
    }


def test_the_model_group_builds_the_module_python_builds_with_no_arguments():
    """conf/model/two_tower.yaml, completed as train.py completes it, against
    TwoTowerModule(spec, catalogue): the towers, loss, negatives, optim it falls back on and
    its popularity_prior."""
    from_yaml = instantiate(_compose().model)(spec=SPEC, catalogue=_catalogue())
    from_python = TwoTowerModule(SPEC, _catalogue())
    assert _differences(_module_settings(from_yaml), _module_settings(from_python)) == {}


# Arguments the model YAML leaves to Python on purpose (every other one it states).
NOT_IN_MODEL_YAML = {
    TwoTowerModule: {
        "spec",  # the data's sizes: train.py passes them
        "catalogue",  # the data's items: train.py passes them
        "ks",  # metric cut-offs, defined once in towers.metrics.KS
    },
}


def _arguments(cls) -> set[str]:
    if is_dataclass(cls):
        return {f.name for f in fields(cls)}
    return set(inspect.signature(cls).parameters)


@pytest.mark.parametrize(
    ("overrides", "path", "cls"),
    [
        pytest.param((), "model", TwoTowerModule, id="module"),
        *(pytest.param(o, p, d, id=i) for i, o, p, d in MODEL_GROUPS),
    ],
)
def test_the_model_yaml_states_every_setting(overrides, path, cls):
    """conf/model/two_tower.yaml says every value equals the Python default: it lists them all,
    so a field added in Python only is caught here (its YAML would silently take the default)."""
    stated = set(_node(overrides, path)) - {"_target_", "_partial_"}
    assert stated == _arguments(cls) - NOT_IN_MODEL_YAML.get(cls, set())


# -- the data group ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "python_default"),
    [("data.source", MovieLens), ("data.split", TemporalSplit)],
)
def test_the_movielens_source_and_split_are_their_python_defaults(path, python_default):
    from_yaml = instantiate(_node((), path))
    assert type(from_yaml) is python_default
    assert _differences(asdict(from_yaml), asdict(python_default())) == {}


def _data_module_params():
    """InteractionDataModule's arguments that have a Python default (`source` and `split` have
    none: which data to read is the config's choice), each a test case."""
    skipped = {
        # `${seed}`: the run's one seed (conf/train.yaml) reaches the data order by design.
        "seed": "data.seed is ${seed}, the run's seed, by design",
    }
    params = []
    for name, parameter in inspect.signature(InteractionDataModule).parameters.items():
        if parameter.default is inspect.Parameter.empty:
            continue
        marks = ()
        if name in skipped:
            marks = pytest.mark.skip(reason=skipped[name])
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _data_module_params())
def test_the_movielens_data_group_keeps_the_data_module_defaults(name):
    from_yaml = instantiate(_compose().data)
    from_python = InteractionDataModule(source=MovieLens(), split=TemporalSplit())
    assert getattr(from_yaml, name) == getattr(from_python, name)


# -- the index group ---------------------------------------------------------------------------
def test_the_flat_index_group_is_index_config_defaults():
    """conf/index/flat.yaml has no `_target_`: export reads it with IndexConfig.parse."""
    from_yaml = IndexConfig.parse(_compose().index)
    assert _differences(asdict(from_yaml), asdict(IndexConfig())) == {}


# -- the features group ------------------------------------------------------------------------
CONF = Path(train.ROOT) / "conf"
FEATURES_FILES = sorted(p.stem for p in (CONF / "features").glob("*.yaml"))
DATA_FILES = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


class _Tables:
    """A source with a users and an items table, for `features=auto` files (what they infer
    from is the tables; the interactions are not read)."""

    name = "tables"

    def users(self) -> pl.DataFrame:
        countries = ["fr", "de", "fr", "fr", "de", "fr"]  # a category: 2 values in 6 rows
        return pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "country": countries})

    def items(self) -> pl.DataFrame:
        return pl.DataFrame({"item_id": [7, 8, 9, 10], "price": [1.5, 2.0, 0.5, 9.0]})


@pytest.mark.parametrize("name", FEATURES_FILES)
def test_each_features_file_declares_both_towers(name):
    """A declared file parses (`FeaturesConfig.parse`); an `auto: true` one gives, through
    train.py, a spec inferred from the tables with the history length it states. Either way the
    spec writes itself back as YAML that parses to the same spec, and a user history has the
    item id's table to read."""
    config = _yaml("features", name)
    if config.get("auto"):
        features = train.features_config(OmegaConf.create({"features": config}), _Tables())
        assert features.user.of_kind("history").length == config["history_length"]
        assert features.user.of_kind("categorical").column == "country"
        assert features.item.of_kind("numeric").column == "price"
    else:
        features = FeaturesConfig.parse(config)
    assert FeaturesConfig.parse(yaml.safe_load(features.to_yaml())) == features
    assert features.user.of_kind("history") is None or features.item.of_kind("id") is not None


@pytest.mark.parametrize("name", DATA_FILES)
def test_each_data_config_has_the_features_file_of_its_name(name):
    """conf/train.yaml's `features: ${data}` picks conf/features/<data>.yaml: it must exist,
    and the composed config's features node is that file."""
    assert (CONF / "features" / f"{name}.yaml").is_file(), f"conf/features/{name}.yaml is missing"
    composed = OmegaConf.to_container(_compose(f"data={name}").features, resolve=True)
    assert composed == _yaml("features", name)
