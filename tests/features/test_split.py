import numpy as np
import polars as pl
import pytest

from features.schema import SchemaError
from features.split import (
    EmptySplitError,
    RandomSplit,
    ShippedSplit,
    SplitOptionError,
    TemporalSplit,
)


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


def test_temporal_split_breaks_ties_in_time_by_item_in_any_row_order():
    """Equal timestamps (ML-100K rates many movies in one second) in shuffled file order: the
    held-out interactions are each user's last in (time, item) order, as a sort finds them."""
    rng = np.random.default_rng(3)
    n = 12
    rows = pl.DataFrame(
        {
            "user_id": np.repeat([1, 2, 3], n),
            "item_id": rng.permutation(3 * n),
            "timestamp": rng.integers(0, 4, 3 * n),  # few distinct times: many ties
        }
    ).sample(fraction=1.0, shuffle=True, seed=5)
    df = TemporalSplit(val_ratio=0.25, test_ratio=0.25)(rows.lazy()).collect()
    for _, group in df.group_by("user_id"):
        ordered = group.sort("timestamp", "item_id")["split"].to_list()
        assert ordered == ["train"] * 6 + ["val"] * 3 + ["test"] * 3, ordered
        train_max = group.filter(pl.col("split") == "train").select(pl.max("timestamp")).item()
        held_min = group.filter(pl.col("split") != "train").select(pl.min("timestamp")).item()
        assert held_min >= train_max


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


# -- cold items and users ----------------------------------------------------------------------
NUM_USERS, NUM_ITEMS = 40, 60
SPLITS = {
    "temporal": lambda **cold: TemporalSplit(val_ratio=0.1, test_ratio=0.1, seed=5, **cold),
    "shipped": lambda **cold: ShippedSplit(val_ratio=0.1, seed=5, **cold),
    "random": lambda **cold: RandomSplit(val_ratio=0.1, test_ratio=0.1, seed=5, **cold),
}


def _interactions() -> pl.DataFrame:
    """Each user rates 12 distinct items at distinct times; the last 2 are shipped as test."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(NUM_USERS):
        items = rng.choice(NUM_ITEMS, size=12, replace=False)
        for position, item in enumerate(items):
            split = "test" if position >= 10 else "train"
            rows.append((f"u{user}", int(item), 1000 * user + position, split))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "split"], orient="row")


def _cold_sets(df: pl.DataFrame) -> tuple[set, set]:
    """(items, users) marked cold in any of their interactions."""
    items = set(df.filter(pl.col("cold").is_in(["item", "both"]))["item_id"].to_list())
    users = set(df.filter(pl.col("cold").is_in(["user", "both"]))["user_id"].to_list())
    return items, users


@pytest.mark.parametrize("name", SPLITS)
def test_cold_shares_hold_out_that_many_items_and_users(name):
    df = SPLITS[name](cold_items=0.1, cold_users=0.1)(_interactions().lazy()).collect()
    items, users = _cold_sets(df)
    assert (len(items), len(users)) == (6, 4)  # 10% of 60 items and of 40 users


@pytest.mark.parametrize("name", SPLITS)
def test_every_interaction_of_a_cold_item_or_user_is_test_and_says_why(name):
    df = SPLITS[name](cold_items=0.1, cold_users=0.1)(_interactions().lazy()).collect()
    items, users = _cold_sets(df)
    assert df.schema["cold"] == pl.String
    for user, item, split, cold in df.select("user_id", "item_id", "split", "cold").iter_rows():
        expected = {
            (True, True): "both",
            (True, False): "item",
            (False, True): "user",
            (False, False): None,
        }[(item in items, user in users)]
        assert cold == expected, (user, item)
        if expected is not None:
            assert split == "test", (user, item)
    assert df.filter(pl.col("cold") == "both").height > 0  # the "both" case is exercised


@pytest.mark.parametrize("name", SPLITS)
def test_warm_interactions_keep_the_base_splits_part(name):
    frame = _interactions().lazy()
    base = SPLITS[name]()(frame).collect()
    cold = SPLITS[name](cold_items=0.2, cold_users=0.1)(frame).collect()
    joined = cold.join(base, on=["user_id", "item_id"], suffix="_base")
    assert joined.height == base.height == cold.height
    warm = joined.filter(pl.col("cold").is_null())
    assert warm.height > 0
    assert warm["split"].to_list() == warm["split_base"].to_list()


@pytest.mark.parametrize("name", SPLITS)
def test_cold_draw_is_reproducible_by_seed_and_changes_with_it(name):
    frame = _interactions().lazy()
    make = SPLITS[name]
    once = make(cold_items=0.1, cold_users=0.1)(frame).collect()
    assert once.equals(make(cold_items=0.1, cold_users=0.1)(frame).collect())
    other = type(make())(seed=6, cold_items=0.1, cold_users=0.1)(frame).collect()
    assert _cold_sets(once)[0] != _cold_sets(other)[0]
    assert _cold_sets(once)[1] != _cold_sets(other)[1]


def test_cold_draw_does_not_depend_on_row_order():
    frame = _interactions()
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    split = TemporalSplit(cold_items=0.1, cold_users=0.1, seed=2)
    assert _cold_sets(split(frame.lazy()).collect()) == _cold_sets(split(shuffled.lazy()).collect())


@pytest.mark.parametrize("name", SPLITS)
def test_zero_cold_shares_give_the_frame_without_a_cold_column(name):
    frame = _interactions().lazy()
    df = SPLITS[name](cold_items=0.0, cold_users=0.0)(frame).collect()
    assert df.columns == ["user_id", "item_id", "timestamp", "split"]
    assert df.equals(SPLITS[name]()(frame).collect())


@pytest.mark.parametrize("option", ["cold_items", "cold_users"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, "0.1", True])
def test_a_bad_cold_share_names_the_option(option, value):
    with pytest.raises(SplitOptionError, match=f"data.split.{option}") as caught:
        TemporalSplit(**{option: value})
    assert (caught.value.option, caught.value.value) == (option, value)


def test_the_empty_split_check_is_on_the_warm_interactions():
    lf = pl.LazyFrame(_user(1, 10))
    assert TemporalSplit()(lf).collect().height == 10  # enough data without cold users
    # One user: any share asks for at least one cold user, so nothing warm is left.
    with pytest.raises(EmptySplitError) as caught:
        TemporalSplit(cold_users=0.5)(lf)
    assert (caught.value.part, caught.value.num_interactions) == ("val", 0)
