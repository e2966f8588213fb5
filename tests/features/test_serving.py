import polars as pl

from features.prepare import prepare
from features.serving import CONTENT_ONLY, HISTORY, SEEN, item_table, user_table
from tests.features.test_prepare import (
    SPLIT,
    WITH_CONTENT,
    _interactions_only,
    _tiny,
    ids_and_history,
)


def test_serving_tables_are_index_ordered_lists_even_without_side_tables():
    data = prepare(_interactions_only(), SPLIT, ids_and_history())  # like Gowalla: ids only
    items = item_table(data)
    assert items.columns == ["item_id", CONTENT_ONLY]
    assert items["item_id"].to_list() == [1, 2, 3, 4]
    assert not items[CONTENT_ONLY].any()
    users = user_table(data)
    assert users.columns == ["user_id", HISTORY, SEEN]
    assert users["user_id"].to_list() == [10, 20]
    # Serving features are everything before the test period: train + val.
    assert users[HISTORY].to_list() == [[1, 2, 3], [0, 1, 2]]
    assert users[SEEN].to_list() == [[0, 1, 2, 3], [0, 1, 2]]


def test_the_items_table_carries_the_source_columns_and_marks_the_content_only_items():
    frames = _tiny()
    items = item_table(prepare(frames, SPLIT, WITH_CONTENT))
    assert items.columns == [*frames.items_df.columns, CONTENT_ONLY]
    assert items.drop(CONTENT_ONLY).equals(frames.items_df)  # the table is in id order already
    # Items 5, 6 and 7 have no training interaction: their vectors come from content alone.
    assert items[CONTENT_ONLY].to_list() == [False] * 4 + [True] * 3


def test_a_source_column_named_like_a_serving_column_is_kept_under_a_prefix():
    frames = _interactions_only()
    frames.users_df = pl.DataFrame({"user_id": [20, 10], "seen": ["yes", "no"]})
    users = user_table(prepare(frames, SPLIT, ids_and_history()))
    assert users.columns == ["user_id", "source_seen", HISTORY, SEEN]
    assert users["source_seen"].to_list() == ["no", "yes"]  # index order: user 10, then 20
    assert users[SEEN].to_list() == [[0, 1, 2, 3], [0, 1, 2]]
