"""serve/recommender.py: offline top-k is the served top-k, filters return exactly k, users
unseen in training, batching, and the error cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from serve import Recommender, UnknownItemError, UnknownUserError
from serve.users import Source
from tests.serve.conftest import PRIOR, REFINE, reexport
from towers.ranking import exact_top_k
from towers.scoring import PRIOR_SCALE


def user_ids(recommender: Recommender) -> list:
    return recommender.bundle.users["user_id"].to_list()


def item_ids(recommender: Recommender) -> list:
    return recommender.bundle.items["item_id"].to_list()


def exact(recommender: Recommender, query: np.ndarray, k: int, banned=(), allowed=None) -> list:
    """Ground truth: the best k eligible items by brute force."""
    scores = recommender.item_vectors @ query
    eligible = recommender.active.copy() if allowed is None else recommender.active & allowed
    eligible[list(banned)] = False
    order = [i for i in np.argsort(-scores, kind="stable") if eligible[i]]
    return [recommender.item_ids[i].item() for i in order[:k]]


def cold_user_vector(recommender: Recommender, rows: np.ndarray) -> np.ndarray:
    """The user tower on a history of item `rows` and no user id, its inputs built here: the
    id input -1, the history the items' id codes (the fitted transform of their table rows)
    padded with -1."""
    features = recommender.bundle.features
    codes = features.item.transform(recommender.bundle.items)["item_id"][rows]  # (n,)
    history = np.full(features.history_length, -1, dtype=np.int64)  # (L,)
    history[: len(codes)] = codes
    inputs = {"user_id": torch.tensor([-1]), "history": torch.from_numpy(history)[None]}
    with torch.inference_mode():
        return recommender.scorer.encode_users(inputs).numpy()[0]  # (D,)


def overlap(a: Recommender, b: Recommender, users: list, k: int) -> float:
    """Share of the users' top k that two recommenders agree on."""
    hits = [
        len({r.item_id for r in a.recommend(u, k)} & {r.item_id for r in b.recommend(u, k)})
        for u in users
    ]
    return sum(hits) / (k * len(users))


def test_offline_top_k_is_what_recommend_returns(recommender):
    users = np.arange(len(user_ids(recommender)))
    _, top = recommender.top_k(users, 10, exclude_seen=True)
    for user in users[:50]:
        served = [r.item_id for r in recommender.recommend(user_ids(recommender)[user], 10)]
        assert served == [recommender.item_ids[i].item() for i in top[user]]
    # ...and the FAISS index ranks like the exact torch ranking used in training.
    vectors = torch.from_numpy(recommender.encode_users(users))
    seen = [torch.from_numpy(recommender.seen(u)) for u in users]
    width = max(len(s) for s in seen)
    seen_t = torch.stack([torch.nn.functional.pad(s, (0, width - len(s)), value=-1) for s in seen])
    _, expected = exact_top_k(vectors, torch.from_numpy(recommender.item_vectors), 10, seen_t)
    np.testing.assert_array_equal(top, expected.numpy())


def test_seen_items_are_excluded_and_k_kept(recommender):
    user = user_ids(recommender)[0]
    seen = {recommender.item_ids[i].item() for i in recommender.seen(0)}
    results = recommender.recommend(user, 25)
    assert len(results) == 25 and results.source == Source.MODEL
    assert not seen & {r.item_id for r in results}
    with_seen = recommender.recommend(user, 25, exclude_seen=False)
    assert len(with_seen) == 25 and [r.score for r in with_seen] == sorted(
        (r.score for r in with_seen), reverse=True
    )


@pytest.mark.parametrize("k", [1, 10, 60])
def test_exclude_list_and_genre_filter_return_exactly_k(recommender, k):
    user, row = user_ids(recommender)[3], 3
    query = recommender.encode_users(np.array([row]))[0]
    exclude = item_ids(recommender)[:30]
    genre = recommender.bundle.items["genres"][0][0]
    in_genre = np.array([genre in g for g in recommender.bundle.items["genres"].to_list()])
    banned = set(recommender.seen(row).tolist()) | set(range(30))
    results = recommender.recommend(user, k, exclude=exclude, filters={"genres": genre})
    expected = exact(recommender, query, k, banned, in_genre)
    assert len(results) == min(k, len(expected)) == len(expected)
    assert [r.item_id for r in results] == expected


def test_filter_leaving_fewer_than_k_returns_them_all(recommender):
    title = recommender.bundle.items["title"].to_list()[:3]
    results = recommender.recommend(
        user_ids(recommender)[1], 10, exclude_seen=False, filters={"title": title}
    )
    assert sorted(r.title for r in results) == sorted(title)
    assert (
        recommender.recommend(user_ids(recommender)[1], 10, filters={"title": "no such title"})
        == []
    )


@pytest.mark.parametrize("fixture", ["ivf_bundle", "hnsw_bundle", "refine_bundle"])
def test_ann_filters_still_return_exactly_k(request, fixture):
    """Even the least exhaustive setting (one IVF list, tiny efSearch) returns k eligible items."""
    path = request.getfixturevalue(fixture)
    recommender = Recommender.load(path)
    from serve.index import search_knob

    # nprobe 1 / efSearch 1: the index runs out of candidates
    recommender.search_params = {**recommender.search_params, search_knob(recommender.index): 1}
    genre = recommender.bundle.items["genres"][5][0]
    # Without filter and exclude list, recommend takes the single-user fast path and, when the
    # index runs out of candidates, falls back to the general search.
    for user, filters, excluded in itertools.product(
        user_ids(recommender)[:20], (None, {"genres": genre}), (range(10, 40), range(0))
    ):
        exclude = [recommender.item_ids[i].item() for i in excluded]
        results = recommender.recommend(user, 50, exclude=exclude, filters=filters)
        row = recommender.user_index(user)
        banned = set(recommender.seen(row).tolist()) | set(excluded)
        allowed = (
            None
            if filters is None
            else np.array([genre in g for g in recommender.bundle.items["genres"]])
        )
        eligible = recommender.active & (True if allowed is None else allowed)
        eligible[list(banned)] = False
        assert len(results) == min(50, int(eligible.sum()))
        ids = [r.item_id for r in results]
        assert len(set(ids)) == len(ids)
        assert not set(ids) & {recommender.item_ids[i].item() for i in banned}


def test_reranked_index_recommends_what_exact_search_does(refine_bundle, bundle_dir):
    """The re-ranked index, searched with every list, gives exact search's recommendations,
    though it re-scores k_factor candidates per wanted result rather than per fetched one."""
    refined, exact = Recommender.load(refine_bundle), Recommender.load(bundle_dir)
    refined.search_params = {**refined.search_params, "nprobe": 1 << 20}
    users = user_ids(exact)[:30]
    assert overlap(refined, exact, users, 10) >= 0.95
    batch = refined.recommend_many(users, 10)
    assert [[r.item_id for r in recs] for recs in batch] == [
        [r.item_id for r in refined.recommend(u, 10)] for u in users
    ]


def test_unknown_filter_column_and_bad_values_are_named(recommender):
    with pytest.raises(ValueError, match=r"filters must name filterable columns .*, got 'colour'"):
        recommender.recommend(user_ids(recommender)[0], 5, filters={"colour": "red"})
    with pytest.raises(ValueError, match="filters must be an object"):
        recommender.recommend(user_ids(recommender)[0], 5, filters=["genres"])


def test_user_unseen_in_training_from_a_history(recommender):
    history = item_ids(recommender)[:5]
    results = recommender.recommend("new-user", 10, history=history)
    assert results.source == Source.HISTORY and len(results) == 10
    assert not set(history) & {r.item_id for r in results}
    # The user tower ran on that history, with no user-id embedding (id input -1).
    rows = recommender.item_rows(history)
    vector = cold_user_vector(recommender, rows)
    assert [r.item_id for r in results] == exact(recommender, vector, 10, rows)
    with pytest.raises(UnknownUserError, match="unknown user id 'new-user'"):
        recommender.recommend("new-user", 10)  # no history, cold_start="history"
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        recommender.recommend("new-user", 10, history=["nope"])


def test_popularity_fallback_and_error_policy(bundle_dir, recommender):
    popular = Recommender.load(bundle_dir, cold_start="popularity")
    results = popular.recommend("new-user", 5)
    assert results.source == Source.POPULARITY
    counts = np.bincount(recommender.seen_items, minlength=recommender.num_items)
    assert [r.score for r in results] == sorted(counts, reverse=True)[:5]
    assert (
        popular.recommend("new-user", 5, history=item_ids(recommender)[:2]).source == Source.HISTORY
    )
    genre = recommender.bundle.items["genres"][0][0]
    filtered = popular.recommend("new-user", 5, filters={"genres": genre})
    assert len(filtered) == 5 and all(
        genre in recommender.bundle.items["genres"][recommender.item_index(r.item_id)]
        for r in filtered
    )
    strict = Recommender.load(bundle_dir, cold_start="error")
    with pytest.raises(UnknownUserError):
        strict.recommend("new-user", 5, history=item_ids(recommender)[:2])
    with pytest.raises(ValueError, match="cold_start"):
        Recommender(recommender.bundle, cold_start="guess")


def test_recommend_many_is_one_tower_call_and_one_search(bundle_dir, monkeypatch):
    recommender = Recommender.load(bundle_dir, cache_user_vectors=False)
    users = user_ids(recommender)[:40]
    one_by_one = [[r.item_id for r in recommender.recommend(u, 10)] for u in users]
    calls = {"tower": 0, "search": 0}
    ((user_tower, _),) = recommender.scorer.members
    tower_forward, search = user_tower.forward, recommender.searcher.search

    def counted_forward(*args, **kwargs):
        calls["tower"] += 1
        return tower_forward(*args, **kwargs)

    def counted_search(*args, **kwargs):
        calls["search"] += 1
        return search(*args, **kwargs)

    monkeypatch.setattr(user_tower, "forward", counted_forward)
    monkeypatch.setattr(recommender.searcher, "search", counted_search)
    batched = recommender.recommend_many(users, 10)
    assert calls == {"tower": 1, "search": 1}
    assert [[r.item_id for r in recs] for recs in batched] == one_by_one


def test_similar_items_excludes_the_item_and_is_nearest(recommender):
    item = item_ids(recommender)[7]
    results = recommender.similar_items(item, 5)
    assert len(results) == 5 and item not in {r.item_id for r in results}
    assert [r.item_id for r in results] == exact(recommender, recommender.item_vectors[7], 5, [7])


def test_error_cases(recommender):
    with pytest.raises(UnknownUserError, match="unknown user id 'ghost'"):
        Recommender(recommender.bundle, cold_start="error").recommend("ghost")
    with pytest.raises(UnknownItemError, match="unknown item id -1"):
        recommender.similar_items(-1)
    for k in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            recommender.recommend(user_ids(recommender)[0], k)
    with pytest.raises(ValueError, match="k must be"):
        recommender.similar_items(item_ids(recommender)[0], 0)
    with pytest.raises(UnknownItemError):
        recommender.recommend(user_ids(recommender)[0], 3, exclude=["not-an-item"])


def test_string_ids_are_coerced(recommender):
    user = user_ids(recommender)[2]
    assert recommender.recommend(str(user), 3) == recommender.recommend(user, 3)


def test_user_vectors_are_cached_by_default_when_the_table_is_small(bundle_dir, monkeypatch):
    assert Recommender.load(bundle_dir).user_vectors is not None
    assert Recommender.load(bundle_dir, cache_user_vectors=False).user_vectors is None
    monkeypatch.setattr("serve.users.USER_CACHE_AUTO_BYTES", 0)
    assert Recommender.load(bundle_dir).user_vectors is None
    assert Recommender.load(bundle_dir, cache_user_vectors=True).user_vectors is not None


def test_cached_user_vectors_give_the_same_results(bundle_dir):
    recommender = Recommender.load(bundle_dir, cache_user_vectors=False)
    cached = Recommender.load(bundle_dir, cache_user_vectors=True)
    assert cached.user_vectors.shape == (
        len(user_ids(recommender)),
        recommender.item_vectors.shape[1],
    )
    users = user_ids(recommender)[:60]
    assert [[r.item_id for r in recs] for recs in cached.recommend_many(users, 10)] == [
        [r.item_id for r in recs] for recs in recommender.recommend_many(users, 10)
    ]
    rows = np.arange(60)
    np.testing.assert_array_equal(cached.top_k(rows, 10)[1], recommender.top_k(rows, 10)[1])
    # A given history still runs the tower.
    history = item_ids(recommender)[:4]
    assert cached.recommend(users[0], 5, history=history) == recommender.recommend(
        users[0], 5, history=history
    )


def test_an_ensemble_bundle_serves_the_mean_of_its_members_cosines(ensemble_bundle, bundle_dir):
    """A bundle of concatenated towers (towers.ensemble) loads and ranks like any other: each
    recommended item's score is the mean of the two members' cosines."""
    merged, single = Recommender.load(ensemble_bundle), Recommender.load(bundle_dir)
    assert merged.bundle.manifest["embedding_dim"] == 2 * single.bundle.manifest["embedding_dim"]
    dim = single.item_vectors.shape[1]
    users = np.arange(20)
    user_vectors = merged.encode_users(users)
    np.testing.assert_allclose(np.linalg.norm(user_vectors, axis=1), 1.0, rtol=1e-5)
    first_half = user_vectors[:, :dim] * np.sqrt(2)  # the first member's own unit vectors
    np.testing.assert_allclose(first_half, single.encode_users(users), rtol=1e-4, atol=1e-5)
    raw = merged.user_vocab.raw_ids(np.array([3]))[0]
    results = merged.recommend(raw, k=10)
    ids = merged.bundle.items["item_id"].to_list()
    vectors = merged.item_vectors[[ids.index(r.item_id) for r in results]]
    halves = [
        (user_vectors[3, s] * np.sqrt(2)) @ (vectors[:, s] * np.sqrt(2)).T
        for s in (slice(0, dim), slice(dim, 2 * dim))
    ]
    np.testing.assert_allclose([r.score for r in results], (halves[0] + halves[1]) / 2, rtol=1e-4)


def test_a_popularity_prior_is_served_as_one_more_coordinate(prior_bundle, bundle_dir):
    """Score = the model's similarity + prior * log p(item): the index ranks by it, the scores
    returned hold it, and similar items ask with the prior's weight, not their own log p."""
    prior, plain = Recommender.load(prior_bundle), Recommender.load(bundle_dir)
    assert prior.bundle.manifest["embedding_dim"] == plain.bundle.manifest["embedding_dim"] + 2
    counts = np.arange(len(item_ids(prior))) % 7 + 1.0
    log_p = np.log(counts) - np.log(counts).mean()  # centred: every score shifted alike
    np.testing.assert_allclose(prior.bundle.scorer.item_prior[:-1], log_p, rtol=1e-5)
    users = np.arange(40)
    vectors = plain.encode_users(users)
    np.testing.assert_allclose(prior.item_vectors[:, :-2], plain.item_vectors)
    np.testing.assert_allclose(
        prior.encode_users(users), np.c_[vectors, np.full(40, PRIOR * PRIOR_SCALE), np.zeros(40)]
    )
    _, top = prior.top_k(users, 10)
    _, top_plain = plain.top_k(users, 10)
    assert (top != top_plain).any()  # the prior moves some rankings...
    for user in users:  # ...to the brute-force best of similarity + prior * log p
        scores = plain.item_vectors @ vectors[user] + PRIOR * log_p
        scores[plain.seen(user)] = -np.inf
        np.testing.assert_array_equal(top[user], np.argsort(-scores, kind="stable")[:10])
    results = prior.recommend(user_ids(prior)[5], 5)
    rows = [item_ids(prior).index(r.item_id) for r in results]
    expected = plain.item_vectors[rows] @ vectors[5] + PRIOR * log_p[rows]
    np.testing.assert_allclose([r.score for r in results], expected, rtol=1e-5)
    similar = [item_ids(prior).index(r.item_id) for r in prior.similar_items(item_ids(prior)[7], 5)]
    scores = plain.item_vectors @ plain.item_vectors[7] + PRIOR * log_p
    scores[7] = -np.inf
    assert similar == list(np.argsort(-scores, kind="stable")[:5])


def test_a_popularity_prior_keeps_vectors_fit_for_4_bit_pq(prior_bundle, tmp_path):
    """Two prior coordinates keep the length even for `{half_dim}` PQ; re-ranked, the index
    recommends what exact search does."""
    path = reexport(prior_bundle, tmp_path / "refine", {"factory": REFINE, "sweep_k": 20})
    refined, exact = Recommender.load(path), Recommender.load(prior_bundle)
    refined.search_params = {**refined.search_params, "nprobe": 1 << 20}
    users = user_ids(exact)[:30]
    assert overlap(refined, exact, users, 10) >= 0.95
