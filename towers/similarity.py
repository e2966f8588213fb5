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

    def prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        """What a tower outputs under this similarity: unit vectors for cosine, unchanged for dot."""
        return F.normalize(vectors, dim=-1) if self is Similarity.COSINE else vectors
