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

BUNDLED_NAME = "ml-latest-small"


def bundled_dir() -> Path:
    """Folder of the bundled ml-latest-small (ratings.csv.gz, movies.csv.gz, README.txt)."""
    return Path(str(resources.files("features") / "data" / BUNDLED_NAME))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    return existing_file(root / f"{stem}.csv", f"movielens {stem}")


def _read_csv(path: Path, dtypes: dict[str, pl.DataType]) -> pl.LazyFrame:
    # polars scans plain CSV lazily; gzip'd CSV has to be read eagerly first.
    if path.suffix == ".gz":
        return pl.read_csv(path, schema_overrides=dtypes).lazy()
    return pl.scan_csv(path, schema_overrides=dtypes)


def scan_ratings(path: str | Path) -> pl.LazyFrame:
    """ratings.csv → user_id, item_id, rating, timestamp."""
    path = existing_file(path, "movielens ratings")
    lf = _read_csv(path, {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64})
    lf = schema.validate(
        lf, {"userId": "id", "movieId": "id", "rating": "float", "timestamp": "int"}, str(path)
    )
    return lf.select(
        pl.col("userId").alias(schema.USER_ID),
        pl.col("movieId").alias(schema.ITEM_ID),
        pl.col("rating").cast(pl.Float64).alias(schema.RATING),
        pl.col("timestamp").cast(pl.Int64).alias(schema.TIMESTAMP),
    )


def release_year(title: pl.Expr) -> pl.Expr:
    """The year in parentheses at the end of a MovieLens title ("Heat (1995)" → 1995), else null."""
    return title.str.extract(r"\((\d{4})\)\s*$", 1).cast(pl.Int32, strict=False)


def genre_list(genres: pl.Expr) -> pl.Expr:
    """ "Adventure|Comedy" → ["Adventure", "Comedy"]; "(no genres listed)" → []."""
    return genres.str.split("|").list.eval(
        pl.element().filter(pl.element() != "(no genres listed)")
    )


def scan_movies(path: str | Path) -> pl.LazyFrame:
    """movies.csv → item_id, title, genres (list of str), year."""
    path = existing_file(path, "movielens movies")
    lf = _read_csv(path, {"movieId": pl.Int64})
    lf = schema.validate(lf, {"movieId": "id", "title": "str", "genres": "str"}, str(path))
    return lf.select(
        pl.col("movieId").alias(schema.ITEM_ID),
        pl.col("title").alias(schema.TITLE),
        genre_list(pl.col("genres")).alias(schema.GENRES),
        release_year(pl.col("title")).alias(schema.YEAR),
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
