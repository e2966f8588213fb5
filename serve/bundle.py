"""The bundle format: the files of one bundle version, how they are written, and how they are
read back and checked. No pickle anywhere.

    v000002/                     one version (serve/versions.py: the root that holds them)
      manifest.json              format version, similarity, dimension, counts, model config,
                                 index settings and operating-point sweep, package versions,
                                 every other file's size and sha256 (written last):
                                 "files": {"index.faiss": {"sha256": "9f2c...", "bytes": 25600090}}
      user_tower.safetensors     user towers' weights, one per member ("0.user_embedding.weight")
      item_tower.safetensors     item towers' weights (to encode new or changed items), and the
                                 popularity prior's per-item coordinate ("prior.item_prior")
      item_vectors.safetensors   every catalogue row's vector, row = FAISS id
      features.json              both towers' fitted features: the transform of every table row
      items.parquet              item_id, the source's item columns, active, content_only
      users.parquet              user_id, the source's user columns, history, seen (row = index)
      index.faiss                FAISS index over the active rows, id = row (FAISS's own format)
      operating_points.png       recall vs latency of the sweep (ANN indexes only)

Rows of the items table are never renumbered: a removed item keeps its row with `active` false,
and is no longer in the index. Reading a version checks every file the manifest lists against its
size and sha256 first (`VERIFY`: "full", or "size" alone, or "off"), so a truncated, replaced or
corrupted file is a `BundleError` naming it, never a bundle that loads and serves wrong results. Writing a whole version (and switching to it) is
`serve.versions.write_version`; encoding a catalogue into one is `serve.export.export_bundle`.
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from features.fitted import FittedFeatures
from features.schema import ITEM_ID, USER_ID
from features.serving import ACTIVE, ITEM_COLUMNS, USER_COLUMNS
from serve.errors import BundleError
from serve.files import (  # the names of a version's files, defined once
    FEATURES,
    FILES,
    FORMAT_VERSION,
    INDEX,
    ITEM_TOWER,
    ITEM_VECTORS,
    ITEMS,
    MANIFEST,
    PLOT,
    PRIOR_KEY,
    USER_TOWER,
    USERS,
    VECTORS_KEY,
    file_entry,
    in_threads,
    verify_files,
)
from serve.index import FAISS_METRIC_NAMES, FAISS_METRICS, IndexConfig, is_id_mapped, to_cpu
from towers.scoring import Scorer
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower


def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("twotower", "torch", "faiss-gpu", "faiss-cpu", "polars", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _states(towers: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The members' tower weights in one flat dict, keys prefixed by the member's number."""
    # safetensors refuses tensors that share storage: give each its own contiguous copy.
    return {
        f"{m}.{name}": t.detach().cpu().contiguous().clone()
        for m, tower in enumerate(towers)
        for name, t in tower.state_dict().items()
    }


def write_files(
    directory: Path,
    *,
    scorer: Scorer,
    features: FittedFeatures,
    vectors: np.ndarray,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index: faiss.Index,
    index_manifest: dict,
    extra: Mapping | None = None,
) -> None:
    """Every file of one version, and its manifest last (with the other files' checksums)."""
    (directory / FEATURES).write_text(json.dumps(features.to_json(), indent=1) + "\n")
    save_file(_states([user for user, _ in scorer.members]), directory / USER_TOWER)
    item_states = _states([item for _, item in scorer.members])
    if scorer.popularity_prior:
        item_states[PRIOR_KEY] = scorer.item_prior.contiguous().clone()
    save_file(item_states, directory / ITEM_TOWER)
    save_file(
        {VECTORS_KEY: torch.from_numpy(np.ascontiguousarray(vectors))}, directory / ITEM_VECTORS
    )
    items_df.write_parquet(directory / ITEMS)
    users_df.write_parquet(directory / USERS)
    faiss.write_index(to_cpu(index), str(directory / INDEX))
    files = [*FILES, *([PLOT] if (directory / PLOT).is_file() else [])]
    manifest = {
        "format_version": FORMAT_VERSION,
        "similarity": scorer.similarity.value,
        "embedding_dim": int(vectors.shape[1]),
        "num_items": int(items_df.height),
        "num_active_items": int(index.ntotal),
        "num_users": int(users_df.height),
        "model": {
            "spec": scorer.spec.to_dict(),
            "members": [user.cfg.to_dict() for user, _ in scorer.members],
            "scoring": scorer.to_dict(),
        },
        "index": index_manifest,
        **dict(extra or {}),
        "versions": _package_versions(),
        "files": dict(
            zip(files, in_threads(file_entry, [directory / n for n in files]), strict=True)
        ),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@dataclass
class Bundle:
    """One bundle version read back into memory."""

    path: Path  # the version directory read
    root: Path  # the path it was loaded from (the versioned root, or the same directory)
    version: str | None  # e.g. "v000002"; None for a plain directory (see serve.versions)
    manifest: dict
    similarity: Similarity
    scorer: Scorer  # the members' towers and the scoring settings: encodes users and items
    features: FittedFeatures  # the towers' inputs from table rows (features.json)
    item_vectors: np.ndarray  # (I, D) float32, row = FAISS id
    items: pl.DataFrame
    users: pl.DataFrame
    index: faiss.Index

    @property
    def search_params(self) -> dict[str, int]:
        return dict(self.manifest["index"].get("search_params") or {})

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig.parse(self.manifest["index"].get("config"))

    @property
    def bytes_per_item(self) -> float:
        """The index file's bytes per indexed item (index_bytes_per_item)."""
        return index_bytes_per_item(self.manifest)


# The metric index_bytes_per_item gives, e.g. `test_d32/bytes_per_item`.
BYTES_PER_ITEM = "bytes_per_item"


def index_bytes_per_item(manifest: dict) -> float:
    """A version's FAISS index file size over the items it indexes, from its manifest: what a
    smaller index (a Matryoshka prefix, a PQ code) costs per item."""
    return manifest["files"][INDEX]["bytes"] / max(int(manifest["num_active_items"]), 1)


def read_manifest(path: str | Path, *, require_files: bool = True) -> dict:
    """The manifest of a version directory, after checking its format version and (unless
    `require_files` is off) that every file of a version is there."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no bundle directory there", path=path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path}: missing {MANIFEST}; is this a bundle directory?", path=manifest_path
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})", path=manifest_path) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a JSON object", path=manifest_path)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {version!r}; this twotower reads version {FORMAT_VERSION} "
            "(re-export the bundle with this version)",
            path=manifest_path,
        )
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing and require_files:
        raise BundleError(f"{path}: bundle is missing {', '.join(missing)}", path=path / missing[0])
    return manifest


def _load_scorer(path: Path, manifest: dict) -> Scorer:
    """The members' towers from their safetensors files, scored as the manifest says."""
    try:
        spec = FeatureSpec(**manifest["model"]["spec"])
        configs = [TowerConfig(**cfg) for cfg in manifest["model"]["members"]]
        scoring = manifest["model"]["scoring"]
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / MANIFEST}: bad model config ({err})") from None
    user_states, item_states = _read_states(path / USER_TOWER), _read_states(path / ITEM_TOWER)
    item_prior = item_states.pop(PRIOR_KEY, None)
    members = [
        (
            _load_tower(UserTower(spec, cfg), path / USER_TOWER, user_states, m),
            _load_tower(ItemTower(spec, cfg), path / ITEM_TOWER, item_states, m),
        )
        for m, cfg in enumerate(configs)
    ]
    try:
        scorer = Scorer(members, scoring["weights"], dim=scoring.get("dim"))
        scorer.popularity_prior = float(scoring["popularity_prior"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / MANIFEST}: bad scoring settings ({err})") from None
    if scorer.popularity_prior and (
        item_prior is None or item_prior.shape != (spec.num_items + 1,)
    ):
        raise BundleError(f"{path / ITEM_TOWER}: no {PRIOR_KEY} of {spec.num_items + 1} values")
    scorer.item_prior = item_prior if scorer.popularity_prior else None
    return scorer.eval()


def _read_features(path: Path) -> FittedFeatures:
    try:
        return FittedFeatures.from_json(json.loads((path / FEATURES).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{path / FEATURES}: cannot read the fitted features ({err})") from None


def _read_states(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: cannot read the weights ({err})") from None


def _load_tower(tower, path: Path, states: dict[str, torch.Tensor], member: int):
    prefix = f"{member}."
    state = {k[len(prefix) :]: v for k, v in states.items() if k.startswith(prefix)}
    try:
        tower.load_state_dict(state)
    except RuntimeError as err:
        raise BundleError(
            f"{path}: member {member}'s weights do not fit the manifest's model config ({err})"
        ) from None
    return tower


def read_version(
    path: Path, root: Path | None = None, version: str | None = None, verify: str = "full"
) -> Bundle:
    """The bundle version in directory `path`, after every check of its files and manifest
    (each file's size and sha256 against the manifest first, as `verify` says: VERIFY);
    `root` and `version` say where it was found (`serve.versions.read_bundle`)."""
    manifest = read_manifest(path)
    verify_files(path, manifest, verify)
    similarity = _declared_similarity(path, manifest)
    index = _read_checked_index(path, similarity)
    vectors, items, users = _read_tables(path)
    _check_counts(path, manifest, vectors, items, users, index)
    scorer = _load_scorer(path, manifest)
    _check_dimension(path, manifest, scorer, vectors, index)
    return Bundle(
        path=path,
        root=path if root is None else root,
        version=version,
        manifest=manifest,
        similarity=similarity,
        scorer=scorer,
        features=_read_features(path),
        item_vectors=vectors,
        items=items,
        users=users,
        index=index,
    )


def _declared_similarity(path: Path, manifest: dict) -> Similarity:
    """The manifest's similarity, which every member must have been trained with."""
    try:
        similarity = Similarity.parse(manifest["similarity"])
        trained = {Similarity.parse(cfg["similarity"]) for cfg in manifest["model"]["members"]}
        IndexConfig.parse(manifest["index"].get("config"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{path / MANIFEST}: bad model or index config ({err})") from None
    if trained != {similarity}:
        raise BundleError(
            f"{path / MANIFEST}: similarity {similarity.value!r} but the towers were trained with "
            + ", ".join(repr(s.value) for s in sorted(trained))
        )
    return similarity


def _read_checked_index(path: Path, similarity: Similarity) -> faiss.Index:
    try:
        index = faiss.read_index(str(path / INDEX))
    except RuntimeError as err:
        raise BundleError(
            f"{path / INDEX}: FAISS cannot read it ({str(err).splitlines()[0]})"
        ) from None
    if index.metric_type != FAISS_METRICS[similarity]:
        raise BundleError(
            f"{path / INDEX}: metric {FAISS_METRIC_NAMES.get(index.metric_type, index.metric_type)} "
            f"does not serve similarity {similarity.value!r} (needs inner_product)"
        )
    if not is_id_mapped(index):
        raise BundleError(
            f"{path / INDEX}: an index that does not map item ids (IndexIDMap2 or IVF)"
        )
    return index


def _read_tables(path: Path) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
    try:
        vectors = load_file(path / ITEM_VECTORS)[VECTORS_KEY].numpy()
        items, users = pl.read_parquet(path / ITEMS), pl.read_parquet(path / USERS)
    except (OSError, KeyError, pl.exceptions.PolarsError) as err:
        raise BundleError(f"{path}: cannot read the item vectors or tables ({err})") from None
    missing = [c for c in (ITEM_ID, *ITEM_COLUMNS) if c not in items.columns]
    missing += [f"users.{c}" for c in (USER_ID, *USER_COLUMNS) if c not in users.columns]
    if missing:
        raise BundleError(f"{path}: the tables lack columns {missing}")
    return vectors, items, users


def _check_counts(path, manifest, vectors, items, users, index) -> None:
    try:
        num_items, num_active, num_users = (
            int(manifest[key]) for key in ("num_items", "num_active_items", "num_users")
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / MANIFEST}: bad counts ({err})") from None
    active = int(items[ACTIVE].sum())
    if not (len(vectors) == items.height == num_items) or not (
        index.ntotal == active == num_active
    ):
        raise BundleError(
            f"{path}: item counts disagree (manifest {num_items} items / {num_active} active, "
            f"items.parquet {items.height} / {active} active, item_vectors {len(vectors)}, "
            f"index {index.ntotal})"
        )
    if users.height != num_users:
        raise BundleError(
            f"{path}: users.parquet has {users.height} rows, manifest says {num_users}"
        )


def _check_dimension(path, manifest, scorer: Scorer, vectors, index) -> None:
    """The user vectors the scorer makes (its members, prefix `dim` and prior) have the length of
    the stored item vectors and the index, as the manifest says: a bundle whose scoring settings
    disagree with its vectors fails here, not at its first search."""
    lengths = {
        "the scorer's user vectors": scorer.output_dim,
        "item_vectors": int(vectors.shape[1]) if vectors.ndim == 2 else -1,
        "the index": int(index.d),
        "the manifest's embedding_dim": manifest.get("embedding_dim"),
    }
    if len(set(lengths.values())) > 1:
        raise BundleError(
            f"{path}: vector lengths disagree ("
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
            + f"; scoring: {manifest['model']['scoring']})",
            path=path / MANIFEST,
        )
