"""Offline evaluation through the serving path.

`evaluate_recommender` ranks held-out users with `Recommender.top_k` — the exact code a request
runs (user tower → FAISS → seen-item exclusion) — so offline and online top-k agree by
construction. `evaluate_popularity` ranks by training popularity with the same exclusion and
the same metric code, as the baseline every model is shown next to."""

from __future__ import annotations

import numpy as np
import torch

from features.arrays import padded_rows
from features.prepare import HeldOut
from serve.recommender import Recommender
from towers.metrics import KS, RankingMetrics
from towers.ranking import exact_top_k


def _update(
    metrics: RankingMetrics, held_out: HeldOut, rows: np.ndarray, top_items: np.ndarray
) -> None:
    relevant = padded_rows(held_out.indptr, held_out.items, rows, pad=-1)
    counts = held_out.indptr[rows + 1] - held_out.indptr[rows]
    metrics.update(
        torch.from_numpy(top_items), torch.from_numpy(relevant), torch.from_numpy(counts)
    )


def evaluate_recommender(
    recommender: Recommender, held_out: HeldOut, ks=KS, stage: str = "test", chunk: int = 4096
) -> dict[str, float]:
    metrics = RankingMetrics(ks)
    for start in range(0, len(held_out), chunk):
        rows = np.arange(start, min(start + chunk, len(held_out)))
        _, top = recommender.top_k(held_out.users[rows], metrics.max_k, exclude_seen=True)
        _update(metrics, held_out, rows, top)
    return metrics.compute(stage)


def evaluate_vectors(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
) -> dict[str, float]:
    """Exact full-catalogue ranking of any model given as vectors (row i of `user_vectors` is
    held_out.users[i]), each user's `seen` (indptr, items) excluded: for baselines (popularity,
    ALS) scored with the same exclusion and metric code as the bundle."""
    metrics = RankingMetrics(ks)
    items_t = torch.from_numpy(np.ascontiguousarray(item_vectors))  # (I, D)
    seen_indptr, seen_items = seen
    for start in range(0, len(held_out), chunk):
        rows = np.arange(start, min(start + chunk, len(held_out)))
        users_t = torch.from_numpy(
            np.ascontiguousarray(user_vectors[rows], dtype=item_vectors.dtype)
        )
        seen_rows = torch.from_numpy(
            padded_rows(seen_indptr, seen_items, held_out.users[rows], pad=-1)
        )
        _, top = exact_top_k(users_t, items_t, metrics.max_k, seen_rows)  # (U, K)
        _update(metrics, held_out, rows, top.numpy())
    return metrics.compute(stage)


def evaluate_popularity(
    item_counts: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
) -> dict[str, float]:
    """Most popular items first (by `item_counts`), each user's `seen` (indptr, items) excluded."""
    # Popularity is a rank-1 model: user vector 1, item vector = count (ties broken by index).
    scores = item_counts.astype(np.float64) - np.arange(len(item_counts)) * 1e-9
    ones = np.ones((len(held_out), 1), dtype=np.float64)
    return evaluate_vectors(ones, scores[:, None], seen, held_out, ks, stage, chunk)
