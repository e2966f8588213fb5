"""serve/: export a bundle (item vectors + FAISS index + user tower), load it, recommend.

Never imports the LightningModule: it loads plain tower modules from the bundle."""

from serve.bundle import Bundle
from serve.errors import BundleError, UnknownIdError, UnknownItemError, UnknownUserError
from serve.export import export_bundle
from serve.files import FORMAT_VERSION
from serve.index import IndexConfig, build_index
from serve.recommender import Recommendation, Recommendations, Recommender
from serve.update import UpdateReport, update_items
from serve.versions import read_bundle

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "IndexConfig",
    "Recommendation",
    "Recommendations",
    "Recommender",
    "UnknownIdError",
    "UnknownItemError",
    "UnknownUserError",
    "UpdateReport",
    "build_index",
    "export_bundle",
    "read_bundle",
    "update_items",
]
