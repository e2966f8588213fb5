"""`explain=True`: the history items behind each result's score.

towers.attribution splits a user's query vector into one part per history position (exactly,
for a user tower without a residual MLP). A history item's contribution to a result's score is
the inner product of its parts (all its positions, if it occurs more than once) with the
result's item vector; its share is that contribution over the towers' inner product (the score
less the popularity prior, if any): the shares of all history items and of the user's other
inputs (their id, their features) sum to 1. A result's `because` lists the EXPLAIN_ITEMS history
items that raised its score most, largest first; none when no history item raised it. This
module knows nothing of the index: the rows to explain come from the search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from serve.errors import RequestError
from towers.attribution import NotExplainable, history_terms
from towers.scoring import Scorer

EXPLAIN_ITEMS = 3  # history items listed in a result's `because`
VECTOR_TOLERANCE = 1e-3  # how far the split may be from the served query vector


class Because(NamedTuple):
    """A history item behind a result's score."""

    item_id: object  # raw item id of the history item
    title: str | None
    contribution: float  # what it adds to the result's score
    share: float  # contribution / the towers' inner product (the score less the prior)

    def to_dict(self) -> dict:
        return self._asdict()


def check_explain(explain: object) -> bool:
    """`explain` as a bool, or a `RequestError` for field "explain"."""
    if not isinstance(explain, bool | np.bool_):
        raise RequestError("explain", explain, "must be true or false")
    return bool(explain)


class Explainer:
    def __init__(
        self,
        scorer: Scorer,
        item_vectors: np.ndarray,
        item_ids: Sequence[object],
        titles: Sequence[str | None] | None,
    ):
        """`item_vectors` (I, D) the served vectors, row = item; `item_ids`, `titles` by row."""
        self.scorer, self.item_vectors = scorer, item_vectors
        self.item_ids, self.titles = item_ids, titles
        self.num_items = len(item_vectors)

    def because(
        self,
        inputs: Mapping[str, torch.Tensor],
        histories: np.ndarray,
        served: np.ndarray,
        results: Sequence[np.ndarray],
    ) -> list[list[tuple[Because, ...]]]:
        """For each user of the user tower's `inputs` (their history item rows (U, L) in
        `histories`, their served query vectors (U, D) in `served`), the `because` of each of
        their result rows. A bundle whose user vectors do not split over the history is a
        `RequestError` for field "explain"."""
        try:
            split = history_terms(self.scorer, inputs)
        except NotExplainable as err:
            raise RequestError(
                "explain", True, f"is not available for this bundle: {err}"
            ) from None
        queries = split.queries.float().numpy()
        if not np.allclose(queries, served, rtol=VECTOR_TOLERANCE, atol=VECTOR_TOLERANCE):
            raise RequestError(
                "explain", True, "is not available: the split does not give the served vectors"
            )
        terms = split.terms.float().numpy()  # (U, L, W)
        return [
            self._explained(terms[u], queries[u, : split.width], histories[u], rows, split.width)
            for u, rows in enumerate(results)
        ]

    def _explained(self, terms, query, history, rows, width) -> list[tuple[Because, ...]]:
        """The `because` of each result row of one user: terms (L, W), query (W,) the towers'
        coordinates of their query vector, history (L,) item rows (num_items: padding)."""
        vectors = self.item_vectors[rows, :width]  # (n, W)
        items, contributions = _by_item(terms, history, vectors, self.num_items)  # (H,), (H, n)
        inner = vectors @ query  # (n,) the towers' inner products
        return [self._listed(items, contributions[:, j], float(inner[j])) for j in range(len(rows))]

    def _listed(self, items: np.ndarray, contributions: np.ndarray, inner: float):
        """The EXPLAIN_ITEMS history items of largest positive contribution, largest first."""
        order = np.lexsort((items, -contributions))[:EXPLAIN_ITEMS]
        order = order[contributions[order] > 0]
        return tuple(
            Because(
                self.item_ids[items[i]],
                None if self.titles is None else self.titles[items[i]],
                float(contributions[i]),
                float(contributions[i] / inner) if inner else 0.0,
            )
            for i in order
        )


def _by_item(
    terms: np.ndarray, history: np.ndarray, vectors: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """(items (H,), contributions (H, n)): the distinct history items (rows) and what each adds
    to the inner product with each of `vectors` (n, W), its positions summed."""
    present = history < pad
    items, position_item = np.unique(history[present], return_inverse=True)
    by_position = terms[present] @ vectors.T  # (P, n)
    contributions = np.zeros((len(items), len(vectors)), dtype=np.float64)
    np.add.at(contributions, position_item, by_position)
    return items, contributions
