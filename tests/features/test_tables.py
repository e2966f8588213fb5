"""Users and items tables beside an interactions file: every column handed over, keys checked and
typed to join the interactions' ids, list columns split, cold rows kept."""

import datetime
import gzip

import polars as pl
import pytest
from hydra.utils import instantiate
from polars.testing import assert_frame_equal

from features.schema import DataFileError
from features.sources import Interactions
from tests.features.test_sources_configs import compose_config

EVENTS = "uid,iid,ts\n1,10,1\n1,11,2\n2,10,3\n"
MAPPING = {"user_id": "uid", "item_id": "iid", "timestamp": "ts"}


def _file(tmp_path, name: str, content: str | pl.DataFrame):
    path = tmp_path / name
    if isinstance(content, pl.DataFrame):
        content.write_parquet(path)
    else:
        path.write_text(content)
    return str(path)


def _source(tmp_path, events: str = EVENTS, **tables) -> Interactions:
    return Interactions(_file(tmp_path, "events.csv", events), columns=MAPPING, **tables)


def _error(call) -> DataFileError:
    with pytest.raises(DataFileError) as caught:
        call()
    return caught.value


def _named(error: DataFileError, path: str, column: str | None) -> str:
    message = str(error)
    assert (error.path, error.column) == (path, column) and path in message
    if column is not None:
        assert repr(column) in message
    return message


# ---------------------------------------------------------------------------------------------
# Every column, typed


def test_csv_tables_hand_over_every_column_with_cold_rows_kept(tmp_path):
    items = _file(
        tmp_path,
        "items.csv",
        "sku,title,price,tags,in_stock,code\n"
        "10,Red shoe,9.5,a| b||c,true,007\n"
        "11,Blue hat,NA,,false,012\n"
        '12,"Cold, new",3,x,TRUE,100\n',  # 12 has no interaction: a cold item, kept
    )
    users = _file(tmp_path, "users.csv", "user_id,zip,age\n1,02138,30\n2,94043,\n3,10001,50\n")
    source = _source(tmp_path, users=users, items=items, item_key="sku", list_columns=["tags"])
    expected_items = pl.DataFrame(
        {
            "item_id": [10, 11, 12],
            "title": ["Red shoe", "Blue hat", "Cold, new"],
            "price": [9.5, None, 3.0],  # "NA" among numbers is a missing number
            "tags": [["a", "b", "c"], [], ["x"]],  # split, stripped, empty values dropped
            "in_stock": [True, False, True],
            "code": ["007", "012", "100"],  # leading zeros: text, as written
        }
    )
    assert_frame_equal(source.items(), expected_items)
    expected_users = pl.DataFrame(
        {"user_id": [1, 2, 3], "zip": ["02138", "94043", "10001"], "age": [30, None, 50]}
    )
    assert_frame_equal(source.users(), expected_users)
    assert source.table_path("item") == items and source.table_path("user") == users


def test_tables_without_files_are_none_and_named_after_the_source(tmp_path):
    source = _source(tmp_path)
    assert source.users() is None and source.items() is None
    assert source.table_path("user") == "interactions users"


def test_parquet_list_columns_pass_through_and_other_types_become_table_kinds(tmp_path):
    items_df = pl.DataFrame(
        {
            "item_id": pl.Series([10, 11, 12], dtype=pl.Int32),  # joins Int64 interaction ids
            "tags": [["a", "b"], None, ["c", None]],
            "codes": [[1, 2], [], [3]],
            "none": [[], [], []],  # List(Null)
            "brand": pl.Series(["x", "y", None], dtype=pl.Categorical),
            "released": [datetime.date(1970, 1, 2), None, datetime.date(1970, 1, 1)],
            "score": [0.5, 1.5, None],
            "text": ["a|b", "c", None],  # a Parquet string is not split unless listed
        }
    )
    source = _source(tmp_path, items=_file(tmp_path, "items.parquet", items_df))
    expected = pl.DataFrame(
        {
            "item_id": [10, 11, 12],
            "tags": [["a", "b"], [], ["c"]],
            "codes": [["1", "2"], [], ["3"]],
            "none": pl.Series([[], [], []], dtype=pl.List(pl.String)),
            "brand": ["x", "y", None],
            "released": [86_400, None, 0],
            "score": [0.5, 1.5, None],
            "text": ["a|b", "c", None],
        }
    )
    assert_frame_equal(source.items(), expected)


def test_a_listed_parquet_string_column_is_split_like_csv(tmp_path):
    items_df = pl.DataFrame({"item_id": [10, 11], "genres": ["Drama;Comedy", None]})
    source = _source(
        tmp_path,
        items=_file(tmp_path, "items.parquet", items_df),
        list_columns=["genres"],
        list_separator=";",
    )
    assert source.items()["genres"].to_list() == [["Drama", "Comedy"], []]


def test_tsv_and_gzip_tables_read_like_csv(tmp_path):
    (tmp_path / "items.tsv.gz").write_bytes(gzip.compress(b"item_id\tname\n10\ta b\n11\tc\n"))
    source = _source(tmp_path, items=str(tmp_path / "items.tsv.gz"))
    assert source.items().rows() == [(10, "a b"), (11, "c")]


# ---------------------------------------------------------------------------------------------
# Keys: typed like the interactions' ids


def test_string_ids_match_string_keys_and_integer_keys_take_their_text(tmp_path):
    events = "uid,iid,ts\nu1,007,1\nu2,8,2\n"  # "007": item ids stay text
    items = _file(tmp_path, "items.csv", "item_id,x\n8,1\n9,2\n")  # integers here
    users = _file(tmp_path, "users.csv", "user_id,x\nu1,1\nu3,2\n")
    source = _source(tmp_path, events, items=items, users=users)
    assert source.items()["item_id"].to_list() == ["8", "9"]  # text, to join "8"
    assert source.users()["user_id"].to_list() == ["u1", "u3"]


def test_integer_keys_take_the_interactions_integer_type_or_are_named_outside_it(tmp_path):
    events_df = pl.DataFrame(
        {"user_id": pl.Series([1, 2], dtype=pl.Int32), "item_id": pl.Series([5, 6], dtype=pl.Int32)}
    )
    events = _file(tmp_path, "events.parquet", events_df)
    items = _file(tmp_path, "items.csv", "item_id,x\n5,1\n7,2\n")
    assert Interactions(events, items=items).items().schema["item_id"] == pl.Int32
    items = _file(tmp_path, "items.csv", "item_id,x\n5,1\n4294967296,2\n")
    error = _error(Interactions(events, items=items).items)
    assert "outside the range of the interactions' item_id type Int32" in _named(
        error, items, "item_id"
    )
    assert error.values == (4_294_967_296,)


def test_ids_str_reads_keys_as_written(tmp_path):
    items = _file(tmp_path, "items.csv", "item_id,x\n010,1\n11,2\n")
    source = _source(tmp_path, items=items, ids="str")
    assert source.items()["item_id"].to_list() == ["010", "11"]
    # Integer ids stored as integers (Parquet) join keys written as integers.
    events = _file(tmp_path, "events.parquet", pl.DataFrame({"user_id": [1], "item_id": [11]}))
    items = _file(tmp_path, "items.csv", "item_id,x\n11,1\n12,2\n")
    assert Interactions(events, items=items, ids="str").items()["item_id"].to_list() == [11, 12]


def test_string_keys_beside_integer_ids_are_a_named_error(tmp_path):
    items = _file(tmp_path, "items.csv", "sku,x\nA-10,1\nA-11,2\n")
    error = _error(_source(tmp_path, items=items, item_key="sku").items)
    message = _named(error, items, "sku")
    assert "holds String ids but the interactions' item_id are Int64" in message
    assert error.values == ("A-10", "A-11")
    # Keys mixing numbers and other strings are named as interaction ids would be.
    items = _file(tmp_path, "items.csv", "sku,x\n10,1\nA-11,2\n12,3\n")
    error = _error(_source(tmp_path, items=items, item_key="sku").items)
    assert "mixes 2 numeric ids with 1 other strings" in _named(error, items, "sku")
    assert error.values == ("A-11",)


def test_mixed_and_fractional_keys_are_named_like_interaction_ids(tmp_path):
    items = _file(tmp_path, "items.csv", "sku,x\n10,1\n10.5,2\n")
    error = _error(_source(tmp_path, items=items, item_key="sku").items)
    assert "not whole numbers" in _named(error, items, "sku") and error.values == ("10.5",)


def test_duplicated_keys_name_the_file_the_column_and_a_sample(tmp_path):
    items = _file(tmp_path, "items.csv", "sku,x\n10,1\n11,2\n10,3\n12,4\n11,5\n10,6\n")
    error = _error(_source(tmp_path, items=items, item_key="sku").items)
    message = _named(error, items, "sku")
    assert "2 item_id values appear more than once in key column 'sku'" in message
    assert error.values == (10, 11)


def test_a_missing_key_column_names_the_option_and_the_columns_found(tmp_path):
    users = _file(tmp_path, "users.csv", "id,age\n1,30\n")
    error = _error(_source(tmp_path, users=users).users)
    message = _named(error, users, "user_id")
    assert "missing key column 'user_id' (for user_id; set user_key)" in message
    assert "Found columns: id: String, age: String" in message


def test_null_keys_are_counted_with_their_rows(tmp_path):
    users = _file(tmp_path, "users.csv", "user_id,age\n1,30\n,40\n2,50\nNaN,60\n")
    error = _error(_source(tmp_path, users=users).users)
    assert "2 of 4 rows have no user_id" in _named(error, users, "user_id")
    assert "at rows 2, 4" in str(error)


def test_null_keys_in_parquet_are_an_error(tmp_path):
    items = _file(tmp_path, "items.parquet", pl.DataFrame({"item_id": [10, None], "x": [1, 2]}))
    error = _error(_source(tmp_path, items=items).items)
    assert "1 of 2 rows have no item_id" in _named(error, items, "item_id")


def test_a_column_named_like_our_key_beside_the_key_is_an_error(tmp_path):
    items = _file(tmp_path, "items.csv", "sku,item_id\n10,1\n")
    error = _error(_source(tmp_path, items=items, item_key="sku").items)
    assert "besides its key column 'sku'" in _named(error, items, "item_id")


# ---------------------------------------------------------------------------------------------
# Columns


def test_list_columns_must_name_a_column_of_a_table(tmp_path):
    items = _file(tmp_path, "items.csv", "item_id,genres\n10,a|b\n")
    users = _file(tmp_path, "users.csv", "user_id,tags\n1,x|y\n")
    source = _source(tmp_path, items=items, users=users, list_columns=["genres", "tags"])
    assert source.items()["genres"].to_list() == [["a", "b"]]  # "tags" is the users' column
    assert source.users()["tags"].to_list() == [["x", "y"]]
    error = _error(_source(tmp_path, items=items, list_columns=["genre"]).items)
    assert "list_columns names 'genre', a column of no table" in _named(error, items, "genre")


def test_a_parquet_column_of_another_type_is_named(tmp_path):
    items_df = pl.DataFrame({"item_id": [10], "embedding": [[0.5, 0.25]]})
    items = _file(tmp_path, "items.parquet", items_df)
    error = _error(_source(tmp_path, items=items).items)
    assert "has type List(Float64)" in _named(error, items, "embedding")
    items_df = pl.DataFrame({"item_id": [10], "meta": [{"a": 1}]})
    items = _file(tmp_path, "items2.parquet", items_df)
    error = _error(_source(tmp_path, items=items).items)
    assert "has type Struct" in _named(error, items, "meta")


def test_the_interactions_config_takes_tables(tmp_path):
    cfg = compose_config(
        tmp_path,
        [
            "data=interactions",
            "data.source.path=events.csv",
            "data.source.users=users.csv",
            "data.source.items=items.parquet",
            "data.source.item_key=sku",
            "data.source.list_columns=[tags]",
        ],
    )
    source = instantiate(cfg.data).source
    assert source.table_paths == {"user": "users.csv", "item": "items.parquet"}
    assert source.keys == {"user": "user_id", "item": "sku"}
    assert source.list_columns == ("tags",) and source.list_separator == "|"
