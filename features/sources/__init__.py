"""Data sources: each reads one dataset layout into the same validated interactions frame."""

from features.sources.base import Source
from features.sources.lightgcn import LightGCN, scan_lightgcn
from features.sources.movielens import MovieLens, bundled_dir, scan_movies, scan_ratings
from features.sources.synthetic import Synthetic

__all__ = [
    "LightGCN",
    "MovieLens",
    "Source",
    "Synthetic",
    "bundled_dir",
    "scan_lightgcn",
    "scan_movies",
    "scan_ratings",
]
