"""The exported bundle: versioned directories that hold everything serving needs, and no pickle.

    bundle/                      the path handed to export_bundle / Recommender.load
      CURRENT                    the name of the version being served ("v000002\\n")
      v000001/  v000002/ ...     one complete version each:
        manifest.json            format version, similarity, dimension, counts, model config,
                                 index settings and operating-point sweep, versions, checksums
        user_tower.safetensors   user towers' weights, one per member ("0.user_embedding.weight")
        item_tower.safetensors   item towers' weights (to encode new or changed items), and the
                                 popularity prior's per-item coordinate ("prior.item_prior")
        item_vectors.safetensors every catalogue row's vector, row = FAISS id
        items.parquet            item_id, title, genres, year, genre_ids, year_bucket, active
        users.parquet            user_id, history, seen (row = index)
        index.faiss              FAISS index over the active rows, id = row (FAISS's own format)
        operating_points.png     recall vs latency of the sweep (ANN indexes only)

Every write makes a whole new version in a temporary directory, renames it into place, then
replaces CURRENT with `os.replace`: a reader sees the old version or the new one, never half of
either. A version directory on its own is also a bundle (what `read_bundle` reads when there is
no CURRENT). Rows of the items table are never renumbered: a removed item keeps its row with
`active` false, and is no longer in the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from features.arrays import padded_rows
from features.serving import ACTIVE, GENRE_IDS, HISTORY, ITEM_COLUMNS, USER_COLUMNS, YEAR_BUCKET
from serve.errors import BundleError
from serve.index import (
    FAISS_METRIC_NAMES,
    FAISS_METRICS,
    IndexConfig,
    build_index,
    fixed_settings,
    is_id_mapped,
    read_index,
    search_knob,
    write_index,
)
from serve.sweep import exact_neighbours, plot, sweep
from towers.scoring import Scorer
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: members' towers and the scoring settings (towers.scoring.Scorer)
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
USER_TOWER = "user_tower.safetensors"
ITEM_TOWER = "item_tower.safetensors"
ITEM_VECTORS = "item_vectors.safetensors"
ITEMS = "items.parquet"
USERS = "users.parquet"
INDEX = "index.faiss"
PLOT = "operating_points.png"
FILES = (USER_TOWER, ITEM_TOWER, ITEM_VECTORS, ITEMS, USERS, INDEX)
VERSION_NAME = re.compile(r"^v(\d{6})$")
PRIOR_KEY = "prior.item_prior"  # in ITEM_TOWER: the popularity prior's centred log p per item
KEEP_VERSIONS = 3  # older versions are deleted after a switch (readers load whole files at once)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("twotower", "torch", "faiss-gpu", "faiss-cpu", "polars", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _states(towers: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The members' tower weights in one flat dict, keys prefixed by the member's number."""
    # safetensors refuses tensors that share storage: give each its own contiguous copy.
    return {
        f"{m}.{name}": t.detach().cpu().contiguous().clone()
        for m, tower in enumerate(towers)
        for name, t in tower.state_dict().items()
    }


def padded(lists: pl.Series, pad: int, width: int | None = None) -> np.ndarray:
    """A list[int] column as a (rows, width) int64 array padded with `pad` (longer lists cut)."""
    if isinstance(lists.dtype, pl.Array):
        lists = lists.cast(pl.List(lists.dtype.inner))
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    flat = lists.explode().drop_nulls().to_numpy().astype(np.int64)
    out = padded_rows(indptr, flat, np.arange(len(lists)), pad)
    if width is None:
        return out
    out = out[:, :width]
    return np.pad(out, ((0, 0), (0, width - out.shape[1])), constant_values=pad)


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
            ids[s : s + chunk], genres[s : s + chunk], year[s : s + chunk], has_id[s : s + chunk]
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


# -- the index and its operating point -----------------------------------------------------------
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


# -- versioned directories -----------------------------------------------------------------------
def _version_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and VERSION_NAME.match(p.name))


def resolve(path: str | Path) -> tuple[Path, str | None]:
    """(directory of the version to read, its name): CURRENT's version, or `path` itself."""
    path = Path(path)
    pointer = path / CURRENT
    if not pointer.is_file():
        return path, None
    name = pointer.read_text().strip()
    if not VERSION_NAME.match(name):
        raise BundleError(f"{pointer}: names {name!r}, not a version directory (v000001, ...)")
    if not (path / name).is_dir():
        raise BundleError(f"{pointer}: names version {name!r} but {path / name} does not exist")
    return path / name, name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_version(
    root: str | Path, fill: Callable[[Path], None], keep: int = KEEP_VERSIONS
) -> Path:
    """A new version of the bundle at `root`: `fill(directory)` writes its files into a temporary
    directory, which is renamed to the next version name; then CURRENT switches to it.

    `root` may not exist yet (the first version), or may be a plain (unversioned) bundle, which
    is replaced whole once the new versioned bundle is ready."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BundleError(f"{root}: exists and is not a directory")
    plain = root.is_dir() and (root / MANIFEST).is_file() and not (root / CURRENT).exists()
    if root.is_dir() and not plain and not (root / CURRENT).exists() and any(root.iterdir()):
        raise BundleError(f"{root}: not empty and not a bundle; refusing to write a bundle into it")
    target = root
    if plain:  # build a whole versioned bundle beside it, then swap
        root.parent.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    target.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    tmp = Path(tempfile.mkdtemp(prefix=".version.", dir=target))
    try:
        fill(tmp)
        for file in tmp.iterdir():  # mkdtemp and safetensors create owner-only files
            file.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        while True:  # another writer may take a name first: then take the next one
            names = _version_names(target)
            number = int(VERSION_NAME.match(names[-1]).group(1)) + 1 if names else 1
            version = target / f"v{number:06d}"
            try:
                os.rename(tmp, version)
                break
            except OSError:
                if not version.exists():
                    raise
        _write_atomic(target / CURRENT, version.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if plain:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if plain:
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(target, root)
        shutil.rmtree(old, ignore_errors=True)
        version = root / version.name
    _prune(root, keep)
    return version


def _prune(root: Path, keep: int) -> None:
    current = (root / CURRENT).read_text().strip()
    names = [n for n in _version_names(root) if n != current]
    for name in names[: max(len(names) - (keep - 1), 0)]:
        shutil.rmtree(root / name, ignore_errors=True)


def write_files(
    directory: Path,
    *,
    scorer: Scorer,
    vectors: np.ndarray,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index: faiss.Index,
    index_manifest: dict,
    extra: Mapping | None = None,
) -> None:
    """Every file of one version, and its manifest last (with the other files' checksums)."""
    save_file(_states([user for user, _ in scorer.members]), directory / USER_TOWER)
    item_states = _states([item for _, item in scorer.members])
    if scorer.item_prior is not None:
        item_states[PRIOR_KEY] = scorer.item_prior.contiguous().clone()
    save_file(item_states, directory / ITEM_TOWER)
    save_file(
        {"vectors": torch.from_numpy(np.ascontiguousarray(vectors))}, directory / ITEM_VECTORS
    )
    items_df.write_parquet(directory / ITEMS)
    users_df.write_parquet(directory / USERS)
    write_index(index, directory / INDEX)
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
        "versions": _versions(),
        "files": {name: _sha256(directory / name) for name in files},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


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


@dataclass
class Bundle:
    """One bundle version read back into memory."""

    path: Path  # the version directory read
    root: Path  # the path it was loaded from (the versioned root, or the same directory)
    version: str | None  # e.g. "v000002"; None for a plain directory
    manifest: dict
    similarity: Similarity
    scorer: Scorer  # the members' towers and the scoring settings: encodes users and items
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


def read_manifest(path: str | Path) -> dict:
    """The manifest of a version directory, after checking its format version and files."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no bundle directory there")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: missing {MANIFEST}; is this a bundle directory?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {version!r}; this twotower reads version {FORMAT_VERSION} "
            "(re-export the bundle with this version)"
        )
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path}: bundle is missing {', '.join(missing)}")
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
        scorer = Scorer(members, scoring["weights"])
        scorer.popularity_prior = float(scoring["popularity_prior"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / MANIFEST}: bad scoring settings ({err})") from None
    if scorer.popularity_prior and (
        item_prior is None or item_prior.shape != (spec.num_items + 1,)
    ):
        raise BundleError(f"{path / ITEM_TOWER}: no {PRIOR_KEY} of {spec.num_items + 1} values")
    scorer.item_prior = item_prior if scorer.popularity_prior else None
    return scorer.eval()


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


def read_bundle(path: str | Path, attempts: int = 5) -> Bundle:
    """The version CURRENT names under `path` (or `path` itself when it is a version directory).

    A version pruned while it was being read (several switches happened meanwhile) is not an
    error: the read starts over on the version CURRENT names now."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory there")
    for attempt in range(attempts):
        version = current_version(root)
        try:
            return _read_version(root)
        except (BundleError, OSError):
            if version is None or attempt == attempts - 1 or current_version(root) == version:
                raise
    raise AssertionError("unreachable")


def _read_version(root: Path) -> Bundle:
    path, version = resolve(root)
    manifest = read_manifest(path)
    similarity = _declared_similarity(path, manifest)
    index = _read_checked_index(path, similarity)
    vectors, items, users = _read_tables(path)
    _check_counts(path, manifest, vectors, items, users, index)
    return Bundle(
        path=path,
        root=root,
        version=version,
        manifest=manifest,
        similarity=similarity,
        scorer=_load_scorer(path, manifest),
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
        index = read_index(path / INDEX)
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
        vectors = load_file(path / ITEM_VECTORS)["vectors"].numpy()
        items, users = pl.read_parquet(path / ITEMS), pl.read_parquet(path / USERS)
    except (OSError, KeyError, pl.exceptions.PolarsError) as err:
        raise BundleError(f"{path}: cannot read the item vectors or tables ({err})") from None
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    missing += [f"users.{c}" for c in USER_COLUMNS if c not in users.columns]
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


def current_version(path: str | Path) -> str | None:
    """The version CURRENT names now (cheap: one small file read); None for a plain directory."""
    pointer = Path(path) / CURRENT
    try:
        return pointer.read_text().strip()
    except FileNotFoundError:
        return None
