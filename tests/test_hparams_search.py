"""`python train.py -m hparams_search=NAME`: the Optuna sweeper (hydra_plugins/twotower_search)
and the pruning callback (towers/pruning.py). One sweep on tiny synthetic data with a planted
weak trial and a planted kill; the rest in process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import train as train_module
from hydra_plugins.twotower_search._study import (
    SearchSpace,
    SearchSpaceError,
    StudyBusyError,
    StudyLock,
    StudyMismatchError,
    TrialsFailedError,
    recipe_yaml,
)
from hydra_plugins.twotower_search.sweeper import OptunaStudySweeper
from tests.conftest import ROOT, TINY

optuna.logging.set_verbosity(optuna.logging.WARNING)
DEFAULT_SPACE = OmegaConf.load(ROOT / "conf" / "hparams_search" / "default.yaml").hydra.sweeper


def _default_space(arguments=()) -> SearchSpace:
    return SearchSpace.parse(
        OmegaConf.to_container(DEFAULT_SPACE.params),
        OmegaConf.to_container(DEFAULT_SPACE.conditional_params),
        list(arguments),
    )


def _sample(space: SearchSpace, n: int) -> list[dict[str, object]]:
    """n trials' overrides as {key: value}, from a random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = OmegaConf.create({"hydra": {"runtime": {"choices": {"model": "two_tower"}}}})
    samples = []
    for _ in range(n):
        overrides = space.suggest(study.ask(), config)
        samples.append(dict(o.split("=", 1) for o in overrides))
    return samples


def test_the_default_space_samples_a_temperature_or_a_margin_by_loss_family():
    samples = _sample(_default_space(["data=synthetic"]), 40)
    families = {s["model"] for s in samples}
    assert families == {"two_tower", "simplex"}
    for s in samples:
        assert s["data"] == "synthetic"
        assert ("model.loss.temperature" in s) == (s["model"] == "two_tower")
        assert ("model.loss.margin" in s) == (s["model"] == "simplex")
        assert 0.003 <= float(s["model.optim.lr"]) <= 0.05
        assert s["trainer.max_epochs"] in {"6", "12", "20"}


def test_the_command_line_fixes_a_parameter_and_its_conditions_follow():
    space = _default_space(["model=simplex", "model.towers.embedding_dim=48"])
    assert "model" not in space.params and space.fixed["model"] == "model=simplex"
    for s in _sample(space, 10):
        assert s["model"] == "simplex" and s["model.towers.embedding_dim"] == "48"
        assert "model.loss.margin" in s and "model.loss.temperature" not in s


def test_each_loss_family_of_the_default_space_composes_with_the_default_recipe():
    """Every key the space sets exists in the config it searches (a typo fails here, not in a
    trial an hour into a sweep)."""
    for s in _sample(_default_space(), 12):
        cfg = train_module.compose(["hparams_search=default", *(f"{k}={v}" for k, v in s.items())])
        assert cfg.trainer.max_epochs == int(s["trainer.max_epochs"])
        assert cfg.callbacks.optuna_pruning._target_ == "towers.pruning.OptunaPruning"


def test_a_sweep_expression_that_optuna_cannot_sample_is_refused():
    with pytest.raises(SearchSpaceError, match=r"model\.optim\.lr=glob"):
        SearchSpace.parse({"model.optim.lr": "glob(*)"}, {}, [])
    with pytest.raises(SearchSpaceError, match="one key=value"):
        SearchSpace.parse({}, {"model=two_tower,simplex": {"model.optim.lr": "0.01"}}, [])


def test_the_recipe_says_groups_in_its_defaults_and_values_as_keys():
    groups = {"data", "model", "model/loss", "experiment", "hparams_search"}
    body, command_line = recipe_yaml(
        [
            "hparams_search=default",
            "paths.output_dir=/tmp/x",
            "data=synthetic",
            "model/loss=cosine_contrastive",
            "experiment=lastfm",
            "model.optim.lr=0.0123",
            "+model.towers.extra=true",
            "~features.user.features.user_id",
        ],
        groups.__contains__,
    )
    recipe = OmegaConf.create(body)
    assert list(recipe.defaults) == [
        {"override /data": "synthetic"},
        {"override /model/loss": "cosine_contrastive"},
        "/experiment/lastfm",
    ]
    assert recipe.model.optim.lr == 0.0123 and recipe.model.towers.extra is True
    assert "paths" not in recipe and "hparams_search" not in body
    assert command_line == ["~features.user.features.user_id"]


def _sweeper(**overrides) -> OptunaStudySweeper:
    options = dict(
        storage="sqlite:///unused.db",
        study_name="s",
        direction="maximize",
        n_trials=3,
        n_jobs=1,
        max_failure_rate=0.0,
        sampler=None,
        pruner=None,
        params=None,
        conditional_params=None,
        enqueue=None,
    )
    return OptunaStudySweeper(**(options | overrides))


def test_a_study_refuses_a_rerun_with_another_command_line():
    study = optuna.create_study(direction="maximize")
    sweeper = _sweeper(enqueue=[{"model.optim.lr": 0.01}])
    sweeper._check_command_line(study, ["data=synthetic"])
    assert len(study.trials) == 1  # the enqueued first trial of a new study
    sweeper._check_command_line(study, ["data=synthetic"])  # the same command: continues
    assert len(study.trials) == 1
    with pytest.raises(StudyMismatchError) as refused:
        sweeper._check_command_line(study, ["data=lastfm_hetrec"])
    assert refused.value.before == ["data=synthetic"]
    assert "hydra.sweep.dir" in str(refused.value)


class _Launcher:
    """Hydra's launcher, with each job's outcome given: a value, or the exception it raised."""

    def __init__(self, outcomes: list):
        self.outcomes, self.launched = outcomes, []

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        self.launched.append((initial_job_idx, [list(o) for o in job_overrides]))
        jobs = []
        for outcome in self.outcomes[initial_job_idx : initial_job_idx + len(job_overrides)]:
            job = JobReturn()
            job.return_value = outcome
            job.status = JobStatus.FAILED if isinstance(outcome, Exception) else JobStatus.COMPLETED
            jobs.append(job)
        return jobs


@pytest.mark.parametrize("max_failure_rate", [0.5, 0.0])
def test_pruned_and_failed_trials_are_told_apart_and_never_the_best(max_failure_rate):
    study = optuna.create_study(direction="maximize")
    sweeper = _sweeper(n_jobs=3, max_failure_rate=max_failure_rate)
    sweeper.config = OmegaConf.create({"monitor": "val/recall@20"})
    sweeper.launcher = _Launcher([0.5, optuna.TrialPruned("weak"), ValueError("boom")])
    trials = [study.ask() for _ in range(3)]
    trials[1].report(0.9, step=0)  # pruned after a first epoch better than trial 0's end
    space = SearchSpace.parse({"model.optim.lr": "choice(0.01, 0.02)"}, {}, ["data=synthetic"])
    if max_failure_rate:
        sweeper._run_batch(study, trials, space)
    else:
        with pytest.raises(TrialsFailedError) as failed:
            sweeper._run_batch(study, trials, space)
        assert failed.value.failed == [2] and isinstance(failed.value.__cause__, ValueError)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert study.best_trial.number == 0 and study.trials[1].value == 0.9
    ((first_job, overrides),) = sweeper.launcher.launched
    assert first_job == 0 and overrides[0][0] == "data=synthetic"


def test_a_second_sweep_of_the_same_study_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with StudyLock(storage), pytest.raises(StudyBusyError), StudyLock(storage):
        pass
    with StudyLock(storage):  # released with the first sweep
        pass


PLANTED = """# @package _global_
defaults:
  - base: optuna
  - _self_
hydra:
  sweeper:
    n_trials: 3
    pruner: {n_startup_trials: 1, n_warmup_steps: 1}
    params:
      model.optim.lr: choice(0.0, 0.01, 0.02)
      model.towers.embedding_dim: choice(16, 32)
    enqueue:
      - {model.optim.lr: 0.02, model.towers.embedding_dim: 32}  # a good trial
      - {model.optim.lr: 0.0, model.towers.embedding_dim: 32}  # planted: it never learns
      - {model.optim.lr: 0.01, model.towers.embedding_dim: 16}  # killed after its first epoch
"""


def _states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


@pytest.mark.slow
def test_a_sweep_prunes_resumes_after_a_kill_and_writes_a_recipe_that_reproduces_it(tmp_path):
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "conf" / "hparams_search" / "planted.yaml").write_text(PLANTED)
    sweep_dir = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("model.optim.lr=", "trainer.max_epochs="))]
    command = [
        sys.executable,
        "train.py",
        "-m",
        f"--config-dir={tmp_path / 'conf'}",
        "hparams_search=planted",
        *tiny,
        "trainer.max_epochs=3",
        "+logger.kill._target_=tests.kill_in_trial.KillInTrial",  # kills the sweep in trial 2
        "+logger.kill.trial=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]

    def sweep() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)

    killed = sweep()
    assert killed.returncode == -9, killed.stderr[-3000:]
    db = sweep_dir / "study.db"
    assert _states(db) == [(0, "COMPLETE"), (1, "PRUNED"), (2, "RUNNING")]

    resumed = sweep()  # the same command: the interrupted trial runs again, as trial 3
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 of 3 trials finished, 1 to run" in resumed.stdout
    assert _states(db)[:3] == [(0, "COMPLETE"), (1, "PRUNED"), (2, "FAIL")]
    assert _states(db)[3] in {(3, "COMPLETE"), (3, "PRUNED")}
    study = optuna.load_study(study_name="planted", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert trials[3].params == trials[2].params and trials[3].user_attrs == {"retry_of": 2}
    # Pruned after epoch 2 of 3 (the warm-up: epoch index 1); every epoch of a whole trial, not
    # the re-validation of its best checkpoint.
    assert list(trials[1].intermediate_values) == [0, 1]
    assert list(trials[0].intermediate_values) == [0, 1, 2]
    best = study.best_trial
    assert best.state is optuna.trial.TrialState.COMPLETE and best.number in (0, 3)
    assert f"best: trial {best.number}" in resumed.stdout

    again = sweep()  # complete: no new trial, the best printed again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 of 3 trials finished, 0 to run" in again.stdout
    assert len(_states(db)) == 4

    recipe = sweep_dir / "experiment" / "best_recipe.yaml"
    assert recipe.read_text().startswith("# @package _global_\n")
    rerun_dir = tmp_path / "rerun"
    rerun = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"--config-dir={sweep_dir}",
            "experiment=best_recipe",
            f"paths.output_dir={rerun_dir}",
            "refit=false",  # the validation figure comes before the refit
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((rerun_dir / "metrics.json").read_text())
    assert metrics["val/recall@20"] == pytest.approx(best.value, abs=1e-9)
