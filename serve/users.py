"""`UserStore`: the users a bundle knows, and the query vectors made for them.

User ids → rows; each known user's stored history (the user tower's input, oldest first) and
seen items (what their results leave out); and user vectors from the towers
(`bundle.scorer.encode_users`): for a known user from their stored features, for a user the
bundle does not know from a history given with the request, without a user-id embedding.

Known users' stored features do not change within a bundle version, so their vectors can be
computed once at load (one batched tower pass) instead of at every request: exactly the
vectors the tower would give, like the item vectors. By default this is done when the table
fits in USER_CACHE_AUTO_BYTES.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import polars as pl
import torch

from features import serving
from features.arrays import padded, padded_rows
from features.schema import USER_ID
from features.vocab import Vocabulary
from serve.catalogue import EMPTY, IdLookup
from serve.errors import UnknownUserError
from towers.scoring import Scorer


class Source(StrEnum):
    """Where a user's results come from (their `.source`; a str, as JSON shows it)."""

    MODEL = "model"  # the towers on a known user's stored features
    HISTORY = "history"  # the user tower on a history given with the request
    POPULARITY = "popularity"  # the most popular items (a user the bundle does not know)


COLD_START = ("history", "popularity", "error")  # policies for unknown users (UserStore.resolve)
USER_CACHE_AUTO_BYTES = 512 << 20  # cache_user_vectors=None caches user tables up to this size
ENCODE_CHUNK = 65536  # users per tower call when the cache is filled


class UserStore:
    def __init__(self, users: pl.DataFrame, scorer: Scorer, cache_user_vectors: bool | None):
        """`users`: a bundle's users table; `cache_user_vectors`: encode every known user at load
        (True), never (False), or when the table fits in USER_CACHE_AUTO_BYTES (None)."""
        spec = scorer.spec
        self.scorer = scorer
        self.user_vocab = Vocabulary.from_ids(users[USER_ID])
        self._ids = IdLookup(self.user_vocab)
        self.history_length = spec.history_length
        self.history_pad = spec.num_items  # rows past the tower's vocabulary cannot be in a history
        self.histories = torch.from_numpy(  # (U, L)
            padded(users[serving.HISTORY], spec.num_items, spec.history_length)
        )
        seen = users[serving.SEEN]
        lengths = seen.list.len().to_numpy()
        self.seen_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (U + 1,)
        self.seen_items = seen.explode().drop_nulls().to_numpy().astype(np.int64)
        self.user_vectors = self._cached_vectors(cache_user_vectors)  # (U, D) or None

    def _cached_vectors(self, cache: bool | None) -> np.ndarray | None:
        if cache is None:
            cache = len(self.user_vocab) * self.scorer.output_dim * 4 <= USER_CACHE_AUTO_BYTES
        if not cache:
            return None
        users = np.arange(len(self.user_vocab))
        return np.concatenate(
            [
                self.encode_users(users[s : s + ENCODE_CHUNK])
                for s in range(0, len(users), ENCODE_CHUNK)
            ]
        )

    # -- ids ------------------------------------------------------------------------------------
    def index_of(self, user_id: object) -> int | None:
        """Row of a raw user id, or None when the bundle does not know the user."""
        return self._ids.index_of(user_id)

    def user_index(self, user_id: object) -> int:
        index = self._ids.index_of(user_id)
        if index is None:
            raise UnknownUserError(user_id, len(self.user_vocab))
        return index

    def resolve(self, user_id: object, given: np.ndarray | None, cold_start: str):
        """(row or None, source) of a requested user; `given`: the item rows of a history given
        with the request, or None. A user the bundle does not know is answered, as `cold_start`
        says: "history" from a given history (the user tower runs on it, without a user-id
        embedding), else `UnknownUserError`; "popularity" the same, but without a history by
        the most popular items; "error" always `UnknownUserError`."""
        user = self._ids.index_of(user_id)
        if user is not None:
            return user, Source.MODEL if given is None else Source.HISTORY
        if cold_start != "error" and given is not None and len(given):
            return None, Source.HISTORY
        if cold_start == "popularity":
            return None, Source.POPULARITY
        raise UnknownUserError(user_id, len(self.user_vocab))

    def seen(self, user: int) -> np.ndarray:
        """Item rows a known user has seen."""
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def excluded(self, user: int | None, given: np.ndarray | None, exclude: np.ndarray):
        """Item rows left out of a user's results when their seen items are: `exclude`, their
        seen items and their given history (a user the bundle does not know: the history)."""
        seen = EMPTY if user is None else self.seen(user)
        return np.concatenate([exclude, seen, EMPTY if given is None else given])

    # -- vectors --------------------------------------------------------------------------------
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

    def known_user_vector(self, user: int) -> np.ndarray:
        """One known user's vector (1, D) (from the cache: a view, no copy)."""
        if self.user_vectors is not None:
            return self.user_vectors[user : user + 1]
        return self.encode_users(np.array([user]))

    def history_tensor(self, rows: Sequence[np.ndarray]) -> torch.Tensor:
        """Histories (U, L) padded like the stored ones, most recent L items (rows) kept."""
        kept = [r[r < self.history_pad] for r in rows]  # rows the user tower can read
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in kept])]).astype(np.int64)
        values = np.concatenate([EMPTY, *kept])
        out = padded_rows(
            indptr, values, np.arange(len(kept)), self.history_pad, self.history_length, True
        )
        return torch.from_numpy(out)

    def query_vectors(
        self, users: Sequence[int | None], histories: Sequence[np.ndarray | None]
    ) -> np.ndarray:
        """Vectors (U, D) for a request's users: `users` their rows (None: a user the bundle does
        not know), `histories` item rows given with the request (None: the stored history; a user
        the bundle does not know always has one). One tower call, none with only cached users."""
        known = np.array([user is not None for user in users], dtype=bool)
        rows = np.array([0 if user is None else user for user in users], dtype=np.int64)
        if known.all() and all(history is None for history in histories):
            return self.known_user_vectors(rows)
        stored = self.histories[torch.from_numpy(rows)]
        given = [
            stored[i] if history is None else self.history_tensor([history])[0]
            for i, history in enumerate(histories)
        ]
        return self.encode_users(rows, torch.stack(given), known)
