"""Data sources: each reads one dataset layout into the same validated interactions frame and,
when the dataset has them, users and items tables (one row per key, see `base.Source`)."""

from features.sources.base import Source
from features.sources.download import ChecksumError
from features.sources.files import scan_table
from features.sources.interactions import InteractionFile, Interactions, read_interactions
from features.sources.lastfm import LastFMHetRec
from features.sources.lightgcn import LightGCN, scan_lightgcn
from features.sources.movielens import MovieLens, bundled_dir, scan_movies, scan_ratings
from features.sources.movielens_100k import MovieLens100K
from features.sources.movielens_archive import MovieLensArchive
from features.sources.s3rec import S3Rec
from features.sources.synthetic import Synthetic
from features.sources.tables import read_table

__all__ = [
    "ChecksumError",
    "InteractionFile",
    "Interactions",
    "LastFMHetRec",
    "LightGCN",
    "MovieLens",
    "MovieLens100K",
    "MovieLensArchive",
    "S3Rec",
    "Source",
    "Synthetic",
    "bundled_dir",
    "read_interactions",
    "read_table",
    "scan_lightgcn",
    "scan_movies",
    "scan_ratings",
    "scan_table",
]
