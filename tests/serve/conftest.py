"""Fixtures for serve/: the session's trained bundle re-exported with other indexes (no
retraining), fresh copies to update, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import copy
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from serve import Recommender, export_bundle, read_bundle
from serve.http import create_app
from towers import Scorer

REFINE = "IVF{nlist},PQ{half_dim}x4fs,RFlat"  # conf/index/ivfpq_refine.yaml's factory


@pytest.fixture(scope="session")
def recommender(bundle_dir) -> Recommender:
    return Recommender.load(bundle_dir)


def reexport(bundle_dir: Path, path: Path, index_config: dict) -> Path:
    """The trained towers and tables of `bundle_dir`, exported again with another index."""
    bundle = read_bundle(bundle_dir)
    return export_bundle(path, bundle.scorer, bundle.items, bundle.users, index_config=index_config)


def _ann_bundle(bundle_dir: Path, tmp_path_factory, name: str, factory: str) -> Path:
    """The session bundle's model re-exported with an ANN index (swept at recall@20)."""
    path = tmp_path_factory.mktemp(name) / "bundle"
    return reexport(bundle_dir, path, {"factory": factory, "sweep_k": 20})


@pytest.fixture(scope="session")
def ivf_bundle(bundle_dir, tmp_path_factory) -> Path:
    return _ann_bundle(bundle_dir, tmp_path_factory, "ivf", "IVF{nlist},Flat")


@pytest.fixture(scope="session")
def hnsw_bundle(bundle_dir, tmp_path_factory) -> Path:
    return _ann_bundle(bundle_dir, tmp_path_factory, "hnsw", "HNSW8")


@pytest.fixture(scope="session")
def refine_bundle(bundle_dir, tmp_path_factory) -> Path:
    """Re-ranked 4-bit fast-scan PQ (conf/index/ivfpq_refine.yaml's factory)."""
    return _ann_bundle(bundle_dir, tmp_path_factory, "refine", REFINE)


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the session bundle, safe to update."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


class Server:
    """uvicorn serving an app in a thread, on a loopback socket with a free port."""

    def __init__(self, app):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


@pytest.fixture(scope="session")
def server(bundle_dir, tmp_path_factory):
    """The HTTP app over a copy of the session bundle (cold_start=history)."""
    path = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("served") / "bundle"))
    with Server(create_app(path)) as running:
        yield running


@pytest.fixture
def ivf_copy(ivf_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(ivf_bundle, tmp_path / "ivf"))


@pytest.fixture
def hnsw_copy(hnsw_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(hnsw_bundle, tmp_path / "hnsw"))


@pytest.fixture
def refine_copy(refine_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(refine_bundle, tmp_path / "refine"))


@pytest.fixture(scope="session")
def ensemble_bundle(bundle_dir, tmp_path_factory) -> Path:
    """The session model served beside a perturbed copy of itself (towers.scoring): vectors
    twice as long, cosine per half."""
    bundle = read_bundle(bundle_dir)
    (model,) = bundle.scorer.members
    user, item = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for table in (user.user_embedding, user.history_embedding, item.item_embedding):
            rows = table.weight[: table.padding_idx]  # the padding row stays zero
            rows.add_(0.1 * torch.randn(rows.shape, generator=generator))
    path = tmp_path_factory.mktemp("ensemble") / "bundle"
    return export_bundle(path, Scorer([model, (user, item)]), bundle.items, bundle.users)


@pytest.fixture
def ensemble_copy(ensemble_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(ensemble_bundle, tmp_path / "ensemble"))


PRIOR = 0.05  # prior_bundle's popularity prior


@pytest.fixture(scope="session")
def prior_bundle(bundle_dir, tmp_path_factory) -> Path:
    """The session model served with a popularity prior (towers.scoring), item popularity
    counts 0..6 by item index."""
    bundle = read_bundle(bundle_dir)
    counts = torch.arange(bundle.scorer.spec.num_items) % 7
    scorer = Scorer(bundle.scorer.members, popularity_prior=PRIOR, item_counts=counts)
    path = tmp_path_factory.mktemp("prior") / "bundle"
    return export_bundle(path, scorer, bundle.items, bundle.users)


@pytest.fixture
def prior_copy(prior_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(prior_bundle, tmp_path / "prior"))
