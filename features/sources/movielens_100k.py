"""MovieLens 100K in its original layout (GroupLens `ml-100k/`):

- `u.data`: tab-separated user, item, rating, timestamp (no header);
- `u.item`: '|'-separated, Latin-1: item, title, release date, video release date, IMDb URL,
  then 19 genre flags in the order of `u.genre`;
- `u.user`: '|'-separated user, age, gender, occupation, zip code;
- the shipped folds `u1.base`/`u1.test` ... `u5.*`, `ua.*`, `ub.*` (same layout as u.data).

`users()` exposes age, gender and occupation as a validated frame. The towers do not consume
user features yet; the frame is there for when they do (and for analysis).

Licence: research use only, no redistribution (see the dataset's README); never bundle it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import positives
from features.sources.movielens import release_year
from features.sources.text import read_delimited

# u.genre, in flag order. "unknown" is dropped from the genre lists (like "(no genres listed)").
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

AGE, GENDER, OCCUPATION = "age", "gender", "occupation"
# The contract of every users frame a source exposes.
USERS = {schema.USER_ID: "id", AGE: "int", GENDER: "str", OCCUPATION: "str"}

# MovieLens ratings files without a header (u.data, ratings.dat): their columns and kinds.
RATING_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP)
RATING_KINDS = dict(zip(RATING_COLUMNS, ("int", "int", "float", "int"), strict=True))


def scan_ml100k_ratings(path: str | Path) -> pl.LazyFrame:
    """u.data (or a fold's .base / .test) → user_id, item_id, rating, timestamp."""
    lf = read_delimited(
        path, RATING_COLUMNS, RATING_KINDS, "movielens-100k ratings", separator="\t"
    )
    return lf.with_columns(
        pl.col(schema.RATING).cast(pl.Float64), pl.col(schema.TIMESTAMP).cast(pl.Int64)
    )


def genre_flags_to_list(flags: list[str], names=GENRES) -> pl.Expr:
    """0/1 flag columns → list of the names whose flag is 1 ("unknown" left out)."""
    return pl.concat_list(
        [
            pl.when(pl.col(f) == 1).then(pl.lit(n))
            for f, n in zip(flags, names, strict=True)
            if n != "unknown"
        ]
    ).list.drop_nulls()


def date_year(date: pl.Expr) -> pl.Expr:
    """ "01-Jan-1995" → 1995; null when missing or malformed."""
    return date.str.extract(r"(\d{4})\s*$", 1).cast(pl.Int32, strict=False)


def scan_ml100k_items(path: str | Path) -> pl.LazyFrame:
    """u.item → item_id, title, genres (list of str), year (release date's, else the title's)."""
    flags = [f"genre_{i}" for i in range(len(GENRES))]
    columns = [
        schema.ITEM_ID,
        schema.TITLE,
        "release_date",
        "video_release_date",
        "imdb_url",
        *flags,
    ]
    kinds = {schema.ITEM_ID: "int", schema.TITLE: "str"} | {f: "int" for f in flags}
    lf = read_delimited(
        path, columns, kinds, "movielens-100k items", separator="|", encoding="latin-1"
    )
    return lf.select(
        pl.col(schema.ITEM_ID),
        pl.col(schema.TITLE),
        genre_flags_to_list(flags).alias(schema.GENRES),
        pl.coalesce(
            date_year(pl.col("release_date").cast(pl.String)), release_year(pl.col(schema.TITLE))
        )
        .cast(pl.Int32)
        .alias(schema.YEAR),
    )


def scan_ml100k_users(path: str | Path) -> pl.LazyFrame:
    """u.user → user_id, age, gender, occupation (zip code dropped)."""
    columns = [schema.USER_ID, AGE, GENDER, OCCUPATION, "zip_code"]
    kinds = {schema.USER_ID: "int", AGE: "int", GENDER: "str", OCCUPATION: "str"}
    lf = read_delimited(
        path, columns, kinds, "movielens-100k users", separator="|", encoding="latin-1"
    )
    return lf.select(schema.USER_ID, pl.col(AGE).cast(pl.Int32), GENDER, OCCUPATION)


@dataclass
class MovieLens100K:
    """The ml-100k folder. `fold` (u1..u5, ua, ub) takes the shipped train/test split instead of
    all of u.data (use it with `ShippedSplit`); ratings >= `min_rating` are the positives."""

    root: str
    min_rating: float | None = 4.0
    fold: str | None = None
    name: str = "movielens_100k"

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser()

    def interactions(self) -> pl.LazyFrame:
        if self.fold is None:
            lf = scan_ml100k_ratings(self.folder / "u.data")
        elif self.fold in FOLDS:
            lf = pl.concat(
                [
                    scan_ml100k_ratings(self.folder / f"{self.fold}.base").with_columns(
                        pl.lit("train").alias(schema.SPLIT)
                    ),
                    scan_ml100k_ratings(self.folder / f"{self.fold}.test").with_columns(
                        pl.lit("test").alias(schema.SPLIT)
                    ),
                ]
            )
        else:
            raise ValueError(
                f"movielens_100k: fold must be one of {FOLDS} or null, got {self.fold!r}"
            )
        return positives(lf, self.min_rating)

    def items(self) -> pl.DataFrame:
        return scan_ml100k_items(self.folder / "u.item").collect()

    def users(self) -> pl.DataFrame:
        """user_id, age, gender, occupation (not yet used by the towers)."""
        users_lf = scan_ml100k_users(self.folder / "u.user")
        return schema.validate(users_lf, USERS, f"{self.name} users").collect()
