"""features/: polars pipelines from raw files to tensors. Nothing past `InteractionDataModule`
sees a polars frame."""

from features.datamodule import InteractionDataModule
from features.prepare import HeldOut, PreparedData, prepare
from features.schema import SchemaError
from features.vocab import Vocabulary

__all__ = [
    "HeldOut",
    "InteractionDataModule",
    "PreparedData",
    "SchemaError",
    "Vocabulary",
    "prepare",
]
