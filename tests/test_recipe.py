"""recipe=auto on small synthetic data: two candidates, one planted to lose (its learning rates
are zero, so it never leaves its initialisation). The better one wins, trains on to its epoch
count, and the figures recorded for each candidate are those its own training log holds."""

from __future__ import annotations

import json

import polars as pl
import pytest
from omegaconf import OmegaConf

import train
from tests.conftest import TINY
from towers.halving import reachable

OVERRIDES = ["trainer.max_epochs=4", "refit=false", "logger=csv"]
CANDIDATES = {"learns": [], "frozen": ["model.optim.lr=0.0", "model.optim.dense_lr=0.0"]}


def _recipe_config(output_dir, candidates):
    overrides = [*TINY, *OVERRIDES, f"paths.output_dir={output_dir}"]
    cfg = train.compose([*overrides, "recipe=auto"])
    cfg.recipe.candidates = OmegaConf.create(candidates)
    # Two epochs asked, but one already gives every candidate its first_steps: the rung is one.
    cfg.recipe.first_epochs, cfg.recipe.first_steps = 2, 1
    return cfg, overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("recipe")
    cfg, overrides = _recipe_config(output_dir, CANDIDATES)
    return output_dir, train.train(cfg, overrides)


def _best_logged(output_dir, name: str) -> tuple[float, int]:
    """The best val/recall@20 in a candidate's own metrics.csv, and its epochs trained (one
    epoch-loss row each)."""
    log = pl.read_csv(output_dir / "recipe" / name / "metrics.csv")
    epochs = log["train/loss_epoch"].drop_nulls().len()
    return float(log["val/recall@20"].drop_nulls().max()), epochs


def test_the_candidate_that_learns_wins_and_trains_on_to_its_epoch_count(run):
    output_dir, metrics = run
    assert metrics["recipe/winner"] == "learns"
    assert metrics["recipe/learns/val/recall@20"] > metrics["recipe/frozen/val/recall@20"]
    assert metrics["recipe/frozen/epochs"] == 1  # dropped after the first rung
    _, learned_epochs = _best_logged(output_dir, "learns")
    assert learned_epochs == 4  # the winner's whole epoch count, not the rung's
    search = json.loads((output_dir / "recipe.json").read_text())
    assert search["rungs"][0]["kept"] == ["learns"]
    assert search["first_rung_epochs"] == search["rungs"][0]["epochs"] == 1
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


def test_each_recorded_figure_is_the_best_in_the_candidates_own_log(run):
    output_dir, metrics = run
    frozen, frozen_epochs = _best_logged(output_dir, "frozen")
    assert frozen_epochs == 1
    assert metrics["recipe/frozen/val/recall@20"] == pytest.approx(frozen, abs=1e-6)
    learns, learns_epochs = _best_logged(output_dir, "learns")
    assert metrics["recipe/learns/epochs"] == learns_epochs == 4  # the finalist's whole run
    assert metrics["recipe/learns/val/recall@20"] == pytest.approx(learns, abs=1e-6)


def test_the_printed_table_names_the_winner(run):
    _, metrics = run
    table = train.recipe_table(metrics, "val/recall@20")
    assert table.splitlines()[1].startswith("learns") and "(chosen)" in table.splitlines()[1]


def test_a_candidate_that_changes_the_split_is_refused(tmp_path):
    cfg, overrides = _recipe_config(tmp_path, {"other_split": ["data.split.val_ratio=0.3"]})
    with pytest.raises(train.RecipeError) as error:
        train.train(cfg, overrides)
    assert error.value.key == "data.split.val_ratio" and error.value.candidate == "other_split"


def test_a_finalist_stops_once_it_cannot_reach_the_bar(tmp_path):
    """RecipeTrial.advance with a bar no recall can reach (2.0) stops after the third epoch, the
    first with enough history to judge, and its last checkpoint and history are that epoch's; a
    later advance without a bar continues from there."""
    cfg = train.compose([*TINY, *OVERRIDES, "trainer.max_epochs=6", f"paths.output_dir={tmp_path}"])
    trial = train.RecipeTrial("learns", cfg, train.prepare_data(cfg).data)
    trial.advance(6, bar=2.0)
    logged = pl.read_csv(tmp_path / "metrics.csv")["val/recall@20"].drop_nulls().to_list()
    assert trial.epochs == 3 and trial.history == pytest.approx(logged) and len(logged) == 3
    assert reachable(logged, 3) < 2.0  # why it stopped, recomputed from its own log
    trial.advance(4)
    assert trial.epochs == 4 and len(trial.history) == 4 and not trial.stopped
    assert trial.history[:3] == pytest.approx(logged)
