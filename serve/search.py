"""`Search`: the best k eligible item rows for query vectors, from the FAISS index.

Queries, k, the rows each query excludes and which rows are eligible (the active ones, or an
attribute filter's) go in; scores and rows come out, best first: exactly k whenever k eligible
rows exist, else all of them, then -inf / -1.

- Exclusions: the over-fetch loop asks the index for k + (the most any query excludes)
  candidates, then, for the queries left short of results, twice as many, until the index has
  no more to give: its results end in -1 (an IVF list probe or an HNSW walk that found fewer),
  or all it can return was asked for (the whole index; GPU_MAX_K on a GPU).
- Filters go to FAISS as an id selector (a bitmap over rows) on the CPU. The GPU takes none:
  there the filter is checked on what was found, like an exclusion. A filter leaving at most
  EXACT_BELOW rows (on a GPU: under half the active rows) is searched exactly instead.
- A query the index could not answer in full is answered by exact search over the eligible
  rows (inner products with the item vectors).

A single query without a filter (the hot path: one known user, their seen items excluded)
takes the loop's fast branch: one search of k + |excluded| candidates, the excluded ones
dropped in plain Python (a few dozen ids: cheaper than numpy's per-call costs right after a
search has flushed the caches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import faiss
import numpy as np

from serve.catalogue import EMPTY, ItemFilter
from serve.index import (
    is_refined,
    on_gpu,
    search_parameters,
    set_search_threads,
    to_device,
)

EXACT_BELOW = 4096  # filters leaving at most this many items are searched exactly
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours
FEW_ROWS = 8  # up to this many queries, results are picked row by row (cheaper than (Q, F) sorts)
MAX_CACHED_PARAMS = 4096  # the search-parameter cache starts over past this many (k, fetch)
_FIRST = np.zeros(1, dtype=np.int64)  # the fast branch's one query, when it is left short
_FIRST.setflags(write=False)


class Search:
    def __init__(
        self,
        index: faiss.Index,
        item_vectors: np.ndarray,
        active: np.ndarray,
        search_params: Mapping[str, int],
        device: str,
    ):
        """`index` over the `active` rows of `item_vectors` (I, D), searched on `device` (cpu or
        gpu, resolved) with `search_params` (nprobe, efSearch, ...)."""
        self.index = index  # the CPU index (what a bundle saves); parameters are built for it
        self.searcher = to_device(index, device)  # what is searched
        self.gpu = on_gpu(self.searcher)
        self.max_fetch = min(index.ntotal, GPU_MAX_K) if self.gpu else index.ntotal
        self.refined = is_refined(index)
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)  # (I, D)
        self.num_items = len(self.item_vectors)
        self.active = active  # (I,) bool
        self.num_active = int(active.sum())
        self.search_params = search_params  # builds the search parameters (a property)

    @property
    def search_params(self) -> dict[str, int]:
        """The index's search settings; searches follow a change to them."""
        return self._search_params

    @search_params.setter
    def search_params(self, settings: Mapping[str, int]) -> None:
        self._search_params = dict(settings)
        self.params = search_parameters(self.index, self._search_params)  # of a search of k
        self._fetch_params: dict[tuple[int, int], faiss.SearchParameters | None] = {}

    def _params_for(
        self, wanted: int, fetch: int, selector: faiss.IDSelector | None = None
    ) -> faiss.SearchParameters | None:
        """Parameters for a search of `fetch` results of which `wanted` are needed (the rest
        make room for exclusions); cached without a selector, as building them costs more than a
        fast search."""
        if selector is not None:
            return search_parameters(
                self.index, self._search_params, selector, wanted=wanted, fetch=fetch
            )
        if not self.refined or fetch <= wanted:
            return self.params
        params = self._fetch_params.get((wanted, fetch))
        if params is None:
            if len(self._fetch_params) >= MAX_CACHED_PARAMS:
                self._fetch_params.clear()
            params = search_parameters(self.index, self._search_params, wanted=wanted, fetch=fetch)
            self._fetch_params[wanted, fetch] = params
        return params

    # -- what callers ask -------------------------------------------------------------------
    def nearest(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        item_filter: ItemFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), (Q, k): each query's best k eligible rows, none of `exclude[q]`, all
        passing `item_filter`; -inf / -1 past the eligible ones."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = list(exclude) if exclude is not None else [EMPTY] * len(queries)
        eligible = self.active if item_filter is None else item_filter.eligible
        num_eligible = self.num_active if item_filter is None else item_filter.count
        if len(queries) == 0 or num_eligible == 0:
            return _assembled([], len(queries), k)
        owed = np.array([_owed(k, e, eligible, num_eligible) for e in exclude], dtype=np.int64)
        if item_filter is not None and (
            item_filter.count <= EXACT_BELOW
            or (self.gpu and item_filter.count < 0.5 * self.num_active)
        ):
            answers, unanswered = [], np.arange(len(queries))
        else:
            answers, unanswered = self._over_fetch(queries, k, exclude, owed, item_filter)
        if len(unanswered):
            answers.append(self._exact(queries, k, exclude, eligible, unanswered))
        return _assembled(answers, len(queries), k)

    def nearest_one(
        self, query: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[list[int], list[float]]:
        """`nearest` for one query (1, D) float32 without a filter, as plain lists (rows, scores)
        of the rows found: the hot path (the loop's fast branch, see the top of the file)."""
        if not self.num_active:
            return [], []
        owed = _owed(k, exclude, self.active, self.num_active)
        answers, unanswered = self._over_fetch(query, k, (exclude,), (owed,))
        if not len(unanswered):
            _, scores, rows = answers[0]
            return rows, scores
        _, scores, rows = self._exact(query, k, (exclude,), self.active, unanswered)
        found = rows[0] >= 0
        return rows[0][found].tolist(), scores[0][found].tolist()

    # -- how ------------------------------------------------------------------------------------
    def _over_fetch(self, queries, k, exclude, owed, item_filter=None):
        """The over-fetch loop (see the top of the file). `owed[q]`: the results query q needs
        (k, or fewer when fewer eligible rows are left).

        Returns (answers, unanswered): answers as (positions, scores, rows), (n, ≤ k) arrays or,
        from the fast branch, one query's plain lists; unanswered the positions of the queries
        left to exact search."""
        selector = None if item_filter is None or self.gpu else item_filter.selector
        checked = item_filter if selector is None else None  # a filter applied to what is found
        extra = max(map(len, exclude)) + (0 if checked is None else self.num_active - checked.count)
        fast = len(queries) == 1 and item_filter is None
        banned = set(exclude[0].tolist()) if fast else None
        fetch = min(k + extra, self.max_fetch)
        todo, answers = None, []  # todo: positions of the queries still short (None: all)
        while True:
            searched = queries if todo is None else queries[todo]
            set_search_threads(len(searched))
            params = self._params_for(k, fetch, selector)
            found_scores, found = self.searcher.search(searched, fetch, params=params)
            if fast:  # one query: the first k allowed rows, in plain Python
                rows, scores = _allowed(found[0].tolist(), found_scores[0].tolist(), banned, k)
                if len(rows) >= owed[0]:
                    answers.append((0, scores, rows))
                    return answers, EMPTY
                short = _FIRST
            else:
                positions = np.arange(len(queries)) if todo is None else todo
                banned_rows = [exclude[q] for q in positions]
                answer, short = _kept(
                    found_scores, found, k, banned_rows, owed[positions], checked, self.num_items
                )
                answers.append((positions[answer[0]], answer[1], answer[2]))
            if not len(short):
                return answers, EMPTY
            todo = short if todo is None else todo[short]
            if fetch >= self.max_fetch or (found[short, -1] < 0).any():
                return answers, todo  # the index has no more to give
            fetch = min(2 * fetch, self.max_fetch)

    def _exact(self, queries, k, exclude, eligible, positions):
        """Exact inner-product top k over the `eligible` rows for the queries at `positions`:
        (positions, scores, rows), (n, k)."""
        candidates = np.flatnonzero(eligible)
        few = len(candidates) <= len(eligible) // 4  # else: score all items, no (C, D) copy
        scores = np.full((len(positions), k), -np.inf, dtype=np.float32)
        rows = np.full((len(positions), k), -1, dtype=np.int64)
        for j, q in enumerate(positions):
            if few:
                sims = self.item_vectors[candidates] @ queries[q]  # (C,)
            else:
                sims = (self.item_vectors @ queries[q])[candidates]  # (C,)
            if len(exclude[q]):
                sims[np.isin(candidates, exclude[q])] = -np.inf
            top = _best(sims, candidates, k)
            rows[j, : len(top)] = candidates[top]
            scores[j, : len(top)] = sims[top]
        return positions, scores, rows


def _owed(k: int, exclude: np.ndarray, eligible: np.ndarray, num_eligible: int) -> int:
    """Results owed to a query: k, or every eligible row it does not exclude when fewer."""
    if num_eligible - len(exclude) >= k:
        return k
    return min(k, num_eligible - int(eligible[np.unique(exclude)].sum()))


def _allowed(found: list, found_scores: list, banned: set, k: int) -> tuple[list, list]:
    """The fast branch's pick: the first k found rows (not -1) that are not `banned`, and their
    scores."""
    rows, scores = [], []
    for row, score in zip(found, found_scores, strict=True):
        if row >= 0 and row not in banned:
            rows.append(row)
            scores.append(score)
            if len(rows) == k:
                break
    return rows, scores


def _kept(found_scores, found, k, exclude, owed, checked, num_items):
    """The batch branch's pick: for the queries with the results they are owed, their first k
    allowed ones ((answered positions, scores, rows)); and the positions of the others."""
    keep = _keep(found, exclude, checked, num_items)
    enough = keep.sum(1) >= owed
    done = np.flatnonzero(enough)
    scores, rows = _first_kept(keep[done], found_scores[done], found[done], k)
    return (done, scores, rows), np.flatnonzero(~enough)


def _keep(
    found: np.ndarray, exclude: list[np.ndarray], checked: ItemFilter | None, num_items: int
) -> np.ndarray:
    """(Q, F) bool: which found rows are results (not missing, not excluded, passing the filter
    `checked` when FAISS did not apply it)."""
    keep = found >= 0
    lengths = np.array([len(e) for e in exclude])
    if len(found) <= FEW_ROWS:
        for j, e in enumerate(exclude):
            if len(e) and len(e) * found.shape[1] <= 65536:
                keep[j] &= (found[j, :, None] != e[None, :]).all(1)
            elif len(e):
                keep[j] &= ~np.isin(found[j], e)
    elif lengths.any() and len(found) * found.shape[1] * lengths.max() <= 1 << 20:
        # Small batches: exclusions padded to (Q, E) and compared at once.
        banned = np.full((len(found), lengths.max()), -2, dtype=np.int64)
        banned[np.arange(lengths.max()) < lengths[:, None]] = np.concatenate(exclude)
        keep &= ~(found[:, :, None] == banned[:, None, :]).any(2)
    elif lengths.any():
        # Large batches: each (query, row) pair as one number, so one isin covers them all.
        owner = np.repeat(np.arange(len(found)), lengths)
        keep &= ~np.isin(
            np.arange(len(found))[:, None] * num_items + found,
            owner * num_items + np.concatenate(exclude),
        )
    if checked is not None:
        keep &= checked.eligible[np.maximum(found, 0)]
    return keep


def _first_kept(keep, found_scores, found, k) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first k kept results, in rank order: (scores, rows), -inf / -1 past them."""
    if len(keep) <= FEW_ROWS:  # a few rows: no (n, F) sorts
        scores = np.full((len(keep), k), -np.inf, dtype=np.float32)
        rows = np.full((len(keep), k), -1, dtype=np.int64)
        for j in range(len(keep)):
            kept = np.flatnonzero(keep[j])[:k]
            rows[j, : len(kept)] = found[j, kept]
            scores[j, : len(kept)] = found_scores[j, kept]
        return scores, rows
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept first, in rank order
    scores = np.take_along_axis(np.where(keep, found_scores, -np.inf), order, 1)
    return scores, np.take_along_axis(np.where(keep, found, -1), order, 1)


def _best(sims: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best finite `sims`, best first (ties: the lower row first)."""
    n = min(k, len(candidates))
    top = np.argpartition(-sims, n - 1)[:n] if n < len(candidates) else np.arange(len(candidates))
    top = top[np.lexsort((candidates[top], -sims[top]))]
    return top[np.isfinite(sims[top])]


def _assembled(answers: list, num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), (Q, k), from (positions, scores, rows) answers; -inf / -1 elsewhere."""
    scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    rows = np.full((num_queries, k), -1, dtype=np.int64)
    for positions, answer_scores, answer_rows in answers:
        width = np.shape(answer_rows)[-1]
        scores[positions, :width] = answer_scores
        rows[positions, :width] = answer_rows
    return scores, rows
