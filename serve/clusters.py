"""What the item vectors say about the catalogue: clusters (FAISS k-means) and near-duplicates
(pairs of items above a cosine threshold), each a table written as Parquet.

Both read a bundle's active items and their vectors as the towers made them (an ensemble's
members side by side; a popularity prior's coordinates left out: they say how popular an item
is, not what it is).

- Clusters: seeded FAISS k-means from k-means++ starts, in the geometry the index ranks by:
  unit vectors and unit centroids when the similarity is cosine, the raw vectors for dot.
  `distance` is the Euclidean distance from an item's vector (unit, for cosine) to its
  cluster's centroid; a cluster's most popular items are those the most users have seen (the
  popularity fallback's order, serve.catalogue).
- Duplicates: cosine over unit vectors whatever the similarity, by exact FAISS range search of
  blocks of items against all of them: memory grows with the pairs found, never with I^2.

A table is written atomically (a temporary file, then a rename) and never into a bundle version
directory; by default it goes to `<bundle root>/analysis/<name>-<version>.parquet`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import polars as pl

from features.schema import ITEM_ID
from features.serving import ACTIVE, SEEN
from serve.bundle import Bundle
from serve.catalogue import EMPTY, Catalogue
from serve.errors import RequestError, check_k
from serve.files import MANIFEST
from towers.scoring import PRIOR_DIMS
from towers.similarity import Similarity

CLUSTER, DISTANCE = "cluster", "distance"  # the clusters table: item_id, cluster, distance
# The duplicates table: item_id, duplicate_id (the later row of the pair), cosine.
DUPLICATE_ID, COSINE = "duplicate_id", "cosine"
ANALYSIS = "analysis"  # the folder under a bundle's root that the tables go to by default
KMEANS_ITERATIONS = 25  # k-means iterations of each run
KMEANS_RUNS = 3  # k-means runs from different starts; the one of least error is kept
KMEANS_SAMPLE = 64  # k-means++ draws its starts from at most this many items per cluster
DISTANCE_BLOCK = 65536  # items whose distance to their centroid is computed at once
DUPLICATE_BLOCK = 4096  # items searched for duplicates at once
PROGRESS_LINES = 20  # about how many progress lines a long search reports

Progress = Callable[[str], None]


class ClusterTop(NamedTuple):
    """A cluster, its size and the titles (else ids) of its most popular items."""

    cluster: int
    size: int
    titles: list[str]


def item_space(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """(rows (A,), vectors (A, W) float32) of the bundle's active items: the towers'
    coordinates of their vectors, without a popularity prior's."""
    rows = np.flatnonzero(bundle.items[ACTIVE].to_numpy())
    width = bundle.item_vectors.shape[1] - (PRIOR_DIMS if bundle.scorer.popularity_prior else 0)
    return rows, np.ascontiguousarray(bundle.item_vectors[rows, :width], dtype=np.float32)


# -- clusters -----------------------------------------------------------------------------------
def cluster_items(
    bundle: Bundle, k: int, *, seed: int = 0, progress: Progress | None = None
) -> pl.DataFrame:
    """The active items' clusters, a table of item_id, cluster (0..k-1) and distance (to the
    cluster's centroid), in row order."""
    rows, vectors = item_space(bundle)
    _check_clusters(k, len(rows))
    cosine = bundle.similarity is Similarity.COSINE
    if cosine:
        vectors = _unit(vectors)
    _report(progress, f"k-means: {len(rows)} items of {vectors.shape[1]} dimensions, k={k}")
    centroids, clusters = _kmeans(vectors, k, cosine, seed, progress)
    distances = _distances(vectors, centroids, clusters)
    return pl.DataFrame(
        {
            ITEM_ID: bundle.items[ITEM_ID].gather(rows),
            CLUSTER: pl.Series(clusters, dtype=pl.Int32),
            DISTANCE: pl.Series(distances, dtype=pl.Float32),
        }
    )


def _check_clusters(k: object, num_items: int) -> None:
    if check_k(k) > num_items:
        raise RequestError("k", k, f"must be at most the number of active items ({num_items})")


def _kmeans(vectors: np.ndarray, k: int, spherical: bool, seed: int, progress: Progress | None):
    """(centroids (k, W), each vector's cluster (A,)): FAISS k-means from k-means++ starts
    (seeded), the run of least squared error of KMEANS_RUNS."""
    rng = np.random.default_rng(seed)
    best = None
    for run in range(KMEANS_RUNS):
        kmeans = faiss.Kmeans(
            vectors.shape[1], k, niter=KMEANS_ITERATIONS, seed=int(rng.integers(2**31)),
            spherical=spherical, min_points_per_centroid=1,
        )  # fmt: skip
        kmeans.train(vectors, init_centroids=_kmeans_plus_plus(vectors, k, rng))
        clusters = kmeans.assign(vectors)[1].astype(np.int64)
        error = float((_distances(vectors, kmeans.centroids, clusters) ** 2).sum())
        _report(progress, f"k-means run {run + 1}/{KMEANS_RUNS}: squared error {error:.6g}")
        if best is None or error < best[0]:
            best = (error, kmeans.centroids, clusters)
    return best[1], best[2]


def _distances(vectors: np.ndarray, centroids: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """(A,) each vector's Euclidean distance to its cluster's centroid, in blocks of rows."""
    out = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), DISTANCE_BLOCK):
        part = slice(start, start + DISTANCE_BLOCK)
        out[part] = np.linalg.norm(vectors[part] - centroids[clusters[part]], axis=1)
    return out


def _kmeans_plus_plus(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, W) starting centroids drawn from (a sample of) the vectors, each with probability
    proportional to its squared distance to the nearest one drawn before (k-means++)."""
    size = min(len(vectors), KMEANS_SAMPLE * k)
    sample = vectors[rng.choice(len(vectors), size, replace=False)]
    chosen = [int(rng.integers(size))]
    nearest = ((sample - sample[chosen[0]]) ** 2).sum(1)  # (S,)
    for _ in range(1, k):
        total = nearest.sum()
        weights = nearest / total if total > 0 else None  # all alike: uniform
        chosen.append(int(rng.choice(size, p=weights)))
        nearest = np.minimum(nearest, ((sample - sample[chosen[-1]]) ** 2).sum(1))
    return np.ascontiguousarray(sample[chosen], dtype=np.float32)


def cluster_tops(bundle: Bundle, clusters: pl.DataFrame, n: int) -> list[ClusterTop]:
    """Each cluster of `clusters` (from `cluster_items`) with its `n` most popular items'
    titles (their ids where the items have no titles), in cluster order."""
    catalogue = _catalogue(bundle)
    rows = np.array([catalogue.item_index(i) for i in clusters[ITEM_ID].to_list()], np.int64)
    labels = clusters[CLUSTER].to_numpy()
    rank = np.empty(catalogue.num_items, dtype=np.int64)
    rank[catalogue.popular_order] = np.arange(len(catalogue.popular_order))  # 0: most seen
    tops = []
    for cluster in np.unique(labels):
        members = rows[labels == cluster]
        popular = members[np.argsort(rank[members], kind="stable")[:n]]
        tops.append(ClusterTop(int(cluster), len(members), [_name(catalogue, r) for r in popular]))
    return tops


def _catalogue(bundle: Bundle) -> Catalogue:
    """The bundle's catalogue, its popularity counted over every user's seen items."""
    seen = bundle.users[SEEN].explode().drop_nulls().to_numpy().astype(np.int64)
    return Catalogue(bundle.items, seen)


def _name(catalogue: Catalogue, row: int) -> str:
    title = None if catalogue.titles is None else catalogue.titles[row]
    return str(catalogue.item_id_list[row]) if title is None else title


# -- duplicates ---------------------------------------------------------------------------------
def near_duplicates(
    bundle: Bundle, threshold: float, *, progress: Progress | None = None
) -> pl.DataFrame:
    """Pairs of active items whose vectors' cosine is above `threshold`: a table of item_id,
    duplicate_id (the later row of the two) and cosine, the most alike first."""
    check_threshold(threshold)
    rows, vectors = item_space(bundle)
    vectors = _unit(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    firsts, seconds, cosines = [], [], []
    blocks = range(0, len(rows), DUPLICATE_BLOCK)
    every = max(1, len(blocks) // PROGRESS_LINES)
    for b, start in enumerate(blocks):
        first, second, cosine = _pairs_from(index, vectors, start, threshold)
        firsts.append(first)
        seconds.append(second)
        cosines.append(cosine)
        if (b + 1) % every == 0 or b + 1 == len(blocks):
            done = min(start + DUPLICATE_BLOCK, len(rows))
            found = sum(map(len, cosines))
            _report(progress, f"duplicates: {done}/{len(rows)} items searched, {found} pairs")
    first, second = np.concatenate([EMPTY, *firsts]), np.concatenate([EMPTY, *seconds])
    cosine = np.concatenate([np.zeros(0, np.float32), *cosines])
    order = np.lexsort((second, first, -cosine))  # the most alike first, then by rows
    ids = bundle.items[ITEM_ID]
    return pl.DataFrame(
        {
            ITEM_ID: ids.gather(rows[first[order]]),
            DUPLICATE_ID: ids.gather(rows[second[order]]),
            COSINE: pl.Series(cosine[order], dtype=pl.Float32),
        }
    )


def check_threshold(threshold: object) -> float:
    """`threshold` as a float in (0, 1], or a `RequestError` for field "threshold"."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise RequestError("threshold", threshold, "must be a number in (0, 1]")
    if not 0.0 < threshold <= 1.0:
        raise RequestError("threshold", threshold, "must be a number in (0, 1]")
    return float(threshold)


def _pairs_from(index: faiss.Index, vectors: np.ndarray, start: int, threshold: float):
    """(first, second, cosine) of the pairs above `threshold` whose first item is in the block
    of vectors from `start`, each pair once (first < second, positions among the vectors)."""
    block = vectors[start : start + DUPLICATE_BLOCK]
    limits, cosines, found = index.range_search(block, threshold)
    first = start + np.repeat(np.arange(len(block)), np.diff(limits).astype(np.int64))
    keep = found > first
    return first[keep], found[keep], cosines[keep]


# -- output -------------------------------------------------------------------------------------
def default_out(bundle: Bundle, name: str) -> Path:
    """Where table `name` of this bundle version goes by default: under the bundle's root, in
    ANALYSIS, named after the version it was computed from."""
    suffix = "" if bundle.version is None else f"-{bundle.version}"
    return bundle.root / ANALYSIS / f"{name}{suffix}.parquet"


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """`frame` as Parquet at `path`, atomically (a reader sees the old file or the new one);
    never into a bundle version directory (a `RequestError` for field "out")."""
    path = Path(path)
    if (path.parent / MANIFEST).is_file():
        raise RequestError("out", str(path), "must not be inside a bundle version directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.write_parquet(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _report(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)
