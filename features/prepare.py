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
from features.arrays import csr_by_user, padded, padded_rows
from features.sources.base import Source
from features.vocab import INDEX, RAW_ID, Vocabulary

log = logging.getLogger(__name__)

USER = "user"  # encoded (index) columns
ITEM = "item"
TRAIN, VAL, TEST = schema.SPLIT_NAMES


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
    """(U, length): each user's last `length` items in `pairs` (time-ordered within each user),
    oldest first, padded with `pad`."""
    indptr, items = csr_by_user(pairs, num_users)
    return padded_rows(indptr, items, np.arange(num_users), pad, width=length, keep_last=True)


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
    """Run the whole `features/` pipeline for one source: the steps below, in order."""
    interactions_lf = _interactions(source)
    timed = schema.TIMESTAMP in interactions_lf.collect_schema().names()
    split_df = _checked_split(split(interactions_lf).collect(), source.name)
    user_vocab, item_vocab = _vocabularies(split_df)
    by_split = _encoded_splits(split_df, user_vocab, item_vocab, timed)
    _log_unknown_items(by_split, source.name)
    train, before_test = _pairs(by_split[TRAIN]), _pairs(_before_test(by_split))
    items_df = _item_table(source, item_vocab)
    genre_names = sorted(set(items_df[schema.GENRES].explode().drop_nulls().to_list()))
    num_users, num_items = len(user_vocab), len(item_vocab)
    return PreparedData(
        name=source.name,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        train=train,
        before_test=before_test,
        val=_held_out(by_split[VAL]),
        test=_held_out(by_split[TEST]),
        item_counts=np.bincount(train[:, 1], minlength=num_items).astype(np.int64),
        item_genres=_genre_matrix(items_df, genre_names),
        item_year=_item_years(items_df, year_start, year_width, num_year_buckets),
        genre_names=genre_names,
        history_length=history_length,
        num_year_buckets=num_year_buckets,
        train_histories=histories(train, num_users, history_length, pad=num_items),
        before_test_histories=histories(before_test, num_users, history_length, pad=num_items),
        items_df=items_df,
    )


def _interactions(source: Source) -> pl.LazyFrame:
    """The source's validated interactions, one per (user, item): the earliest one when the data
    has time."""
    interactions_lf = schema.validate(
        source.interactions(), schema.INTERACTIONS, source.name, schema.INTERACTIONS_OPTIONAL
    )
    if schema.TIMESTAMP in interactions_lf.collect_schema().names():
        interactions_lf = interactions_lf.sort(schema.TIMESTAMP, maintain_order=True)
    return interactions_lf.unique(
        [schema.USER_ID, schema.ITEM_ID], keep="first", maintain_order=True
    )


def _checked_split(split_df: pl.DataFrame, name: str) -> pl.DataFrame:
    """`split_df` after checking its split names and that it has training interactions."""
    bad = split_df.filter(~pl.col(schema.SPLIT).is_in(schema.SPLIT_NAMES))
    if bad.height:
        raise schema.SchemaError(
            f"{name}: column 'split' has value {bad[schema.SPLIT][0]!r}; "
            f"expected one of {schema.SPLIT_NAMES}"
        )
    if not split_df.filter(pl.col(schema.SPLIT) == TRAIN).height:
        raise ValueError(f"{name}: the split left no training interactions")
    return split_df


def _vocabularies(split_df: pl.DataFrame) -> tuple[Vocabulary, Vocabulary]:
    """(users, items) vocabularies fitted on the training interactions only."""
    train_raw = split_df.filter(pl.col(schema.SPLIT) == TRAIN)
    return Vocabulary.fit(train_raw[schema.USER_ID]), Vocabulary.fit(train_raw[schema.ITEM_ID])


def _encoded_splits(
    split_df: pl.DataFrame, user_vocab: Vocabulary, item_vocab: Vocabulary, timed: bool
) -> dict[str, pl.DataFrame]:
    """Each split's interactions with `user` and `item` indices (item null when unknown to the
    vocabulary), grouped by user and in time order within each user. Users never seen in
    training cannot be ranked: their interactions are dropped."""
    encoded = (
        item_vocab.encode(
            user_vocab.encode(split_df.lazy(), schema.USER_ID, USER), schema.ITEM_ID, ITEM
        )
        .filter(pl.col(USER).is_not_null())
        .collect()
        .sort([USER, schema.TIMESTAMP] if timed else USER, maintain_order=True)
    )
    return {name: encoded.filter(pl.col(schema.SPLIT) == name) for name in schema.SPLIT_NAMES}


def _log_unknown_items(by_split: dict[str, pl.DataFrame], name: str) -> None:
    for split_name in (VAL, TEST):
        unknown = by_split[split_name][ITEM].null_count()
        if unknown:
            log.info(
                "%s: %d %s interactions have items absent from train (kept as misses)",
                name,
                unknown,
                split_name,
            )


def _before_test(by_split: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Train + the validation interactions whose item is known: everything before the test
    period that a model can use, grouped by user."""
    val_in_vocab = by_split[VAL].filter(pl.col(ITEM).is_not_null())
    return pl.concat([by_split[TRAIN], val_in_vocab]).sort(USER, maintain_order=True)


def _item_years(
    items_df: pl.DataFrame, year_start: int, year_width: int, num_year_buckets: int
) -> np.ndarray:
    """(I,) year bucket per item (see `year_bucket`)."""
    years = items_df.select(
        year_bucket(pl.col(schema.YEAR), year_start, year_width, num_year_buckets)
    )
    return years.to_series().to_numpy().astype(np.int64)


def _item_table(source: Source, item_vocab: Vocabulary) -> pl.DataFrame:
    """Index-ordered metadata for every catalogue item; missing fields become nulls / []."""
    catalogue = item_vocab.frame.rename({RAW_ID: schema.ITEM_ID}).lazy()
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
        .sort(INDEX)
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
    lookup = {name: i for i, name in enumerate(genre_names)}
    genre_ids = items_df[schema.GENRES].list.eval(
        pl.element().replace_strict(lookup, return_dtype=pl.Int64)
    )
    return padded(genre_ids, pad=len(genre_names))
