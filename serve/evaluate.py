"""Offline evaluation through the serving path.

`evaluate_recommender` ranks held-out users with `Recommender.top_k` — the exact code a request
runs (user tower → FAISS → seen-item exclusion) — so offline and online top-k agree by
construction. `evaluate_popularity` ranks by training popularity with the same exclusion and
the same metric code, as the baseline every model is shown next to; `evaluate_content` ranks by
the content alone (a user's history's mean content vector), the baseline for cold items.

Each baseline takes `candidates`, the item rows that may be recommended (None: every item): a
slice such as the cold items is ranked among its own items.

Given `audit` (serve.audit's groups), `evaluate_recommender`, `evaluate_vectors` and
`evaluate_popularity` also feed the top-k lists they rank to the retrievability audit and return
its metrics with theirs (ranking at least AUDIT_K deep); `evaluate_bundle` measures a bundle and
popularity from the bundle alone (`python -m serve audit`)."""

from __future__ import annotations

import numpy as np
import torch

from features.arrays import padded_rows
from features.prepare import HeldOut
from serve.audit import AuditGroups, RetrievabilityAudit
from serve.recommender import Recommender
from towers.metrics import KS, RankingMetrics, hits, per_user
from towers.ranking import exact_top_k


def _update(
    metrics: RankingMetrics,
    held_out: HeldOut,
    rows: np.ndarray,
    top_items: np.ndarray,
    audit: RetrievabilityAudit | None = None,
) -> None:
    metrics.update(torch.from_numpy(top_items), *_relevant(held_out, rows))
    if audit is not None:
        audit.update(held_out, rows, top_items)


def _relevant(held_out: HeldOut, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out items of `rows` (R, longest) padded with -1, and how many each has (R,)."""
    relevant = padded_rows(held_out.indptr, held_out.items, rows, pad=-1)
    counts = held_out.indptr[rows + 1] - held_out.indptr[rows]
    return torch.from_numpy(relevant), torch.from_numpy(counts)


def _depth(metrics: RankingMetrics, audit: RetrievabilityAudit | None) -> int:
    """How deep to rank: the metrics' largest k, at least the audit's."""
    return metrics.max_k if audit is None else max(metrics.max_k, audit.k)


def _computed(
    metrics: RankingMetrics, audit: RetrievabilityAudit | None, stage: str
) -> dict[str, float]:
    return metrics.compute(stage) | ({} if audit is None else audit.compute(stage))


def _servable(recommender: Recommender, filters: dict | None) -> np.ndarray:
    """The item rows a request with `filters` may get: the active ones that pass them."""
    item_filter = recommender.catalogue.item_filter(filters)
    return np.flatnonzero(recommender.active if item_filter is None else item_filter.eligible)


def evaluate_recommender(
    recommender: Recommender,
    held_out: HeldOut,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
    *,
    histories: np.ndarray | None = None,
    filters: dict | None = None,
    audit: AuditGroups | None = None,
) -> dict[str, float]:
    """The bundle's top-k of each held-out user through `Recommender.top_k`; `histories` (U, L)
    item rows given in place of the stored ones (row i: held_out.users[i]), `filters` over the
    item table (a slice ranked among its own items); `audit`: the audit's metrics too, over the
    active items (that pass `filters`)."""
    metrics = RankingMetrics(ks)
    audited = None if audit is None else audit.start(_servable(recommender, filters))
    for start in range(0, len(held_out), chunk):
        rows = np.arange(start, min(start + chunk, len(held_out)))
        given = None if histories is None else histories[rows]
        _, top = recommender.top_k(
            held_out.users[rows],
            _depth(metrics, audited),
            exclude_seen=True,
            histories=given,
            filters=filters,
        )
        _update(metrics, held_out, rows, top, audited)
    return _computed(metrics, audited, stage)


def user_metrics(
    recommender: Recommender, held_out: HeldOut, ks=KS, chunk: int = 4096
) -> dict[str, np.ndarray]:
    """Each held-out user's metrics through `Recommender.top_k`, name -> (U,) (row i:
    held_out.users[i]): what `evaluate_recommender` averages."""
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(held_out), chunk):
        rows = np.arange(start, min(start + chunk, len(held_out)))
        _, top = recommender.top_k(held_out.users[rows], max(ks), exclude_seen=True)
        relevant, counts = _relevant(held_out, rows)
        parts.append(per_user(hits(torch.from_numpy(top), relevant), counts, ks))
    return {name: torch.cat([p[name] for p in parts]).numpy() for name in parts[0]}


def evaluate_bundle(
    recommender: Recommender, held_out: HeldOut, ks=KS, stage: str = "test"
) -> dict[str, float]:
    """The bundle through the serving path and popularity (`popularity/...`: the items by how
    many users have seen them, among the active ones), each with the retrievability audit, from
    the bundle alone: its seen items are the training interactions."""
    seen = (recommender.users.seen_indptr, recommender.users.seen_items)
    groups = AuditGroups.from_seen(seen, recommender.num_items)
    metrics = evaluate_recommender(recommender, held_out, ks, stage, audit=groups)
    counts = np.bincount(seen[1], minlength=recommender.num_items)
    active = np.flatnonzero(recommender.active)
    popularity = evaluate_popularity(
        counts, seen, held_out, ks, stage, candidates=active, audit=groups
    )
    return metrics | {f"popularity/{name}": value for name, value in popularity.items()}


def evaluate_vectors(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
    candidates: np.ndarray | None = None,
    audit: AuditGroups | None = None,
) -> dict[str, float]:
    """Exact ranking of any model given as vectors (row i of `user_vectors` is
    held_out.users[i]) over the `candidates` item rows (None: the whole catalogue), each user's
    `seen` (indptr, items) excluded: for baselines (popularity, ALS, content) scored with the
    same exclusion and metric code as the bundle; `audit`: the audit's metrics too."""
    metrics = RankingMetrics(ks)
    audited = None if audit is None else audit.start(candidates)
    rows_of_candidates = np.arange(len(item_vectors)) if candidates is None else candidates
    candidate_of_item = _candidate_positions(len(item_vectors), rows_of_candidates)  # (I,)
    items_t = torch.from_numpy(np.ascontiguousarray(item_vectors[rows_of_candidates]))  # (C, D)
    seen_indptr, seen_items = seen
    for start in range(0, len(held_out), chunk):
        rows = np.arange(start, min(start + chunk, len(held_out)))
        users_t = torch.from_numpy(
            np.ascontiguousarray(user_vectors[rows], dtype=item_vectors.dtype)
        )  # (U, D)
        seen_rows = padded_rows(seen_indptr, seen_items, held_out.users[rows], pad=-1)  # (U, S)
        seen_candidates = np.where(seen_rows >= 0, candidate_of_item[seen_rows], -1)  # (U, S)
        _, top = exact_top_k(
            users_t, items_t, _depth(metrics, audited), torch.from_numpy(seen_candidates)
        )
        _update(metrics, held_out, rows, rows_of_candidates[top.numpy()], audited)  # (U, K) rows
    return _computed(metrics, audited, stage)


def evaluate_popularity(
    item_counts: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
    candidates: np.ndarray | None = None,
    audit: AuditGroups | None = None,
) -> dict[str, float]:
    """Most popular items first (by `item_counts`) among the `candidates` item rows (None: every
    item), each user's `seen` (indptr, items) excluded; `audit`: the audit's metrics too."""
    # Popularity is a rank-1 model: user vector 1, item vector = count (ties broken by index).
    scores = item_counts.astype(np.float64) - np.arange(len(item_counts)) * 1e-9  # (I,)
    ones = np.ones((len(held_out), 1), dtype=np.float64)  # (U, 1)
    return evaluate_vectors(
        ones, scores[:, None], seen, held_out, ks, stage, chunk, candidates, audit
    )


def evaluate_content(
    item_content: np.ndarray,
    histories: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut,
    candidates: np.ndarray | None = None,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    ks=KS,
    stage: str = "test",
    chunk: int = 4096,
) -> dict[str, float]:
    """The content-only baseline: each held-out user is the normalised mean of the L2-normalised
    `item_content` rows (I, d) of their `histories` items ((indptr, items) over all users),
    ranked by cosine against the `candidates`' content (None: every item), `seen` excluded
    (None: nothing). A user with no history scores nothing: a miss in every metric."""
    content = _unit_rows(item_content.astype(np.float32))  # (I, d)
    indptr, items = histories
    has_history = indptr[held_out.users + 1] > indptr[held_out.users]  # (U,)
    scored = _held_out_rows(held_out, np.flatnonzero(has_history))
    user_vectors = _unit_rows(_mean_rows(content, indptr, items, scored.users))  # (U', d)
    no_seen = (np.zeros(len(indptr), np.int64), np.zeros(0, np.int64))
    metrics = evaluate_vectors(
        user_vectors,
        content,
        no_seen if seen is None else seen,
        scored,
        ks,
        stage,
        chunk,
        candidates,
    )
    # The users without history add zero to every metric's sum: rescale the means to all users.
    share_scored = len(scored) / max(len(held_out), 1)
    return {name: value * share_scored for name, value in metrics.items()}


def _candidate_positions(num_items: int, candidates: np.ndarray) -> np.ndarray:
    """(I,) each item row's position among `candidates`, -1 for an item that is not one."""
    positions = np.full(num_items, -1, dtype=np.int64)
    positions[candidates] = np.arange(len(candidates))
    return positions


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm; an all-zero row stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.where(norms > 0, norms, 1)


def _mean_rows(
    vectors: np.ndarray, indptr: np.ndarray, items: np.ndarray, users: np.ndarray
) -> np.ndarray:
    """(len(users), d): each user's mean of `vectors` over their (indptr, items) row, as one
    sparse (users × items) product; a user without items gets zeros."""
    user_indptr, user_items = _csr_rows(indptr, items, users)
    lengths = np.diff(user_indptr)  # (U,)
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(vectors.dtype)  # (nnz,)
    user_of_entry = np.repeat(np.arange(len(users)), lengths)  # (nnz,)
    membership = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([user_of_entry, user_items]).astype(np.int64)),  # (2, nnz)
        torch.from_numpy(weights),
        size=(len(users), len(vectors)),
        check_invariants=True,
    )  # (U, I)
    return torch.sparse.mm(membership, torch.from_numpy(vectors)).numpy()  # (U, d)


def _held_out_rows(held_out: HeldOut, rows: np.ndarray) -> HeldOut:
    """The held-out users at `rows` with their interactions."""
    return HeldOut(held_out.users[rows], *_csr_rows(held_out.indptr, held_out.items, rows))


def _csr_rows(
    indptr: np.ndarray, values: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CSR matrix (indptr, values) restricted to `rows`, in that order, as (indptr, values)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts  # (R,)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    row_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (R + 1,)
    return row_indptr, values[np.repeat(starts, lengths) + offsets]
