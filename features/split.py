"""Splits: each adds a `split` column ("train" / "val" / "test") to an interactions frame.

- `TemporalSplit`: each user's latest interactions go to validation and test.
- `ShippedSplit`: the dataset ships train/test; validation is carved from each user's train
  interactions at random (never from test), so model selection never sees the test set.
- `RandomSplit`: random 8:1:1 per interaction, RecBole's `RS` split: by default each user's
  interactions are shuffled and cut by ratio (RecBole's `group_by: user`), so every user with
  enough interactions has some in each part; `by_user=False` cuts the whole shuffled frame once.
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
            pl.int_range(pl.len())
            .over(by_user, order_by=[schema.TIMESTAMP, schema.ITEM_ID])
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
    val_ratio: float = (
        0.1  # share of each user's shipped train interactions carved out for validation
    )
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
            pl.when(is_train & (rank < n_val))
            .then(pl.lit("val"))
            .otherwise(pl.col(_SPLIT))
            .alias(_SPLIT)
        ).drop("_key")


def _ratio_counts(n: pl.Expr, val_ratio: float, test_ratio: float) -> tuple[pl.Expr, pl.Expr]:
    """(n_val, n_test) out of `n` interactions, as RecBole's `Dataset._calcu_split_ids` counts them.

    Each held-out part is floor(ratio * n); a part that would round down from a non-zero share
    to 0 gets one interaction instead, test first, while more than one stays in train.
    """
    total = (1.0 - val_ratio - test_ratio) + val_ratio + test_ratio
    val_r, test_r = val_ratio / total, test_ratio / total
    n_test = (n * test_r).floor().cast(pl.Int64)
    n_val = (n * val_r).floor().cast(pl.Int64)

    def bump(share: float) -> pl.Expr:
        return ((n * share) > 0) & ((n * share) < 1)

    bump_test = bump(test_r) & (n - n_val - n_test > 1)
    n_test = n_test + bump_test.cast(pl.Int64)
    bump_val = bump(val_r) & (n - n_val - n_test > 1)
    return n_val + bump_val.cast(pl.Int64), n_test


@dataclass
class RandomSplit:
    val_ratio: float = 0.1  # share of interactions held out for validation
    test_ratio: float = 0.1  # share held out for test
    by_user: bool = True  # cut each user's shuffled interactions (RecBole group_by: user)
    seed: int = 0

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        over = [schema.USER_ID] if self.by_user else None
        n = pl.len().over(over) if over else pl.len()
        # Position in a random order (within the user when by_user): train first, then val, test.
        rank = (
            pl.col("_key").rank("ordinal").over(over) if over else pl.col("_key").rank("ordinal")
        ) - 1
        n_val, n_test = _ratio_counts(n, self.val_ratio, self.test_ratio)
        n_train = n - n_val - n_test
        return (
            _random_key(lf.drop(_SPLIT, strict=False), self.seed)
            .with_columns(
                pl.when(rank < n_train)
                .then(pl.lit("train"))
                .when(rank < n_train + n_val)
                .then(pl.lit("val"))
                .otherwise(pl.lit("test"))
                .alias(_SPLIT)
            )
            .drop("_key")
        )
