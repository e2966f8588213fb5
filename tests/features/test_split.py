import polars as pl
import pytest

from features.schema import SchemaError
from features.split import RandomSplit, ShippedSplit, TemporalSplit


def _user(user, n):
    return {
        "user_id": [user] * n,
        "item_id": list(range(n)),
        "timestamp": list(range(100, 100 + n)),
    }


def test_temporal_split_holds_out_each_users_latest_interactions():
    lf = pl.concat([pl.LazyFrame(_user(1, 10)), pl.LazyFrame(_user(2, 2))])
    df = TemporalSplit(val_ratio=0.1, test_ratio=0.2)(lf).collect()
    one = df.filter(pl.col("user_id") == 1).sort("timestamp")["split"].to_list()
    assert one == ["train"] * 7 + ["val"] + ["test"] * 2
    # Too few interactions to hold any out: all train.
    assert df.filter(pl.col("user_id") == 2)["split"].to_list() == ["train", "train"]
    # No validation or test interaction is older than any of the user's training ones.
    for _, group in df.group_by("user_id"):
        train_max = group.filter(pl.col("split") == "train")["timestamp"].max()
        held = group.filter(pl.col("split") != "train")["timestamp"]
        assert held.len() == 0 or held.min() > train_max


def test_temporal_split_needs_time():
    with pytest.raises(SchemaError, match="TemporalSplit needs a 'timestamp' column"):
        TemporalSplit()(pl.LazyFrame({"user_id": [1], "item_id": [2]}))


def test_shipped_split_carves_validation_from_train_only():
    lf = pl.LazyFrame(
        {"user_id": [1] * 12, "item_id": list(range(12)), "split": ["train"] * 10 + ["test"] * 2}
    )
    df = ShippedSplit(val_ratio=0.2, seed=1)(lf).collect()
    assert df.filter(pl.col("item_id") >= 10)["split"].to_list() == ["test", "test"]
    assert df["split"].value_counts().sort("split").rows() == [
        ("test", 2),
        ("train", 8),
        ("val", 2),
    ]
    again = ShippedSplit(val_ratio=0.2, seed=1)(lf).collect()
    assert df.equals(again)


def test_random_split_ratios_are_close_and_deterministic():
    lf = pl.LazyFrame({"user_id": [i % 50 for i in range(10_000)], "item_id": list(range(10_000))})
    df = RandomSplit(val_ratio=0.1, test_ratio=0.1, seed=0)(lf).collect()
    shares = dict(df["split"].value_counts(normalize=True).iter_rows())
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["test"] - 0.1) < 0.02
    assert df.equals(RandomSplit(val_ratio=0.1, test_ratio=0.1, seed=0)(lf).collect())


def _recbole_counts(n: int, ratios=(0.8, 0.1, 0.1)) -> list[int]:
    """RecBole's Dataset._calcu_split_ids, as counts (train, val, test) for one user."""
    total = sum(ratios)
    ratios = [r / total for r in ratios]
    counts = [int(r * n) for r in ratios]
    counts[0] = n - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def test_random_split_per_user_matches_recbole_counts():
    users = [u for u in range(1, 120) for _ in range(u)]  # user u has u interactions
    lf = pl.LazyFrame({"user_id": users, "item_id": list(range(len(users)))})
    df = RandomSplit(val_ratio=0.1, test_ratio=0.1, seed=3)(lf).collect()
    counts = (
        df.group_by("user_id")
        .agg((pl.col("split") == s).sum().alias(s) for s in ("train", "val", "test"))
        .sort("user_id")
    )
    for user, *got in counts.iter_rows():
        assert got == _recbole_counts(user), user


def test_random_split_global_cuts_the_whole_frame_once():
    lf = pl.LazyFrame({"user_id": [0] * 5 + [1] * 5, "item_id": list(range(10))})
    df = RandomSplit(val_ratio=0.1, test_ratio=0.1, by_user=False, seed=0)(lf).collect()
    assert df["split"].value_counts().sort("split").rows() == [
        ("test", 1),
        ("train", 8),
        ("val", 1),
    ]
