"""`python train.py ... trainer=ddp trainer.devices=2 trainer.accelerator=cpu`: two processes on
gloo (Lightning's launcher re-runs the command line under Hydra for rank 1) select on validation
and refit together; rank 0 alone exports, evaluates and reports. They train what one process
trains with the global batch (2 x data.batch_size): its weights to float noise, and so its
metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import train as train_module
from serve import Recommender
from tests.conftest import ROOT, TINY, compose_config

DDP = ["trainer=ddp", "trainer.devices=2"]  # TINY's data.batch_size=128 per process
ONE_PROCESS = ["data.batch_size=256"]  # the same global batch
ONE_USER = 1 / 300  # a metric's share of one of TINY's 300 users (a tie that float noise flips)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple:
    output_dir = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        [sys.executable, "train.py", *TINY, *DDP, f"paths.output_dir={output_dir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return output_dir, done.stdout


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> tuple:
    output_dir = tmp_path_factory.mktemp("one")
    return output_dir, train_module.train(compose_config(output_dir, ONE_PROCESS))


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_rank_zero_alone_exports_a_bundle_that_loads_and_recommends(ddp_run):
    output_dir, stdout = ddp_run
    assert stdout.count("bundle: ") == 1  # both ranks print to this stdout
    assert "rank 1: training done" in (output_dir / "train_ddp_process_1.log").read_text()
    recommender = Recommender.load(output_dir / "bundle")
    user = recommender.bundle.users["user_id"][0]
    results = recommender.recommend(user, k=5)
    assert len(results) == 5
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_global_batch(ddp_run, one_process_run):
    (ddp_dir, _), (one_dir, one_metrics) = ddp_run, one_process_run
    refit = f"refit-{int(one_metrics['train/epochs'])}/last.ckpt"  # the epochs selection chose
    for checkpoint in ("best.ckpt", refit):
        ddp = _weights(ddp_dir / "checkpoints" / checkpoint)
        one = _weights(one_dir / "checkpoints" / checkpoint)
        assert ddp.keys() == one.keys()
        for name in one:  # another random stream or batch moves them by ~0.1
            torch.testing.assert_close(ddp[name], one[name], atol=1e-4, rtol=0, msg=name)
    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    for name, value in one_metrics.items():
        if name.startswith(("val/", "test/")):
            assert ddp_metrics[name] == pytest.approx(value, abs=ONE_USER), name


def test_recipe_auto_is_refused_under_ddp(tmp_path):
    """recipe=auto stops on a wall-clock budget each process would measure for itself."""
    cfg = compose_config(tmp_path, [*DDP, "recipe=auto"])
    with pytest.raises(train_module.MultiProcessError, match="recipe=auto"):
        train_module.train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written
