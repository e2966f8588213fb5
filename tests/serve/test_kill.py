"""Writes that are killed (SIGKILL) half way leave a bundle that still loads, and the next write
succeeds and clears what they left (serve/versions.py's `write_version`).

A small script imports the package once, then forks one child per scenario; each child exports
or updates a bundle with a hook that kills it at a chosen point: with index.faiss half written
(in the middle of filling the temporary version directory), or just before or just after
CURRENT is switched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve import BundleError, read_bundle, update_items
from serve.files import INDEX, MANIFEST
from serve.versions import CURRENT, TEMP_PREFIX, VERSION_NAME, _lock, _prune, write_version
from tests.serve.conftest import reexport

CHILD = r"""
import json, os, signal, sys, traceback

import faiss

from serve import versions
from serve.export import export_bundle
from serve.update import update_items
from serve.versions import read_bundle

source, scenarios = sys.argv[1], json.loads(sys.argv[2])


def die(*_args):
    os.kill(os.getpid(), signal.SIGKILL)


def write_and_die(operation, point, path):
    if point == "index":  # killed with index.faiss half written, before the manifest
        write_index = faiss.write_index

        def write_half(index, name):
            write_index(index, name)
            os.truncate(name, os.path.getsize(name) // 2)
            die()

        faiss.write_index = write_half
    else:  # killed just before or just after CURRENT is switched to the new version
        write_atomic = versions._write_atomic

        def switch(pointer, text):
            if point == "after_switch":
                write_atomic(pointer, text)
            die()

        versions._write_atomic = switch
    if operation == "update":
        update_items(path, remove=[read_bundle(path).items["item_id"][0]])
    else:
        bundle = read_bundle(source)
        export_bundle(
            path, bundle.scorer, bundle.features, bundle.items, bundle.users,
            index_config={"factory": "Flat"},
        )


statuses = {}
for name, (operation, point, path) in scenarios.items():
    pid = os.fork()
    if pid == 0:  # the child: killed by its hook, else it failed
        try:
            write_and_die(operation, point, path)
        except BaseException:
            traceback.print_exc()
        os._exit(1)
    statuses[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(statuses))
"""

# scenario → (operation, where it is killed, what the path held before)
SCENARIOS = {
    "export_mid_index": ("export", "index", "versioned"),
    "export_before_switch": ("export", "before_switch", "versioned"),
    "update_mid_index": ("update", "index", "versioned"),
    "update_after_switch": ("update", "after_switch", "versioned"),
    "plain_mid_index": ("export", "index", "plain"),
    "plain_after_switch": ("export", "after_switch", "plain"),
    "first_mid_index": ("export", "index", "nothing"),
}


@pytest.fixture(scope="module")
def killed(bundle_dir, tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """{scenario: (its bundle path, the child's exit code)}, each on its own copy."""
    base = tmp_path_factory.mktemp("killed")
    paths = {}
    for name, (_, _, before) in SCENARIOS.items():
        path = base / name / "bundle"
        if before == "versioned":
            shutil.copytree(bundle_dir, path)
        elif before == "plain":
            shutil.copytree(bundle_dir / "v000001", path)
        paths[name] = path
    scenarios = {name: [op, point, str(paths[name])] for name, (op, point, _) in SCENARIOS.items()}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle_dir), json.dumps(scenarios)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout.splitlines()[-1])
    return {name: (paths[name], statuses[name]) for name in SCENARIOS}


def _leftovers(root: Path) -> list[str]:
    """What a write left in `root` besides CURRENT and the version directories."""
    return sorted(
        p.name for p in root.iterdir() if p.name != CURRENT and not VERSION_NAME.match(p.name)
    )


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_killed_write_leaves_a_loadable_bundle_and_the_next_write_succeeds(
    killed, scenario, bundle_dir
):
    operation, point, before = SCENARIOS[scenario]
    path, exit_code = killed[scenario]
    assert exit_code == -9, f"the child was not killed by its hook (exit {exit_code})"
    temporary = [p for p in path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    if point == "index":  # killed mid-write: a half-written version, no manifest, not served
        assert len(temporary) == 1 and (temporary[0] / INDEX).is_file()
        assert not (temporary[0] / MANIFEST).exists()
    else:
        assert temporary == []

    # The bundle loads (every file checked against its checksum): the previous version, or the
    # new one whole when the kill came after the switch.
    served = {
        "versioned": "v000002" if point == "after_switch" else "v000001",
        "plain": "v000001" if point == "after_switch" else None,
        "nothing": "none",
    }[before]
    if before == "nothing":
        with pytest.raises(BundleError, match=r"missing manifest\.json"):
            read_bundle(path)
    else:
        assert read_bundle(path).version == served
    if point == "before_switch":  # renamed into place, never switched to: ignored
        assert (path / "v000002" / MANIFEST).is_file()
    if before == "plain" and point == "after_switch":  # its plain files not yet removed
        assert (path / MANIFEST).is_file()

    # The next write succeeds, and clears what the killed one left.
    if operation == "update":
        update_items(path, remove=[read_bundle(path).items["item_id"][1]])
    else:
        reexport(bundle_dir, path, {"factory": "Flat"})
    versions = sorted(p.name for p in path.iterdir() if p.is_dir())
    bundle = read_bundle(path)
    assert bundle.version == versions[-1] == (path / CURRENT).read_text().strip()
    assert _leftovers(path) == []


def test_a_live_writers_temporary_directory_is_kept_a_dead_ones_removed(bundle_copy):
    source = bundle_copy / "v000001"

    def copy(directory: Path) -> None:
        for file in source.iterdir():
            (directory / file.name).write_bytes(file.read_bytes())

    live, dead = bundle_copy / f"{TEMP_PREFIX}live", bundle_copy / f"{TEMP_PREFIX}dead"
    live.mkdir()
    dead.mkdir()
    (dead / INDEX).write_bytes(b"half")
    (bundle_copy / f".{CURRENT}.12345.tmp").write_text("v000009\n")
    hold = _lock(live)  # another writer, still writing
    try:
        write_version(bundle_copy, copy)
        assert live.is_dir() and not dead.exists()
        assert not (bundle_copy / f".{CURRENT}.12345.tmp").exists()
    finally:
        os.close(hold)  # that writer dies
    write_version(bundle_copy, copy)
    assert not live.exists()
    assert read_bundle(bundle_copy).version == "v000003"


def test_prune_keeps_the_current_version_and_versions_not_yet_switched_to(bundle_copy):
    source = bundle_copy / "v000001"

    def copy(directory: Path) -> None:
        for file in source.iterdir():
            (directory / file.name).write_bytes(file.read_bytes())

    for _ in range(3):
        write_version(bundle_copy, copy, keep=10)  # v000002 .. v000004
    (bundle_copy / CURRENT).write_text("v000001\n")  # rolled back to the oldest
    _prune(bundle_copy, keep=1)
    assert sorted(p.name for p in bundle_copy.iterdir() if p.is_dir()) == ["v000001"]
    assert read_bundle(bundle_copy).version == "v000001"

    for _ in range(2):
        write_version(bundle_copy, copy, keep=10)  # v000002, v000003 (current)
    hold = _lock(bundle_copy / "v000002")  # a writer that has renamed v000002, not switched
    try:
        _prune(bundle_copy, keep=1)
        assert sorted(p.name for p in bundle_copy.iterdir() if p.is_dir()) == [
            "v000002",
            "v000003",
        ]
    finally:
        os.close(hold)
    _prune(bundle_copy, keep=1)
    assert sorted(p.name for p in bundle_copy.iterdir() if p.is_dir()) == ["v000003"]
