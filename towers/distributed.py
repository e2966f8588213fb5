"""Several training processes (DDP, `trainer=ddp`) that train the model one process would train
on their batches put together: the global batch.

- Each rank's batch is its slice of the global batch (features.datamodule shards the epoch's
  order); its item vectors are gathered from every rank with their gradients (`gather_rows`),
  so every positive sees all ranks' items as in-batch negatives, with logQ and accidental hits
  on the global item ids.
- Each rank computes the loss of its own rows against the global candidates. DDP averages the
  ranks' gradients and the gather's backward sums the gradients of a rank's item vectors over
  the ranks' losses, so the gradient is that of the loss averaged over the global batch
  (tests/towers/test_ddp.py checks it against one process).
- Shared negatives and id dropout come from torch's random stream, which every rank seeds alike
  and advances alike (the same draws of the same shapes), so the extra negatives are the same on
  every rank.
- Metric sums are added up over ranks (towers.metrics.RankingMetrics.all_reduce).

The prepared data is checked alike on every rank by features.ranks. Nothing here is used by one
process: `world()` is (0, 1) and every helper is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from features.ranks import world

# torch >= 2.10 names them *_single; the older names are deprecated there.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherRows(torch.autograd.Function):
    """Every rank's (B, ...) rows concatenated in rank order (W * B, ...). Backward: a rank's rows
    get the sum over ranks of the gradients of their copies (reduce-scatter)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        _, size = world()
        gathered = rows.new_empty((size * rows.shape[0], *rows.shape[1:]))
        _all_gather(gathered, rows.contiguous())
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        _, size = world()
        mine = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
        _reduce_scatter(mine, grad.contiguous())
        return mine


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank → (W * B, ...), rank 0's rows first; gradients flow back to every
    rank's own rows. Every rank must pass the same shape."""
    if world()[1] == 1:
        return rows
    if rows.requires_grad:
        return _GatherRows.apply(rows)
    with torch.no_grad():
        return _GatherRows.forward(None, rows)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over ranks (in place, and returned)."""
    if world()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
