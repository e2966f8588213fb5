"""Splits: each adds a `split` column ("train" / "val" / "test") to an interactions frame.

- `TemporalSplit`: each user's latest interactions go to validation and test.
- `ShippedSplit`: the dataset ships train/test; validation is carved from each user's train
  interactions at random (never from test), so model selection never sees the test set.
- `RandomSplit`: random 8:1:1 per interaction, RecBole's `RS` split: by default each user's
  interactions are shuffled and cut by ratio (RecBole's `group_by: user`), so every user with
  enough interactions has some in each part; `by_user=False` cuts the whole shuffled frame once.

Cold items and users: each split takes `cold_items` and `cold_users`, the shares of the distinct
items and users held out entirely, drawn uniformly at random with the split's `seed`. After the
base split, every interaction of a cold item or user is moved to "test" and a String column
`cold` says why: null (warm), "item", "user" or "both". With both shares 0 the frame is the base
split's, without a `cold` column.

Too little data for a part: when validation or test would be empty although its ratio asks for
some (or, for `ShippedSplit`, the source shipped no test interactions), the split raises an
`EmptySplitError` that says how much data there is and what the part needs, before any training
starts. With cold items or users the check is on the warm interactions. A ratio of 0 asks for
no part, and gets none without an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from features import schema

_SPLIT = schema.SPLIT
_PART_NAMES = {"val": "validation", "test": "test"}

COLD = "cold"  # why an interaction is cold: null (warm), "item", "user" or "both"


class EmptySplitError(ValueError):
    """A split left validation or test empty although it was asked for: too little data.

    `part` is "val" or "test"; `num_interactions` and `num_users` describe the split's input."""

    def __init__(self, part: str, num_interactions: int, num_users: int, need: str) -> None:
        self.part, self.num_interactions, self.num_users = part, num_interactions, num_users
        self.need = need
        super().__init__(
            f"data.split: {_PART_NAMES[part]} split is empty: {num_interactions} interactions "
            f"from {num_users} users; {need}"
        )

    def __reduce__(self):
        return (type(self), (self.part, self.num_interactions, self.num_users, self.need))


class SplitOptionError(ValueError):
    """A split option has a bad value: `option` (its name under data.split), the `value` found
    and the `problem`."""

    def __init__(self, option: str, value: object, problem: str) -> None:
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"data.split.{option}: {problem} (got {value!r})")

    def __reduce__(self):
        return (type(self), (self.option, self.value, self.problem))


def _per_user_note(df: pl.DataFrame, column: str = schema.USER_ID) -> str:
    most = df.group_by(column).len()["len"].max() if df.height else 0
    return f"the most any user has is {most}"


def _check_parts(
    split_df: pl.DataFrame,
    asked: dict[str, bool],
    need: Callable[[], dict[str, str]],
) -> None:
    """An EmptySplitError for the first part in `asked` (val, test) that was asked for and is
    empty in `split_df`. `need()[part]` says what the part needs (with the data's numbers: only
    counted when a part is empty)."""
    counts = dict(split_df[_SPLIT].value_counts().iter_rows()) if split_df.height else {}
    for part in ("val", "test"):
        if asked.get(part) and not counts.get(part):
            raise EmptySplitError(
                part, split_df.height, split_df[schema.USER_ID].n_unique(), need()[part]
            )


def _holdout_count(n: pl.Expr, ratio: float) -> pl.Expr:
    """ceil(n * ratio) for users with at least 3 interactions, else 0."""
    return pl.when(n >= 3).then((n * ratio).ceil().cast(pl.Int64)).otherwise(0)


def _random_key(lf: pl.LazyFrame, seed: int) -> pl.LazyFrame:
    df = lf.collect()
    rng = np.random.default_rng(seed)
    return df.with_columns(pl.Series("_key", rng.random(df.height))).lazy()


def _cold_count(num_ids: int, share: float) -> int:
    """round(share * num_ids), at least one id when a share is asked for."""
    return max(round(share * num_ids), 1) if share > 0 and num_ids else 0


def _cold_ids(ids: pl.Series, share: float, rng: np.random.Generator) -> pl.Series:
    """`share` of the distinct `ids`, drawn uniformly at random (from the sorted distinct ids,
    so the draw depends on the ids and the generator only)."""
    distinct = ids.unique().sort()
    drawn = rng.choice(len(distinct), size=_cold_count(len(distinct), share), replace=False)
    return distinct.gather(np.sort(drawn))


@dataclass(kw_only=True)
class ColdHoldout:
    """The options every split shares: items and users held out entirely (the module says how)."""

    cold_items: float = 0.0  # share of the distinct items whose every interaction goes to test
    cold_users: float = 0.0  # share of the distinct users whose every interaction goes to test

    def __post_init__(self) -> None:
        for option in ("cold_items", "cold_users"):
            share = getattr(self, option)
            is_number = isinstance(share, int | float) and not isinstance(share, bool)
            if not is_number or not 0 <= share < 1:
                raise SplitOptionError(option, share, "a share must be a number in [0, 1)")

    @property
    def holds_out_cold(self) -> bool:
        return self.cold_items > 0 or self.cold_users > 0

    def hold_out_cold(self, split_df: pl.DataFrame, seed: int) -> pl.DataFrame:
        """`split_df` with its cold items' and users' interactions in test and the `cold` column;
        unchanged when no share is asked for."""
        if not self.holds_out_cold:
            return split_df
        items_rng, users_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
        )
        cold_item = pl.col(schema.ITEM_ID).is_in(
            _cold_ids(split_df[schema.ITEM_ID], self.cold_items, items_rng).implode()
        )
        cold_user = pl.col(schema.USER_ID).is_in(
            _cold_ids(split_df[schema.USER_ID], self.cold_users, users_rng).implode()
        )
        return split_df.with_columns(
            pl.when(cold_item | cold_user)
            .then(pl.lit("test"))
            .otherwise(pl.col(_SPLIT))
            .alias(_SPLIT),
            pl.when(cold_item & cold_user)
            .then(pl.lit("both"))
            .when(cold_item)
            .then(pl.lit("item"))
            .when(cold_user)
            .then(pl.lit("user"))
            .otherwise(pl.lit(None, dtype=pl.String))
            .alias(COLD),
        )


def _warm(split_df: pl.DataFrame) -> pl.DataFrame:
    """The interactions of `split_df` that are not cold (all of them without a `cold` column)."""
    return split_df.filter(pl.col(COLD).is_null()) if COLD in split_df.columns else split_df


@dataclass
class TemporalSplit(ColdHoldout):
    val_ratio: float = 0.1  # share of each user's latest interactions held out for validation
    test_ratio: float = 0.1  # share of each user's latest interactions held out for test
    seed: int = 0  # draws the cold items and users

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        if schema.TIMESTAMP not in lf.collect_schema():
            raise schema.SchemaError(
                f"TemporalSplit needs a {schema.TIMESTAMP!r} column; found {lf.collect_schema().names()}"
            )
        by_user = pl.col(schema.USER_ID)
        n = pl.len().over(by_user)
        # Position from the end in (time, item) order: 0 is the user's latest interaction.
        position = pl.int_range(pl.len()).over(by_user, order_by=[schema.TIMESTAMP, schema.ITEM_ID])
        from_end = n - 1 - position
        n_test = _holdout_count(n, self.test_ratio)
        n_val = pl.min_horizontal(_holdout_count(n, self.val_ratio), n - n_test - 1).clip(0)
        split_df = (
            lf.drop(_SPLIT, strict=False)
            .with_columns(
                pl.when(from_end < n_test)
                .then(pl.lit("test"))
                .when(from_end < n_test + n_val)
                .then(pl.lit("val"))
                .otherwise(pl.lit("train"))
                .alias(_SPLIT)
            )
            .collect()
        )
        missing_time = split_df[schema.TIMESTAMP].null_count()
        if missing_time:
            raise schema.SchemaError(
                f"TemporalSplit: {missing_time} of {split_df.height} interactions have no "
                f"{schema.TIMESTAMP!r}; their order in time is unknown"
            )
        split_df = self.hold_out_cold(split_df, self.seed)
        warm_df = _warm(split_df)

        def need() -> dict[str, str]:
            note = _per_user_note(warm_df)
            need = f"it holds out only from users with at least 3 interactions; {note}"
            return {"val": need, "test": need}

        asked = {"val": self.val_ratio > 0, "test": self.test_ratio > 0}
        _check_parts(warm_df, asked, need)
        return split_df.lazy()


@dataclass
class ShippedSplit(ColdHoldout):
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
        split_df = (
            keyed.with_columns(
                pl.when(is_train & (rank < n_val))
                .then(pl.lit("val"))
                .otherwise(pl.col(_SPLIT))
                .alias(_SPLIT)
            )
            .drop("_key")
            .collect()
        )
        split_df = self.hold_out_cold(split_df, self.seed)
        warm_df = _warm(split_df)

        def need() -> dict[str, str]:
            train_df = warm_df.filter(pl.col(_SPLIT) != "test")
            return {
                "val": "validation is carved only from users with at least 3 shipped train "
                "interactions; " + _per_user_note(train_df),
                "test": "the source shipped no test interactions (rows with split 'test')",
            }

        _check_parts(warm_df, {"val": self.val_ratio > 0, "test": True}, need)
        return split_df.lazy()


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
class RandomSplit(ColdHoldout):
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
        split_df = (
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
            .collect()
        )
        split_df = self.hold_out_cold(split_df, self.seed)
        warm_df = _warm(split_df)

        def need() -> dict[str, str]:
            if not self.by_user:
                return {
                    "val": "the whole frame needs at least 3 interactions",
                    "test": "the whole frame needs at least 2 interactions",
                }
            note = _per_user_note(warm_df)
            return {
                "val": f"it holds out validation only from users with at least 3 interactions; {note}",
                "test": f"it holds out test only from users with at least 2 interactions; {note}",
            }

        asked = {"val": self.val_ratio > 0, "test": self.test_ratio > 0}
        _check_parts(warm_df, asked, need)
        return split_df.lazy()
