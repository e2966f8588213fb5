"""Export: the trained towers and the serving tables become a bundle version. The item towers
encode the whole catalogue, the index is built over the active items (and, when approximate,
swept for the cheapest search setting that reaches the target recall), and every file is written
as a new version (serve/bundle.py: the files; serve/versions.py: the switch).

Also the one place that encodes rows of an items table (`encode_items`), which catalogue
updates reuse (serve/update.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch

from features.arrays import padded
from features.serving import ACTIVE, GENRE_IDS, HISTORY, YEAR_BUCKET
from serve.bundle import write_files
from serve.errors import BundleError
from serve.files import PLOT
from serve.index import FAISS_METRIC_NAMES, IndexConfig, build_index, fixed_settings, search_knob
from serve.sweep import exact_neighbours, plot, sweep
from serve.versions import write_version
from towers.scoring import Scorer
from towers.similarity import Similarity


def export_bundle(
    path: str | Path,
    scorer: Scorer,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index_factory: str | None = None,
    index_config: IndexConfig | Mapping | None = None,
) -> Path:
    """Encode the catalogue, build (and sweep) the index, write a new bundle version at `path`.

    `index_config` (conf/index/*.yaml) wins over the bare `index_factory` string. Returns `path`."""
    path = Path(path)
    config = IndexConfig.parse(index_config if index_config is not None else index_factory)
    similarity, spec = scorer.similarity, scorer.spec
    if items_df.height != spec.num_items or users_df.height != spec.num_users:
        raise BundleError(
            f"tables do not match the towers: {items_df.height} items / {users_df.height} users, "
            f"towers built for {spec.num_items} / {spec.num_users}"
        )
    vectors = encode_items(scorer, items_df)
    if ACTIVE not in items_df.columns:
        items_df = items_df.with_columns(pl.lit(True).alias(ACTIVE))
    ids = np.flatnonzero(items_df[ACTIVE].to_numpy())
    queries = sample_user_vectors(scorer, users_df, config.sweep_queries)

    def fill(directory: Path) -> None:
        index, section = index_section(vectors, ids, similarity, config, queries, directory / PLOT)
        write_files(
            directory,
            scorer=scorer,
            vectors=vectors,
            items_df=items_df,
            users_df=users_df,
            index=index,
            index_manifest=section,
        )

    write_version(path, fill)
    return path


@torch.inference_mode()
def encode_items(
    scorer: Scorer, items_df: pl.DataFrame, rows: np.ndarray | None = None, chunk: int = 65536
) -> np.ndarray:
    """Served item vectors (I, D) float32 for the rows of an items table; `rows` are their item
    indices (default 0..I-1).

    Rows past the towers' id vocabulary (items added after training) have no id embedding: their
    vector comes from their features alone (genres, year), and a popularity prior counts them as
    never seen."""
    scorer.eval()
    genres = torch.from_numpy(padded(items_df[GENRE_IDS], scorer.spec.num_genres))
    year = torch.from_numpy(items_df[YEAR_BUCKET].to_numpy().astype(np.int64))
    ids = torch.arange(items_df.height) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    has_id = ids < scorer.spec.num_items
    parts = [
        scorer.encode_items(
            ids[s : s + chunk],
            genres[s : s + chunk],
            year[s : s + chunk],
            has_id=has_id[s : s + chunk],
        ).float()
        for s in range(0, items_df.height, chunk)
    ]
    if not parts:
        return np.zeros((0, scorer.output_dim), dtype=np.float32)
    return torch.cat(parts).cpu().numpy()


def sample_user_vectors(
    scorer: Scorer, users_df: pl.DataFrame, count: int, seed: int = 0
) -> np.ndarray:
    """Served vectors (count', D) of a fixed random sample of users: the sweep's queries."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(users_df.height, size=min(count, users_df.height), replace=False))
    spec = scorer.spec
    histories = padded(users_df[HISTORY][rows], spec.num_items, spec.history_length)
    with torch.inference_mode():
        return scorer.encode_users(torch.from_numpy(rows), torch.from_numpy(histories)).numpy()


def index_section(
    vectors: np.ndarray,
    ids: np.ndarray,
    similarity: Similarity,
    config: IndexConfig,
    queries: np.ndarray,
    plot_path: Path | None,
) -> tuple[faiss.Index, dict]:
    """Build the index over `vectors` (rows `ids`), sweep it when it is approximate, and return it
    with its manifest section. The plot is written to `plot_path` when there is a sweep."""
    factory = config.factory_for(len(ids), vectors.shape[1])
    index = build_index(vectors[ids], similarity, factory, ids=ids)
    section = {
        "factory": factory,
        "metric": FAISS_METRIC_NAMES[index.metric_type],
        "config": config.to_dict(),
        "search_params": fixed_settings(index, config.search_params),
        "sweep": None,
    }
    knob = search_knob(index)
    if knob is not None and knob not in config.search_params and len(queries):
        k = min(config.sweep_k, len(ids))
        truth = exact_neighbours(vectors[ids], queries, k, ids=ids)
        result = sweep(index, queries, truth, config.target_recall, fixed=section["search_params"])
        section["search_params"] |= result.search_params
        section["sweep"] = result.to_dict()
        if plot_path is not None:
            plot(result, plot_path, title=f"{factory}: recall@{k} vs latency, {len(ids)} items")
            section["sweep"]["plot"] = plot_path.name
    return index, section
