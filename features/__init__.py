"""features/: polars pipelines from raw files to tensors. Nothing past `InteractionDataModule`
sees a polars frame.

`InteractionDataModule` (and with it Lightning) is imported only when asked for, so serving can
use the vocabulary and array helpers without importing the training stack."""

from features.prepare import HeldOut, PreparedData, prepare
from features.schema import DataFileError, SchemaError
from features.split import EmptySplitError
from features.vocab import Vocabulary


def __getattr__(name: str):
    if name == "InteractionDataModule":
        from features.datamodule import InteractionDataModule

        return InteractionDataModule
    raise AttributeError(f"module 'features' has no attribute {name!r}")


__all__ = [
    "DataFileError",
    "EmptySplitError",
    "HeldOut",
    "InteractionDataModule",
    "PreparedData",
    "SchemaError",
    "Vocabulary",
    "prepare",
]
