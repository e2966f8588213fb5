"""A user's query vector split over the items of their history: what `explain` reports.

A member's user vector is u = c * x: x the tower's combined parts (the id's, the history's, the
other inputs'), c the similarity's scale (1 / |x| for cosine, 1 for dot). The history's part is
a sum over its positions, each an item's row times its pooling weight (1 / n for mean over the
n items present, the softmax weight as computed for attention, 1 at the latest item for last),
then projected; the projection, the gate (or concat's linear map) and c are linear, so for any
item vector v

    <u, v> = c <x_rest, v> + sum over positions l of c <G(w_l P e_l), v>

exactly, where x_rest holds the parts that are not the history. Position l's term is what it
adds to every inner product with the user vector. An ensemble's members add up with their
scales (towers.scoring); the popularity prior's coordinates belong to no history item. A served
Matryoshka prefix (the scorer's `dim`) keeps the first dim coordinates of the terms and of u,
both times the prefix's renormalisation (cosine), so the split stays exact. With
attention the weights are those of the whole history: the terms split the score exactly, but
dropping an item would reweigh the others. A tower with a residual MLP (mlp_layers > 0) is not
linear in its parts, and is refused (`NotExplainable`) rather than approximated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from towers.matryoshka import prefix
from towers.scoring import PRIOR_DIMS, Scorer
from towers.towers import UserTower


class NotExplainable(ValueError):
    """A user tower whose vector does not split over its history items; `reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Attribution(NamedTuple):
    """Users' query vectors split over their history positions."""

    terms: torch.Tensor  # (B, L, W) each position's part of the towers' coordinates
    queries: torch.Tensor  # (B, output_dim) the query vectors the terms are parts of
    width: int  # W: the towers' coordinates (the query's first W; the prior's come after)


@torch.inference_mode()
def history_terms(scorer: Scorer, inputs: Mapping[str, torch.Tensor]) -> Attribution:
    """The query vectors of the user tower's `inputs` (what `scorer.encode_users` gives) and
    each history position's part of them; a tower without a history input has no positions
    (L = 0). `NotExplainable` for a member whose vector is not a scaled sum of its parts."""
    split = [
        _served_prefix(scorer, *_member_terms(user, inputs, m), m)
        for m, (user, _) in enumerate(scorer.members)
    ]
    batch, length = len(split[0][1]), split[0][0].shape[1]
    vectors = scorer._side_by_side([vector for _, vector in split])  # (B, W)
    flat = [terms.reshape(batch * length, terms.shape[2]) for terms, _ in split]  # M x (B L, D_m)
    terms = scorer._side_by_side(flat).reshape(batch, length, vectors.shape[1])  # (B, L, W)
    queries = vectors
    if scorer.popularity_prior:
        prior = vectors.new_tensor(scorer.user_prior).expand(batch, PRIOR_DIMS)
        queries = torch.cat([vectors, prior], dim=1)
    return Attribution(terms, queries, vectors.shape[1])


def _member_terms(
    tower: UserTower, inputs: Mapping[str, torch.Tensor], member: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(terms (B, L, D), user vector (B, D)) of one member: the vector is the scaled sum of the
    terms and the other inputs' parts."""
    _check_linear(tower, member)
    parts = {name: encoder(inputs[name]) for name, encoder in tower.encoders.items()}
    combined = tower._combined(dict(parts))  # (B, D) x
    vector = tower.similarity.prepare(tower.dropout(tower.mlp(combined)))  # (B, D) the output
    scale = _scale(vector, combined, member)  # (B,) c
    if tower.history_name is None:
        return combined.new_zeros(len(combined), 0, combined.shape[1]), vector
    terms = _history_parts(tower, parts, inputs[tower.history_name])  # (B, L, D)
    rest = tower._combined({**parts, tower.history_name: torch.zeros_like(combined)})  # x_rest
    if not torch.allclose(rest + terms.sum(1), combined, rtol=1e-4, atol=1e-5):
        raise NotExplainable(f"member {member}'s user vector is not linear in its history")
    return scale[:, None, None] * terms, vector


def _served_prefix(
    scorer: Scorer, terms: torch.Tensor, vector: torch.Tensor, member: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's (terms (B, L, D), vector (B, D)) cut to the scorer's served prefix: the first
    `dim` coordinates of each, scaled as the prefix's renormalisation scales the vector."""
    if scorer.dim is None:
        return terms, vector
    kept = vector[:, : scorer.dim]  # (B, d)
    served = prefix(vector, scorer.dim, scorer.similarity)  # (B, d)
    scale = _scale(served, kept, member)  # (B,)
    return scale[:, None, None] * terms[..., : scorer.dim], served


def _history_parts(
    tower: UserTower, parts: Mapping[str, torch.Tensor], codes: torch.Tensor
) -> torch.Tensor:
    """(B, L, D) each history position's part of the combined vector: its pooled term with the
    other inputs' parts at zero, through the tower's own (linear) combination."""
    positions = tower.history_encoder.terms(codes)  # (B, L, D) w_l P e_l
    batch, length, dim = positions.shape
    alone = {name: part.new_zeros(batch * length, part.shape[1]) for name, part in parts.items()}
    alone[tower.history_name] = positions.reshape(batch * length, dim)
    return tower._combined(alone).reshape(batch, length, -1)


def _check_linear(tower: UserTower, member: int) -> None:
    if len(tower.mlp.blocks):
        raise NotExplainable(
            f"member {member}'s user tower has a residual MLP (mlp_layers="
            f"{len(tower.mlp.blocks)}): its vector is not a sum over the history items"
        )
    if tower.training:
        raise NotExplainable(f"member {member}'s user tower is in training mode (dropout)")


def _scale(vector: torch.Tensor, combined: torch.Tensor, member: int) -> torch.Tensor:
    """(B,) c with vector = c * combined (0 where combined is 0), or `NotExplainable`."""
    norms = (combined * combined).sum(1)  # (B,)
    scale = torch.where(norms > 0, (vector * combined).sum(1) / norms.clamp(min=1e-30), 0.0)
    if not torch.allclose(vector, scale[:, None] * combined, rtol=1e-4, atol=1e-6):
        raise NotExplainable(f"member {member}'s user vector is not a scaled sum of its parts")
    return scale
