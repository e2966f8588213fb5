"""Export: the trained towers and the serving tables become a bundle version. The item towers
encode the whole catalogue, the index is built over the active items (and, when approximate,
swept for the cheapest search setting that reaches the target recall), and every file is written
as a new version (serve/bundle.py: the files; serve/versions.py: the switch).

Also the one place that encodes rows of an items table (`encode_items`: the fitted features'
transform, then the item towers), which catalogue updates reuse (serve/update.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch

from features.fitted import FittedFeatures
from features.serving import ACTIVE
from serve.bundle import write_files
from serve.errors import BundleError
from serve.files import PLOT
from serve.index import FAISS_METRIC_NAMES, IndexConfig, build_index, fixed_settings, search_knob
from serve.inputs import UserInputs, item_codes, item_inputs
from serve.sweep import exact_neighbours, plot, sweep
from serve.versions import write_version
from towers.scoring import Scorer
from towers.similarity import Similarity


def export_bundle(
    path: str | Path,
    scorer: Scorer,
    features: FittedFeatures,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index_factory: str | None = None,
    index_config: IndexConfig | Mapping | None = None,
    num_train_users: int | None = None,
) -> Path:
    """Encode the catalogue, build (and sweep) the index, write a new bundle version at `path`.
    The vectors are the scorer's served ones (towers.scoring: its members, their Matryoshka
    prefix `dim` and the popularity prior), and so is every user vector the bundle serves.

    `index_config` (conf/index/*.yaml) wins over the bare `index_factory` string;
    `num_train_users`: the users table's first rows that have an id row (default: all).
    Returns `path`."""
    path = Path(path)
    config = IndexConfig.parse(index_config if index_config is not None else index_factory)
    similarity, spec = scorer.similarity, scorer.spec
    if items_df.height < spec.num_items or users_df.height != spec.num_users:
        raise BundleError(
            f"tables do not match the towers: {items_df.height} items / {users_df.height} users, "
            f"towers built for {spec.num_items} / {spec.num_users}"
        )
    vectors = encode_items(scorer, features, items_df)
    if ACTIVE not in items_df.columns:
        items_df = items_df.with_columns(pl.lit(True).alias(ACTIVE))
    ids = np.flatnonzero(items_df[ACTIVE].to_numpy())
    queries = sample_user_vectors(scorer, features, items_df, users_df, config.sweep_queries)

    def fill(directory: Path) -> None:
        index, section = index_section(vectors, ids, similarity, config, queries, directory / PLOT)
        write_files(
            directory,
            scorer=scorer,
            features=features,
            vectors=vectors,
            items_df=items_df,
            users_df=users_df,
            index=index,
            index_manifest=section,
            extra={
                "num_train_users": users_df.height if num_train_users is None else num_train_users
            },
        )

    write_version(path, fill)
    return path


@torch.inference_mode()
def encode_items(
    scorer: Scorer,
    features: FittedFeatures,
    items_df: pl.DataFrame,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Served item vectors (I, D) float32 for the rows of an items table (raw columns, through the
    fitted features' transform); `rows` are their catalogue rows (default 0..I-1), which the
    popularity prior reads.

    An item without an id row (no training interaction, or added after training) gets its vector
    from its other features alone, and a popularity prior counts it as never seen."""
    scorer.eval()
    inputs = item_inputs(features, items_df)
    rows_t = torch.arange(items_df.height) if rows is None else torch.as_tensor(rows).long()
    chunk = scorer.items_per_pass
    parts = [
        scorer.encode_items(
            {n: t[s : s + chunk] for n, t in inputs.items()}, rows_t[s : s + chunk]
        ).float()
        for s in range(0, items_df.height, chunk)
    ]
    if not parts:
        return np.zeros((0, scorer.output_dim), dtype=np.float32)
    return torch.cat(parts).cpu().numpy()


def sample_user_vectors(
    scorer: Scorer,
    features: FittedFeatures,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    count: int,
    seed: int = 0,
) -> np.ndarray:
    """Served vectors (count', D) of a fixed random sample of users: the sweep's queries."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(users_df.height, size=min(count, users_df.height), replace=False))
    codes = item_codes(features, items_df)
    users = UserInputs(features, users_df[rows], codes)
    with torch.inference_mode():
        return scorer.encode_users(users(np.arange(len(rows)))).float().numpy()


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
