"""Reading a data file and checking its values, so that a bad file stops with a
`schema.DataFileError` naming the file, the column and a sample of the bad values, never with a
traceback from inside polars.

- `check_text(path)`: a file read as delimited text must be text: NUL bytes, or a gzip, zip or
  Parquet file under a text name, are named before polars reads it.
- `reading(path, what)`: polars' read errors (an empty file, a line with more fields than the
  header, bytes that are not UTF-8, a value that does not parse) become a `DataFileError`.
- `id_values`, `number_values`, `time_values`: one column of a file, checked and parsed.

How ids are read (every source that reads ids from a file):
- a missing id (an empty field, null, NaN, "nan", "null", "NA", "None") is an error naming the
  column, how many rows miss one, and which;
- integers, negative ones included, are Int64; whole floats written as floats (3.0) are those
  integers; integers with leading zeros (007) or beyond 64 bits keep their text, as strings, so
  "007" and "7" stay apart;
- a column of numbers with a fraction (3.5), or of numbers and non-numbers mixed (12, 13, "x"),
  is an error naming a sample (with `ids="str"` every id is kept as a string, as written);
- anything else is a string id, with surrounding spaces removed.
"""

from __future__ import annotations

import codecs
import gzip
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from features.schema import SAMPLE_SIZE, DataFileError

MISSING_TOKENS = ("", "nan", "NaN", "NAN", "null", "NULL", "None", "NA", "N/A", "n/a", "<NA>")
INTEGER = r"^[+-]?\d+$"
CANONICAL_INTEGER = r"^-?(0|[1-9]\d*)$"  # no "+", no leading zeros: the text an Int64 prints as
ID_MODES = ("auto", "str")
SNIFF_BYTES = 1 << 16  # bytes looked at to tell text from binary
MAGIC = {
    b"\x1f\x8b": "a gzip file; name it with a .gz suffix (e.g. clicks.csv.gz)",
    b"PAR1": "a Parquet file; name it .parquet",
    b"PK\x03\x04": "a zip archive; extract it first",
}


def check_text(path: Path, what: str | None = None) -> None:
    """A DataFileError when `path` is empty or plainly not delimited text."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as error:  # a .gz that is not gzip, or truncated
        raise DataFileError(path, None, f"cannot be read: {error}", what=what) from None
    if not head.strip():
        raise DataFileError(path, None, "the file is empty", what=what)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            raise DataFileError(path, None, f"is not delimited text but {kind}", what=what)
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise DataFileError(
            path,
            None,
            f"is binary, not delimited text (a NUL byte at offset {at})",
            [head[max(at - 8, 0) : at + 8]],
            what=what,
        )


def decode_utf8(raw: bytes, path: Path, what: str | None = None) -> str:
    """`raw` as text, or a DataFileError naming the first line that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, raw, error, raw[: error.start].count(b"\n") + 1, what) from None


def _not_utf8(
    path: Path, text: bytes, error: UnicodeDecodeError, line: int, what: str | None
) -> DataFileError:
    start = text.rfind(b"\n", 0, error.start) + 1
    end = text.find(b"\n", error.start)
    shown = text[start : end if end >= 0 else len(text)][:120]
    return DataFileError(
        path,
        None,
        f"line {line} is not UTF-8 text (bytes {text[error.start : error.end]!r}); "
        "re-save the file as UTF-8",
        [shown.decode("utf-8", errors="replace")],
        what=what,
    )


def _first_non_utf8(path: Path, what: str | None) -> DataFileError | None:
    """The error for the first bytes of `path` that are not UTF-8 (read in chunks), if any."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                # error.object is the few bytes held back from the last chunk + this chunk.
                return _not_utf8(
                    path, error.object, error, line + error.object[: error.start].count(b"\n"), what
                )
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)  # a sequence cut off by the end of the file
        except UnicodeDecodeError as error:
            return _not_utf8(path, error.object, error, line, what)
    return None


_PARSE = re.compile(
    r"could not parse `(?P<value>[^`]*)` as dtype `[^`]*` at column '(?P<column>[^']*)'"
)


@contextmanager
def reading(path: Path, what: str | None = None) -> Iterator[None]:
    """Turn polars' errors while reading `path` into a DataFileError that names the file."""
    try:
        yield
    except DataFileError:
        raise
    except pl.exceptions.NoDataError:
        raise DataFileError(path, None, "the file is empty", what=what) from None
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as error:
        text = str(error)
        if (
            "utf-8" in text.lower()
            or "utf8" in text.lower()
            or isinstance(error, UnicodeDecodeError)
        ):
            found = _first_non_utf8(path, what)
            if found is not None:
                raise found from None
        parsed = _PARSE.search(text)
        if parsed:
            raise DataFileError(
                path,
                parsed["column"],
                "holds a value of another type than the rows before it",
                [parsed["value"]],
                what=what,
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        hint = ""
        if "more fields" in text:
            hint = " (a line with more fields than the header: mixed separators, or an unquoted separator inside a value?)"
        raise DataFileError(path, None, f"cannot be read: {first}{hint}", what=what) from None


def _rows(mask: pl.Series) -> list[int]:
    """1-based data-row numbers (header not counted) where `mask` holds, first SAMPLE_SIZE."""
    return [i + 1 for i in mask.arg_true().head(SAMPLE_SIZE).to_list()]


def _sample(series: pl.Series, mask: pl.Series) -> list[object]:
    return series.filter(mask).unique(maintain_order=True).head(SAMPLE_SIZE).to_list()


def _missing(series: pl.Series) -> pl.Series:
    if series.dtype == pl.String:
        return series.is_null() | series.str.strip_chars().is_in(MISSING_TOKENS).fill_null(True)
    if series.dtype.is_float():
        return series.is_null() | series.is_nan().fill_null(True)
    return series.is_null()


def require_values(
    series: pl.Series, path: Path, column: str, ours: str, what: str | None = None
) -> None:
    """A DataFileError when any row of `series` (the file's `column`, our `ours`) misses its value."""
    missing = _missing(series)
    count = int(missing.sum())
    if count:
        rows = ", ".join(map(str, _rows(missing)))
        more = ", ..." if count > SAMPLE_SIZE else ""
        raise DataFileError(
            path,
            column,
            f"{count} of {series.len()} rows have no {ours} (empty, null or NaN) in column "
            f"{column!r}, at rows {rows}{more} (counting data rows from 1)",
            _sample(series, missing),
            what=what,
        )


def _wrong_type(
    series: pl.Series, path: Path, column: str, label: str, expected: str, what: str | None
) -> DataFileError:
    """The error for a column whose type holds none of the `expected` values."""
    return DataFileError(
        path,
        column,
        f"{label} has type {series.dtype}, expected {expected}",
        series.head(SAMPLE_SIZE).to_list(),
        what=what,
    )


def _whole(floats: pl.Series) -> pl.Series:
    return floats.is_finite() & (floats == floats.floor()) & (floats.abs() < 2.0**53)


def id_values(
    series: pl.Series,
    path: Path,
    column: str,
    ours: str,
    ids: str = "auto",
    what: str | None = None,
) -> pl.Series:
    """The file's id column `column` (holding our `ours`) as Int64 or String ids, named `ours`;
    see the module docstring for the rules. Integer dtypes other than Int64 are kept."""
    if ids not in ID_MODES:
        raise ValueError(f"ids must be one of {ID_MODES}, got {ids!r}")
    require_values(series, path, column, ours, what)
    dtype = series.dtype
    if dtype.is_integer():
        return series.alias(ours)
    if dtype.is_float():
        whole = _whole(series)
        if not whole.all():
            raise DataFileError(
                path,
                column,
                f"{ours} column {column!r} holds {int((~whole).sum())} ids that are not whole numbers",
                _sample(series, ~whole),
                what=what,
            )
        return series.cast(pl.Int64).alias(ours)
    if dtype != pl.String:
        raise _wrong_type(
            series, path, column, f"{ours} column {column!r}", "integers or strings", what
        )
    text = series.str.strip_chars()
    if ids == "str":
        return text.alias(ours)
    if text.str.contains(INTEGER).all():
        as_int = text.str.to_integer(strict=False)
        if text.str.contains(CANONICAL_INTEGER).all() and not as_int.is_null().any():
            return as_int.cast(pl.Int64).alias(ours)
        return text.alias(ours)  # leading zeros or beyond 64 bits: keep the text
    floats = text.cast(pl.Float64, strict=False)
    numeric = floats.is_not_null()
    if numeric.all():
        integer = text.str.contains(INTEGER)  # whole as written, exact beyond 2**53 too
        whole = _whole(floats) | integer
        if whole.all():
            exact = text.str.to_integer(strict=False).cast(pl.Int64, strict=False)
            return exact.zip_with(integer, floats.cast(pl.Int64)).alias(ours)
        raise DataFileError(
            path,
            column,
            f"{ours} column {column!r} holds {int((~whole).sum())} ids that are not whole numbers",
            _sample(text, ~whole),
            what=what,
        )
    num_numbers = int(numeric.sum())
    if num_numbers:
        rarer = numeric if num_numbers < text.len() - num_numbers else ~numeric
        raise DataFileError(
            path,
            column,
            f"{ours} column {column!r} mixes {num_numbers} numeric ids with "
            f"{text.len() - num_numbers} other strings; a column holds one kind "
            "(set ids: str to read every id as a string, as written)",
            _sample(text, rarer),
            what=what,
        )
    return text.alias(ours)


def number_values(
    series: pl.Series, path: Path, column: str, ours: str, what: str | None = None
) -> pl.Series:
    """The file's numeric column `column` (our `ours`) as Float64; missing or non-numeric values
    are a DataFileError with a sample."""
    require_values(series, path, column, ours, what)
    if series.dtype.is_numeric():
        return series.cast(pl.Float64).alias(ours)
    if series.dtype != pl.String:
        raise _wrong_type(series, path, column, f"column {column!r} (for {ours})", "numbers", what)
    floats = series.str.strip_chars().cast(pl.Float64, strict=False)
    bad = floats.is_null()
    if bad.any():
        raise DataFileError(
            path,
            column,
            f"column {column!r} (for {ours}) has type String: {int(bad.sum())} values are not numbers",
            _sample(series, bad),
            what=what,
        )
    return floats.alias(ours)


def time_values(
    series: pl.Series,
    path: Path,
    column: str,
    time_format: str | None,
    what: str | None = None,
) -> pl.Series:
    """The file's time column `column` as Int64 epoch seconds: integers as they are, floats
    truncated to whole seconds, dates and datetimes converted, strings parsed with `time_format`.
    Missing or unparsable times are a DataFileError with a sample."""
    ours = "timestamp"
    require_values(series, path, column, ours, what)
    dtype = series.dtype
    if dtype.is_integer():
        return series.cast(pl.Int64).alias(ours)
    if dtype.is_float():
        bad = ~series.is_finite() | (series.abs() >= 2.0**62)
        if bad.any():
            raise DataFileError(
                path, column, f"column {column!r} (for timestamp) holds values that are not times",
                _sample(series, bad), what=what,
            )  # fmt: skip
        return series.cast(pl.Int64).alias(ours)
    if dtype == pl.Date:
        return series.cast(pl.Datetime("ms")).dt.epoch("s").alias(ours)
    if isinstance(dtype, pl.Datetime):
        return series.dt.epoch("s").alias(ours)
    if dtype != pl.String:
        label, expected = f"column {column!r} (for timestamp)", "integers, dates or strings"
        raise _wrong_type(series, path, column, label, expected, what)
    text = series.str.strip_chars()
    if time_format is not None:
        parsed = text.str.to_datetime(time_format, strict=False)
        bad = parsed.is_null()
        if bad.any():
            raise DataFileError(
                path,
                column,
                f"column {column!r} (for timestamp): {int(bad.sum())} values do not match "
                f"timestamp_format {time_format!r}",
                _sample(series, bad),
                what=what,
            )
        return parsed.dt.epoch("s").alias(ours)
    if text.str.contains(INTEGER).all():
        as_int = text.str.to_integer(strict=False)
        if not as_int.is_null().any():
            return as_int.cast(pl.Int64).alias(ours)
    floats = text.cast(pl.Float64, strict=False)
    if floats.is_not_null().all():
        return time_values(floats, path, column, None, what)
    bad = floats.is_null()
    raise DataFileError(
        path,
        column,
        f"column {column!r} (for timestamp) holds strings; set timestamp_format "
        f"({int(bad.sum())} of {series.len()} values are not numbers)",
        _sample(series, bad),
        what=what,
    )
