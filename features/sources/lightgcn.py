"""The LightGCN text format (Gowalla, Yelp2018, Amazon-Book and the BARS splits):
`train.txt` and `test.txt`, one line per user, `user item item ...`.

The dataset ships its own train/test split; it arrives in the `split` column.

Ids are integers separated by any whitespace (spaces or tabs); blank lines are skipped. A line
with a user and no items is a user without interactions in that file: it adds no rows (and is
counted in the log). Anything else is a `schema.DataFileError` naming the file, the column
(`user_id` or `item_id`), the first bad line and a sample of the bad values: an id that is not a
64-bit integer (a fraction, a word, a comma-separated line), bytes that are not UTF-8, an empty
or binary file. Negative integers are ids like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, table_label
from features.sources.checks import check_text, reading

log = logging.getLogger(__name__)

LINE, LINE_NO, IDS = "line", "line_no", "ids"


def _integer_ids(df: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """`df[column]` (string tokens) as Int64, or a DataFileError naming the first bad line."""
    ids = df[column].cast(pl.Int64, strict=False)
    bad = ids.is_null()
    if bad.any():
        bad_df = df.filter(bad)
        values = bad_df[column].unique(maintain_order=True).head(schema.SAMPLE_SIZE).to_list()
        raise schema.DataFileError(
            path,
            column,
            f"expected integer ids in 'user item item ...' lines, found {bad_df.height} "
            f"{column!r} values that are not 64-bit integers (first on line {bad_df[LINE_NO][0]})",
            values,
        )
    return ids


def scan_lightgcn(path: str | Path) -> pl.LazyFrame:
    """One `user item item ...` file → user_id, item_id (one row per pair), read and checked."""
    path = existing_file(path, "lightgcn")
    check_text(path)
    with reading(path):
        lines_df = pl.read_csv(
            path,
            has_header=False,
            new_columns=[LINE],
            separator="\x1f",
            quote_char=None,
            schema={LINE: pl.String},
        )
    tokens_df = (
        lines_df.with_row_index(LINE_NO, offset=1)
        .select(LINE_NO, pl.col(LINE).fill_null("").str.extract_all(r"\S+").alias(IDS))
        .filter(pl.col(IDS).list.len() > 0)
    )
    if tokens_df.height == 0:
        raise schema.DataFileError(path, None, "has no 'user item item ...' lines")
    users_df = tokens_df.select(LINE_NO, pl.col(IDS).list.first().alias(schema.USER_ID))
    _integer_ids(users_df, schema.USER_ID, path)
    no_items = int((tokens_df[IDS].list.len() == 1).sum())
    if no_items:
        log.info(
            "%s: %d lines have a user and no items (users without interactions)", path, no_items
        )
    pairs_df = (
        tokens_df.select(
            LINE_NO,
            pl.col(IDS).list.first().alias(schema.USER_ID),
            pl.col(IDS).list.slice(1).alias(schema.ITEM_ID),
        )
        .explode(schema.ITEM_ID)
        .drop_nulls(schema.ITEM_ID)
    )
    return pl.DataFrame(
        [
            _integer_ids(pairs_df, schema.USER_ID, path),
            _integer_ids(pairs_df, schema.ITEM_ID, path),
        ]
    ).lazy()


@dataclass
class LightGCN:
    """A LightGCN-format dataset folder with train.txt and test.txt."""

    root: str
    name: str = "lightgcn"

    def interactions(self) -> pl.LazyFrame:
        root = Path(self.root).expanduser()
        return pl.concat(
            [
                scan_lightgcn(root / "train.txt").with_columns(pl.lit("train").alias(schema.SPLIT)),
                scan_lightgcn(root / "test.txt").with_columns(pl.lit("test").alias(schema.SPLIT)),
            ]
        )

    def items(self) -> None:
        return None

    def users(self) -> None:
        return None

    def table_path(self, side: str) -> str:
        return table_label(self.name, side)
