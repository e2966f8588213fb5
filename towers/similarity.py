"""The one similarity a model is trained, evaluated and served with."""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn.functional as F


class Similarity(StrEnum):
    DOT = "dot"  # raw inner product: vector norms carry popularity / confidence
    COSINE = "cosine"  # inner product of L2-normalised vectors

    @classmethod
    def parse(cls, value: str | Similarity) -> Similarity:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown similarity {value!r}; expected one of {[s.value for s in cls]}"
            ) from None

    def prepare(
        self,
        vectors: torch.Tensor,
        groups: int = 1,
        weights: tuple[float, ...] | None = None,
    ) -> torch.Tensor:
        """What a tower outputs under this similarity: unit vectors for cosine, unchanged for dot.

        With `groups` > 1 the last dimension is that many equal blocks, one per ensemble member
        (towers.ensemble). Cosine: each block is normalised and scaled by sqrt(w_k), with the
        `weights` w_k summing to 1 (default: all 1/groups), so the vector is still a unit vector
        and the inner product of two such vectors is the weighted mean of the blocks' cosines.
        Dot: each block is scaled by sqrt(groups * w_k), so the inner product is the blocks' dot
        products summed with weights groups * w_k (plain sum by default)."""
        if weights is not None and len(weights) != groups:
            raise ValueError(f"{len(weights)} group weights for {groups} groups")
        if groups == 1:
            return F.normalize(vectors, dim=-1) if self is Similarity.COSINE else vectors
        if weights is None and self is not Similarity.COSINE:
            return vectors
        blocks = vectors.unflatten(-1, (groups, -1))
        if self is Similarity.COSINE:
            blocks = F.normalize(blocks, dim=-1)
        share = torch.tensor(
            weights if weights is not None else [1.0] * groups,
            dtype=vectors.dtype,
            device=vectors.device,
        )
        share = share / share.sum() * (1.0 if self is Similarity.COSINE else groups)
        return (blocks * share.sqrt()[:, None]).flatten(-2)
