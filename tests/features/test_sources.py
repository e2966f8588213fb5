import gzip

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import schema
from features.sources import LightGCN, MovieLens, Synthetic, bundled_dir, scan_lightgcn, scan_movies
from tests.conftest import shared_dataset


def test_bundled_movielens_ships_with_its_licence_and_reads_positives_only():
    folder = bundled_dir()
    assert (folder / "README.txt").is_file()
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
