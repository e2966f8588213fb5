"""`Recommender`: answers "which items for this user" from an exported bundle, in process.

A facade over three parts with one job each: the catalogue (serve.catalogue: item ids, active
rows, titles, filters, popularity), the user store (serve.users: user ids, histories, seen
items, user vectors, users the bundle does not know as `cold_start` says) and the search
(serve.search: the best k eligible rows per query vector, exactly k whenever k eligible items
exist). It turns requests into their calls, and their answers into results, which say in
`.source` where they came from (serve.users.Source). Offline evaluation goes
through `top_k`, the same path as `recommend`. With `explain=True` each result also says which
history items raised its score most (serve.explain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from serve.bundle import Bundle
from serve.catalogue import EMPTY, Catalogue
from serve.errors import RequestError, check_k
from serve.explain import Because, Explainer, check_explain
from serve.index import resolve_device
from serve.search import Search
from serve.users import COLD_START, Source, UserStore
from serve.versions import read_bundle


class Recommendation(NamedTuple):
    """One result (immutable; a named tuple because a response builds many of them)."""

    item_id: object  # raw item id, as in the data
    score: float  # inner product (+ the popularity prior, if any); popularity: a count
    title: str | None = None
    because: tuple[Because, ...] | None = None  # with explain=True (serve.explain), else None

    def to_dict(self) -> dict:
        """Its fields; `because` only when explained."""
        out = self._asdict()
        because = out.pop("because")
        if because is not None:
            out["because"] = [b.to_dict() for b in because]
        return out


class TitledItem(NamedTuple):
    """An item as a person reads it (a history item has no score)."""

    item_id: object  # raw item id, as in the data
    title: str | None = None


class Recommendations(list):
    """A list of `Recommendation`s that says in `source` where it came from (serve.users.Source:
    "model", "features", "history" or "popularity")."""

    def __init__(self, items=(), source: str = Source.MODEL):
        super().__init__(items)
        self.source = source


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
        device = resolve_device(device or bundle.index_config.device)
        self.bundle, self.cold_start, self.scorer = bundle, cold_start, bundle.scorer
        self.users = users = UserStore.from_bundle(bundle, cache_user_vectors)
        self.catalogue = catalogue = Catalogue(bundle.items, users.seen_items)
        self.search = Search(
            bundle.index, bundle.item_vectors, catalogue.active, bundle.search_params, device
        )
        # What evaluation, tests and benchmarks read here, each from the part that owns it.
        self.user_vocab, self.histories = users.user_vocab, users.histories
        self.seen_items, self.user_vectors = users.seen_items, users.user_vectors
        self.seen, self.user_index = users.seen, users.user_index
        self.encode_users, self.history_tensor = users.encode_users, users.history_tensor
        self.item_ids, self.item_id_list = catalogue.item_ids, catalogue.item_id_list
        self.titles, self.active = catalogue.titles, catalogue.active
        self.num_items, self.num_active = catalogue.num_items, catalogue.num_active
        self.item_index, self.item_rows = catalogue.item_index, catalogue.item_rows
        self.index, self.searcher = self.search.index, self.search.searcher
        self.item_vectors = self.search.item_vectors
        self.explainer = Explainer(
            self.scorer, self.item_vectors, catalogue.item_id_list, catalogue.titles
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        cold_start: str = "history",
        device: str | None = None,
        cache_user_vectors: bool | None = None,
        *,
        verify: str = "full",
    ) -> Recommender:
        """`device` overrides the bundle's `index.device` (auto | cpu | gpu); `cache_user_vectors`:
        encode every known user at load (True), never (False), or up to USER_CACHE_AUTO_BYTES
        (None); `verify`: each file's size and sha256 ("full"), size ("size") or nothing ("off")."""
        return cls(read_bundle(path, verify=verify), cold_start, device, cache_user_vectors)

    @property
    def version(self) -> str | None:
        return self.bundle.version

    @property
    def search_params(self) -> dict[str, int]:
        """The index's search settings (the bundle's); searches follow a change to them."""
        return self.search.search_params

    @search_params.setter
    def search_params(self, settings: Mapping[str, int]) -> None:
        self.search.search_params = settings

    @property
    def _params(self):  # the FAISS parameters of a plain search (read by benchmarks and tests)
        return self.search.params

    # -- public API --------------------------------------------------------------------------
    def recommend(
        self,
        user_id: object,
        k: int = 10,
        exclude_seen: bool = True,
        *,
        history: Sequence[object] | None = None,
        features: Mapping[str, object] | None = None,
        exclude: Sequence[object] | None = None,
        filters: Mapping[str, object] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """The `k` best items for a user (raw id as in the data).

        exclude_seen: drop the items the user has seen (for a user the bundle does not know: the
        given history). history: raw item ids, oldest first, that the user tower runs on instead
        of the stored history (this is how users unseen in training are answered). features: a
        user the bundle does not know, described by the users table's columns ({"age": 31, ...}).
        exclude: raw item ids never to return. filters: `{column: value or [values]}` over the
        item table. explain: each result also lists in `.because` the history items that raised
        its score most (serve.explain; none for popularity results)."""
        histories = None if history is None else [history]
        described = None if features is None else [features]
        return self.recommend_many(
            [user_id], k, exclude_seen, histories=histories, features=described, exclude=exclude,
            filters=filters, explain=explain,
        )[0]  # fmt: skip

    def recommend_many(
        self,
        user_ids: Sequence[object],
        k: int = 10,
        exclude_seen: bool = True,
        *,
        histories: Sequence[Sequence[object] | None] | None = None,
        features: Sequence[Mapping[str, object] | None] | None = None,
        exclude: Sequence[object] | None = None,
        filters: Mapping[str, object] | None = None,
        explain: bool = False,
    ) -> list[Recommendations]:
        """`recommend` for many users: one tower call and one index search for all of them.

        histories, features: one per user (None = the stored one / none); exclude, filters and
        explain apply to all."""
        check_k(k)
        explain = check_explain(explain)
        plain = histories is None and features is None and not exclude and not filters
        plain = plain and not explain
        if len(user_ids) == 1 and plain:
            user = self.users.index_of(user_ids[0])
            if user is not None:  # the hot path: a known user, nothing but their seen items out
                seen = self.users.seen(user) if exclude_seen else EMPTY
                rows, scores = self.search.nearest_one(self.users.known_user_vector(user), k, seen)
                return [self._recommendations(rows, scores, self.users.stored_source(user))]
        for name, given in (("histories", histories), ("features", features)):
            if given is not None and len(given) != len(user_ids):
                raise RequestError(name, given, f"must hold one per user ({len(user_ids)} users)")
        item_filter = self.catalogue.item_filter(filters)
        excluded = self.catalogue.item_rows(exclude, "exclude")
        asked = []  # (row or None, source, given history's item rows or None) of each user
        for i, user_id in enumerate(user_ids):
            history = None if histories is None else histories[i]
            given = None if history is None else self.catalogue.item_rows(history, "history")
            described = features is not None and features[i] is not None
            asked.append((*self.users.resolve(user_id, given, self.cold_start, described), given))
        out: list[Recommendations | None] = [None] * len(user_ids)
        ranked = [i for i, (_, source, _) in enumerate(asked) if source != Source.POPULARITY]
        if ranked:
            users, given = [asked[i][0] for i in ranked], [asked[i][2] for i in ranked]
            described = None if features is None else [features[i] for i in ranked]
            vectors = self.users.query_vectors(users, given, described)
            bans = [
                self.users.excluded(u, g, excluded) if exclude_seen else excluded
                for u, g in zip(users, given, strict=True)
            ]
            scores, rows = self.search.nearest(vectors, k, bans, item_filter)
            because = self._because(users, given, described, vectors, rows) if explain else None
            for j, i in enumerate(ranked):
                explained = None if because is None else because[j]
                out[i] = self._results(scores[j], rows[j], asked[i][1], explained)
        for i, (_, source, given) in enumerate(asked):
            if source == Source.POPULARITY:
                seen = given if exclude_seen and given is not None else EMPTY
                popular = self.catalogue.popular(k, np.concatenate([excluded, seen]), item_filter)
                explained = [()] * len(popular[1]) if explain else None
                out[i] = self._results(*popular, Source.POPULARITY, explained)
        return out

    def _because(self, users, given, described, vectors, rows) -> list[list[tuple]]:
        """Each ranked user's `because` of each result found (serve.explain)."""
        inputs, histories = self.users.query_inputs(users, given, described)
        found = [r[r >= 0] for r in rows]
        return self.explainer.because(inputs, histories, vectors, found)

    def user_history(self, user_id: object) -> list[TitledItem]:
        """A known user's stored history, most recent first: the items their user tower reads
        (and `explain` draws from). An unknown user is `UnknownUserError` (field "user_id")."""
        rows = self.users.history(self.users.user_index(user_id))[::-1].tolist()
        ids, titles = self.item_id_list, self.titles
        return [TitledItem(ids[r], None if titles is None else titles[r]) for r in rows]

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
        item_filter = self.catalogue.item_filter(filters)
        rows = np.array([self.catalogue.item_index(i) for i in item_ids], dtype=np.int64)
        queries = self.scorer.item_queries(self.item_vectors[rows])  # an item asks as a user would
        exclude = [rows[j : j + 1] for j in range(len(rows))]
        scores, found = self.search.nearest(queries, k, exclude, item_filter)
        return [self._results(s, f) for s, f in zip(scores, found, strict=True)]

    def top_k(
        self,
        users: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        chunk: int = 4096,
        *,
        histories: np.ndarray | None = None,
        filters: Mapping[str, object] | None = None,
    ):
        """(scores, rows) (U, k) of known users by row: the path every request takes.
        `histories` (U, L) item rows (padded with num_items) in place of the stored ones, also
        left out of the results with the seen items; `filters` as in `recommend`."""
        check_k(k)
        users = np.asarray(users, dtype=np.int64)
        item_filter = self.catalogue.item_filter(filters)
        scores, rows = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.int64)]
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            given = None if histories is None else histories[start : start + chunk]
            vectors, exclude = self.users.ranked(part, given, exclude_seen)
            found = self.search.nearest(vectors, k, exclude, item_filter)
            scores.append(found[0])
            rows.append(found[1])
        return np.concatenate(scores), np.concatenate(rows)

    # -- results -------------------------------------------------------------------------------
    def _results(
        self, scores: np.ndarray, rows: np.ndarray, source=Source.MODEL, because=None
    ) -> Recommendations:
        found = rows >= 0
        return self._recommendations(rows[found].tolist(), scores[found].tolist(), source, because)

    def _recommendations(
        self, rows: list, scores: list, source=Source.MODEL, because: list | None = None
    ) -> Recommendations:
        """Results of rows and scores; `because`: one tuple per row (explained), or None."""
        ids, titles = self.item_id_list, self.titles
        row_ids = [ids[i] for i in rows]
        row_titles = [None] * len(rows) if titles is None else [titles[i] for i in rows]
        if because is None:
            return Recommendations(map(Recommendation, row_ids, scores, row_titles), source)
        return Recommendations(map(Recommendation, row_ids, scores, row_titles, because), source)
