"""What a new user of the library does, end to end: an interactions CSV with users and items CSVs
beside it (categorical, numeric, multi-hot and free-text columns), `features=auto`, train, export,
`update` with a new item, recommend it, and serve a user the bundle does not know from their
features alone. The data plants one signal: users of segment s interact with items of category s,
whose descriptions and tags speak of s."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import train
from serve import Recommender, read_bundle, update_items

pytest.importorskip("sentence_transformers")

CATEGORIES = {
    "hiking": "lightweight trail boots, a rain shell and trekking poles for mountain hikes",
    "cooking": "a cast iron skillet, sharp chef knives and spices for home cooking",
    "gaming": "a wireless controller and a headset for console video games",
    "music": "acoustic guitar strings, a tuner and sheet music for practice",
}
NUM_USERS, ITEMS_PER_CATEGORY, PER_USER = 48, 12, 12


def write_tables(directory) -> dict[str, str]:
    rng = np.random.default_rng(0)
    names = list(CATEGORIES)
    items = []
    for c, name in enumerate(names):
        for i in range(ITEMS_PER_CATEGORY):
            items.append(
                {
                    "sku": 1000 + c * 100 + i,
                    "category": name,
                    "price": float(rng.lognormal(3 + c * 0.3, 0.5)),
                    "tags": f"{name}|{['new', 'sale', 'gift'][i % 3]}",
                    "description": f"Item {i}: {CATEGORIES[name]}",
                }
            )
    users = [
        {"user_id": u, "segment": names[u % 4], "age": int(rng.integers(18, 70))}
        for u in range(NUM_USERS)
    ]
    events = []
    for u in range(NUM_USERS):
        own = 1000 + (u % 4) * 100 + rng.choice(ITEMS_PER_CATEGORY, PER_USER - 2, replace=False)
        other = [1000 + int(rng.integers(4)) * 100 + int(rng.integers(ITEMS_PER_CATEGORY))]
        for t, sku in enumerate(rng.permutation(np.concatenate([own, other]))):
            events.append({"user_id": u, "sku": int(sku), "ts": 1_700_000_000 + 3600 * (u + t)})
    paths = {name: str(directory / f"{name}.csv") for name in ("events", "users", "items")}
    pl.DataFrame(events).write_csv(paths["events"])
    pl.DataFrame(users).write_csv(paths["users"])
    pl.DataFrame(items).write_csv(paths["items"])
    return paths


def source_overrides(paths: dict[str, str], users: bool = True) -> list[str]:
    """The interactions source over the tables `write_tables` wrote (the users table if asked)."""
    return [
        "data=interactions",
        f"data.source.path={paths['events']}",
        *([f"data.source.users={paths['users']}"] if users else []),
        f"data.source.items={paths['items']}",
        "data.source.item_key=sku",
        "+data.source.columns={user_id: user_id, item_id: sku, timestamp: ts}",
        "data.source.list_columns=[tags]",
        "data.batch_size=64",
        "features=auto",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("new_user")
    paths = write_tables(directory)
    cfg = train.compose(
        [
            *source_overrides(paths),
            "model.towers.embedding_dim=16",
            "model.towers.item_id_dropout=0.5",
            "model.towers.user_id_dropout=0.5",
            "model.negatives.num_negatives=32",
            "trainer=cpu",
            "trainer.max_epochs=8",
            "refit=false",
            f"paths.output_dir={directory / 'run'}",
        ]
    )
    metrics = train.train(cfg)
    return directory / "run", metrics


def test_auto_infers_each_column_kind(run):
    run_dir, _ = run
    printed = (run_dir / "config.yaml").read_text()
    assert "auto: true" in printed
    features = (read_bundle(run_dir / "bundle").path / "features.json").read_text()
    for name, kind in (
        ("category", "categorical"),
        ("price", "numeric"),
        ("tags", "multi_hot"),
        ("text", "text"),
        ("segment", "categorical"),
        ("age", "numeric"),
    ):
        assert f'"{name}"' in features and f'"{kind}"' in features


def test_the_trained_bundle_beats_popularity(run):
    _, metrics = run
    assert metrics["test/recall@10"] > metrics["popularity/test/recall@10"]


def _rank(results, item_id) -> int:
    ids = [r.item_id for r in results]
    return ids.index(item_id) if item_id in ids else len(ids)


def test_a_new_item_reaches_the_users_its_features_match(run):
    run_dir, _ = run
    bundle = run_dir / "bundle"
    new = pl.DataFrame(
        {
            "item_id": [9999],
            "category": ["cooking"],
            "price": [25.0],
            "tags": [["cooking", "new"]],
            "description": ["A new carbon steel wok and spices for home cooking"],
        }
    )
    report = update_items(bundle, upsert=new)
    assert report.added == [9999]
    recommender = Recommender.load(bundle)
    row = recommender.item_index(9999)
    assert recommender.bundle.items["content_only"][row]
    k = recommender.num_active
    cooks = [u for u in range(NUM_USERS) if u % 4 == 1]
    others = [u for u in range(NUM_USERS) if u % 4 != 1]
    cook_rank = np.mean([_rank(recommender.recommend(u, k), 9999) for u in cooks])
    other_rank = np.mean([_rank(recommender.recommend(u, k), 9999) for u in others])
    assert cook_rank < other_rank


def test_a_user_the_bundle_does_not_know_is_served_from_features(run):
    run_dir, _ = run
    recommender = Recommender.load(run_dir / "bundle")
    category = dict(
        zip(
            recommender.bundle.items["item_id"].to_list(),
            recommender.bundle.items["category"].to_list(),
            strict=True,
        )
    )

    def share(segment: str) -> float:
        results = recommender.recommend("someone new", 10, features={"segment": segment})
        assert results.source == "features"
        return np.mean([category[r.item_id] == segment for r in results])

    shares = {segment: share(segment) for segment in CATEGORIES}
    assert min(shares.values()) > 0.25, shares  # every segment above chance (one in four)
    assert np.mean(list(shares.values())) > 0.5, shares
