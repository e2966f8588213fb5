"""Fitted features: each declared feature fitted on its side's training rows, and the one transform
that turns rows of the side's table into tower inputs (at training, export, update and serving).

A fitted feature turns a table into one numpy array, named after the feature, in an *encoding*:
- "index": (N,) int64 rows of an embedding table, in [0, rows). `id`: a sorted vocabulary of the
  keys with `min_count` training interactions, then `oov_buckets` hashed rows (or `hash_buckets`
  and no vocabulary); -1 = no row (the tower reads zeros). `categorical`: vocabulary,
  `oov_buckets` (or `hash_buckets`), then the missing row; `numeric` quantile: the buckets, then
  the missing row.
- "bag": (N, width) int64 rows of a row's known values, padded with the last row: `multi_hot`.
- "dense": (N, dim) float32. `numeric` standard / log1p: [z-score (0 when missing), missing
  flag]; `text`: the sentence encoder's vector of the joined columns (zeros when all are blank).
- "tokens": (N, max_tokens) int64 token ids, -1 past the text's end: `text` with
  `fine_tune_layers` (its encoder runs inside the tower and trains).
- "history": the user's recent items, built from interactions by the caller (no transform).

`features.columns` reads and checks the columns. A value unseen in training takes an OOV row by
`features.lookup.stable_hash`, else the missing row (categorical) or -1 (id); multi_hot drops
unseen values and reads a value repeated in a row once. Numeric statistics come from the finite
training values (population std, 1 for a constant column); log1p refuses a negative training
value (use `standard`) and reads one at transform as missing, so `update` and serving never fail
on a value. Quantile edges are the training quantiles at i / buckets without duplicates (ties
give fewer buckets); a value takes the bucket `np.searchsorted(edges, x, side="right")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from features.columns import check_columns, check_log1p, joined_text, numbers_of, typed_column
from features.lookup import Lookup
from features.spec import (
    CategoricalFeature,
    Feature,
    HistoryFeature,
    IdFeature,
    MultiHotFeature,
    NumericFeature,
    SideFeatures,
    TextFeature,
    parse_feature,
)
from features.text_encoder import TOKEN_PADDING, backbone_width, encoder_for, tokenize

TextEncoderFactory = Callable[[str], Any]  # model name -> encoder with .encode(texts) and .dim
NO_ROW = -1
TRANSFORMED = "the rows to transform"  # `where` in the errors of a transform


class FittedFeature:
    """A declared feature fitted on training rows: `input()` describes its tower input, `state()`
    is its declaration and fitted state as JSON-able data; table features add `transform`."""

    feature: Feature
    encoding: ClassVar[str]

    def input(self) -> dict[str, Any]:
        """The tower input: name, kind, encoding, rows, dim, width, pooling (0 / None unused)."""
        return self._input()

    def _input(self, rows: int = 0, dim: int = 0, width: int = 0, pooling: str | None = None):
        return {"name": self.feature.name, "kind": self.feature.kind, "encoding": self.encoding,
                "rows": rows, "dim": dim, "width": width, "pooling": pooling}  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"name": self.feature.name, "feature": self.feature.to_config(), **self.fitted()}

    def fitted(self) -> dict[str, Any]:
        """What fitting learned, as JSON-able data."""
        return {}


@dataclass(frozen=True)
class _LookupFeature(FittedFeature):
    """A feature read through a `Lookup` of its column's values."""

    feature: Feature
    lookup: Lookup

    def _values(self, table_df: pl.DataFrame, where: str, fitted: str | None = None) -> pl.Series:
        column, kind = self.feature.columns[0], fitted or self.lookup.kind
        return typed_column(table_df, self.feature, column, where, kind)

    def fitted(self) -> dict[str, Any]:
        return self.lookup.state()

    @classmethod
    def from_state(cls, feature: Feature, state: dict[str, Any], text_encoder=None):
        buckets = getattr(feature, "hash_buckets", 0) or getattr(feature, "oov_buckets", 0)
        return cls(feature, Lookup.from_state(state, buckets))


class FittedId(_LookupFeature):
    """The side's key: its vocabulary row, an OOV bucket, a hash bucket, or -1."""

    encoding: ClassVar[str] = "index"
    feature: IdFeature

    @classmethod
    def fit(cls, feature: IdFeature, train_df, counts, where: str, text_encoder=None) -> FittedId:
        keys = typed_column(train_df, feature, feature.columns[0], where)
        if feature.hash_buckets:
            return cls(feature, Lookup.hashed(keys, feature.hash_buckets))
        return cls(feature, Lookup.fit(keys, counts, feature.min_count, feature.oov_buckets))

    def input(self) -> dict[str, Any]:
        return self._input(rows=self.lookup.rows)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        return self.lookup.codes(self._values(table_df, where), NO_ROW)  # (N,)


class FittedCategorical(_LookupFeature):
    """One value a row: its vocabulary row, an OOV (or hash) bucket, or the missing row (last)."""

    encoding: ClassVar[str] = "index"
    feature: CategoricalFeature

    @classmethod
    def fit(cls, feature: CategoricalFeature, train_df, counts, where: str, text_encoder=None):
        values = typed_column(train_df, feature, feature.column, where)
        if feature.hash_buckets:
            return cls(feature, Lookup.hashed(values, feature.hash_buckets))
        ones = np.ones(values.len(), dtype=np.int64)  # (N,) min_count counts rows
        return cls(feature, Lookup.fit(values, ones, feature.min_count, feature.oov_buckets))

    def input(self) -> dict[str, Any]:
        return self._input(rows=self.lookup.rows + 1)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        return self.lookup.codes(self._values(table_df, where), self.lookup.rows)  # (N,)


class FittedMultiHot(_LookupFeature):
    """A list a row: the rows of its known values (each once, at most `max_length`), padded with
    the padding row (the last)."""

    encoding: ClassVar[str] = "bag"
    feature: MultiHotFeature

    @classmethod
    def fit(cls, feature: MultiHotFeature, train_df, counts, where: str, text_encoder=None):
        lists = typed_column(train_df, feature, feature.column, where)
        values = lists.list.unique().explode()  # min_count counts rows: a value once a row
        ones = np.ones(values.len(), dtype=np.int64)  # (M,)
        return cls(feature, Lookup.fit(values, ones, feature.min_count, 0))

    def input(self) -> dict[str, Any]:
        return self._input(self.lookup.rows + 1, 0, self.feature.max_length, self.feature.pooling)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        lists = self._values(table_df, where, f"list[{self.lookup.kind}]")
        values_df = (
            pl.DataFrame({"value": lists.list.unique(maintain_order=True)})
            .with_row_index("row")
            .explode("value")
        )
        codes = self.lookup.codes(values_df["value"], NO_ROW)  # (M,)
        placed_df = (
            values_df.select("row", code=pl.Series(codes))
            .filter(pl.col("code") != NO_ROW)
            .with_columns(position=pl.int_range(pl.len()).over("row"))
            .filter(pl.col("position") < self.feature.max_length)
        )
        width, padding = self.feature.max_length, self.lookup.rows
        bags = np.full((lists.len(), width), padding, dtype=np.int64)  # (N, W)
        rows, positions = placed_df["row"].to_numpy(), placed_df["position"].to_numpy()
        bags[rows, positions] = placed_df["code"].to_numpy()
        return bags


@dataclass(frozen=True)
class FittedNumeric(FittedFeature):
    """A number normalised by `standard` or `log1p`: [z-score (0 when missing), missing flag]."""

    encoding: ClassVar[str] = "dense"
    feature: NumericFeature
    mean: float
    std: float

    @classmethod
    def fit(cls, feature: NumericFeature, train_df, counts, where: str, text_encoder=None):
        numbers = numbers_of(train_df, feature, where)
        numbers = numbers[np.isfinite(numbers)]  # (M,)
        if feature.normalization == "log1p":
            check_log1p(numbers, feature, where)
            numbers = np.log1p(numbers)
        std = float(numbers.std()) if numbers.size else 0.0
        return cls(feature, float(numbers.mean()) if numbers.size else 0.0, std or 1.0)

    def input(self) -> dict[str, Any]:
        return self._input(dim=2)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        numbers = numbers_of(table_df, self.feature, where)  # (N,)
        if self.feature.normalization == "log1p":
            usable = numbers >= 0  # a negative value is missing: log1p was fitted on >= 0
            numbers = np.where(usable, np.log1p(np.where(usable, numbers, 0.0)), np.nan)
        missing = np.isnan(numbers)  # (N,)
        scores = np.where(missing, 0.0, (numbers - self.mean) / self.std)  # (N,)
        return np.stack([scores, missing], axis=1).astype(np.float32)  # (N, 2)

    def fitted(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, feature: NumericFeature, state: dict[str, Any], text_encoder=None):
        return cls(feature, float(state["mean"]), float(state["std"]))


@dataclass(frozen=True)
class FittedQuantile(FittedFeature):
    """A number as its equal-frequency bucket of the training values; missing: the last row."""

    encoding: ClassVar[str] = "index"
    feature: NumericFeature
    edges: tuple[float, ...]  # increasing inner edges: len(edges) + 1 buckets

    @classmethod
    def fit(cls, feature: NumericFeature, train_df, counts, where: str, text_encoder=None):
        numbers = numbers_of(train_df, feature, where)
        numbers = numbers[np.isfinite(numbers)]  # (M,)
        levels = np.arange(1, feature.buckets) / feature.buckets  # (B-1,)
        edges = np.unique(np.quantile(numbers, levels)) if numbers.size else []
        return cls(feature, tuple(float(e) for e in edges))

    def input(self) -> dict[str, Any]:
        return self._input(rows=len(self.edges) + 2)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        numbers = numbers_of(table_df, self.feature, where)  # (N,)
        buckets = np.searchsorted(np.asarray(self.edges), numbers, side="right")  # (N,)
        return np.where(np.isnan(numbers), len(self.edges) + 1, buckets).astype(np.int64)

    def fitted(self) -> dict[str, Any]:
        return {"edges": list(self.edges)}

    @classmethod
    def from_state(cls, feature: NumericFeature, state: dict[str, Any], text_encoder=None):
        return cls(feature, tuple(float(e) for e in state["edges"]))


@dataclass(frozen=True)
class FittedText(FittedFeature):
    """String columns joined by the separator (blank ones skipped), encoded by the sentence
    encoder `feature.model` from `text_encoder` (default `features.text_encoder.encoder_for`)
    when a transform needs one; a row without text is zeros."""

    encoding: ClassVar[str] = "dense"
    feature: TextFeature
    dim: int
    text_encoder: TextEncoderFactory | None = field(default=None, compare=False, repr=False)

    @classmethod
    def fit(cls, feature: TextFeature, train_df, counts, where: str, text_encoder=None):
        for column in feature.columns:
            typed_column(train_df, feature, column, where)
        return cls(feature, int((text_encoder or encoder_for)(feature.model).dim), text_encoder)

    def input(self) -> dict[str, Any]:
        return self._input(dim=self.dim)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        texts = joined_text(table_df, self.feature, where)
        distinct = texts.drop_nulls().unique(maintain_order=True)
        vectors = np.zeros((distinct.len() + 1, self.dim), dtype=np.float32)  # (U+1, D)
        if distinct.len():
            encoder = (self.text_encoder or encoder_for)(self.feature.model)
            if encoder.dim != self.dim:
                raise self.feature.error("model", self.feature.model, f"the model gives "
                                         f"{encoder.dim} dimensions; fitted with {self.dim}")  # fmt: skip
            vectors[:-1] = np.asarray(encoder.encode(distinct.to_list()), dtype=np.float32)
        order = np.arange(distinct.len(), dtype=np.int64)  # (U,)
        codes = texts.replace_strict(distinct, order, default=distinct.len(), return_dtype=pl.Int64)
        return vectors[codes.to_numpy()]  # (N, D), the last row (zeros) for no text

    def fitted(self) -> dict[str, Any]:
        return {"model": self.feature.model, "dim": self.dim}

    @classmethod
    def from_state(cls, feature: TextFeature, state: dict[str, Any], text_encoder=None):
        return cls(feature, int(state["dim"]), text_encoder)


@dataclass(frozen=True)
class FittedTunedText(FittedFeature):
    """A text feature whose encoder trains with the tower (`fine_tune_layers` > 0): each row's
    joined text as `max_tokens` token ids of the model's tokenizer (-1 pads; all -1 for a row
    without text, which the tower reads as zeros). The tower runs the encoder (towers.text_model)."""

    encoding: ClassVar[str] = "tokens"
    feature: TextFeature
    dim: int  # the transformer's width

    @classmethod
    def fit(cls, feature: TextFeature, train_df, counts, where: str, text_encoder=None):
        for column in feature.columns:
            typed_column(train_df, feature, column, where)
        return cls(feature, backbone_width(feature.model))

    def input(self) -> dict[str, Any]:
        tuned = {"model": self.feature.model, "tune_layers": self.feature.fine_tune_layers}
        return self._input(dim=self.dim, width=self.feature.max_tokens) | tuned

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> np.ndarray:
        texts = joined_text(table_df, self.feature, where)
        tokens = tokenize(
            self.feature.model, texts.fill_null("").to_list(), self.feature.max_tokens
        )
        tokens[texts.is_null().to_numpy()] = TOKEN_PADDING
        return tokens  # (N, max_tokens)

    def fitted(self) -> dict[str, Any]:
        return {"model": self.feature.model, "dim": self.dim}

    @classmethod
    def from_state(cls, feature: TextFeature, state: dict[str, Any], text_encoder=None):
        return cls(feature, int(state["dim"]))


@dataclass(frozen=True)
class FittedHistory(FittedFeature):
    """The user's `length` most recent items; the caller builds them from interactions."""

    encoding: ClassVar[str] = "history"
    feature: HistoryFeature

    @classmethod
    def fit(cls, feature: HistoryFeature, train_df, counts, where: str, text_encoder=None):
        return cls(feature)

    def input(self) -> dict[str, Any]:
        return self._input(width=self.feature.length, pooling=self.feature.pooling)

    @classmethod
    def from_state(cls, feature: HistoryFeature, state: dict[str, Any], text_encoder=None):
        return cls(feature)


FITTED: dict[str, type[FittedFeature]] = {
    "id": FittedId,
    "categorical": FittedCategorical,
    "multi_hot": FittedMultiHot,
    "text": FittedText,
    "history": FittedHistory,
}


def _fitted_class(feature: Feature) -> Any:
    if isinstance(feature, NumericFeature):
        return FittedQuantile if feature.normalization == "quantile" else FittedNumeric
    if isinstance(feature, TextFeature):
        return FittedTunedText if feature.fine_tune_layers else FittedText
    return FITTED[feature.kind]


def fit_feature(
    feature: Feature,
    train_df: pl.DataFrame,
    counts: np.ndarray | None = None,
    text_encoder: TextEncoderFactory | None = None,
    where: str = "the training rows",
) -> FittedFeature:
    """`feature` fitted on its side's training rows `train_df`; `counts` (N,) int64: each row's
    training interactions (the id's min_count counts them; None: one each); `where` names the
    table in errors."""
    if counts is None:
        counts = np.ones(train_df.height, dtype=np.int64)  # (N,)
    counts = np.asarray(counts, dtype=np.int64)  # (N,)
    return _fitted_class(feature).fit(feature, train_df, counts, where, text_encoder)


def fitted_from_state(
    side: str, state: dict[str, Any], text_encoder: TextEncoderFactory | None = None
) -> FittedFeature:
    """The fitted feature whose `state()` is `state` (its declaration is checked again)."""
    feature = parse_feature(side, state["name"], state["feature"])
    return _fitted_class(feature).from_state(feature, state, text_encoder)


@dataclass(frozen=True)
class FittedSide:
    """One tower's fitted features, in declaration order, and how the tower combines them."""

    side: str
    features: tuple[FittedFeature, ...]
    combine: str

    @classmethod
    def fit(
        cls,
        spec: SideFeatures,
        table_df: pl.DataFrame,
        counts: np.ndarray | None,
        where: str,
        text_encoder: TextEncoderFactory | None = None,
    ) -> FittedSide:
        """Every feature of `spec` fitted on the side's training rows `table_df` (from the file
        `where`) once `check_columns` passes; `counts` (N,): each row's training interactions."""
        check_columns(table_df, spec, where)
        if counts is not None and len(counts) != table_df.height:
            raise ValueError(f"{len(counts)} counts for the {table_df.height} rows of {where}")
        fitted = (fit_feature(f, table_df, counts, text_encoder, where) for f in spec.features)
        return cls(spec.side, tuple(fitted), spec.combine)

    @property
    def spec(self) -> SideFeatures:
        return SideFeatures(self.side, tuple(f.feature for f in self.features), self.combine)

    def transform(self, table_df: pl.DataFrame, where: str = TRANSFORMED) -> dict[str, np.ndarray]:
        """Each table feature's array for the rows of `table_df` (history is the caller's)."""
        return {
            f.feature.name: f.transform(table_df, where)
            for f in self.features
            if not isinstance(f, FittedHistory)
        }

    def inputs(self) -> list[dict[str, Any]]:
        return [f.input() for f in self.features]

    def to_json(self) -> dict[str, Any]:
        states = [f.state() for f in self.features]
        return {"side": self.side, "combine": self.combine, "features": states}

    @classmethod
    def from_json(
        cls, data: dict[str, Any], text_encoder: TextEncoderFactory | None = None
    ) -> FittedSide:
        side = data["side"]
        fitted = (fitted_from_state(side, state, text_encoder) for state in data["features"])
        return cls(side, tuple(fitted), data["combine"])
