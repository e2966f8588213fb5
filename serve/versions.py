"""Versioned bundle directories: a new version is written whole beside the others, then served by
switching one small pointer file. Reading and checking a version's files is serve/bundle.py's.

    bundle/                      the path handed to export_bundle / Recommender.load
      CURRENT                    the name of the version being served ("v000002\\n")
      v000001/  v000002/ ...     one complete version each (serve/bundle.py: its files)

Every write makes a whole new version in a temporary directory (`.version.*`), renames it into
place, then replaces CURRENT with `os.replace`: a reader sees the old version or the new one,
never half of either. A writer killed at any point (even by SIGKILL) leaves a bundle that
serves the old version (killed before the switch) or the new one (after it), whole; the next
write removes what it left behind. Only the last KEEP_VERSIONS versions are kept. A version directory on its own is also a bundle (a "plain" one: what `read_bundle` reads
when there is no CURRENT); writing to one makes it versioned in place.

Writers lock with `flock` (advisory, released by the kernel when a process dies): each holds a
lock on its own temporary (then version) directory until it has switched, and takes a short lock
on the root to create that directory, to switch CURRENT and to delete. So several writers may
share a root, and nothing a live writer still needs, nor the version CURRENT names, is deleted.
Readers take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from serve.bundle import Bundle, read_manifest, read_version
from serve.errors import BundleError
from serve.files import FILES, MANIFEST, PLOT, check_files, check_verify

CURRENT = "CURRENT"
VERSION_NAME = re.compile(r"^v(\d{6})$")
KEEP_VERSIONS = 3  # older versions are deleted after a switch (readers load whole files at once)
TEMP_PREFIX = ".version."  # a version being written (or left by a writer that died)
POINTER_TEMP = re.compile(rf"^\.{CURRENT}\.\d+\.tmp$")  # CURRENT being replaced
PLAIN_FILES = (MANIFEST, *FILES, PLOT)  # a plain bundle's files, removed once it is versioned


def _version_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and VERSION_NAME.match(p.name))


def resolve(path: str | Path, version: str | None = None) -> tuple[Path, str | None]:
    """(directory of the version to read, its name): `version` when given, else CURRENT's
    version, or `path` itself when it is a plain bundle."""
    path = Path(path)
    pointer = path / CURRENT
    if version is None and not pointer.is_file():
        return path, None
    name = version if version is not None else pointer.read_text().strip()
    where = pointer if version is None else path
    if not VERSION_NAME.match(name):
        raise BundleError(
            f"{where}: names {name!r}, not a version directory (v000001, ...)", path=where
        )
    if not (path / name).is_dir():
        raise BundleError(
            f"{where}: names version {name!r} but {path / name} does not exist", path=path / name
        )
    return path / name, name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_version(
    root: str | Path, fill: Callable[[Path], None], keep: int = KEEP_VERSIONS
) -> Path:
    """A new version of the bundle at `root`: `fill(directory)` writes its files into a temporary
    directory `.version.*`, which is renamed to the next version name; then CURRENT switches to
    it, and all but the last `keep` versions are deleted (never the one CURRENT names, nor one
    another writer has yet to switch to).

    `root` may not exist yet (the first version), or may be a plain (unversioned) bundle: the
    version is written inside it, and once CURRENT names that version its plain files go.
    A write that fails or is killed leaves the served version as it was. Before writing, the
    `.version.*` directories (and CURRENT's temporary files) of writers that died are deleted:
    a temporary directory is stale when no live writer holds its lock; a live writer's is kept."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BundleError(f"{root}: exists and is not a directory", path=root)
    plain = root.is_dir() and (root / MANIFEST).is_file() and not (root / CURRENT).exists()
    if VERSION_NAME.match(root.name) and (root.parent / CURRENT).is_file():
        raise BundleError(
            f"{root}: a version directory of {root.parent}; write to the bundle root", path=root
        )
    if root.is_dir() and not plain and not (root / CURRENT).exists() and _has_foreign(root):
        raise BundleError(
            f"{root}: not empty and not a bundle; refusing to write a bundle into it", path=root
        )
    root.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    with _locked(root):
        _remove_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        hold = _lock(tmp)  # held until the switch: no other writer deletes it meanwhile
    try:
        try:
            fill(tmp)
            for file in tmp.iterdir():  # mkdtemp and safetensors create owner-only files
                file.chmod(0o666 & ~umask)
            tmp.chmod(0o777 & ~umask)
            version = _rename_to_next_version(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with _locked(root):
            _write_atomic(root / CURRENT, version.name + "\n")
            _remove_plain_files(root)
            _prune(root, keep)
    finally:
        os.close(hold)
    return version


def _has_foreign(root: Path) -> bool:
    """Whether `root` holds anything but what a killed first write may have left there."""
    return any(not _is_temporary(p.name) for p in root.iterdir())


def _is_temporary(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or bool(POINTER_TEMP.match(name))


def _lock(directory: Path, blocking: bool = True) -> int | None:
    """An open descriptor holding an exclusive `flock` on `directory` (close it to release), or
    None when `blocking` is off and another descriptor holds one."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The root's lock: held (briefly) to create a temporary directory, to switch CURRENT and to
    delete anything, so that none of these interleave between writers."""
    fd = _lock(directory)
    try:
        yield
    finally:
        os.close(fd)


def _remove_stale(root: Path) -> None:
    """Delete what dead writers left in `root` (the caller holds the root's lock): temporary
    version directories no live writer holds, CURRENT's temporary files (a live writer only has
    one while it holds the root's lock), and the plain files of an interrupted conversion."""
    for entry in root.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
            _delete_unless_held(entry)
        elif POINTER_TEMP.match(entry.name):
            entry.unlink(missing_ok=True)
    _remove_plain_files(root)


def _delete_unless_held(directory: Path) -> bool:
    """Delete `directory` unless a live writer holds its lock; whether it was deleted."""
    try:
        fd = _lock(directory, blocking=False)
    except FileNotFoundError:
        return False
    if fd is None:
        return False
    try:
        shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(fd)
    return True


def _remove_plain_files(root: Path) -> None:
    """A plain bundle's files left in a root that CURRENT now serves from a version."""
    if (root / CURRENT).is_file():
        for name in PLAIN_FILES:
            (root / name).unlink(missing_ok=True)


def _rename_to_next_version(directory: Path, root: Path) -> Path:
    """Rename `directory` to the next free version name under `root`; return its new path.
    Another writer may take a name first: then the one after it is taken."""
    while True:
        names = _version_names(root)
        number = int(VERSION_NAME.match(names[-1]).group(1)) + 1 if names else 1
        version = root / f"v{number:06d}"
        try:
            os.rename(directory, version)
            return version
        except OSError:
            if not version.exists():
                raise


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` versions (the caller holds the root's lock, so CURRENT
    cannot change meanwhile). The version CURRENT names is never deleted, and counts among the
    kept; nor is one that a live writer has yet to switch to."""
    current = (root / CURRENT).read_text().strip()
    names = [n for n in _version_names(root) if n != current]
    for name in names[: max(len(names) - (keep - 1), 0)]:
        _delete_unless_held(root / name)


def read_bundle(path: str | Path, attempts: int = 5, *, verify: str = "full") -> Bundle:
    """The version CURRENT names under `path` (or `path` itself when it is a plain bundle).

    `verify`: how each file is checked against the manifest before it is loaded: "full" (size
    and sha256), "size", or "off" (serve.files.VERIFY). A version pruned while it was being read
    (several switches happened meanwhile) is not an error: the read starts over on the version
    CURRENT names now."""
    check_verify(verify)
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory there", path=root)
    for attempt in range(attempts):
        version = current_version(root)
        try:
            directory, name = resolve(root)
            return read_version(directory, root=root, version=name, verify=verify)
        except (BundleError, OSError):
            if version is None or attempt == attempts - 1 or current_version(root) == version:
                raise
    raise AssertionError("unreachable")


def current_version(path: str | Path) -> str | None:
    """The version CURRENT names now (cheap: one small file read); None for a plain directory."""
    pointer = Path(path) / CURRENT
    try:
        return pointer.read_text().strip()
    except FileNotFoundError:
        return None


def verify_version(path: str | Path, version: str | None = None) -> dict:
    """Every file of a bundle version checked against its manifest (size and sha256), without
    loading anything: the version CURRENT names under `path`, or `version`, or `path` itself
    when it is a plain bundle. Returns a summary, JSON-ready:

        {"bundle": path, "version": "v000002", "path": its directory, "ok": true,
         "files": {"index.faiss": {"sha256": ..., "bytes": ...}, ...},   the sound ones
         "bad": {"items.parquet": "<the BundleError's message>", ...}}

    A bundle that cannot be checked at all (no manifest, another format version, no such
    version) is a `BundleError`."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory there", path=root)
    directory, name = resolve(root, version)
    manifest = read_manifest(directory, require_files=False)
    checked = check_files(directory, manifest, "full")
    entries = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    return {
        "bundle": str(root),
        "version": name,
        "path": str(directory),
        "ok": not any(checked.values()),
        "files": {n: entries[n] for n, problem in checked.items() if problem is None},
        "bad": {n: str(problem) for n, problem in checked.items() if problem is not None},
    }
