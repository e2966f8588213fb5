import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import prepare, schema
from features.sources import MovieLens100K
from features.sources.movielens_100k import GENRES
from features.split import ShippedSplit, TemporalSplit
from tests.conftest import shared_dataset
from tests.features.test_sources import IDS_AND_HISTORY


def _flags(*names):
    return "|".join("1" if g in names else "0" for g in GENRES)


def _write_ml100k(root):
    root.mkdir(exist_ok=True)
    ratings = [
        (1, 1, 5, 100),
        (1, 2, 3, 101),
        (1, 3, 4, 102),
        (2, 1, 4, 200),
        (2, 3, 5, 201),
        (2, 2, 1, 202),
    ]
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', 'Comedy')}",
        f"2|Cité des enfants perdus, La (1995)|||http://y|{_flags('unknown')}",
        f"3|Heat (1995)|15-Dec-1995||http://z|{_flags('Action', 'Thriller')}",
    ]
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (root / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|02138\n3|39|M|scientist|t8h1n\n"
    )
    (root / "u1.base").write_text("1\t1\t5\t100\n1\t2\t4\t101\n2\t1\t4\t200\n2\t3\t5\t201\n")
    (root / "u1.test").write_text("1\t3\t4\t102\n2\t2\t5\t202\n")
    return root


def test_ratings_items_and_users(tmp_path):
    source = MovieLens100K(str(_write_ml100k(tmp_path / "ml-100k")), min_rating=None)
    df = source.interactions().collect()
    assert df.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert df.height == 6 and df.schema["rating"] == pl.Float64
    items = source.items()
    expected = pl.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Toy Story (1995)", "Cité des enfants perdus, La (1995)", "Heat (1995)"],
            "genres": [["Animation", "Comedy"], [], ["Action", "Thriller"]],
            "year": pl.Series([1995, 1995, 1995], dtype=pl.Int32),  # 2's from the title
        }
    )
    assert_frame_equal(items, expected)
    users = source.users()
    assert users.columns == ["user_id", "age", "gender", "occupation", "zip_prefix"]
    assert users.rows() == [
        (1, 24, "M", "technician", "857"),
        (2, 53, "F", "other", "021"),  # the leading zero kept: a code, not a number
        (3, 39, "M", "scientist", "T8H"),  # a Canadian postal code's forward sortation area
    ]
    assert source.table_path("user") == str(tmp_path / "ml-100k" / "u.user")
    assert source.table_path("item") == str(tmp_path / "ml-100k" / "u.item")


def test_rating_threshold_and_shipped_fold(tmp_path):
    root = _write_ml100k(tmp_path / "ml-100k")
    assert MovieLens100K(str(root)).interactions().collect()["rating"].min() >= 4.0
    fold = MovieLens100K(str(root), fold="u1", min_rating=None).interactions().collect()
    assert fold["split"].value_counts().sort("split").rows() == [("test", 2), ("train", 4)]
    data = prepare(
        MovieLens100K(str(root), fold="u1", min_rating=None),
        ShippedSplit(val_ratio=0.0),
        IDS_AND_HISTORY,
    )
    assert data.test.num_interactions == 2
    with pytest.raises(ValueError, match="fold must be one of"):
        MovieLens100K(str(root), fold="u9").interactions()


def test_malformed_files_name_the_file_and_what_was_found(tmp_path):
    root = _write_ml100k(tmp_path / "ml-100k")
    (root / "u.data").write_text("1\t1\tfive\t100\n")
    with pytest.raises(
        schema.SchemaError,
        match=r"u\.data \(movielens-100k ratings\): column 'rating' has type String.*Found columns: user_id",
    ):
        MovieLens100K(str(root)).interactions()
    (root / "u.user").write_text("1|24|M\n")
    with pytest.raises(
        schema.SchemaError,
        match=r"u\.user: expected 5 '\|'-separated fields .* found 3; first row: \(1, 24, 'M'\)",
    ):
        MovieLens100K(str(root)).users()
    (root / "u.user").write_text("1|24|M|technician|85711\n1|53|F|other|94043\n")
    with pytest.raises(schema.DataFileError, match="1 user_id values appear more than once"):
        MovieLens100K(str(root)).users()


def test_real_ml100k():
    source = MovieLens100K(str(shared_dataset("ml-100k")), min_rating=None)
    assert source.interactions().collect().height == 100_000
    items = source.items()
    assert items.height == 1682 and items.filter(pl.col("item_id") == 1)["genres"].to_list() == [
        ["Animation", "Children's", "Comedy"]
    ]
    assert items["genres"].explode().drop_nulls().n_unique() == 18
    data = prepare(MovieLens100K(str(shared_dataset("ml-100k"))), TemporalSplit(), IDS_AND_HISTORY)
    assert data.num_users > 900


def test_real_ml100k_users_match_u_user():
    folder = shared_dataset("ml-100k")
    lines = (folder / "u.user").read_text(encoding="latin-1").splitlines()
    expected = []
    for line in lines:
        user, age, gender, occupation, zip_code = line.split("|")
        expected.append((int(user), int(age), gender, occupation, zip_code[:3].upper()))
    users = MovieLens100K(str(folder)).users()
    assert users.rows() == expected and users.height == 943
    assert users.filter(pl.col("user_id") == 74).row(0) == (74, 39, "M", "scientist", "T8H")
    assert users["zip_prefix"].n_unique() == 382
