"""What a data source is: something that hands over an interactions LazyFrame and, when it has
them, a users table and an items table. Every source ends in the same validated columns (see
`features.schema`).

A side table (`users()` / `items()`) has one row per key (`user_id` / `item_id`) and any other
columns of `schema.TABLE_KINDS` (int, float, bool, str, list of str); rows whose key has no
interaction are kept (they are the cold users and items). `table_path(side)` names the file a
table came from, for messages about its columns.

A source that reads files checks them when asked for its frames: a file that cannot be read or a
column with bad values is a `schema.DataFileError` naming the file, the column and a sample of
the bad values (see `features.sources.checks`), never a traceback from inside polars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import polars as pl

from features import schema


class Source(Protocol):
    """A dataset, before any encoding or splitting."""

    name: str

    def interactions(self) -> pl.LazyFrame:
        """Columns `user_id`, `item_id`, and optionally `timestamp`, `rating`, `split`."""
        ...

    def items(self) -> pl.DataFrame | None:
        """One row per `item_id`, with optional `title`, `genres` (list of str), `year` and any
        other table columns; None when the source has no item table."""
        ...

    def users(self) -> pl.DataFrame | None:
        """One row per `user_id` with any table columns; None when the source has no user table."""
        ...

    def table_path(self, side: str) -> str:
        """The file the "user" or "item" table is read from (see `table_label`)."""
        ...


def table_label(
    source: str, side: str, paths: Mapping[str, str | Path | None] | None = None
) -> str:
    """How a source names its `side` ("user" / "item") table in messages: the file it is read
    from (`paths[side]`), or "<source> <side>s" when there is no one file (or no table)."""
    if side not in schema.KEYS:
        raise ValueError(f"{source}: side must be one of {tuple(schema.KEYS)}, got {side!r}")
    path = (paths or {}).get(side)
    return f"{source} {side}s" if path is None else str(path)


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a FileNotFoundError that says which file of which dataset is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    return path


def positives(lf: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """Keep interactions rated at least `min_rating` (all of them when it is None)."""
    return lf if min_rating is None else lf.filter(pl.col("rating") >= min_rating)


def normalised_tag(tag: pl.Expr) -> pl.Expr:
    """ " Hip-Hop " → "hip-hop": user-given tags differ by case and spacing only too often."""
    return tag.str.strip_chars().str.to_lowercase()
