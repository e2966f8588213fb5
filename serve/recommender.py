"""`Recommender`: answers "which items for this user" from an exported bundle, in process.

At each request the user tower runs on the user's current features (their recent history), the
FAISS index returns the nearest items, and ineligible items are dropped: the user's seen items,
an explicit exclude list, items failing an attribute filter (`{"genres": "Comedy"}`). Results
are exactly k whenever k eligible items exist:

- exclusions are handled by over-fetching k + (number excluded) and, when that was not enough,
  fetching more;
- attribute filters go to FAISS as an id selector (a bitmap over item ids) on the CPU, or are
  searched exactly when they leave few items;
- when an approximate index runs out of candidates (an IVF list probe or an HNSW walk that
  found fewer than k eligible items), that query is answered by exact search over the
  eligible items.

Users the bundle does not know are answered, as configured (`cold_start`):
- "history" (default): from a history of item ids given with the request (the user tower runs on
  it, without a user-id embedding); without one, `UnknownUserError`;
- "popularity": the same, but without a history the most popular eligible items;
- "error": always `UnknownUserError`.
Each result list says which happened in `.source` ("model", "history" or "popularity"). Offline evaluation goes through `top_k`, the
same path as `recommend`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import polars as pl
import torch

from features.vocab import Vocabulary
from serve.bundle import ACTIVE, Bundle, padded, read_bundle
from serve.errors import RequestError, UnknownItemError, UnknownUserError, check_k
from serve.index import (
    is_refined,
    on_gpu,
    resolve_device,
    search_parameters,
    set_search_threads,
    to_device,
)

# Where each result list came from.
MODEL, HISTORY, POPULARITY = "model", "history", "popularity"
COLD_START = ("history", "popularity", "error")  # for users the bundle does not know (see above)
EXACT_BELOW = 4096  # filters leaving at most this many items are searched exactly
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours
FEW_ROWS = 8  # up to this many queries, results are picked row by row (cheaper than (Q, F) sorts)
USER_CACHE_AUTO_BYTES = 512 << 20  # cache_user_vectors=None caches user tables up to this size
_INTERNAL_COLUMNS = {"genre_ids", "year_bucket", ACTIVE}
_EMPTY = np.zeros(0, dtype=np.int64)


class Recommendation(NamedTuple):
    """One result (immutable; a named tuple because a response builds many of them)."""

    item_id: object  # raw item id, as in the data
    score: float  # inner product (+ the popularity prior, if any); popularity: a count
    title: str | None = None

    def to_dict(self) -> dict:
        return self._asdict()


class Recommendations(list):
    """A list of `Recommendation`s that also says where it came from: `source` is "model" (the
    towers on a known user), "history" (the user tower on a given history) or "popularity"."""

    def __init__(self, items=(), source: str = MODEL):
        super().__init__(items)
        self.source = source


class _Filter:
    """Items passing an attribute filter: a boolean mask over item ids, and its FAISS selector."""

    def __init__(self, eligible: np.ndarray):
        self.eligible = eligible  # (I,) bool, active items passing the filter
        self.count = int(eligible.sum())
        self.rows = np.flatnonzero(eligible)
        self._bits = np.packbits(eligible, bitorder="little")  # kept alive for the selector
        self.selector = faiss.IDSelectorBitmap(len(eligible), faiss.swig_ptr(self._bits))


class _Lookup:
    """Raw id → index without touching polars per request (a dict, and the vocabulary's id
    type decided once); same coercion as `Vocabulary.index_of` ("42" → 42 for integer ids)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.integer = vocab.dtype.is_integer()
        self.lookup = dict(zip(vocab.frame["raw_id"].to_list(), range(len(vocab)), strict=True))

    def index_of(self, raw_id: object) -> int | None:
        if type(raw_id) is (int if self.integer else str):
            return self.lookup.get(raw_id)
        key = self.vocab.coerce(raw_id)
        return None if key is None else self.lookup.get(key)


class Recommender:
    def __init__(
        self,
        bundle: Bundle,
        cold_start: str = "history",
        device: str | None = None,
        cache_user_vectors: bool | None = None,
    ):
        if cold_start not in COLD_START:
            raise RequestError("cold_start", cold_start, f"must be one of {COLD_START}")
        self.bundle = bundle
        self.cold_start = cold_start
        self.index = bundle.index  # the CPU index (what is saved)
        self.device = resolve_device(device or bundle.index_config.device)
        self.searcher = to_device(bundle.index, self.device)
        self._refined = is_refined(bundle.index)
        self.search_params = bundle.search_params  # builds the search parameters (a property)
        self._max_fetch = min(
            self.index.ntotal, GPU_MAX_K if on_gpu(self.searcher) else self.index.ntotal
        )
        self.item_vectors = np.ascontiguousarray(bundle.item_vectors, dtype=np.float32)

        spec = bundle.scorer.spec
        self.scorer = bundle.scorer
        self.history_length = spec.history_length
        self.history_pad = spec.num_items  # rows past the tower's vocabulary cannot be in a history
        self.user_vocab = Vocabulary.from_ids(bundle.users["user_id"])
        self.item_vocab = Vocabulary.from_ids(bundle.items["item_id"])
        self._users, self._items = _Lookup(self.user_vocab), _Lookup(self.item_vocab)
        self.histories = torch.from_numpy(
            padded(bundle.users["history"], spec.num_items, spec.history_length)
        )
        seen = bundle.users["seen"]
        self.seen_indptr = np.concatenate([[0], np.cumsum(seen.list.len().to_numpy())]).astype(
            np.int64
        )
        self.seen_items = seen.explode().drop_nulls().to_numpy().astype(np.int64)
        self.item_ids = bundle.items["item_id"].to_numpy()
        self.item_id_list = self.item_ids.tolist()  # Python ints / strs, for responses
        titles = bundle.items["title"] if "title" in bundle.items.columns else None
        self.titles = None if titles is None else titles.to_list()
        self.active = bundle.items[ACTIVE].to_numpy().astype(bool)  # (I,)
        self.num_active = int(self.active.sum())
        # Popularity = how many users have seen an item; most popular first, ties by id.
        counts = np.bincount(self.seen_items, minlength=self.num_items).astype(np.float64)
        self.popularity = counts
        order = np.lexsort((np.arange(self.num_items), -counts))
        self.popular_order = order[self.active[order]]
        self._filters: dict[tuple, _Filter] = {}
        self._filters_lock = threading.Lock()
        # Known users' stored features do not change within a bundle version, so their vectors
        # can be computed once at load (one batched tower pass) instead of at every request:
        # exactly the vectors the tower would give, like the item vectors. None (auto) caches
        # when the table fits in USER_CACHE_AUTO_BYTES.
        self.user_vectors: np.ndarray | None = None
        table_bytes = len(self.user_vocab) * self.item_vectors.shape[1] * 4
        if cache_user_vectors is None:
            cache_user_vectors = table_bytes <= USER_CACHE_AUTO_BYTES
        if cache_user_vectors:
            users = np.arange(len(self.user_vocab))
            self.user_vectors = np.concatenate(
                [self.encode_users(users[s : s + 65536]) for s in range(0, len(users), 65536)]
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        cold_start: str = "history",
        device: str | None = None,
        cache_user_vectors: bool | None = None,
    ) -> Recommender:
        """`device` overrides the bundle's `index.device` (auto | cpu | gpu); `cache_user_vectors`
        encodes every known user once at load (U x D floats) instead of at each request: True,
        False, or None to cache when that table is at most USER_CACHE_AUTO_BYTES."""
        return cls(read_bundle(path), cold_start, device, cache_user_vectors)

    @property
    def search_params(self) -> dict[str, int]:
        """The index's search settings (the bundle's); searches follow a change to them."""
        return self._search_params

    @search_params.setter
    def search_params(self, settings: Mapping[str, int]) -> None:
        self._search_params = dict(settings)
        self._params = search_parameters(self.index, self._search_params)
        self._fetch_params: dict[tuple[int, int], faiss.SearchParameters | None] = {}

    def _params_for(self, wanted: int, fetch: int) -> faiss.SearchParameters | None:
        """Parameters for a search of `fetch` results of which `wanted` are needed (the rest
        make room for exclusions); cached, as building them costs more than a fast search."""
        if not self._refined or fetch <= wanted:
            return self._params
        params = self._fetch_params.get((wanted, fetch))
        if params is None:
            if len(self._fetch_params) >= 4096:
                self._fetch_params.clear()
            params = search_parameters(self.index, self._search_params, wanted=wanted, fetch=fetch)
            self._fetch_params[wanted, fetch] = params
        return params

    @property
    def num_items(self) -> int:
        """Rows of the item table (FAISS ids are 0..num_items-1); `num_active` are searchable."""
        return len(self.item_ids)

    @property
    def version(self) -> str | None:
        return self.bundle.version

    # -- ids ------------------------------------------------------------------------------------
    def user_index(self, user_id: object) -> int:
        index = self._users.index_of(user_id)
        if index is None:
            raise UnknownUserError(user_id, len(self.user_vocab))
        return index

    def item_index(self, item_id: object) -> int:
        """Row of an item in the catalogue now (removed items are unknown)."""
        index = self._items.index_of(item_id)
        if index is None or not self.active[index]:
            raise UnknownItemError(item_id, self.num_active)
        return index

    def item_rows(self, item_ids: Sequence[object] | None, field: str = "item_ids") -> np.ndarray:
        """Rows of raw item ids; removed items are dropped, unknown ones are an error."""
        if not item_ids:
            return _EMPTY
        if isinstance(item_ids, str | bytes) or not isinstance(item_ids, Sequence | np.ndarray):
            raise RequestError(field, item_ids, "must be a list of item ids")
        rows = []
        for item_id in item_ids:
            row = self._items.index_of(item_id)
            if row is None:
                raise UnknownItemError(item_id, self.num_active, field)
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    # -- filters ----------------------------------------------------------------------------
    def item_filter(self, filters: Mapping[str, object] | None) -> _Filter | None:
        """The items passing every `column: value(s)` condition (a list column passes when it
        holds any of the values); cached, so repeated filters cost nothing."""
        if not filters:
            return None
        if not isinstance(filters, Mapping):
            raise RequestError("filters", filters, "must be an object of column: value(s)")
        key = tuple(
            sorted(
                (str(c), tuple(v) if isinstance(v, list | tuple) else (v,))
                for c, v in filters.items()
            )
        )
        cached = self._filters.get(key)
        if cached is not None:
            return cached
        items = self.bundle.items
        allowed = sorted(set(items.columns) - _INTERNAL_COLUMNS)
        conditions = []
        for column, values in key:
            if column not in allowed:
                raise RequestError("filters", column, f"must name filterable columns {allowed}")
            dtype = items.schema[column]
            expr = pl.col(column)
            if isinstance(dtype, pl.List):
                conditions.append(
                    expr.list.eval(pl.element().is_in(list(values))).list.any().fill_null(False)
                )
            else:
                conditions.append(expr.is_in(list(values)).fill_null(False))
        try:
            mask = items.select(pl.all_horizontal(conditions)).to_series().to_numpy().astype(bool)
        except (pl.exceptions.PolarsError, TypeError) as err:
            raise RequestError(
                "filters", dict(filters), f"cannot be applied to the item table ({err})"
            ) from None
        result = _Filter(mask & self.active)
        with self._filters_lock:
            if len(self._filters) > 1024:
                self._filters.clear()
            self._filters[key] = result
        return result

    # -- vectors ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_users(
        self, users: np.ndarray, histories: torch.Tensor | None = None, has_id=None
    ) -> np.ndarray:
        """User vectors (U, D) float32: each user's stored features, or `histories` (U, L) given.

        `has_id` (U,) bool marks rows with a user-id embedding; the others (users the bundle does
        not know) are encoded from their history alone."""
        users_t = torch.as_tensor(users, dtype=torch.long)
        histories = self.histories[users_t] if histories is None else histories
        has_id = None if has_id is None else torch.as_tensor(np.asarray(has_id, dtype=bool))
        return self.scorer.encode_users(users_t, histories, has_id).float().numpy()

    def known_user_vectors(self, users: np.ndarray) -> np.ndarray:
        """Vectors (U, D) of known users from their stored features: the cache, or the tower."""
        if self.user_vectors is not None:
            return self.user_vectors[users]
        return self.encode_users(users)

    def history_tensor(self, rows: Sequence[np.ndarray]) -> torch.Tensor:
        """Histories (U, L) padded like the stored ones, most recent L items (rows) kept."""
        out = np.full((len(rows), self.history_length), self.history_pad, dtype=np.int64)
        for i, r in enumerate(rows):
            r = r[r < self.history_pad][-self.history_length :]
            out[i, : len(r)] = r
        return torch.from_numpy(out)

    # -- ranking ----------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        item_filter: _Filter | None = None,
    ):
        """Best `k` item ids per query vector, none of `exclude[row]`, all passing `item_filter`:
        (scores, items), (Q, k). Exactly k whenever k eligible items exist; otherwise the
        missing results are item -1 with score -inf."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        num_queries = len(queries)
        exclude = list(exclude) if exclude is not None else [_EMPTY] * num_queries
        eligible = self.active if item_filter is None else item_filter.eligible
        num_eligible = self.num_active if item_filter is None else item_filter.count
        # Results owed to each query: k, or every eligible item not excluded.
        owed = np.full(num_queries, k, dtype=np.int64)  # (Q,)
        for q, e in enumerate(exclude):
            if num_eligible - len(e) < k:
                owed[q] = min(k, num_eligible - int(eligible[np.unique(e)].sum()))
        scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
        items = np.full((num_queries, k), -1, dtype=np.int64)
        if num_queries == 0 or num_eligible == 0:
            return scores, items
        gpu = on_gpu(self.searcher)
        if item_filter is not None and (
            item_filter.count <= EXACT_BELOW or (gpu and item_filter.count < 0.5 * self.num_active)
        ):
            exact = np.arange(num_queries)
        else:
            exact = self._index_search(queries, k, exclude, item_filter, owed, scores, items, gpu)
        if len(exact):
            self._exact_search(queries, k, exclude, eligible, exact, scores, items)
        return scores, items

    def _recommend_known(self, user: int, k: int, exclude_seen: bool) -> Recommendations:
        """The hot path: one known user, nothing but its seen items out. One FAISS search of
        k + |seen| candidates, the seen ones dropped in plain Python (a few dozen ids: cheaper
        than numpy's per-call costs right after a search has flushed the caches); hands over to
        `search` in the rare case that the index cannot give k."""
        query = self.known_user_vectors(np.array([user]))
        seen = self.seen(user) if exclude_seen else _EMPTY
        banned = set(seen.tolist())
        fetch = min(k + len(seen), self._max_fetch)
        set_search_threads(1)
        while True:
            found_scores, found = self.searcher.search(
                query, fetch, params=self._params_for(k, fetch)
            )
            rows, values = [], []
            for row, score in zip(found[0].tolist(), found_scores[0].tolist(), strict=True):
                if row >= 0 and row not in banned:
                    rows.append(row)
                    values.append(score)
                    if len(rows) == k:
                        return self._recommendations(rows, values)
            if found[0, -1] < 0 or fetch >= self._max_fetch:
                scores, items = self.search(query, k, [seen])
                return self._results(scores[0], items[0])
            fetch = min(2 * fetch, self._max_fetch)

    def _index_search(
        self, queries, k, exclude, item_filter, owed, scores, items, gpu
    ) -> np.ndarray:
        """FAISS search into scores/items; returns the queries it could not answer in full."""
        use_selector = item_filter is not None and not gpu
        max_fetch = min(self.index.ntotal, GPU_MAX_K if gpu else self.index.ntotal)
        extra = max((len(e) for e in exclude), default=0)
        if item_filter is not None and not use_selector:
            extra += self.num_active - item_filter.count
        fetch = min(k + extra, max_fetch)
        todo = np.arange(len(queries))
        while len(todo):
            if use_selector:
                params = search_parameters(
                    self.index, self.search_params, item_filter.selector, wanted=k, fetch=fetch
                )
            else:
                params = self._params_for(k, fetch)
            set_search_threads(len(todo))
            found_scores, found = self.searcher.search(queries[todo], fetch, params=params)
            keep = self._keep(
                found, [exclude[q] for q in todo], None if use_selector else item_filter
            )
            enough = keep.sum(1) >= owed[todo]
            done = np.flatnonzero(enough)
            if len(done) <= FEW_ROWS:  # a few rows: no (Q, fetch) sorts
                for j in done:
                    kept = np.flatnonzero(keep[j])[:k]
                    items[todo[j], : len(kept)] = found[j, kept]
                    scores[todo[j], : len(kept)] = found_scores[j, kept]
            else:
                order = np.argsort(~keep[done], axis=1, kind="stable")[
                    :, :k
                ]  # kept first, in rank order
                width = order.shape[1]
                items[todo[done], :width] = np.take_along_axis(
                    np.where(keep, found, -1)[done], order, 1
                )
                scores[todo[done], :width] = np.take_along_axis(
                    np.where(keep, found_scores, -np.inf)[done], order, 1
                )
            # An index that returned fewer than `fetch` candidates has nothing more to give.
            exhausted = (found[:, -1] < 0) | (fetch >= max_fetch)
            todo_next = todo[~enough & ~exhausted]
            give_up = todo[~enough & exhausted]
            if len(give_up):
                return np.concatenate([give_up, todo_next])
            todo = todo_next
            fetch = min(2 * fetch, max_fetch)
        return _EMPTY

    def _keep(
        self, found: np.ndarray, exclude: list[np.ndarray], item_filter: _Filter | None
    ) -> np.ndarray:
        """(Q, F) bool: which found ids are results (not missing, not excluded, passing the filter)."""
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
            banned = np.concatenate(exclude)
            owner = np.repeat(np.arange(len(found)), lengths)
            keep &= ~np.isin(
                np.arange(len(found))[:, None] * self.num_items + found,
                owner * self.num_items + banned,
            )
        if item_filter is not None:
            keep &= item_filter.eligible[np.maximum(found, 0)]
        return keep

    def _exact_search(self, queries, k, exclude, eligible, rows, scores, items) -> None:
        """Exact inner-product top-k over the eligible items, for the queries `rows`."""
        candidates = np.flatnonzero(eligible)
        few = len(candidates) <= len(eligible) // 4  # else: score all items, no (C, D) copy
        for q in rows:
            if few:
                sims = self.item_vectors[candidates] @ queries[q]  # (C,)
            else:
                sims = (self.item_vectors @ queries[q])[candidates]  # (C,)
            if len(exclude[q]):
                sims[np.isin(candidates, exclude[q])] = -np.inf
            n = min(k, len(candidates))
            top = (
                np.argpartition(-sims, n - 1)[:n]
                if n < len(candidates)
                else np.arange(len(candidates))
            )
            top = top[np.lexsort((candidates[top], -sims[top]))]
            top = top[np.isfinite(sims[top])]
            items[q] = -1
            scores[q] = -np.inf
            items[q, : len(top)] = candidates[top]
            scores[q, : len(top)] = sims[top]

    def _popular(
        self, k: int, exclude: np.ndarray, item_filter: _Filter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        order = self.popular_order
        if item_filter is None:
            order = order[: k + len(exclude)]
        else:
            order = order[item_filter.eligible[order]]
        if len(exclude):
            order = order[~np.isin(order, exclude)]
        order = order[:k]
        return self.popularity[order], order

    def top_k(self, users: np.ndarray, k: int, exclude_seen: bool = True, chunk: int = 4096):
        """(scores, items) (U, k) item ids for user indices: the path every request takes."""
        check_k(k)
        users = np.asarray(users, dtype=np.int64)
        all_scores, all_items = [], []
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            exclude = [self.seen(u) for u in part] if exclude_seen else None
            scores, items = self.search(self.known_user_vectors(part), k, exclude)
            all_scores.append(scores)
            all_items.append(items)
        if not all_items:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(all_scores), np.concatenate(all_items)

    def _results(
        self, scores: np.ndarray, items: np.ndarray, source: str = MODEL
    ) -> Recommendations:
        valid = items >= 0
        return self._recommendations(items[valid].tolist(), scores[valid].tolist(), source)

    def _recommendations(
        self, rows: list[int], values: list[float], source: str = MODEL
    ) -> Recommendations:
        ids, titles = self.item_id_list, self.titles
        row_ids = [ids[i] for i in rows]
        row_titles = [None] * len(rows) if titles is None else [titles[i] for i in rows]
        return Recommendations(map(Recommendation, row_ids, values, row_titles), source)

    # -- public API --------------------------------------------------------------------------
    def recommend(
        self,
        user_id: object,
        k: int = 10,
        exclude_seen: bool = True,
        *,
        history: Sequence[object] | None = None,
        exclude: Sequence[object] | None = None,
        filters: Mapping[str, object] | None = None,
    ) -> Recommendations:
        """The `k` best items for a user (raw id as in the data).

        exclude_seen: drop the items the user has seen (for a user the bundle does not know: the
        given history). history: raw item ids, oldest first, that the user tower runs on instead
        of the stored history (this is how users unseen in training are answered). exclude: raw
        item ids never to return. filters: `{column: value or [values]}` over the item table."""
        return self.recommend_many(
            [user_id],
            k,
            exclude_seen,
            histories=None if history is None else [history],
            exclude=exclude,
            filters=filters,
        )[0]

    def recommend_many(
        self,
        user_ids: Sequence[object],
        k: int = 10,
        exclude_seen: bool = True,
        *,
        histories: Sequence[Sequence[object] | None] | None = None,
        exclude: Sequence[object] | None = None,
        filters: Mapping[str, object] | None = None,
    ) -> list[Recommendations]:
        """`recommend` for many users: one tower call and one index search for all of them.

        histories: one per user (None = the stored one); exclude and filters apply to all."""
        check_k(k)
        if len(user_ids) == 1 and histories is None and not exclude and not filters:
            user = self._users.index_of(user_ids[0])
            if user is not None:
                return [self._recommend_known(user, k, exclude_seen)]
        if histories is not None and len(histories) != len(user_ids):
            raise RequestError(
                "histories", histories, f"must hold one per user ({len(user_ids)} users)"
            )
        item_filter = self.item_filter(filters)
        excluded = self.item_rows(exclude, "exclude")
        rows, given, sources, known = [], [], [], []
        for i, user_id in enumerate(user_ids):
            history = None if histories is None else histories[i]
            user = self._users.index_of(user_id)
            history_rows = None if history is None else self.item_rows(history, "history")
            if user is not None:
                source = MODEL if history_rows is None else HISTORY
            elif self.cold_start != "error" and history_rows is not None and len(history_rows):
                source = HISTORY
            elif self.cold_start == "popularity":
                source = POPULARITY
            else:
                raise UnknownUserError(user_id, len(self.user_vocab))
            rows.append(0 if user is None else user)
            known.append(user is not None)
            given.append(history_rows)
            sources.append(source)
        rows = np.asarray(rows, dtype=np.int64)
        known = np.asarray(known, dtype=bool)
        ranked = [i for i, s in enumerate(sources) if s != POPULARITY]
        out: list[Recommendations | None] = [None] * len(user_ids)
        if ranked:
            histories_t = None
            if any(given[i] is not None for i in ranked):
                stored = self.histories[torch.from_numpy(rows[ranked])]
                histories_t = torch.stack(
                    [
                        stored[j] if given[i] is None else self.history_tensor([given[i]])[0]
                        for j, i in enumerate(ranked)
                    ]
                )
            if histories_t is None and bool(known[ranked].all()):
                vectors = self.known_user_vectors(rows[ranked])
            else:
                vectors = self.encode_users(rows[ranked], histories_t, known[ranked])
            exclude_rows = []
            for i in ranked:
                parts = [excluded]
                if exclude_seen:
                    parts.append(self.seen(rows[i]) if known[i] else given[i])
                    if known[i] and given[i] is not None:
                        parts.append(given[i])
                exclude_rows.append(np.concatenate(parts) if len(parts) > 1 else excluded)
            scores, items = self.search(vectors, k, exclude_rows, item_filter)
            for j, i in enumerate(ranked):
                out[i] = self._results(scores[j], items[j], sources[i])
        for i, source in enumerate(sources):
            if source == POPULARITY:
                seen = given[i] if exclude_seen and given[i] is not None else _EMPTY
                scores, items = self._popular(k, np.concatenate([excluded, seen]), item_filter)
                out[i] = self._results(scores, items, POPULARITY)
        return out

    def similar_items(
        self, item_id: object, k: int = 10, *, filters: Mapping[str, object] | None = None
    ) -> Recommendations:
        """The `k` items nearest to an item in the shared space, the item itself excluded."""
        return self.similar_items_many([item_id], k, filters=filters)[0]

    def similar_items_many(
        self,
        item_ids: Sequence[object],
        k: int = 10,
        *,
        filters: Mapping[str, object] | None = None,
    ) -> list[Recommendations]:
        check_k(k)
        item_filter = self.item_filter(filters)
        rows = np.array([self.item_index(i) for i in item_ids], dtype=np.int64)
        queries = self.item_vectors[rows]
        queries = self.scorer.item_queries(queries)  # an item asks as a user would
        scores, items = self.search(queries, k, [np.array([r]) for r in rows], item_filter)
        return [self._results(s, i) for s, i in zip(scores, items, strict=True)]
