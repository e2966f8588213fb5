"""The retrievability audit: which items and which users a ranking fails, at k = AUDIT_K (20).

It reads the top-k lists an evaluation already ranks (serve.evaluate: the serving path or exact
vectors, each user's known items excluded); `RetrievabilityAudit` is fed each chunk of them.
"Training interactions" are those before the test period (train + validation): what the bundle's
seen items hold and the popularity baseline counts, so a run and `python -m serve audit` group
items and users alike.

Groups:
- items by popularity (`popularity_buckets`): sorted by training interactions, most first (ties
  by row), an item falls in the third of all interactions where its own start: head when the
  items before it hold less than a third of the interactions, mid when less than two thirds,
  tail otherwise; every item without a training interaction (and a held-out item the catalogue
  does not know) is tail.
- users by activity: light when their training interactions are at most the median over the
  audited (held-out) users, heavy when above it.

Metrics (stage `test`; `{stage}_head/...` for a bucket):
- `{stage}_{head,mid,tail}/recall@20` and `/ndcg@20`: the ranking metrics (towers.metrics) of
  each user with at least one held-out interaction in the bucket, counting only that bucket's
  held-out interactions as relevant (ranks are in the user's whole list, where items of other
  buckets take places too), averaged over those users; absent when no user has one.
- `{stage}_users_{light,heavy}/recall@20`: recall@20 averaged over the light or heavy users;
  absent for a group without users (no user above the median when most share the top count).
- `{stage}/coverage@20`: the share of the catalogue (the items that could be ranked) in at least
  one user's top 20.
- `{stage}/gini@20`: the Gini coefficient of how often each catalogue item is in a top 20 (0: all
  equally often; towards 1: a few items take every slot).
- `{stage}/tail_share@20`: the share of all top-20 slots that hold a tail item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from features.arrays import csr_by_user, padded_rows
from features.prepare import HeldOut, PreparedData
from towers.metrics import hits, metric_name, metric_sums

AUDIT_K = 20
HEAD, MID, TAIL = 0, 1, 2
BUCKETS = ("head", "mid", "tail")  # BUCKETS[HEAD] == "head"
ACTIVITY = ("users_light", "users_heavy")
CATALOGUE_METRICS = ("coverage", "gini", "tail_share")


def popularity_buckets(item_counts: np.ndarray) -> np.ndarray:
    """(I,) HEAD, MID or TAIL of each item by its training interactions `item_counts` (I,): the
    third of all interactions where the item's own start (see the module docstring)."""
    counts = np.asarray(item_counts, dtype=np.int64)
    total = int(counts.sum())
    buckets = np.full(len(counts), TAIL, dtype=np.int64)
    if total == 0:
        return buckets
    order = np.lexsort((np.arange(len(counts)), -counts))  # most interactions first, ties by row
    before = np.cumsum(counts[order]) - counts[order]  # interactions of the items ahead
    buckets[order] = np.minimum(3 * before // total, TAIL)  # integers: the cuts are exact
    buckets[counts == 0] = TAIL
    return buckets


def gini(counts: np.ndarray) -> float:
    """The Gini coefficient of non-negative `counts`: sum_i (2i - n - 1) x_(i) / (n sum x) over
    the counts in ascending order, i = 1..n (half the mean absolute difference of every pair over
    the mean); 0.0 for no counts or all zero."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


@dataclass(frozen=True)
class AuditGroups:
    """The audit's groups: each item's popularity bucket and each user's activity."""

    item_bucket: np.ndarray  # (I,) HEAD, MID or TAIL
    user_activity: np.ndarray  # (U,) training interactions of each user row

    @classmethod
    def from_seen(cls, seen: tuple[np.ndarray, np.ndarray], num_items: int) -> AuditGroups:
        """From every user row's training items `seen` (indptr, items): a bundle's seen items."""
        indptr, items = seen
        counts = np.bincount(items, minlength=num_items)
        return cls(popularity_buckets(counts), np.diff(indptr).astype(np.int64))

    @classmethod
    def of_data(cls, data: PreparedData) -> AuditGroups:
        """From the interactions before the test period (train + validation)."""
        return cls.from_seen(csr_by_user(data.before_test, data.num_users), data.num_items)

    def start(self, candidates: np.ndarray | None = None, k: int = AUDIT_K) -> RetrievabilityAudit:
        """An empty audit over the `candidates` item rows (None: every item)."""
        return RetrievabilityAudit(self, candidates, k)


class RetrievabilityAudit:
    """Accumulates the audit over chunks of ranked users (`update`); `compute` gives the
    metrics. `candidates`: the item rows that could be ranked (the catalogue coverage and the
    Gini coefficient count over); None: every item."""

    def __init__(
        self, groups: AuditGroups, candidates: np.ndarray | None = None, k: int = AUDIT_K
    ) -> None:
        self.groups, self.k = groups, k
        num_items = len(groups.item_bucket)
        self.candidates = np.arange(num_items) if candidates is None else np.asarray(candidates)
        self.times_ranked = np.zeros(num_items, dtype=np.int64)  # (I,) top-k slots of each item
        self.bucket_sums = {b: dict.fromkeys(("recall", "ndcg", "users"), 0.0) for b in BUCKETS}
        self.activity: list[np.ndarray] = []  # per chunk, (U',) each ranked user's activity
        self.recall: list[np.ndarray] = []  # per chunk, (U',) each ranked user's recall@k

    def update(self, held_out: HeldOut, rows: np.ndarray, top_items: np.ndarray) -> None:
        """The ranked lists `top_items` (U', >= k; -1: no item) of the held-out users at `rows`."""
        top = top_items[:, : self.k]  # (U', k)
        ranked = top[top >= 0]
        self.times_ranked += np.bincount(ranked, minlength=len(self.times_ranked))
        relevant = padded_rows(held_out.indptr, held_out.items, rows, pad=-2)  # (U', R)
        # -2: padding; -1: a held-out item the catalogue does not know (tail, never found).
        bucket = np.where(relevant >= 0, self.groups.item_bucket[np.maximum(relevant, 0)], TAIL)
        top_t = torch.from_numpy(np.ascontiguousarray(top))  # (U', k)
        for b, name in enumerate(BUCKETS):
            member = (relevant != -2) & (bucket == b)  # (U', R) the bucket's held-out items
            counts = member.sum(1)  # (U',)
            users = counts > 0
            if not users.any():
                continue
            only = np.where(member & (relevant >= 0), relevant, -1)[users]  # -1: never found
            found = hits(top_t[torch.from_numpy(users)], torch.from_numpy(only))
            sums = metric_sums(found, torch.from_numpy(counts[users]), (self.k,))
            self.bucket_sums[name]["recall"] += sums[metric_name("recall", self.k)]
            self.bucket_sums[name]["ndcg"] += sums[metric_name("ndcg", self.k)]
            self.bucket_sums[name]["users"] += int(users.sum())
        known = torch.from_numpy(np.where(relevant >= 0, relevant, -1))
        found = hits(top_t, known).sum(1).numpy()  # (U',)
        self.recall.append(found / np.maximum((relevant != -2).sum(1), 1))
        self.activity.append(self.groups.user_activity[held_out.users[rows]])

    def compute(self, stage: str = "test") -> dict[str, float]:
        """The audit's metrics, named as in the module docstring."""
        out: dict[str, float] = {}
        for name, sums in self.bucket_sums.items():
            if not sums["users"]:
                continue  # no held-out user has a target in this bucket: nothing to say
            out[metric_name("recall", self.k, f"{stage}_{name}")] = sums["recall"] / sums["users"]
            out[metric_name("ndcg", self.k, f"{stage}_{name}")] = sums["ndcg"] / sums["users"]
        activity = np.concatenate([np.zeros(0, np.int64), *self.activity])
        recall = np.concatenate([np.zeros(0), *self.recall])
        median = float(np.median(activity)) if len(activity) else 0.0
        for name, members in zip(ACTIVITY, (activity <= median, activity > median), strict=True):
            if members.any():  # none above the median when most users share the top count
                out[metric_name("recall", self.k, f"{stage}_{name}")] = float(
                    recall[members].mean()
                )
        times = self.times_ranked[self.candidates]  # (C,)
        slots = int(self.times_ranked.sum())
        tail_slots = int(self.times_ranked[self.groups.item_bucket == TAIL].sum())
        out[metric_name("coverage", self.k, stage)] = float((times > 0).sum()) / max(len(times), 1)
        out[metric_name("gini", self.k, stage)] = gini(times)
        out[metric_name("tail_share", self.k, stage)] = tail_slots / max(slots, 1)
        return out
