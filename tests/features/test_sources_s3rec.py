import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import prepare, schema
from features.sources import S3Rec
from features.split import TemporalSplit
from tests.conftest import shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY

SEQUENCES = "7 30 10 20\n\n8 10   30\t40\n9 40 40 50\n"  # a blank line; 9 buys 40 twice
ATTRIBUTES = '{"10": [1, 2], "20": [2], "30": [3, 1, 3], "40": [], "50": [4], "60": [5]}'


def _write_s3rec(root, sequences=SEQUENCES, attributes=ATTRIBUTES, dataset="Tiny"):
    root.mkdir(exist_ok=True)
    (root / f"{dataset}.txt").write_text(sequences)
    (root / f"{dataset}_item2attributes.json").write_text(attributes)
    return root


def test_sequences_become_interactions_timed_by_position(tmp_path):
    source = S3Rec(str(_write_s3rec(tmp_path / "s3rec")), dataset="Tiny")
    expected = pl.DataFrame(
        {
            "user_id": [7, 7, 7, 8, 8, 8, 9, 9, 9],
            "item_id": [30, 10, 20, 10, 30, 40, 40, 40, 50],
            "timestamp": [0, 1, 2, 0, 1, 2, 0, 1, 2],
        }
    )
    assert_frame_equal(source.interactions().collect(), expected)
    assert source.name == "s3rec_tiny" and source.users() is None


def test_items_carry_their_attributes_as_text_each_once(tmp_path):
    source = S3Rec(str(_write_s3rec(tmp_path / "s3rec")), dataset="Tiny")
    expected = pl.DataFrame(
        {
            "item_id": [10, 20, 30, 40, 50, 60],  # 60: no interaction, kept
            "attributes": [["1", "2"], ["2"], ["3", "1"], [], ["4"], ["5"]],
        }
    )
    assert_frame_equal(source.items(), expected)
    assert source.table_path("item") == str(tmp_path / "s3rec" / "Tiny_item2attributes.json")
    assert source.table_path("user") == "s3rec_tiny users"


def test_the_split_holds_out_each_users_last_items(tmp_path):
    source = S3Rec(str(_write_s3rec(tmp_path / "s3rec")), dataset="Tiny")
    split_df = TemporalSplit()(source.interactions()).collect().sort("user_id", "timestamp")
    assert split_df["split"].to_list() == ["train", "val", "test"] * 3


@pytest.mark.parametrize(
    ("sequences", "column", "message"),
    [
        ("1 2 3\n2 4 x5\n", "item_id", r"line 2 has item_id 'x5', not a 64-bit integer"),
        ("1 2 3\n\nu3 4\n", "user_id", r"line 3 has user_id 'u3', not a 64-bit integer"),
        ("1 2 3\n2 4,5\n", "item_id", r"line 2 has item_id '4,5'"),
        ("1 2 3\n2\n", "item_id", r"line 2 has a user and no items"),
        ("1 2 3\n2 4\n1 5\n", "user_id", r"user 1 is on lines 1, 3"),
    ],
)
def test_a_malformed_line_is_named(tmp_path, sequences, column, message):
    root = _write_s3rec(tmp_path / "s3rec", sequences=sequences)
    with pytest.raises(schema.DataFileError, match=message) as error:
        S3Rec(str(root), dataset="Tiny").interactions()
    assert error.value.path == str(root / "Tiny.txt") and error.value.column == column


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ('{"10": [1, 2],}', r"is not JSON: .* at line 1, column 15"),
        ("[[1, 2]]", r"expected a non-empty JSON object"),
        ('{"10": [1], "x": [2]}', r"1 keys are not integer item ids .* \(first 'x'\)"),
        ('{"10": [1], "20": [2, "a"]}', r"item 20 maps to \"\[2, 'a'\]\", expected a list"),
        ('{"10": 1}', r"item 10 maps to '1', expected a list"),
    ],
)
def test_a_malformed_attributes_file_is_named(tmp_path, attributes, message):
    root = _write_s3rec(tmp_path / "s3rec", attributes=attributes)
    with pytest.raises(schema.DataFileError, match=message) as error:
        S3Rec(str(root), dataset="Tiny").items()
    assert error.value.path == str(root / "Tiny_item2attributes.json")


def test_a_missing_or_empty_file_is_named(tmp_path):
    root = _write_s3rec(tmp_path / "s3rec")
    with pytest.raises(
        FileNotFoundError, match=r"s3rec_beauty sequences: no file at .*Beauty\.txt"
    ):
        S3Rec(str(root)).interactions()
    with pytest.raises(FileNotFoundError, match=r"Beauty_item2attributes\.json"):
        S3Rec(str(root)).items()
    (root / "Tiny.txt").write_text("\n \n")
    with pytest.raises(schema.DataFileError, match=r"Tiny\.txt \(s3rec_tiny sequences\): the file"):
        S3Rec(str(root), dataset="Tiny").interactions()


def test_real_beauty_matches_the_readme_counts():
    source = S3Rec(str(shared_dataset("s3rec-seq-with-attributes")))
    df = source.interactions().collect()
    assert df.height == 198_502
    assert df["user_id"].n_unique() == 22_363 and df["item_id"].n_unique() == 12_101
    items = source.items()
    assert items.height == 12_101 and set(items["item_id"]) == set(df["item_id"])
    assert items["attributes"].explode().n_unique() == 637
    data = prepare(source, TemporalSplit(), IDS_AND_HISTORY)
    # Every user has at least 5 items, so each holds out at least one for test and one for val.
    assert len(data.test) == len(data.val) == 22_363
