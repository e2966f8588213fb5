"""From a source to arrays: encode ids (vocabulary fitted on train only), split, and build the
side features every tower input needs. This is the last place polars frames are used.

Leakage rules: the vocabularies, user histories, item popularity and genre vocabulary come from
training interactions only. Validation and test interactions whose item is not in the training
vocabulary stay in the denominators (they count as misses), so metrics are never flattered by
dropping what the model cannot know.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from features import schema
from features.sources.base import Source
from features.vocab import Vocabulary

log = logging.getLogger(__name__)

USER = "user"  # encoded (index) columns
ITEM = "item"


@dataclass
class HeldOut:
    """Held-out interactions of one split, grouped by user (CSR over the users that have any)."""

    users: np.ndarray  # (U,) user indices that have held-out interactions
    indptr: np.ndarray  # (U + 1,)
    items: np.ndarray  # (nnz,) item indices; -1 where the item is unknown to the vocabulary

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls) -> HeldOut:
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))


@dataclass
class PreparedData:
    """Everything the towers, the trainer and the exporter need, as numpy arrays."""

    name: str
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    train: np.ndarray  # (n, 2) [user, item] index pairs, each user's in time order
    before_test: np.ndarray  # (n', 2) train + val pairs: everything before the test period
    val: HeldOut
    test: HeldOut
    item_counts: np.ndarray  # (I,) training interactions per item (popularity, logQ)
    item_genres: np.ndarray  # (I, G) genre indices padded with num_genres
    item_year: np.ndarray  # (I,) year bucket, 0 = unknown
    genre_names: list[str]
    history_length: int
    num_year_buckets: int
    train_histories: np.ndarray  # (U, N) last N train items per user, padded with num_items
    before_test_histories: np.ndarray  # (U, N) last N train + val items: serving's at test time
    items_df: pl.DataFrame  # index-ordered item metadata: item_id, title, genres, year

    @property
    def num_users(self) -> int:
        return len(self.user_vocab)

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)

    @property
    def num_genres(self) -> int:
        return len(self.genre_names)

    def with_validation_merged(self) -> PreparedData:
        """The refit view: validation becomes training data (pairs, histories, popularity) and
        there is no validation split. Vocabularies and the test split are unchanged, so a model
        refit on it is exported and evaluated exactly like the one selected on validation."""
        return replace(
            self,
            train=self.before_test,
            val=HeldOut.empty(),
            item_counts=self.item_counts_before_test(),
            train_histories=self.before_test_histories,
        )

    def item_counts_before_test(self) -> np.ndarray:
        """(I,) train + val interactions per item: the popularity a model served at test knows."""
        return np.bincount(self.before_test[:, 1], minlength=self.num_items).astype(np.int64)

    def feature_sizes(self) -> dict[str, int]:
        """Sizes the towers are built with (see `towers.FeatureSpec`)."""
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_genres": self.num_genres,
            "num_year_buckets": self.num_year_buckets,
            "history_length": self.history_length,
        }


def year_bucket(year: pl.Expr, start: int, width: int, num_buckets: int) -> pl.Expr:
    """Year → bucket 1..num_buckets-1 of `width` years from `start` (clipped); 0 when unknown."""
    bucket = ((year - start) // width).clip(0, num_buckets - 2) + 1
    return pl.when(year.is_null()).then(0).otherwise(bucket).cast(pl.Int64)


def histories(pairs: np.ndarray, num_users: int, length: int, pad: int) -> np.ndarray:
    """(U, length): each user's last `length` items in `pairs` (user-grouped, time-ordered)."""
    out = np.full((num_users, length), pad, dtype=np.int64)
    if len(pairs) == 0 or length == 0:
        return out
    users = pairs[:, 0]
    order = np.argsort(users, kind="stable")
    users, items = users[order], pairs[order, 1]
    starts = np.searchsorted(users, np.arange(num_users), side="left")
    ends = np.searchsorted(users, np.arange(num_users), side="right")
    # Position of each pair counted from its user's end: keep the last `length`.
    from_end = ends[users] - 1 - np.arange(len(users))
    keep = from_end < length
    slot = np.minimum(ends[users] - starts[users], length) - 1 - from_end
    out[users[keep], slot[keep]] = items[keep]
    return out


def _held_out(df: pl.DataFrame) -> HeldOut:
    df = df.sort(USER, maintain_order=True)
    users, counts = np.unique(df[USER].to_numpy(), return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return HeldOut(
        users.astype(np.int64), indptr, df[ITEM].fill_null(-1).to_numpy().astype(np.int64)
    )


def _pairs(df: pl.DataFrame) -> np.ndarray:
    return np.stack([df[USER].to_numpy(), df[ITEM].to_numpy()], axis=1).astype(np.int64)


def prepare(
    source: Source,
    split: Callable[[pl.LazyFrame], pl.LazyFrame],
    history_length: int = 50,
    year_start: int = 1900,
    year_width: int = 5,
    num_year_buckets: int = 28,
) -> PreparedData:
    """Run the whole `features/` pipeline for one source."""
    interactions_lf = schema.validate(
        source.interactions(), schema.INTERACTIONS, source.name, schema.INTERACTIONS_OPTIONAL
    )
    # One interaction per (user, item): the earliest one when the data has time.
    columns = interactions_lf.collect_schema().names()
    if schema.TIMESTAMP in columns:
        interactions_lf = interactions_lf.sort(schema.TIMESTAMP, maintain_order=True)
    interactions_lf = interactions_lf.unique(
        [schema.USER_ID, schema.ITEM_ID], keep="first", maintain_order=True
    )
    split_df = split(interactions_lf).collect()
    bad = split_df.filter(~pl.col(schema.SPLIT).is_in(schema.SPLIT_NAMES))
    if bad.height:
        raise schema.SchemaError(
            f"{source.name}: column 'split' has value {bad[schema.SPLIT][0]!r}; expected one of {schema.SPLIT_NAMES}"
        )
    train_raw = split_df.filter(pl.col(schema.SPLIT) == "train")
    if train_raw.height == 0:
        raise ValueError(f"{source.name}: the split left no training interactions")

    user_vocab = Vocabulary.fit(train_raw[schema.USER_ID])
    item_vocab = Vocabulary.fit(train_raw[schema.ITEM_ID])
    encoded = (
        item_vocab.encode(
            user_vocab.encode(split_df.lazy(), schema.USER_ID, USER), schema.ITEM_ID, ITEM
        )
        .filter(pl.col(USER).is_not_null())  # users never seen in training cannot be ranked
        .collect()
    )
    if schema.TIMESTAMP in columns:
        encoded = encoded.sort([USER, schema.TIMESTAMP], maintain_order=True)
    else:
        encoded = encoded.sort(USER, maintain_order=True)
    by_split = {name: encoded.filter(pl.col(schema.SPLIT) == name) for name in schema.SPLIT_NAMES}
    train = _pairs(by_split["train"])
    val_in_vocab = by_split["val"].filter(pl.col(ITEM).is_not_null())
    before_test = _pairs(
        pl.concat([by_split["train"], val_in_vocab]).sort(USER, maintain_order=True)
    )
    num_users, num_items = len(user_vocab), len(item_vocab)
    for name in ("val", "test"):
        unknown = by_split[name][ITEM].null_count()
        if unknown:
            log.info(
                "%s: %d %s interactions have items absent from train (kept as misses)",
                source.name,
                unknown,
                name,
            )

    items_df = _item_table(source, item_vocab)
    genre_names = sorted(set(items_df[schema.GENRES].explode().drop_nulls().to_list()))
    item_genres = _genre_matrix(items_df, genre_names)
    item_year = (
        items_df.select(year_bucket(pl.col(schema.YEAR), year_start, year_width, num_year_buckets))
        .to_series()
        .to_numpy()
    )

    return PreparedData(
        name=source.name,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        train=train,
        before_test=before_test,
        val=_held_out(by_split["val"]),
        test=_held_out(by_split["test"]),
        item_counts=np.bincount(train[:, 1], minlength=num_items).astype(np.int64),
        item_genres=item_genres,
        item_year=item_year.astype(np.int64),
        genre_names=genre_names,
        history_length=history_length,
        num_year_buckets=num_year_buckets,
        train_histories=histories(train, num_users, history_length, pad=num_items),
        before_test_histories=histories(before_test, num_users, history_length, pad=num_items),
        items_df=items_df,
    )


def _item_table(source: Source, item_vocab: Vocabulary) -> pl.DataFrame:
    """Index-ordered metadata for every catalogue item; missing fields become nulls / []."""
    catalogue = item_vocab.frame.rename({"raw_id": schema.ITEM_ID}).lazy()
    items = source.items()
    if items is None:
        items = pl.DataFrame(schema={schema.ITEM_ID: item_vocab.dtype})
    items_lf = schema.validate(
        items.lazy(), schema.ITEMS, f"{source.name} items", schema.ITEMS_OPTIONAL
    )
    present = items_lf.collect_schema().names()
    fill = {
        schema.TITLE: pl.lit(None, pl.String),
        schema.GENRES: pl.lit([], pl.List(pl.String)),
        schema.YEAR: pl.lit(None, pl.Int32),
    }
    items_lf = items_lf.with_columns(
        [expr.alias(name) for name, expr in fill.items() if name not in present]
    ).unique(schema.ITEM_ID, keep="first", maintain_order=True)
    return (
        catalogue.join(items_lf, on=schema.ITEM_ID, how="left", maintain_order="left")
        .sort("index")
        .select(
            schema.ITEM_ID,
            pl.col(schema.TITLE).cast(pl.String),
            pl.col(schema.GENRES).fill_null(pl.lit([], pl.List(pl.String))),
            pl.col(schema.YEAR).cast(pl.Int32),
        )
        .collect()
    )


def _genre_matrix(items_df: pl.DataFrame, genre_names: list[str]) -> np.ndarray:
    """(I, G_max) genre indices per item, padded with len(genre_names); G_max >= 1."""
    pad = len(genre_names)
    lookup = {g: i for i, g in enumerate(genre_names)}
    genres = items_df[schema.GENRES].to_list()
    width = max([len(g) for g in genres] + [1])
    out = np.full((len(genres), width), pad, dtype=np.int64)
    for row, names in enumerate(genres):
        out[row, : len(names)] = [lookup[g] for g in names]
    return out
