"""Cold items and users through `prepare`: items known only from the item table, items and users
held out entirely by the split, and fitting that sees the training rows only. Each expectation is
computed here from the source's frames and the split's own frame."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features.prepare import HeldOut, PreparedData, prepare
from features.serving import CONTENT_ONLY, item_table
from features.spec import FeaturesConfig, SideFeatures
from features.split import COLD, TemporalSplit

WARM = TemporalSplit(val_ratio=0.15, test_ratio=0.15)
COLD_SPLIT = TemporalSplit(val_ratio=0.15, test_ratio=0.15, cold_items=0.25, cold_users=0.2, seed=3)
INTERACTING_ITEMS = range(100, 112)  # items 112 and 113 are in the item table only
TABLE_ONLY_ITEMS = [112, 113]
USERS = range(1, 11)  # user 11 is in the users table only
FEATURES = FeaturesConfig.parse(
    {
        "user": {
            "features": {
                "user_id": {"kind": "id"},
                "history": {"kind": "history", "length": 4},
                "country": {"kind": "categorical"},
                "age": {"kind": "numeric"},
            }
        },
        "item": {
            "features": {
                "item_id": {"kind": "id"},
                "shelf": {"kind": "categorical"},
                "price": {"kind": "numeric"},
            }
        },
    }
)


class Tables:
    """An in-memory source: interactions and the users and items tables."""

    name = "cold"

    def __init__(self, interactions_df, items_df, users_df):
        self.interactions_df, self.items_df, self.users_df = interactions_df, items_df, users_df

    def interactions(self) -> pl.LazyFrame:
        return self.interactions_df.lazy()

    def items(self) -> pl.DataFrame:
        return self.items_df

    def users(self) -> pl.DataFrame:
        return self.users_df

    def table_path(self, side: str) -> str:
        return f"{side}s.csv"


def _interactions() -> pl.DataFrame:
    """Each user with 7 distinct items, at shuffled times (so time order is not row order)."""
    rng = np.random.default_rng(0)
    pairs = [(u, int(i)) for u in USERS for i in rng.choice(INTERACTING_ITEMS, 7, replace=False)]
    times = rng.permutation(len(pairs))
    return pl.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "timestamp": times,
        }
    )


def _items(rare: dict[int, str] | None = None, price: dict[int, float] | None = None):
    """Shelves s0..s2 and prices by id; the table-only items on shelf "s9" at price 1000;
    `rare` and `price` override some items' shelf and price."""
    ids = [*INTERACTING_ITEMS, *TABLE_ONLY_ITEMS]
    shelves = [f"s{i % 3}" if i not in TABLE_ONLY_ITEMS else "s9" for i in ids]
    prices = [1.5 * (i - 99) if i not in TABLE_ONLY_ITEMS else 1000.0 for i in ids]
    for i, value in (rare or {}).items():
        shelves[ids.index(i)] = value
    for i, value in (price or {}).items():
        prices[ids.index(i)] = value
    return pl.DataFrame({"item_id": ids, "shelf": shelves, "price": prices})


def _users(age: dict[int, float] | None = None) -> pl.DataFrame:
    """Countries and ages by id (user 11 has no interaction); `age` overrides some ages."""
    ids = [*USERS, 11]
    ages = [20.0 + u if u not in (age or {}) else age[u] for u in ids]
    countries = [["fr", "de", "it"][u % 3] for u in ids]
    return pl.DataFrame({"user_id": ids, "country": countries, "age": ages})


def _split_frame(split: TemporalSplit) -> pl.DataFrame:
    """The split's frame, as prepare splits the interactions (in time order)."""
    return split(_interactions().sort("timestamp").lazy()).collect()


def _ids(split_df: pl.DataFrame, key: str, kinds: tuple[str, ...]) -> set:
    return set(split_df.filter(pl.col(COLD).is_in(kinds))[key].to_list())


def _raw(data: PreparedData, users: np.ndarray, items: np.ndarray) -> list[tuple]:
    """User and item rows (N,) as (raw user, raw item) pairs; None for an item without a row."""
    raw_items = data.item_vocab.raw_ids(np.maximum(items, 0)).tolist()
    raw_items = [i if row >= 0 else None for i, row in zip(raw_items, items, strict=True)]
    return list(zip(data.user_vocab.raw_ids(users).tolist(), raw_items, strict=True))


def _raw_pairs(data: PreparedData, held_out: HeldOut) -> list[tuple]:
    """A held-out slice as (raw user, raw item) pairs, in its order."""
    users = np.repeat(held_out.users, np.diff(held_out.indptr))  # (nnz,)
    return _raw(data, users, held_out.items)


def _categorical_codes(values: list, vocabulary: list) -> list[int]:
    """A categorical input with one OOV bucket: the vocabulary row, else the bucket, else (no
    value) the missing row."""
    bucket, missing = len(vocabulary), len(vocabulary) + 1
    codes = {v: row for row, v in enumerate(vocabulary)}
    return [missing if v is None else codes.get(v, bucket) for v in values]


def _z(values: np.ndarray, training: np.ndarray) -> np.ndarray:
    return (values - training.mean()) / training.std()


def _state(data: PreparedData, side: str, name: str) -> dict:
    return next(s for s in data.features.to_json()[side]["features"] if s["name"] == name)


# --- items known only from the item table ------------------------------------------------------


def test_items_only_in_the_item_table_follow_the_training_items_and_read_their_content():
    items_df = _items()
    data = prepare(Tables(_interactions(), items_df, _users()), WARM, FEATURES)
    split_df = _split_frame(WARM)
    trained = sorted(set(split_df.filter(pl.col("split") == "train")["item_id"].to_list()))
    rest = sorted(set(items_df["item_id"].to_list()) - set(trained))
    assert set(TABLE_ONLY_ITEMS) <= set(rest)
    assert data.item_vocab.frame["raw_id"].to_list() == trained + rest
    assert data.num_train_items == len(trained)
    catalogue = item_table(data)
    assert catalogue.filter(pl.col(CONTENT_ONLY))["item_id"].to_list() == rest
    # Their id reads no row; their shelf and price are the table's, transformed.
    rows = [data.item_vocab.index_of(i) for i in TABLE_ONLY_ITEMS]
    assert data.item_inputs["item_id"][rows].tolist() == [-1, -1]
    train_df = items_df.filter(pl.col("item_id").is_in(trained))
    shelves = sorted(set(train_df["shelf"].to_list()))
    assert data.item_inputs["shelf"][rows].tolist() == _categorical_codes(["s9", "s9"], shelves)
    z = _z(np.array([1000.0, 1000.0]), train_df["price"].to_numpy())
    np.testing.assert_allclose(data.item_inputs["price"][rows, 0], z, rtol=1e-6)
    np.testing.assert_array_equal(data.item_inputs["price"][rows, 1], [0, 0])


# --- items and users held out cold -------------------------------------------------------------


@pytest.fixture(scope="module")
def cold():
    """(data, split frame) with cold items and users held out."""
    source = Tables(_interactions(), _items(), _users())
    return prepare(source, COLD_SPLIT, FEATURES), _split_frame(COLD_SPLIT)


def test_the_cold_items_slice_is_the_warm_users_interactions_with_cold_items(cold):
    data, split_df = cold
    cold_items = _ids(split_df, "item_id", ("item", "both"))
    cold_users = _ids(split_df, "user_id", ("user", "both"))
    trained_users = set(split_df.filter(pl.col("split") == "train")["user_id"].to_list())
    expected = [
        (u, i)
        for u, i in split_df.select("user_id", "item_id").iter_rows()
        if i in cold_items and u not in cold_users and u in trained_users
    ]
    assert cold_items and expected
    got = _raw_pairs(data, data.cold["items"])
    assert sorted(got) == sorted(expected)
    # Each cold item has a catalogue row past the training items, without an id row.
    rows = np.array([data.item_vocab.index_of(i) for i in cold_items])
    assert (rows >= data.num_train_items).all()
    assert (data.item_inputs["item_id"][rows] == -1).all()


def test_no_cold_interaction_is_in_train_validation_or_test(cold):
    data, _ = cold
    cold_pairs = _raw_pairs(data, data.cold["items"]) + _raw_pairs(data, data.cold["users"])
    warm_pairs = _raw(data, data.train[:, 0], data.train[:, 1])
    warm_pairs += _raw_pairs(data, data.val) + _raw_pairs(data, data.test)
    assert cold_pairs and None not in {i for _, i in cold_pairs}  # every cold item has a row
    assert not set(cold_pairs) & set(warm_pairs)
    cold_users = {u for u, _ in _raw_pairs(data, data.cold["users"])}
    assert cold_users and not cold_users & {u for u, _ in warm_pairs}


def test_the_cold_users_slice_holds_their_interactions_in_time_order(cold):
    data, split_df = cold
    cold_items = _ids(split_df, "item_id", ("item", "both"))
    cold_users = _ids(split_df, "user_id", ("user", "both"))
    expected = {
        u: split_df.filter((pl.col("user_id") == u) & ~pl.col("item_id").is_in(list(cold_items)))
        .sort("timestamp")["item_id"]
        .to_list()
        for u in cold_users
    }
    expected = {u: items for u, items in expected.items() if items}
    got: dict = {}
    for u, i in _raw_pairs(data, data.cold["users"]):
        got.setdefault(u, []).append(i)
    assert expected and got == expected


def test_cold_users_have_rows_past_the_training_users_read_from_their_table(cold):
    data, split_df = cold
    cold_users = sorted(_ids(split_df, "user_id", ("user", "both")))
    trained = sorted(set(split_df.filter(pl.col("split") == "train")["user_id"].to_list()))
    assert data.user_vocab.frame["raw_id"].to_list() == trained + sorted({*cold_users, 11})
    assert data.num_train_users == len(trained)
    rows = [data.user_vocab.index_of(u) for u in cold_users]
    assert min(rows) >= data.num_train_users
    assert (data.user_inputs["user_id"][rows] == -1).all()
    users_df = _users()
    train_df = users_df.filter(pl.col("user_id").is_in(trained))
    cold_df = users_df.filter(pl.col("user_id").is_in(cold_users)).sort("user_id")
    countries = sorted(set(train_df["country"].to_list()))
    expected = _categorical_codes(cold_df["country"].to_list(), countries)
    assert data.user_inputs["country"][rows].tolist() == expected
    z = _z(cold_df["age"].to_numpy(), train_df["age"].to_numpy())
    np.testing.assert_allclose(data.user_inputs["age"][rows, 0], z, rtol=1e-6)


def test_cold_users_have_rows_without_a_users_table():
    ids_only = FeaturesConfig(SideFeatures("user", FEATURES.user.features[:2]), FEATURES.item)
    data = prepare(Tables(_interactions(), _items(), None), COLD_SPLIT, ids_only)
    split_df = _split_frame(COLD_SPLIT)
    cold_users = sorted(_ids(split_df, "user_id", ("user", "both")))
    trained = sorted(set(split_df.filter(pl.col("split") == "train")["user_id"].to_list()))
    assert data.user_vocab.frame["raw_id"].to_list() == trained + cold_users
    expected = split_df.filter(pl.col(COLD) == "user").select("user_id", "item_id").rows()
    assert expected and sorted(_raw_pairs(data, data.cold["users"])) == sorted(expected)


# --- fitting sees the training rows only -------------------------------------------------------


def test_fitting_sees_the_training_rows_only():
    split_df = _split_frame(COLD_SPLIT)
    cold_items = sorted(_ids(split_df, "item_id", ("item", "both")))
    cold_users = sorted(_ids(split_df, "user_id", ("user", "both")))
    # A shelf only a cold item has, and prices and ages that would move the statistics.
    items_df = _items(rare={cold_items[0]: "only-cold"}, price=dict.fromkeys(cold_items, 1e6))
    users_df = _users(age=dict.fromkeys([*cold_users, 11], 500.0))
    data = prepare(Tables(_interactions(), items_df, users_df), COLD_SPLIT, FEATURES)

    trained_items = split_df.filter(pl.col("split") == "train")["item_id"].unique()
    train_items_df = items_df.filter(pl.col("item_id").is_in(trained_items.implode()))
    shelves = sorted(set(train_items_df["shelf"].to_list()))
    assert "only-cold" not in shelves and _state(data, "item", "shelf")["vocabulary"] == shelves
    row = data.item_vocab.index_of(cold_items[0])
    assert data.item_inputs["shelf"][row] == len(shelves)  # the OOV bucket
    prices = train_items_df["price"].to_numpy()
    price = _state(data, "item", "price")
    assert price["mean"] == pytest.approx(prices.mean())
    assert price["std"] == pytest.approx(prices.std())

    trained_users = split_df.filter(pl.col("split") == "train")["user_id"].unique()
    ages = users_df.filter(pl.col("user_id").is_in(trained_users.implode()))["age"].to_numpy()
    age = _state(data, "user", "age")
    assert age["mean"] == pytest.approx(ages.mean())
    assert age["std"] == pytest.approx(ages.std())
    assert _state(data, "user", "user_id")["vocabulary"] == sorted(trained_users.to_list())


def test_rows_a_table_lists_join_only_a_tower_that_reads_the_table():
    """With ids (and history) alone a tower cannot encode a row that has no interaction: the
    item-table-only items stay out of the catalogue, and the users-table-only user out of the
    users table; every other row is as with the features."""
    ids_only = FeaturesConfig.parse(
        {
            "user": {"features": {"user_id": {"kind": "id"}, "history": {"kind": "history"}}},
            "item": {"features": {"item_id": {"kind": "id"}}},
        }
    )
    source = Tables(_interactions(), _items(), _users())
    plain = prepare(source, WARM, ids_only)
    assert set(plain.item_vocab.frame["raw_id"].to_list()) <= set(INTERACTING_ITEMS)
    assert 11 not in plain.user_vocab.frame["raw_id"].to_list()
    assert plain.num_items == plain.num_train_items
    with_features = prepare(source, WARM, FEATURES)
    assert set(TABLE_ONLY_ITEMS) <= set(with_features.item_vocab.frame["raw_id"].to_list())
    assert 11 in with_features.user_vocab.frame["raw_id"].to_list()
