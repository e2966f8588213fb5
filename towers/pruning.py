"""Pruning a hyper-parameter search's weak trials while they train: a Lightning callback that
reports the monitored validation metric of every epoch to the trial's record in an Optuna study
and stops the trial when the study's pruner says so.

A trial is a whole train.py run launched by the sweeper (hydra_plugins/twotower_search), which
holds the Optuna `Trial` object in another process, or in the same one behind Hydra's launcher:
the job never sees it. What the job and the sweeper share is the study's storage (SQLite by
default), so the callback attaches to the trial there by its number:
- after each validation epoch of the fit it writes the metric as the trial's intermediate value
  at step = epoch index (0-based), in the storage, where later trials read it (the sanity check
  and a `trainer.validate` of the best checkpoint after the fit report nothing);
- it asks the pruner, with the study loaded from the same storage, whether the trial is worse
  than the others. With Optuna's MedianPruner(n_startup_trials, n_warmup_steps): no trial is
  pruned before `n_startup_trials` trials have completed, nor before epoch index
  `n_warmup_steps`; after that a trial stops when its best value so far is below the median of
  the completed trials' values at the same epoch. Pruned and failed trials do not count
  towards the median, so stopping weak trials never lowers the bar;
- it stops the trial by raising optuna.TrialPruned out of `trainer.fit`: the job ends at once
  (no refit, export or test), and the sweeper records the trial as PRUNED, a state the best-trial
  choice never considers (only completed trials' final objectives compete).

Nothing is kept between epochs but the connection, so a trial that dies between two reports
leaves its values so far in the storage and nothing half-written. This module never imports
Hydra; the study's address, the trial's number and the pruner come in as arguments
(conf/hparams_search/base/optuna.yaml fills them from the sweeper's config).
"""

from __future__ import annotations

import lightning as L
import optuna
from lightning.pytorch.trainer.states import TrainerFn


class MissingMonitorError(KeyError):
    """The monitored metric was not logged by the validation epoch the callback reports."""

    def __init__(self, monitor: str, logged: list[str]):
        self.monitor, self.logged = monitor, logged
        super().__init__(f"pruning monitors {monitor!r}, but validation logged only {logged}")


class OptunaPruning(L.Callback):
    """Report `monitor` after every validation epoch to trial `trial_number` of the study
    `study_name` in `storage`; raise optuna.TrialPruned when `pruner` (None: the study's default,
    MedianPruner) prunes it."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_number: int,
        monitor: str,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        self.storage_url, self.study_name = storage, study_name
        self.trial_number, self.monitor, self.pruner = int(trial_number), monitor, pruner
        self._trial: optuna.trial.Trial | None = None

    def _attach(self) -> optuna.trial.Trial:
        if self._trial is None:
            storage = optuna.storages.get_storage(self.storage_url)
            study = optuna.load_study(
                study_name=self.study_name, storage=storage, pruner=self.pruner
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.study_name), self.trial_number
            )
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # the sanity check, or a `trainer.validate` after the fit: not an epoch
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise MissingMonitorError(self.monitor, sorted(trainer.callback_metrics))
        trial, epoch = self._attach(), trainer.current_epoch
        trial.report(float(value), step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"{self.monitor} {float(value):.4f} at epoch {epoch + 1}: pruned by "
                f"{type(trial.study.pruner).__name__}"
            )
