"""MovieLens in its CSV layout (ml-latest-small, ml-latest, ml-20m, ml-25m):
`ratings.csv` (userId, movieId, rating, timestamp), `movies.csv` (movieId, title, genres) and,
when the folder has it, `tags.csv` (userId, movieId, tag, timestamp).

The bundled default dataset is ml-latest-small (ratings, movies and tags), shipped gzip'd as
package data with its README (GroupLens licence: non-commercial use, cite GroupLens).

Tags (stripped and lower-cased: "Pixar " and "pixar" are one tag; empty ones dropped):
- an item's `tags` are every distinct tag any user gave the movie, from the whole file, sorted: a
  tag describes the movie's content, like its genres;
- a user's `tags` are the distinct tags the user gave strictly before the median time of their
  interactions (the positives this source hands over), sorted; [] for a user who tagged nothing
  then. Users tag a movie minutes after rating it (94% of ml-latest-small's tags are on movies
  their tagger rated), so a user's tags name the movies they saw: the cut keeps the tags of the
  first half of their history, before any validation or test interaction of a per-user temporal
  split that holds out at most the latest half. What it cannot know is the split's cold items and
  cold users: a cold item tagged before its tagger's median puts the same tag in the item's tags
  and the user's (a cold-user evaluation sees all of a cold user's tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, normalised_tag, positives, table_label
from features.sources.checks import check_text, id_values, reading, time_values
from features.sources.interactions import InteractionFile, read_interactions
from features.sources.tables import match_id_type

BUNDLED_NAME = "ml-latest-small"
TAG, MEDIAN_TIME = "tag", "median_time"
NO_TAGS = pl.lit([], pl.List(pl.String))


def bundled_dir() -> Path:
    """Folder of the bundled ml-latest-small (ratings, movies and tags .csv.gz, README.txt)."""
    return Path(str(resources.files("features") / "data" / BUNDLED_NAME))


def _find(root: Path, stem: str) -> Path:
    return _find_optional(root, stem) or existing_file(root / f"{stem}.csv", f"movielens {stem}")


def _find_optional(root: Path, stem: str) -> Path | None:
    """`root`'s `stem`.csv or `stem`.csv.gz, None when it has neither."""
    return next(
        (root / name for name in (f"{stem}.csv", f"{stem}.csv.gz") if (root / name).is_file()),
        None,
    )


RATINGS_COLUMNS = {
    schema.USER_ID: "userId",
    schema.ITEM_ID: "movieId",
    schema.RATING: "rating",
    schema.TIMESTAMP: "timestamp",
}


def scan_ratings(path: str | Path) -> pl.LazyFrame:
    """ratings.csv → user_id, item_id, rating, timestamp, read and checked at once (a bad file is
    a `schema.DataFileError` naming it, the column and a sample of the bad values)."""
    ratings = InteractionFile(
        path, RATINGS_COLUMNS, required=tuple(RATINGS_COLUMNS), what="movielens ratings"
    )
    df = read_interactions(ratings)
    return df.select(schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP).lazy()


def release_year(title: pl.Expr) -> pl.Expr:
    """The year in parentheses at the end of a MovieLens title ("Heat (1995)" → 1995), else null."""
    return title.str.extract(r"\((\d{4})\)\s*$", 1).cast(pl.Int32, strict=False)


def genre_list(genres: pl.Expr) -> pl.Expr:
    """ "Adventure|Comedy" → ["Adventure", "Comedy"]; "(no genres listed)" → []."""
    return genres.str.split("|").list.eval(
        pl.element().filter(pl.element() != "(no genres listed)")
    )


def _read_text_columns(path: Path, columns: Sequence[str], what: str) -> pl.DataFrame:
    """A MovieLens CSV with its `columns` read as text (parsed by the caller, with named errors):
    a DataFileError when the file is not text, is empty, or misses one of them."""
    check_text(path)
    with reading(path):
        options = {"schema_overrides": {name: pl.String for name in columns}}
        df = (  # gzip'd CSV is read eagerly
            pl.read_csv(path, **options)
            if path.suffix == ".gz"
            else pl.scan_csv(path, **options).collect()
        )
    missing = [name for name in columns if name not in df.columns]
    if missing:
        found = ", ".join(f"{n}: {t}" for n, t in df.schema.items())
        raise schema.DataFileError(
            path, missing[0], f"missing column {missing[0]!r}. Found columns: {found}", what=what
        )
    if df.height == 0:
        raise schema.DataFileError(path, None, "has no data rows", what=what)
    return df


def scan_movies(path: str | Path) -> pl.LazyFrame:
    """movies.csv → item_id, title, genres (list of str), year, read and checked at once."""
    path = existing_file(path, "movielens movies")
    df = _read_text_columns(path, ("movieId", "title", "genres"), "movielens movies")
    item_ids = id_values(df["movieId"], path, "movieId", schema.ITEM_ID)
    return (
        df.with_columns(item_ids)
        .lazy()
        .select(
            schema.ITEM_ID,
            pl.col("title").alias(schema.TITLE),
            genre_list(pl.col("genres")).alias(schema.GENRES),
            release_year(pl.col("title")).alias(schema.YEAR),
        )
    )


def scan_tags(
    path: str | Path,
    user_dtype: pl.DataType = pl.Int64,
    item_dtype: pl.DataType = pl.Int64,
) -> pl.LazyFrame:
    """tags.csv → user_id, item_id, tag (normalised; empty ones dropped), timestamp, read and
    checked at once; ids typed to join ratings whose ids are `user_dtype` / `item_dtype`."""
    path = existing_file(path, "movielens tags")
    what = "movielens tags"
    df = _read_text_columns(path, ("userId", "movieId", "tag", "timestamp"), what)
    user_ids = id_values(df["userId"], path, "userId", schema.USER_ID, what=what)
    item_ids = id_values(df["movieId"], path, "movieId", schema.ITEM_ID, what=what)
    return (
        pl.DataFrame(
            [
                match_id_type(user_ids, user_dtype, path, "userId", what),
                match_id_type(item_ids, item_dtype, path, "movieId", what),
                df["tag"].alias(TAG),
                time_values(df["timestamp"], path, "timestamp", None, what),
            ]
        )
        .lazy()
        .with_columns(normalised_tag(pl.col(TAG)))
        .filter(pl.col(TAG).fill_null("") != "")
    )


def item_tags(tags_lf: pl.LazyFrame) -> pl.LazyFrame:
    """item_id, tags: every distinct tag each movie was given, sorted."""
    return tags_lf.group_by(schema.ITEM_ID).agg(pl.col(TAG).unique().sort().alias(schema.TAGS))


def user_tags(tags_lf: pl.LazyFrame, interactions_lf: pl.LazyFrame) -> pl.LazyFrame:
    """user_id, tags: the distinct tags each user gave strictly before the median time of their
    `interactions_lf`, sorted (users without interactions or without such tags are left out)."""
    medians_lf = interactions_lf.group_by(schema.USER_ID).agg(
        pl.col(schema.TIMESTAMP).median().alias(MEDIAN_TIME)
    )
    return (
        tags_lf.join(medians_lf, on=schema.USER_ID, how="inner")
        .filter(pl.col(schema.TIMESTAMP) < pl.col(MEDIAN_TIME))
        .group_by(schema.USER_ID)
        .agg(pl.col(TAG).unique().sort().alias(schema.TAGS))
    )


def _with_tags(table_lf: pl.LazyFrame, tags_lf: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """`table_lf` with the `tags` of `tags_lf` (key, tags); [] for keys it does not have."""
    return table_lf.join(tags_lf, on=key, how="left", maintain_order="left").with_columns(
        pl.col(schema.TAGS).fill_null(NO_TAGS)
    )


@dataclass
class MovieLens:
    """A MovieLens CSV dataset; `root=None` reads the bundled ml-latest-small.

    Ratings at or above `min_rating` are the positive interactions. `items()`: item_id, title,
    genres, year and, with a tags file, tags. `users()`: with a tags file, every user of the
    ratings with their tags (see the module docstring); None without one.
    """

    root: str | None = None
    min_rating: float | None = 4.0
    name: str = "movielens"

    @property
    def folder(self) -> Path:
        return bundled_dir() if self.root is None else Path(self.root).expanduser()

    def interactions(self) -> pl.LazyFrame:
        return positives(scan_ratings(_find(self.folder, "ratings")), self.min_rating)

    def items(self) -> pl.DataFrame:
        path = _find(self.folder, "movies")
        items_lf = scan_movies(path)
        tags_path = _find_optional(self.folder, "tags")
        if tags_path is not None:
            item_dtype = items_lf.collect_schema()[schema.ITEM_ID]
            tags_lf = scan_tags(tags_path, item_dtype=item_dtype)
            items_lf = _with_tags(items_lf, item_tags(tags_lf), schema.ITEM_ID)
        return schema.validate_table(items_lf.collect(), schema.ITEM_ID, f"{self.name} items", path)

    def users(self) -> pl.DataFrame | None:
        tags_path = _find_optional(self.folder, "tags")
        if tags_path is None:
            return None
        ratings_df = scan_ratings(_find(self.folder, "ratings")).collect()
        tags_lf = scan_tags(
            tags_path, ratings_df.schema[schema.USER_ID], ratings_df.schema[schema.ITEM_ID]
        )
        users_lf = ratings_df.lazy().select(pl.col(schema.USER_ID).unique().sort())
        tagged_lf = user_tags(tags_lf, positives(ratings_df.lazy(), self.min_rating))
        users_df = _with_tags(users_lf, tagged_lf, schema.USER_ID).collect()
        return schema.validate_table(users_df, schema.USER_ID, f"{self.name} users", tags_path)

    def table_path(self, side: str) -> str:
        paths = {"item": _find_optional(self.folder, "movies")}
        paths["user"] = _find_optional(self.folder, "tags")
        return table_label(self.name, side, paths)
