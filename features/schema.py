"""Column contracts for every frame that enters `features/`, and the one check that enforces them.

A source may produce ids as integers or strings; everything else has one type. `validate`
raises a `SchemaError` that names the source, each missing or mistyped column, and the
columns that were actually found, so a user can fix their file without reading our code.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
SPLIT = "split"  # "train" / "val" / "test", only on sources that ship their own split

TITLE = "title"
GENRES = "genres"
YEAR = "year"

# A column's allowed kinds: "id" (any integer or string), "int", "float", "str", "str_list".
INTERACTIONS = {USER_ID: "id", ITEM_ID: "id"}
INTERACTIONS_OPTIONAL = {TIMESTAMP: "int", RATING: "float", SPLIT: "str"}
ITEMS = {ITEM_ID: "id"}
ITEMS_OPTIONAL = {TITLE: "str", GENRES: "str_list", YEAR: "int"}

SPLIT_NAMES = ("train", "val", "test")


class SchemaError(ValueError):
    """A frame does not have the columns or types a stage needs."""


def _kind_ok(kind: str, dtype: pl.DataType) -> bool:
    if kind == "id":
        return dtype.is_integer() or dtype == pl.String
    if kind == "int":
        return dtype.is_integer()
    if kind == "float":
        return dtype.is_numeric()
    if kind == "str":
        return dtype == pl.String
    if kind == "str_list":
        return isinstance(dtype, pl.List) and dtype.inner == pl.String
    raise ValueError(f"unknown column kind {kind!r}")


def validate(
    lf: pl.LazyFrame,
    required: Mapping[str, str],
    source: str,
    optional: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """Check `lf` has every `required` column (and that present `optional` ones are typed right).

    Returns `lf` unchanged so the check can sit inside a pipeline.
    """
    schema = lf.collect_schema()
    problems = []
    for name, kind in required.items():
        if name not in schema:
            problems.append(f"missing column {name!r} (expected {kind})")
        elif not _kind_ok(kind, schema[name]):
            problems.append(f"column {name!r} has type {schema[name]}, expected {kind}")
    for name, kind in (optional or {}).items():
        if name in schema and not _kind_ok(kind, schema[name]):
            problems.append(f"column {name!r} has type {schema[name]}, expected {kind}")
    if problems:
        found = ", ".join(f"{n}: {t}" for n, t in schema.items())
        raise SchemaError(f"{source}: " + "; ".join(problems) + f". Found columns: {found}")
    return lf
