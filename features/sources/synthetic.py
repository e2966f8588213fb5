"""Synthetic interactions with planted structure, of any size: for tests and scale benchmarks.

Items fall into `num_clusters` clusters; each user prefers one cluster and draws most of their
interactions from it (items inside a cluster are Zipf-popular). A model that learns the
clusters beats popularity by a wide margin, which is what the end-to-end test checks. Raw ids
are offset (users from 100_000, items from 500_000) so that code mistaking raw ids for indices
fails loudly."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from features import schema
from features.sources.base import table_label

USER_ID_OFFSET = 100_000
ITEM_ID_OFFSET = 500_000


@dataclass
class Synthetic:
    num_users: int = 1_000  # users
    num_items: int = 500  # items (the catalogue)
    num_clusters: int = 10  # planted taste clusters; each item and user belongs to one
    interactions_per_user: int = 20  # mean; each user draws Poisson(mean - 5) + 5
    in_cluster_prob: float = 0.8  # chance an interaction comes from the user's own cluster
    zipf_exponent: float = 1.0  # popularity skew inside a cluster
    seed: int = 0
    name: str = "synthetic"

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.in_cluster_prob <= 1.0:
            raise ValueError(
                f"synthetic: in_cluster_prob must be in [0, 1], got {self.in_cluster_prob}"
            )

    @cached_property
    def _tables(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        if self.num_items < self.num_clusters:
            raise ValueError(
                f"synthetic: num_items ({self.num_items}) must be >= num_clusters ({self.num_clusters})"
            )
        rng = np.random.default_rng(self.seed)
        item_cluster = rng.integers(0, self.num_clusters, self.num_items)
        item_cluster[: self.num_clusters] = np.arange(self.num_clusters)  # no empty cluster
        user_cluster = rng.integers(0, self.num_clusters, self.num_users)
        counts = rng.poisson(max(self.interactions_per_user - 5, 0), self.num_users) + 5

        # Per cluster: its items and their Zipf sampling weights.
        members = [np.flatnonzero(item_cluster == c) for c in range(self.num_clusters)]
        weights = []
        for m in members:
            w = 1.0 / np.arange(1, len(m) + 1) ** self.zipf_exponent
            weights.append(np.cumsum(w / w.sum()))

        users = np.repeat(np.arange(self.num_users), counts)
        own = rng.random(users.size) < self.in_cluster_prob
        cluster = np.where(own, user_cluster[users], rng.integers(0, self.num_clusters, users.size))
        u = rng.random(users.size)
        items = np.empty(users.size, dtype=np.int64)
        for c in range(self.num_clusters):
            at = cluster == c
            pos = np.minimum(np.searchsorted(weights[c], u[at]), len(members[c]) - 1)
            items[at] = members[c][pos]
        timestamps = 1_600_000_000 + np.arange(users.size, dtype=np.int64) * 60

        interactions = pl.DataFrame(
            {
                schema.USER_ID: users + USER_ID_OFFSET,
                schema.ITEM_ID: items + ITEM_ID_OFFSET,
                schema.TIMESTAMP: timestamps,
            }
        ).unique([schema.USER_ID, schema.ITEM_ID], keep="first", maintain_order=True)
        extra_genre = rng.integers(0, self.num_clusters, self.num_items)
        items_df = pl.DataFrame(
            {
                schema.ITEM_ID: np.arange(self.num_items, dtype=np.int64) + ITEM_ID_OFFSET,
                schema.TITLE: [f"Item {i} (cluster {c})" for i, c in enumerate(item_cluster)],
                schema.GENRES: [
                    sorted({f"g{c}", f"g{e}"})
                    for c, e in zip(item_cluster, extra_genre, strict=True)
                ],
                schema.YEAR: rng.integers(1950, 2024, self.num_items).astype(np.int32),
            }
        )
        return interactions, items_df

    def interactions(self) -> pl.LazyFrame:
        return self._tables[0].lazy()

    def items(self) -> pl.DataFrame:
        """item_id, title, genres, year."""
        return self._tables[1]

    def users(self) -> None:
        return None

    def table_path(self, side: str) -> str:
        return table_label(self.name, side)
