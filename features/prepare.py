"""From a source to arrays: split, give users and items their rows, fit the declared features
on the training rows and transform every row into the towers' inputs. This is the last place
polars frames are used.

Leakage rules: the id vocabularies, every fitted feature (vocabularies, statistics), user
histories and item popularity come from training interactions and the rows they touch only.
Validation and test interactions whose item is not in the catalogue stay in the denominators
(they count as misses), so metrics are never flattered by dropping what the model cannot know.
Cold items (held out entirely, or known only from the item table) are in the catalogue, ranked
by their content; the cold slices are measured apart (`PreparedData.cold`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from features import schema
from features.arrays import csr_by_user, index_dtype, padded_rows
from features.fitted import FittedFeatures, history_codes, item_codes_of
from features.fitting import FittedSide, TextEncoderFactory
from features.sources.base import Source
from features.spec import FeaturesConfig, SideFeatures
from features.split import COLD
from features.vocab import INDEX, RAW_ID, Vocabulary

log = logging.getLogger(__name__)

USER = "user"  # encoded (index) columns
ITEM = "item"
SPLIT_NAMES = schema.SPLIT_NAMES
TRAIN, VAL, TEST = SPLIT_NAMES
COLD_SLICES = ("items", "users")  # PreparedData.cold's slices (features.split's cold shares)


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
    """Everything the towers, the trainer and the exporter need, as numpy arrays.

    Rows: the users table and the catalogue are index-ordered, those seen in training first
    (sorted by id: the id features' vocabularies), then those known only from a side table or
    held out cold (sorted by id). A row past `num_train_users` / `num_train_items` has no training
    interaction."""

    name: str
    user_vocab: Vocabulary  # raw user id <-> row of the users table
    item_vocab: Vocabulary  # raw item id <-> row of the catalogue
    num_train_users: int  # rows 0..num_train_users-1 have training interactions
    num_train_items: int
    train: np.ndarray  # (n, 2) [user, item] rows, each user's in time order
    before_test: np.ndarray  # (n', 2) train + val pairs: everything before the test period
    val: HeldOut
    test: HeldOut  # warm: users and items seen in training
    cold: dict[str, HeldOut]  # held-out cold slices ("items", "users"), each in time order
    item_counts: np.ndarray  # (I,) training interactions per item (popularity, logQ)
    features: FittedFeatures  # both sides' fitted features (what the bundle carries)
    user_inputs: dict[str, np.ndarray]  # the user tower's table inputs, (U, ...) each
    item_inputs: dict[str, np.ndarray]  # the item tower's inputs, (I, ...) each
    history_length: int  # 0 without a history feature
    train_histories: np.ndarray  # (U, N) last N train item rows per user, padded with num_items
    before_test_histories: np.ndarray  # (U, N) last N train + val items: serving's at test time
    items_df: pl.DataFrame  # index-ordered item table: item_id and the source's columns
    users_df: pl.DataFrame  # index-ordered user table: user_id and the source's columns

    @property
    def num_users(self) -> int:
        return len(self.user_vocab)

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)

    def with_validation_merged(self) -> PreparedData:
        """The refit view: validation becomes training data (pairs, histories, popularity) and
        there is no validation split. Vocabularies, fitted features and the test split are
        unchanged, so a model refit on it is exported and evaluated exactly like the one selected
        on validation."""
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

    def history_codes(self, history_rows: np.ndarray) -> np.ndarray:
        """Item rows (U, N) padded with num_items → the item id codes the history input reads
        (-1: padding, or an item without an id row)."""
        return history_codes(history_rows, item_codes_of(self.item_inputs, self.features.item))

    def tower_spec(self) -> dict:
        """The keyword arguments of `towers.FeatureSpec` for this data."""
        return {
            "user_inputs": self.features.user_inputs(),
            "item_inputs": self.features.item.inputs(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "user_combine": self.features.user.combine,
            "item_combine": self.features.item.combine,
        }


def histories(pairs: np.ndarray, num_users: int, length: int, pad: int) -> np.ndarray:
    """(U, length): each user's last `length` items in `pairs` (time-ordered within each user),
    oldest first, padded with `pad` (int32 when `pad` fits)."""
    indptr, items = csr_by_user(pairs, num_users)
    rows = np.arange(num_users)
    return padded_rows(indptr, items, rows, pad, length, keep_last=True, dtype=index_dtype(pad))


@dataclass
class _Rows:
    """The interactions that enter some part, as rows of the users table and the catalogue:
    grouped by user and in time order within each user (ties in the source's order)."""

    user: np.ndarray  # (n,) user rows
    item: np.ndarray  # (n,) item rows, -1 where the catalogue lacks the item
    part: np.ndarray  # (n,) int8: the index in PARTS of the part each row is in

    def of(self, part: str) -> np.ndarray:
        """(n,) bool: the rows in `part`."""
        return self.part == PARTS.index(part)


PARTS = (TRAIN, VAL, TEST, *COLD_SLICES)  # _Rows.part's codes


def _held_out(rows: _Rows, part: str) -> HeldOut:
    at = rows.of(part)
    users, items = rows.user[at], rows.item[at]  # grouped by user
    firsts = np.flatnonzero(np.diff(users, prepend=-1))  # (U,) each user's first row
    indptr = np.append(firsts, len(users)).astype(np.int64)
    return HeldOut(users[firsts], indptr, items)


def _pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.stack([users, items], axis=1)  # (n, 2)


def prepare(
    source: Source,
    split: Callable[[pl.LazyFrame], pl.LazyFrame],
    features: FeaturesConfig,
    text_encoder: TextEncoderFactory | None = None,
) -> PreparedData:
    """Run the whole `features/` pipeline for one source: the steps below, in order.
    `text_encoder`: model name → sentence encoder (default: features.text_encoder.encoder_for)."""
    interactions_lf = _interactions(source)
    timed = schema.TIMESTAMP in interactions_lf.collect_schema().names()
    split_df = _checked_split(split(interactions_lf).collect(), source.name)
    del interactions_lf  # the source's frame, when it holds one in memory
    tables = {"user": source.users(), "item": source.items()}
    listed = {side: tables[side] if _reads_table(features.side(side)) else None for side in tables}
    user_vocab, item_vocab, num_train = _vocabularies(split_df, listed)
    rows = _encoded(split_df, user_vocab, item_vocab, timed, num_train["user"])
    cold_slices = COLD_SLICES if COLD in split_df.columns else ()
    del split_df  # from here on: int arrays only
    _log_unknown_items(rows, source.name)
    train = _pairs(rows.user[rows.of(TRAIN)], rows.item[rows.of(TRAIN)])
    before_test = _before_test(rows)
    side_dfs = {
        "user": _side_table(tables["user"], user_vocab, schema.USER_ID, source, "user"),
        "item": _side_table(tables["item"], item_vocab, schema.ITEM_ID, source, "item"),
    }
    counts = {
        "user": np.bincount(train[:, 0], minlength=len(user_vocab)),
        "item": np.bincount(train[:, 1], minlength=len(item_vocab)),
    }
    fitted = fit_features(features, side_dfs, counts, num_train, source, text_encoder)
    length = fitted.history_length
    num_users, num_items = len(user_vocab), len(item_vocab)
    return PreparedData(
        name=source.name,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        num_train_users=num_train["user"],
        num_train_items=num_train["item"],
        train=train,
        before_test=before_test,
        val=_held_out(rows, VAL),
        test=_held_out(rows, TEST),
        cold={name: _held_out(rows, name) for name in cold_slices},
        item_counts=counts["item"].astype(np.int64),
        features=fitted,
        user_inputs=fitted.user.transform(side_dfs["user"]),
        item_inputs=fitted.item.transform(side_dfs["item"]),
        history_length=length,
        train_histories=histories(train, num_users, length, pad=num_items),
        before_test_histories=histories(before_test, num_users, length, pad=num_items),
        items_df=side_dfs["item"],
        users_df=side_dfs["user"],
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
    if not (split_df[schema.SPLIT] == TRAIN).any():
        raise ValueError(f"{name}: the split left no training interactions")
    return split_df


def _vocabularies(
    split_df: pl.DataFrame, tables: dict[str, pl.DataFrame | None]
) -> tuple[Vocabulary, Vocabulary, dict[str, int]]:
    """(users, items) vocabularies and how many rows of each have training interactions.

    Rows: the ids in the training interactions, sorted, then the others a side table lists (when
    its tower reads the table: `tables` holds only those) or (users) the cold split holds out,
    sorted: rows exist for them, but the id features (fitted on
    training rows) have none, so their vectors come from their other features."""
    cold_users = (
        split_df.filter(pl.col(COLD).is_in(["user", "both"]))[schema.USER_ID]
        if COLD in split_df.columns
        else None
    )
    vocabularies, num_train = [], {}
    for side, key, extra in (
        ("user", schema.USER_ID, cold_users),
        ("item", schema.ITEM_ID, None),
    ):
        trained = (
            split_df.lazy()
            .filter(pl.col(schema.SPLIT) == TRAIN)
            .select(pl.col(key).unique().sort())
            .collect()
            .to_series()
        )
        others = [
            ids.cast(trained.dtype, strict=False)
            for ids in (extra, _table_ids(tables[side], key))
            if ids is not None
        ]
        rest = pl.concat([trained.clear(), *others]).drop_nulls().unique().sort()
        rest = rest.filter(~rest.is_in(trained.implode()))
        vocabularies.append(Vocabulary.from_ids(pl.concat([trained, rest]).alias(key)))
        num_train[side] = trained.len()
    return vocabularies[0], vocabularies[1], num_train


def _reads_table(side: SideFeatures) -> bool:
    """Whether a tower reads any column of its side's table besides the id: only then can a row
    the table lists without interactions be encoded (an item the catalogue can rank)."""
    return any(f.kind not in ("id", "history") for f in side.features)


def _table_ids(table: pl.DataFrame | None, key: str) -> pl.Series | None:
    return None if table is None or key not in table.columns else table[key]


def _encoded(
    split_df: pl.DataFrame,
    user_vocab: Vocabulary,
    item_vocab: Vocabulary,
    timed: bool,
    num_train_users: int,
) -> _Rows:
    """The interactions of every part as rows of the users table and the catalogue, grouped by
    user and in time order within each user. Parts: train, val and the warm test (users seen in
    training; others cannot be ranked and are dropped), and the cold slices ("items": warm users'
    interactions with cold items; "users": cold users' interactions with items that are not
    cold). Only int columns are sorted: the raw ids are joined away first."""
    cold = pl.col(COLD) if COLD in split_df.columns else pl.lit(None, pl.String)
    known_user = pl.col(USER) < num_train_users
    warm = cold.is_null() & known_user
    conditions = [warm & (pl.col(schema.SPLIT) == name) for name in SPLIT_NAMES]
    conditions += [(cold == "item") & known_user, cold == "user"]  # PARTS' order
    part = pl.when(conditions[0]).then(0)
    for code, condition in enumerate(conditions[1:], start=1):
        part = part.when(condition).then(code)
    user_type = pl.Int32 if index_dtype(len(user_vocab)) == np.int32 else pl.Int64
    item_type = pl.Int32 if index_dtype(len(item_vocab)) == np.int32 else pl.Int64
    # One int64 key sorts like [user, timestamp] (a sort on two columns is 3x slower): the
    # user's row times the number of distinct times, plus the time's dense rank (null first).
    order = pl.col(USER).cast(pl.Int64)
    if timed:
        time_rank = pl.col(schema.TIMESTAMP).rank("dense").fill_null(0).cast(pl.Int64)
        order = order * (time_rank.max() + 1) + time_rank
    rows_df = (
        item_vocab.encode(
            user_vocab.encode(split_df.lazy(), schema.USER_ID, USER), schema.ITEM_ID, ITEM
        )
        .filter(pl.col(USER).is_not_null())
        .select(
            pl.col(USER).cast(user_type),
            pl.col(ITEM).fill_null(-1).cast(item_type),
            part.otherwise(-1).cast(pl.Int8).alias("part"),
            order.alias("order"),
        )
        .filter(pl.col("part") >= 0)
        .sort("order", maintain_order=True)
        .select(USER, ITEM, "part")
        .collect()
    )
    return _Rows(*(rows_df[c].to_numpy() for c in (USER, ITEM, "part")))


def _log_unknown_items(rows: _Rows, name: str) -> None:
    for split_name in (VAL, TEST):
        unknown = int((rows.of(split_name) & (rows.item < 0)).sum())
        if unknown:
            log.info(
                "%s: %d %s interactions have items absent from train (kept as misses)",
                name,
                unknown,
                split_name,
            )


def _before_test(rows: _Rows) -> np.ndarray:
    """(n', 2) train + the validation interactions whose item is known: everything before the test
    period that a model can use, grouped by user (each user's training rows, then their
    validation ones)."""
    val = rows.of(VAL) & (rows.item >= 0)
    kept = rows.of(TRAIN) | val
    users, items, later = rows.user[kept], rows.item[kept], val[kept]
    order = np.argsort(users.astype(np.int64) * 2 + later, kind="stable")  # nearly sorted: fast
    return _pairs(users[order], items[order])


def _side_table(
    table: pl.DataFrame | None, vocab: Vocabulary, key: str, source: Source, side: str
) -> pl.DataFrame:
    """Index-ordered side table: one row per vocabulary row (the key, then the source table's
    columns; nulls for rows the table lacks)."""
    rows_df = vocab.frame.rename({RAW_ID: key})
    if table is None:
        return rows_df.drop(INDEX)
    if key not in table.columns:
        raise schema.SchemaError(f"{_table_path(source, side)}: no {key!r} column")
    table = table.with_columns(pl.col(key).cast(vocab.dtype, strict=False))
    return rows_df.join(table, on=key, how="left", maintain_order="left").sort(INDEX).drop(INDEX)


def _table_path(source: Source, side: str) -> str:
    table_path = getattr(source, "table_path", None)
    return table_path(side) if table_path is not None else f"{source.name} {side}s"


def fit_features(
    features: FeaturesConfig,
    side_dfs: dict[str, pl.DataFrame],
    counts: dict[str, np.ndarray],
    num_train: dict[str, int],
    source: Source,
    text_encoder: TextEncoderFactory | None,
) -> FittedFeatures:
    """Both sides' features fitted on their training rows (those with training interactions)."""
    fitted = {
        side: FittedSide.fit(
            features.side(side),
            side_dfs[side].head(num_train[side]),
            counts[side][: num_train[side]],
            _table_path(source, side),
            text_encoder=text_encoder,
        )
        for side in ("user", "item")
    }
    result = FittedFeatures(fitted["user"], fitted["item"])
    result.check_history()
    return result
