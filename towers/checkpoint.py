"""`Checkpoints`: Lightning's ModelCheckpoint with `last.ckpt` written at the end of every epoch.

Lightning 2.6 writes `last.ckpt` only at an epoch that also wrote a top-k checkpoint, so after
the best epoch it stops moving: a run killed later would resume from its best epoch and train
the epochs after it again, and a finished run rerun with `resume` would too. `resume` continues
from `last.ckpt`, so it must be the last epoch done.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoints(ModelCheckpoint):
    """ModelCheckpoint (the same arguments) whose `last.ckpt` follows every epoch."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: L.Trainer) -> None:
        """last.ckpt at this step, unless the parent wrote it already or does not checkpoint now."""
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        if self.last_model_path and self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
