"""benchmarks/train_speed.py: its model, batches and timing loops on the tiny synthetic recipe
(a few steps, CPU). Nothing here times anything."""

from __future__ import annotations

import sys

import pytest
import torch

import train
from tests.conftest import ROOT, compose_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import train_speed

STEPS, WARMUP = 5, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = compose_config(tmp_path_factory.mktemp("speed"))
    datamodule = train.prepare_data(cfg)
    return cfg, datamodule.data, train_speed.fixed_batches(datamodule, STEPS)


def test_every_variant_starts_from_the_same_weights(setup):
    cfg, data, batches = setup
    assert len(batches) == STEPS
    first, second = (train_speed.build_model(cfg, data, cfg.seed) for _ in range(2))
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_loops_record_every_step_after_the_warm_up(setup, tmp_path):
    cfg, data, batches = setup
    stamps = train_speed.run_bare(train_speed.build_model(cfg, data, cfg.seed), batches, WARMUP, 0)
    assert len(stamps) == STEPS - WARMUP + 1 and stamps == sorted(stamps)
    lean = train_speed.variants(cfg, tmp_path)["lightning (lean)"]
    model, twin = (train_speed.build_model(cfg, data, cfg.seed) for _ in range(2))
    paired = train_speed.run_paired(model, twin, batches, WARMUP, cfg.seed, lean)
    assert len(paired.bare) == len(paired.lightning) == STEPS - WARMUP
    assert all(seconds > 0 for seconds in [*paired.bare, *paired.lightning])
