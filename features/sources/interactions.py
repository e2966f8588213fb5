"""Any interactions table: CSV, TSV or Parquet, with a mapping from our column names to the file's.

    Interactions("clicks.parquet", columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})

`user_id` and `item_id` must be mapped (or already be named so); `timestamp` and `rating` are
optional. A time column may hold integers (taken as they are, e.g. epoch seconds), dates or
datetimes (turned into epoch seconds), or strings parsed with `timestamp_format`. With
`min_rating`, only rows rated at least that much are positives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, positives

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


def scan_table(
    path: str | Path, separator: str | None = None, has_header: bool = True
) -> pl.LazyFrame:
    """A CSV / TSV (optionally .gz) or Parquet file as a LazyFrame; the format from the suffix."""
    path = existing_file(path, "interactions")
    suffix = _suffix(path)
    if suffix in PARQUET:
        return pl.scan_parquet(path)
    sep = separator or SEPARATORS.get(suffix)
    if sep is None:
        raise ValueError(
            f"{path}: cannot tell the format from {suffix!r}; name it .csv / .tsv / .parquet or set separator"
        )
    options = {"separator": sep, "has_header": has_header, "infer_schema_length": 10_000}
    if path.suffix.lower() == ".gz":  # polars scans plain text lazily; gzip has to be read eagerly
        return pl.read_csv(path, **options).lazy()
    return pl.scan_csv(path, **options)


def to_epoch_seconds(column: pl.Expr, dtype: pl.DataType, time_format: str | None) -> pl.Expr:
    """A time column of any supported type → Int64 epoch seconds (integers pass through)."""
    if dtype.is_integer():
        return column.cast(pl.Int64)
    if dtype.is_float():
        return column.cast(pl.Int64)
    if dtype == pl.Date:
        return column.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return column.dt.epoch("s")
    if dtype == pl.String:
        return column.str.to_datetime(time_format, strict=True).dt.epoch("s")
    raise TypeError(f"unsupported time column type {dtype}")


def _check_columns(
    path: Path, found: pl.Schema, mapping: Mapping[str, str], time_format: str | None
) -> None:
    """SchemaError naming the file, each missing or mistyped column and the columns found."""
    problems = []
    for ours in (schema.USER_ID, schema.ITEM_ID):
        if ours not in mapping:
            problems.append(f"no column mapped to {ours!r} (set columns.{ours})")
    for ours, theirs in mapping.items():
        if ours not in OUR_COLUMNS:
            problems.append(f"unknown target {ours!r} in columns (expected one of {OUR_COLUMNS})")
        elif theirs not in found:
            problems.append(f"missing column {theirs!r} (for {ours})")
        else:
            dtype = found[theirs]
            ok = {
                schema.USER_ID: dtype.is_integer() or dtype == pl.String,
                schema.ITEM_ID: dtype.is_integer() or dtype == pl.String,
                schema.RATING: dtype.is_numeric(),
                schema.TIMESTAMP: dtype.is_numeric()
                or dtype in (pl.Date, pl.String)
                or isinstance(dtype, pl.Datetime),
            }[ours]
            if not ok:
                problems.append(f"column {theirs!r} (for {ours}) has type {dtype}")
            elif ours == schema.TIMESTAMP and dtype == pl.String and time_format is None:
                problems.append(
                    f"column {theirs!r} (for timestamp) holds strings; set timestamp_format"
                )
    if problems:
        shown = ", ".join(f"{n}: {t}" for n, t in found.items())
        raise schema.SchemaError(f"{path}: " + "; ".join(problems) + f". Found columns: {shown}")


@dataclass
class Interactions:
    """One interactions file; `columns` maps our names (user_id, item_id, timestamp, rating) to its."""

    path: str
    columns: Mapping[str, str] | None = (
        None  # our name → the file's column; unmapped ones keep our name
    )
    separator: str | None = None  # None: from the suffix (.csv ",", .tsv / .tab / .txt tab)
    has_header: bool = True  # without a header polars names columns column_1, column_2, ...
    min_rating: float | None = None  # keep rows rated at least this (needs a rating column)
    timestamp_format: str | None = None  # strptime format when the time column holds strings
    name: str = "interactions"

    def _mapping(self, found: pl.Schema) -> dict[str, str]:
        mapping = {ours: ours for ours in OUR_COLUMNS if ours in found}
        mapping.update(dict(self.columns or {}))
        return mapping

    def interactions(self) -> pl.LazyFrame:
        path = existing_file(self.path, f"{self.name} interactions")
        raw_lf = scan_table(path, self.separator, self.has_header)
        found = raw_lf.collect_schema()
        mapping = self._mapping(found)
        _check_columns(path, found, mapping, self.timestamp_format)
        if self.min_rating is not None and schema.RATING not in mapping:
            raise schema.SchemaError(
                f"{path}: min_rating={self.min_rating} needs a rating column; map one with "
                f"columns.rating. Found columns: {', '.join(found.names())}"
            )
        selected = [
            pl.col(mapping[schema.USER_ID]).alias(schema.USER_ID),
            pl.col(mapping[schema.ITEM_ID]).alias(schema.ITEM_ID),
        ]
        if schema.TIMESTAMP in mapping:
            theirs = mapping[schema.TIMESTAMP]
            selected.append(
                to_epoch_seconds(pl.col(theirs), found[theirs], self.timestamp_format).alias(
                    schema.TIMESTAMP
                )
            )
        if schema.RATING in mapping:
            selected.append(pl.col(mapping[schema.RATING]).cast(pl.Float64).alias(schema.RATING))
        lf = raw_lf.select(selected).filter(
            pl.col(schema.USER_ID).is_not_null() & pl.col(schema.ITEM_ID).is_not_null()
        )
        return positives(lf, self.min_rating)

    def items(self) -> None:
        return None
