"""Bad data files get named errors (issue 19, item 4).

Every case is either handled as documented (negative ids, huge ids, whole floats, duplicates, a
LightGCN user without items, tab-separated LightGCN lines) or stops with a
`schema.DataFileError` that names the file, the column and a sample of the bad values; too little
data for a split stops with an `EmptySplitError` before any training. Hypothesis runs
derandomized with a modest number of examples, so the file is deterministic and quick.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import string

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import prepare, schema
from features.schema import DataFileError
from features.sources import (
    Interactions,
    LastFMHetRec,
    LightGCN,
    MovieLens,
    Synthetic,
    scan_lightgcn,
)
from features.sources.checks import MISSING_TOKENS
from features.sources.movielens_100k import MovieLens100K
from features.split import EmptySplitError, RandomSplit, ShippedSplit, TemporalSplit
from tests.features.test_sources import IDS_AND_HISTORY

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAPPING = {"user_id": "uid", "item_id": "iid", "timestamp": "ts"}


def _csv(tmp_path, text: str | bytes, name: str = "x.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _read(path, **options) -> pl.DataFrame:
    return Interactions(str(path), **{"columns": MAPPING, **options}).interactions().collect()


def _read_error(path, **options) -> DataFileError:
    """The `DataFileError` reading `path` raises (the test fails if it reads)."""
    with pytest.raises(DataFileError) as caught:
        _read(path, **options)
    return caught.value


def _named(error: DataFileError, path, column: str | None) -> str:
    """The message, after checking that the error names the file and the column (and that its
    sample, when it has one, is in the message)."""
    message = str(error)
    assert error.path == str(path) and str(path) in message
    assert error.column == column
    if column is not None:
        assert repr(column) in message
    for value in error.values:
        assert repr(value)[:40] in message
    return message


# ---------------------------------------------------------------------------------------------
# The typed error itself


def test_data_file_error_is_a_schema_error_and_round_trips_through_pickle():
    error = DataFileError("/d/x.csv", "uid", "2 rows have no user_id", [None, "NaN"])
    assert isinstance(error, schema.SchemaError) and isinstance(error, ValueError)
    assert str(error) == "/d/x.csv: column 'uid': 2 rows have no user_id; sample: None, 'NaN'"
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.column, again.values, str(again)) == (
        error.path,
        error.column,
        error.values,
        str(error),
    )


# ---------------------------------------------------------------------------------------------
# Columns: missing, mistyped


def test_missing_column_names_the_file_the_column_and_what_was_found(tmp_path):
    path = _csv(tmp_path, "uid,iid\n1,2\n")
    error = _read_error(path)
    message = _named(error, path, "ts")
    assert "missing column 'ts' (for timestamp)" in message and "Found columns: uid" in message


def test_mistyped_rating_names_a_sample_of_its_values(tmp_path):
    path = _csv(tmp_path, "uid,iid,r\n1,2,5.0\n1,3,five stars\n2,2,4\n")
    error = _read_error(path, columns={"user_id": "uid", "item_id": "iid", "rating": "r"})
    assert error.values == ("five stars",)
    assert "1 values are not numbers" in _named(error, path, "r")


def test_parquet_id_column_of_another_type_is_named(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"uid": [True, False], "iid": [1, 2], "ts": [1, 2]}).write_parquet(path)
    error = _read_error(path)
    assert "column 'uid' (for user_id) has type Boolean" in _named(error, path, "uid")


# ---------------------------------------------------------------------------------------------
# Ids: null, NaN, mixed, negative, huge, non-integer


def test_null_ids_are_an_error_with_their_count_rows_and_sample(tmp_path):
    path = _csv(tmp_path, "uid,iid,ts\n1,10,1\n,11,2\n2,12,3\nNaN,13,4\n3,14,5\n")
    error = _read_error(path)
    message = _named(error, path, "uid")
    assert "2 of 5 rows have no user_id" in message and "at rows 2, 4" in message
    assert error.values == (None, "NaN")


def test_nan_ids_in_parquet_are_an_error(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"uid": [1, 2], "iid": [1.0, math.nan], "ts": [1, 2]}).write_parquet(path)
    with pytest.raises(DataFileError, match="1 of 2 rows have no item_id") as caught:
        _read(path)
    _named(caught.value, path, "iid")


def test_a_string_id_among_integers_is_an_error_with_a_sample(tmp_path):
    path = _csv(tmp_path, "uid,iid,ts\n1,10,1\n2,abc,2\n3,12,3\n")
    error = _read_error(path)
    message = _named(error, path, "iid")
    assert "mixes 2 numeric ids with 1 other strings" in message and "ids: str" in message
    assert error.values == ("abc",)
    # Asked for, every id is a string, as written.
    assert _read(path, ids="str")["item_id"].to_list() == ["10", "abc", "12"]


def test_negative_huge_zero_padded_and_whole_float_ids(tmp_path):
    negative = _read(_csv(tmp_path, "uid,iid,ts\n-1,-10,1\n2,0,2\n", "neg.csv"))
    assert negative["user_id"].to_list() == [-1, 2] and negative.schema["user_id"] == pl.Int64
    huge = "123456789012345678901234567890"
    big = _read(_csv(tmp_path, f"uid,iid,ts\n{huge},1,1\n7,2,2\n", "huge.csv"))
    assert big["user_id"].to_list() == [huge, "7"]  # beyond 64 bits: the text, not a wrapped int
    padded = _read(_csv(tmp_path, "uid,iid,ts\n007,1,1\n7,2,2\n", "zeros.csv"))
    assert padded["user_id"].to_list() == ["007", "7"]  # two users, not one
    floats = _read(_csv(tmp_path, "uid,iid,ts\n1.0,3.0,1\n2.0,4.0,2\n", "floats.csv"))
    assert floats["item_id"].to_list() == [3, 4] and floats.schema["item_id"] == pl.Int64


def test_non_integer_ids_are_an_error(tmp_path):
    path = _csv(tmp_path, "uid,iid,ts\n1,1.5,1\n2,2,2\n")
    with pytest.raises(DataFileError, match="1 ids that are not whole numbers") as caught:
        _read(path)
    assert caught.value.values == ("1.5",)
    _named(caught.value, path, "iid")


# ---------------------------------------------------------------------------------------------
# Files: empty, header only, binary, not UTF-8, mixed separators


def test_empty_and_header_only_files_name_the_file(tmp_path):
    for text, problem in (("", "the file is empty"), ("uid,iid,ts\n", "has no data rows")):
        path = _csv(tmp_path, text)
        with pytest.raises(DataFileError, match=problem) as caught:
            _read(path)
        _named(caught.value, path, None)
    parquet = tmp_path / "x.parquet"
    pl.DataFrame(schema={"uid": pl.Int64, "iid": pl.Int64, "ts": pl.Int64}).write_parquet(parquet)
    with pytest.raises(DataFileError, match="has no data rows"):
        _read(parquet)


def test_binary_gzip_and_parquet_files_under_a_text_name(tmp_path):
    path = _csv(tmp_path, b"uid,iid\x00\x01\x02\xff\x00garbage")
    with pytest.raises(DataFileError, match=r"is binary, not delimited text \(a NUL byte"):
        _read(path)
    _csv(tmp_path, gzip.compress(b"uid,iid,ts\n1,2,3\n"))
    with pytest.raises(DataFileError, match=r"a gzip file; name it with a \.gz suffix"):
        _read(path)
    buffer = io.BytesIO()
    pl.DataFrame({"uid": [1], "iid": [2], "ts": [3]}).write_parquet(buffer)
    _csv(tmp_path, buffer.getvalue())
    with pytest.raises(DataFileError, match=r"a Parquet file; name it \.parquet"):
        _read(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = _csv(tmp_path, b"uid,iid,ts\n1,10,1\nu\xe9\xff,11,2\n")
    with pytest.raises(DataFileError, match=r"line 3 is not UTF-8 text") as caught:
        _read(path)
    _named(caught.value, path, None)


def test_mixed_separators_are_named(tmp_path):
    # A line with ';' in a ',' file: one field, so its item is missing.
    path = _csv(tmp_path, "uid,iid\n1,10\n2;11\n3,12\n")
    error = _read_error(path, columns={"user_id": "uid", "item_id": "iid"})
    assert error.column in ("uid", "iid")
    assert "'2;11'" in _named(error, path, error.column)
    # A line with more fields than the header.
    path = _csv(tmp_path, "uid,iid\n1,10\n2,11,12,13\n")
    error = _read_error(path, columns={"user_id": "uid", "item_id": "iid"})
    assert "cannot be read" in _named(error, path, None)


# ---------------------------------------------------------------------------------------------
# Timestamps


def test_a_timestamp_column_of_strings(tmp_path):
    path = _csv(tmp_path, "uid,iid,ts\n1,10,yesterday\n2,11,today\n")
    with pytest.raises(DataFileError, match="holds strings; set timestamp_format") as caught:
        _read(path)
    assert caught.value.values == ("yesterday", "today")
    _named(caught.value, path, "ts")
    path = _csv(tmp_path, "uid,iid,ts\n1,10,2020-01-02\n2,11,02/01/2020\n")
    with pytest.raises(DataFileError, match="do not match timestamp_format") as caught:
        _read(path, timestamp_format="%Y-%m-%d")
    assert caught.value.values == ("02/01/2020",)
    path = _csv(tmp_path, "uid,iid,ts\n1,10,100\n2,11,\n")
    with pytest.raises(DataFileError, match="1 of 2 rows have no timestamp"):
        _read(path)


# ---------------------------------------------------------------------------------------------
# Duplicates: the source keeps every row, prepare keeps one per (user, item), the earliest


def test_duplicated_rows_keep_one_interaction_per_user_and_item(tmp_path):
    rows = [(u, i, 10 * u + i) for u in range(4) for i in range(6)]
    text = "uid,iid,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    dup = text + "".join(f"{u},{i},{t + 1000}\n" for u, i, t in rows[::3]) + "0,0,0\n"
    assert _read(_csv(tmp_path, dup, "dup.csv")).height == len(rows) + len(rows[::3]) + 1
    once = prepare(
        Interactions(str(_csv(tmp_path, text)), columns=MAPPING), TemporalSplit(), IDS_AND_HISTORY
    )
    twice = prepare(
        Interactions(str(tmp_path / "dup.csv"), columns=MAPPING), TemporalSplit(), IDS_AND_HISTORY
    )
    assert (once.train == twice.train).all() and len(twice.train) == len(once.train)
    assert (once.test.items == twice.test.items).all()


# ---------------------------------------------------------------------------------------------
# Too little data for the split: named before training


def test_the_observed_run_stops_with_what_is_wrong_with_the_data(tmp_path):
    # Null ids and a string among integers, in too few rows to validate: the ids are named first.
    path = _csv(tmp_path, "uid,iid,ts\n1,10,1\n,11,2\n2,x,3\n")
    with pytest.raises(DataFileError, match="1 of 3 rows have no user_id"):
        prepare(Interactions(str(path), columns=MAPPING), TemporalSplit(), IDS_AND_HISTORY)
    # Fixed ids, still too few rows: the split says so, with the numbers.
    path = _csv(tmp_path, "uid,iid,ts\n1,10,1\n1,11,2\n2,12,3\n")
    with pytest.raises(EmptySplitError) as caught:
        prepare(Interactions(str(path), columns=MAPPING), TemporalSplit(), IDS_AND_HISTORY)
    message = str(caught.value)
    assert message.startswith("data.split: validation split is empty: 3 interactions from 2 users;")
    assert "at least 3 interactions" in message and "the most any user has is 2" in message
    assert (caught.value.part, caught.value.num_interactions, caught.value.num_users) == (
        "val",
        3,
        2,
    )


def test_each_split_names_an_empty_part_and_a_zero_ratio_asks_for_none():
    two = pl.LazyFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    for split in (TemporalSplit(), RandomSplit()):
        with pytest.raises(EmptySplitError, match="validation split is empty"):
            split(two)
    with pytest.raises(EmptySplitError, match="the whole frame needs at least 3 interactions"):
        RandomSplit(by_user=False)(two.head(2))
    assert RandomSplit(by_user=False)(two).collect()["split"].sort().to_list() == [
        "test",
        "train",
        "val",
    ]
    assert TemporalSplit(val_ratio=0, test_ratio=0)(two).collect()["split"].unique().to_list() == [
        "train"
    ]
    shipped = pl.LazyFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "split": ["train"] * 3})
    with pytest.raises(EmptySplitError, match=r"test split is empty.*shipped no test"):
        ShippedSplit()(shipped)
    with pytest.raises(schema.SchemaError, match="1 of 3 interactions have no 'timestamp'"):
        TemporalSplit()(two.with_columns(pl.Series("timestamp", [1, None, 3])))


@FUZZ
@given(counts=st.lists(st.integers(1, 4), min_size=1, max_size=5))
def test_a_split_fails_exactly_when_no_user_has_enough_interactions(counts):
    rows = [(u, u * 10 + k, k) for u, n in enumerate(counts) for k in range(n)]
    lf = pl.LazyFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    for split in (TemporalSplit(), RandomSplit(seed=1)):
        if max(counts) < 3:
            with pytest.raises(EmptySplitError) as caught:
                split(lf)
            assert caught.value.part == "val" and caught.value.num_interactions == sum(counts)
        else:
            parts = set(split(lf).collect()["split"].to_list())
            assert parts == {"train", "val", "test"}


# ---------------------------------------------------------------------------------------------
# The other sources


def test_movielens_folder_names_bad_ids_and_empty_files(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,1\nbob,11,4.0,2\n2,12,5.0,3\n"
    )
    with pytest.raises(DataFileError) as caught:
        MovieLens(root=str(tmp_path)).interactions()
    assert caught.value.values == ("bob",)
    _named(caught.value, tmp_path / "ratings.csv", "userId")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n10,A (1995),Drama\n,B,Drama\n")
    with pytest.raises(DataFileError, match="1 of 2 rows have no item_id") as caught:
        MovieLens(root=str(tmp_path)).items()
    _named(caught.value, tmp_path / "movies.csv", "movieId")
    (tmp_path / "ratings.csv").write_text("")
    with pytest.raises(DataFileError, match=r"ratings\.csv: the file is empty"):
        MovieLens(root=str(tmp_path)).interactions()


def _ml100k(tmp_path, data: bytes):
    root = tmp_path / "ml-100k"
    root.mkdir(exist_ok=True)
    (root / "u.data").write_bytes(data)
    return MovieLens100K(str(root), min_rating=None)


def test_ml100k_names_missing_values_non_utf8_and_empty_files(tmp_path):
    source = _ml100k(tmp_path, b"1\t10\t5\t100\n2\t\t4\t101\n")
    with pytest.raises(DataFileError, match="1 of 2 rows have no item_id") as caught:
        source.interactions()
    _named(caught.value, tmp_path / "ml-100k" / "u.data", "item_id")
    source = _ml100k(tmp_path, b"1\t10\t5\t100\n2\t1\xff\t4\t101\n")
    with pytest.raises(DataFileError, match="line 2 is not UTF-8 text"):
        source.interactions()
    source = _ml100k(tmp_path, b"")
    with pytest.raises(DataFileError, match=r"u\.data \(movielens-100k ratings\): the file is"):
        source.interactions()
    source = _ml100k(tmp_path, b"1\t10\t5\t100\n2\t11\t4.5x\t101\n")
    with pytest.raises(DataFileError, match="column 'rating' has type String") as caught:
        source.interactions()
    assert caught.value.values == ("4.5x",)


def test_lastfm_names_the_bad_column(tmp_path):
    (tmp_path / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t51\t3\n2\t52\t\n")
    with pytest.raises(DataFileError, match="1 of 2 rows have no rating") as caught:
        LastFMHetRec(str(tmp_path)).interactions()
    _named(caught.value, tmp_path / "user_artists.dat", "rating")


def test_lightgcn_user_without_items_tabs_and_bad_lines(tmp_path):
    (tmp_path / "train.txt").write_text("0 5 6\n1\n2\t7  8 \n\n")
    (tmp_path / "test.txt").write_text("0 9\n3\n")
    df = LightGCN(str(tmp_path)).interactions().collect()
    assert df.rows() == [(0, 5, "train"), (0, 6, "train"), (2, 7, "train"), (2, 8, "train"),
                         (0, 9, "test")]  # fmt: skip
    path = tmp_path / "bad.txt"
    for text, column, value in (
        ("0 5\n1,2,3\n", "user_id", "1,2,3"),
        ("0 5 6.5\n", "item_id", "6.5"),
        ("0 5 99999999999999999999\n", "item_id", "99999999999999999999"),
    ):
        path.write_text(text)
        with pytest.raises(DataFileError, match="expected integer ids") as caught:
            scan_lightgcn(path)
        assert caught.value.values == (value,)
        _named(caught.value, path, column)
    for data, problem in ((b"", "the file is empty"), (b"0 5\n1 \xff\n", "line 2 is not UTF-8")):
        path.write_bytes(data)
        with pytest.raises(DataFileError, match=problem):
            scan_lightgcn(path)


def test_synthetic_rejects_sizes_that_make_no_data():
    with pytest.raises(ValueError, match="synthetic: num_users must be at least 1, got 0"):
        Synthetic(num_users=0)


def _items_table(tmp_path, data: bytes, name: str = "items.csv") -> tuple[Interactions, str]:
    """An interactions file beside the items table `data`."""
    events = _csv(tmp_path, "uid,iid,ts\n1,10,1\n2,11,2\n", "events.csv")
    items = _csv(tmp_path, data, name)
    return Interactions(str(events), columns=MAPPING, items=str(items)), str(items)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "the file is empty"),
        (b"item_id,title\n", "has no data rows"),
        (b"item_id,title\n10,a\x00b\n", "is binary, not delimited text"),
        (gzip.compress(b"item_id,title\n10,a\n"), "a gzip file; name it with a .gz suffix"),
        (b"item_id,title\n10,caf\xe9\n", "line 2 is not UTF-8 text"),
        (b"item_id,title\n10,a\n11,b,c,d\n", "cannot be read"),
    ],
)
def test_a_bad_table_file_is_named_like_a_bad_interactions_file(tmp_path, data, problem):
    source, items = _items_table(tmp_path, data)
    with pytest.raises(DataFileError, match=problem) as caught:
        source.items()
    assert caught.value.path == items and items in str(caught.value)
    assert source.table_path("item") == items


# ---------------------------------------------------------------------------------------------
# Properties: bad values injected anywhere are named; any bytes give a frame or a named error

_BAD_TEXT = st.text(alphabet=string.ascii_letters + "-_.:/#@ ", min_size=1, max_size=8)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_BAD_ID = st.one_of(
    st.sampled_from(MISSING_TOKENS),
    st.sampled_from(["1.5", "-0.25", "abc", "12a", "x1", "1e400"]),
    _BAD_TEXT.filter(lambda t: not _is_number(t.strip())),
)


@FUZZ
@given(
    ids=st.lists(st.integers(-(2**62), 2**62), min_size=4, max_size=12),
    column=st.sampled_from(["uid", "iid"]),
    bad=st.lists(st.tuples(st.integers(0, 1_000), _BAD_ID), min_size=1, max_size=2),
)
def test_a_bad_id_anywhere_is_named_with_its_column(tmp_path, ids, column, bad):
    rows = [{"uid": str(i), "iid": str(i // 3), "ts": str(k)} for k, i in enumerate(ids)]
    for at, value in bad:
        rows[at % len(rows)][column] = value
    text = "uid,iid,ts\n" + "".join(f"{r['uid']},{r['iid']},{r['ts']}\n" for r in rows)
    path = _csv(tmp_path, text)
    error = _read_error(path)
    _named(error, path, column)
    injected = {value for _, value in bad} | {value.strip() for _, value in bad} | {None}
    assert error.values and set(error.values) <= injected


@FUZZ
@given(
    rows=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5), st.integers(0, 10**12)),
        min_size=1,
        max_size=15,
    ),
    repeat=st.lists(st.integers(0, 100), max_size=5),
)
def test_valid_files_read_back_exactly_with_duplicates_kept(tmp_path, rows, repeat):
    rows = rows + [rows[k % len(rows)] for k in repeat]  # duplicated rows, anywhere after
    text = "uid,iid,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    df = _read(_csv(tmp_path, text))
    assert df.rows() == rows
    assert df.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64})


@FUZZ
@given(body=st.binary(max_size=200))
def test_any_bytes_give_a_frame_or_a_named_error(tmp_path, body):
    path = _csv(tmp_path, b"uid,iid,ts\n" + body)
    try:
        df = _read(path)
    except DataFileError as error:
        assert error.path == str(path) and str(path) in str(error)
    else:
        assert df.height and df.null_count().sum_horizontal().item() == 0
    lightgcn = _csv(tmp_path, body, "train.txt")
    try:
        pairs = scan_lightgcn(lightgcn).collect()
    except DataFileError as error:
        assert error.path == str(lightgcn)
    else:
        assert pairs.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64})
    try:
        _ml100k(tmp_path, body).interactions()
    except DataFileError as error:
        assert error.path.endswith("u.data")
    source, items = _items_table(tmp_path, b"item_id,x\n" + body)
    try:
        table = source.items()
    except DataFileError as error:
        assert error.path == items
    else:
        assert table["item_id"].is_unique().all() and table["item_id"].null_count() == 0
