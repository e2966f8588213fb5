"""MovieLens 100K in its original layout (GroupLens `ml-100k/`):

- `u.data`: tab-separated user, item, rating, timestamp (no header);
- `u.item`: '|'-separated, Latin-1: item, title, release date, video release date, IMDb URL,
  then 19 genre flags in the order of `u.genre`;
- `u.user`: '|'-separated user, age, gender, occupation, zip code;
- the shipped folds `u1.base`/`u1.test` ... `u5.*`, `ua.*`, `ub.*` (same layout as u.data).

`items()` is item_id, title, genres, year; `users()` is user_id, age, gender, occupation and
zip_prefix (see `zip_prefix`), one row per user.

Licence: research use only, no redistribution (see the dataset's README); never bundle it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import positives, table_label
from features.sources.movielens import release_year
from features.sources.text import read_delimited

# u.genre, in flag order. "unknown" is dropped from the genre lists (like "(no genres listed)").
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
TABLE_FILES = {"user": "u.user", "item": "u.item"}

AGE, GENDER, OCCUPATION, ZIP_PREFIX = "age", "gender", "occupation", "zip_prefix"
# The contract of every MovieLens users table (100K and 1M).
USERS = {schema.USER_ID: "id", AGE: "int", GENDER: "str", OCCUPATION: "str", ZIP_PREFIX: "str"}
ZIP_PREFIX_LENGTH = 3

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


def zip_prefix(zip_code: pl.Expr) -> pl.Expr:
    """A zip code's first three characters, upper-cased ("02138" → "021", "T8H1N" → "T8H"); null
    when empty. Three, not one: a US ZIP3 is a sectional centre, about a metropolitan area or a
    rural region (a Canadian code's first three are its forward sortation area, the same scale),
    the level at which taste varies with place (a city, a college town, the countryside); the
    first digit alone splits the US into ten multi-state zones. Rare prefixes (ml-100k has 382
    for 943 users) fall into the out-of-vocabulary bucket of a categorical's `min_count`."""
    prefix = zip_code.str.strip_chars().str.to_uppercase().str.slice(0, ZIP_PREFIX_LENGTH)
    return pl.when(prefix != "").then(prefix)


def scan_ml100k_users(path: str | Path) -> pl.LazyFrame:
    """u.user → user_id, age, gender, occupation, zip_prefix."""
    columns = [schema.USER_ID, AGE, GENDER, OCCUPATION, "zip_code"]
    kinds = {schema.USER_ID: "int", AGE: "int", GENDER: "str", OCCUPATION: "str"}
    return scan_users(path, columns, kinds, "movielens-100k users", "|", pl.col(OCCUPATION))


def scan_users(
    path: str | Path,
    columns: list[str],
    kinds: dict[str, str],
    what: str,
    separator: str,
    occupation: pl.Expr,
) -> pl.LazyFrame:
    """A MovieLens users file (Latin-1, zip codes kept as text) → user_id, age, gender,
    occupation (as `occupation` reads it), zip_prefix."""
    lf = read_delimited(
        path, columns, kinds, what, separator=separator, encoding="latin-1", strings=["zip_code"]
    )
    return lf.select(
        schema.USER_ID,
        pl.col(AGE).cast(pl.Int32),
        GENDER,
        occupation.alias(OCCUPATION),
        zip_prefix(pl.col("zip_code")).alias(ZIP_PREFIX),
    )


def users_table(users_lf: pl.LazyFrame, source: str, path: Path) -> pl.DataFrame:
    """A MovieLens users frame checked against `USERS` and as a side table (one row per user)."""
    users_df = schema.validate(users_lf, USERS, source).collect()
    return schema.validate_table(users_df, schema.USER_ID, source, path)


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
        """item_id, title, genres, year."""
        path = self.folder / "u.item"
        items_df = scan_ml100k_items(path).collect()
        return schema.validate_table(items_df, schema.ITEM_ID, f"{self.name} items", path)

    def users(self) -> pl.DataFrame:
        """user_id, age, gender, occupation, zip_prefix."""
        path = self.folder / "u.user"
        return users_table(scan_ml100k_users(path), f"{self.name} users", path)

    def table_path(self, side: str) -> str:
        return table_label(self.name, side, {s: self.folder / f for s, f in TABLE_FILES.items()})
