"""A logger that kills its own process (SIGKILL: no clean-up, as a crash or the OOM killer would)
after the first checkpoint of one trial of a sweep (tests/test_hparams_search.py): the basic
launcher runs trials in the sweep's process, so the whole sweep dies mid-trial. Used as
`+logger.kill._target_=tests.kill_in_trial.KillInTrial +logger.kill.trial=N`; a trial knows its
number from its directory, <sweep dir>/<N>."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.loggers.logger import Logger


class KillInTrial(Logger):
    name, version = "kill", 0

    def __init__(self, trial: int):
        super().__init__()
        self.trial = trial

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if Path(checkpoint_callback.dirpath).parent.name == str(self.trial):
            os.kill(os.getpid(), signal.SIGKILL)
