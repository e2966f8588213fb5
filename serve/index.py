"""One factory for FAISS indexes over item vectors, and the few things done to them.

Both similarities are served by inner product: cosine models export unit vectors, so inner
product is cosine. An L2 index over dot-product vectors ranks differently from training, so the
metric is never chosen independently of the similarity.

A FAISS id is an item's row in the bundle's items table, so items can be removed or replaced
without renumbering the others: IVF indexes keep ids in their lists, the others are wrapped in
`IndexIDMap2`. Search settings (nprobe, efSearch) travel as `SearchParameters` objects built
per search, never as state set on the shared index, so concurrent searches with different
filters do not interfere.

A re-ranked index (`...,RFlat`, e.g. conf/index/ivfpq_refine.yaml) searches its base index
(4-bit fast-scan PQ) for k_factor * k candidates and re-scores them exactly from the stored
vectors; its knob is the base's nprobe, and k_factor a fixed setting beside it.

`index.device`: `cpu`, `gpu`, or `auto` (the GPU when `faiss.get_num_gpus() > 0`). A GPU index is
a copy of the CPU index (sharded over every GPU when there are several); saving always writes
the CPU one. This file is the only place in serve/ that knows about GPUs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from towers.similarity import Similarity

log = logging.getLogger(__name__)

FAISS_METRICS = {
    Similarity.DOT: faiss.METRIC_INNER_PRODUCT,
    Similarity.COSINE: faiss.METRIC_INNER_PRODUCT,
}
FAISS_METRIC_NAMES = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}
DEVICES = ("auto", "cpu", "gpu")
# The one search knob of each ANN family, and the values the operating-point sweep tries.
NPROBE, EF_SEARCH = "nprobe", "efSearch"
EF_SEARCH_RANGE = (16, 2048)
# Re-ranked indexes (factory strings ending in `RFlat`): the base index returns k_factor * k
# candidates, re-scored exactly from the stored vectors. A fixed setting, not swept.
K_FACTOR = "k_factor"
DEFAULT_K_FACTOR = 16


def _half_octaves(low: int, high: int) -> list[int]:
    """low, 1.5 low, 2 low, 3 low, 4 low, ... up to high (and high itself): a grid fine enough
    that the chosen setting is at most 1.5x the cheapest one reaching the target (on a
    powers-of-two grid it can be 2x: HNSW at 1M crossed recall 0.95 between efSearch 512 and
    1024)."""
    values, value = set(), low
    while value < high:
        values |= {value, value * 3 // 2}
        value *= 2
    return [*sorted(v for v in values if v < high), high]


@dataclass
class IndexConfig:
    """How the item index is built and searched (conf/index/*.yaml)."""

    factory: str = "Flat"  # FAISS factory string; "{nlist}" → `nlist`, "{half_dim}" → dim / 2
    nlist: int | str = "auto"  # IVF lists; "auto" = about sqrt(num_items), at least 39 items a list
    device: str = "auto"  # auto | cpu | gpu
    target_recall: float = 0.95  # the sweep picks the cheapest setting reaching this recall@sweep_k
    sweep_k: int = 100  # recall@k of the sweep (capped at the catalogue size)
    sweep_queries: int = 500  # query vectors the sweep measures with
    # Fixed search settings ({nprobe: 32}); a configured knob skips the sweep.
    search_params: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"index.device must be one of {DEVICES}, got {self.device!r}")
        if not 0.0 < float(self.target_recall) <= 1.0:
            raise ValueError(f"index.target_recall must be in (0, 1], got {self.target_recall!r}")
        if self.nlist != "auto" and (isinstance(self.nlist, str) or int(self.nlist) <= 0):
            raise ValueError(
                f"index.nlist must be a positive integer or 'auto', got {self.nlist!r}"
            )
        unknown = set(self.search_params) - {NPROBE, EF_SEARCH, K_FACTOR}
        if unknown:
            raise ValueError(
                f"index.search_params: unknown {sorted(unknown)}; "
                f"known: {NPROBE}, {EF_SEARCH}, {K_FACTOR}"
            )
        if self.search_params.get(K_FACTOR, 1) < 1:
            raise ValueError(
                f"index.search_params.{K_FACTOR} must be at least 1, "
                f"got {self.search_params[K_FACTOR]!r}"
            )

    @classmethod
    def parse(cls, cfg: IndexConfig | Mapping | str | None) -> IndexConfig:
        """From a config node (Hydra's `cfg.index`), a dict, a bare factory string, or None."""
        if cfg is None:
            return cls()
        if isinstance(cfg, IndexConfig):
            return cfg
        if isinstance(cfg, str):
            return cls(factory=cfg)
        values = {k: cfg[k] for k in cfg}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"index config: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        if "search_params" in values:
            values["search_params"] = {
                str(k): int(v) for k, v in (values["search_params"] or {}).items()
            }
        return cls(**values)

    def factory_for(self, num_items: int, dim: int) -> str:
        """The factory string for `num_items` vectors of dimension `dim`: `{nlist}` filled in, and
        `{half_dim}` (PQ sub-quantizers of 2 dimensions each, as 4-bit fast-scan codes want)."""
        nlist = auto_nlist(num_items) if self.nlist == "auto" else int(self.nlist)
        if "{half_dim}" in self.factory and dim % 2:
            raise ValueError(
                f"index.factory {self.factory!r}: {{half_dim}} needs an even dimension, got {dim}"
            )
        return self.factory.replace("{nlist}", str(nlist)).replace("{half_dim}", str(dim // 2))

    def to_dict(self) -> dict:
        return asdict(self)


# A search of a few queries runs on one OpenMP thread: waking a thread team costs more than the
# search itself, and on a busy machine the team waits for a descheduled thread (we measured
# 8-12 ms per single-query IVF search with 2 threads under load vs 0.01 ms with one).
FEW_QUERIES = 16
_MAX_THREADS = faiss.omp_get_max_threads()


def set_search_threads(num_queries: int) -> None:
    """One OpenMP thread for fewer than FEW_QUERIES queries, all of them for batches."""
    threads = 1 if num_queries < FEW_QUERIES else _MAX_THREADS
    if faiss.omp_get_max_threads() != threads:
        faiss.omp_set_num_threads(threads)


def auto_nlist(num_items: int) -> int:
    """About sqrt(N) lists, with at least 39 training points per list (FAISS's minimum)."""
    return max(1, min(round(math.sqrt(num_items)), num_items // 39))


def build_index(
    vectors: np.ndarray,
    similarity: str | Similarity,
    factory: str = "Flat",
    ids: np.ndarray | None = None,
) -> faiss.Index:
    """A trained, ID-mapped CPU index over `vectors` (N, D); row i gets id `ids[i]` (default i)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(
            f"build_index: expected a non-empty (N, D) array, got shape {vectors.shape}"
        )
    metric = FAISS_METRICS[Similarity.parse(similarity)]
    try:
        inner = faiss.index_factory(vectors.shape[1], factory, metric)
    except RuntimeError as err:
        raise ValueError(
            f"build_index: FAISS cannot build factory string {factory!r}: {err}"
        ) from None
    if not inner.is_trained:
        inner.train(vectors)
    ids = (
        np.arange(len(vectors), dtype=np.int64)
        if ids is None
        else np.ascontiguousarray(ids, dtype=np.int64)
    )
    # IVF indexes store ids in their lists (and keep them on removal); the others get an ID map.
    # (IndexIDMap.remove_ids renumbers as if the inner index compacted, which IVF does not.)
    index = (
        inner
        if isinstance(faiss.downcast_index(inner), faiss.IndexIVF)
        else faiss.IndexIDMap2(inner)
    )
    index.add_with_ids(vectors, ids)
    return index


def is_id_mapped(index: faiss.Index) -> bool:
    """Whether `index` returns item ids of its own: an IVF index, or one under IndexIDMap2."""
    return isinstance(faiss.downcast_index(index), faiss.IndexIDMap2 | faiss.IndexIVF)


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index under the ID map (downcast to its concrete class)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return index


def is_refined(index: faiss.Index) -> bool:
    """Whether `index` re-ranks its base index's candidates exactly (factory `...,RFlat`)."""
    return isinstance(inner_index(index), faiss.IndexRefine)


def _searched(index: faiss.Index) -> faiss.Index:
    """The index whose knob a search sets: the inner index, or the base of a re-ranked one."""
    inner = inner_index(index)
    return faiss.downcast_index(inner.base_index) if isinstance(inner, faiss.IndexRefine) else inner


def search_knob(index: faiss.Index) -> str | None:
    """`nprobe` for IVF indexes, `efSearch` for HNSW, None for exact (flat) search."""
    searched = _searched(index)
    if isinstance(searched, faiss.IndexIVF):
        return NPROBE
    if isinstance(searched, faiss.IndexHNSW):
        return EF_SEARCH
    return None


def knob_values(index: faiss.Index) -> list[int]:
    """The settings an operating-point sweep tries, cheapest first."""
    knob = search_knob(index)
    if knob == NPROBE:
        return _half_octaves(1, _searched(index).nlist)
    if knob == EF_SEARCH:
        return _half_octaves(*EF_SEARCH_RANGE)
    return []


def fixed_settings(index: faiss.Index, configured: Mapping[str, int]) -> dict[str, int]:
    """The configured search settings plus the defaults `index` needs that a sweep keeps fixed
    (a re-ranked index's k_factor)."""
    defaults = {K_FACTOR: DEFAULT_K_FACTOR} if is_refined(index) else {}
    return {**defaults, **configured}


def search_parameters(
    index: faiss.Index,
    settings: Mapping[str, int],
    selector: faiss.IDSelector | None = None,
    wanted: int | None = None,
    fetch: int | None = None,
) -> faiss.SearchParameters | None:
    """Per-search parameters for `index`: its knob from `settings`, and an optional id selector.

    `wanted` of `fetch` requested results: a search that over-fetches to make room for excluded
    items needs only `wanted` of them, so a re-ranked index re-scores k_factor candidates per
    wanted result plus one per extra slot (k_factor * wanted + fetch - wanted), not k_factor per
    fetched one. Other indexes ignore both."""
    knob = search_knob(index)
    values = {knob: int(settings[knob])} if knob is not None and knob in settings else {}
    if is_refined(index):
        k_factor = float(settings.get(K_FACTOR, DEFAULT_K_FACTOR))
        if wanted is not None and fetch is not None and 0 < wanted < fetch:
            # FAISS takes int(fetch * k_factor) candidates: +0.5 keeps the intended count exact.
            k_factor = (k_factor * wanted + (fetch - wanted) + 0.5) / fetch
        return _refine_parameters(index, k_factor, values, selector)
    if selector is not None:
        values["sel"] = selector
    return _parameters(knob, values)


def _parameters(knob: str | None, values: dict) -> faiss.SearchParameters | None:
    if not values:
        return None
    if knob == NPROBE:
        return faiss.SearchParametersIVF(**values)
    if knob == EF_SEARCH:
        return faiss.SearchParametersHNSW(**values)
    return faiss.SearchParameters(**values)


def _refine_parameters(index, k_factor: float, values, selector) -> faiss.SearchParameters:
    """A re-ranked index ignores a selector given to it; its base index takes it, over the row
    numbers the base stores, so an item-id selector is translated through the ID map."""
    if selector is not None:
        mapped = faiss.downcast_index(index)
        if isinstance(mapped, faiss.IndexIDMap2):
            translated = faiss.IDSelectorTranslated(mapped.id_map, selector)
            translated.referenced_objects = [selector]  # the C++ object points at it
            selector = translated
        values["sel"] = selector
    return faiss.IndexRefineSearchParameters(
        k_factor=k_factor, base_index_params=_parameters(search_knob(index), values)
    )


def remove_ids(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """`index` without `ids`. Index types that cannot remove (HNSW) are rebuilt from what is left.

    `vectors` (rows = ids) must hold every id still in the index."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        index.remove_ids(ids)
        return index
    except RuntimeError:
        pass
    kept = np.setdiff1d(faiss.vector_to_array(faiss.downcast_index(index).id_map), ids)
    log.info(
        "index type %s cannot remove ids: rebuilding over %d items",
        type(inner_index(index)).__name__,
        len(kept),
    )
    inner = faiss.clone_index(inner_index(index))
    inner.reset()
    rebuilt = faiss.IndexIDMap2(inner)
    rebuilt.add_with_ids(np.ascontiguousarray(vectors[kept], dtype=np.float32), kept)
    return rebuilt


# -- devices -------------------------------------------------------------------------------------
def resolve_device(device: str, num_gpus: int | None = None) -> str:
    """`cpu` or `gpu` for a configured `auto | cpu | gpu`; an error when `gpu` has no GPU."""
    if device not in DEVICES:
        raise ValueError(f"index.device must be one of {DEVICES}, got {device!r}")
    num_gpus = faiss.get_num_gpus() if num_gpus is None else num_gpus
    if device == "gpu" and num_gpus == 0:
        raise RuntimeError(
            "index.device=gpu but FAISS sees no GPU (faiss.get_num_gpus() == 0); "
            "use index.device=cpu or auto, or install a CUDA build of faiss on a machine with a GPU"
        )
    if device == "auto":
        return "gpu" if num_gpus > 0 else "cpu"
    return device


class GpuIndex:
    """A CPU index searched on the GPU(s): the index under the ID map is copied there (sharded
    over every GPU when there are several) and GPU results are mapped back to item ids (IVF
    indexes carry their ids to the GPU themselves).

    GPU indexes take no id selector, so filtered searches over-fetch (see Recommender)."""

    def __init__(self, index: faiss.Index):
        self.cpu = index
        mapped = isinstance(faiss.downcast_index(index), faiss.IndexIDMap2)  # IVF keeps its own ids
        self.id_map = faiss.vector_to_array(faiss.downcast_index(index).id_map) if mapped else None
        inner = inner_index(index)
        if faiss.get_num_gpus() > 1:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            self.gpu = faiss.index_cpu_to_all_gpus(inner, co=options)
        else:
            self.resources = faiss.StandardGpuResources()
            self.gpu = faiss.index_cpu_to_gpu(self.resources, 0, inner)
        self.ntotal = index.ntotal
        self.metric_type = index.metric_type

    def search(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None):
        if params is not None and getattr(params, "sel", None) is not None:
            raise ValueError("GPU indexes take no id selector; filter by over-fetching")
        scores, found = self.gpu.search(queries, k, params=params)
        if self.id_map is None:
            return scores, found
        ids = self.id_map[np.maximum(found, 0)]  # positions → ids
        return scores, np.where(found >= 0, ids, -1)


def to_device(index: faiss.Index, device: str) -> faiss.Index | GpuIndex:
    """The index to search on `device` (already resolved): the CPU index itself or a `GpuIndex`.

    Index types without a FAISS GPU version (HNSW, re-ranked fast-scan PQ) stay on the CPU."""
    if device == "cpu":
        return index
    if search_knob(index) == EF_SEARCH or is_refined(index):
        log.warning(
            "%s has no FAISS GPU version: searching it on the CPU",
            type(inner_index(index)).__name__,
        )
        return index
    return GpuIndex(index)


def on_gpu(index) -> bool:
    return isinstance(index, GpuIndex)


def to_cpu(index) -> faiss.Index:
    """The CPU index to save (a GPU index keeps the CPU index it was copied from)."""
    return index.cpu if isinstance(index, GpuIndex) else index


def index_bytes(index: faiss.Index) -> int:
    """Size of the index in FAISS's serialised form (a proxy for its memory)."""
    return int(faiss.serialize_index(to_cpu(index)).nbytes)
