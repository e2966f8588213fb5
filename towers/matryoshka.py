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
    changes = _listed(given)
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


def _priors(given: Sequence[float | None] | None, prefixes: tuple[int, ...]) -> tuple:
    """`model.matryoshka_prior` as one finite prior or None per prefix; () when none is given."""
    if given is None:
        return ()
    priors = _listed(given)
    if (
        priors is None
        or len(priors) != len(prefixes)
        or not all(p is None or _finite_number(p) for p in priors)
    ):
        raise MatryoshkaError(
            "model.matryoshka_prior",
            given,
            f"expected {len(prefixes)} finite numbers, one per prefix {list(prefixes)} (null: "
            "model.popularity_prior)",
        )
    return tuple(None if p is None else float(p) for p in priors)


def _listed(given: object) -> list | None:
    """A per-prefix setting as a list; None when it is one value (a mapping, a string, a number)."""
    if isinstance(given, Sequence) and not isinstance(given, str):
        return list(given)
    return None


def _check_unused(**given: object) -> None:
    """Without prefixes, every other Matryoshka setting must be at its default (None, or 0)."""
    for name, value in given.items():
        if value is not None and value != 0:
            shown = value if isinstance(value, numbers.Number) else list(value)
            raise MatryoshkaError(
                f"model.matryoshka_{name}", shown, "given without model.matryoshka"
            )


def _trained_dims(prefixes: list, embedding_dim: int) -> tuple[int, ...]:
    """The increasing trained dimensions: the prefixes, then the full vector."""
    setting = "model.matryoshka"
    if not all(_whole(d) for d in prefixes):
        raise MatryoshkaError(setting, prefixes, "expected whole numbers of coordinates")
    prefixes = [int(d) for d in prefixes]
    if any(b <= a for a, b in pairwise(prefixes)) or prefixes[0] < 1:
        raise MatryoshkaError(setting, prefixes, "expected positive, increasing prefixes")
    if prefixes[-1] > embedding_dim:
        raise MatryoshkaError(
            setting, prefixes, f"a prefix longer than the vector (embedding_dim={embedding_dim})"
        )
    return tuple(prefixes) if prefixes[-1] == embedding_dim else (*prefixes, embedding_dim)


def _weights(weights: Sequence[float] | None, dims: tuple[int, ...]) -> tuple[float, ...]:
    """One finite non-negative weight per trained dimension, not all zero (None: all 1)."""
    if weights is None:
        return (1.0,) * len(dims)
    setting, values = "model.matryoshka_weights", _listed(weights)
    if values is None or len(values) != len(dims):
        raise MatryoshkaError(
            setting,
            weights if values is None else values,
            f"expected {len(dims)} weights, one per trained dimension {list(dims)} (the full "
            "vector's last)",
        )
    if not all(_finite_number(w) and w >= 0 for w in values) or not sum(values) > 0:
        raise MatryoshkaError(setting, values, "expected finite non-negative weights, not all zero")
    return tuple(float(w) for w in values)


def _finite_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


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
    # One per prefix: the popularity prior its served score adds (towers.scoring) in place of
    # the model's; None keeps the model's. () = every prefix serves with the model's.
    priors: tuple[float | None, ...] = ()

    @classmethod
    def parse(
        cls,
        prefixes: Sequence[int],
        weights: Sequence[float] | None,
        embedding_dim: int,
        similarity: Similarity | str,
        warmup: int = 0,
        loss_settings: Sequence[Mapping[str, object] | None] | None = None,
        priors: Sequence[float | None] | None = None,
    ) -> Matryoshka | None:
        """The settings `model.matryoshka` (`prefixes`, increasing, each at most embedding_dim;
        the full vector is always trained, listed last or not), `model.matryoshka_weights`
        (one non-negative weight per trained dimension, the full vector's last; None: all 1),
        `model.matryoshka_warmup` (whole epochs >= 0), `model.matryoshka_loss` and
        `model.matryoshka_prior` (one entry per prefix). None when `prefixes` is empty (no
        Matryoshka loss: the other settings must then be left at their defaults)."""
        if not _whole(warmup) or warmup < 0:
            raise MatryoshkaError(
                "model.matryoshka_warmup", warmup, "expected a whole number of epochs >= 0"
            )
        prefixes = list(prefixes)
        if not prefixes:
            _check_unused(weights=weights, warmup=warmup, loss=loss_settings, prior=priors)
            return None
        dims = _trained_dims(prefixes, embedding_dim)
        return cls(
            dims,
            _weights(weights, dims),
            Similarity.parse(similarity),
            int(warmup),
            _loss_settings(loss_settings, dims[:-1]),
            _priors(priors, dims[:-1]),
        )

    @property
    def prefixes(self) -> tuple[int, ...]:
        """The trained dimensions shorter than the full vector."""
        return self.dims[:-1]

    def prior(self, dim: int | None, default: float) -> float:
        """The popularity prior served at `dim` (None: the full vector): the prefix's own where
        `model.matryoshka_prior` gives one, else `default` (the model's)."""
        if dim not in self.prefixes or not self.priors:
            return default
        own = self.priors[self.prefixes.index(dim)]
        return default if own is None else own

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
