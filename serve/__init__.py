"""serve/: export a bundle (item vectors + FAISS index + user tower), load it, recommend.

Never imports the LightningModule: it loads plain tower modules from the bundle."""

from serve.bundle import FORMAT_VERSION, Bundle, export_bundle, read_bundle
from serve.errors import BundleError, UnknownIdError, UnknownItemError, UnknownUserError
from serve.index import build_index
from serve.recommender import Recommendation, Recommender

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "Recommendation",
    "Recommender",
    "UnknownIdError",
    "UnknownItemError",
    "UnknownUserError",
    "build_index",
    "export_bundle",
    "read_bundle",
]
