"""The pipeline's no-leakage rules on tiny frames."""

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from features.prepare import histories, prepare
from features.split import ShippedSplit, TemporalSplit


@dataclass
class Frames:
    interactions_df: pl.DataFrame
    items_df: pl.DataFrame | None = None
    name: str = "tiny"

    def interactions(self):
        return self.interactions_df.lazy()

    def items(self):
        return self.items_df


def _tiny() -> Frames:
    # user 10: items 1..6 over time; user 20: items 1, 2, 3 then 7 (7 appears only in test).
    rows = [(10, i, t) for t, i in enumerate([1, 2, 3, 4, 5, 6])] + [
        (20, 1, 0),
        (20, 2, 1),
        (20, 3, 2),
        (20, 7, 3),
    ]
    interactions = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    items = pl.DataFrame(
        {
            "item_id": [1, 2, 3, 4, 5, 6, 7],
            "title": [f"t{i}" for i in range(1, 8)],
            "genres": [["a"], ["a", "b"], [], ["c"], ["b"], ["a"], ["z"]],
            "year": pl.Series([1995, None, 2001, 1900, 1850, 2020, 2021], dtype=pl.Int32),
        }
    )
    return Frames(interactions, items)


def test_vocabularies_popularity_and_histories_come_from_training_only():
    data = prepare(_tiny(), TemporalSplit(val_ratio=0.15, test_ratio=0.15), history_length=3)
    # user 10 (6 items): 4 train, 1 val (item 5), 1 test (item 6); user 20: 2 train, 1 val, 1 test.
    assert data.item_vocab.frame["raw_id"].to_list() == [1, 2, 3, 4]
    assert data.user_vocab.frame["raw_id"].to_list() == [10, 20]
    np.testing.assert_array_equal(data.item_counts, [2, 2, 1, 1])
    # Histories: last 3 train items, oldest first, padded with num_items (4).
    np.testing.assert_array_equal(data.train_histories, [[1, 2, 3], [0, 1, 4]])
    # Serving-time histories add validation (item 3 for user 20; item 5 is unknown so skipped).
    np.testing.assert_array_equal(data.before_test_histories, [[1, 2, 3], [0, 1, 2]])


def test_the_refit_view_trains_on_validation_too_and_keeps_test():
    data = prepare(_tiny(), TemporalSplit(val_ratio=0.15, test_ratio=0.15), history_length=3)
    refit = data.with_validation_merged()
    np.testing.assert_array_equal(refit.train, data.before_test)
    assert len(refit.train) == len(data.train) + 1  # user 20's validation item (3); 5 is unknown
    assert len(refit.val) == 0 and refit.val.num_interactions == 0
    np.testing.assert_array_equal(refit.item_counts, [2, 2, 2, 1])
    np.testing.assert_array_equal(refit.train_histories, data.before_test_histories)
    assert refit.test is data.test and refit.item_vocab is data.item_vocab
    np.testing.assert_array_equal(data.item_counts, [2, 2, 1, 1])  # the original is untouched


def test_held_out_items_unknown_to_training_stay_as_misses():
    data = prepare(_tiny(), TemporalSplit(val_ratio=0.15, test_ratio=0.15), history_length=3)
    assert data.test.users.tolist() == [0, 1]
    # Items 6 and 7 never occur in training: kept as -1 so they count in |relevant|.
    assert data.test.items.tolist() == [-1, -1]
    assert data.val.items.tolist() == [-1, 2]


def test_item_side_features_are_index_aligned():
    data = prepare(_tiny(), TemporalSplit(val_ratio=0.15, test_ratio=0.15), history_length=3)
    assert data.genre_names == ["a", "b", "c"]  # genres of catalogue (training) items only
    pad = data.num_genres
    np.testing.assert_array_equal(data.item_genres, [[0, pad], [0, 1], [pad, pad], [2, pad]])
    # 5-year buckets from 1900, 0 = unknown year, clipped at the first bucket.
    np.testing.assert_array_equal(data.item_year, [20, 0, 21, 1])
    assert data.items_df["title"].to_list() == ["t1", "t2", "t3", "t4"]


def test_sources_without_an_item_table_get_empty_features():
    frames = _tiny()
    frames.items_df = None
    data = prepare(frames, TemporalSplit(val_ratio=0.15, test_ratio=0.15))
    assert data.num_genres == 0 and (data.item_year == 0).all()
    assert data.items_df["title"].null_count() == data.num_items


def test_duplicate_interactions_keep_the_earliest():
    df = pl.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [5, 5, 6, 7], "timestamp": [9, 1, 2, 3]})
    data = prepare(Frames(df), TemporalSplit(val_ratio=0.0, test_ratio=0.0))
    assert len(data.train) == 3


def test_bad_split_value_is_named():
    df = pl.DataFrame({"user_id": [1], "item_id": [2], "split": ["holdout"]})
    with pytest.raises(ValueError, match="column 'split' has value 'holdout'"):
        prepare(Frames(df), lambda lf: lf)


def test_shipped_split_keeps_the_test_set_untouched():
    df = pl.DataFrame(
        {
            "user_id": [1] * 10 + [1, 1],
            "item_id": list(range(12)),
            "split": ["train"] * 10 + ["test"] * 2,
        }
    )
    data = prepare(Frames(df), ShippedSplit(val_ratio=0.2))
    assert (
        data.test.num_interactions == 2 and data.val.num_interactions == 2 and len(data.train) == 8
    )


def test_histories_keep_the_last_items_in_order():
    pairs = np.array([[0, 5], [0, 6], [0, 7], [2, 1]])
    np.testing.assert_array_equal(histories(pairs, 3, 2, pad=9), [[6, 7], [9, 9], [1, 9]])
