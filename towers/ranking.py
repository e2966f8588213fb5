"""Exact full-catalogue top-k with the user's seen items excluded, in torch.

Used for validation inside training (towers/ never imports faiss). The exported FAISS index
must return the same top-k; tests/serve checks that it does."""

from __future__ import annotations

import torch


def exact_top_k(
    user_vectors: torch.Tensor, item_vectors: torch.Tensor, k: int, seen: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best `k` items per user by inner product, never one of the user's `seen` items.

    user_vectors (U, D), item_vectors (I, D), seen (U, S) item indices padded with -1
    → scores (U, k'), items (U, k') with k' = min(k, I).
    """
    num_items = item_vectors.shape[0]
    scores = user_vectors @ item_vectors.T  # (U, I)
    if seen is not None and seen.numel():
        rows, cols = (seen >= 0).nonzero(as_tuple=True)  # padding (-1) is skipped
        scores.index_put_((rows, seen[rows, cols]), scores.new_tensor(float("-inf")))
    return scores.topk(min(k, num_items), dim=1)
