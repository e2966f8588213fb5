"""Serving from declared features (features.json): the vectors a bundle serves are the towers on
inputs built here from the fitted features; an item added after training is encoded from its
content alone and reaches the users of its cluster; a user the bundle does not know (or knows
without an id row) is served from their features; a ranking restricted to the content-only
items leaves a given history out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from features.spec import CategoricalFeature, FeaturesConfig, SideFeatures
from serve import Recommender, UnknownUserError, read_bundle, update_items
from serve.errors import RequestError
from serve.export import encode_items, export_bundle
from serve.http import create_app
from serve.users import Source
from tests.serve.conftest import (
    FEATURES,
    HISTORY_LENGTH,
    NUM_CLUSTERS,
    NUM_USERS,
    Server,
    planted_clusters,
    planted_features,
    planted_tables,
    planted_towers,
)
from towers import Scorer

TASTE = "taste"  # the featured bundle's user column: "t{c}" for a user of cluster c
TRAINED_USERS = NUM_USERS - 10  # the featured bundle's last 10 users have no id row


def history_codes(bundle, histories: list[list[int]]) -> torch.Tensor:
    """(U, L) item id codes of histories given as item rows, oldest first, padded with -1: each
    item's code is the item id feature's transform of its row of the items table."""
    codes = bundle.features.item.transform(bundle.items)["item_id"]  # (I,)
    out = np.full((len(histories), HISTORY_LENGTH), -1, dtype=np.int64)  # (U, L)
    for i, rows in enumerate(histories):
        out[i, : len(rows)] = codes[np.asarray(rows, dtype=np.int64)]
    return torch.from_numpy(out)


def user_inputs(bundle, users_df: pl.DataFrame, histories: list[list[int]]) -> dict:
    """The user tower's inputs of rows of a users table: the fitted transform of their columns,
    and `histories` (item rows) as item id codes."""
    arrays = bundle.features.user.transform(users_df)
    inputs = {name: torch.from_numpy(a) for name, a in arrays.items()}
    return inputs | {"history": history_codes(bundle, histories)}


def encoded_users(bundle, inputs: dict) -> np.ndarray:
    with torch.inference_mode():
        return bundle.scorer.encode_users(inputs).numpy()  # (U, D)


def ranked(recommender: Recommender, query: np.ndarray, k: int, banned=(), allowed=None) -> list:
    """The best k active items for `query` by brute force: raw ids."""
    scores = recommender.item_vectors @ query  # (I,)
    eligible = recommender.active.copy() if allowed is None else recommender.active & allowed
    eligible[list(banned)] = False
    order = [i for i in np.argsort(-scores, kind="stable") if eligible[i]]
    return [recommender.item_ids[i].item() for i in order[:k]]


# -- (a) the served vectors are the towers on the fitted inputs ---------------------------------
def test_stored_item_vectors_are_the_item_towers_on_the_items_table(bundle_dir):
    bundle = read_bundle(bundle_dir)
    vectors = encode_items(bundle.scorer, bundle.features, bundle.items)  # (I, D)
    np.testing.assert_allclose(vectors, bundle.item_vectors, rtol=1e-6, atol=1e-6)
    # The same inputs by hand: id row = catalogue row (every planted item trained, ids sorted),
    # genre "g{c}" row c (6: padding), the year's bucket of the fitted edges.
    _, genres, year = bundle.features.item.features
    width = genres.feature.max_length
    bags = [[int(g[1:]) for g in row] for row in bundle.items["genres"].to_list()]
    edges = np.asarray(year.edges)
    inputs = {
        "item_id": torch.arange(bundle.items.height),
        "genres": torch.tensor([bag + [6] * (width - len(bag)) for bag in bags]),
        "year": torch.from_numpy(np.searchsorted(edges, bundle.items["year"].to_numpy(), "right")),
    }
    with torch.inference_mode():
        by_hand = bundle.scorer.encode_items(inputs).numpy()
    np.testing.assert_allclose(by_hand, bundle.item_vectors, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [True, False])
def test_user_vectors_are_the_user_tower_on_the_fitted_inputs(bundle_dir, cache):
    recommender = Recommender.load(bundle_dir, cache_user_vectors=cache)
    bundle = recommender.bundle
    inputs = user_inputs(bundle, bundle.users, bundle.users["history"].to_list())
    np.testing.assert_array_equal(inputs["user_id"].numpy(), np.arange(NUM_USERS))
    expected = encoded_users(bundle, inputs)  # (U, D)
    served = recommender.users.known_user_vectors(np.arange(NUM_USERS))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


# -- (b) an item added after training ----------------------------------------------------------
def test_an_added_item_is_encoded_from_its_content_and_reaches_its_cluster(bundle_copy):
    item_cluster, user_cluster = planted_clusters()
    cluster, new_id = 2, 888_001
    before = read_bundle(bundle_copy)
    year = before.items["year"][int(np.flatnonzero(item_cluster == cluster)[0])]
    upsert = pl.DataFrame(
        {"item_id": [new_id], "title": ["new"], "genres": [[f"g{cluster}"]], "year": [year]}
    )
    update_items(bundle_copy, upsert=upsert)
    after = Recommender.load(bundle_copy)
    row = after.item_index(new_id)
    stored = after.bundle.items[row : row + 1]
    # No id row: the id input reads -1, the vector comes from the genres and year alone.
    assert before.features.item.transform(stored)["item_id"].tolist() == [-1]
    direct = encode_items(before.scorer, before.features, upsert)  # (1, D)
    np.testing.assert_allclose(after.item_vectors[row], direct[0], rtol=1e-5, atol=1e-6)
    # The only content-only item: what a user of its cluster gets among content-only items.
    user_ids = after.bundle.users["user_id"].to_list()
    ours = np.flatnonzero(user_cluster == cluster)
    others = np.flatnonzero(user_cluster != cluster)
    for user in ours[:5]:
        results = after.recommend(user_ids[user], 3, filters={"content_only": True})
        vector = after.users.known_user_vectors(np.array([user]))[0]
        assert [r.item_id for r in results] == [new_id]
        assert results[0].score == pytest.approx(float(vector @ after.item_vectors[row]), abs=1e-5)
    # Among the whole catalogue it ranks near the top for its cluster's users, not for the rest.
    _, top = after.top_k(np.arange(NUM_USERS), after.num_active, exclude_seen=False)
    rank = np.argmax(top == row, axis=1)  # (U,) 0 = first
    assert rank[ours].mean() < 3 and rank[others].mean() > 30, (rank[ours], rank[others])


# -- (c) users served from their features ------------------------------------------------------
@pytest.fixture(scope="module")
def featured_dir(tmp_path_factory) -> Path:
    """The planted bundle with a user feature: column "taste" ("t{c}" for a user of cluster c) as
    a categorical input whose row c is the mean id embedding of cluster c's items; only the
    first TRAINED_USERS users are training rows, so the last 10 have no id row."""
    rng = np.random.default_rng(0)
    items_df, users_df, item_cluster, user_cluster = planted_tables(rng)
    users_df = users_df.with_columns(pl.Series(TASTE, [f"t{c}" for c in user_cluster]))
    user_side = SideFeatures("user", (*FEATURES.user.features, CategoricalFeature("user", TASTE)))
    config = FeaturesConfig(user_side, FEATURES.item)
    features = planted_features(items_df, users_df, config, TRAINED_USERS)
    user, item = planted_towers(rng, item_cluster, user_cluster, features, items_df, users_df)
    tastes = features.user.features[2].lookup.vocabulary.to_list()
    assert tastes == [f"t{c}" for c in range(NUM_CLUSTERS)]
    with torch.no_grad():
        table = user.encoders[TASTE].table  # t0..t5, an OOV bucket, the missing row
        table.weight.zero_()
        for c in range(NUM_CLUSTERS):
            table.weight[c] = item.id_table().weight[np.flatnonzero(item_cluster == c)].mean(0)
    path = tmp_path_factory.mktemp("featured") / "bundle"
    return export_bundle(
        path,
        Scorer([(user, item)]),
        features,
        items_df,
        users_df,
        index_config={"factory": "Flat"},
        num_train_users=TRAINED_USERS,
    )


@pytest.fixture(scope="module")
def featured(featured_dir) -> Recommender:
    return Recommender.load(featured_dir)


def test_a_user_the_bundle_does_not_know_is_served_from_given_features(featured):
    item_cluster, _ = planted_clusters()
    bundle = featured.bundle
    results = featured.recommend("newcomer", 10, features={TASTE: "t3"})
    assert results.source == Source.FEATURES == "features"
    # The user tower without an id and without a history: the taste alone.
    inputs = {"user_id": torch.tensor([-1]), TASTE: torch.tensor([3])}
    vector = encoded_users(bundle, inputs | {"history": history_codes(bundle, [[]])})[0]
    assert [r.item_id for r in results] == ranked(featured, vector, 10)
    rows = [featured.item_index(r.item_id) for r in results]
    assert (item_cluster[rows] == 3).sum() >= 8, item_cluster[rows]  # taste t3: cluster 3
    # With a history too: both inputs, the history's items left out.
    history = featured.item_id_list[:4]
    results = featured.recommend("newcomer", 10, history=history, features={TASTE: "t3"})
    assert results.source == Source.HISTORY
    inputs |= {"history": history_codes(bundle, [[0, 1, 2, 3]])}
    vector = encoded_users(bundle, inputs)[0]
    assert [r.item_id for r in results] == ranked(featured, vector, 10, banned=[0, 1, 2, 3])


def test_given_features_are_checked_and_follow_the_cold_start_policy(featured_dir, featured):
    for given, named in (({"colour": "red"}, ["colour"]), ({"user_id": 5}, ["user_id"])):
        with pytest.raises(RequestError, match="features must name user columns") as raised:
            featured.recommend("newcomer", 5, features=given)
        assert raised.value.field == "features" and raised.value.value == named
    with pytest.raises(RequestError) as raised:
        featured.recommend_many(["a", "b"], 5, features=[{TASTE: "t1"}])  # one for two users
    assert raised.value.field == "features"
    strict = Recommender.load(featured_dir, cold_start="error")
    with pytest.raises(UnknownUserError):
        strict.recommend("newcomer", 5, features={TASTE: "t3"})
    popular = Recommender.load(featured_dir, cold_start="popularity")
    assert popular.recommend("newcomer", 5, features={TASTE: "t3"}).source == Source.FEATURES
    assert popular.recommend("newcomer", 5).source == Source.POPULARITY


def test_a_stored_user_without_an_id_row_is_served_from_their_features(featured):
    bundle = featured.bundle
    user_ids = bundle.users["user_id"].to_list()
    assert featured.recommend(user_ids[0], 5).source == Source.MODEL
    rows = np.arange(TRAINED_USERS, NUM_USERS)
    inputs = user_inputs(bundle, bundle.users[rows], bundle.users["history"].gather(rows).to_list())
    assert (inputs["user_id"].numpy() == -1).all()  # not training rows: no id row
    vectors = encoded_users(bundle, inputs)  # (10, D)
    for row, vector in zip(rows, vectors, strict=True):
        results = featured.recommend(user_ids[row], 10)
        assert results.source == Source.FEATURES
        assert [r.item_id for r in results] == ranked(featured, vector, 10, featured.seen(row))


def test_features_over_http(featured_dir, featured):
    given = [{TASTE: "t1"}, {TASTE: "t4"}]
    expected = featured.recommend_many(["a", "b"], 5, features=given)
    with Server(create_app(featured_dir)) as server, server.client() as client:
        one = client.post("/recommend", json={"user_id": "a", "k": 5, "features": given[0]})
        batch = client.post(
            "/recommend/batch", json={"user_ids": ["a", "b"], "k": 5, "features": given}
        )
        bad = client.post("/recommend", json={"user_id": "a", "features": {"colour": "red"}})
    assert one.status_code == 200 and one.json()["source"] == "features"
    assert [i["item_id"] for i in one.json()["items"]] == [r.item_id for r in expected[0]]
    assert batch.status_code == 200
    for answer, results in zip(batch.json()["results"], expected, strict=True):
        assert answer["source"] == "features"
        assert [i["item_id"] for i in answer["items"]] == [r.item_id for r in results]
    assert bad.status_code == 422 and bad.json()["message"] == "invalid request: features"


# -- (d) ranking among the content-only items --------------------------------------------------
def test_top_k_among_content_only_items_leaves_the_given_history_out(bundle_copy):
    before = read_bundle(bundle_copy)
    new_ids = list(range(777_000, 777_008))
    upsert = pl.DataFrame(
        {
            "item_id": new_ids,
            "genres": [[f"g{i % NUM_CLUSTERS}"] for i in range(len(new_ids))],
            "year": before.items["year"].head(len(new_ids)),
        }
    )
    update_items(bundle_copy, upsert=upsert)
    recommender = Recommender.load(bundle_copy)
    bundle = recommender.bundle
    content = np.flatnonzero(bundle.items["content_only"].to_numpy())  # (8,)
    assert [recommender.item_ids[i].item() for i in content] == new_ids
    users = np.arange(20)
    given = [[int(content[u % 8]), int(content[(u + 3) % 8]), u, u + 20] for u in users]
    histories = np.full((len(users), HISTORY_LENGTH), recommender.num_items, dtype=np.int64)
    for u, rows in enumerate(given):
        histories[u, : len(rows)] = rows
    _, top = recommender.top_k(users, 5, histories=histories, filters={"content_only": [True]})
    vectors = encoded_users(bundle, user_inputs(bundle, bundle.users[users], given))  # (20, D)
    allowed = bundle.items["content_only"].to_numpy()
    for u, vector in enumerate(vectors):
        assert set(top[u]) <= set(content) and not set(top[u]) & set(given[u])
        banned = np.concatenate([recommender.seen(u), given[u]])
        expected = ranked(recommender, vector, 5, banned, allowed)
        assert [recommender.item_ids[i].item() for i in top[u]] == expected
