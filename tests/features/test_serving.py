import polars as pl

from features.prepare import prepare
from features.serving import item_table, user_table
from features.split import TemporalSplit
from tests.features.test_prepare import _tiny


def test_serving_tables_are_index_ordered_lists_even_without_item_features():
    frames = _tiny()
    frames.items_df = None  # like Gowalla: no genres, no years
    data = prepare(frames, TemporalSplit(val_ratio=0.15, test_ratio=0.15), history_length=3)
    items = item_table(data)
    assert items["genre_ids"].dtype == pl.List(pl.Int64)
    assert items["genre_ids"].to_list() == [[]] * data.num_items
    users = user_table(data)
    assert users["user_id"].to_list() == [10, 20]
    # Serving features are everything before the test period: train + val.
    assert users["history"].to_list() == [[1, 2, 3], [0, 1, 2]]
    assert users["seen"].to_list() == [[0, 1, 2, 3], [0, 1, 2]]
