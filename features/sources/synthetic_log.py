"""Large synthetic interaction logs with the skew of real ones, for scale benchmarks.

    SyntheticLog(num_interactions=25_000_000, num_users=1_000_000, num_items=200_000)
    python -m features.sources.synthetic_log --interactions 25000000 --users 1000000 \
        --items 200000 --out /data/log25m      # interactions / items / users .parquet
    python -m features.sources.synthetic_log ... --layout movielens   # ratings.csv, movies.csv

Planted, exactly: each item's number of interactions (its popularity) follows a Zipf law over
popularity ranks, `count ∝ rank ** -item_exponent`, at most `max_item_share` of the users; each
user's activity follows `min_user_interactions + Zipf(user_exponent)` over activity ranks, at
most `max_user_share` of the items. Ranks are shuffled over the ids (popular is not low id).
Users and items are paired at random with those counts (a bipartite configuration model), then
pairs seen twice are re-dealt among random rows until every (user, item) is unique: each round
permutes items among rows, so both counts stay exact (`planted_item_counts`,
`planted_user_counts`). There is no taste structure beyond popularity: use `Synthetic` for a
learnable one.

Timestamps: each user is active over a random window of `days` days from 2015-01-01; each of
their interactions falls uniformly in it (epoch seconds). The log is in time order.

Side tables (optional): items have a `category` (one of `num_categories`, Zipf-skewed) and a
`price` (log-normal); users a `region` (one of `num_regions`, Zipf-skewed).

Everything is vectorised numpy / polars (the loops are over re-dealing rounds, not rows); 25M
interactions take about a minute and 1.1 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from features import schema
from features.sources.base import table_label

USER_ID_OFFSET = 100_000_000  # raw ids are not indices: code that mixes them up fails loudly
ITEM_ID_OFFSET = 200_000_000
START = 1_420_070_400  # 2015-01-01 00:00 UTC
DAY = 86_400
MAX_ROUNDS = 1_000  # re-dealing rounds before giving up (a feasible log needs tens)
CATEGORY, PRICE, REGION = "category", "price", "region"
FILES = {"interactions": "interactions.parquet", "item": "items.parquet", "user": "users.parquet"}


class SyntheticLogError(ValueError):
    """An option of the generator has a bad value, or the counts asked for cannot be met:
    `option` (its name), the `value` found and the `problem`."""

    def __init__(self, option: str, value: object, problem: str) -> None:
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"synthetic_log.{option}: {problem} (got {value!r})")

    def __reduce__(self):
        return (type(self), (self.option, self.value, self.problem))


def zipf_counts(num: int, total: int, exponent: float, cap: int, floor: int = 0) -> np.ndarray:
    """(num,) int64 counts by rank summing to `total`: `floor` each, the rest in proportion to
    rank ** -exponent, none above `cap` (the excess of capped ranks goes to the others), rounded
    by largest remainder."""
    weights = np.arange(1, num + 1, dtype=np.float64) ** -exponent  # (num,) by rank
    rest, room = total - floor * num, cap - floor
    capped = np.zeros(num, dtype=bool)
    while True:  # water-filling: at most one round per newly capped rank group
        free = rest - room * capped.sum()
        expected = np.where(capped, room, free * weights / weights[~capped].sum())
        over = (expected > room) & ~capped
        if not over.any():
            break
        capped |= over
    counts = np.floor(expected).astype(np.int64)
    remainder = expected - counts
    counts[np.argsort(-remainder, kind="stable")[: rest - counts.sum()]] += 1
    return counts + floor


@dataclass
class SyntheticLog:
    num_interactions: int = 1_000_000  # unique (user, item) pairs
    num_users: int = 40_000
    num_items: int = 8_000
    item_exponent: float = 0.8  # Zipf exponent of item popularity over popularity ranks
    user_exponent: float = 0.8  # Zipf exponent of user activity (beyond the minimum)
    min_user_interactions: int = 5  # every user has at least this many
    max_item_share: float = 0.5  # an item reaches at most this share of the users
    max_user_share: float = 0.05  # a user interacts with at most this share of the items
    days: int = 1_095  # the log's time span
    item_features: bool = True  # items table: category, price
    user_features: bool = True  # users table: region
    num_categories: int = 100
    num_regions: int = 50
    seed: int = 0
    name: str = "synthetic_log"

    def __post_init__(self) -> None:
        for option in ("num_interactions", "num_users", "num_items", "days"):
            if getattr(self, option) < 1:
                raise SyntheticLogError(option, getattr(self, option), "must be at least 1")
        for option in ("num_categories", "num_regions"):
            if getattr(self, option) < 1:
                raise SyntheticLogError(option, getattr(self, option), "must be at least 1")
        for option in ("max_item_share", "max_user_share"):
            if not 0 < getattr(self, option) <= 1:
                raise SyntheticLogError(option, getattr(self, option), "must be in (0, 1]")
        for option in ("item_exponent", "user_exponent"):
            if getattr(self, option) < 0:
                raise SyntheticLogError(option, getattr(self, option), "must be >= 0")
        if self.min_user_interactions < 0:
            raise SyntheticLogError(
                "min_user_interactions", self.min_user_interactions, "must be >= 0"
            )
        if self.min_user_interactions > self.user_cap:
            raise SyntheticLogError(
                "min_user_interactions",
                self.min_user_interactions,
                f"above a user's cap of {self.user_cap} items (max_user_share x num_items)",
            )
        most = min(self.num_users * self.user_cap, self.num_items * self.item_cap)
        if not self.num_users * self.min_user_interactions <= self.num_interactions <= most:
            raise SyntheticLogError(
                "num_interactions",
                self.num_interactions,
                f"must lie in [{self.num_users * self.min_user_interactions}, {most}]: "
                "min_user_interactions per user, at most the caps' unique pairs (a user at "
                f"most {self.user_cap} items: raise num_items or max_user_share for more)",
            )

    @property
    def user_cap(self) -> int:
        return max(int(self.max_user_share * self.num_items), 1)

    @property
    def item_cap(self) -> int:
        return max(int(self.max_item_share * self.num_users), 1)

    @cached_property
    def _rngs(self) -> list[np.random.Generator]:
        """One generator per part (item counts, user counts, pairing, times, items, users): the
        tables do not depend on whether the log was drawn first."""
        return [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(6)]

    @cached_property
    def planted_item_counts(self) -> np.ndarray:
        """(num_items,) interactions of each item (by item row: raw id - ITEM_ID_OFFSET)."""
        counts = zipf_counts(
            self.num_items, self.num_interactions, self.item_exponent, self.item_cap
        )
        return counts[self._rngs[0].permutation(self.num_items)]

    @cached_property
    def planted_user_counts(self) -> np.ndarray:
        """(num_users,) interactions of each user (by user row: raw id - USER_ID_OFFSET)."""
        counts = zipf_counts(
            self.num_users,
            self.num_interactions,
            self.user_exponent,
            self.user_cap,
            self.min_user_interactions,
        )
        return counts[self._rngs[1].permutation(self.num_users)]

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) user rows, grouped by user, and (n,) item rows: unique pairs with the planted
        counts."""
        rng = self._rngs[2]
        n = self.num_interactions
        users = np.repeat(np.arange(self.num_users, dtype=np.int32), self.planted_user_counts)
        items = np.repeat(np.arange(self.num_items, dtype=np.int32), self.planted_item_counts)
        rng.shuffle(items)
        check = None  # rows whose pairs may repeat another's: all at first
        for _ in range(MAX_ROUNDS):
            rows = np.arange(n) if check is None else check
            keys = users[rows].astype(np.int64) * self.num_items + items[rows]
            repeated = rows[~pl.Series(keys).is_first_distinct().to_numpy()]
            if not len(repeated):
                return users, items
            # Re-deal the repeated rows' items among them and as many random rows: a permutation
            # of items over rows keeps every item's and user's count.
            dealt = np.union1d(repeated, rng.integers(0, n, len(repeated)))
            items[dealt] = items[dealt][rng.permutation(len(dealt))]
            touched = np.zeros(self.num_users, dtype=bool)
            touched[users[dealt]] = True
            check = np.flatnonzero(touched[users])  # only those users' pairs can repeat now
        raise SyntheticLogError(
            "num_interactions",
            self.num_interactions,
            f"{len(repeated)} pairs still repeat after {MAX_ROUNDS} rounds: the counts leave "
            "too few unique pairs (lower the exponents or raise the shares)",
        )

    @cached_property
    def _log(self) -> pl.DataFrame:
        users, items = self._pairs()
        rng = self._rngs[3]
        span = self.days * DAY
        ends = np.sort(rng.integers(0, span, (self.num_users, 2)), axis=1)  # (U, 2) windows
        start, length = ends[users, 0], ends[users, 1] - ends[users, 0] + 1  # (n,) each
        times = START + start + (rng.random(len(users)) * length).astype(np.int64)  # (n,)
        return pl.DataFrame(
            {
                schema.USER_ID: users.astype(np.int64) + USER_ID_OFFSET,
                schema.ITEM_ID: items.astype(np.int64) + ITEM_ID_OFFSET,
                schema.TIMESTAMP: times,
            }
        ).sort(schema.TIMESTAMP, maintain_order=True)

    def interactions(self) -> pl.LazyFrame:
        return self._log.lazy()

    def items(self) -> pl.DataFrame | None:
        """item_id, category (c0, c1, ...; Zipf-skewed), price (log-normal)."""
        if not self.item_features:
            return None
        rng = self._rngs[4]
        categories = _skewed_codes(rng, self.num_items, self.num_categories)
        return pl.DataFrame(
            {
                schema.ITEM_ID: np.arange(self.num_items, dtype=np.int64) + ITEM_ID_OFFSET,
                CATEGORY: categories,
                PRICE: np.round(rng.lognormal(3.0, 1.0, self.num_items), 2),
            }
        ).with_columns(pl.format("c{}", pl.col(CATEGORY)).alias(CATEGORY))

    def users(self) -> pl.DataFrame | None:
        """user_id, region (r0, r1, ...; Zipf-skewed)."""
        if not self.user_features:
            return None
        rng = self._rngs[5]
        regions = _skewed_codes(rng, self.num_users, self.num_regions)
        return pl.DataFrame(
            {
                schema.USER_ID: np.arange(self.num_users, dtype=np.int64) + USER_ID_OFFSET,
                REGION: regions,
            }
        ).with_columns(pl.format("r{}", pl.col(REGION)).alias(REGION))

    def table_path(self, side: str) -> str:
        return table_label(self.name, side)

    def write_parquet(self, folder: str | Path) -> dict[str, Path]:
        """The log and its tables as Parquet files in `folder` (FILES names them): what the
        `Interactions` source reads. Returns {"interactions" / "item" / "user": path}."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = {"interactions": folder / FILES["interactions"]}
        self._log.write_parquet(written["interactions"])
        for side, table in (("item", self.items()), ("user", self.users())):
            if table is not None:
                written[side] = folder / FILES[side]
                table.write_parquet(written[side])
        return written

    def write_movielens(self, folder: str | Path) -> Path:
        """The log in MovieLens' CSV layout, as ml-25m ships it: ratings.csv (userId, movieId,
        rating 5.0: every interaction a positive, timestamp) and movies.csv (movieId, title
        "Item <id> (<year>)", genres: the category). `MovieLens(root=folder)` reads it (the
        `data=movielens data.source.root=...` path). Returns `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._log.select(
            pl.col(schema.USER_ID).alias("userId"),
            pl.col(schema.ITEM_ID).alias("movieId"),
            pl.lit(5.0).alias("rating"),
            schema.TIMESTAMP,
        ).write_csv(folder / "ratings.csv")
        items = self.items() if self.item_features else None
        ids = pl.int_range(self.num_items, dtype=pl.Int64, eager=True) + ITEM_ID_OFFSET
        year = 1950 + (ids % 74)
        pl.DataFrame({"movieId": ids}).with_columns(
            pl.format("Item {} ({})", ids, year).alias("title"),
            (items[CATEGORY] if items is not None else pl.lit("(no genres listed)")).alias(
                "genres"
            ),
        ).write_csv(folder / "movies.csv")
        return folder


def _skewed_codes(rng: np.random.Generator, num: int, num_codes: int) -> np.ndarray:
    """(num,) codes in [0, num_codes), code k drawn with weight 1 / (k + 1)."""
    weights = 1.0 / np.arange(1, num_codes + 1)
    return rng.choice(num_codes, size=num, p=weights / weights.sum())


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: interactions / 25")
    parser.add_argument("--items", type=int, default=None, help="default: interactions / 125")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    parser.add_argument(
        "--layout", choices=["parquet", "movielens"], default="parquet",
        help="parquet: interactions / items / users .parquet; movielens: ratings.csv, movies.csv",
    )  # fmt: skip
    args = parser.parse_args(argv)
    log = SyntheticLog(
        num_interactions=args.interactions,
        num_users=args.users or max(args.interactions // 25, 1),
        num_items=args.items or max(args.interactions // 125, 1),
        seed=args.seed,
    )
    started = time.perf_counter()
    if args.layout == "movielens":
        log.write_movielens(args.out)
        print(f"{log.num_interactions:,} interactions in {time.perf_counter() - started:.1f} s:")
        print(f"python train.py data=movielens data.source.root={args.out}")
        return {"ratings": args.out / "ratings.csv", "movies": args.out / "movies.csv"}
    written = log.write_parquet(args.out)
    print(f"{log.num_interactions:,} interactions, {log.num_users:,} users, {log.num_items:,} "
          f"items in {time.perf_counter() - started:.1f} s:")  # fmt: skip
    for path in written.values():
        print(f"  {path}")
    sides = " ".join(f"data.source.{side}s={written[side]}" for side in ("user", "item") if side in written)  # fmt: skip
    print(
        f"python train.py data=interactions data.source.path={written['interactions']} "
        f"{sides} features=synthetic_log"
    )
    return written


if __name__ == "__main__":
    main()
