"""Reading the headerless, delimited text files old datasets ship (MovieLens .dat / u.*, HetRec).

One helper: it names the columns, decodes Latin-1 when asked (polars reads UTF-8 only), turns
quoting off (titles hold stray quotes), and raises a SchemaError naming the file and what it
found when a file has the wrong number of fields or a mistyped column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file


def read_delimited(
    path: str | Path,
    columns: Sequence[str],
    kinds: Mapping[str, str],
    what: str,
    separator: str = "\t",
    has_header: bool = False,
    encoding: str = "utf-8",
) -> pl.LazyFrame:
    """A delimited file as a LazyFrame named `columns` and checked against `kinds` (schema kinds).

    `separator` may be several characters ("::" in MovieLens 1M); with `has_header` the file's
    header row is checked against nothing and replaced by `columns`.
    """
    path = existing_file(path, what)
    raw = path.read_bytes()
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raw = raw.decode(encoding).encode("utf-8")
    single = separator if len(separator) == 1 else "\x1f"
    if single != separator:
        raw = raw.replace(separator.encode(), single.encode())
    try:
        df = pl.read_csv(
            raw,
            separator=single,
            has_header=has_header,
            quote_char=None,
            infer_schema_length=None,
            encoding="utf8-lossy",
        )
    except pl.exceptions.ComputeError as error:
        raise schema.SchemaError(
            f"{path}: cannot read as {separator!r}-separated {what}: {error}"
        ) from None
    if df.width != len(columns):
        first = df.row(0) if df.height else ()
        raise schema.SchemaError(
            f"{path}: expected {len(columns)} {separator!r}-separated fields ({', '.join(columns)}), "
            f"found {df.width}; first row: {first}"
        )
    lf = df.lazy().rename(dict(zip(df.columns, columns, strict=True)))
    return schema.validate(lf, kinds, f"{path} ({what})")
