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

    def prepare(self, vectors: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """What a tower outputs under this similarity: unit vectors for cosine, unchanged for dot.

        With `groups` > 1 (cosine) the last dimension is that many equal blocks, each normalised
        and scaled by 1/sqrt(groups): the vector is still a unit vector, and the inner product of
        two such vectors is the mean of their blocks' cosines (an ensemble served as one model)."""
        if self is not Similarity.COSINE:
            return vectors
        if groups == 1:
            return F.normalize(vectors, dim=-1)
        blocks = vectors.unflatten(-1, (groups, -1))
        return (F.normalize(blocks, dim=-1) / groups**0.5).flatten(-2)
