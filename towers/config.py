"""The training settings that are not the towers' shape: which negatives the loss sees
(`NegativeConfig`) and how the weights are updated (`OptimConfig`), each checked when it is
made. `ConfigError` names a setting that cannot work, by its config key."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting that cannot work: `setting` names it by its config key (e.g.
    "model.optim.schedule"), `value` is what was given, `reason` what is wrong."""

    def __init__(self, setting: str, value: object, reason: str):
        self.setting, self.value, self.reason = setting, value, reason
        super().__init__(f"{setting}={value!r}: {reason}")


DISTRIBUTIONS = ("uniform", "popularity")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class NegativeConfig:
    """Which candidates the loss contrasts each positive with. Defaults: the shipped recipe."""

    in_batch: bool = True  # the other examples' positives in the batch are negatives
    num_negatives: int = 1024  # extra negatives shared by the whole batch
    distribution: str = "uniform"  # "uniform" over the catalogue or "popularity" (training counts)

    def __post_init__(self) -> None:
        if self.num_negatives < 0:
            raise ConfigError(
                "model.negatives.num_negatives", self.num_negatives, "expected a count >= 0"
            )
        if not self.in_batch and self.num_negatives == 0:
            raise ConfigError(
                "model.negatives.num_negatives", 0, "in_batch=false leaves no negatives: give > 0"
            )
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                "model.negatives.distribution",
                self.distribution,
                f"expected one of {DISTRIBUTIONS}",
            )


@dataclass
class OptimConfig:
    """Optimisers and learning-rate schedule. Defaults: the shipped recipe."""

    lr: float = 0.01  # learning rate of the embedding tables
    dense_lr: float | None = 0.001  # everything else (projections, MLPs); None = lr
    weight_decay: float = 0.0  # AdamW decay of dense parameters
    embedding_l2: float = 0.0  # L2 penalty on the embedding rows a batch touches
    schedule: str = "linear"  # "constant", or "linear" / "cosine" decay to zero over the run
    warmup_steps: int = 0  # linear warm-up steps
    text_lr: float = 2e-5  # a text feature's fine-tuned layers (its fine_tune_layers)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError("model.optim.schedule", self.schedule, f"expected one of {SCHEDULES}")
        names = ("lr", "dense_lr", "text_lr", "weight_decay", "embedding_l2", "warmup_steps")
        for name in names:
            value = getattr(self, name)
            if value is not None and not value >= 0:  # 0 freezes (a planted non-learner)
                raise ConfigError(f"model.optim.{name}", value, "expected a value >= 0")
