"""Sampled softmax over in-batch and extra negatives, with the logQ correction and masking of
accidental hits. The loss works on vectors; the towers that made them live elsewhere.

Each row's candidates are every item vector in the batch plus a shared set of extra negatives.
Candidates are not drawn uniformly from the catalogue (in-batch ones follow the training
popularity), so each logit is corrected by subtracting the log of the candidate's expected
number of appearances among the candidates (Yi et al., RecSys 2019; Yang et al., WWW 2020):
log(B · q_item) for in-batch candidates and log(M · q_neg) for M extra ones. A candidate that
is the row's own positive item (another occurrence of it in the batch, or an extra negative
that happens to be it) is an accidental hit and is masked out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SampledSoftmaxLoss(nn.Module):
    def __init__(
        self,
        temperature: float = 0.07,  # logits are cosine / temperature (scale = 1 / temperature)
        learn_temperature: bool = False,  # learn log(1 / temperature), clamped to [0, log 100]
        logq_correction: bool = True,  # subtract log expected candidate count
    ):
        super().__init__()
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )
        self.logq_correction = logq_correction

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach().clamp(0.0, math.log(100.0))))

    def forward(
        self,
        user_vectors: torch.Tensor,  # (B, D)
        item_vectors: torch.Tensor,  # (B, D), row i is user i's positive
        items: torch.Tensor,  # (B,) item indices of the positives
        item_log_q: torch.Tensor,  # (B,) log expected count of each in-batch candidate
        negative_vectors: torch.Tensor | None = None,  # (M, D) extra negatives
        negatives: torch.Tensor | None = None,  # (M,) their item indices
        negative_log_q: torch.Tensor | None = None,  # (M,)
    ) -> torch.Tensor:
        candidates, candidate_ids, log_q = item_vectors, items, item_log_q
        if negative_vectors is not None:
            candidates = torch.cat([item_vectors, negative_vectors])  # (B + M, D)
            candidate_ids = torch.cat([items, negatives])  # (B + M,)
            log_q = torch.cat([item_log_q, negative_log_q])  # (B + M,)
        scale = self.log_scale.clamp(0.0, math.log(100.0)).exp()
        logits = scale * (user_vectors @ candidates.T)  # (B, B + M)
        if self.logq_correction:
            logits = logits - log_q
        labels = torch.arange(len(items), device=items.device)
        accidental = items[:, None] == candidate_ids[None, :]  # (B, B + M)
        accidental[labels, labels] = False
        logits = logits.masked_fill(accidental, float("-inf"))
        return F.cross_entropy(logits, labels)
