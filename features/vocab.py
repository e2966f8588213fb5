"""Raw ids ↔ contiguous indices, fitted on training interactions only.

Indices are assigned in sorted raw-id order, so fitting is deterministic. The vocabulary is not
saved on its own: a bundle's tables are index-ordered (row i of items.parquet is item index i,
likewise users.parquet), so serving rebuilds it from their id columns with `from_ids`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

RAW_ID = "raw_id"
INDEX = "index"


@dataclass
class Vocabulary:
    frame: pl.DataFrame  # columns raw_id (int or str), index (Int64, 0..n-1 in row order)
    _lookup: dict | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, ids: pl.Series) -> Vocabulary:
        raw = ids.drop_nulls().unique().sort()
        return cls(pl.DataFrame({RAW_ID: raw, INDEX: np.arange(raw.len(), dtype=np.int64)}))

    @classmethod
    def from_ids(cls, ids: pl.Series) -> Vocabulary:
        """The vocabulary whose index i is `ids[i]` (ids must be unique)."""
        if ids.n_unique() != ids.len() or ids.null_count():
            raise ValueError(f"vocabulary ids must be unique and non-null ({ids.name!r})")
        return cls(pl.DataFrame({RAW_ID: ids, INDEX: np.arange(ids.len(), dtype=np.int64)}))

    def __len__(self) -> int:
        return self.frame.height

    @property
    def dtype(self) -> pl.DataType:
        return self.frame.schema[RAW_ID]

    def encode(self, lf: pl.LazyFrame, column: str, into: str) -> pl.LazyFrame:
        """Add `into`: the index of `column`'s raw id, null where the id is not in the vocabulary."""
        mapping = self.frame.lazy().rename({RAW_ID: column, INDEX: into})
        return lf.join(mapping, on=column, how="left", maintain_order="left")

    def raw_ids(self, indices: np.ndarray) -> np.ndarray:
        """Raw ids for an array of indices."""
        return self.frame[RAW_ID].to_numpy()[indices]

    def coerce(self, raw_id: object) -> object | None:
        """`raw_id` converted to this vocabulary's id type ("42" → 42), or None if it cannot be."""
        if self.dtype.is_integer():
            if isinstance(raw_id, bool):
                return None
            if isinstance(raw_id, int | np.integer):
                return int(raw_id)
            try:
                return int(str(raw_id).strip())
            except ValueError:
                return None
        return str(raw_id)

    def index_of(self, raw_id: object) -> int | None:
        """Index of one raw id, or None when it is unknown (ids given as strings are coerced)."""
        if self._lookup is None:
            self._lookup = dict(zip(self.frame[RAW_ID].to_list(), range(len(self)), strict=True))
        key = self.coerce(raw_id)
        return None if key is None else self._lookup.get(key)
