"""MovieLens in its CSV layout (ml-latest-small, ml-latest, ml-20m, ml-25m):
`ratings.csv` (userId, movieId, rating, timestamp) and `movies.csv` (movieId, title, genres).

The bundled default dataset is ml-latest-small, shipped gzip'd as package data with its README
(GroupLens licence: non-commercial use, cite GroupLens)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import existing_file, positives
from features.sources.checks import check_text, id_values, reading
from features.sources.interactions import read_interactions

BUNDLED_NAME = "ml-latest-small"


def bundled_dir() -> Path:
    """Folder of the bundled ml-latest-small (ratings.csv.gz, movies.csv.gz, README.txt)."""
    return Path(str(resources.files("features") / "data" / BUNDLED_NAME))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    return existing_file(root / f"{stem}.csv", f"movielens {stem}")


RATINGS_COLUMNS = {
    schema.USER_ID: "userId",
    schema.ITEM_ID: "movieId",
    schema.RATING: "rating",
    schema.TIMESTAMP: "timestamp",
}


def scan_ratings(path: str | Path) -> pl.LazyFrame:
    """ratings.csv → user_id, item_id, rating, timestamp, read and checked at once (a bad file is
    a `schema.DataFileError` naming it, the column and a sample of the bad values)."""
    df = read_interactions(
        path, RATINGS_COLUMNS, required=tuple(RATINGS_COLUMNS), what="movielens ratings"
    )
    return df.select(schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP).lazy()


def release_year(title: pl.Expr) -> pl.Expr:
    """The year in parentheses at the end of a MovieLens title ("Heat (1995)" → 1995), else null."""
    return title.str.extract(r"\((\d{4})\)\s*$", 1).cast(pl.Int32, strict=False)


def genre_list(genres: pl.Expr) -> pl.Expr:
    """ "Adventure|Comedy" → ["Adventure", "Comedy"]; "(no genres listed)" → []."""
    return genres.str.split("|").list.eval(
        pl.element().filter(pl.element() != "(no genres listed)")
    )


def scan_movies(path: str | Path) -> pl.LazyFrame:
    """movies.csv → item_id, title, genres (list of str), year, read and checked at once."""
    path = existing_file(path, "movielens movies")
    check_text(path)
    with reading(path):
        # Ids are read as text and checked here (named errors); gzip'd CSV is read eagerly.
        options = {"schema_overrides": {"movieId": pl.String}}
        df = (
            pl.read_csv(path, **options)
            if path.suffix == ".gz"
            else pl.scan_csv(path, **options).collect()
        )
    kinds = {"movieId": "id", "title": "str", "genres": "str"}
    missing = [name for name in kinds if name not in df.columns]
    if missing:
        found = ", ".join(f"{n}: {t}" for n, t in df.schema.items())
        raise schema.DataFileError(
            path, missing[0], f"missing column {missing[0]!r}. Found columns: {found}"
        )
    if df.height == 0:
        raise schema.DataFileError(path, None, "has no data rows")
    for name in ("title", "genres"):
        if df.schema[name] != pl.String:
            df = df.with_columns(pl.col(name).cast(pl.String))
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


@dataclass
class MovieLens:
    """A MovieLens CSV dataset; `root=None` reads the bundled ml-latest-small.

    Ratings at or above `min_rating` are the positive interactions.
    """

    root: str | None = None
    min_rating: float | None = 4.0
    name: str = "movielens"

    @property
    def folder(self) -> Path:
        return bundled_dir() if self.root is None else Path(self.root).expanduser()

    def interactions(self) -> pl.LazyFrame:
        lf = positives(scan_ratings(_find(self.folder, "ratings")), self.min_rating)
        return lf

    def items(self) -> pl.DataFrame:
        return scan_movies(_find(self.folder, "movies")).collect()
