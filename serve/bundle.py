"""The exported bundle: versioned directories that hold everything serving needs, and no pickle.

    bundle/                      the path handed to export_bundle / Recommender.load
      CURRENT                    the name of the version being served ("v000002\\n")
      v000001/  v000002/ ...     one complete version each:
        manifest.json            format version, similarity, dimension, counts, model config,
                                 index settings and operating-point sweep, versions, checksums
        user_tower.safetensors   user tower weights (user vectors are computed per request)
        item_tower.safetensors   item tower weights (to encode new or changed items)
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
from serve.errors import BundleError
from serve.index import (
    METRIC_NAMES,
    METRICS,
    IndexConfig,
    build_index,
    fixed_settings,
    is_id_mapped,
    read_index,
    search_knob,
    write_index,
)
from serve.sweep import exact_neighbours, plot, sweep
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: versioned directories, ID-mapped index, `active` items, sweep in manifest
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
ACTIVE = "active"
VERSION_NAME = re.compile(r"^v(\d{6})$")
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


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage: give each its own contiguous copy.
    return {name: t.detach().cpu().contiguous().clone() for name, t in module.state_dict().items()}


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
    item_tower: ItemTower,
    items_df: pl.DataFrame,
    rows: np.ndarray | None = None,
    chunk: int = 65536,
) -> np.ndarray:
    """Item vectors (I, D) float32 for the rows of an items table; `rows` are their item indices
    (default 0..I-1).

    Rows past the tower's id vocabulary (items added after training) get no id embedding: their
    vector comes from their features alone (genres, year); they are read as the padding index,
    which a popularity prior counts as never seen."""
    item_tower.eval()
    genres = torch.from_numpy(padded(items_df["genre_ids"], item_tower.genre_pad))
    year = torch.from_numpy(items_df["year_bucket"].to_numpy().astype(np.int64))
    ids = torch.arange(items_df.height) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    known = item_tower.spec.num_items
    parts = []
    for s in range(0, items_df.height, chunk):
        part = ids[s : s + chunk]
        if int(part.max()) < known:
            parts.append(item_tower(part, genres[s : s + chunk], year[s : s + chunk]).float())
            continue
        mask = (part < known).to(torch.float32)[:, None]  # (B, 1): 0 drops the id embedding
        hook = item_tower.item_embedding.register_forward_hook(
            lambda _m, _i, out, mask=mask: out * mask
        )
        try:
            parts.append(
                item_tower(
                    part.clamp(max=known), genres[s : s + chunk], year[s : s + chunk]
                ).float()
            )
        finally:
            hook.remove()
    if not parts:
        return np.zeros((0, item_tower.cfg.output_dim), dtype=np.float32)
    return torch.cat(parts).cpu().numpy()


def sample_user_vectors(
    user_tower: UserTower, users_df: pl.DataFrame, count: int, seed: int = 0
) -> np.ndarray:
    """User vectors (count', D) of a fixed random sample of users: the sweep's queries."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(users_df.height, size=min(count, users_df.height), replace=False))
    spec = user_tower.spec
    histories = padded(users_df["history"][rows], spec.num_items, spec.history_length)
    with torch.inference_mode():
        return user_tower(torch.from_numpy(rows), torch.from_numpy(histories)).float().numpy()


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
        "metric": METRIC_NAMES[index.metric_type],
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
    user_tower: UserTower,
    item_tower: ItemTower,
    vectors: np.ndarray,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index: faiss.Index,
    index_manifest: dict,
    extra: Mapping | None = None,
) -> None:
    """Every file of one version, and its manifest last (with the other files' checksums)."""
    similarity = Similarity.parse(user_tower.cfg.similarity)
    save_file(_state(user_tower), directory / USER_TOWER)
    save_file(_state(item_tower), directory / ITEM_TOWER)
    save_file(
        {"vectors": torch.from_numpy(np.ascontiguousarray(vectors))}, directory / ITEM_VECTORS
    )
    items_df.write_parquet(directory / ITEMS)
    users_df.write_parquet(directory / USERS)
    write_index(index, directory / INDEX)
    files = [*FILES, *([PLOT] if (directory / PLOT).is_file() else [])]
    manifest = {
        "format_version": FORMAT_VERSION,
        "similarity": similarity.value,
        "embedding_dim": int(vectors.shape[1]),
        "num_items": int(items_df.height),
        "num_active_items": int(index.ntotal),
        "num_users": int(users_df.height),
        "model": {"spec": user_tower.spec.to_dict(), "towers": user_tower.cfg.to_dict()},
        "index": index_manifest,
        **dict(extra or {}),
        "versions": _versions(),
        "files": {name: _sha256(directory / name) for name in files},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export_bundle(
    path: str | Path,
    user_tower: UserTower,
    item_tower: ItemTower,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index_factory: str | None = None,
    index_config: IndexConfig | Mapping | None = None,
) -> Path:
    """Encode the catalogue, build (and sweep) the index, write a new bundle version at `path`.

    `index_config` (conf/index/*.yaml) wins over the bare `index_factory` string. Returns `path`."""
    path = Path(path)
    config = IndexConfig.parse(index_config if index_config is not None else index_factory)
    similarity = Similarity.parse(user_tower.cfg.similarity)
    if Similarity.parse(item_tower.cfg.similarity) is not similarity:
        raise BundleError(
            f"the towers disagree on similarity: user {user_tower.cfg.similarity!r}, item {item_tower.cfg.similarity!r}"
        )
    spec = user_tower.spec
    if items_df.height != spec.num_items or users_df.height != spec.num_users:
        raise BundleError(
            f"tables do not match the towers: {items_df.height} items / {users_df.height} users, "
            f"towers built for {spec.num_items} / {spec.num_users}"
        )
    vectors = encode_items(item_tower, items_df)
    if ACTIVE not in items_df.columns:
        items_df = items_df.with_columns(pl.lit(True).alias(ACTIVE))
    ids = np.flatnonzero(items_df[ACTIVE].to_numpy())
    queries = sample_user_vectors(user_tower, users_df, config.sweep_queries)

    def fill(directory: Path) -> None:
        index, section = index_section(vectors, ids, similarity, config, queries, directory / PLOT)
        write_files(
            directory,
            user_tower=user_tower,
            item_tower=item_tower,
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
    user_tower: UserTower
    item_tower: ItemTower
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


def _load_tower(cls, path: Path, spec: FeatureSpec, cfg: TowerConfig):
    tower = cls(spec, cfg)
    try:
        tower.load_state_dict(load_file(path))
    except (RuntimeError, OSError, ValueError) as err:
        raise BundleError(
            f"{path}: weights do not fit the manifest's model config ({err})"
        ) from None
    return tower.eval()


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
    try:
        similarity = Similarity.parse(manifest["similarity"])
        spec = FeatureSpec(**manifest["model"]["spec"])
        cfg = TowerConfig(**manifest["model"]["towers"])
        num_items, num_active, num_users = (
            int(manifest["num_items"]),
            int(manifest["num_active_items"]),
            int(manifest["num_users"]),
        )
        IndexConfig.parse(manifest["index"].get("config"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{path / MANIFEST}: bad model or index config ({err})") from None
    if Similarity.parse(cfg.similarity) is not similarity:
        raise BundleError(
            f"{path / MANIFEST}: similarity {similarity.value!r} but the towers were trained with {cfg.similarity!r}"
        )
    try:
        index = read_index(path / INDEX)
    except RuntimeError as err:
        raise BundleError(
            f"{path / INDEX}: FAISS cannot read it ({str(err).splitlines()[0]})"
        ) from None
    if index.metric_type != METRICS[similarity]:
        raise BundleError(
            f"{path / INDEX}: metric {METRIC_NAMES.get(index.metric_type, index.metric_type)} does not serve "
            f"similarity {similarity.value!r} (needs inner_product)"
        )
    if not is_id_mapped(index):
        raise BundleError(
            f"{path / INDEX}: an index that does not map item ids (IndexIDMap2 or IVF)"
        )
    try:
        vectors = load_file(path / ITEM_VECTORS)["vectors"].numpy()
        items, users = pl.read_parquet(path / ITEMS), pl.read_parquet(path / USERS)
    except (OSError, KeyError, pl.exceptions.PolarsError) as err:
        raise BundleError(f"{path}: cannot read the item vectors or tables ({err})") from None
    missing = [c for c in ("item_id", "genre_ids", "year_bucket", ACTIVE) if c not in items.columns]
    missing += [f"users.{c}" for c in ("user_id", "history", "seen") if c not in users.columns]
    if missing:
        raise BundleError(f"{path}: the tables lack columns {missing}")
    active = int(items[ACTIVE].sum())
    if not (len(vectors) == items.height == num_items) or not (
        index.ntotal == active == num_active
    ):
        raise BundleError(
            f"{path}: item counts disagree (manifest {num_items} items / {num_active} active, items.parquet "
            f"{items.height} / {active} active, item_vectors {len(vectors)}, index {index.ntotal})"
        )
    if users.height != num_users:
        raise BundleError(
            f"{path}: users.parquet has {users.height} rows, manifest says {num_users}"
        )
    return Bundle(
        path=path,
        root=root,
        version=version,
        manifest=manifest,
        similarity=similarity,
        user_tower=_load_tower(UserTower, path / USER_TOWER, spec, cfg),
        item_tower=_load_tower(ItemTower, path / ITEM_TOWER, spec, cfg),
        item_vectors=vectors,
        items=items,
        users=users,
        index=index,
    )


def current_version(path: str | Path) -> str | None:
    """The version CURRENT names now (cheap: one small file read); None for a plain directory."""
    pointer = Path(path) / CURRENT
    try:
        return pointer.read_text().strip()
    except FileNotFoundError:
        return None
