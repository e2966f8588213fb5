"""serve/search.py against brute-force numpy ranking: random vectors, real FAISS indexes (Flat,
IVF, HNSW), exclusions, filters, k past the eligible rows, an IVF that runs out of candidates,
a GPU-like search (no selector, capped fetch), and the single and batch paths agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from serve.catalogue import EMPTY, ItemFilter
from serve.index import EF_SEARCH, NPROBE, build_index
from serve.search import Search

NUM_ITEMS, DIM, NLIST = 2000, 16, 16
FACTORIES = {"Flat": {}, f"IVF{NLIST},Flat": {NPROBE: NLIST}, "HNSW16": {EF_SEARCH: 256}}
EXACT = ("Flat", f"IVF{NLIST},Flat")  # searched with every list, IVF is exact too


@pytest.fixture(scope="module")
def data():
    """Item vectors, the active rows (a few removed), queries."""
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32)
    active = rng.random(NUM_ITEMS) > 0.05
    xq = rng.normal(size=(24, DIM)).astype(np.float32)
    return xb, active, xq


@pytest.fixture(scope="module")
def indexes(data):
    xb, active, _ = data
    rows = np.flatnonzero(active)
    return {factory: build_index(xb[rows], "dot", factory, ids=rows) for factory in FACTORIES}


def searcher(data, indexes, factory: str, **settings) -> Search:
    xb, active, _ = data
    return Search(indexes[factory], xb, active, {**FACTORIES[factory], **settings}, "cpu")


def brute_force(xb, xq, k, eligible, exclude=None):
    """(scores, rows) (Q, k): the best k eligible rows by exact inner product, -inf / -1 after."""
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    rows = np.full((len(xq), k), -1, dtype=np.int64)
    for q, query in enumerate(xq):
        allowed = eligible.copy()
        if exclude is not None:
            allowed[exclude[q]] = False
        sims = xb @ query
        best = [i for i in np.argsort(-sims, kind="stable") if allowed[i]][:k]
        rows[q, : len(best)] = best
        scores[q, : len(best)] = sims[best]
    return scores, rows


def random_exclusions(rng, xq, xb, sizes) -> list[np.ndarray]:
    """Per query: some of its own best rows (so they matter) and some random ones."""
    out = []
    for query, size in zip(xq, sizes, strict=True):
        best = np.argsort(-(xb @ query))[: 2 * size + 2]
        out.append(
            np.unique(np.r_[rng.choice(best, size // 2 + 1), rng.integers(NUM_ITEMS, size=size)])
        )
    return out


def assert_ranked_like(found, expected):
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory", EXACT)
@pytest.mark.parametrize("k", [1, 10, 100])
def test_exact_indexes_rank_like_brute_force_with_exclusions(data, indexes, factory, k):
    xb, active, xq = data
    rng = np.random.default_rng(k)
    exclude = random_exclusions(rng, xq, xb, rng.integers(0, 60, size=len(xq)))
    search = searcher(data, indexes, factory)
    assert_ranked_like(search.nearest(xq, k, exclude), brute_force(xb, xq, k, active, exclude))
    assert_ranked_like(search.nearest(xq, k), brute_force(xb, xq, k, active))


def test_hnsw_returns_k_eligible_rows_best_first(data, indexes):
    xb, active, xq = data
    rng = np.random.default_rng(1)
    exclude = random_exclusions(rng, xq, xb, rng.integers(0, 60, size=len(xq)))
    scores, rows = searcher(data, indexes, "HNSW16").nearest(xq, 20, exclude)
    _, truth = brute_force(xb, xq, 20, active, exclude)
    for q in range(len(xq)):
        assert len(set(rows[q].tolist())) == 20 and active[rows[q]].all()
        assert not set(rows[q].tolist()) & set(exclude[q].tolist())
        assert (np.diff(scores[q]) <= 1e-6).all()
        np.testing.assert_allclose(scores[q], xb[rows[q]] @ xq[q], rtol=1e-4, atol=1e-4)
    recall = np.mean([len(set(rows[q]) & set(truth[q])) / 20 for q in range(len(xq))])
    assert recall >= 0.9


@pytest.mark.parametrize("factory", EXACT)
@pytest.mark.parametrize("exact_below", [0, 4096])  # FAISS id selector / exact search
def test_filters_rank_like_brute_force(data, indexes, monkeypatch, factory, exact_below):
    monkeypatch.setattr("serve.search.EXACT_BELOW", exact_below)
    xb, active, xq = data
    passing = np.random.default_rng(2).random(NUM_ITEMS) < 0.3
    item_filter = ItemFilter(passing & active)
    exclude = random_exclusions(np.random.default_rng(3), xq, xb, [30] * len(xq))
    search = searcher(data, indexes, factory)
    found = search.nearest(xq, 25, exclude, item_filter)
    assert_ranked_like(found, brute_force(xb, xq, 25, passing & active, exclude))


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("exact_below", [0, 4096])  # FAISS id selector / exact search
def test_k_past_the_eligible_rows_returns_them_all(
    data, indexes, monkeypatch, factory, exact_below
):
    monkeypatch.setattr("serve.search.EXACT_BELOW", exact_below)
    xb, active, xq = data
    search = searcher(data, indexes, factory)
    few = np.zeros(NUM_ITEMS, dtype=bool)
    few[np.flatnonzero(active)[:7]] = True
    exclude = [np.flatnonzero(few)[:2]] * len(xq)  # 5 left
    found = search.nearest(xq, 12, exclude, ItemFilter(few))
    assert_ranked_like(found, brute_force(xb, xq, 12, few, exclude))
    assert (found[1][:, :5] >= 0).all() and (found[1][:, 5:] == -1).all()
    assert np.isneginf(found[0][:, 5:]).all()
    nothing = search.nearest(xq, 3, None, ItemFilter(np.zeros(NUM_ITEMS, dtype=bool)))
    assert (nothing[1] == -1).all() and np.isneginf(nothing[0]).all()
    assert [a.shape for a in search.nearest(xq[:0], 3)] == [(0, 3), (0, 3)]


def test_k_past_the_catalogue_returns_every_active_row(data, indexes):
    xb, active, xq = data
    k = NUM_ITEMS + 10
    search = searcher(data, indexes, "Flat")
    exclude = np.flatnonzero(active)[:3]
    rows, scores = search.nearest_one(xq[:1], k, exclude)
    expected = brute_force(xb, xq[:3], k, active, [exclude] * 3)
    assert rows == expected[1][0][: active.sum() - 3].tolist()
    np.testing.assert_allclose(scores, expected[0][0][: len(rows)], rtol=1e-4, atol=1e-4)
    assert_ranked_like(search.nearest(xq[:3], k, [exclude] * 3), expected)


def test_an_ivf_that_runs_out_of_candidates_is_answered_exactly(data, indexes, monkeypatch):
    """One list probed (about NUM_ITEMS / NLIST rows) cannot give k = 300: exact search does."""
    xb, active, xq = data
    search = searcher(data, indexes, f"IVF{NLIST},Flat", **{NPROBE: 1})
    exact_calls = []
    exact = search._exact
    monkeypatch.setattr(
        search, "_exact", lambda *args: exact_calls.append(len(args[-1])) or exact(*args)
    )
    exclude = random_exclusions(np.random.default_rng(4), xq, xb, [20] * len(xq))
    found = search.nearest(xq, 300, exclude)
    assert exact_calls == [len(xq)]
    assert_ranked_like(found, brute_force(xb, xq, 300, active, exclude))
    rows, scores = search.nearest_one(xq[:1], 300, exclude[0])
    assert exact_calls == [len(xq), 1]
    assert rows == found[1][0].tolist()
    np.testing.assert_allclose(scores, found[0][0], rtol=1e-5)


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("batch", [3, 24])  # up to FEW_ROWS queries are picked row by row
def test_single_and_batch_paths_agree(data, indexes, factory, batch):
    xb, _, xq = data
    xq = xq[:batch]
    search = searcher(data, indexes, factory, **({NPROBE: 2} if "IVF" in factory else {}))
    exclude = random_exclusions(np.random.default_rng(5), xq, xb, [15] * batch)
    scores, rows = search.nearest(xq, 30, exclude)
    for q in range(batch):
        one_rows, one_scores = search.nearest_one(xq[q : q + 1], 30, exclude[q])
        found = rows[q] >= 0
        assert one_rows == rows[q][found].tolist()
        np.testing.assert_allclose(one_scores, scores[q][found], rtol=1e-6)
        alone = search.nearest(xq[q : q + 1], 30, [exclude[q]])
        np.testing.assert_array_equal(alone[1][0], rows[q])


def test_a_large_batch_ranks_like_brute_force(data, indexes):
    """Hundreds of queries with long exclusion lists: the exclusions are matched in one isin."""
    xb, active, _ = data
    xq = np.random.default_rng(8).normal(size=(300, DIM)).astype(np.float32)
    exclude = random_exclusions(np.random.default_rng(9), xq, xb, [120] * len(xq))
    found = searcher(data, indexes, "Flat").nearest(xq, 50, exclude)
    assert_ranked_like(found, brute_force(xb, xq, 50, active, exclude))


def test_a_gpu_like_search_checks_filters_itself_and_caps_what_it_fetches(
    data, indexes, monkeypatch
):
    """As on a GPU: no id selector (the filter is checked on what was found) and at most
    `max_fetch` results a search; a query left short is answered exactly."""
    monkeypatch.setattr("serve.search.EXACT_BELOW", 0)
    xb, active, xq = data
    search = searcher(data, indexes, "Flat")
    search.gpu, search.max_fetch = True, 64
    passing = active & (np.random.default_rng(6).random(NUM_ITEMS) < 0.8)
    exclude = [EMPTY] * 12 + random_exclusions(np.random.default_rng(7), xq[12:], xb, [70] * 12)
    found = search.nearest(xq, 10, exclude, ItemFilter(passing))
    assert_ranked_like(found, brute_force(xb, xq, 10, passing, exclude))


def test_search_settings_can_change(data, indexes):
    search = searcher(data, indexes, f"IVF{NLIST},Flat")
    assert search.params.nprobe == NLIST
    search.search_params = {NPROBE: 3}
    assert search.search_params == {NPROBE: 3} and search.params.nprobe == 3
