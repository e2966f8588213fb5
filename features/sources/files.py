"""A table file by its suffix: CSV / TSV (optionally .gz) or Parquet, scanned with polars.

`check_file` names an unknown format, or a text file that is not text (see `checks.check_text`),
before polars reads it; `scan_table` scans it. Read a scanned frame inside `checks.reading`, so
that polars' errors become a `schema.DataFileError` naming the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from features.sources.base import existing_file
from features.sources.checks import check_text

SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".dat": "\t"}
PARQUET = (".parquet", ".pq")


def suffix(path: Path) -> str:
    """ ".csv" for both "x.csv" and "x.csv.gz"."""
    suffixes = [s.lower() for s in path.suffixes]
    return (
        suffixes[-2]
        if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1
        else path.suffix.lower()
    )


def is_parquet(path: Path) -> bool:
    return suffix(path) in PARQUET


def separator_for(path: Path, separator: str | None) -> str:
    """The text file's field separator: `separator`, else the one its suffix implies."""
    sep = separator or SEPARATORS.get(suffix(path))
    if sep is None:
        raise ValueError(
            f"{path}: cannot tell the format from {suffix(path)!r}; name it .csv / .tsv / "
            ".parquet or set separator"
        )
    return sep


def check_file(path: Path, separator: str | None, what: str | None = None) -> bool:
    """Whether `path` is Parquet; for a text file, first a ValueError when its format is unknown
    and a `schema.DataFileError` when it is empty or not text."""
    if is_parquet(path):
        return True
    separator_for(path, separator)
    check_text(path, what)
    return False


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
    if is_parquet(path):
        return pl.scan_parquet(path)
    options = {
        "separator": separator_for(path, separator),
        "has_header": has_header,
        "infer_schema_length": 10_000,
        "schema_overrides": {name: pl.String for name in strings} or None,
    }
    if path.suffix.lower() == ".gz":  # polars scans plain text lazily; gzip has to be read eagerly
        return pl.read_csv(path, **options).lazy()
    return pl.scan_csv(path, **options)
