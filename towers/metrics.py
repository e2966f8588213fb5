"""Full-catalogue ranking metrics: recall@k, ndcg@k, hit_rate@k, mrr@k.

Definitions (the LightGCN / BARS protocol), per user with held-out set R and ranked list L:
- recall@k   = |L[:k] ∩ R| / |R|
- ndcg@k     = DCG@k / IDCG@k, IDCG with min(|R|, k) relevant items at the top
- hit_rate@k = 1 if L[:k] ∩ R is not empty
- mrr@k      = 1 / rank of the first relevant item in L[:k] (0 if none)
each averaged over users with at least one held-out interaction. Metric names are made by
`metric_name` only, so `val/recall@20` is spelt in one place.
"""

from __future__ import annotations

import torch

from towers.distributed import all_reduce_sum, world

KS = (10, 20, 50, 100)
METRICS = ("recall", "ndcg", "hit_rate", "mrr")


def metric_name(metric: str, k: int, stage: str | None = None) -> str:
    name = f"{metric}@{k}"
    return name if stage is None else f"{stage}/{name}"


def hits(top_items: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(U, K) ranked item indices, (U, R) relevant indices padded with -1 → (U, K) bool."""
    valid = relevant >= 0
    return ((top_items.unsqueeze(-1) == relevant.unsqueeze(1)) & valid.unsqueeze(1)).any(-1)


def per_user(hit: torch.Tensor, num_relevant: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """Each user's metrics, name -> (U,) float64, from (U, K) hits and (U,) held-out counts."""
    hit = hit.double()
    num_relevant = num_relevant.double().clamp(min=1)
    positions = torch.arange(1, hit.shape[1] + 1, dtype=torch.float64)
    discounts = 1.0 / torch.log2(positions + 1)  # (K,)
    out = {}
    for k in ks:
        top = hit[:, :k]
        found = top.sum(1)
        idcg = torch.cumsum(discounts, 0)[
            (num_relevant.clamp(max=k) - 1).long().clamp(max=top.shape[1] - 1)
        ]
        first = torch.where(top.any(1), 1.0 / (top.argmax(1) + 1).double(), torch.zeros_like(found))
        out[metric_name("recall", k)] = found / num_relevant
        out[metric_name("ndcg", k)] = (top * discounts[: top.shape[1]]).sum(1) / idcg
        out[metric_name("hit_rate", k)] = (found > 0).double()
        out[metric_name("mrr", k)] = first
    return out


def metric_sums(hit: torch.Tensor, num_relevant: torch.Tensor, ks=KS) -> dict[str, float]:
    """Per-user metrics summed over users (divide by the user count for means)."""
    return {name: values.sum().item() for name, values in per_user(hit, num_relevant, ks).items()}


class RankingMetrics:
    """Accumulates metric sums over chunks of users; `compute()` gives the means."""

    def __init__(self, ks=KS):
        self.ks = tuple(ks)
        self.reset()

    @property
    def max_k(self) -> int:
        return max(self.ks)

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.num_users = 0

    def update(
        self, top_items: torch.Tensor, relevant: torch.Tensor, num_relevant: torch.Tensor
    ) -> None:
        for name, value in metric_sums(hits(top_items, relevant), num_relevant, self.ks).items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.num_users += int(top_items.shape[0])

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """The sums and the user count added up over the training processes (DDP), each of which
        ranked its share of the users: `compute` then gives the means over all of them. Call it
        on every rank (a collective, on `device`: the backend's); nothing with one process."""
        if world()[1] == 1:
            return
        names = [metric_name(m, k) for m in METRICS for k in self.ks]
        local = [self.sums.get(name, 0.0) for name in names] + [float(self.num_users)]
        totals = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()
        self.sums = dict(zip(names, totals[:-1], strict=True))
        self.num_users = int(totals[-1])

    def compute(self, stage: str | None = None) -> dict[str, float]:
        n = max(self.num_users, 1)
        return {
            metric_name(m, k, stage): self.sums.get(metric_name(m, k), 0.0) / n
            for m in METRICS
            for k in self.ks
        }
