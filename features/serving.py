"""The per-item and per-user tables a bundle is served from, as polars frames.

Built from everything known before the test period (train + val): at serving time a user's
features are their current ones, and their seen items are all they interacted with."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from features import schema
from features.arrays import csr_by_user
from features.prepare import PreparedData

# The bundle tables' own columns (beside the source's item_id, title, genres, year, user_id);
# serve/ reads them by these names.
GENRE_IDS = "genre_ids"  # items: genre indices of the item tower's vocabulary
YEAR_BUCKET = "year_bucket"  # items: release-year bucket of the item tower
ACTIVE = "active"  # items: in the index now (a removed item keeps its row, inactive)
HISTORY = "history"  # users: recent item indices, oldest first
SEEN = "seen"  # users: every item index the user interacted with
ITEM_COLUMNS = (schema.ITEM_ID, GENRE_IDS, YEAR_BUCKET, ACTIVE)  # what serving needs
USER_COLUMNS = (schema.USER_ID, HISTORY, SEEN)


def _csr_lists(indptr: np.ndarray, values: np.ndarray) -> pl.Series:
    """A list[int64] Series with row i = values[indptr[i]:indptr[i + 1]] (empty rows allowed)."""
    lists = pa.LargeListArray.from_arrays(
        pa.array(indptr, pa.int64()), pa.array(values, pa.int64())
    )
    return pl.Series(lists).cast(pl.List(pl.Int64))


def _lists(rows: np.ndarray, pad: int) -> pl.Series:
    """Padded rows → list[int64] Series without the padding."""
    keep = rows != pad
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return _csr_lists(indptr, rows[keep])


def item_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: item_id, title, genres, year, genre_ids, year_bucket."""
    return data.items_df.with_columns(
        _lists(data.item_genres, data.num_genres).alias(GENRE_IDS),
        pl.Series(YEAR_BUCKET, data.item_year, dtype=pl.Int64),
    )


def user_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: user_id, history (recent item indices, oldest first), seen (item indices)."""
    indptr, items = csr_by_user(data.before_test, data.num_users)
    seen = pl.Series(
        [items[indptr[u] : indptr[u + 1]] for u in range(data.num_users)], dtype=pl.List(pl.Int64)
    )
    return pl.DataFrame(
        {
            schema.USER_ID: data.user_vocab.frame["raw_id"],
            HISTORY: _lists(data.before_test_histories, data.num_items),
            SEEN: seen,
        }
    )
