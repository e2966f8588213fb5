"""Any interactions table: CSV, TSV or Parquet, with a mapping from our column names to the file's.

    Interactions("clicks.parquet", columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})

`user_id` and `item_id` must be mapped (or already be named so); `timestamp` and `rating` are
optional. A time column may hold integers (taken as they are, e.g. epoch seconds), dates or
datetimes (turned into epoch seconds), or strings parsed with `timestamp_format`. With
`min_rating`, only rows rated at least that much are positives.

The file is read and checked when `interactions()` is called. A bad file stops there with a
`schema.DataFileError` naming the file, the column and a sample of the bad values: an empty or
binary file, bytes that are not UTF-8, a line with more fields than the header, a missing or
mistyped column, a row without a user, item, timestamp or rating (empty, null or NaN: never
dropped silently), ids mixing numbers and other strings, ids with a fraction, times that do not
parse. Ids follow `features.sources.checks` (integers become Int64, negative ones included;
leading zeros or more than 64 bits keep the text; `ids="str"` keeps every id as written).

Duplicated rows are kept by the source; `prepare` then keeps one interaction per
(user, item): the earliest when there is a timestamp, else the first in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, positives
from features.sources.checks import check_text, id_values, number_values, reading, time_values

SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".dat": "\t"}
PARQUET = (".parquet", ".pq")
OUR_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.RATING)


def _suffix(path: Path) -> str:
    """ ".csv" for both "x.csv" and "x.csv.gz"."""
    suffixes = [s.lower() for s in path.suffixes]
    return (
        suffixes[-2]
        if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1
        else path.suffix.lower()
    )


def _separator(path: Path, separator: str | None) -> str:
    """The text file's field separator: `separator`, else the one its suffix implies."""
    sep = separator or SEPARATORS.get(_suffix(path))
    if sep is None:
        raise ValueError(
            f"{path}: cannot tell the format from {_suffix(path)!r}; name it .csv / .tsv / "
            ".parquet or set separator"
        )
    return sep


def scan_table(
    path: str | Path,
    separator: str | None = None,
    has_header: bool = True,
    strings: Sequence[str] = (),
) -> pl.LazyFrame:
    """A CSV / TSV (optionally .gz) or Parquet file as a LazyFrame; the format from the suffix.

    `strings`: text columns read as strings whatever they look like (for the caller to parse).
    Errors surface when the frame is collected: read it inside `checks.reading`."""
    path = existing_file(path, "interactions")
    suffix = _suffix(path)
    if suffix in PARQUET:
        return pl.scan_parquet(path)
    options = {
        "separator": _separator(path, separator),
        "has_header": has_header,
        "infer_schema_length": 10_000,
        "schema_overrides": {name: pl.String for name in strings} or None,
    }
    if path.suffix.lower() == ".gz":  # polars scans plain text lazily; gzip has to be read eagerly
        return pl.read_csv(path, **options).lazy()
    return pl.scan_csv(path, **options)


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


def read_interactions(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    separator: str | None = None,
    has_header: bool = True,
    timestamp_format: str | None = None,
    ids: str = "auto",
    required: tuple[str, ...] = (schema.USER_ID, schema.ITEM_ID),
    what: str = "interactions",
    reasons: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """One interactions file as a checked DataFrame: user_id, item_id and, when mapped,
    timestamp (Int64 epoch seconds) and rating (Float64), in that order, one row per file row.

    `columns` maps our names to the file's (ours are used where the file has them); `what`
    names the file when it does not exist; `reasons` replaces the message for a required column
    that is not mapped. Every
    problem with the file is a `schema.DataFileError` naming it (see `features.sources.checks`):
    a missing or mistyped column, an empty file, missing ids, mixed or fractional ids, times or
    ratings that do not parse. Duplicated rows are all kept here (`prepare` keeps one
    interaction per (user, item): the earliest)."""
    path = existing_file(path, what)
    parquet = _suffix(path) in PARQUET
    if not parquet:
        _separator(path, separator)  # an unknown format is named before the content is read
        check_text(path)
    with reading(path):
        found = scan_table(path, separator, has_header).collect_schema()
    mapping = {ours: ours for ours in OUR_COLUMNS if ours in found}
    mapping.update(dict(columns or {}))
    _check_columns(path, found, mapping, required, reasons)
    theirs = list(dict.fromkeys(mapping.values()))
    strings = () if parquet else theirs  # text columns are parsed here, with named errors
    with reading(path):
        raw_df = scan_table(path, separator, has_header, strings).select(theirs).collect()
    if raw_df.height == 0:
        raise schema.DataFileError(path, None, "has no data rows")
    out = [
        id_values(raw_df[mapping[ours]], path, mapping[ours], ours, ids)
        for ours in (schema.USER_ID, schema.ITEM_ID)
    ]
    if schema.TIMESTAMP in mapping:
        column = mapping[schema.TIMESTAMP]
        out.append(time_values(raw_df[column], path, column, timestamp_format))
    if schema.RATING in mapping:
        column = mapping[schema.RATING]
        out.append(number_values(raw_df[column], path, column, schema.RATING))
    return pl.DataFrame(out)


@dataclass
class Interactions:
    """One interactions file; `columns` maps our names (user_id, item_id, timestamp, rating) to its.

    Read and checked by `read_interactions` (see the module docstring for what is an error)."""

    path: str
    columns: Mapping[str, str] | None = (
        None  # our name → the file's column; unmapped ones keep our name
    )
    separator: str | None = None  # None: from the suffix (.csv ",", .tsv / .tab / .txt tab)
    has_header: bool = True  # without a header polars names columns column_1, column_2, ...
    min_rating: float | None = None  # keep rows rated at least this (needs a rating column)
    timestamp_format: str | None = None  # strptime format when the time column holds strings
    ids: str = "auto"  # "auto": integer ids when every id is one (see checks); "str": as written
    name: str = "interactions"

    def interactions(self) -> pl.LazyFrame:
        what = f"{self.name} interactions"
        required, reasons = (schema.USER_ID, schema.ITEM_ID), {}
        if self.min_rating is not None:
            required += (schema.RATING,)
            reasons[schema.RATING] = (
                f"min_rating={self.min_rating} needs a rating column; map one with columns.rating"
            )
        df = read_interactions(
            self.path,
            self.columns,
            self.separator,
            self.has_header,
            self.timestamp_format,
            self.ids,
            required,
            what,
            reasons,
        )
        return positives(df.lazy(), self.min_rating)

    def items(self) -> None:
        return None
