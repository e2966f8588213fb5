"""Splits: each adds a `split` column ("train" / "val" / "test") to an interactions frame.

- `TemporalSplit`: each user's latest interactions go to validation and test.
- `ShippedSplit`: the dataset ships train/test; validation is carved from each user's train
  interactions at random (never from test), so model selection never sees the test set.
- `RandomSplit`: every interaction independently, e.g. 8:1:1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features import schema

_SPLIT = schema.SPLIT


def _holdout_count(n: pl.Expr, ratio: float) -> pl.Expr:
    """ceil(n * ratio) for users with at least 3 interactions, else 0."""
    return pl.when(n >= 3).then((n * ratio).ceil().cast(pl.Int64)).otherwise(0)


def _random_key(lf: pl.LazyFrame, seed: int) -> pl.LazyFrame:
    df = lf.collect()
    rng = np.random.default_rng(seed)
    return df.with_columns(pl.Series("_key", rng.random(df.height))).lazy()


@dataclass
class TemporalSplit:
    val_ratio: float = 0.1  # share of each user's latest interactions held out for validation
    test_ratio: float = 0.1  # share of each user's latest interactions held out for test

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        if schema.TIMESTAMP not in lf.collect_schema():
            raise schema.SchemaError(
                f"TemporalSplit needs a {schema.TIMESTAMP!r} column; found {lf.collect_schema().names()}"
            )
        by_user = pl.col(schema.USER_ID)
        n = pl.len().over(by_user)
        # Position from the end: 0 is the user's latest interaction.
        from_end = (
            pl.int_range(pl.len()).over(by_user, order_by=[schema.TIMESTAMP, schema.ITEM_ID])
            .reverse()
            .over(by_user)
        )
        n_test = _holdout_count(n, self.test_ratio)
        n_val = pl.min_horizontal(_holdout_count(n, self.val_ratio), n - n_test - 1).clip(0)
        return lf.drop(_SPLIT, strict=False).with_columns(
            pl.when(from_end < n_test)
            .then(pl.lit("test"))
            .when(from_end < n_test + n_val)
            .then(pl.lit("val"))
            .otherwise(pl.lit("train"))
            .alias(_SPLIT)
        )


@dataclass
class ShippedSplit:
    val_ratio: float = 0.1  # share of each user's shipped train interactions carved out for validation
    seed: int = 0

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        names = lf.collect_schema().names()
        if _SPLIT not in names:
            raise schema.SchemaError(
                f"ShippedSplit needs a {_SPLIT!r} column (train/test) from the source; found {names}"
            )
        keyed = _random_key(lf, self.seed)
        is_train = pl.col(_SPLIT) == "train"
        n_train = is_train.sum().over(schema.USER_ID)
        rank = pl.col("_key").rank("ordinal").over([schema.USER_ID, _SPLIT]) - 1
        n_val = pl.min_horizontal(_holdout_count(n_train, self.val_ratio), n_train - 1).clip(0)
        return keyed.with_columns(
            pl.when(is_train & (rank < n_val)).then(pl.lit("val")).otherwise(pl.col(_SPLIT)).alias(_SPLIT)
        ).drop("_key")


@dataclass
class RandomSplit:
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    seed: int = 0

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        u = pl.col("_key")
        return (
            _random_key(lf.drop(_SPLIT, strict=False), self.seed)
            .with_columns(
                pl.when(u < self.test_ratio)
                .then(pl.lit("test"))
                .when(u < self.test_ratio + self.val_ratio)
                .then(pl.lit("val"))
                .otherwise(pl.lit("train"))
                .alias(_SPLIT)
            )
            .drop("_key")
        )
