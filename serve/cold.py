"""The cold slices of a test split, each measured through the serving path beside its baselines.

- `test_cold_items`: warm users' test interactions with items held out entirely (no training
  interaction, so no id row: a vector from content alone), ranked among the content-only items
  (`.../recall@20`) and against the whole catalogue (`test_cold_items_all/...`); beside them
  popularity (which knows nothing of these items) and, when the items have a text feature, the
  content-only baseline (`content/...`: the mean text vector of the user's history).
- `test_cold_users_n{n}`: users held out entirely, served from their features plus their first n
  interactions (n = 0, 1, 5; the same users for every n: those with more than 5), the rest
  relevant; beside popularity with those n items left out.

Metric names: `{slice}/{metric}` for the bundle, `popularity/{slice}/...`, `content/{slice}/...`.
"""

from __future__ import annotations

import numpy as np

from features.arrays import csr_by_user, padded_rows
from features.prepare import HeldOut, PreparedData
from features.serving import CONTENT_ONLY
from serve.evaluate import evaluate_content, evaluate_popularity, evaluate_recommender
from serve.recommender import Recommender

COLD_USER_HISTORIES = (0, 1, 5)  # interactions a cold user is served with


def evaluate_cold(recommender: Recommender, data: PreparedData, ks) -> dict[str, float]:
    """Every cold slice the data holds out (none: {})."""
    metrics: dict[str, float] = {}
    if len(data.cold.get("items", HeldOut.empty())):
        metrics |= cold_items(recommender, data, ks)
    if len(data.cold.get("users", HeldOut.empty())):
        metrics |= cold_users(recommender, data, ks)
    return metrics


def cold_items(recommender: Recommender, data: PreparedData, ks) -> dict[str, float]:
    """The cold items slice, among the content-only items and against the whole catalogue."""
    held_out = data.cold["items"]
    candidates = np.arange(data.num_train_items, data.num_items)  # the content-only rows
    seen = csr_by_user(data.before_test, data.num_users)
    counts = data.item_counts_before_test()
    metrics: dict[str, float] = {}
    for stage, only, among in (
        ("test_cold_items", {CONTENT_ONLY: True}, candidates),
        ("test_cold_items_all", None, None),
    ):
        metrics |= evaluate_recommender(recommender, held_out, ks, stage, filters=only)
        popularity = evaluate_popularity(counts, seen, held_out, ks, stage, candidates=among)
        metrics |= {f"popularity/{k}": v for k, v in popularity.items()}
    text = data.features.item.spec.of_kind("text")
    if text is not None and not text.fine_tune_layers:  # the frozen encoder's vectors
        content = evaluate_content(
            data.item_inputs[text.name], seen, held_out, candidates, seen, ks, "test_cold_items"
        )
        metrics |= {f"content/{k}": v for k, v in content.items()}
    return metrics


def cold_users(recommender: Recommender, data: PreparedData, ks) -> dict[str, float]:
    """The cold users slice, each user served from their features and first n interactions."""
    held_out = data.cold["users"]
    lengths = np.diff(held_out.indptr)
    users = np.flatnonzero(lengths > max(COLD_USER_HISTORIES))  # the same users for every n
    counts = data.item_counts_before_test()
    metrics: dict[str, float] = {}
    for n in COLD_USER_HISTORIES:
        given, rest = _split_first(held_out, users, n)
        stage = f"test_cold_users_n{n}"
        histories = padded_rows(
            given.indptr, given.items, np.arange(len(given)), data.num_items,
            width=max(data.history_length, 1), keep_last=True,
        )  # fmt: skip
        histories = np.where(histories < 0, data.num_items, histories)  # unknown items: padding
        metrics |= evaluate_recommender(recommender, rest, ks, stage, histories=histories)
        popularity = evaluate_popularity(counts, _seen(given, data.num_users), rest, ks, stage)
        metrics |= {f"popularity/{k}": v for k, v in popularity.items()}
    return metrics


def _split_first(held_out: HeldOut, rows: np.ndarray, n: int) -> tuple[HeldOut, HeldOut]:
    """(first n, the rest) of the interactions of held-out users at `rows`, in time order."""
    starts, ends = held_out.indptr[rows], held_out.indptr[rows + 1]
    first, rest = [], []
    for start, end in zip(starts, ends, strict=True):
        first.append(held_out.items[start : start + n])
        rest.append(held_out.items[start + n : end])
    users = held_out.users[rows]
    return _held(users, first), _held(users, rest)


def _held(users: np.ndarray, lists: list[np.ndarray]) -> HeldOut:
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    items = np.concatenate([np.zeros(0, np.int64), *lists]).astype(np.int64)
    return HeldOut(users.astype(np.int64), indptr, items)


def _seen(given: HeldOut, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) over every user row: the held-out users' given items (known ones)."""
    pairs = np.stack([np.repeat(given.users, np.diff(given.indptr)), given.items], axis=1)
    return csr_by_user(pairs[pairs[:, 1] >= 0], num_users)
