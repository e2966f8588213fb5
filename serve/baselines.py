"""The baselines a run reports beside the two-tower model: the same test users, the same
exclusion of each user's known items and the same metric code (serve.evaluate).

- popularity: items by train + validation counts.
- als: implicit's `AlternatingLeastSquares` (the `bench` extra), tuned on the validation split:
  one fit on the training pairs per grid point, scored by validation recall@20 with each user's
  training items excluded; the best point is refit on train + validation (as train.py refits the
  model it serves) and ranks the test users.

`evaluate_baselines` returns flat metric names, `{baseline}/{stage}/{metric}@{k}`
(`als/test/recall@20`), the retrievability audit of each on test (serve.audit:
`als/test_tail/recall@20`, `popularity/test/coverage@20`, ...), beside the chosen ALS parameters
and its seconds. Nothing here trains or imports the two-tower model."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from features.arrays import csr_by_user
from features.prepare import PreparedData
from features.text_encoder import MissingExtraError
from serve.audit import AuditGroups
from serve.evaluate import evaluate_popularity, evaluate_vectors
from towers.metrics import metric_name

log = logging.getLogger(__name__)

BASELINES = ("popularity", "als")
EXTRA = "bench"  # the install extra that brings implicit
MONITOR_K = 20
MONITOR = metric_name("recall", MONITOR_K, "val")  # what ALS is tuned on, as train.py's monitor

# Every combination is fitted once (12 fits: a few seconds on ml-latest-small). A decade-wide
# grid in benchmarks/quality.py chose regularization 0.1-100 and alpha 20-50 on MovieLens,
# Last.fm and Gowalla, with 128 factors (more factors helped ALS there).
ALS_GRID: Mapping[str, tuple] = {
    "factors": (128,),  # raised to the tower's dimension where that is larger
    "regularization": (0.1, 1.0, 10.0, 100.0),  # implicit's L2, not scaled by counts
    "alpha": (5.0, 20.0, 50.0),  # the confidence of an observed pair: 1 + alpha
    "iterations": (15,),
}


class UnknownBaselineError(ValueError):
    """A baseline `name` that is not one of `known`."""

    def __init__(self, name: str, known: Sequence[str] = BASELINES) -> None:
        self.name, self.known = name, tuple(known)
        super().__init__(f"unknown baseline {name!r}; known: {', '.join(self.known)}")

    def __reduce__(self):
        return type(self), (self.name, self.known)


class EmptyValidationError(ValueError):
    """`baseline` is tuned on the validation split, and the data has none."""

    def __init__(self, baseline: str) -> None:
        self.baseline = baseline
        super().__init__(
            f"the {baseline} baseline is tuned on the validation split, and it is empty "
            "(set data.split.val_ratio above 0)"
        )

    def __reduce__(self):
        return type(self), (self.baseline,)


@dataclass(frozen=True)
class AlsTrial:
    """One grid point fitted on the training pairs and scored on validation."""

    params: dict[str, float]  # AlternatingLeastSquares' factors, regularization, alpha, iterations
    val: dict[str, float]  # {MONITOR: value}
    fit_seconds: float


@dataclass(frozen=True)
class AlsResult:
    """Tuned ALS: the chosen point, its refit's test metrics and every trial of the grid."""

    chosen: AlsTrial  # the first grid point with the best validation recall@20
    test: dict[str, float]  # "test/recall@20", ...: the chosen point refit on train + validation
    trials: list[AlsTrial]
    grid_seconds: float  # every trial's fit and validation
    refit_seconds: float
    eval_seconds: float  # the test ranking, wall time
    eval_cpu_seconds: float  # the same over all threads

    @property
    def seconds(self) -> float:
        return self.grid_seconds + self.refit_seconds + self.eval_seconds


def evaluate_baselines(
    names: Sequence[str],
    data: PreparedData,
    ks: Sequence[int],
    factors_at_least: int,
    seed: int,
    grid: Mapping[str, Sequence] | None = None,
    threads: int | None = None,
) -> dict[str, float]:
    """Each baseline of `names` on the test split at `ks`, as `{name}/test/{metric}@{k}`; ALS
    tuned over `grid` (None: ALS_GRID) with at least `factors_at_least` factors (the tower's
    dimension), seeded by `seed`, on `threads` threads (None: torch's count)."""
    for name in names:
        if name not in BASELINES:
            raise UnknownBaselineError(name)
    metrics: dict[str, float] = {}
    if "popularity" in names:
        metrics |= _prefixed("popularity", popularity_metrics(data, ks))
    if "als" in names:
        als_grid = with_factors_at_least(ALS_GRID if grid is None else grid, factors_at_least)
        metrics |= als_metrics(tune_als(data, ks, als_grid, seed, threads))
    return metrics


def popularity_metrics(data: PreparedData, ks: Sequence[int]) -> dict[str, float]:
    """Test metrics of ranking by train + validation counts, each user's known items excluded,
    with the retrievability audit."""
    seen = csr_by_user(data.before_test, data.num_users)
    counts, audit = data.item_counts_before_test(), AuditGroups.of_data(data)
    return evaluate_popularity(counts, seen, data.test, ks, "test", audit=audit)


def als_metrics(result: AlsResult) -> dict[str, float]:
    """The flat `als/...` entries of a tuned ALS: test and validation metrics, the chosen
    parameters and the seconds it took."""
    return (
        _prefixed("als", result.test)
        | _prefixed("als", result.chosen.val)
        | {f"als/{key}": float(value) for key, value in result.chosen.params.items()}
        | {"als/seconds": result.seconds}
    )


def with_factors_at_least(grid: Mapping[str, Sequence], factors: int) -> dict[str, tuple]:
    """`grid` with each factor count raised to at least `factors`, duplicates dropped."""
    raised = sorted({max(int(f), factors) for f in grid["factors"]})
    return {**{key: tuple(values) for key, values in grid.items()}, "factors": tuple(raised)}


def tune_als(
    data: PreparedData,
    ks: Sequence[int],
    grid: Mapping[str, Sequence],
    seed: int,
    threads: int | None = None,
) -> AlsResult:
    """Every point of `grid` (factors, regularization, alpha and iterations, each to a list of
    values) fitted on the training pairs; the first with the best validation recall@20 refit on train +
    validation and evaluated on the test users at `ks`, with the retrievability audit."""
    if len(data.val) == 0:
        raise EmptyValidationError("als")
    threads = torch.get_num_threads() if threads is None else threads
    started = time.perf_counter()
    trials = [_trial(data, params, seed, threads) for params in _grid_points(grid)]
    grid_seconds = time.perf_counter() - started
    best = max(trials, key=lambda trial: trial.val[MONITOR])  # the first of equals
    log.info("als chose %s: %s %.4f", best.params, MONITOR, best.val[MONITOR])

    started = time.perf_counter()
    user_factors, item_factors = fit_als(
        data.before_test, data.num_users, data.num_items, best.params, seed, threads
    )
    refit_seconds = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    known = csr_by_user(data.before_test, data.num_users)
    test = evaluate_vectors(
        user_factors[data.test.users],
        item_factors,
        known,
        data.test,
        ks,
        audit=AuditGroups.of_data(data),
    )
    return AlsResult(
        chosen=best,
        test=test,
        trials=trials,
        grid_seconds=grid_seconds,
        refit_seconds=refit_seconds,
        eval_seconds=time.perf_counter() - started,
        eval_cpu_seconds=time.process_time() - cpu_started,
    )


def fit_als(
    pairs: np.ndarray,
    num_users: int,
    num_items: int,
    params: Mapping[str, float],
    seed: int,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """implicit's ALS with `params` fitted on the binary matrix of `pairs` ([user, item] rows):
    (user factors (U, F), item factors (I, F))."""
    AlternatingLeastSquares, threadpool_limits = _implicit()
    # implicit runs its own threads, so BLAS stays single-threaded while it builds and fits
    # (it warns otherwise); the ranking outside keeps torch's threads.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=int(params["factors"]),
            regularization=float(params["regularization"]),
            alpha=float(params["alpha"]),
            iterations=int(params["iterations"]),
            random_state=seed,
            num_threads=threads,
        )
        model.fit(user_item_matrix(pairs, num_users, num_items), show_progress=False)
    return model.user_factors, model.item_factors


def user_item_matrix(pairs: np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary CSR users x items from [user, item] rows (a repeated pair counts once)."""
    values = np.ones(len(pairs), dtype=np.float32)
    matrix = sp.csr_matrix((values, (pairs[:, 0], pairs[:, 1])), shape=(num_users, num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _trial(data: PreparedData, params: dict[str, float], seed: int, threads: int) -> AlsTrial:
    """`params` fitted on the training pairs, scored on validation, training items excluded."""
    started = time.perf_counter()
    user_factors, item_factors = fit_als(
        data.train, data.num_users, data.num_items, params, seed, threads
    )
    fit_seconds = time.perf_counter() - started
    train_seen = csr_by_user(data.train, data.num_users)
    val = evaluate_vectors(
        user_factors[data.val.users], item_factors, train_seen, data.val, (MONITOR_K,), "val"
    )
    trial = AlsTrial(params, {MONITOR: val[MONITOR]}, fit_seconds)
    log.info("als %s: %s %.4f (%.1fs fit)", params, MONITOR, val[MONITOR], fit_seconds)
    return trial


def _grid_points(grid: Mapping[str, Sequence]) -> list[dict[str, float]]:
    """Every combination of `grid`'s values, in the grid's order."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _implicit():
    """implicit's CPU ALS and threadpoolctl's limiter (an implicit dependency), or the `bench`
    extra named as missing."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in ("implicit", "threadpoolctl"):
            raise
        raise MissingExtraError(EXTRA, package) from error
    return AlternatingLeastSquares, threadpool_limits


def _prefixed(baseline: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{baseline}/{key}": value for key, value in metrics.items()}
