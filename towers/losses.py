"""Sampled softmax over in-batch and extra negatives, with the logQ correction and masking of
accidental hits. The loss works on vectors; the towers that made them live elsewhere.

Each row's candidates are every item vector in the batch plus a shared set of extra negatives.
Candidates are not drawn uniformly from the catalogue (in-batch ones follow the training
popularity), so each logit is corrected by subtracting the log of the candidate's expected
number of appearances among the candidates (Yi et al., RecSys 2019; Yang et al., WWW 2020):
log(B · q_item) for in-batch candidates and log(M · q_neg) for M extra ones. A candidate that
is the row's own positive item (another occurrence of it in the batch, or an extra negative
that happens to be it) is an accidental hit and is masked out.

The in-batch candidates may be more rows than the users: under DDP (towers.distributed) every
rank's item vectors, with `positive_rows` saying where each of this rank's users finds its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from towers.config import ConfigError


class SampledSoftmaxLoss(nn.Module):
    """Defaults: the shipped recipe (validation recall@20 chose temperature 0.15 on MovieLens
    and Last.fm; benchmarks/README.md)."""

    def __init__(
        self,
        temperature: float = 0.15,  # logits are cosine / temperature (scale = 1 / temperature)
        learn_temperature: bool = False,  # learn log(1 / temperature), clamped to [0, log 100]
        logq_correction: bool = True,  # subtract log expected candidate count
    ):
        super().__init__()
        if not temperature > 0:
            raise ConfigError("model.loss.temperature", temperature, "expected > 0")
        self.settings = {
            "temperature": temperature,
            "learn_temperature": learn_temperature,
            "logq_correction": logq_correction,
        }
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )
        self.logq_correction = logq_correction

    @property
    def corrects_sampling_bias(self) -> bool:
        """Whether `forward` takes the candidates' log expected counts (item_log_q, ...)."""
        return self.logq_correction

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach().clamp(0.0, math.log(100.0))))

    def forward(
        self,
        user_vectors: torch.Tensor,  # (B, D)
        item_vectors: torch.Tensor,  # (G, D) the batch's positives, G >= B
        items: torch.Tensor,  # (G,) their item indices
        negative_vectors: torch.Tensor | None = None,  # (M, D) extra negatives
        negatives: torch.Tensor | None = None,  # (M,) their item indices
        in_batch: bool = True,  # the other rows' positives are candidates too
        item_log_q: torch.Tensor | None = None,  # (G,) log expected count of each positive
        negative_log_q: torch.Tensor | None = None,  # (M,) the same for the extra negatives
        positive_rows: torch.Tensor | None = None,  # (B,) user i's positive; None: row i (G = B)
    ) -> torch.Tensor:
        if self.logq_correction and (
            item_log_q is None or (negative_vectors is not None and negative_log_q is None)
        ):
            raise ValueError(
                "SampledSoftmaxLoss: logq_correction needs item_log_q (and negative_log_q with "
                "extra negatives)"
            )
        scale = self.log_scale.clamp(0.0, math.log(100.0)).exp()
        if not in_batch:
            if negative_vectors is None:
                raise ValueError("SampledSoftmaxLoss: in_batch=False needs extra negatives")
            if positive_rows is not None:  # only the users' own positives take part
                item_vectors, items = item_vectors[positive_rows], items[positive_rows]
                item_log_q = None if item_log_q is None else item_log_q[positive_rows]
            positive = (user_vectors * item_vectors).sum(-1, keepdim=True)  # (B, 1)
            logits = scale * torch.cat(
                [positive, user_vectors @ negative_vectors.T], 1
            )  # (B, 1 + M)
            if self.logq_correction:
                logits = logits - torch.cat(
                    [item_log_q[:, None], negative_log_q[None, :].expand(len(items), -1)], 1
                )
            accidental = torch.cat(
                [
                    torch.zeros_like(items[:, None], dtype=torch.bool),
                    items[:, None] == negatives[None, :],
                ],
                1,
            )
            logits = logits.masked_fill(accidental, float("-inf"))
            return F.cross_entropy(logits, torch.zeros_like(items))
        candidates, candidate_ids, log_q = item_vectors, items, item_log_q
        if negative_vectors is not None:
            candidates = torch.cat([item_vectors, negative_vectors])  # (G + M, D)
            candidate_ids = torch.cat([items, negatives])  # (G + M,)
            if self.logq_correction:
                log_q = torch.cat([item_log_q, negative_log_q])  # (G + M,)
        logits = scale * (user_vectors @ candidates.T)  # (B, G + M)
        if self.logq_correction:
            logits = logits - log_q
        if positive_rows is None:
            labels = torch.arange(len(items), device=items.device)
            accidental = items[:, None] == candidate_ids[None, :]  # (B, G + M)
            accidental[labels, labels] = False
        else:
            labels = positive_rows
            accidental = items[labels][:, None] == candidate_ids[None, :]  # (B, G + M)
            accidental[torch.arange(len(labels), device=labels.device), labels] = False
        logits = logits.masked_fill(accidental, float("-inf"))
        return F.cross_entropy(logits, labels)


class CosineContrastiveLoss(nn.Module):
    """SimpleX's cosine contrastive loss (Mao et al., CIKM 2021) over the same candidates.

    loss = (1 - cos(u, i+)) + w / |N| * sum_{j in N} relu(cos(u, j) - margin)

    Negatives already farther than `margin` cost nothing, so the many easy negatives of a large
    catalogue do not drown the few hard ones; `negative_weight` balances the two terms. No
    logQ correction: the margin, not a softmax, decides how much each negative counts. Defaults:
    the shipped SimpleX recipe (conf/model/loss/cosine_contrastive.yaml).
    """

    corrects_sampling_bias = False  # takes no log expected counts

    def __init__(
        self,
        margin: float = 0.95,  # cosine above which a negative is penalised
        negative_weight: float = 150.0,  # w: weight of the mean negative term
    ):
        super().__init__()
        if not negative_weight >= 0:
            raise ConfigError("model.loss.negative_weight", negative_weight, "expected >= 0")
        self.settings = {"margin": margin, "negative_weight": negative_weight}
        self.margin = margin
        self.negative_weight = negative_weight

    def forward(
        self,
        user_vectors: torch.Tensor,  # (B, D)
        item_vectors: torch.Tensor,  # (G, D) the batch's positives, G >= B
        items: torch.Tensor,  # (G,)
        negative_vectors: torch.Tensor | None = None,  # (M, D)
        negatives: torch.Tensor | None = None,  # (M,)
        in_batch: bool = True,  # use the other rows' positives as negatives too
        positive_rows: torch.Tensor | None = None,  # (B,) user i's positive; None: row i (G = B)
    ) -> torch.Tensor:
        own_vectors, own_items = item_vectors, items  # (B, D), (B,): each user's positive
        if positive_rows is not None:
            own_vectors, own_items = item_vectors[positive_rows], items[positive_rows]
        positive = (user_vectors * own_vectors).sum(-1)  # (B,)
        blocks, ids = [], []
        if in_batch:
            blocks.append(item_vectors)
            ids.append(items)
        if negative_vectors is not None:
            blocks.append(negative_vectors)
            ids.append(negatives)
        if not blocks:
            return (1 - positive).mean()
        candidates, candidate_ids = torch.cat(blocks), torch.cat(ids)  # (C, D), (C,)
        penalty = F.relu(user_vectors @ candidates.T - self.margin)  # (B, C)
        # The row's own positive (and any other copy of it) is not a negative.
        penalty = penalty.masked_fill(own_items[:, None] == candidate_ids[None, :], 0.0)
        count = max(candidates.shape[0] - (1 if in_batch else 0), 1)
        return (1 - positive).mean() + self.negative_weight * (penalty.sum(1) / count).mean()


def with_settings(loss: nn.Module, changes: Mapping[str, object], setting: str) -> nn.Module:
    """A new loss of `loss`'s class with its settings (`loss.settings`, its constructor's
    arguments) and `changes` over them; a learnable temperature starts afresh. `setting` names
    `changes` in a `ConfigError` (an unknown key, or a value the class refuses)."""
    unknown = sorted(set(changes) - set(loss.settings))
    if unknown:
        raise ConfigError(
            f"{setting}.{unknown[0]}",
            changes[unknown[0]],
            f"{type(loss).__name__} has no such setting (it has {sorted(loss.settings)})",
        )
    try:
        return type(loss)(**{**loss.settings, **changes})
    except ConfigError as error:
        key = error.setting.rsplit(".", 1)[-1]
        raise ConfigError(f"{setting}.{key}", error.value, error.reason) from None
