"""Matryoshka representations (Kusupati et al., NeurIPS 2022): the first d coordinates of every
vector trained to rank on their own, so that a bundle can serve a prefix (a smaller index) with
the same towers.

- Training: the loss is the weighted sum of the run's loss on each trained dimension, the
  listed prefixes and the full vector, each computed on the first d coordinates of every vector
  (user, positive, extra negatives), renormalised when the similarity is cosine. With a
  `warmup`, the full vector trains alone for that many epochs before the prefixes join. A
  prefix may train with its own settings of the loss (`loss_settings`: on Gowalla a 32-dim
  model ranks better with CCL's negative weight at 100 than at the 192-dim recipe's 150). The towers
  return unit vectors for cosine; renormalising the prefix of a unit vector gives exactly what
  renormalising the prefix of the tower's unnormalised output would (normalising scales a row's
  coordinates alike), gradients included, so the loss takes the towers' outputs as they are.
- Serving: `Scorer(dim=d)` (towers.scoring) cuts each member's own vector to d coordinates and
  renormalises it before the ensemble's scales and the popularity prior's coordinates, which
  keep their meaning: the score is the weighted mean of the members' prefix cosines, plus the
  prior. Validation monitors the full vector and reports each prefix beside it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from towers.config import ConfigError
from towers.losses import with_settings
from towers.similarity import Similarity


class MatryoshkaError(ConfigError):
    """A Matryoshka setting that does not fit the model ("model.matryoshka", "export.dim", ...)."""


def prefix(vectors: torch.Tensor, dim: int, similarity: Similarity) -> torch.Tensor:
    """The first `dim` coordinates of each vector, (..., D) → (..., dim), renormalised for
    cosine."""
    return similarity.prepare(vectors[..., :dim])


def check_dim(dim: object, embedding_dim: int, setting: str = "export.dim") -> int | None:
    """A served prefix length: None (the whole vector) or an integer in 1..embedding_dim."""
    if dim is None:
        return None
    if not _whole(dim) or not 1 <= dim <= embedding_dim:
        raise MatryoshkaError(
            setting, dim, f"expected null or a whole number of coordinates in 1..{embedding_dim}"
        )
    return int(dim)


def _loss_settings(
    given: Sequence[Mapping[str, object] | None] | None, prefixes: tuple[int, ...]
) -> tuple[dict, ...]:
    """`model.matryoshka_loss` as one dict of changes per prefix; () when none is given. The
    keys are checked against the loss when it is built (`Matryoshka.losses`)."""
    if given is None:
        return ()
    setting = "model.matryoshka_loss"
    changes = None if isinstance(given, Mapping | str) else list(given)  # a list, not one mapping
    if (
        changes is None
        or len(changes) != len(prefixes)
        or not all(c is None or isinstance(c, Mapping) for c in changes)
    ):
        raise MatryoshkaError(
            setting,
            given,
            f"expected {len(prefixes)} mappings of loss settings, one per prefix {list(prefixes)} "
            "({} or null: the run's loss)",
        )
    return tuple({str(k): v for k, v in (c or {}).items()} for c in changes)


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Matryoshka:
    """The dimensions a Matryoshka loss trains and their weights."""

    dims: tuple[int, ...]  # increasing; the last is the full embedding_dim
    weights: tuple[float, ...]  # one per entry of dims
    similarity: Similarity
    warmup: int = 0  # epochs the full vector trains alone before the prefixes' losses join
    # One per prefix: changes to the run's loss settings for that prefix's loss ({} = none);
    # () = every dimension trains with the run's loss itself.
    loss_settings: tuple[dict, ...] = ()

    @classmethod
    def parse(
        cls,
        prefixes: Sequence[int],
        weights: Sequence[float] | None,
        embedding_dim: int,
        similarity: Similarity | str,
        warmup: int = 0,
        loss_settings: Sequence[Mapping[str, object] | None] | None = None,
    ) -> Matryoshka | None:
        """The settings `model.matryoshka` (`prefixes`, increasing, each at most embedding_dim;
        the full vector is always trained, listed last or not), `model.matryoshka_weights`
        (one non-negative weight per trained dimension, the full vector's last; None: all 1) and
        `model.matryoshka_warmup` (whole epochs >= 0). None when `prefixes` is empty (no
        Matryoshka loss: weights must be None and warmup 0 too)."""
        prefixes = list(prefixes)
        if not _whole(warmup) or warmup < 0:
            raise MatryoshkaError(
                "model.matryoshka_warmup", warmup, "expected a whole number of epochs >= 0"
            )
        if not prefixes:
            if weights is not None:
                raise MatryoshkaError(
                    "model.matryoshka_weights", list(weights), "given without model.matryoshka"
                )
            if warmup:
                raise MatryoshkaError(
                    "model.matryoshka_warmup", warmup, "given without model.matryoshka"
                )
            if loss_settings is not None:
                raise MatryoshkaError(
                    "model.matryoshka_loss", list(loss_settings), "given without model.matryoshka"
                )
            return None
        setting = "model.matryoshka"
        if not all(_whole(d) for d in prefixes):
            raise MatryoshkaError(setting, prefixes, "expected whole numbers of coordinates")
        prefixes = [int(d) for d in prefixes]
        if any(b <= a for a, b in pairwise(prefixes)) or prefixes[0] < 1:
            raise MatryoshkaError(setting, prefixes, "expected positive, increasing prefixes")
        if prefixes[-1] > embedding_dim:
            raise MatryoshkaError(
                setting,
                prefixes,
                f"a prefix longer than the vector (embedding_dim={embedding_dim})",
            )
        dims = tuple(prefixes) if prefixes[-1] == embedding_dim else (*prefixes, embedding_dim)
        if weights is None:
            values = (1.0,) * len(dims)
        else:
            values = tuple(float(w) for w in weights)
            if len(values) != len(dims):
                raise MatryoshkaError(
                    "model.matryoshka_weights",
                    list(weights),
                    f"expected {len(dims)} weights, one per trained dimension {list(dims)} (the "
                    "full vector's last)",
                )
            if not all(math.isfinite(w) and w >= 0 for w in values) or not sum(values) > 0:
                raise MatryoshkaError(
                    "model.matryoshka_weights",
                    list(weights),
                    "expected finite non-negative weights, not all zero",
                )
        changes = _loss_settings(loss_settings, dims[:-1])
        return cls(dims, values, Similarity.parse(similarity), int(warmup), changes)

    @property
    def prefixes(self) -> tuple[int, ...]:
        """The trained dimensions shorter than the full vector."""
        return self.dims[:-1]

    def trains_prefixes(self, epoch: int) -> bool:
        """Whether the prefixes' losses count in (0-based) `epoch`: from the end of the warmup."""
        return epoch >= self.warmup

    def losses(self, loss: nn.Module) -> list[nn.Module]:
        """The loss of each trained dimension, the full vector's last: `loss` itself where a
        prefix has no `loss_settings`, else a loss of its class with those settings changed."""
        if not self.loss_settings:
            return [loss] * len(self.dims)
        prefix_losses = [
            with_settings(loss, changes, f"model.matryoshka_loss[{i}]") if changes else loss
            for i, changes in enumerate(self.loss_settings)
        ]
        return [*prefix_losses, loss]

    def loss(
        self,
        losses: Sequence[nn.Module],  # one per trained dimension (`losses`)
        user_vectors: torch.Tensor,  # (B, D)
        item_vectors: torch.Tensor,  # (G, D) the candidates' positives (every rank's under DDP)
        items: torch.Tensor,  # (G,)
        negative_vectors: torch.Tensor | None = None,  # (M, D)
        **kwargs,  # the loss's other arguments (negatives, log q, ...), the same at every d
    ) -> torch.Tensor:
        """sum over d of weight_d * loss_d(the vectors' first d coordinates, renormalised)."""
        total = user_vectors.new_zeros(())
        for dim, weight, loss in zip(self.dims, self.weights, losses, strict=True):
            if weight == 0:
                continue
            negatives = None if negative_vectors is None else self._cut(negative_vectors, dim)
            total = total + weight * loss(
                self._cut(user_vectors, dim),  # (B, d)
                self._cut(item_vectors, dim),  # (G, d)
                items,
                negative_vectors=negatives,  # (M, d)
                **kwargs,
            )
        return total

    def _cut(self, vectors: torch.Tensor, dim: int) -> torch.Tensor:
        return vectors if dim == vectors.shape[-1] else prefix(vectors, dim, self.similarity)
