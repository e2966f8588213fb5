"""towers/: the user and item towers, the loss, ranking metrics and the LightningModule.

`TwoTowerModule` (and with it Lightning) is imported only when asked for, so `serve/` can load
plain towers without importing the training stack."""

from towers.config import ConfigError, NegativeConfig, OptimConfig
from towers.losses import CosineContrastiveLoss, SampledSoftmaxLoss
from towers.metrics import KS, METRICS, RankingMetrics, metric_name
from towers.ranking import exact_top_k
from towers.scoring import Scorer
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower

_LAZY = {"TwoTowerModule", "ItemCatalogue"}


def __getattr__(name: str):
    if name in _LAZY:
        from towers import module

        return getattr(module, name)
    raise AttributeError(f"module 'towers' has no attribute {name!r}")


__all__ = [
    "KS",
    "METRICS",
    "ConfigError",
    "CosineContrastiveLoss",
    "FeatureSpec",
    "ItemCatalogue",
    "ItemTower",
    "NegativeConfig",
    "OptimConfig",
    "RankingMetrics",
    "SampledSoftmaxLoss",
    "Scorer",
    "Similarity",
    "TowerConfig",
    "TwoTowerModule",
    "UserTower",
    "exact_top_k",
    "metric_name",
]
