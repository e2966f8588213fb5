"""Reading the headerless, delimited text files old datasets ship (MovieLens .dat / u.*, HetRec).

One helper: it names the columns, decodes Latin-1 when asked (polars reads UTF-8 only), turns
quoting off (titles hold stray quotes), and raises a `schema.DataFileError` naming the file, the
column and a sample of the bad values when a file is empty, binary or not UTF-8, has the wrong
number of fields, a mistyped column, or a row without its user, item, rating or timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file
from features.sources.checks import decode_utf8, require_values

_KIND_CAST = {"int": pl.Int64, "float": pl.Float64}
_VALUES_REQUIRED = (schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP)


def read_delimited(
    path: str | Path,
    columns: Sequence[str],
    kinds: Mapping[str, str],
    what: str,
    separator: str = "\t",
    has_header: bool = False,
    encoding: str = "utf-8",
    strings: Sequence[str] = (),
) -> pl.LazyFrame:
    """A delimited file as a LazyFrame named `columns` and checked against `kinds` (schema kinds).

    `separator` may be several characters ("::" in MovieLens 1M); with `has_header` the file's
    header row is checked against nothing and replaced by `columns`; the `strings` columns keep
    their text whatever it looks like (a zip code "02138", not 2138). Every problem is a
    `schema.DataFileError` naming the file: not text (NUL bytes) or not UTF-8 when no other
    `encoding` is given, empty, a wrong number of fields, a column whose values are not of its
    kind (with a sample of them), or a row missing a user, item, rating or timestamp.
    """
    path = existing_file(path, what)
    raw = path.read_bytes()
    if not raw.strip():
        raise schema.DataFileError(path, None, "the file is empty", what=what)
    if b"\x00" in raw[: 1 << 16]:
        at = raw.index(b"\x00")
        raise schema.DataFileError(
            path, None, f"is binary, not delimited text (a NUL byte at offset {at})",
            [raw[max(at - 8, 0) : at + 8]], what=what,
        )  # fmt: skip
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        decode_utf8(raw, path, what)
    else:
        raw = raw.decode(encoding).encode("utf-8")
    single = separator if len(separator) == 1 else "\x1f"
    if single != separator:
        raw = raw.replace(separator.encode(), single.encode())
    try:
        df = _parse(raw, single, has_header)
    except pl.exceptions.NoDataError:
        raise schema.DataFileError(path, None, "the file is empty", what=what) from None
    except pl.exceptions.PolarsError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise schema.DataFileError(
            path,
            None,
            f"cannot read as {separator!r}-separated {what}: {first} (a line with more "
            "fields than the first, or another separator?)",
        ) from None
    if df.width != len(columns):
        first = df.row(0) if df.height else ()
        raise schema.DataFileError(
            path,
            None,
            f"expected {len(columns)} {separator!r}-separated fields ({', '.join(columns)}), "
            f"found {df.width}; first row: {first}",
            [first],
        )
    if df.height == 0:
        raise schema.DataFileError(path, None, "has no data rows", what=what)
    if strings:  # read again with those columns as text, now that the fields are known good
        df = _parse(raw, single, has_header, columns, strings)
    df = df.rename(dict(zip(df.columns, columns, strict=True)))
    _check_kinds(df, kinds, path, what)
    for name in _VALUES_REQUIRED:
        if name in kinds:
            require_values(df[name], path, name, name, what)
    return df.lazy()


def _parse(
    raw: bytes,
    separator: str,
    has_header: bool,
    columns: Sequence[str] | None = None,
    strings: Sequence[str] = (),
) -> pl.DataFrame:
    """`raw` (UTF-8) as a DataFrame with inferred types, the `strings` of `columns` as text."""
    return pl.read_csv(
        raw,
        separator=separator,
        has_header=has_header,
        quote_char=None,
        infer_schema_length=None,
        new_columns=list(columns) if columns is not None else None,
        schema_overrides={name: pl.String for name in strings} or None,
    )


def _check_kinds(df: pl.DataFrame, kinds: Mapping[str, str], path: Path, what: str) -> None:
    """A DataFileError for the first column not of its kind, with a sample of its bad values."""
    for name, kind in kinds.items():
        dtype = df.schema[name]
        if schema.kind_ok(kind, dtype):
            continue
        values = df[name]
        if kind == "int" and dtype.is_float():
            bad = values.is_not_null() & ~(values.is_finite() & (values == values.floor()))
        elif kind in _KIND_CAST:
            text = values.cast(pl.String).str.strip_chars()
            bad = values.is_not_null() & text.cast(_KIND_CAST[kind], strict=False).is_null()
        else:
            bad = values.is_not_null()
        if not bad.any():
            bad = values.is_not_null()
        sample = values.filter(bad).unique(maintain_order=True).head(schema.SAMPLE_SIZE)
        found = ", ".join(f"{n}: {t}" for n, t in df.schema.items())
        raise schema.DataFileError(
            path,
            name,
            f"column {name!r} has type {dtype}, expected {kind}. Found columns: {found}",
            sample.to_list(),
            what=what,
        )
