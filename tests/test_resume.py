"""Resuming a run: the same settings continue exactly where a killed run stopped; other settings
are refused with the keys that differ (issue: resume that is safe and exact)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import RandomSampler

import train as train_module
from features.datamodule import EpochShuffle
from tests.conftest import ROOT, TINY, compose_config
from towers import ConfigError

RUN = ["trainer.max_epochs=3", "refit=false"]


def test_epoch_shuffle_gives_the_order_of_a_random_sampler_seeded_once():
    sampler = RandomSampler(range(50), generator=torch.Generator().manual_seed(7))
    once = []
    for _ in range(4):  # a training loop takes len(loader) batches of each epoch's iterator
        epoch = iter(sampler)
        once.append([next(epoch) for _ in range(50)])
    shuffle = EpochShuffle(50, seed=7)
    for epoch in (3, 0, 2, 1):  # any epoch, in any order: as a resumed run asks for them
        shuffle.set_epoch(epoch)
        assert list(shuffle) == once[epoch]


def _command(output_dir, *extra) -> list[str]:
    return [sys.executable, "train.py", *TINY, *RUN, f"paths.output_dir={output_dir}", *extra]


def _metrics(output_dir) -> dict[str, float]:
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def test_a_run_killed_after_its_first_epoch_resumes_to_the_same_metrics(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train_module.train(compose_config(whole, RUN))
    kill = "+logger.kill._target_=tests.kill_switch.KillAfterLastCheckpoint"
    crashed = subprocess.run(_command(killed, kill), cwd=ROOT, capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL after epoch 1's last.ckpt
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (killed / "metrics.json").exists()
    resumed = subprocess.run(_command(killed), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    expected, got = _metrics(whole), _metrics(killed)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def _checkpointed(output_dir, overrides=()):
    """A run directory whose checkpoints were made with TINY + `overrides` (no training)."""
    cfg = compose_config(output_dir, list(overrides))
    train_module._check_resume(cfg, output_dir)
    (output_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (output_dir / "metrics.csv").write_text("epoch\n0\n")
    return cfg


def test_a_rerun_with_other_settings_is_refused_naming_the_keys(tmp_path):
    _checkpointed(tmp_path, ["model.optim.lr=0.01"])
    changed = compose_config(tmp_path, ["model.optim.lr=0.05", "trainer.max_epochs=9"])
    with pytest.raises(train_module.ResumeConfigError) as refused:
        train_module._check_resume(changed, tmp_path)
    assert refused.value.differences == {
        "model.optim.lr": (0.01, 0.05),
        "trainer.max_epochs": (6, 9),
    }
    assert "model.optim.lr: 0.01 then, 0.05 now" in str(refused.value)
    assert "resume=force" in str(refused.value) and str(refused.value.path) in str(refused.value)
    # Where files go and how progress shows are not settings of the training.
    moved = compose_config(tmp_path, ["model.optim.lr=0.01", "trainer.enable_progress_bar=true"])
    train_module._check_resume(moved, tmp_path)


def test_a_key_added_since_the_checkpoints_counts_only_away_from_its_default(tmp_path):
    """Checkpoints recorded before `refit_seeds` existed: a rerun at its default (1) resumes, one
    that sets it otherwise is refused naming it."""
    _checkpointed(tmp_path, [])
    stored = tmp_path / "checkpoints" / "run_settings.json"
    older = json.loads(stored.read_text())
    del older["refit_seeds"]
    stored.write_text(json.dumps(older))
    train_module._check_resume(compose_config(tmp_path, []), tmp_path)
    stored.write_text(json.dumps(older))
    with pytest.raises(train_module.ResumeConfigError) as refused:
        train_module._check_resume(compose_config(tmp_path, ["refit_seeds=2"]), tmp_path)
    assert refused.value.differences == {"refit_seeds": (None, 2)}


def test_resume_force_continues_and_resume_false_sets_the_old_run_aside(tmp_path):
    _checkpointed(tmp_path, ["model.optim.lr=0.01"])
    forced = compose_config(tmp_path, ["model.optim.lr=0.05", "resume=force"])
    train_module._check_resume(forced, tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    fresh = compose_config(tmp_path, ["model.optim.lr=0.07", "resume=false"])
    train_module._check_resume(fresh, tmp_path)
    (aside,) = tmp_path.glob("replaced-*")
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert (aside / "metrics.csv").is_file()
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    stored = json.loads((tmp_path / "checkpoints" / "run_settings.json").read_text())
    assert stored["model.optim.lr"] == 0.07
    with pytest.raises(ConfigError) as raised:
        train_module._check_resume(compose_config(tmp_path, ["resume=maybe"]), tmp_path)
    assert raised.value.setting == "resume" and raised.value.value == "maybe"


def test_last_checkpoint_is_the_last_epoch_after_validation_peaked(tmp_path):
    """`resume` continues from last.ckpt: it must hold the last epoch, not the best one
    (towers.checkpoint.Checkpoints; Lightning's own stops moving it after the best epoch)."""
    train_module.train(compose_config(tmp_path, ["trainer.max_epochs=6", "refit=false"]))
    checkpoints = tmp_path / "checkpoints"
    best = torch.load(checkpoints / "best.ckpt", weights_only=True)
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert best["epoch"] < 5  # TINY's validation peaks before its sixth epoch
    assert last["epoch"] == 5 and last["global_step"] > best["global_step"]
