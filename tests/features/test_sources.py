import csv
import gzip
import statistics

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import schema
from features.sources import LightGCN, MovieLens, Synthetic, bundled_dir, scan_lightgcn, scan_movies
from features.spec import FeaturesConfig
from tests.conftest import shared_dataset

# Ids and a short history: the spec for source tests that run `prepare` (tables are not read).
IDS_AND_HISTORY = FeaturesConfig.parse(
    {
        "user": {"features": {"user_id": {"kind": "id"}, "history": {"kind": "history"}}},
        "item": {"features": {"item_id": {"kind": "id"}}},
    }
)


def test_bundled_movielens_ships_with_its_licence_and_reads_positives_only():
    folder = bundled_dir()
    assert (folder / "README.txt").is_file() and (folder / "tags.csv.gz").is_file()
    lf = MovieLens().interactions()
    df = lf.collect()
    assert df.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert df["rating"].min() >= 4.0
    assert df.height == 48_580  # ratings >= 4.0 in ml-latest-small
    all_df = MovieLens(min_rating=None).interactions().collect()
    assert all_df.height == 100_836


def test_movie_titles_give_genre_lists_and_release_years(tmp_path):
    path = tmp_path / "movies.csv"
    path.write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '2,"Heat, The (1995) ",Action\n3,No Year,(no genres listed)\n'
    )
    df = scan_movies(path).collect()
    expected = pl.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Toy Story (1995)", "Heat, The (1995) ", "No Year"],
            "genres": [["Adventure", "Animation"], ["Action"], []],
            "year": pl.Series([1995, 1995, None], dtype=pl.Int32),
        }
    )
    assert_frame_equal(df, expected)


def test_movielens_reads_gzip_and_plain_csv_the_same(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,10,4.5,100\n2,10,3.0,50\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "ratings.csv").write_text(text)
    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "ratings.csv.gz", "wt") as f:
        f.write(text)
    plain = MovieLens(root=str(tmp_path / "plain")).interactions().collect()
    assert_frame_equal(plain, MovieLens(root=str(tmp_path / "gz")).interactions().collect())
    assert plain["user_id"].to_list() == [1]


def test_movielens_missing_column_is_named_with_the_file(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,itemId,rating,timestamp\n1,2,4.0,3\n")
    with pytest.raises(
        schema.SchemaError, match=r"ratings.csv: missing column 'movieId'.*Found columns: userId"
    ):
        MovieLens(root=str(tmp_path)).interactions().collect()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"movielens ratings: no file at .*ratings\.csv"):
        MovieLens(root=str(tmp_path)).interactions()


def test_lightgcn_lines_become_pairs_with_the_shipped_split(tmp_path):
    (tmp_path / "train.txt").write_text("0 5 6 7\n1 5\n\n")
    (tmp_path / "test.txt").write_text("0 8\n1 9 10\n")
    df = LightGCN(root=str(tmp_path)).interactions().collect()
    assert df.rows() == [
        (0, 5, "train"),
        (0, 6, "train"),
        (0, 7, "train"),
        (1, 5, "train"),
        (0, 8, "test"),
        (1, 9, "test"),
        (1, 10, "test"),
    ]


def test_lightgcn_rejects_non_integer_ids_naming_the_file(tmp_path):
    (tmp_path / "train.txt").write_text("0 5 x\n")
    with pytest.raises(schema.SchemaError, match=r"train.txt: expected integer ids.*'x'"):
        scan_lightgcn(tmp_path / "train.txt")


def test_lightgcn_gowalla_counts_match_the_published_split():
    root = shared_dataset("lightgcn-gowalla")
    df = LightGCN(root=str(root)).interactions().collect()
    counts = dict(df.group_by("split").len().iter_rows())
    assert counts == {"train": 810_128, "test": 217_242}
    assert df["user_id"].n_unique() == 29_858
    assert df["item_id"].n_unique() == 40_981


def test_synthetic_is_deterministic_and_planted():
    a, b = Synthetic(seed=3), Synthetic(seed=3)
    assert_frame_equal(a.interactions().collect(), b.interactions().collect())
    items = a.items()
    assert items.height == 500
    assert a.interactions().collect()["item_id"].min() >= 500_000  # raw ids are not indices
    assert not Synthetic(seed=4).interactions().collect().equals(a.interactions().collect())


# ---------------------------------------------------------------------------------------------
# MovieLens tags: items get every tag given to them, users the tags they gave before the median
# time of their positives


def _rows(path) -> list[dict[str, str]]:
    """A (gzip'd) MovieLens CSV's rows, read with the csv module (independently of polars)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_bundled_tags_are_the_published_file():
    shared = shared_dataset("ml-latest-small") / "tags.csv"
    with gzip.open(bundled_dir() / "tags.csv.gz", "rb") as f:
        assert f.read() == shared.read_bytes()


def test_bundled_items_have_each_movies_distinct_tags_lower_cased_and_sorted():
    tag_rows = _rows(bundled_dir() / "tags.csv.gz")
    items = MovieLens().items()
    assert items.columns == ["item_id", "title", "genres", "year", "tags"]
    assert items.height == 9_742 and items["item_id"].is_unique().all()
    for movie in (1, 60756, 89774, 2):  # 2 (Jumanji) has tags from two users
        expected = sorted(
            {r["tag"].strip().lower() for r in tag_rows if r["movieId"] == str(movie)}
        )
        assert items.filter(pl.col("item_id") == movie)["tags"].to_list() == [expected]
    assert items.filter(pl.col("item_id") == 1)["tags"].to_list() == [["fun", "pixar"]]
    untagged = {int(r["movieId"]) for r in _rows(bundled_dir() / "movies.csv.gz")} - {
        int(r["movieId"]) for r in tag_rows
    }
    assert (items.filter(pl.col("item_id").is_in(untagged))["tags"].list.len() == 0).all()


def test_bundled_users_are_every_rater_with_the_tags_given_before_their_median_positive():
    ratings = _rows(bundled_dir() / "ratings.csv.gz")
    tag_rows = _rows(bundled_dir() / "tags.csv.gz")
    users = MovieLens().users()
    assert users.columns == ["user_id", "tags"]
    assert users["user_id"].to_list() == sorted({int(r["userId"]) for r in ratings})  # 610
    positive_times: dict[str, list[int]] = {}
    for r in ratings:
        if float(r["rating"]) >= 4.0:
            positive_times.setdefault(r["userId"], []).append(int(r["timestamp"]))
    medians = {user: statistics.median(times) for user, times in positive_times.items()}
    tagged: dict[int, set[str]] = {}  # every tagger, with the tags given before their median
    for r in tag_rows:
        before = int(r["timestamp"]) < medians.get(r["userId"], float("-inf"))
        tagged.setdefault(int(r["userId"]), set()).update(
            [r["tag"].strip().lower()] if before else []
        )
    expected = {user: sorted(tags) for user, tags in tagged.items()}
    got = dict(users.iter_rows())
    assert {u: got[u] for u in expected} == expected
    assert all(tags == [] for u, tags in got.items() if u not in expected)
    assert got[2] == ["funny", "highly quotable", "will ferrell"] and got[1] == []
    assert sum(1 for tags in got.values() if tags) == 32


def _write_movielens(root, tags: str | None):
    root.mkdir()
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,5.0,10\n1,11,5.0,20\n1,12,1.0,30\n1,13,5.0,40\n"  # positives at 10, 20, 40
        "2,10,2.0,10\n"  # no positive
        "3,11,4.0,50\n"  # never tagged
    )
    (root / "movies.csv").write_text(
        "movieId,title,genres\n10,A (1990),Drama\n11,B (1991),Comedy\n12,C,Drama\n"
        "13,D,Drama\n14,Cold (2000),Horror\n"
    )
    if tags is not None:
        (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + tags)
    return root


def test_user_tags_stop_strictly_before_the_median_time_of_the_users_positives(tmp_path):
    tags = (
        "1,10, Pixar ,5\n1,11,funny,19\n1,11,late,20\n1,12,Later,35\n"  # 1's median: 20
        "2,10,sad,1\n"  # 2 has no positive: no median, no tags
        '1,14,"dark, gritty",7\n1,14,,8\n'  # a comma inside a tag; an empty tag is dropped
    )
    source = MovieLens(str(_write_movielens(tmp_path / "ml", tags)))
    users = source.users()
    assert users.rows() == [(1, ["dark, gritty", "funny", "pixar"]), (2, []), (3, [])]
    items = source.items()
    assert dict(items.select("item_id", "tags").iter_rows()) == {
        10: ["pixar", "sad"],
        11: ["funny", "late"],
        12: ["later"],
        13: [],
        14: ["dark, gritty"],  # an item without ratings keeps its row and its tags
    }
    # With every rating a positive, user 1's median is 25 (10, 20, 30, 40): "late" is earlier.
    all_ratings = MovieLens(str(tmp_path / "ml"), min_rating=None).users()
    assert all_ratings.row(0) == (1, ["dark, gritty", "funny", "late", "pixar"])
    assert source.table_path("user") == str(tmp_path / "ml" / "tags.csv")
    assert source.table_path("item") == str(tmp_path / "ml" / "movies.csv")


def test_a_folder_without_tags_has_no_tags_column_and_no_users_table(tmp_path):
    source = MovieLens(str(_write_movielens(tmp_path / "ml", None)))
    assert source.items().columns == ["item_id", "title", "genres", "year"]
    assert source.users() is None
    assert source.table_path("user") == "movielens users"


def test_bad_tags_files_are_named(tmp_path):
    root = _write_movielens(tmp_path / "ml", "1,10,x,5\n")
    (root / "tags.csv").write_text("userId,movieId,label,timestamp\n1,10,x,5\n")
    with pytest.raises(schema.DataFileError, match="missing column 'tag'") as caught:
        MovieLens(str(root)).items()
    assert caught.value.path == str(root / "tags.csv") and caught.value.column == "tag"
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\nbob,10,x,5\n")
    with pytest.raises(schema.DataFileError) as caught:
        MovieLens(str(root)).users()
    assert (caught.value.path, caught.value.column) == (str(root / "tags.csv"), "userId")
    assert caught.value.values == ("bob",)


def test_every_source_names_its_tables():
    source = LightGCN(root="/nowhere")
    assert (source.users(), source.items()) == (None, None)
    assert source.table_path("item") == "lightgcn items"
    assert Synthetic().users() is None and Synthetic().table_path("user") == "synthetic users"
    with pytest.raises(ValueError, match="side must be one of"):
        source.table_path("items")
