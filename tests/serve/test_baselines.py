"""serve/baselines.py on the tiny synthetic data (train.prepare_data): popularity as
serve.evaluate computes it, and tuned ALS against implicit fitted here and ranked by brute force
in numpy (every grid point on validation, the chosen one refit on train + validation on test)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

import train
from features.arrays import csr_by_user
from features.prepare import HeldOut, PreparedData
from features.text_encoder import MissingExtraError
from serve.audit import AuditGroups
from serve.baselines import (
    EmptyValidationError,
    UnknownBaselineError,
    evaluate_baselines,
    with_factors_at_least,
)
from serve.evaluate import evaluate_popularity
from tests.conftest import compose_config
from towers.metrics import METRICS

KS = (10, 20, 50)
SEED = 7
AUDIT_KEYS = {
    *(f"test_{b}/{m}@20" for b in ("head", "mid", "tail") for m in ("recall", "ndcg")),
    "test_users_light/recall@20",
    "test_users_heavy/recall@20",
    *(f"test/{m}@20" for m in ("coverage", "gini", "tail_share")),
}
FACTORS_AT_LEAST = 16  # above every factor count of GRID: each point is fitted with 16
GRID = {
    "factors": (4, 8),
    "regularization": (0.01, 1.0, 100.0),
    "alpha": (1.0, 20.0),
    "iterations": (10,),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    return train.prepare_data(compose_config(tmp_path_factory.mktemp("unused"))).data


@pytest.fixture(scope="module")
def metrics(data) -> dict[str, float]:
    return evaluate_baselines(
        ["popularity", "als"], data, KS, FACTORS_AT_LEAST, SEED, GRID, threads=1
    )


# -- brute force, apart from the library --------------------------------------------------------
def _implicit_factors(pairs: np.ndarray, data: PreparedData, params: dict):
    """implicit's ALS on the binary users x items matrix of `pairs`: (user, item) factors."""
    unique = np.unique(pairs, axis=0)
    matrix = sp.csr_matrix(
        (np.ones(len(unique), np.float32), (unique[:, 0], unique[:, 1])),
        shape=(data.num_users, data.num_items),
    )
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(**params, random_state=SEED, num_threads=1)
        model.fit(matrix, show_progress=False)
    return model.user_factors, model.item_factors


def _brute_metrics(
    factors, seen_pairs: np.ndarray, held_out: HeldOut, ks, stage: str
) -> dict[str, float]:
    """Each held-out user's items ranked by dot product in float64, `seen_pairs` items left out,
    scored by the metrics' definitions (towers/metrics.py) user by user."""
    user_factors, item_factors = (f.astype(np.float64) for f in factors)
    seen: dict[int, set[int]] = {}
    for user, item in seen_pairs.tolist():
        seen.setdefault(user, set()).add(item)
    sums = dict.fromkeys((f"{stage}/{m}@{k}" for m in METRICS for k in ks), 0.0)
    for row, user in enumerate(held_out.users.tolist()):
        relevant = held_out.items[held_out.indptr[row] : held_out.indptr[row + 1]].tolist()
        order = np.argsort(-(item_factors @ user_factors[user]), kind="stable").tolist()
        top = [item for item in order if item not in seen.get(user, set())]
        for k in ks:
            found = [p for p, item in enumerate(top[:k]) if item in relevant]
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(relevant), k)))
            sums[f"{stage}/recall@{k}"] += len(found) / len(relevant)
            sums[f"{stage}/ndcg@{k}"] += sum(1 / math.log2(p + 2) for p in found) / idcg
            sums[f"{stage}/hit_rate@{k}"] += float(bool(found))
            sums[f"{stage}/mrr@{k}"] += 1 / (found[0] + 1) if found else 0.0
    return {name: total / len(held_out) for name, total in sums.items()}


def _grid_points_raised() -> list[dict]:
    return [
        {"factors": FACTORS_AT_LEAST, "regularization": r, "alpha": a, "iterations": i}
        for r in GRID["regularization"]
        for a in GRID["alpha"]
        for i in GRID["iterations"]
    ]


# -- tests ----------------------------------------------------------------------------------------
def test_popularity_is_serve_evaluates_on_train_and_validation_counts(data, metrics):
    seen = csr_by_user(data.before_test, data.num_users)
    expected = evaluate_popularity(
        data.item_counts_before_test(), seen, data.test, KS, "test", audit=AuditGroups.of_data(data)
    )
    assert {k: v for k, v in metrics.items() if k.startswith("popularity/")} == {
        f"popularity/{k}": v for k, v in expected.items()
    }
    alone = evaluate_baselines(["popularity"], data, KS, FACTORS_AT_LEAST, SEED)
    assert alone == {k: v for k, v in metrics.items() if k.startswith("popularity/")}


def test_als_chooses_the_grid_point_with_the_best_validation_recall(data, metrics):
    validation = [
        _brute_metrics(_implicit_factors(data.train, data, p), data.train, data.val, (20,), "val")
        for p in _grid_points_raised()
    ]
    recalls = [v["val/recall@20"] for v in validation]
    best = int(np.argmax(recalls))  # the first of equals
    assert best != 0 and max(recalls) - min(recalls) > 0.05  # the choice is not the first point
    chosen = {key: metrics[f"als/{key}"] for key in GRID}
    assert chosen == _grid_points_raised()[best]
    assert metrics["als/val/recall@20"] == pytest.approx(recalls[best])
    assert metrics["als/factors"] >= FACTORS_AT_LEAST


def test_als_test_metrics_rank_the_refit_factors_without_known_items(data, metrics):
    chosen = {key: type(GRID[key][0])(metrics[f"als/{key}"]) for key in GRID}
    factors = _implicit_factors(data.before_test, data, chosen)  # refit on train + validation
    expected = _brute_metrics(factors, data.before_test, data.test, KS, "test")
    reported = {k.removeprefix("als/"): v for k, v in metrics.items() if k.startswith("als/test")}
    # Every metric and k the model reports, and the retrievability audit (serve.audit).
    assert {k: v for k, v in reported.items() if k in expected} == pytest.approx(expected)
    assert reported.keys() - expected.keys() == AUDIT_KEYS
    assert reported["test/recall@20"] > metrics["popularity/test/recall@20"]  # not two zeros
    assert metrics["als/seconds"] > 0


def test_factor_counts_are_raised_to_the_least_and_deduplicated():
    raised = with_factors_at_least({"factors": (8, 16, 32, 64), "alpha": [1.0, 5.0]}, 32)
    assert raised == {"factors": (32, 64), "alpha": (1.0, 5.0)}


def test_an_unknown_baseline_is_named(data):
    with pytest.raises(UnknownBaselineError) as caught:
        evaluate_baselines(["popularity", "bpr"], data, KS, FACTORS_AT_LEAST, SEED)
    assert caught.value.name == "bpr"
    assert "als" in caught.value.known


def test_als_without_a_validation_split_is_refused(data):
    with pytest.raises(EmptyValidationError) as caught:
        evaluate_baselines(
            ["als"], replace(data, val=HeldOut.empty()), KS, FACTORS_AT_LEAST, SEED, GRID
        )
    assert caught.value.baseline == "als"


def test_als_without_implicit_names_the_bench_extra(data, monkeypatch):
    for name in [m for m in sys.modules if m == "implicit" or m.startswith("implicit.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import implicit...` fails as if absent
    with pytest.raises(MissingExtraError) as caught:
        evaluate_baselines(["als"], data, KS, FACTORS_AT_LEAST, SEED, GRID)
    assert (caught.value.extra, caught.value.package) == ("bench", "implicit")
