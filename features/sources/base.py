"""What a data source is: something that hands over an interactions LazyFrame and, optionally,
an item table. Every source ends in the same validated columns (see `features.schema`).

A source that reads files checks them when asked for its frames: a file that cannot be read or a
column with bad values is a `schema.DataFileError` naming the file, the column and a sample of
the bad values (see `features.sources.checks`), never a traceback from inside polars."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import polars as pl


class Source(Protocol):
    """A dataset, before any encoding or splitting."""

    name: str

    def interactions(self) -> pl.LazyFrame:
        """Columns `user_id`, `item_id`, and optionally `timestamp`, `rating`, `split`."""
        ...

    def items(self) -> pl.DataFrame | None:
        """Columns `item_id` and optionally `title`, `genres` (list of str), `year`."""
        ...


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a FileNotFoundError that says which file of which dataset is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    return path


def positives(lf: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """Keep interactions rated at least `min_rating` (all of them when it is None)."""
    return lf if min_rating is None else lf.filter(pl.col("rating") >= min_rating)
