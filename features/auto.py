"""`features=auto`: a feature spec inferred from the columns of the side tables, announced at start
in the form a config file takes, so a user can paste it into conf/features/<name>.yaml and edit it.

Each side gets its id (the key column), the user side a history; then, column by column:
- bool: categorical; a list of strings or integers: multi_hot;
- string: free text (median length over 30 characters, or more distinct values than a category
  may have with most of them holding a space) joins the side's one `text` feature; a string
  unique per row is an id and is skipped; at most 1000 distinct values, under half the rows:
  categorical; other strings (many short distinct values: codes) are skipped;
- an integer unique per row and named like an id (`tmdb_id`, `movieId`) or numbering the rows
  (0 or 1 up) is an id and is skipped; other numbers: numeric, `log1p` when none is negative and the largest is
  over 100 times the median (counts, prices), else `standard`;
- anything else (dates, structs, lists of floats) and columns without values are skipped.
A skipped column is logged with its reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from features.spec import (
    FEATURE_KINDS,
    KEY_COLUMNS,
    Feature,
    FeaturesConfig,
    HistoryFeature,
    IdFeature,
    SideFeatures,
    TextFeature,
)

log = logging.getLogger(__name__)

MAX_CATEGORIES = 1000  # distinct values a categorical column may have
TEXT_MEDIAN_CHARS = 30  # a string column whose median value is longer is free text
SKEW = 100  # max > SKEW * median (no negative values): log1p
ID_NAME = re.compile(r"(?:^|_)(?i:id)$|[a-z]I[dD]$")  # id, item_id, movieId, tmdbID


@dataclass(frozen=True)
class Inferred:
    """What a column becomes: a feature `kind` with `options`, or None and the `reason`."""

    kind: str | None
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


def infer(
    users_df: pl.DataFrame | None, items_df: pl.DataFrame | None, history_length: int = 50
) -> FeaturesConfig:
    """A spec for both towers from the side tables (None: a side without a table)."""
    return FeaturesConfig(
        user=infer_side("user", users_df, history_length),
        item=infer_side("item", items_df),
    )


def infer_side(side: str, table_df: pl.DataFrame | None, history_length: int = 50) -> SideFeatures:
    """One side's spec: its id, the history (user side), then a feature per usable column."""
    key = KEY_COLUMNS[side]
    features: list[Feature] = [IdFeature(side, key)]
    if side == "user":
        features.append(HistoryFeature(side, "history", length=history_length))
    text_columns = []
    for column in [] if table_df is None else table_df.columns:
        if column == key:
            continue
        inferred = infer_column(column, table_df[column])
        if inferred.kind is None:
            log.info("features=auto: %s column %r skipped: %s", side, column, inferred.reason)
        elif inferred.kind == "text":
            text_columns.append(column)
        else:
            cls = FEATURE_KINDS[inferred.kind]
            name = _free_name(column, features)
            features.append(cls(side=side, name=name, column=column, **inferred.options))
    if text_columns:
        name = _free_name("text", features)
        features.append(TextFeature(side=side, name=name, columns_=tuple(text_columns)))
    return SideFeatures(side, tuple(features))


def infer_column(name: str, series: pl.Series) -> Inferred:
    """The feature a table column `name` becomes (see the module docstring)."""
    dtype = series.dtype
    values = (series.explode() if isinstance(dtype, pl.List) else series).drop_nulls()
    if dtype.is_float():
        values = values.filter(values.is_finite())
    if dtype == pl.String:
        values = values.filter(values.str.strip_chars() != "")
    if values.is_empty():
        return Inferred(None, "it has no values")
    if dtype == pl.Boolean:
        return Inferred("categorical", "booleans")
    if isinstance(dtype, pl.List):
        if dtype.inner == pl.String or dtype.inner.is_integer():
            return Inferred("multi_hot", "lists")
        return Inferred(None, f"a list of {dtype.inner}, not of strings or integers")
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return _infer_strings(values.cast(pl.String))
    if dtype.is_numeric():
        return _infer_numbers(name, values)
    return Inferred(None, f"type {dtype} is not one a feature reads")


def _infer_strings(values: pl.Series) -> Inferred:
    """Text, an id, a category or codes, from the non-null values of a string column."""
    count, distinct = values.len(), values.n_unique()
    many = distinct > MAX_CATEGORIES or distinct >= count / 2
    spaced = values.str.contains(r"\s").mean()
    median_chars = values.str.len_chars().median()
    if median_chars > TEXT_MEDIAN_CHARS or (many and spaced >= 0.5):
        return Inferred("text", f"free text (median {median_chars:.0f} characters)")
    if distinct == count:
        return Inferred(None, f"unique per row ({count} values): an id")
    if not many:
        return Inferred("categorical", f"{distinct} distinct values in {count} rows")
    return Inferred(None, f"{distinct} distinct short values in {count} rows: too many for a "
                          "category, too short for text")  # fmt: skip


def _infer_numbers(name: str, values: pl.Series) -> Inferred:
    """An id or a numeric feature (standard or log1p), from the finite values of a column."""
    count = values.len()
    if values.dtype.is_integer() and count > 1 and values.n_unique() == count:
        row_numbers = values.min() in (0, 1) and values.max() - values.min() == count - 1
        if ID_NAME.search(name) or row_numbers:
            return Inferred(None, f"unique integers per row ({count} values): an id")
    smallest, largest, median = values.min(), values.max(), values.median()
    if smallest >= 0 and largest > SKEW * median:
        skew = f"max {largest} > {SKEW} x median {median}"
        return Inferred("numeric", skew, {"normalization": "log1p"})
    return Inferred("numeric", "numbers", {"normalization": "standard"})


def _free_name(column: str, features: list[Feature]) -> str:
    """A feature name for `column` (words and underscores) that no feature in `features` has."""
    base = re.sub(r"\W+", "_", column).strip("_") or "column"
    taken = {f.name for f in features}
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def announce(config: FeaturesConfig) -> str:
    """The text printed at start for `features=auto`: the inferred spec and how to keep it."""
    return (
        "features=auto inferred:\n"
        + config.to_yaml()
        + "Paste it into conf/features/<name>.yaml and pass features=<name> to use it as it is "
        "or edited.\n"
    )
