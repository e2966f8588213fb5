"""A logger that kills its own process (SIGKILL: no clean-up, as a crash or an OOM killer would)
right after the first epoch's last.ckpt is written. Used as `+logger.kill._target_=...`: the
logger group does not change what a run trains, so the resumed run's settings still match."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.loggers.logger import Logger


class KillAfterLastCheckpoint(Logger):
    name = "kill"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if checkpoint_callback._last_checkpoint_saved == checkpoint_callback.last_model_path:
            os.kill(os.getpid(), signal.SIGKILL)
