"""The pipeline's no-leakage rules on tiny frames."""

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from features.prepare import histories, prepare
from features.schema import DataFileError
from features.spec import FeaturesConfig
from features.split import ShippedSplit, TemporalSplit


@dataclass
class Frames:
    """A source of in-memory frames: interactions and, when given, the users and items tables."""

    interactions_df: pl.DataFrame
    items_df: pl.DataFrame | None = None
    users_df: pl.DataFrame | None = None
    name: str = "tiny"

    def interactions(self):
        return self.interactions_df.lazy()

    def items(self):
        return self.items_df

    def users(self):
        return self.users_df


def ids_and_history(length: int = 3, **item_features) -> FeaturesConfig:
    """Both ids, the user's last `length` items, and `item_features` (name: options)."""
    return FeaturesConfig.parse(
        {
            "user": {
                "features": {
                    "user_id": {"kind": "id"},
                    "history": {"kind": "history", "length": length},
                }
            },
            "item": {"features": {"item_id": {"kind": "id"}, **item_features}},
        }
    )


WITH_CONTENT = ids_and_history(
    genres={"kind": "multi_hot", "column": "genres", "max_length": 2},
    year={"kind": "numeric", "column": "year"},
)
SPLIT = TemporalSplit(val_ratio=0.15, test_ratio=0.15)


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


def _interactions_only() -> Frames:
    frames = _tiny()
    frames.items_df = None
    return frames


# user 10 (6 items): 4 train, 1 val (item 5), 1 test (item 6); user 20: 2 train, 1 val (item 3),
# 1 test (item 7). Training items: 1, 2, 3, 4.


def test_vocabularies_popularity_and_histories_come_from_training_only():
    data = prepare(_interactions_only(), SPLIT, ids_and_history())
    assert data.item_vocab.frame["raw_id"].to_list() == [1, 2, 3, 4]
    assert data.user_vocab.frame["raw_id"].to_list() == [10, 20]
    assert (data.num_train_items, data.num_train_users) == (4, 2)
    np.testing.assert_array_equal(data.item_counts, [2, 2, 1, 1])
    # The id features' vocabularies are the training ids: each one's own row.
    np.testing.assert_array_equal(data.item_inputs["item_id"], [0, 1, 2, 3])
    np.testing.assert_array_equal(data.user_inputs["user_id"], [0, 1])
    # Histories: last 3 train items, oldest first, padded with num_items (4).
    np.testing.assert_array_equal(data.train_histories, [[1, 2, 3], [0, 1, 4]])
    # Serving-time histories add validation (item 3 for user 20; item 5 is unknown so skipped).
    np.testing.assert_array_equal(data.before_test_histories, [[1, 2, 3], [0, 1, 2]])


def test_the_refit_view_trains_on_validation_too_and_keeps_test():
    data = prepare(_interactions_only(), SPLIT, ids_and_history())
    refit = data.with_validation_merged()
    np.testing.assert_array_equal(refit.train, data.before_test)
    assert len(refit.train) == len(data.train) + 1  # user 20's validation item (3); 5 is unknown
    assert len(refit.val) == 0 and refit.val.num_interactions == 0
    np.testing.assert_array_equal(refit.item_counts, [2, 2, 2, 1])
    np.testing.assert_array_equal(refit.train_histories, data.before_test_histories)
    assert refit.test is data.test and refit.item_vocab is data.item_vocab
    assert refit.features is data.features  # fitted on the training rows, not refit
    np.testing.assert_array_equal(data.item_counts, [2, 2, 1, 1])  # the original is untouched


def test_held_out_items_unknown_to_training_stay_as_misses():
    data = prepare(_interactions_only(), SPLIT, ids_and_history())
    assert data.test.users.tolist() == [0, 1]
    # Items 6 and 7 never occur in training: kept as -1 so they count in |relevant|.
    assert data.test.items.tolist() == [-1, -1]
    assert data.val.items.tolist() == [-1, 2]


def test_item_features_are_fitted_on_training_items_and_index_aligned():
    frames = _tiny()
    data = prepare(frames, SPLIT, WITH_CONTENT)
    # Every table item has a row: the training items first, then the others (here those met in
    # validation and test only), sorted; their id reads no row.
    assert data.item_vocab.frame["raw_id"].to_list() == [1, 2, 3, 4, 5, 6, 7]
    assert data.num_train_items == 4
    np.testing.assert_array_equal(data.item_inputs["item_id"], [0, 1, 2, 3, -1, -1, -1])
    assert data.items_df["title"].to_list() == [f"t{i}" for i in range(1, 8)]
    # Genres: the vocabulary of the training items' genres only (z, on item 7, is not in it).
    vocabulary = sorted({g for genres in frames.items_df["genres"][:4] for g in genres})
    assert vocabulary == ["a", "b", "c"]
    pad = len(vocabulary)
    expected = [
        ([vocabulary.index(g) for g in genres if g in vocabulary] + [pad, pad])[:2]
        for genres in frames.items_df["genres"]
    ]
    np.testing.assert_array_equal(data.item_inputs["genres"], expected)
    # Year: z-scores with the training items' known years' mean and (population) std.
    years = np.array([1995, 2001, 1900], dtype=np.float64)
    all_years = frames.items_df["year"].to_numpy().astype(np.float64)  # (7,) NaN for the null
    z = np.nan_to_num((all_years - years.mean()) / years.std())
    np.testing.assert_allclose(data.item_inputs["year"][:, 0], z, rtol=1e-6)
    np.testing.assert_array_equal(data.item_inputs["year"][:, 1], np.isnan(all_years))
    # Validation and test items known from the table are in the catalogue, ranked by content.
    assert data.val.items.tolist() == [4, 2] and data.test.items.tolist() == [5, 6]


def test_a_history_reads_item_id_codes_and_an_item_without_one_reads_nothing():
    data = prepare(_tiny(), SPLIT, WITH_CONTENT)
    # User 10's validation item (5) is known from the table only: in the serving history, with
    # no id row (-1), like the padding.
    np.testing.assert_array_equal(data.before_test_histories, [[2, 3, 4], [0, 1, 2]])
    np.testing.assert_array_equal(
        data.history_codes(data.before_test_histories), [[2, 3, -1], [0, 1, 2]]
    )


def test_a_declared_table_feature_without_its_table_names_the_column():
    with pytest.raises(DataFileError) as error:
        prepare(_interactions_only(), SPLIT, WITH_CONTENT)
    assert (error.value.path, error.value.column) == ("tiny items", "genres")


def test_duplicate_interactions_keep_the_earliest():
    df = pl.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [5, 5, 6, 7], "timestamp": [9, 1, 2, 3]})
    data = prepare(Frames(df), TemporalSplit(val_ratio=0.0, test_ratio=0.0), ids_and_history())
    assert len(data.train) == 3


def test_bad_split_value_is_named():
    df = pl.DataFrame({"user_id": [1], "item_id": [2], "split": ["holdout"]})
    with pytest.raises(ValueError, match="column 'split' has value 'holdout'"):
        prepare(Frames(df), lambda lf: lf, ids_and_history())


def test_shipped_split_keeps_the_test_set_untouched():
    df = pl.DataFrame(
        {
            "user_id": [1] * 10 + [1, 1],
            "item_id": list(range(12)),
            "split": ["train"] * 10 + ["test"] * 2,
        }
    )
    data = prepare(Frames(df), ShippedSplit(val_ratio=0.2), ids_and_history())
    assert (
        data.test.num_interactions == 2 and data.val.num_interactions == 2 and len(data.train) == 8
    )


def test_histories_keep_the_last_items_in_order():
    pairs = np.array([[0, 5], [0, 6], [0, 7], [2, 1]])
    np.testing.assert_array_equal(histories(pairs, 3, 2, pad=9), [[6, 7], [9, 9], [1, 9]])
