"""`Recommender`: answers "which items for this user" from an exported bundle, in process.

At each request the user tower runs on the user's current features (their recent history), the
FAISS index returns the nearest items, and the user's seen items are filtered out. The index is
asked for k plus as many items as the user has seen, so exclusion never leaves fewer than k
results while k eligible items exist. Offline evaluation goes through `top_k`, the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from serve.bundle import Bundle, padded, read_bundle
from serve.errors import UnknownItemError, UnknownUserError, check_k
from features.vocab import Vocabulary


@dataclass(frozen=True)
class Recommendation:
    item_id: object  # raw item id, as in the data
    score: float  # similarity (inner product; cosine for cosine models)
    title: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Recommender:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.index = bundle.index
        self.user_vocab = Vocabulary.from_ids(bundle.users["user_id"])
        self.item_vocab = Vocabulary.from_ids(bundle.items["item_id"])
        spec = bundle.user_tower.spec
        self.histories = torch.from_numpy(padded(bundle.users["history"], spec.num_items, spec.history_length))
        seen = bundle.users["seen"]
        self.seen_indptr = np.concatenate([[0], np.cumsum(seen.list.len().to_numpy())]).astype(np.int64)
        self.seen_items = seen.explode().drop_nulls().to_numpy().astype(np.int64)
        self.item_ids = bundle.items["item_id"].to_numpy()
        titles = bundle.items["title"] if "title" in bundle.items.columns else None
        self.titles = None if titles is None else titles.to_list()

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        return cls(read_bundle(path))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    # -- ids ------------------------------------------------------------------------------------
    def user_index(self, user_id: object) -> int:
        index = self.user_vocab.index_of(user_id)
        if index is None:
            raise UnknownUserError(user_id, len(self.user_vocab))
        return index

    def item_index(self, item_id: object) -> int:
        index = self.item_vocab.index_of(item_id)
        if index is None:
            raise UnknownItemError(item_id, len(self.item_vocab))
        return index

    # -- vectors ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_users(self, users: np.ndarray) -> np.ndarray:
        """User vectors (U, D) float32 from each user's current features."""
        users_t = torch.as_tensor(users, dtype=torch.long)
        vectors = self.bundle.user_tower(users_t, self.histories[users_t])
        return vectors.float().numpy()

    # -- ranking ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None):
        """Best `k` index rows per query vector, none of `exclude[row]`: (scores, items), (Q, k).

        Missing results (fewer than k eligible items) are item -1 with score -inf.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        num_queries = len(queries)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(k + extra, self.index.ntotal)
        while True:
            scores, items = self.index.search(queries, fetch)
            keep = items >= 0
            if exclude is not None and extra:
                rows = np.repeat(np.arange(num_queries), [len(e) for e in exclude])
                banned = rows * self.num_items + np.concatenate(exclude)
                keep &= ~np.isin(np.arange(num_queries)[:, None] * self.num_items + items, banned)
            enough = keep.sum(1) >= min(k, self.index.ntotal)
            if enough.all() or fetch >= self.index.ntotal:
                break
            fetch = min(2 * fetch, self.index.ntotal)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in rank order
        top_items = np.take_along_axis(np.where(keep, items, -1), order, 1)
        top_scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, 1)
        if top_items.shape[1] < k:
            pad = k - top_items.shape[1]
            top_items = np.pad(top_items, ((0, 0), (0, pad)), constant_values=-1)
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return top_scores, top_items

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def top_k(self, users: np.ndarray, k: int, exclude_seen: bool = True, chunk: int = 4096):
        """(scores, items) (U, k) item indices for user indices: the path every request takes."""
        check_k(k)
        users = np.asarray(users, dtype=np.int64)
        all_scores, all_items = [], []
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            exclude = [self.seen(u) for u in part] if exclude_seen else None
            scores, items = self.search(self.encode_users(part), k, exclude)
            all_scores.append(scores)
            all_items.append(items)
        if not all_items:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(all_scores), np.concatenate(all_items)

    def _results(self, scores: np.ndarray, items: np.ndarray) -> list[Recommendation]:
        return [
            Recommendation(
                item_id=self.item_ids[i].item(),
                score=float(s),
                title=None if self.titles is None else self.titles[i],
            )
            for s, i in zip(scores, items, strict=True)
            if i >= 0
        ]

    # -- public API --------------------------------------------------------------------------
    def recommend(self, user_id: object, k: int = 10, exclude_seen: bool = True) -> list[Recommendation]:
        """The `k` best items for a known user (raw id as in the data), seen items excluded."""
        return self.recommend_many([user_id], k, exclude_seen)[0]

    def recommend_many(
        self, user_ids: Sequence[object], k: int = 10, exclude_seen: bool = True
    ) -> list[list[Recommendation]]:
        """`recommend` for many users: one tower call and one index search."""
        check_k(k)
        users = np.array([self.user_index(u) for u in user_ids], dtype=np.int64)
        scores, items = self.top_k(users, k, exclude_seen)
        return [self._results(s, i) for s, i in zip(scores, items, strict=True)]

    def similar_items(self, item_id: object, k: int = 10) -> list[Recommendation]:
        """The `k` items nearest to an item in the shared space, the item itself excluded."""
        return self.similar_items_many([item_id], k)[0]

    def similar_items_many(self, item_ids: Sequence[object], k: int = 10) -> list[list[Recommendation]]:
        check_k(k)
        rows = np.array([self.item_index(i) for i in item_ids], dtype=np.int64)
        queries = self.bundle.item_vectors[rows]
        scores, items = self.search(queries, k, [np.array([r]) for r in rows])
        return [self._results(s, i) for s, i in zip(scores, items, strict=True)]
