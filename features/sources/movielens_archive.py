"""The official MovieLens archives (100K, 1M, 20M, 25M) from files.grouplens.org.

With `root` set, a local copy is read: the extracted folder itself, a folder that holds it
(`root/ml-1m/`), or a folder that holds the zip (`root/ml-1m.zip`, checked and extracted into
`cache_dir`). Without `root`, the zip is downloaded once into `cache_dir` with a progress bar,
checked against the MD5 GroupLens publishes beside it (`ml-1m.zip.md5`), and extracted.

Layouts: 100K is `u.data` / `u.item` / `u.user` (see `movielens_100k`); 1M is `::`-separated
Latin-1 `ratings.dat` / `movies.dat` / `users.dat`; 20M and 25M are the CSV layout of
`ratings.csv` / `movies.csv` / `tags.csv` (see `movielens`). Licence: research use, no
redistribution.

Tables: items are item_id, title, genres, year (and tags for 20M / 25M). Users are user_id, age,
gender, occupation, zip_prefix for 100K and 1M (1M's age is its age-group code, its occupation
the name of its occupation code), user_id and tags for 20M / 25M (see `movielens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from features import schema
from features.sources.base import positives, table_label
from features.sources.download import ChecksumError, download, extract_zip, md5_of
from features.sources.movielens import MovieLens, genre_list, release_year
from features.sources.movielens_100k import (
    AGE,
    GENDER,
    OCCUPATION,
    RATING_COLUMNS,
    RATING_KINDS,
    MovieLens100K,
    scan_users,
    users_table,
)
from features.sources.text import read_delimited

BASE_URL = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class ArchiveSpec:
    folder: str  # the zip's stem and top folder, e.g. "ml-1m"
    md5: str  # published in <BASE_URL>/<folder>.zip.md5
    layout: str  # "100k", "dat" (1M) or "csv" (20M, 25M)


ARCHIVES = {
    "100k": ArchiveSpec("ml-100k", "0e33842e24a9c977be4e0107933c0723", "100k"),
    "1m": ArchiveSpec("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "dat"),
    "20m": ArchiveSpec("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "csv"),
    "25m": ArchiveSpec("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "csv"),
}
MARKER = {
    "100k": "u.data",
    "dat": "ratings.dat",
    "csv": "ratings.csv",
}  # the file that proves a folder

# ml-1m users.dat occupation codes (its README).
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip


def scan_ml1m_ratings(path: str | Path) -> pl.LazyFrame:
    """ratings.dat (UserID::MovieID::Rating::Timestamp) → user_id, item_id, rating, timestamp."""
    lf = read_delimited(path, RATING_COLUMNS, RATING_KINDS, "movielens-1m ratings", separator="::")
    return lf.with_columns(
        pl.col(schema.RATING).cast(pl.Float64), pl.col(schema.TIMESTAMP).cast(pl.Int64)
    )


def scan_ml1m_movies(path: str | Path) -> pl.LazyFrame:
    """movies.dat (MovieID::Title::Genres, Latin-1) → item_id, title, genres, year."""
    columns = (schema.ITEM_ID, schema.TITLE, schema.GENRES)
    kinds = {schema.ITEM_ID: "int", schema.TITLE: "str", schema.GENRES: "str"}
    lf = read_delimited(
        path, columns, kinds, "movielens-1m movies", separator="::", encoding="latin-1"
    )
    return lf.select(
        schema.ITEM_ID,
        schema.TITLE,
        genre_list(pl.col(schema.GENRES)).alias(schema.GENRES),
        release_year(pl.col(schema.TITLE)).alias(schema.YEAR),
    )


def occupation_name(code: pl.Expr) -> pl.Expr:
    """ml-1m occupation code (0-20) → its name; null for codes outside the table."""
    return code.replace_strict(
        list(range(len(OCCUPATIONS_1M))), list(OCCUPATIONS_1M), default=None, return_dtype=pl.String
    )


def scan_ml1m_users(path: str | Path) -> pl.LazyFrame:
    """users.dat (UserID::Gender::Age::Occupation::Zip-code) → user_id, age, gender, occupation,
    zip_prefix.

    `age` is 1M's age-group code (1: under 18, 18: 18-24, 25, 35, 45, 50, 56: 56+), best read as
    a category; `occupation` the name of its code (0-20, `OCCUPATIONS_1M`): a category either
    way, and a name reads as text too."""
    columns = [schema.USER_ID, GENDER, AGE, OCCUPATION, "zip_code"]
    kinds = {schema.USER_ID: "int", GENDER: "str", AGE: "int", OCCUPATION: "int"}
    occupation = occupation_name(pl.col(OCCUPATION))
    return scan_users(path, columns, kinds, "movielens-1m users", "::", occupation)


@dataclass
class MovieLensArchive:
    """An official MovieLens release; ratings >= `min_rating` are the positives."""

    version: str = "1m"  # "100k", "1m", "20m" or "25m"
    root: str | None = None  # a local copy (see the module docstring); None: download
    cache_dir: str = "~/.cache/twotower/datasets"  # downloads and extractions go here
    min_rating: float | None = 4.0
    allow_download: bool = True  # False: fail instead of downloading when there is no copy
    name: str = "movielens_archive"

    def __post_init__(self) -> None:
        if self.version not in ARCHIVES:
            raise ValueError(
                f"MovieLensArchive: version must be one of {sorted(ARCHIVES)}, got {self.version!r}"
            )

    @property
    def spec(self) -> ArchiveSpec:
        return ARCHIVES[self.version]

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.spec.folder}.zip"

    def _is_copy(self, folder: Path) -> bool:
        return (folder / MARKER[self.spec.layout]).is_file()

    def _from_zip(self, archive: Path) -> Path:
        got = md5_of(archive)
        if got != self.spec.md5:
            raise ChecksumError(
                f"{archive}: MD5 {got} does not match the published {self.spec.md5} for {self.url}"
            )
        cache = Path(self.cache_dir).expanduser()
        extract_zip(archive, cache)
        return cache / self.spec.folder

    @cached_property
    def folder(self) -> Path:
        """The extracted release folder, downloading and extracting it first when needed."""
        spec = self.spec
        cache = Path(self.cache_dir).expanduser()
        if self.root is not None:
            root = Path(self.root).expanduser()
            for candidate in (root, root / spec.folder, cache / spec.folder):
                if self._is_copy(candidate):
                    return candidate
            if (root / f"{spec.folder}.zip").is_file():
                return self._from_zip(root / f"{spec.folder}.zip")
            raise FileNotFoundError(
                f"movielens {self.version}: no {MARKER[spec.layout]} in {root} or {root / spec.folder}, "
                f"and no {spec.folder}.zip in {root}"
            )
        if self._is_copy(cache / spec.folder):
            return cache / spec.folder
        archive = cache / f"{spec.folder}.zip"
        if not archive.is_file():
            if not self.allow_download:
                raise FileNotFoundError(
                    f"movielens {self.version}: no copy in {cache} and downloads are off; set root or allow_download"
                )
            download(self.url, archive, spec.md5)
        return self._from_zip(archive)

    def _layout_source(self) -> MovieLens100K | MovieLens | None:
        """The source that reads this release's layout (None for 1M's, read here)."""
        layout = self.spec.layout
        if layout == "100k":
            return MovieLens100K(str(self.folder), self.min_rating, name=self.name)
        if layout == "csv":
            return MovieLens(str(self.folder), self.min_rating, name=self.name)
        return None

    def interactions(self) -> pl.LazyFrame:
        source = self._layout_source()
        if source is not None:
            return source.interactions()
        return positives(scan_ml1m_ratings(self.folder / "ratings.dat"), self.min_rating)

    def items(self) -> pl.DataFrame:
        source = self._layout_source()
        if source is not None:
            return source.items()
        path = self.folder / "movies.dat"
        items_df = scan_ml1m_movies(path).collect()
        return schema.validate_table(items_df, schema.ITEM_ID, f"{self.name} items", path)

    def users(self) -> pl.DataFrame | None:
        """100K, 1M: user_id, age, gender, occupation, zip_prefix; 20M, 25M: user_id, tags."""
        source = self._layout_source()
        if source is not None:
            return source.users()
        path = self.folder / "users.dat"
        return users_table(scan_ml1m_users(path), f"{self.name} users", path)

    def table_path(self, side: str) -> str:
        source = self._layout_source()
        if source is not None:
            return source.table_path(side)
        paths = {"user": self.folder / "users.dat", "item": self.folder / "movies.dat"}
        return table_label(self.name, side, paths)
