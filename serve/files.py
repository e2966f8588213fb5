"""The files of one bundle version: their names, and how each is checked against the manifest
(its size and sha256). serve.bundle writes and reads them; serve.versions checks whole versions.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.errors import BundleError, RequestError

FORMAT_VERSION = 4  # 4: declared features (features.json) and the towers built from them
MANIFEST = "manifest.json"
USER_TOWER = "user_tower.safetensors"
ITEM_TOWER = "item_tower.safetensors"
ITEM_VECTORS = "item_vectors.safetensors"
ITEMS = "items.parquet"
USERS = "users.parquet"
INDEX = "index.faiss"
FEATURES = "features.json"  # both sides' fitted features (features.fitted.FittedFeatures)
PLOT = "operating_points.png"
FILES = (USER_TOWER, ITEM_TOWER, ITEM_VECTORS, ITEMS, USERS, INDEX, FEATURES)
PRIOR_KEY = "prior.item_prior"  # in ITEM_TOWER: the popularity prior's centred log p per item
VECTORS_KEY = "vectors"  # in ITEM_VECTORS: the (I, D) float32 item vectors
# How a read checks each file against the manifest: "full" its size and sha256, "size" its size
# alone (catches truncation and most replacements, not a same-size change; for huge indexes),
# "off" nothing.
VERIFY = ("full", "size", "off")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def in_threads(fn, args: list) -> list:
    """[fn(a) for a in args], on up to one thread per core (hashing releases the GIL)."""
    workers = min(len(args), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, args))


def file_entry(path: Path) -> dict:
    """A file's entry in the manifest's "files": its sha256 and its size in bytes."""
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def check_verify(verify: object) -> str:
    """`verify` if it is one of VERIFY, else a `RequestError` for field "verify"."""
    if verify not in VERIFY:
        raise RequestError("verify", verify, f"must be one of {list(VERIFY)}")
    return verify


def check_files(path: Path, manifest: dict, verify: str = "full") -> dict[str, BundleError | None]:
    """Each file of the version directory `path` that its manifest lists (and each file of a
    version it should list), checked as `verify` says: {file name: its `BundleError`, or None
    when it is sound}, in the manifest's order. Files hash in parallel threads."""
    if check_verify(verify) == "off":
        return {}
    entries = manifest.get("files")
    if not isinstance(entries, dict):
        return {
            MANIFEST: BundleError(
                f'{path / MANIFEST}: no "files" section of sizes and checksums',
                path=path / MANIFEST,
            )
        }
    unlisted = {
        name: BundleError(
            f"{path / MANIFEST}: lists no size and checksum for {name}", path=path / name
        )
        for name in FILES
        if name not in entries
    }
    checked = in_threads(lambda item: _check_file(path, *item, verify), list(entries.items()))
    return dict(zip(entries, checked, strict=True)) | unlisted


def _check_file(path: Path, name: str, entry: object, verify: str) -> BundleError | None:
    """The problem with file `name` of version `path` against its manifest entry, or None."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return BundleError(f"{path / MANIFEST}: lists {name!r}, not a file name", path=path)
    file = path / name
    expected = entry if isinstance(entry, dict) else {}
    digest, size = expected.get("sha256"), expected.get("bytes")
    if not (isinstance(digest, str) and len(digest) == 64 and type(size) is int and size >= 0):
        return BundleError(
            f"{path / MANIFEST}: files entry of {name} is {entry!r}, not "
            '{"sha256": <64 hex digits>, "bytes": <size>} (re-export the bundle)',
            path=file,
        )
    try:
        found_size = file.stat().st_size
        if found_size != size:
            return BundleError(
                f"{file}: size mismatch: the manifest says {size} bytes, the file has "
                f"{found_size} (truncated or replaced)",
                path=file,
                expected=size,
                found=found_size,
            )
        found = _sha256(file) if verify == "full" else digest
    except FileNotFoundError:
        return BundleError(f"{file}: missing (the manifest lists it)", path=file)
    except OSError as err:
        return BundleError(f"{file}: cannot be read ({err})", path=file)
    if found != digest:
        return BundleError(
            f"{file}: sha256 mismatch: the manifest says {digest}, the file has {found} "
            "(changed or corrupted after export)",
            path=file,
            expected=digest,
            found=found,
        )
    return None


def verify_files(path: Path, manifest: dict, verify: str = "full") -> None:
    """Raise the `BundleError` of the first bad file of version `path` (see `check_files`)."""
    for problem in check_files(path, manifest, verify).values():
        if problem is not None:
            raise problem
