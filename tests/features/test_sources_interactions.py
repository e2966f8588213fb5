import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import prepare, schema
from features.sources import Interactions
from features.split import TemporalSplit
from tests.conftest import shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY


def _write(tmp_path, name, df: pl.DataFrame, **options):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.write_parquet(path)
    else:
        df.write_csv(path, **options)
    return path


RAW = pl.DataFrame(
    {
        "uid": ["a", "a", "b", "b"],
        "iid": [10, 11, 10, 12],
        "ts": [3, 1, 2, 5],
        "r": [5.0, 2.0, 4.0, 4.5],
    }
)
MAPPING = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "r"}


@pytest.mark.parametrize(
    ("name", "options"), [("x.csv", {}), ("x.tsv", {"separator": "\t"}), ("x.parquet", {})]
)
def test_any_format_maps_onto_the_interactions_columns(tmp_path, name, options):
    path = _write(tmp_path, name, RAW, **options)
    df = Interactions(str(path), columns=MAPPING).interactions().collect()
    expected = RAW.rename({"uid": "user_id", "iid": "item_id", "ts": "timestamp", "r": "rating"})
    assert_frame_equal(df, expected, check_column_order=False)


def test_rating_threshold_keeps_positives(tmp_path):
    path = _write(tmp_path, "x.csv", RAW)
    df = Interactions(str(path), columns=MAPPING, min_rating=4.0).interactions().collect()
    assert sorted(df["rating"].to_list()) == [4.0, 4.5, 5.0]


def test_string_times_are_parsed_into_epoch_seconds(tmp_path):
    raw = pl.DataFrame(
        {"user": [1, 1], "item": [1, 2], "when": ["1970-01-01 00:00:10", "1970-01-02 00:00:00"]}
    )
    path = _write(tmp_path, "x.csv", raw)
    source = Interactions(
        str(path),
        columns={"user_id": "user", "item_id": "item", "timestamp": "when"},
        timestamp_format="%Y-%m-%d %H:%M:%S",
    )
    assert source.interactions().collect()["timestamp"].to_list() == [10, 86_400]


def test_unmapped_columns_already_named_ours_are_used(tmp_path):
    path = _write(
        tmp_path, "x.csv", pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]})
    )
    df = Interactions(str(path)).interactions().collect()
    assert df.columns == ["user_id", "item_id", "timestamp"]


def test_missing_column_names_file_column_and_found_columns(tmp_path):
    path = _write(tmp_path, "x.csv", RAW)
    with pytest.raises(schema.SchemaError) as error:
        Interactions(str(path), columns={"user_id": "user", "item_id": "iid"}).interactions()
    message = str(error.value)
    assert str(path) in message and "missing column 'user'" in message
    assert "Found columns: uid: String, iid: Int64, ts: Int64, r: Float64" in message


def test_mistyped_column_names_file_and_type(tmp_path):
    path = _write(tmp_path, "x.csv", RAW.with_columns(pl.col("r").cast(pl.String) + "stars"))
    with pytest.raises(
        schema.SchemaError, match=r"x\.csv: column 'r' \(for rating\) has type String"
    ):
        Interactions(str(path), columns=MAPPING).interactions()


def test_string_time_without_format_is_an_error(tmp_path):
    path = _write(tmp_path, "x.csv", RAW.with_columns(pl.col("ts").cast(pl.String) + "h"))
    with pytest.raises(schema.SchemaError, match="holds strings; set timestamp_format"):
        Interactions(str(path), columns=MAPPING).interactions()


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        Interactions(str(tmp_path / "nope.csv")).interactions()
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        Interactions(str(tmp_path / "x.xlsx")).interactions()


def test_threshold_without_rating_column_is_an_error(tmp_path):
    path = _write(tmp_path, "x.csv", RAW.drop("r"))
    with pytest.raises(schema.SchemaError, match=r"min_rating=4\.0 needs a rating column"):
        Interactions(
            str(path), columns={"user_id": "uid", "item_id": "iid"}, min_rating=4.0
        ).interactions()


def test_prepares_end_to_end(tmp_path):
    rows = [(u, i, u * 100 + i) for u in range(5) for i in range(10)]
    raw = pl.DataFrame(rows, schema=["u", "i", "t"], orient="row")
    path = _write(tmp_path, "x.parquet", raw)
    source = Interactions(str(path), columns={"user_id": "u", "item_id": "i", "timestamp": "t"})
    data = prepare(source, TemporalSplit(), IDS_AND_HISTORY)
    assert data.num_users == 5 and len(data.train) == 40 and data.test.num_interactions == 5


def test_real_ratings_csv_through_a_column_mapping():
    folder = shared_dataset("ml-latest-small")
    columns = {
        "user_id": "userId",
        "item_id": "movieId",
        "rating": "rating",
        "timestamp": "timestamp",
    }
    source = Interactions(str(folder / "ratings.csv"), columns=columns, min_rating=4.0)
    df = source.interactions().collect()
    assert df.height == 48_580 and df.schema["timestamp"] == pl.Int64
