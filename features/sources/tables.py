"""User and item tables beside an interactions file (CSV, TSV or Parquet, optionally .gz): one
row per key, every other column kept.

    read_table("items.csv", "item", key="sku", id_dtype=pl.Int64, list_columns=["tags"])

The file gets the interactions' checks (`features.sources.checks`): an unreadable, empty or
binary file, or bytes that are not UTF-8, is a `schema.DataFileError` naming it. Then:

- the key column (`key`: the file's name for `user_id` / `item_id`) must be there, with a value
  in every row (missing ones are counted, with their rows) and no value twice (a sample of the
  repeated ones is named); it becomes `user_id` / `item_id`, the first column;
- keys are typed like interaction ids (`checks.id_values`, the same `ids` mode), then matched to
  the interactions' id type so that they join: integer keys take the interactions' integer type,
  or their text when the interactions' ids are strings; string keys beside integer interaction
  ids could never match one and are an error naming a sample;
- a text column is typed by its values: integers (written without leading zeros: a zip code
  "02138" stays text), else numbers, else true / false, else text; an empty field, or a missing
  token ("NA", "null", ...) among numbers, is a missing value;
- a text column named in `list_columns` is split on `list_separator` into a list of str (values
  stripped, empty ones dropped; an empty field is []); a Parquet list column is kept, its values
  as str (nulls dropped, a null list is []);
- Parquet categoricals become str, dates and datetimes Int64 epoch seconds, decimals Float64;
  a column of any other type (struct, binary, list of floats) is an error naming it.

Rows whose key never appears in the interactions are kept: they are the cold users and items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from features import schema
from features.schema import SAMPLE_SIZE, DataFileError
from features.sources.base import existing_file
from features.sources.checks import CANONICAL_INTEGER, INTEGER, MISSING_TOKENS, id_values, reading
from features.sources.files import check_file, scan_table

KEY_OPTIONS = {schema.USER_ID: "user_key", schema.ITEM_ID: "item_key"}  # the config names a key
NO_VALUES = pl.lit([], pl.List(pl.String))


def read_table(
    path: str | Path,
    side: str,
    key: str,
    id_dtype: pl.DataType,
    ids: str = "auto",
    list_columns: Sequence[str] = (),
    list_separator: str = "|",
    separator: str | None = None,
    what: str | None = None,
) -> pl.DataFrame:
    """The `side` ("user" / "item") table at `path`, keyed by its column `key`, as a checked
    DataFrame: `user_id` / `item_id` (typed to join ids of `id_dtype`), then the file's other
    columns in file order. See the module docstring for what is read how, and what is an error."""
    ours = schema.KEYS[side]
    what = what or f"{side}s"
    path = existing_file(path, what)
    parquet = check_file(path, separator, what)
    raw_df = _read_raw(path, parquet, separator, what)
    _check_key_column(raw_df, path, key, ours, what)
    keys = id_values(raw_df[key], path, key, ours, ids, what)
    keys = match_id_type(keys, id_dtype, path, key, what)
    columns = [
        _table_column(raw_df[name], parquet, name in list_columns, list_separator, path, what)
        for name in raw_df.columns
        if name != key
    ]
    return schema.validate_table(pl.DataFrame([keys, *columns]), ours, what, path, key)


def table_columns(path: str | Path, separator: str | None = None, what: str = "table") -> list[str]:
    """The column names of a table file (its header), read with the same checks."""
    path = existing_file(path, what)
    check_file(path, separator, what)
    with reading(path, what):
        return scan_table(path, separator).collect_schema().names()


def match_id_type(
    ids: pl.Series, target: pl.DataType, path: Path, column: str, what: str | None = None
) -> pl.Series:
    """A table's keys `ids` (typed by `checks.id_values`) in the interactions' id type `target`,
    so that a key equal to an interaction id joins it; a DataFileError when none could."""
    ours, written = ids.name, ids
    if ids.dtype == target:
        return ids
    if ids.dtype == pl.String and target.is_integer() and ids.str.contains(CANONICAL_INTEGER).all():
        ids = ids.str.to_integer(strict=False)  # integers kept as text (ids: str); null: huge
    if ids.dtype.is_integer() and target == pl.String:
        return ids.cast(pl.String)  # integer keys as the text the ids would be written in
    if ids.dtype.is_integer() and target.is_integer():
        cast = ids.cast(target, strict=False)
        outside = cast.is_null()
        if outside.any():
            raise DataFileError(
                path,
                column,
                f"{int(outside.sum())} keys in column {column!r} are outside the range of the "
                f"interactions' {ours} type {target}, so no interaction has them",
                written.filter(outside).head(SAMPLE_SIZE).to_list(),
                what=what,
            )
        return cast
    not_integers = ids.filter(~ids.cast(pl.String).str.contains(CANONICAL_INTEGER))
    sample = (not_integers if not_integers.len() else ids).unique(maintain_order=True)
    raise DataFileError(
        path,
        column,
        f"key column {column!r} holds {ids.dtype} ids but the interactions' {ours} are "
        f"{target}, so no key would match an interaction (a table holds the kind of id its "
        "interactions hold; ids: str reads every id of a text file as written)",
        sample.head(SAMPLE_SIZE).to_list(),
        what=what,
    )


def check_list_columns(
    list_columns: Sequence[str], found: dict[str, list[str]], what: str | None = None
) -> None:
    """A DataFileError when a name in `list_columns` is a column of none of the tables `found`
    (file path → its columns), naming the first file and every column found."""
    columns = {name for names in found.values() for name in names}
    unknown = [name for name in list_columns if name not in columns]
    if unknown and found:
        first = next(iter(found))
        shown = "; ".join(f"{path}: {', '.join(names)}" for path, names in found.items())
        raise DataFileError(
            first,
            unknown[0],
            f"list_columns names {unknown[0]!r}, a column of no table. Found columns: {shown}",
            what=what,
        )


def _read_raw(path: Path, parquet: bool, separator: str | None, what: str) -> pl.DataFrame:
    """The file's rows: Parquet typed as stored, text with every column as text (typed here)."""
    with reading(path, what):
        names = scan_table(path, separator).collect_schema().names()
        raw_df = scan_table(path, separator, strings=() if parquet else names).collect()
    if raw_df.height == 0:
        raise DataFileError(path, None, "has no data rows", what=what)
    return raw_df


def _check_key_column(df: pl.DataFrame, path: Path, key: str, ours: str, what: str) -> None:
    """A DataFileError when the key column is missing, or another column is named `ours`."""
    found = ", ".join(f"{n}: {t}" for n, t in df.schema.items())
    if len(found) > 300:
        found = found[:297] + "..."
    if key not in df.columns:
        raise DataFileError(
            path,
            key,
            f"missing key column {key!r} (for {ours}; set {KEY_OPTIONS[ours]}). "
            f"Found columns: {found}",
            what=what,
        )
    if ours != key and ours in df.columns:
        raise DataFileError(
            path,
            ours,
            f"has a column {ours!r} besides its key column {key!r}; rename one of them",
            what=what,
        )


def _table_column(
    series: pl.Series,
    parquet: bool,
    as_list: bool,
    list_separator: str,
    path: Path,
    what: str,
) -> pl.Series:
    """One non-key column in a `schema.TABLE_KINDS` kind (see the module docstring)."""
    dtype = series.dtype
    if isinstance(dtype, (pl.Categorical, pl.Enum)) or dtype == pl.Null:
        series, dtype = series.cast(pl.String), pl.String
    if dtype == pl.String:
        if as_list:
            return _split(series, list_separator)
        return series if parquet else typed_text(series)
    if isinstance(dtype, (pl.List, pl.Array)):
        return _string_lists(series, path, what)
    if dtype == pl.Date:
        return series.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return series.dt.epoch("s")
    if isinstance(dtype, pl.Decimal):
        return series.cast(pl.Float64)
    if schema.table_kind(dtype) is not None:
        return series
    raise _unreadable(series, path, what, "a table column holds integers, numbers, booleans, "
                      "text or lists of text")  # fmt: skip


def typed_text(series: pl.Series) -> pl.Series:
    """A text column typed by its values: Int64 when every value is an integer written without
    leading zeros or "+", else Float64 when every value is a number, else Boolean when every
    value is true / false (any case), else the text as written. Empty fields are missing; a
    missing token ("NA", "null", ...) is missing too in a column typed as numbers or booleans."""
    stripped = pl.col(series.name).str.strip_chars()
    present = (
        series.to_frame()
        .select(
            pl.when(stripped.is_in(MISSING_TOKENS))
            .then(None)
            .otherwise(stripped)
            .alias(series.name)
        )
        .to_series()
    )  # the stripped values, missing ones null
    values = present.drop_nulls()
    if values.len() == 0:
        return series
    if values.str.contains(CANONICAL_INTEGER).all():
        as_int = present.str.to_integer(strict=False)
        if as_int.null_count() == present.null_count():  # else beyond 64 bits: text
            return as_int
    if values.str.contains(INTEGER).all():
        return series  # leading zeros or "+": codes written as text ("02138")
    numbers = present.cast(pl.Float64, strict=False)
    if numbers.null_count() == present.null_count():
        return numbers
    lowered = present.str.to_lowercase()
    if lowered.drop_nulls().is_in(["true", "false"]).all():
        return lowered == "true"
    return series


def _split(series: pl.Series, separator: str) -> pl.Series:
    """ "a| b||c" → ["a", "b", "c"]; an empty field → []."""
    value = pl.element().str.strip_chars()
    return series.fill_null("").str.split(separator).list.eval(value.filter(value != ""))


def _string_lists(series: pl.Series, path: Path, what: str) -> pl.Series:
    """A Parquet list column as lists of str, or a DataFileError when its values are not text,
    integers or booleans."""
    inner = series.dtype.inner
    categories = inner.is_integer() or isinstance(inner, (pl.Categorical, pl.Enum))
    if not (categories or inner in (pl.String, pl.Boolean, pl.Null)):
        raise _unreadable(series, path, what, "a list column holds text (or integers), one "
                          "value per category")  # fmt: skip
    lists = series.cast(pl.List(inner)).cast(pl.List(pl.String)).list.drop_nulls()
    return lists.to_frame().select(pl.col(series.name).fill_null(NO_VALUES)).to_series()


def _unreadable(series: pl.Series, path, what: str, holds: str) -> DataFileError:
    """The error for a table column of a type no feature reads: its name, type and values."""
    problem = f"column {series.name!r} has type {series.dtype}; {holds}"
    return DataFileError(path, series.name, problem, series.head(SAMPLE_SIZE).to_list(), what=what)
