"""The LightGCN text format (Gowalla, Yelp2018, Amazon-Book and the BARS splits):
`train.txt` and `test.txt`, one line per user, `user item item ...`.

The dataset ships its own train/test split; it arrives in the `split` column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file


def scan_lightgcn(path: str | Path) -> pl.LazyFrame:
    """One `user item item ...` file → user_id, item_id (one row per pair)."""
    path = existing_file(path, "lightgcn")
    lines = pl.scan_csv(
        path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None
    )
    ids = pl.col("line").str.strip_chars().str.split(" ")
    lf = (
        lines.filter(pl.col("line").str.strip_chars() != "")
        .select(
            ids.list.first().alias(schema.USER_ID),
            ids.list.slice(1).alias(schema.ITEM_ID),
        )
        .explode(schema.ITEM_ID)
        .filter(pl.col(schema.ITEM_ID).is_not_null() & (pl.col(schema.ITEM_ID) != ""))
    )
    bad = (
        lf.filter(
            pl.col(schema.USER_ID).cast(pl.Int64, strict=False).is_null()
            | pl.col(schema.ITEM_ID).cast(pl.Int64, strict=False).is_null()
        )
        .head(1)
        .collect()
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise schema.SchemaError(
            f"{path}: expected integer ids in 'user item item ...' lines, found user "
            f"{row[schema.USER_ID]!r} item {row[schema.ITEM_ID]!r}"
        )
    return lf.select(pl.col(schema.USER_ID).cast(pl.Int64), pl.col(schema.ITEM_ID).cast(pl.Int64))


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
