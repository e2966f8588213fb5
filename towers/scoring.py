"""The served score: the vectors an index ranks by, built on top of trained towers.

A `Scorer` holds one or more trained (user tower, item tower) pairs, the members, and turns
them into one query vector per user and one candidate vector per item whose inner product is
the score:

- an ensemble: each member's vectors scaled by sqrt(its share of the score) and laid side by
  side, so the inner product is the weighted mean of the members' cosines (with dot, their
  weighted sum; equal weights give the plain sum);
- a Matryoshka prefix (`dim`): each member's vector cut to its first `dim` coordinates and
  renormalised for cosine (towers.matryoshka) before anything else, so an ensemble averages
  the members' prefix cosines; None serves the whole vectors;
- a popularity prior: two more coordinates on each side, the user's (beta * PRIOR_SCALE, 0)
  and the item's (centred log p(item) / PRIOR_SCALE, 0), so the score gains
  beta * (log p(item) - its catalogue mean); centring shifts every score alike, so the ranking
  is that of + beta log p. Dividing by PRIOR_SCALE keeps the item's coordinate within about
  +-1 beside unit vectors (an ANN index clusters items by their vectors more than by
  popularity); the zero keeps the length even for 4-bit PQ codes.

Validation, test, export and serving all build their vectors here; the towers know nothing of
it, and their output never depends on train / eval mode. The loss sees the towers alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from towers.matryoshka import check_dim, prefix
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, UserTower

PRIOR_DIMS = 2  # the popularity prior's coordinates on each side
PRIOR_SCALE = 10.0  # the user's coordinate is beta * PRIOR_SCALE, the item's log p / PRIOR_SCALE


def log_popularity(counts: torch.Tensor) -> torch.Tensor:
    """log p(item), p = (count + 1) / sum(count + 1): the smoothed popularity that the logQ
    correction and the popularity prior share. counts (I,) → (I,) float64."""
    smoothed = counts.double() + 1.0
    return (smoothed / smoothed.sum()).log()


class Scorer:
    """Members' towers, their weights and the popularity prior: what one inner product ranks by.

    Not an nn.Module: it refers to towers that a training module or a bundle owns."""

    def __init__(
        self,
        members: Sequence[tuple[UserTower, ItemTower]],
        weights: Sequence[float] | None = None,
        popularity_prior: float = 0.0,
        item_counts: torch.Tensor | None = None,
        dim: int | None = None,
    ):
        self.members = list(members)
        _check_members(self.members)
        self.spec: FeatureSpec = self.members[0][0].spec
        self.similarity = Similarity.parse(self.members[0][0].cfg.similarity)
        # The served prefix of each member's vector (export.dim); None: the whole vector.
        self.dim = check_dim(dim, min(user.cfg.embedding_dim for user, _ in self.members))
        self.weights = _check_weights(weights, len(self.members))
        self.scales = _scales(self.weights, len(self.members), self.similarity)
        if not math.isfinite(popularity_prior):
            raise ValueError(
                f"Scorer.popularity_prior: expected a finite number, got {popularity_prior!r}"
            )
        self.popularity_prior = float(popularity_prior)
        # Centred log p per item index; the last entry (index num_items) for an item never seen.
        # Kept whenever counts are given, so that a prefix may serve with a prior of its own.
        self.item_prior: torch.Tensor | None = None
        if item_counts is not None:
            self.set_popularity(item_counts)
        elif self.popularity_prior:
            raise ValueError("Scorer: a popularity prior needs the items' interaction counts")

    @property
    def items_per_pass(self) -> int:
        """Items one `encode_items` call outside training should take (towers.Tower.rows_per_pass)."""
        return min(item.rows_per_pass for _, item in self.members)

    @property
    def output_dim(self) -> int:
        """Length of the served vectors: the members' dimensions (each `dim` when a prefix is
        served), plus PRIOR_DIMS with a prior."""
        dims = sum(self.dim or user.cfg.embedding_dim for user, _ in self.members)
        return dims + (PRIOR_DIMS if self.popularity_prior else 0)

    @property
    def user_prior(self) -> tuple[float, float]:
        """The user's prior coordinates (an item's are its centred log p / PRIOR_SCALE, 0)."""
        return (self.popularity_prior * PRIOR_SCALE, 0.0)

    def set_popularity(self, counts: torch.Tensor) -> None:
        """The prior's log p from interactions per item (I,), centred on the catalogue's mean; an
        item the counts do not cover counts 0."""
        if counts.shape != (self.spec.num_items,):
            raise ValueError(
                f"Scorer.set_popularity: expected {self.spec.num_items} counts, got shape "
                f"{tuple(counts.shape)}"
            )
        log_p = log_popularity(torch.cat([counts, counts.new_zeros(1)]))  # + the unseen entry
        self.item_prior = (log_p - log_p[:-1].mean()).float()

    def at_dim(self, dim: int | None, popularity_prior: float | None = None) -> Scorer:
        """The same members and weights served at another prefix `dim` (None: whole), with the
        same prior or, given `popularity_prior`, that one over the same item counts."""
        prior = self.popularity_prior if popularity_prior is None else float(popularity_prior)
        if not math.isfinite(prior):
            raise ValueError(f"Scorer.at_dim: expected a finite prior, got {prior!r}")
        if prior and self.item_prior is None:
            raise ValueError("Scorer.at_dim: a popularity prior needs the items' counts")
        scorer = Scorer(self.members, self.weights, dim=dim)
        scorer.popularity_prior, scorer.item_prior = prior, self.item_prior
        return scorer

    # -- the served vectors -----------------------------------------------------------------
    def encode_users(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Query vectors (B, output_dim) from the user tower's inputs (towers.inputs)."""
        return self.served_users([tower(inputs) for tower, _ in self.members])

    def served_users(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Query vectors (B, output_dim) from the members' user tower outputs, M x (B, D_m): one
        pass of the towers serves every prefix."""
        vectors = self._side_by_side(self._prefixes(outputs))  # (B, sum of dim or D_m)
        if not self.popularity_prior:
            return vectors
        prior = vectors.new_tensor(self.user_prior).expand(len(vectors), PRIOR_DIMS)
        return torch.cat([vectors, prior], dim=1)

    def encode_items(
        self, inputs: Mapping[str, torch.Tensor], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Candidate vectors (B, output_dim) from the item tower's inputs; `rows` (B,) are the
        items' catalogue rows, which the popularity prior reads (a row past the training catalogue
        counts as never seen; needed only with a prior)."""
        return self.served_items([tower(inputs) for _, tower in self.members], rows)

    def served_items(
        self, outputs: list[torch.Tensor], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Candidate vectors (B, output_dim) from the members' item tower outputs, M x (B, D_m)."""
        vectors = self._side_by_side(self._prefixes(outputs))
        if not self.popularity_prior:
            return vectors
        if rows is None:
            raise ValueError("Scorer.encode_items: a popularity prior needs the items' rows")
        rows = rows.clamp(max=self.spec.num_items)  # past the catalogue: the never-seen entry
        prior = self.item_prior.to(vectors.device)[rows].to(vectors.dtype)[:, None] / PRIOR_SCALE
        return torch.cat([vectors, prior, torch.zeros_like(prior)], dim=1)

    def item_queries(self, item_vectors: np.ndarray) -> np.ndarray:
        """Items asking for their neighbours as a user would: their vectors with the user's prior
        coordinates in place of their own (a copy; unchanged without a prior)."""
        if not self.popularity_prior:
            return item_vectors
        queries = np.array(item_vectors, dtype=np.float32)
        queries[:, -PRIOR_DIMS:] = self.user_prior
        return queries

    def _prefixes(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each member's vector cut to the served prefix (renormalised for cosine)."""
        if self.dim is None:
            return parts
        return [prefix(part, self.dim, self.similarity) for part in parts]  # M x (B, dim)

    def _side_by_side(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.scales is None:
            return parts[0]
        return torch.cat([part * scale for part, scale in zip(parts, self.scales, strict=True)], 1)

    # -- what a bundle stores ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """The scoring settings (the members' weights and the prior), for a manifest."""
        return {
            "members": len(self.members),
            "weights": None if self.weights is None else list(self.weights),
            "popularity_prior": self.popularity_prior,
            "dim": self.dim,
        }

    def eval(self) -> Scorer:
        for user, item in self.members:
            user.eval()
            item.eval()
        return self


def _check_members(members: list[tuple[UserTower, ItemTower]]) -> None:
    """Every member built for the same data and scored by the same similarity."""
    if not members:
        raise ValueError("Scorer: no members")
    spec, similarity = members[0][0].spec, members[0][0].cfg.similarity
    for i, (user, item) in enumerate(members):
        for side, tower in (("user", user), ("item", item)):
            if tower.spec != spec:
                raise ValueError(
                    f"Scorer: member {i}'s {side} tower is built for other data "
                    f"({tower.spec} vs {spec})"
                )
            if tower.cfg.similarity != similarity:
                raise ValueError(
                    f"Scorer: member {i}'s {side} tower uses similarity "
                    f"{tower.cfg.similarity!r}, member 0's user tower {similarity!r}"
                )


def _check_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    if weights is None:
        return None
    values = tuple(float(w) for w in weights)
    if len(values) != count:
        raise ValueError(f"Scorer: {len(values)} weights for {count} members")
    if not all(0.0 < w < float("inf") for w in values):
        raise ValueError(f"Scorer: expected positive weights, got {list(values)}")
    return values


def _scales(
    weights: tuple[float, ...] | None, count: int, similarity: Similarity
) -> list[float] | None:
    """Each member's factor sqrt(share): shares sum to 1 for cosine (the vector stays a unit
    vector, the score is the weighted mean), to `count` for dot (equal weights: the plain sum).
    None when there is nothing to scale (one member)."""
    if count == 1:
        return None
    shares = np.asarray(weights if weights is not None else [1.0] * count, dtype=np.float64)
    shares = shares / shares.sum() * (1.0 if similarity is Similarity.COSINE else count)
    return [math.sqrt(s) for s in shares]
