"""Any interactions table: CSV, TSV or Parquet, with a mapping from our column names to the file's.

    Interactions("clicks.parquet", columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})

`user_id` and `item_id` must be mapped (or already be named so); `timestamp` and `rating` are
optional. A time column may hold integers (taken as they are, e.g. epoch seconds), dates or
datetimes (turned into epoch seconds), or strings parsed with `timestamp_format`. With
`min_rating`, only rows rated at least that much are positives.

The file is read and checked when `interactions()` is called (a Parquet file of integer ids
and times is only scanned and counted there, its rows read once by `prepare`: see
`scan_interactions`). A bad file stops there with a `schema.DataFileError` naming the file,
the column and a sample of the bad values: an empty or binary file, bytes that are not UTF-8, a
line with more fields than the header, a missing or mistyped column, a row without a user,
item, timestamp or rating (empty, null or NaN: never dropped silently), ids mixing numbers and
other strings, ids with a fraction, times that do not parse. Ids follow `features.sources.checks` (integers become Int64, negative ones included;
leading zeros or more than 64 bits keep the text; `ids="str"` keeps every id as written).

Duplicated rows are kept by the source; `prepare` then keeps one interaction per
(user, item): the earliest when there is a timestamp, else the first in the file.

Beside the interactions, a users table and an items table (`users=`, `items=`: CSV, TSV or
Parquet, keyed by `user_key` / `item_key`) hand over every column they have, one row per key;
see `features.sources.tables` for how they are read and what is an error.

    Interactions("events.csv", users="users.csv", items="items.parquet", item_key="sku",
                 list_columns=["tags"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, positives, table_label
from features.sources.checks import id_values, number_values, reading, time_values
from features.sources.files import check_file, scan_table
from features.sources.tables import check_list_columns, read_table, table_columns

OUR_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.RATING)


_TYPE_OK = {
    schema.USER_ID: lambda t: t.is_numeric() or t == pl.String,
    schema.ITEM_ID: lambda t: t.is_numeric() or t == pl.String,
    schema.RATING: lambda t: t.is_numeric() or t == pl.String,  # strings are parsed, with a sample
    schema.TIMESTAMP: lambda t: (
        t.is_numeric() or t in (pl.Date, pl.String) or isinstance(t, pl.Datetime)
    ),
}


def _check_columns(
    path: Path,
    found: pl.Schema,
    mapping: Mapping[str, str],
    required: tuple[str, ...] = (schema.USER_ID, schema.ITEM_ID),
    reasons: Mapping[str, str] | None = None,
) -> None:
    """DataFileError naming the file, each missing or mistyped column and the columns found.
    (Values are checked after reading, column by column, with a sample of the bad ones.)"""
    problems: list[tuple[str, str]] = []
    for ours in required:
        if ours not in mapping:
            reason = (reasons or {}).get(ours, f"no column mapped to {ours!r} (set columns.{ours})")
            problems.append((ours, reason))
    for ours, theirs in mapping.items():
        if ours not in OUR_COLUMNS:
            problems.append(
                (theirs, f"unknown target {ours!r} in columns (expected one of {OUR_COLUMNS})")
            )
        elif theirs not in found:
            problems.append((theirs, f"missing column {theirs!r} (for {ours})"))
        elif not _TYPE_OK[ours](found[theirs]):
            problems.append((theirs, f"column {theirs!r} (for {ours}) has type {found[theirs]}"))
    if problems:
        shown = ", ".join(f"{n}: {t}" for n, t in found.items())
        if len(shown) > 300:
            shown = shown[:297] + "..."
        raise schema.DataFileError(
            path,
            problems[0][0],
            "; ".join(p for _, p in problems) + f". Found columns: {shown}",
        )


@dataclass(frozen=True)
class InteractionFile:
    """One interactions file and how to read it. `columns` maps our names to the file's (ours
    are used where the file has them); `separator` None: from the suffix; `timestamp_format`:
    strptime's, for times written as strings; `ids`: "auto" (integers where every id is one) or
    "str"; `what` names the file when it does not exist; `reasons` replaces the message for a
    `required` column that is not mapped."""

    path: str | Path
    columns: Mapping[str, str] | None = None
    separator: str | None = None
    has_header: bool = True
    timestamp_format: str | None = None
    ids: str = "auto"
    required: tuple[str, ...] = (schema.USER_ID, schema.ITEM_ID)
    what: str = "interactions"
    reasons: Mapping[str, str] | None = None


def read_interactions(file: InteractionFile) -> pl.DataFrame:
    """The file as a checked DataFrame: user_id, item_id and, when mapped, timestamp (Int64
    epoch seconds) and rating (Float64), in that order, one row per file row.

    Every problem with the file is a `schema.DataFileError` naming it (see
    `features.sources.checks`): a missing or mistyped column, an empty file, missing ids, mixed
    or fractional ids, times or ratings that do not parse. Duplicated rows are all kept here
    (`prepare` keeps one interaction per (user, item): the earliest)."""
    path, parquet, _, mapping = _mapped(file)
    theirs = list(dict.fromkeys(mapping.values()))
    strings = () if parquet else theirs  # text columns are parsed here, with named errors
    with reading(path):
        raw_df = scan_table(path, file.separator, file.has_header, strings).select(theirs).collect()
    if raw_df.height == 0:
        raise schema.DataFileError(path, None, "has no data rows")
    out = [
        id_values(raw_df[mapping[ours]], path, mapping[ours], ours, file.ids)
        for ours in (schema.USER_ID, schema.ITEM_ID)
    ]
    if schema.TIMESTAMP in mapping:
        column = mapping[schema.TIMESTAMP]
        out.append(time_values(raw_df[column], path, column, file.timestamp_format))
    if schema.RATING in mapping:
        column = mapping[schema.RATING]
        out.append(number_values(raw_df[column], path, column, schema.RATING))
    return pl.DataFrame(out)


def scan_interactions(file: InteractionFile) -> pl.LazyFrame:
    """`read_interactions` as a LazyFrame, the same columns and checks. A Parquet file whose
    ids and times are integers (and rating a number) is scanned, not read: only a count of its
    missing values is computed here, and the rows are read once, by whoever collects the frame
    (a large file is never held twice). Any other file is read and checked at once."""
    path, parquet, found, mapping = _mapped(file)
    kinds = {ours: found[theirs] for ours, theirs in mapping.items()}
    scannable = parquet and all(
        dtype.is_integer() or (ours == schema.RATING and dtype.is_numeric())
        for ours, dtype in kinds.items()
    )
    if not scannable:
        return read_interactions(file).lazy()
    scan_lf = scan_table(path)
    missing = [
        (pl.col(theirs).is_null() | (pl.col(theirs).is_nan() if kinds[ours].is_float() else False))
        .sum()
        .alias(ours)
        for ours, theirs in mapping.items()
    ]
    with reading(path):
        counts = scan_lf.select(pl.len().alias("_rows"), *missing).collect().row(0, named=True)
    if counts.pop("_rows") == 0:
        raise schema.DataFileError(path, None, "has no data rows")
    if any(counts.values()):  # read at once, for the error that names the rows
        read_interactions(file)
    casts = {schema.TIMESTAMP: pl.Int64, schema.RATING: pl.Float64}
    return scan_lf.select(
        pl.col(mapping[ours]).cast(casts.get(ours, kinds[ours])).alias(ours)
        for ours in OUR_COLUMNS
        if ours in mapping
    )


def _mapped(file: InteractionFile) -> tuple[Path, bool, pl.Schema, dict[str, str]]:
    """(path, whether it is Parquet, its columns, our name → the file's column), the mapping
    checked against the file's columns."""
    path = existing_file(file.path, file.what)
    # An unknown format is named before the content is read.
    parquet = check_file(path, file.separator)
    with reading(path):
        found = scan_table(path, file.separator, file.has_header).collect_schema()
    mapping = {ours: ours for ours in OUR_COLUMNS if ours in found}
    mapping.update(dict(file.columns or {}))
    _check_columns(path, found, mapping, file.required, file.reasons)
    return path, parquet, found, mapping


class Interactions:
    """One interactions file, and optionally a users and an items table beside it.

    `columns` maps our names (user_id, item_id, timestamp, rating) to the file's; unmapped ones
    keep our name. The interactions are read and checked by `read_interactions`, the tables by
    `tables.read_table` (keys typed to join the interactions' ids; see the module docstrings)."""

    def __init__(
        self,
        path: str,
        columns: Mapping[str, str] | None = None,
        separator: str | None = None,
        has_header: bool = True,
        min_rating: float | None = None,
        timestamp_format: str | None = None,
        ids: str = "auto",
        name: str = "interactions",
        *,
        users: str | None = None,
        items: str | None = None,
        user_key: str = schema.USER_ID,
        item_key: str = schema.ITEM_ID,
        list_columns: Sequence[str] | None = None,
        list_separator: str = "|",
    ) -> None:
        self.path = path
        self.columns = columns  # our name → the file's column; unmapped ones keep our name
        self.separator = separator  # every text file's; None: from the suffix
        self.has_header = has_header  # the interactions file's (tables have a header)
        self.min_rating = min_rating  # keep rows rated at least this (needs a rating column)
        self.timestamp_format = timestamp_format  # strptime format when times are strings
        self.ids = ids  # "auto": integer ids when every id is one (see checks); "str": as written
        self.name = name
        self.table_paths = {"user": users, "item": items}  # side → its table file, or None
        self.keys = {"user": user_key, "item": item_key}  # side → the table's key column
        self.list_columns = tuple(list_columns or ())  # text table columns split into lists
        self.list_separator = list_separator
        self._id_dtypes: dict[str, pl.DataType] | None = None  # side → id type, once read
        if not list_separator:
            raise ValueError(f"{name}: list_separator must be a non-empty string")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"Interactions({shown})"

    def interactions(self) -> pl.LazyFrame:
        required, reasons = (schema.USER_ID, schema.ITEM_ID), {}
        if self.min_rating is not None:
            required += (schema.RATING,)
            reasons[schema.RATING] = (
                f"min_rating={self.min_rating} needs a rating column; map one with columns.rating"
            )
        file = InteractionFile(
            self.path,
            self.columns,
            self.separator,
            self.has_header,
            self.timestamp_format,
            self.ids,
            required,
            f"{self.name} interactions",
            reasons,
        )
        interactions_lf = scan_interactions(file)
        found = interactions_lf.collect_schema()
        self._id_dtypes = {side: found[key] for side, key in schema.KEYS.items()}
        return positives(interactions_lf, self.min_rating)

    def users(self) -> pl.DataFrame | None:
        return self._table("user")

    def items(self) -> pl.DataFrame | None:
        return self._table("item")

    def table_path(self, side: str) -> str:
        return table_label(self.name, side, self.table_paths)

    def _table(self, side: str) -> pl.DataFrame | None:
        """The `side` table, or None without one."""
        if self.table_paths[side] is None:
            return None
        what = f"{self.name} {side}s"
        if self.list_columns:
            self._check_list_columns(what)
        if self._id_dtypes is None:
            self.interactions()  # the keys take the type of the interactions' ids
        return read_table(
            self.table_paths[side],
            side,
            self.keys[side],
            self._id_dtypes[side],
            self.ids,
            self.list_columns,
            self.list_separator,
            self.separator,
            what,
        )

    def _check_list_columns(self, what: str) -> None:
        """Every name in `list_columns` is a column of the users or the items table."""
        found = {
            str(path): table_columns(path, self.separator, f"{self.name} {side}s")
            for side, path in self.table_paths.items()
            if path is not None
        }
        check_list_columns(self.list_columns, found, what)
