"""`RowAdam`: Adam for embedding tables with sparse gradients. A step reads and writes only the
rows the batch touches, yet the weights follow dense Adam's.

Dense Adam moves every row at every step. A row the batch did not touch has a zero gradient, but
its first moment is not zero: it decays by beta1 a step, so the row keeps moving for a few dozen
steps after each touch. Lazy sparse Adam (`torch.optim.SparseAdam`) drops those moves, which cuts
the total step of a row seen once to about a tenth (1 - beta1) of dense Adam's: a different
optimiser. On the 2-core CPU, dense Adam's pass over every row, and the zero-filled dense
gradients it needs, took about half of a Gowalla training step.

`RowAdam` defers the moves instead. Each row remembers the step of its last update and the
learning rate then. Skipped step j after an update with moments (m, v) moves the row by

    lr * (beta1^j m / bc1) / (sqrt(beta2^j v / bc2) + eps)  =  lr * r^j * (sqrt(bc2) / bc1) * m / sqrt(v)

(eps aside), with r = beta1 / sqrt(beta2) and bc1, bc2 Adam's bias corrections at that step. The
sum over j = 1..k is read from a precomputed table while the corrections still change (the first
~6,200 steps at beta2 = 0.999) and is geometric after; the moments decay by beta1^k and beta2^k.
What is approximated: the learning rate is held at its value of the last update (the terms fall as
r^j ~ 0.9^j, below 1% after 44 steps, so this shows only under a steep schedule) and eps at that
of the first skipped step. `tests/towers/test_optim.py` measures both against dense Adam.

The pending moves must be applied before a row is read:

- `catch_up(table, ids)` before a training step's forward pass, for every row it will read (a row
  read stale gets its gradient at the wrong point: `TwoTowerModule.training_step` does this);
- `flush()` before the weights are read as a whole (validation, checkpoints, export).

A dense gradient (e.g. a table tied to a pooled history) updates every row, with the same
arithmetic.

Not under DDP: its gradient all-reduce sums dense gradients, and each rank would defer and catch
up rows on its own. `TwoTowerModule` trains the sparse tables with dense gradients and Adam there,
which this optimiser's weights follow anyway.
"""

from __future__ import annotations

import math

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if lr < 0:
            raise ValueError(f"RowAdam: lr must be >= 0, got {lr!r}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"RowAdam: betas must be in [0, 1), got {betas!r}")
        if betas[0] >= math.sqrt(betas[1]):
            # Dense Adam's idle moves then grow instead of dying out (m / sqrt(v) rises).
            raise ValueError(f"RowAdam: betas need beta1 < sqrt(beta2), got {betas!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self._sums: dict = {}  # (beta1, beta2, device) -> idle-move sums, see _idle_sums
        for group in self.param_groups:
            for param in group["params"]:
                if param.dim() != 2:
                    raise ValueError(
                        f"RowAdam: expected 2-D embedding tables, got shape {tuple(param.shape)}"
                    )

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every state tensor but "step" to the table's dtype: keep `last` an integer.
        lasts = {i: s["last"] for i, s in state_dict["state"].items() if "last" in s}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for i, last in lasts.items():
            self.state[params[i]]["last"] = last.to(params[i].device, torch.int64)

    def _state(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            rows = param.shape[0]
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["last"] = torch.zeros(rows, dtype=torch.int64, device=param.device)  # 0 = never
            state["rate"] = torch.zeros(rows, dtype=param.dtype, device=param.device)
        return state

    def _idle_sums(self, group: dict, device: torch.device) -> tuple[torch.Tensor, int]:
        """sums[s, k] = sum over j = 1..k of ratio^j * sqrt(1 - beta2^(s+j)) / (1 - beta1^(s+j)):
        the move of k idle steps after an update at step s, in units of lr * m / sqrt(v), with
        Adam's bias corrections exact. Rows for s < `horizon` and k <= the number of terms that
        matter (ratio^k > 1e-8); from `horizon` on the corrections are within 0.1% of 1 and the
        sum is geometric."""
        beta1, beta2 = group["betas"]
        key = (beta1, beta2, device)
        if key not in self._sums:
            ratio = beta1 / math.sqrt(beta2)
            terms = math.ceil(math.log(1e-8) / math.log(ratio)) if ratio > 0 else 1
            horizon = math.ceil(math.log(2e-3) / math.log(beta2)) if beta2 > 0 else 1
            i = torch.arange(1, horizon + terms, dtype=torch.float64)
            correction = (1 - beta2**i).sqrt() / (1 - beta1**i)  # at steps 1 .. horizon + terms - 1
            # Row s: the corrections at steps s+1 .. s+terms. (horizon, terms)
            windows = correction.unfold(0, terms, 1)[:horizon]
            weights = ratio ** torch.arange(1, terms + 1, dtype=torch.float64)
            sums = torch.cat(
                [torch.zeros(horizon, 1, dtype=torch.float64), (windows * weights).cumsum(1)], 1
            )
            self._sums[key] = (sums.to(device=device, dtype=torch.float32), horizon)
        return self._sums[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._state(param)
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows, values = torch.arange(param.shape[0], device=param.device), grad
                self._catch_up(param, state, group, rows)  # rows not brought up to date before
                state["step"] += 1
                step = state["step"]
                m = state["exp_avg"].index_select(0, rows)
                v = state["exp_avg_sq"].index_select(0, rows)
                m.mul_(beta1).add_(values, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                correction = math.sqrt(1 - beta2**step)  # eps placed as torch's Adam places it
                move = m / v.sqrt().add_(eps * correction)
                move.mul_(lr * correction / (1 - beta1**step))
                param.index_copy_(0, rows, param.index_select(0, rows).sub_(move))
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                state["last"].index_fill_(0, rows, step)
                state["rate"].index_fill_(0, rows, lr)
        return loss

    @torch.no_grad()
    def catch_up(self, param: torch.Tensor, ids: torch.Tensor) -> None:
        """Apply the pending idle steps of the rows `ids` (any shape, repeats allowed) of table
        `param`, so that a forward pass reads them as dense Adam would hold them. Call it for
        every row a training step is about to read: a row read stale gets its gradient at the
        wrong point."""
        state = self.state.get(param)
        if state:
            self._catch_up(param, state, self._group(param), torch.unique(ids.flatten()))

    @torch.no_grad()
    def flush(self) -> None:
        """Apply every row's pending idle steps, so the weights are what dense Adam would hold
        now (before evaluation, export or a checkpoint)."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if state:
                    rows = torch.arange(param.shape[0], device=param.device)
                    self._catch_up(param, state, group, rows)

    def _group(self, param: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError("RowAdam.catch_up: the table is not one this optimiser updates")

    def _catch_up(self, param: torch.Tensor, state: dict, group: dict, rows: torch.Tensor) -> None:
        """Move `rows` (unique) through the gradient-free steps since their last update, up to the
        current step, and decay their moments through them. Rows never updated have zero moments
        and nothing to catch up."""
        last = state["last"].index_select(0, rows)
        pending = (last < state["step"]) & (last > 0)
        if not bool(pending.any()):
            return
        rows, last = rows[pending], last[pending]
        skipped = state["step"] - last
        m = state["exp_avg"].index_select(0, rows)
        v = state["exp_avg_sq"].index_select(0, rows)
        beta1, beta2 = group["betas"]
        ratio = beta1 / math.sqrt(beta2)
        sums, horizon = self._idle_sums(group, m.device)
        k = skipped.to(m.dtype)
        series = ratio * (1 - ratio**k) / (1 - ratio)  # bias corrections ~1: geometric
        exact = sums[last.clamp(max=horizon - 1), skipped.clamp(max=sums.shape[1] - 1)]
        scale = torch.where(last < horizon, exact.to(m.dtype), series)
        scale = scale * state["rate"].index_select(0, rows)
        # eps as torch's Adam places it, at the first idle step (sqrt(v) shrinks by sqrt(beta2)
        # a step, a change of 0.05% per step).
        eps = group["eps"] * (1 - beta2 ** (last + 1).to(m.dtype)).sqrt()
        move = (m / v.sqrt().add_(eps[:, None])).mul_(scale[:, None])
        param.index_copy_(0, rows, param.index_select(0, rows).sub_(move))
        state["exp_avg"].index_copy_(0, rows, m.mul_((beta1**k)[:, None]))
        state["exp_avg_sq"].index_copy_(0, rows, v.mul_((beta2**k)[:, None]))
        state["last"].index_fill_(0, rows, state["step"])
        state["rate"].index_fill_(0, rows, group["lr"])
