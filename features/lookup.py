"""`Lookup`: values to rows of an embedding table (a fitted vocabulary, then hashed buckets), and
`stable_hash`, the hash that picks a bucket: blake2b of the value tagged with its kind, so the
same in every process and library version, and 1 and "1" apart."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from features.columns import DTYPES, value_kind


def stable_hash(value: object, kind: str) -> int:
    """blake2b (8 bytes, little-endian) of f"{kind}:{value}" (kind: str, int or bool)."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, eq=False)
class Lookup:
    """Values -> rows: the sorted `vocabulary` first, then `buckets` rows that unseen values
    share by `stable_hash` (without buckets an unseen value takes the caller's `unknown`)."""

    kind: str  # the values' kind: str, int or bool
    vocabulary: pl.Series
    buckets: int

    @classmethod
    def fit(cls, values: pl.Series, weights: np.ndarray, min_count: int, buckets: int) -> Lookup:
        """The distinct non-null `values` whose summed `weights` (N,) reach `min_count`."""
        counted_df = (
            pl.DataFrame({"value": values, "weight": weights})
            .drop_nulls("value")
            .group_by("value")
            .agg(pl.col("weight").sum())
            .filter(pl.col("weight") >= min_count)
        )
        return cls(value_kind(values.dtype), counted_df["value"].sort(), buckets)

    @classmethod
    def hashed(cls, values: pl.Series, buckets: int) -> Lookup:
        """`buckets` hashed rows and no vocabulary."""
        return cls(value_kind(values.dtype), values.clear(), buckets)

    @property
    def rows(self) -> int:
        return self.vocabulary.len() + self.buckets

    def codes(self, values: pl.Series, unknown: int) -> np.ndarray:
        """(N,) int64: each value's row; `unknown` for null, and unseen values without buckets."""
        present = values.drop_nulls().unique()
        size = self.vocabulary.len()
        at = self.vocabulary.search_sorted(present).to_numpy().astype(np.int64)  # (U,)
        known = at < size  # (U,)
        known[known] = (self.vocabulary.gather(at[known]) == present.filter(known)).to_numpy()
        rows = np.where(known, at, unknown)  # (U,)
        if self.buckets:
            unseen = present.filter(~known).to_list()
            hashed = [stable_hash(value, self.kind) % self.buckets for value in unseen]
            rows[~known] = size + np.asarray(hashed, dtype=np.int64)
        codes = values.replace_strict(present, rows, default=unknown, return_dtype=pl.Int64)
        return codes.to_numpy(writable=True)  # (N,) writable: torch.from_numpy takes it as is

    def state(self) -> dict[str, Any]:
        return {"value_kind": self.kind, "vocabulary": self.vocabulary.to_list()}

    def __eq__(self, other: object) -> bool:
        same = isinstance(other, Lookup) and other.buckets == self.buckets
        return same and other.state() == self.state()

    @classmethod
    def from_state(cls, state: dict[str, Any], buckets: int) -> Lookup:
        kind = state["value_kind"]
        return cls(kind, pl.Series(state["vocabulary"], dtype=DTYPES[kind]), buckets)
