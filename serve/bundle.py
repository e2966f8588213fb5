"""The exported bundle: one directory that holds everything serving needs, and no pickle.

    manifest.json            format version, similarity, dimension, counts, model config,
                             index settings, library versions, file checksums
    user_tower.safetensors   user tower weights (user vectors are computed per request)
    item_tower.safetensors   item tower weights (to encode new or changed items)
    item_vectors.safetensors every catalogue item's vector, row = item index
    items.parquet            item_id, title, genres, year, genre_ids, year_bucket (row = index)
    users.parquet            user_id, history, seen (row = index)
    index.faiss              FAISS index over item_vectors (FAISS's own format)

`export_bundle` writes it into a temporary sibling directory and renames it into place, so a
reader never sees half a bundle. `read_bundle` checks the format version and that every file is
there, and names the problem when something is off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from serve.errors import BundleError
from serve.index import METRIC_NAMES, METRICS, build_index, read_index, write_index
from towers.similarity import Similarity
from towers.towers import FeatureSpec, ItemTower, TowerConfig, UserTower

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
USER_TOWER = "user_tower.safetensors"
ITEM_TOWER = "item_tower.safetensors"
ITEM_VECTORS = "item_vectors.safetensors"
ITEMS = "items.parquet"
USERS = "users.parquet"
INDEX = "index.faiss"
FILES = (USER_TOWER, ITEM_TOWER, ITEM_VECTORS, ITEMS, USERS, INDEX)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("twotower", "torch", "faiss-gpu", "faiss-cpu", "polars", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
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
    """A list[int] column as a (rows, width) int64 array padded with `pad`."""
    lengths = lists.list.len().to_numpy().astype(np.int64)
    width = width if width is not None else max(int(lengths.max(initial=0)), 1)
    out = np.full((len(lists), width), pad, dtype=np.int64)
    flat = lists.explode().drop_nulls().to_numpy()
    rows = np.repeat(np.arange(len(lists)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = cols < width
    out[rows[keep], cols[keep]] = flat[keep]
    return out


@torch.no_grad()
def encode_items(item_tower: ItemTower, items_df: pl.DataFrame, chunk: int = 65536) -> np.ndarray:
    """Item vectors (I, D) float32 for every row of an items table, row = item index."""
    item_tower.eval()
    genres = torch.from_numpy(padded(items_df["genre_ids"], item_tower.genre_pad))
    year = torch.from_numpy(items_df["year_bucket"].to_numpy().astype(np.int64))
    ids = torch.arange(items_df.height)
    parts = [
        item_tower(ids[s : s + chunk], genres[s : s + chunk], year[s : s + chunk]).float()
        for s in range(0, items_df.height, chunk)
    ]
    return torch.cat(parts).cpu().numpy()


def export_bundle(
    path: str | Path,
    user_tower: UserTower,
    item_tower: ItemTower,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    index_factory: str = "Flat",
) -> Path:
    """Encode the catalogue, build the index and write the bundle atomically at `path`."""
    path = Path(path)
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
    index = build_index(vectors, similarity, index_factory)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        save_file(_state(user_tower), tmp / USER_TOWER)
        save_file(_state(item_tower), tmp / ITEM_TOWER)
        save_file({"vectors": torch.from_numpy(vectors)}, tmp / ITEM_VECTORS)
        items_df.write_parquet(tmp / ITEMS)
        users_df.write_parquet(tmp / USERS)
        write_index(index, tmp / INDEX)
        manifest = {
            "format_version": FORMAT_VERSION,
            "similarity": similarity.value,
            "embedding_dim": int(vectors.shape[1]),
            "num_items": int(items_df.height),
            "num_users": int(users_df.height),
            "model": {"spec": spec.to_dict(), "towers": user_tower.cfg.to_dict()},
            "index": {"factory": index_factory, "metric": METRIC_NAMES[index.metric_type]},
            "versions": _versions(),
            "files": {name: _sha256(tmp / name) for name in FILES},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for file in tmp.iterdir():  # mkdtemp and safetensors create owner-only files
            file.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; an existing bundle there is replaced only once the new one is whole."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@dataclass
class Bundle:
    """A bundle read back into memory."""

    path: Path
    manifest: dict
    similarity: Similarity
    user_tower: UserTower
    item_tower: ItemTower
    item_vectors: np.ndarray  # (I, D) float32
    items: pl.DataFrame
    users: pl.DataFrame
    index: faiss.Index


def read_manifest(path: str | Path) -> dict:
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
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {version!r}; this twotower reads version {FORMAT_VERSION}"
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
        raise BundleError(f"{path}: weights do not fit the manifest's model config ({err})") from None
    return tower.eval()


def read_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    manifest = read_manifest(path)
    try:
        similarity = Similarity.parse(manifest["similarity"])
        spec = FeatureSpec(**manifest["model"]["spec"])
        cfg = TowerConfig(**manifest["model"]["towers"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path / MANIFEST}: bad model config ({err})") from None
    if Similarity.parse(cfg.similarity) is not similarity:
        raise BundleError(
            f"{path / MANIFEST}: similarity {similarity.value!r} but the towers were trained with {cfg.similarity!r}"
        )
    index = read_index(path / INDEX)
    if index.metric_type != METRICS[similarity]:
        raise BundleError(
            f"{path / INDEX}: metric {METRIC_NAMES.get(index.metric_type, index.metric_type)} does not serve "
            f"similarity {similarity.value!r} (needs inner_product)"
        )
    vectors = load_file(path / ITEM_VECTORS)["vectors"].numpy()
    items, users = pl.read_parquet(path / ITEMS), pl.read_parquet(path / USERS)
    if not (len(vectors) == items.height == index.ntotal == manifest["num_items"]):
        raise BundleError(
            f"{path}: item counts disagree (manifest {manifest['num_items']}, items.parquet {items.height}, "
            f"item_vectors {len(vectors)}, index {index.ntotal})"
        )
    if users.height != manifest["num_users"]:
        raise BundleError(f"{path}: users.parquet has {users.height} rows, manifest says {manifest['num_users']}")
    return Bundle(
        path=path,
        manifest=manifest,
        similarity=similarity,
        user_tower=_load_tower(UserTower, path / USER_TOWER, spec, cfg),
        item_tower=_load_tower(ItemTower, path / ITEM_TOWER, spec, cfg),
        item_vectors=vectors,
        items=items,
        users=users,
        index=index,
    )
