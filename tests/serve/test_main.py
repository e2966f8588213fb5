"""`python -m serve`: recommend, similar, update, and the HTTP server as a real subprocess."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from serve import read_bundle
from serve.__main__ import main


def test_recommend_prints_json(bundle_dir, capsys):
    user = read_bundle(bundle_dir).users["user_id"][0]
    assert main(["recommend", "--bundle", str(bundle_dir), "--user", str(user), "--k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_id"] == str(user) and out["source"] == "model" and len(out["items"]) == 4


def test_cold_user_from_history(bundle_dir, capsys):
    item = read_bundle(bundle_dir).items["item_id"][0]
    assert (
        main(["recommend", "--bundle", str(bundle_dir), "--user", "new", "--history", str(item)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["source"] == "history"


def test_errors_exit_2_with_one_line(bundle_dir, tmp_path, capsys):
    assert main(["recommend", "--bundle", str(bundle_dir), "--user", "ghost"]) == 2
    assert "unknown user id 'ghost'" in capsys.readouterr().err
    assert main(["recommend", "--bundle", str(bundle_dir), "--user", "ghost", "--k", "0"]) == 2
    assert "k must be a positive integer" in capsys.readouterr().err
    assert main(["similar", "--bundle", str(tmp_path), "--item", "1"]) == 2
    assert "missing manifest.json" in capsys.readouterr().err


def test_update_writes_a_new_version(bundle_dir, tmp_path, capsys):
    path = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    item = read_bundle(path).items["item_id"][3]
    pl.DataFrame({"item_id": [31337], "title": ["added"]}).write_parquet(tmp_path / "new.parquet")
    args = [
        "update",
        "--bundle",
        str(path),
        "--upsert",
        str(tmp_path / "new.parquet"),
        "--remove",
        str(item),
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["version"] == "v000002"
        and report["added"] == [31337]
        and report["removed"] == [item]
    )
    assert main(["update", "--bundle", str(path), "--upsert", str(tmp_path / "new.txt")]) == 2
    assert ".parquet, .csv or .json" in capsys.readouterr().err


def test_http_command_serves_on_loopback(bundle_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serve",
            "http",
            "--bundle",
            str(bundle_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        user = read_bundle(bundle_dir).users["user_id"][0]
        response = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 3})
        assert response.status_code == 200 and len(response.json()["items"]) == 3
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_cli_prints_json_and_names_errors(bundle_dir, recommender, capsys):
    """The JSON on stdout; an error as one line and status 2 from the process, no traceback."""
    user = str(read_bundle(bundle_dir).users["user_id"][1])
    args = ["recommend", "--bundle", str(bundle_dir), "--user", user, "--k", "4"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_id"] == user and len(out["items"]) == 4
    assert out["items"][0]["item_id"] == recommender.recommend(user, k=1)[0].item_id
    # As a subprocess (one is enough: most of its time is importing torch and FAISS).
    bad = subprocess.run(
        [sys.executable, "-m", "serve", *args[:-1], "0"], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2
        and "k must be a positive integer" in bad.stderr
        and "Traceback" not in bad.stderr
    )
