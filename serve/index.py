"""One factory for FAISS indexes over item vectors.

Both similarities are served by inner product: cosine models export unit vectors, so inner
product is cosine. An L2 index over dot-product vectors ranks differently from training, so the
metric is never chosen independently of the similarity."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from towers.similarity import Similarity

METRICS = {Similarity.DOT: faiss.METRIC_INNER_PRODUCT, Similarity.COSINE: faiss.METRIC_INNER_PRODUCT}
METRIC_NAMES = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}


def build_index(vectors: np.ndarray, similarity: str | Similarity, factory: str = "Flat") -> faiss.Index:
    """A trained index over `vectors` (N, D); row i of `vectors` gets id i."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"build_index: expected a non-empty (N, D) array, got shape {vectors.shape}")
    metric = METRICS[Similarity.parse(similarity)]
    try:
        index = faiss.index_factory(vectors.shape[1], factory, metric)
    except RuntimeError as err:
        raise ValueError(f"build_index: FAISS cannot build factory string {factory!r}: {err}") from None
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def write_index(index: faiss.Index, path: str | Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))
