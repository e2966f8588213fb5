"""Fetching a dataset archive: stream it with a progress bar, check its MD5, then rename it into
place, so a half-written or corrupt file never sits where a finished one is expected; extract it
the same way (into a temporary folder, renamed when complete)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 20  # bytes read per iteration


class ChecksumError(ValueError):
    """A downloaded file's MD5 is not the published one."""


def md5_of(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (atomically) and check it against `md5`; returns `dest`.

    The bytes go to a temporary file beside `dest`, which is renamed to `dest` only when the MD5
    matches; on any failure the temporary file is removed and `dest` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise ChecksumError(
                f"{url}: MD5 {got} does not match the published {md5}; the download was discarded"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def extract_zip(archive: str | Path, into: str | Path) -> Path:
    """Unpack `archive` into `into` (atomically: a temporary folder renamed when complete)."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.", dir=into))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)  # zipfile drops absolute paths and ".." components
        for entry in tmp.iterdir():
            target = into / entry.name
            if not target.exists():
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return into
