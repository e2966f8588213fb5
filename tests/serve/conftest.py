"""Fixtures for serve/: a small bundle made without training (tiny towers with planted
weights), that bundle re-exported with other indexes, fresh copies to update, and a real
uvicorn server on a free loopback port. Nothing here trains: train.py's own bundle is tested
in tests/test_train.py."""

from __future__ import annotations

import copy
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import torch
import uvicorn

from features import schema
from features.fitted import FittedFeatures
from features.fitting import FittedSide
from features.serving import CONTENT_ONLY, HISTORY, SEEN
from features.sources.synthetic import ITEM_ID_OFFSET, USER_ID_OFFSET
from features.spec import (
    FeaturesConfig,
    HistoryFeature,
    IdFeature,
    MultiHotFeature,
    NumericFeature,
    SideFeatures,
)
from serve import Recommender, export_bundle, read_bundle
from serve.http import create_app
from towers import FeatureSpec, ItemTower, Scorer, TowerConfig, UserTower

# The planted bundle: small enough to export in a fraction of a second, big enough for the
# tests' slices (60 users, 50 excluded items, k up to 60) and for IVF indexes with a few lists.
NUM_USERS = 200
NUM_ITEMS = 150
NUM_CLUSTERS = 6  # taste clusters; cluster c's items carry genre "g{c}" (and maybe one more)
EMBEDDING_DIM = 32
HISTORY_LENGTH = 10
REFINE = "IVF{nlist},PQ{half_dim}x4fs,RFlat"  # conf/index/ivfpq_refine.yaml's factory
# The planted towers' declared inputs (what conf/features/*.yaml declares for a real source).
FEATURES = FeaturesConfig(
    user=SideFeatures(
        "user",
        (IdFeature("user", "user_id"), HistoryFeature("user", "history", length=HISTORY_LENGTH)),
    ),
    item=SideFeatures(
        "item",
        (
            IdFeature("item", "item_id"),
            MultiHotFeature("item", "genres", column=schema.GENRES),
            NumericFeature("item", "year", column=schema.YEAR, normalization="quantile"),
        ),
    ),
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted_tables(
    rng: np.random.Generator,
) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray]:
    """(items_df, users_df, each item's cluster, each user's cluster). The tables have the
    layout of features.serving's item_table and user_table: raw ids offset like the synthetic
    source's (users from 100_000, items from 500_000); items: unique titles "Item i
    (cluster c)", one or two genres per item, release years 1950-2023, none content-only;
    users: history and seen as item rows, each user with 5-20 seen items, four in five from
    their own cluster."""
    item_cluster = rng.integers(0, NUM_CLUSTERS, NUM_ITEMS)
    item_cluster[:NUM_CLUSTERS] = np.arange(NUM_CLUSTERS)  # no empty cluster
    extra_genre = rng.integers(0, NUM_CLUSTERS, NUM_ITEMS)
    items_df = pl.DataFrame(
        {
            schema.ITEM_ID: np.arange(NUM_ITEMS, dtype=np.int64) + ITEM_ID_OFFSET,
            schema.TITLE: [f"Item {i} (cluster {c})" for i, c in enumerate(item_cluster)],
            schema.GENRES: [
                sorted({f"g{c}", f"g{e}"}) for c, e in zip(item_cluster, extra_genre, strict=True)
            ],
            schema.YEAR: rng.integers(1950, 2024, NUM_ITEMS).astype(np.int32),
            CONTENT_ONLY: np.zeros(NUM_ITEMS, dtype=bool),
        }
    )
    members = [np.flatnonzero(item_cluster == c) for c in range(NUM_CLUSTERS)]
    user_cluster = rng.integers(0, NUM_CLUSTERS, NUM_USERS)
    seen = []
    for c in user_cluster:
        count = int(rng.integers(5, 21))
        own = rng.choice(members[c], size=min(count * 4 // 5, len(members[c])), replace=False)
        others = rng.choice(NUM_ITEMS, size=count - len(own), replace=False)
        seen.append(rng.permutation(np.unique(np.concatenate([own, others]))))  # in time order
    users_df = pl.DataFrame(
        {
            schema.USER_ID: np.arange(NUM_USERS, dtype=np.int64) + USER_ID_OFFSET,
            HISTORY: [s[-HISTORY_LENGTH:].tolist() for s in seen],  # most recent, oldest first
            SEEN: [s.tolist() for s in seen],
        },
        schema={schema.USER_ID: pl.Int64, HISTORY: pl.List(pl.Int64), SEEN: pl.List(pl.Int64)},
    )
    return items_df, users_df, item_cluster, user_cluster


def planted_features(
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
    config: FeaturesConfig = FEATURES,
    num_train_users: int = NUM_USERS,
) -> FittedFeatures:
    """`config` fitted on the planted tables, every item and the first `num_train_users` users
    training rows, each row's count its interactions in the seen lists. With the defaults every
    user and item has an id row, and the genre vocabulary is sorted ("g0".."g5" are rows
    0..5)."""
    seen = np.concatenate(users_df[SEEN].to_list())  # (n,) item rows
    item_counts = np.bincount(seen, minlength=items_df.height)  # (I,)
    train_users_df = users_df.head(num_train_users)
    user_counts = train_users_df[SEEN].list.len().to_numpy()  # (U',)
    return FittedFeatures(
        FittedSide.fit(config.user, train_users_df, user_counts, "the planted users"),
        FittedSide.fit(config.item, items_df, item_counts, "the planted items"),
    )


def _plant(table: torch.nn.Embedding, rows: np.ndarray, at: np.ndarray | None = None) -> None:
    """Table rows `at` (default 0..len(rows)-1; -1: no row, skipped) set to `rows`."""
    at = np.arange(len(rows)) if at is None else at
    with torch.no_grad():
        table.weight[torch.as_tensor(at[at >= 0])] = torch.as_tensor(
            rows[at >= 0], dtype=torch.float32
        )


def planted_towers(
    rng: np.random.Generator,
    item_cluster: np.ndarray,
    user_cluster: np.ndarray,
    features: FittedFeatures,
    items_df: pl.DataFrame,
    users_df: pl.DataFrame,
) -> tuple[UserTower, ItemTower]:
    """Tiny towers with weights planted from random clustered vectors instead of trained: an
    item's id embedding is its cluster's centre plus noise, genre g{c}'s embedding half of
    centre c, each year bucket a little noise, a user's id embedding (where they have an id row)
    their cluster's centre plus noise, and the history table is the item id table (no
    projection); an input of `features` not named here keeps its random initial weights. Items
    and users of a cluster thus point alike."""
    spec = FeatureSpec(
        user_inputs=features.user_inputs(),
        item_inputs=features.item.inputs(),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    cfg = TowerConfig(embedding_dim=EMBEDDING_DIM)
    user, item = UserTower(spec, cfg), ItemTower(spec, cfg)
    centres = _unit(rng.normal(size=(NUM_CLUSTERS, EMBEDDING_DIM)))

    def noise(rows: int, scale: float) -> np.ndarray:
        return scale * rng.normal(size=(rows, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)

    item_codes = features.item.transform(items_df)["item_id"]  # (I,) id rows
    user_codes = features.user.transform(users_df)["user_id"]  # (U,) id rows, -1: none
    item_rows = centres[item_cluster] + noise(NUM_ITEMS, 0.8)
    _plant(item.encoders["item_id"].table, item_rows, item_codes)  # the padding row stays zero
    _plant(item.encoders["genres"].table, 0.5 * centres)  # the padding row (g5 + 1) stays zero
    years = item.encoders["year"].table
    _plant(years, noise(years.num_embeddings, 0.1))  # the buckets and the missing row
    _plant(
        user.encoders["user_id"].table, centres[user_cluster] + noise(NUM_USERS, 0.8), user_codes
    )
    _plant(user.encoders["history"].table, item_rows, item_codes)
    with torch.no_grad():
        user.encoders["history"].projection.weight.copy_(torch.eye(EMBEDDING_DIM))
    return user.eval(), item.eval()


def planted_bundle(path: Path, seed: int = 0) -> Path:
    """A bundle exported at `path` from planted towers and tables (exact index, like
    conf/index/flat.yaml): what train.py exports, without training."""
    rng = np.random.default_rng(seed)
    items_df, users_df, item_cluster, user_cluster = planted_tables(rng)
    features = planted_features(items_df, users_df)
    towers = planted_towers(rng, item_cluster, user_cluster, features, items_df, users_df)
    return export_bundle(
        path, Scorer([towers]), features, items_df, users_df, index_config={"factory": "Flat"}
    )


def planted_clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(each item's cluster, each user's cluster) of the bundle `planted_bundle(path, seed)`."""
    _, _, item_cluster, user_cluster = planted_tables(np.random.default_rng(seed))
    return item_cluster, user_cluster


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """The session's bundle for every serve/ test: planted, not trained."""
    return planted_bundle(tmp_path_factory.mktemp("planted") / "bundle")


@pytest.fixture(scope="session")
def recommender(bundle_dir) -> Recommender:
    return Recommender.load(bundle_dir)


def reexport(bundle_dir: Path, path: Path, index_config: dict) -> Path:
    """The towers and tables of `bundle_dir`, exported again with another index."""
    bundle = read_bundle(bundle_dir)
    return export_bundle(
        path,
        bundle.scorer,
        bundle.features,
        bundle.items,
        bundle.users,
        index_config=index_config,
        num_train_users=bundle.manifest["num_train_users"],
    )


def _ann_bundle(bundle_dir: Path, tmp_path_factory, name: str, factory: str) -> Path:
    """The session bundle's towers re-exported with an ANN index (swept at recall@20)."""
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
        for table in (user.id_table(), user.encoders["history"].table, item.id_table()):
            rows = table.weight[: table.padding_idx]  # the padding row stays zero
            rows.add_(0.1 * torch.randn(rows.shape, generator=generator))
    path = tmp_path_factory.mktemp("ensemble") / "bundle"
    return export_bundle(
        path, Scorer([model, (user, item)]), bundle.features, bundle.items, bundle.users
    )


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
    return export_bundle(path, scorer, bundle.features, bundle.items, bundle.users)


@pytest.fixture
def prior_copy(prior_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(prior_bundle, tmp_path / "prior"))
