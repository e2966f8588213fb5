"""The offline baselines (popularity, vectors, content) against rankings worked out by hand or by
brute force in numpy, with and without a candidate set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.prepare import HeldOut
from serve.evaluate import evaluate_content, evaluate_popularity, evaluate_vectors

KS = (1, 3, 5)


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return indptr, np.array([i for r in rows for i in r], dtype=np.int64)


def _held_out(users: list[int], rows: list[list[int]]) -> HeldOut:
    return HeldOut(np.array(users, dtype=np.int64), *_csr(rows))


def _brute_metrics(tops: list[list[int]], relevant: list[list[int]], ks=KS) -> dict[str, float]:
    """The metrics' definitions (towers/metrics.py), user by user, in plain Python."""
    out = {}
    for k in ks:
        recall, ndcg, hit, mrr = [], [], [], []
        for top, rel in zip(tops, relevant, strict=True):
            found = [i for i, item in enumerate(top[:k]) if item in rel]
            recall.append(len(found) / len(rel))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(rel), k)))
            ndcg.append(sum(1 / math.log2(p + 2) for p in found) / idcg)
            hit.append(float(bool(found)))
            mrr.append(1 / (found[0] + 1) if found else 0.0)
        for name, values in (("recall", recall), ("ndcg", ndcg), ("hit_rate", hit), ("mrr", mrr)):
            out[f"test/{name}@{k}"] = sum(values) / len(values)
    return out


def _brute_top(scores: np.ndarray, candidates: np.ndarray, seen: list[int], k: int) -> list[int]:
    """The `k` best candidates by `scores` (I,), none of `seen`: a sort, no shared code."""
    allowed = [int(i) for i in candidates if i not in seen]
    return sorted(allowed, key=lambda i: -scores[i])[:k]


# -- popularity, worked out by hand ------------------------------------------------------------
def test_popularity_ranks_among_the_candidates_only_without_seen_items():
    counts = np.array([50, 10, 40, 30, 20, 60, 70, 5, 8])  # items 6, 5, 0 are the most popular
    candidates = np.array([1, 3, 4, 7, 8])  # by count: 3, 4, 1, 8, 7 (8 is the last item row)
    seen = _csr([[3], [], [4, 6]])
    held_out = _held_out([0, 1, 2], [[8], [4, 6], [8]])
    metrics = evaluate_popularity(counts, seen, held_out, (1, 2, 3), candidates=candidates)
    # user 0 gets 4, 1, 8 (3 seen); user 1 gets 3, 4, 1 (6 is no candidate); user 2 gets 3, 1, 8.
    assert metrics["test/recall@1"] == 0.0
    assert metrics["test/recall@2"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert metrics["test/recall@3"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["test/mrr@3"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    # The whole catalogue: 6, 5, 0 for users 0 and 1; 5, 0, 2 for user 2 (who has seen 6).
    everything = evaluate_popularity(counts, seen, held_out, (1, 2, 3))
    assert everything["test/recall@1"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert everything["test/recall@3"] == pytest.approx((0 + 0.5 + 0) / 3)


# -- vectors and content against brute force ---------------------------------------------------
NUM_USERS, NUM_ITEMS, DIM = 30, 40, 6


def _world(seed: int):
    """Random seen items and held-out items (some outside any candidate set) for 20 users."""
    rng = np.random.default_rng(seed)
    seen_rows = [
        list(rng.choice(NUM_ITEMS, size=rng.integers(0, 6), replace=False))
        for _ in range(NUM_USERS)
    ]
    users = sorted(rng.choice(NUM_USERS, size=20, replace=False).tolist())
    relevant = [list(rng.choice(NUM_ITEMS, size=rng.integers(1, 4), replace=False)) for _ in users]
    return rng, seen_rows, users, relevant


@pytest.mark.parametrize("restricted", [True, False], ids=["candidates", "all_items"])
def test_vectors_rank_like_brute_force(restricted):
    rng, seen_rows, users, relevant = _world(1)
    user_vectors = rng.normal(size=(len(users), DIM))  # (U, D) row i is users[i]
    item_vectors = rng.normal(size=(NUM_ITEMS, DIM))  # (I, D)
    candidates = np.sort(rng.choice(NUM_ITEMS, size=15, replace=False))
    everything = np.arange(NUM_ITEMS)
    tops = [
        _brute_top(
            item_vectors @ user_vectors[i],
            candidates if restricted else everything,
            seen_rows[user],
            max(KS),
        )
        for i, user in enumerate(users)
    ]
    metrics = evaluate_vectors(
        user_vectors,
        item_vectors,
        _csr(seen_rows),
        _held_out(users, relevant),
        KS,
        chunk=7,  # several chunks
        candidates=candidates if restricted else None,
    )
    assert metrics == pytest.approx(_brute_metrics(tops, relevant))
    assert metrics["test/recall@5"] > 0  # the comparison is not between two zeros


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("with_seen", [True, False], ids=["seen_excluded", "no_seen"])
def test_content_ranks_like_brute_force(with_seen):
    rng, seen_rows, users, relevant = _world(2)
    content = (rng.normal(size=(NUM_ITEMS, DIM)) * rng.uniform(0.5, 3, (NUM_ITEMS, 1))).astype(
        np.float32
    )  # (I, d) rows of different lengths: the normalisation matters
    history_rows = [
        list(rng.choice(NUM_ITEMS, size=rng.integers(1, 8), replace=False))
        for _ in range(NUM_USERS)
    ]
    history_rows[users[3]] = []  # a held-out user without history: a miss
    candidates = np.sort(rng.choice(NUM_ITEMS, size=15, replace=False))
    tops = []
    for user in users:
        if not history_rows[user]:
            tops.append([])
            continue
        profile = _unit(_unit(content[history_rows[user]].astype(np.float64)).mean(0))  # (d,)
        cosine = _unit(content.astype(np.float64)) @ profile  # (I,)
        excluded = seen_rows[user] if with_seen else []
        tops.append(_brute_top(cosine, candidates, excluded, max(KS)))
    metrics = evaluate_content(
        content,
        _csr(history_rows),
        _held_out(users, relevant),
        candidates=candidates,
        seen=_csr(seen_rows) if with_seen else None,
        ks=KS,
    )
    assert metrics == pytest.approx(_brute_metrics(tops, relevant))
    assert metrics["test/recall@5"] > 0


def test_content_user_without_history_is_a_miss():
    # One candidate, item 2, held out for both users: any ranking of it would be a hit.
    content = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # (I, d)
    histories = _csr([[0], []])  # user 0 has item 0, user 1 nothing
    held_out = _held_out([0, 1], [[2], [2]])
    metrics = evaluate_content(content, histories, held_out, candidates=np.array([2]), ks=(1,))
    assert metrics["test/recall@1"] == 0.5
    assert metrics["test/ndcg@1"] == 0.5
