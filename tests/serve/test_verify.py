"""Bundle files checked against the manifest's sizes and sha256s (serve/bundle.py), at load
(`verify=` "full", "size", "off") and by `python -m serve verify`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
from pathlib import Path

import pytest

from serve import BundleError, Recommender, read_bundle
from serve.__main__ import main
from serve.errors import RequestError
from serve.files import FILES, INDEX, ITEM_VECTORS, MANIFEST
from serve.versions import CURRENT, resolve, write_version


def version_dir(root: Path) -> Path:
    return resolve(root)[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, drop: int = 16) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-drop])


def test_manifest_records_size_and_sha256_of_every_file(bundle_dir):
    directory = version_dir(bundle_dir)
    files = json.loads((directory / MANIFEST).read_text())["files"]
    assert set(FILES) <= set(files)
    for name, entry in files.items():
        assert entry == {
            "sha256": sha256(directory / name),
            "bytes": (directory / name).stat().st_size,
        }


def test_a_flipped_byte_in_the_index_is_named_with_both_checksums(bundle_copy):
    index = version_dir(bundle_copy) / INDEX
    expected = sha256(index)
    flip_middle_byte(index)
    found = sha256(index)
    with pytest.raises(BundleError) as raised:
        Recommender.load(bundle_copy)
    err = raised.value
    assert (err.path, err.expected, err.found) == (index, expected, found)
    assert "index.faiss" in str(err) and expected in str(err) and found in str(err)
    # The attributes survive a trip across processes, with the message.
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy), copy.path, copy.expected, copy.found) == (
        BundleError,
        str(err),
        err.path,
        err.expected,
        err.found,
    )


def test_size_checks_catch_truncation_but_not_a_same_size_change(bundle_copy):
    vectors = version_dir(bundle_copy) / ITEM_VECTORS
    size = vectors.stat().st_size
    truncate(vectors)
    for verify in ("full", "size"):
        with pytest.raises(BundleError, match="size mismatch") as raised:
            read_bundle(bundle_copy, verify=verify)
        assert raised.value.path == vectors
        assert (raised.value.expected, raised.value.found) == (size, size - 16)
        assert "item_vectors.safetensors" in str(raised.value)


def test_verify_size_passes_a_same_size_change_and_off_loads_anything(bundle_copy):
    flip_middle_byte(version_dir(bundle_copy) / INDEX)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        read_bundle(bundle_copy)  # "full" is the default
    assert read_bundle(bundle_copy, verify="size").version == "v000001"
    assert Recommender.load(bundle_copy, verify="off").version == "v000001"
    with pytest.raises(RequestError) as raised:
        read_bundle(bundle_copy, verify="quick")
    assert raised.value.field == "verify"


def test_manifest_entries_must_be_there_and_well_formed(bundle_copy):
    path = version_dir(bundle_copy) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][INDEX] = manifest["files"][INDEX]["sha256"]  # a bare checksum
    del manifest["files"][ITEM_VECTORS]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"files entry of index\.faiss"):
        read_bundle(bundle_copy)
    assert read_bundle(bundle_copy, verify="off").version == "v000001"
    summary_bad = _verify(bundle_copy)[1]
    assert set(summary_bad) == {INDEX, ITEM_VECTORS}
    assert "lists no size and checksum" in summary_bad[ITEM_VECTORS]


def _verify(bundle: Path, *extra: str) -> tuple[int, dict]:
    """(exit status, the summary's "bad") of `python -m serve verify` (in process)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["verify", "--bundle", str(bundle), *extra])
    return status, json.loads(out.getvalue())["bad"]


def test_cli_prints_a_summary_of_a_sound_bundle(bundle_dir, capsys):
    assert main(["verify", "--bundle", str(bundle_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["version"] == "v000001" and summary["bad"] == {}
    assert set(FILES) <= set(summary["files"])
    manifest = json.loads((version_dir(bundle_dir) / MANIFEST).read_text())
    assert summary["files"] == manifest["files"]


def test_cli_names_each_bad_file_and_exits_nonzero(bundle_copy, capsys):
    directory = version_dir(bundle_copy)
    flip_middle_byte(directory / INDEX)
    truncate(directory / ITEM_VECTORS)
    assert main(["verify", "--bundle", str(bundle_copy)]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert not summary["ok"] and set(summary["bad"]) == {INDEX, ITEM_VECTORS}
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert any("index.faiss: sha256 mismatch" in line for line in errors)
    assert any("item_vectors.safetensors: size mismatch" in line for line in errors)


def test_cli_checks_a_given_version(bundle_copy, capsys):
    source = version_dir(bundle_copy)

    def copy(directory: Path) -> None:
        for file in source.iterdir():
            (directory / file.name).write_bytes(file.read_bytes())

    write_version(bundle_copy, copy)  # v000002, now current
    assert (bundle_copy / CURRENT).read_text().strip() == "v000002"
    (source / INDEX).unlink()  # v000001 loses a file
    assert main(["verify", "--bundle", str(bundle_copy)]) == 0
    capsys.readouterr()
    assert main(["verify", "--bundle", str(bundle_copy), "--version", "v000001"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["version"] == "v000001"
    assert "index.faiss: missing" in captured.err
    assert main(["verify", "--bundle", str(bundle_copy), "--version", "v000009"]) == 2
    assert "v000009" in capsys.readouterr().err


def test_the_http_service_loads_with_the_verification_it_is_given(bundle_copy):
    from serve.http import Service

    flip_middle_byte(version_dir(bundle_copy) / INDEX)
    with pytest.raises(BundleError, match=r"index\.faiss: sha256 mismatch"):
        Service(bundle_copy).load()  # "full" by default, at start-up and at every reload
    assert Service(bundle_copy, verify="size").load().version == "v000001"
