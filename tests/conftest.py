"""Shared fixtures: configs composed with CPU and tiny sizes forced, a synthetic run trained once
per session (for tests/test_train.py; serve/ tests use a planted bundle, tests/serve/conftest.py),
and the shared datasets folder. torch and FAISS run on one thread here (OMP_NUM_THREADS)."""

from __future__ import annotations

import os
import tempfile

# One OpenMP thread for torch and FAISS, in this process and the subprocesses tests start (set
# before either is imported; `OMP_NUM_THREADS=2 pytest` overrides it). The tests' tensors are
# tiny: on a small machine shared with other jobs, threads wait for each other far longer than
# they compute (one train() of TINY took 37 s on 2 threads beside a benchmark, 3.5 s on one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Text vectors are cached on disk (features.text_encoder): in a directory of this session's,
# not the user's ~/.cache, so a test sees no vectors another run left.
os.environ["TWOTOWER_CACHE"] = tempfile.mkdtemp(prefix="twotower-test-cache-")

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import train as train_module

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # even if torch was imported earlier

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

# Small enough to train in seconds on 2 cores, big enough that the planted clusters are learnable.
TINY = [
    "data=synthetic",
    "data.source.num_users=300",
    "data.source.num_items=120",
    "data.source.num_clusters=6",
    "data.batch_size=128",
    "features.user.features.history.length=10",
    "model.negatives.num_negatives=64",
    "model.optim.lr=0.02",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=6",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def compose_config(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train", overrides=[*TINY, f"paths.output_dir={output_dir}", *overrides]
        )


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ../shared/datasets, or skip the test when it is absent."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A synthetic run trained once per session: (output_dir, metrics). Its bundle is output_dir/bundle."""
    output_dir = tmp_path_factory.mktemp("run")
    metrics = train_module.train(compose_config(output_dir))
    return output_dir, metrics
