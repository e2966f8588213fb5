"""`UserStore`: the users a bundle knows, and the query vectors made for them.

User ids → rows; each known user's stored features and history (the user tower's inputs, through
the fitted features' transform, serve.inputs) and seen items (what their results leave out); and
user vectors from the towers (`bundle.scorer.encode_users`): for a known user from their stored
features, for a user the bundle does not know from a history given with the request, without a
user-id embedding. A user the table holds without an id row (no training interaction: a cold
user with features) is served from those features ("features").

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
from features.arrays import padded_rows
from features.schema import USER_ID
from features.vocab import Vocabulary
from serve.bundle import Bundle
from serve.catalogue import EMPTY, IdLookup
from serve.errors import UnknownUserError
from serve.inputs import UserInputs, item_codes
from towers.scoring import Scorer


class Source(StrEnum):
    """Where a user's results come from (their `.source`; a str, as JSON shows it)."""

    MODEL = "model"  # the towers on a known user's stored features, id included
    FEATURES = "features"  # a user without an id row: their stored features and history
    HISTORY = "history"  # the user tower on a history given with the request
    POPULARITY = "popularity"  # the most popular items (a user the bundle does not know)


COLD_START = ("history", "popularity", "error")  # policies for unknown users (UserStore.resolve)
USER_CACHE_AUTO_BYTES = 512 << 20  # cache_user_vectors=None caches user tables up to this size
ENCODE_CHUNK = 65536  # users per tower call when the cache is filled


class UserStore:
    def __init__(
        self,
        users: pl.DataFrame,
        scorer: Scorer,
        inputs: UserInputs,
        cache_user_vectors: bool | None,
        num_train_users: int | None = None,
    ):
        """`users`: a bundle's users table; `inputs`: its tower inputs (serve.inputs);
        `cache_user_vectors`: encode every known user at load (True), never (False), or when the
        table fits in USER_CACHE_AUTO_BYTES (None); `num_train_users`: rows with an id row (the
        first ones; default all)."""
        self.scorer = scorer
        self.inputs = inputs
        self.user_vocab = Vocabulary.from_ids(users[USER_ID])
        self._ids = IdLookup(self.user_vocab)
        self.num_train_users = len(self.user_vocab) if num_train_users is None else num_train_users
        self.history_length = inputs.length
        self.history_pad = inputs.pad  # the padding row (num_items)
        self.histories = torch.from_numpy(inputs.histories)  # (U, L) item rows
        seen = users[serving.SEEN]
        lengths = seen.list.len().to_numpy()
        self.seen_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (U + 1,)
        self.seen_items = seen.explode().drop_nulls().to_numpy().astype(np.int64)
        self.user_vectors = self._cached_vectors(cache_user_vectors)  # (U, D) or None

    @classmethod
    def from_bundle(cls, bundle: Bundle, cache_user_vectors: bool | None) -> UserStore:
        """The users of a bundle, their inputs through its fitted features."""
        codes = item_codes(bundle.features, bundle.items)
        inputs = UserInputs(bundle.features, bundle.users, codes)
        num_train_users = bundle.manifest.get("num_train_users")
        return cls(bundle.users, bundle.scorer, inputs, cache_user_vectors, num_train_users)

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

    def resolve(
        self, user_id: object, given: np.ndarray | None, cold_start: str, features: bool = False
    ):
        """(row or None, source) of a requested user; `given`: the item rows of a history given
        with the request, or None; `features`: whether the request gives the user's features. A
        user the bundle does not know is answered, as `cold_start` says: "history" from a given
        history and / or given features (the user tower runs on them, without a user-id
        embedding), else `UnknownUserError`; "popularity" the same, but with neither by the most
        popular items; "error" always `UnknownUserError`."""
        user = self._ids.index_of(user_id)
        if user is not None:
            if given is not None:
                return user, Source.HISTORY
            return user, self.stored_source(user)
        if cold_start != "error" and given is not None and len(given):
            return None, Source.HISTORY
        if cold_start != "error" and features and self.inputs.describes_users:
            return None, Source.FEATURES
        if cold_start == "popularity":
            return None, Source.POPULARITY
        raise UnknownUserError(user_id, len(self.user_vocab))

    def stored_source(self, user: int) -> Source:
        """What serves a known user from their stored features: the model with their id, or
        their features alone (a user the table holds without training interactions)."""
        return Source.MODEL if user < self.num_train_users else Source.FEATURES

    def history(self, user: int) -> np.ndarray:
        """A known user's stored history: the item rows their user tower reads, oldest first."""
        rows = self.histories[user].numpy()
        return rows[rows < self.history_pad]

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
    def encode_users(self, users: np.ndarray, histories: np.ndarray | None = None) -> np.ndarray:
        """User vectors (U, D) float32 of rows of the table: their stored features with their
        stored history, or `histories` (U, L) item rows given."""
        users = np.asarray(users, dtype=np.int64)
        given = None if histories is None else np.asarray(histories)
        return self.scorer.encode_users(self.inputs(users, given)).float().numpy()

    def ranked(self, users: np.ndarray, histories: np.ndarray | None, exclude_seen: bool):
        """(vectors (U, D), rows to leave out or None) of known users by row: from their stored
        features, or `histories` (U, L) item rows given (left out too, like seen items)."""
        if histories is None:
            vectors = self.known_user_vectors(users)
            return vectors, [self.seen(u) for u in users] if exclude_seen else None
        vectors = self.encode_users(users, histories)
        if not exclude_seen:
            return vectors, None
        given = [h[h < self.history_pad] for h in histories]
        return vectors, [
            np.concatenate([self.seen(u), g]) for u, g in zip(users, given, strict=True)
        ]

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
        self,
        users: Sequence[int | None],
        histories: Sequence[np.ndarray | None],
        features: Sequence[dict | None] | None = None,
    ) -> np.ndarray:
        """Vectors (U, D) for a request's users: `users` their rows (None: a user the bundle does
        not know), `histories` item rows given with the request (None: the stored history, or
        none), `features` of the users the bundle does not know (None: none given). One tower
        call, none with only cached users."""
        if all(user is not None for user in users) and all(h is None for h in histories):
            return self.known_user_vectors(np.array(users, dtype=np.int64))
        inputs, _ = self.query_inputs(users, histories, features)
        with torch.inference_mode():
            return self.scorer.encode_users(inputs).float().numpy()

    def query_inputs(
        self,
        users: Sequence[int | None],
        histories: Sequence[np.ndarray | None],
        features: Sequence[dict | None] | None = None,
    ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """(the user tower's inputs, the history item rows (U, L) they hold) of a request's
        users, as `query_vectors` reads its arguments."""
        known = np.array([user is not None for user in users], dtype=bool)
        rows = np.array([0 if user is None else user for user in users], dtype=np.int64)
        stored = self.histories[torch.from_numpy(rows)]
        given = torch.stack(
            [
                stored[i]
                if history is None and known[i]
                else self.history_tensor([EMPTY if history is None else history])[0]
                for i, history in enumerate(histories)
            ]
        ).numpy()  # (U, L) item rows
        inputs = self.inputs(rows, given)
        if known.all():
            return inputs, given
        unknown = np.flatnonzero(~known)
        extra = [None if features is None else features[i] for i in unknown]
        cold = self.inputs.for_features(extra, given[unknown])
        for name, values in cold.items():
            inputs[name] = inputs[name].clone()
            inputs[name][torch.from_numpy(unknown)] = values
        return inputs, given
