"""Large logs: the synthetic log's planted skew (features.sources.synthetic_log), and `prepare`
on a generated log (read back from Parquet, as benchmarks/data_scale.py reads it) against a
brute-force computation of every array it hands on."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from features.datamodule import HeldOutBatches, TrainBatches, UserInputs
from features.prepare import prepare
from features.schema import DataFileError
from features.sources import Interactions
from features.sources.interactions import InteractionFile, read_interactions, scan_interactions
from features.sources.synthetic_log import (
    ITEM_ID_OFFSET,
    USER_ID_OFFSET,
    SyntheticLog,
    SyntheticLogError,
)
from features.spec import FeaturesConfig
from features.split import TemporalSplit

HISTORY = 4
FEATURES = FeaturesConfig.parse(
    {
        "user": {
            "features": {
                "user_id": {"kind": "id"},
                "history": {"kind": "history", "length": HISTORY},
                "region": {"kind": "categorical", "column": "region"},
            }
        },
        "item": {
            "features": {
                "item_id": {"kind": "id"},
                "category": {"kind": "categorical", "column": "category"},
                "price": {"kind": "numeric", "column": "price", "normalization": "log1p"},
            }
        },
    }
)


# -- the generator -------------------------------------------------------------------------------
# 100k interactions, 10k users, 1k items: the most popular item reaches 64% of the users, below
# the item cap (all of them), so every item's count is the Zipf law's; a user at most 300 items.
SKEWED = {"num_interactions": 100_000, "num_users": 10_000, "num_items": 1_000}


@pytest.fixture(scope="module")
def skewed() -> tuple[SyntheticLog, pl.DataFrame]:
    log = SyntheticLog(**SKEWED, max_item_share=1.0, max_user_share=0.3, seed=3)
    return log, log.interactions().collect()


def test_the_log_has_the_planted_counts_and_unique_pairs(skewed):
    log, df = skewed
    assert df.height == SKEWED["num_interactions"]
    assert df.select("user_id", "item_id").is_unique().all()
    items = np.bincount(df["item_id"].to_numpy() - ITEM_ID_OFFSET, minlength=log.num_items)
    users = np.bincount(df["user_id"].to_numpy() - USER_ID_OFFSET, minlength=log.num_users)
    np.testing.assert_array_equal(items, log.planted_item_counts)
    np.testing.assert_array_equal(users, log.planted_user_counts)


def test_the_top_percent_of_items_holds_the_zipf_share(skewed):
    """The 10 most popular of 1,000 items hold the share rank ** -0.8 gives them (counts are
    rounded: within one interaction each)."""
    _, df = skewed
    weights = np.arange(1, 1_001) ** -0.8
    planted = weights[:10].sum() / weights.sum()
    counts = np.sort(df.group_by("item_id").len()["len"].to_numpy())[::-1]
    assert planted > 0.17  # about 18 times their share of the catalogue
    assert abs(counts[:10].sum() / df.height - planted) <= 10 / df.height


def test_user_activity_is_heavy_tailed_and_bounded(skewed):
    log, df = skewed
    counts = df.group_by("user_id").len()["len"].to_numpy()
    top = np.sort(counts)[::-1][: len(counts) // 100]
    assert counts.min() >= log.min_user_interactions
    assert counts.max() <= log.user_cap  # 30% of the items
    assert top.sum() / counts.sum() > 0.1  # the top 1% of users: over 10 times their share
    assert counts.max() >= 40 * np.median(counts) and np.median(counts) < 0.75 * counts.mean()


def test_times_are_in_the_span_and_the_log_in_time_order(skewed):
    log, df = skewed
    times = df["timestamp"]
    assert times.is_sorted()
    assert times.min() >= 1_420_070_400 and times.max() < 1_420_070_400 + log.days * 86_400


def test_the_log_and_its_tables_are_deterministic_by_seed():
    a, b, c = (SyntheticLog(20_000, 800, 1_000, seed=s) for s in (1, 1, 2))
    assert_frame_equal(a.interactions().collect(), b.interactions().collect())
    assert_frame_equal(a.items(), b.items())
    assert_frame_equal(a.users(), b.users())
    assert not a.interactions().collect().equals(c.interactions().collect())
    assert a.items()["category"].str.starts_with("c").all()
    assert a.users()["region"].n_unique() > 10


def test_counts_that_cannot_be_met_are_refused():
    with pytest.raises(SyntheticLogError, match="num_interactions"):
        SyntheticLog(num_interactions=100, num_users=50)  # 5 each at least: 250
    with pytest.raises(SyntheticLogError, match="max_user_share"):
        SyntheticLog(max_user_share=0)


# -- prepare against brute force -----------------------------------------------------------------
IDS_ONLY = FeaturesConfig.parse(
    {
        "user": {"features": {"user_id": {"kind": "id"}, "history": {"kind": "history", "length": HISTORY}}},
        "item": {"features": {"item_id": {"kind": "id"}}},
    }
)  # fmt: skip


def _reference(df: pl.DataFrame, table_items: list[int]) -> dict:
    """Every array prepare hands on, computed row by row: a user's latest 10% (rounded up, from
    3 interactions on) is test, the 10% before it validation, the rest train; rows sorted by raw
    id, trained ones first, then the items table's others (the catalogue); -1 for an item
    without a row."""
    by_user: dict[int, list[tuple[int, int]]] = {}
    for user, item, time in df.select("user_id", "item_id", "timestamp").iter_rows():
        by_user.setdefault(user, []).append((time, item))
    parts: dict[int, dict[str, list[int]]] = {}
    for user, rows in by_user.items():
        items = [item for _, item in sorted(rows)]
        n = len(items)
        n_test = math.ceil(n * 0.1) if n >= 3 else 0
        n_val = max(min(math.ceil(n * 0.1) if n >= 3 else 0, n - n_test - 1), 0)
        cut = n - n_test - n_val
        parts[user] = {"train": items[:cut], "val": items[cut : cut + n_val],
                       "test": items[cut + n_val :]}  # fmt: skip
    users = sorted(u for u in parts if parts[u]["train"])
    trained = sorted({i for u in users for i in parts[u]["train"]})
    catalogue = trained + sorted(set(table_items) - set(trained))
    user_row = {u: r for r, u in enumerate(users)}
    item_row = {i: r for r, i in enumerate(catalogue)}

    def pairs(which: tuple[str, ...]) -> np.ndarray:
        rows = [(user_row[u], item_row[i]) for u in users for w in which for i in parts[u][w]
                if i in item_row]  # fmt: skip
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def held_out(which: str) -> tuple[list, list, list]:
        kept = [u for u in users if parts[u][which]]
        items = [item_row.get(i, -1) for u in kept for i in parts[u][which]]
        indptr = np.cumsum([0] + [len(parts[u][which]) for u in kept])
        return [user_row[u] for u in kept], indptr.tolist(), items

    def histories(rows: np.ndarray) -> np.ndarray:
        out = np.full((len(users), HISTORY), len(catalogue))
        for r in range(len(users)):
            last = rows[rows[:, 0] == r, 1][-HISTORY:]
            out[r, : len(last)] = last
        return out

    train, before_test = pairs(("train",)), pairs(("train", "val"))
    return {
        "num_users": len(users),
        "num_items": len(catalogue),
        "train": train,
        "before_test": before_test,
        "val": held_out("val"),
        "test": held_out("test"),
        "item_counts": np.bincount(train[:, 1], minlength=len(catalogue)),
        "train_histories": histories(train),
        "before_test_histories": histories(before_test),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    log = SyntheticLog(num_interactions=6_000, num_users=300, num_items=2_000, seed=7)
    df = log.interactions().collect()
    # Ties of a user's times would leave the order to the source's; this log has none.
    assert df.select("user_id", "timestamp").is_unique().all()
    return log, df, log.write_parquet(tmp_path_factory.mktemp("log"))


@pytest.mark.parametrize("tables", [True, False], ids=["with tables", "ids only"])
def test_prepare_on_a_written_log_matches_brute_force(written, tables):
    """With the tables read, every item has a catalogue row; with ids only, items first seen
    after training have none (-1: misses in the held-out, left out of before_test)."""
    log, df, paths = written
    tables_kw = {"users": str(paths["user"]), "items": str(paths["item"])} if tables else {}
    source = Interactions(str(paths["interactions"]), **tables_kw)
    data = prepare(source, TemporalSplit(), FEATURES if tables else IDS_ONLY)
    table_items = log.items()["item_id"].to_list() if tables else []
    expected = _reference(df, table_items)
    assert (data.num_users, data.num_items) == (expected["num_users"], expected["num_items"])
    for name in ("train", "before_test", "item_counts", "train_histories", "before_test_histories"):
        np.testing.assert_array_equal(getattr(data, name), expected[name], err_msg=name)
    for name in ("val", "test"):
        held = getattr(data, name)
        users, indptr, items = expected[name]
        np.testing.assert_array_equal(held.users, users, err_msg=name)
        np.testing.assert_array_equal(held.indptr, indptr, err_msg=name)
        np.testing.assert_array_equal(held.items, items, err_msg=name)
    assert data.val.num_interactions > 300
    assert (data.test.items == -1).any() != tables


def test_prepared_rows_are_int32_and_batches_int64(written):
    _, _, paths = written
    data = prepare(Interactions(str(paths["interactions"])), TemporalSplit(), IDS_ONLY)
    for array in (data.train, data.before_test, data.train_histories, data.test.users,
                  data.test.items):  # fmt: skip
        assert array.dtype == np.int32
    batch = TrainBatches(data)[list(range(8))]
    assert batch["user"].dtype == batch["item"].dtype == torch.int64
    assert batch["user_inputs"]["history"].dtype == torch.int64
    seen = (np.zeros(data.num_users + 1, np.int64), np.zeros(0, np.int32))
    held = HeldOutBatches(data.test, UserInputs(data, data.before_test_histories), seen)[[0, 1]]
    assert held["user"].dtype == torch.int64


# -- Parquet scanned lazily ----------------------------------------------------------------------
def test_a_parquet_scan_reads_what_the_eager_read_does(written):
    _, _, paths = written
    file = InteractionFile(paths["interactions"])
    assert_frame_equal(scan_interactions(file).collect(), read_interactions(file))


def test_a_parquet_scan_names_missing_ids_as_the_eager_read_does(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"user_id": [1, None, 3], "item_id": [4, 5, 6]}).write_parquet(path)
    with pytest.raises(DataFileError, match=r"1 of 3 rows have no user_id .* at rows 2"):
        scan_interactions(InteractionFile(path))
    pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64}).write_parquet(path)
    with pytest.raises(DataFileError, match="has no data rows"):
        scan_interactions(InteractionFile(path))
