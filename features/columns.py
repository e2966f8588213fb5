"""The columns a declared feature reads: whether a side table has them, of a value kind the
feature reads, and with values; each read as its value kind's polars type.

Value kinds: str (also Categorical / Enum), int, bool, float, null, and list[str | int | null].
A column without values takes the kind its feature was fitted on (or the first it reads), so a
table whose column is all null still transforms. Missing is null, for floats also NaN and +-inf,
for lists an empty (or all-null) list, and for text a blank string.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.schema import SAMPLE_SIZE, DataFileError
from features.spec import Feature, NumericFeature, SideFeatures, TextFeature

READS = {  # the value kinds (see value_kind) a feature kind reads; the first for a null column
    "id": ("int", "str"),
    "categorical": ("str", "int", "bool"),
    "multi_hot": ("list[str]", "list[int]"),
    "numeric": ("float", "int"),
    "text": ("str", "list[str]"),  # a list's values joined by ", " (tags)
}
DTYPES = {"str": pl.String, "int": pl.Int64, "bool": pl.Boolean, "float": pl.Float64}


def value_kind(dtype: pl.DataType) -> str | None:
    """A column type's value kind: str, int, bool, float, null, list[str | int | null]; None for
    a type no feature reads."""
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_numeric():
        return "float"
    if dtype == pl.Null:
        return "null"
    if isinstance(dtype, pl.List):
        inner = value_kind(dtype.inner)
        return f"list[{inner}]" if inner in ("str", "int", "null") else None
    return None


def missing(series: pl.Series, blank: bool = False) -> pl.Series:
    """Null; for floats also NaN and +-inf; for lists empty ones; with `blank`, blank strings."""
    if isinstance(series.dtype, pl.List):
        return series.list.drop_nulls().list.len().fill_null(0) == 0
    if series.dtype.is_float():
        return ~series.is_finite().fill_null(False)
    if blank and series.dtype == pl.String:
        return (series.str.strip_chars() == "").fill_null(True)
    return series.is_null()


def typed_column(
    table_df: pl.DataFrame, feature: Feature, column: str, where: str, fitted: str | None = None
) -> pl.Series:
    """`column` as its value kind's type, or a DataFileError naming the feature when it is absent
    or of a kind the feature does not read (with `fitted`: not the kind it was fitted on). A
    column without values takes the fitted kind."""
    if column not in table_df.columns:
        raise DataFileError(where, column, f"no column {column!r} for feature {feature.name!r} "
                            f"({feature.kind}); found: {', '.join(table_df.columns)}")  # fmt: skip
    series = table_df[column]
    kind = value_kind(series.dtype)
    expected = (fitted,) if fitted else READS[feature.kind]
    values = series.explode() if kind and kind.startswith("list") else series
    if kind is not None and values.null_count() == values.len():
        kind = expected[0]
    elif kind not in expected:
        problem = (f"column {column!r} has type {series.dtype}; feature {feature.name!r} "
                   f"({feature.kind}) reads {' or '.join(expected)} values")  # fmt: skip
        raise DataFileError(where, column, problem, series.head(SAMPLE_SIZE).to_list())
    dtype = DTYPES[kind.removeprefix("list[").removesuffix("]")]
    return series.cast(pl.List(dtype) if kind.startswith("list") else dtype)


def check_columns(table_df: pl.DataFrame, spec: SideFeatures, where: str) -> None:
    """A DataFileError (the file `where`, the column, the feature) unless every column the side's
    features read is present, of a kind its feature reads, and not all missing."""
    for feature in spec.features:
        for column in feature.columns:
            series = typed_column(table_df, feature, column, where)
            if missing(series, blank=feature.kind == "text").all():
                raise DataFileError(
                    where,
                    column,
                    f"column {column!r} has no values (all {series.len()} rows are missing) "
                    f"for feature {feature.name!r} ({feature.kind})",
                    series.head(SAMPLE_SIZE).unique(maintain_order=True).to_list(),
                )


def numbers_of(table_df: pl.DataFrame, feature: NumericFeature, where: str) -> np.ndarray:
    """(N,) float64: the feature's column, NaN where missing (null, NaN or +-inf)."""
    values = typed_column(table_df, feature, feature.column, where).cast(pl.Float64)
    numbers = values.fill_null(np.nan).to_numpy().astype(np.float64)  # (N,)
    numbers[~np.isfinite(numbers)] = np.nan
    return numbers


def check_log1p(numbers: np.ndarray, feature: NumericFeature, where: str) -> None:
    """A DataFileError naming the column when training `numbers` (N,) hold a negative value
    (log1p needs values >= 0)."""
    negative = numbers[numbers < 0]  # (M,)
    if negative.size:
        raise DataFileError(
            where,
            feature.column,
            f"column {feature.column!r} holds {negative.size} negative values; feature "
            f"{feature.name!r} normalizes with log1p, which needs values >= 0 "
            "(use normalization: standard)",
            np.unique(negative)[:SAMPLE_SIZE].tolist(),
        )


def joined_text(table_df: pl.DataFrame, feature: TextFeature, where: str) -> pl.Series:
    """Each row's text: the feature's columns joined by its separator, blank ones skipped (a list
    column's values joined by ", " first); null where every column is blank."""
    parts = [_as_text(typed_column(table_df, feature, c, where)) for c in feature.columns]
    kept = [pl.when(~missing(part, blank=True)).then(part) for part in parts]
    joined = pl.concat_str(kept, separator=feature.separator, ignore_nulls=True)
    return table_df.select(joined.replace("", None).alias("text"))["text"]


def _as_text(series: pl.Series) -> pl.Series:
    """A str column as it is; a list[str] column's values joined by ", " (an empty list: null)."""
    if not isinstance(series.dtype, pl.List):
        return series
    joined = series.list.drop_nulls().list.join(", ")
    return joined.replace("", None)
