"""Two bundles on the same held-out users: is one better, or is the difference noise?

`compare_bundles(a, b, table)` ranks every held-out user both bundles know through each
bundle's serving path (`Recommender.top_k`, the user's training items excluded), takes each
user's metrics, and gives, per metric, A's and B's means, B - A, and a 95% paired bootstrap
interval of B - A over the users (Efron & Tibshirani, 1993: the users resampled with
replacement `resamples` times, the mean difference recomputed each time, the 2.5th and 97.5th
percentiles kept). A difference whose interval holds 0 is within the noise of the test users.
It says nothing of the noise of training itself (another seed): compare two seeds' bundles for
that.

    python -m serve compare --bundle A --bundle B [--held-out pairs.parquet]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from features.schema import ITEM_ID, USER_ID
from features.vocab import RAW_ID, Vocabulary
from serve.errors import RequestError
from serve.evaluate import user_metrics
from serve.held_out import held_out_pairs
from serve.recommender import Recommender

COMPARED_KS = (20, 50)
_CHUNK = 100  # resamples drawn at once: (100, users) indices


@dataclass(frozen=True)
class Difference:
    """One metric of both bundles over the same users, and B - A's bootstrap interval."""

    a: float
    b: float
    difference: float  # b - a
    low: float  # 2.5th percentile of the resampled differences
    high: float  # 97.5th

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self) | {"within_noise": self.within_noise}


def compare_bundles(
    a: Recommender,
    b: Recommender,
    table: pl.DataFrame,
    ks=COMPARED_KS,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """B against A on the held-out pairs of `table` (user_id, item_id): the users both bundles
    know, and per metric (recall@k, ndcg@k) a `Difference`."""
    per_user = _per_user(a, table, ks).join(
        _per_user(b, table, ks), on=USER_ID, how="inner", suffix="_b"
    )
    if per_user.height == 0:
        raise RequestError("held_out", table.height, "must hold users both bundles know")
    names = [c for c in per_user.columns if c != USER_ID and not c.endswith("_b")]
    rng = np.random.default_rng(seed)
    draws = _resampled_rows(rng, per_user.height, resamples)
    return {
        "users": per_user.height,
        "unknown_users": table[USER_ID].n_unique() - per_user.height,
        "resamples": resamples,
        "metrics": {
            name: _difference(
                per_user[name].to_numpy(), per_user[f"{name}_b"].to_numpy(), draws
            ).to_dict()
            for name in names
        },
    }


def _per_user(recommender: Recommender, table: pl.DataFrame, ks) -> pl.DataFrame:
    """user_id and each metric, one row per held-out user the bundle knows."""
    items = Vocabulary.from_ids(recommender.bundle.items[ITEM_ID])
    held_out = held_out_pairs(table, recommender.user_vocab, items).held_out
    metrics = user_metrics(recommender, held_out, ks)
    users = recommender.user_vocab.frame[RAW_ID].gather(held_out.users).alias(USER_ID)
    wanted = {n: v for n, v in metrics.items() if n.startswith(("recall@", "ndcg@"))}
    return pl.DataFrame([users, *(pl.Series(n, v) for n, v in wanted.items())])


def _resampled_rows(rng: np.random.Generator, users: int, resamples: int) -> list[np.ndarray]:
    """`resamples` draws of `users` rows with replacement, in chunks of `_CHUNK` draws."""
    sizes = [min(_CHUNK, resamples - start) for start in range(0, resamples, _CHUNK)]
    return [rng.integers(0, users, size=(size, users)) for size in sizes]


def _difference(a: np.ndarray, b: np.ndarray, draws: list[np.ndarray]) -> Difference:
    delta = b - a
    means = np.concatenate([delta[rows].mean(axis=1) for rows in draws])
    low, high = np.percentile(means, [2.5, 97.5])
    return Difference(
        float(a.mean()), float(b.mean()), float(delta.mean()), float(low), float(high)
    )
