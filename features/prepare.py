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
from features.arrays import csr_by_user, padded_rows
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
    features: FeaturesConfig,
    text_encoder: TextEncoderFactory | None = None,
) -> PreparedData:
    """Run the whole `features/` pipeline for one source: the steps below, in order.
    `text_encoder`: model name → sentence encoder (default: features.text_encoder.encoder_for)."""
    interactions_lf = _interactions(source)
    timed = schema.TIMESTAMP in interactions_lf.collect_schema().names()
    split_df = _checked_split(split(interactions_lf).collect(), source.name)
    tables = {"user": source.users(), "item": source.items()}
    listed = {side: tables[side] if _reads_table(features.side(side)) else None for side in tables}
    user_vocab, item_vocab, num_train = _vocabularies(split_df, listed)
    by_split = _encoded_splits(split_df, user_vocab, item_vocab, timed, num_train["user"])
    _log_unknown_items(by_split, source.name)
    train, before_test = _pairs(by_split[TRAIN]), _pairs(_before_test(by_split))
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
        val=_held_out(by_split[VAL]),
        test=_held_out(by_split[TEST]),
        cold={name: _held_out(df) for name, df in by_split.items() if name in COLD_SLICES},
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
    if not split_df.filter(pl.col(schema.SPLIT) == TRAIN).height:
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
    train_raw = split_df.filter(pl.col(schema.SPLIT) == TRAIN)
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
        trained = train_raw[key].unique().sort()
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


def _encoded_splits(
    split_df: pl.DataFrame,
    user_vocab: Vocabulary,
    item_vocab: Vocabulary,
    timed: bool,
    num_train_users: int,
) -> dict[str, pl.DataFrame]:
    """Each split's interactions with `user` and `item` rows (item null when the catalogue lacks
    it), grouped by user and in time order within each user: train, val and the warm test (users
    seen in training; others cannot be ranked and are dropped), and the cold slices ("items":
    warm users' interactions with cold items; "users": cold users' interactions with items that
    are not cold)."""
    encoded = (
        item_vocab.encode(
            user_vocab.encode(split_df.lazy(), schema.USER_ID, USER), schema.ITEM_ID, ITEM
        )
        .filter(pl.col(USER).is_not_null())
        .collect()
        .sort([USER, schema.TIMESTAMP] if timed else USER, maintain_order=True)
    )
    cold = pl.col(COLD) if COLD in encoded.columns else pl.lit(None, pl.String)
    warm = cold.is_null() & (pl.col(USER) < num_train_users)
    parts = {name: encoded.filter(warm & (pl.col(schema.SPLIT) == name)) for name in SPLIT_NAMES}
    if COLD in encoded.columns:
        parts["items"] = encoded.filter((cold == "item") & (pl.col(USER) < num_train_users))
        parts["users"] = encoded.filter(cold == "user")
    return parts


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
