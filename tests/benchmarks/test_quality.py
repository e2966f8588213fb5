"""benchmarks/quality.py: its popularity and twotower rows on the tiny synthetic recipe (one
epoch, CPU), against what train.py reports for the same run."""

from __future__ import annotations

import json
import sys

import pytest

import train
from tests.conftest import ROOT, TINY, compose_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import quality


@pytest.mark.slow  # one training run through train.train (about 10 s on 2 cores)
def test_popularity_and_twotower_rows_match_train_py(tmp_path):
    datamodule = train.prepare_data(compose_config(tmp_path / "unused"))
    popularity = quality.run_popularity(datamodule.data)

    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    # One epoch and no refit: the row's plumbing, not its quality.
    twotower = quality.run_twotower(
        [*overrides, "trainer.max_epochs=1", "refit=false"], tmp_path / "run"
    )
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The same split and the same baseline as the popularity row train.py writes beside the model.
    assert popularity["metrics"] == {
        k.removeprefix("popularity/"): v for k, v in written.items() if k.startswith("popularity/")
    }
    # The test metrics and the audit's groups (test_head/, test_users_light/, ...), not the cold
    # slices, Matryoshka prefixes or baselines.
    audited = ("test/", "test_head/", "test_mid/", "test_tail/", "test_users_")
    assert twotower["metrics"] == {k: v for k, v in written.items() if k.startswith(audited)}
    assert twotower["metrics"]["test_tail/recall@20"] == written["test_tail/recall@20"]
    assert twotower["recipe"]["trainer"]["max_epochs"] == 1
    assert "popularity_prior" in twotower["recipe"]["model"]
    assert twotower["recipe"]["features"]["user"]["features"]["history"]["length"] == 10

    results = {
        "tiny": {
            "ours": {"popularity": popularity, "twotower": twotower},
            "published": [],
            "ks_shown": [20, 50],
        }
    }
    lines = quality.table(results).splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [
        ["tiny", "popularity"],
        ["tiny", "twotower"],
    ]
    audit = quality.audit_table(results).splitlines()
    assert audit[0].split()[2:] == [
        "head/recall@20",
        "mid/recall@20",
        "tail/recall@20",
        "coverage@20",
        "tail_share@20",
    ]
    for line, run in zip(audit[2:], (popularity, twotower), strict=True):
        cells = [float(cell) for cell in line.split()[2:]]
        assert cells == [round(run["metrics"][c], 4) for c in quality.AUDIT_COLUMNS]
