"""An Optuna study as a Hydra sweeper: `python train.py -m hparams_search=NAME` samples the
search space that conf/hparams_search/NAME.yaml declares, launches one train.py job per trial,
tells the study each job's return value (the monitored validation metric), and at the end prints
the trials and writes the best one as an experiment file.

It takes the place of hydra-optuna-sweeper 1.3.0 (the released plugin), which pins optuna<3 and
cannot give what a search here needs:
- `n_trials` is the study's total. A rerun of the same command continues the study in its SQLite
  file and runs only the trials still owed; a trial a killed sweep left running is marked failed
  and its parameters are queued again, so an interruption costs that trial's time and no more.
- A trial that the pruning callback stopped (towers.pruning.OptunaPruning raises
  optuna.TrialPruned out of the job) is told PRUNED, not COMPLETE: only completed trials can be
  the best one, and only they set the median the pruner compares against.
- Parameters may depend on another one's value (`conditional_params`): a temperature for the
  sampled softmax, a margin for the cosine contrastive loss.
- The best trial becomes `<sweep dir>/experiment/best_recipe.yaml`, the command line's overrides
  and the sampled values as an experiment: `python train.py --config-dir <sweep dir>
  experiment=best_recipe` trains it again with the same seed and the same validation figure.

The job learns which trial it is from its job number: trial N is launched as job N (the
`${hydra:job.num}` the pruning callback and the trial directory read). One sweep at a time may
run a study: a lock on the SQLite file refuses a second (StudyBusyError).

What it does not do: run trials of one batch in parallel by itself (`n_jobs` trials are launched
together; Hydra's launcher decides whether they run side by side) or share a study between
machines (a trial left running is taken for an interrupted one).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from hydra_plugins.twotower_search._study import (
    FIXED_OVERRIDES,
    INTERRUPTED,
    RECIPE_GROUP,
    RECIPE_NAME,
    SearchSpace,
    StudyLock,
    StudyMismatchError,
    TrialsFailedError,
    finished_trials,
    format_value,
    job_outcome,
    plain,
    recipe_yaml,
    trials_table,
)

log = logging.getLogger(__name__)


class OptunaStudySweeper(Sweeper):
    """Hydra's sweeper for conf/hydra/sweeper/optuna_study.yaml; the options are documented
    there."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        params: DictConfig | None,
        conditional_params: DictConfig | None,
        enqueue: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        if n_trials < 0 or n_jobs < 1 or not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(
                "hydra.sweeper: expected n_trials >= 0, n_jobs >= 1 and max_failure_rate in "
                f"[0, 1], got {n_trials}, {n_jobs}, {max_failure_rate}"
            )
        self.storage, self.study_name, self.direction = str(storage), str(study_name), direction
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.sampler_config = sampler
        del pruner  # each trial's pruning callback reads it (${hydra:sweeper.pruner})
        self.params = plain(params) or {}
        self.conditional_params = plain(conditional_params) or {}
        self.enqueue = [dict(e) for e in plain(enqueue) or []]

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        space = SearchSpace.parse(self.params, self.conditional_params, arguments)
        fixed = list(space.fixed.values())
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with StudyLock(self.storage):
            study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                direction=self.direction,
                load_if_exists=True,
            )
            self._check_command_line(study, fixed)
            self._requeue_interrupted(study)
            sampler = self._sampler(len(study.trials))
            if sampler is not None:
                study.sampler = sampler
            owed = self.n_trials - finished_trials(study)
            log.info(
                "study %r (%s): %d of %d trials finished, %d to run",
                self.study_name,
                self.storage,
                self.n_trials - max(owed, 0),
                self.n_trials,
                max(owed, 0),
            )
            while owed > 0:
                trials = [study.ask() for _ in range(min(owed, self.n_jobs))]
                self._run_batch(study, trials, space)
                owed -= len(trials)
            self._report(study, fixed)

    def _check_command_line(self, study, fixed: list[str]) -> None:
        """The study remembers the command line it runs; a rerun must have the same one."""
        before = study.user_attrs.get(FIXED_OVERRIDES)
        if before is None:
            study.set_user_attr(FIXED_OVERRIDES, fixed)
            for params in self.enqueue:  # first trials of a new study
                study.enqueue_trial(params)
        elif before != fixed:
            raise StudyMismatchError(self.study_name, self.storage, before, fixed)

    def _requeue_interrupted(self, study) -> None:
        """Trials still RUNNING were left by a killed sweep (the lock rules out a live one):
        marked failed, remembered as interrupted (not counted as finished), and their
        parameters queued to run again."""
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        interrupted = list(study.user_attrs.get(INTERRUPTED, []))
        for trial in running:
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            interrupted.append(trial.number)
            log.info("trial %d was interrupted: its parameters are queued again", trial.number)
        study.set_user_attr(INTERRUPTED, sorted(interrupted))

    def _sampler(self, trials_so_far: int):
        """The configured sampler; its seed advanced by the trials so far, so that a resumed
        sweep does not draw its first samples again."""
        if not self.sampler_config:
            return None
        config = dict(plain(self.sampler_config))
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + trials_so_far
        return instantiate(config)

    def _run_batch(self, study, trials: list, space: SearchSpace) -> None:
        import optuna
        from optuna.trial import TrialState

        overrides = [space.suggest(trial, self.config) for trial in trials]
        numbers = [trial.number for trial in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            returns = self.launcher.launch(overrides, initial_job_idx=numbers[0])
        else:  # job N must be trial N: launched one by one
            returns = [
                r
                for number, o in zip(numbers, overrides, strict=True)
                for r in self.launcher.launch([o], initial_job_idx=number)
            ]
        failures: list[tuple[int, object]] = []
        for trial, job in zip(trials, returns, strict=True):
            outcome = job_outcome(job)
            if isinstance(outcome, optuna.TrialPruned):
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned: %s", trial.number, outcome)
            elif isinstance(outcome, BaseException) or not math.isfinite(outcome):
                study.tell(trial, state=TrialState.FAIL)
                log.error("trial %d failed: %r", trial.number, outcome)
                failures.append((trial.number, outcome))
            else:
                study.tell(trial, outcome)
                log.info("trial %d: %s = %.6g", trial.number, self.config.monitor, outcome)
        if failures and len(failures) / len(trials) > self.max_failure_rate:
            errors = [e for _, e in failures if isinstance(e, BaseException)]
            raise TrialsFailedError(
                [n for n, _ in failures], len(trials), self.max_failure_rate
            ) from (errors[0] if errors else None)

    def _report(self, study, fixed: list[str]) -> None:
        """The trials as a table, then the best one, written as an experiment file."""
        from optuna.trial import TrialState

        monitor = self.config.monitor
        print(trials_table(study, monitor))
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            print(f"no trial of study {self.study_name!r} completed: no best recipe")
            return
        best = study.best_trial
        directory = self.sweep_dir / RECIPE_GROUP
        path = directory / f"{RECIPE_NAME}.yaml"
        rerun = f"python train.py --config-dir {self.sweep_dir} {RECIPE_GROUP}={RECIPE_NAME}"
        overrides = [*fixed, *(f"{k}={format_value(v)}" for k, v in best.params.items())]
        body, command_line = recipe_yaml(overrides, self._is_group)
        rerun = " ".join([rerun, *map(shlex.quote, command_line)])
        header = [
            f"The best of the {len(completed)} completed trials of study {self.study_name!r} "
            f"({self.storage}):",
            f"trial {best.number}, {monitor} = {best.value:.6g} on validation. Rerun it (same "
            "seed, same validation figure):",
            f"  {rerun}",
            f"or copy this file to conf/{RECIPE_GROUP}/NAME.yaml and run `python train.py "
            f"{RECIPE_GROUP}=NAME`.",
        ]
        text = "\n".join(["# @package _global_", *(f"# {line}" for line in header), body])
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        print(f"best: trial {best.number}, {monitor} = {best.value:.6g}, {best.params}")
        print(f"best recipe: {path}")
        print(f"rerun: {rerun}")

    def _is_group(self, key: str) -> bool:
        parent, _, leaf = key.rpartition("/")
        return leaf in self.hydra_context.config_loader.list_groups(parent)
