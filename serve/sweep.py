"""The operating-point sweep: for an ANN index, recall@k against exact search and latency, over
its one search knob (nprobe for IVF, also under a re-ranked index; efSearch for HNSW), and the
cheapest setting that reaches a target recall.

Ground truth is an exact inner-product search over the same vectors (as in FAISS's own
`contrib/exhaustive_search.py` tests). Latency is measured at batch 1, the way a request runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from serve.index import knob_values, search_knob, search_parameters, set_search_threads

log = logging.getLogger(__name__)


@dataclass
class OperatingPoint:
    value: int  # the knob's setting
    recall: float  # mean recall@k against exact search
    latency_ms_p50: float  # one query at a time
    latency_ms_p99: float


@dataclass
class Sweep:
    knob: str  # nprobe | efSearch
    k: int
    target_recall: float
    chosen: int  # the cheapest value reaching target_recall (the best one when none does)
    reached: bool
    points: list[OperatingPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def search_params(self) -> dict[str, int]:
        return {self.knob: self.chosen}


def exact_neighbours(
    xb: np.ndarray, xq: np.ndarray, k: int, ids: np.ndarray | None = None
) -> np.ndarray:
    """Exact inner-product top-k ids (Q, k) of each query among `xb` (ids default to rows)."""
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(np.ascontiguousarray(xb, dtype=np.float32))
    _, rows = flat.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return rows if ids is None else ids[rows]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / k over queries; both (Q, k) ids, -1 = missing."""
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def _latencies_ms(index, xq: np.ndarray, k: int, params, repeats: int) -> np.ndarray:
    out = []
    set_search_threads(1)
    for q in xq[:repeats]:
        started = time.perf_counter()
        index.search(q[None], k, params=params)
        out.append(time.perf_counter() - started)
    return np.asarray(out) * 1e3


def sweep(
    index: faiss.Index,
    xq: np.ndarray,
    truth: np.ndarray,
    target_recall: float = 0.95,
    latency_queries: int = 100,
    stop_at: float = 0.995,
    fixed: Mapping[str, int] | None = None,
) -> Sweep | None:
    """Recall@k and latency of `index` over its knob; None for exact indexes (nothing to choose).

    `truth` (Q, k) are the exact top-k ids of the queries `xq`. Stops early once recall reaches
    `stop_at` (past the target, the curve only gets slower). `fixed`: other settings held at
    every point (a re-ranked index's k_factor)."""
    knob = search_knob(index)
    if knob is None:
        return None
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = truth.shape[1]
    points = []
    for value in knob_values(index):
        params = search_parameters(index, {**(fixed or {}), knob: value})
        set_search_threads(len(xq))
        _, found = index.search(xq, k, params=params)
        latencies = _latencies_ms(index, xq, k, params, latency_queries)
        points.append(
            OperatingPoint(
                value=value,
                recall=recall_at_k(found, truth),
                latency_ms_p50=float(np.percentile(latencies, 50)),
                latency_ms_p99=float(np.percentile(latencies, 99)),
            )
        )
        if points[-1].recall >= max(stop_at, target_recall):
            break
    reaching = [p for p in points if p.recall >= target_recall]
    chosen = reaching[0] if reaching else max(points, key=lambda p: p.recall)
    if not reaching:
        log.warning(
            "no %s reaches recall@%d %.3f (best %.3f at %s=%d): serving the best",
            knob,
            k,
            target_recall,
            chosen.recall,
            knob,
            chosen.value,
        )
    return Sweep(knob, k, target_recall, chosen.value, bool(reaching), points)


def plot(result: Sweep, path: str | Path, title: str = "") -> None:
    """Recall@k vs batch-1 latency, one point per setting, the chosen one marked; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    latency = [p.latency_ms_p50 for p in result.points]
    recall = [p.recall for p in result.points]
    ax.plot(latency, recall, marker="o")
    for p in result.points:
        ax.annotate(
            f"{result.knob}={p.value}",
            (p.latency_ms_p50, p.recall),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    chosen = next(p for p in result.points if p.value == result.chosen)
    ax.scatter(
        [chosen.latency_ms_p50],
        [chosen.recall],
        s=120,
        facecolors="none",
        edgecolors="red",
        label=f"chosen {result.knob}={chosen.value}",
    )
    ax.axhline(
        result.target_recall, color="grey", linestyle="--", label=f"target {result.target_recall}"
    )
    ax.set_xlabel("latency per query, batch 1, p50 (ms)")
    ax.set_ylabel(f"recall@{result.k} vs exact")
    ax.set_title(title or f"operating points over {result.knob}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
