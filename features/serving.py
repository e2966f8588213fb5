"""The per-item and per-user tables a bundle is served from, as polars frames.

Each holds the side's raw columns (what the fitted features transform at export, `update` and
serving: the same transform as in training) and the columns serving adds, named here once.
Built from everything known before the test period (train + val): at serving time a user's
features are their current ones, and their seen items are all they interacted with."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.arrays import csr_by_user, csr_lists, unpadded
from features.prepare import PreparedData

# The bundle tables' own columns (beside the source's item_id / user_id and other columns);
# serve/ reads them by these names.
ACTIVE = "active"  # items: in the index now (a removed item keeps its row, inactive)
CONTENT_ONLY = "content_only"  # items: no training interaction, its vector from content alone
HISTORY = "history"  # users: recent item rows, oldest first
SEEN = "seen"  # users: every item row the user interacted with
ITEM_COLUMNS = (ACTIVE, CONTENT_ONLY)  # what serving needs besides item_id
USER_COLUMNS = (HISTORY, SEEN)
SERVING_COLUMNS = frozenset({ACTIVE, CONTENT_ONLY, HISTORY, SEEN})  # never a source's column


def item_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: item_id, the source's item columns, content_only."""
    rows = np.arange(data.num_items)
    return _without_serving_columns(data.items_df).with_columns(
        pl.Series(CONTENT_ONLY, rows >= data.num_train_items)
    )


def user_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: user_id, the source's user columns, history (recent item rows, oldest
    first), seen (item rows)."""
    return _without_serving_columns(data.users_df).with_columns(
        unpadded(data.before_test_histories, data.num_items).alias(HISTORY),
        csr_lists(*csr_by_user(data.before_test, data.num_users)).alias(SEEN),
    )


def _without_serving_columns(table_df: pl.DataFrame) -> pl.DataFrame:
    """A source column that shares a serving column's name is renamed with a `source_` prefix."""
    clashes = [c for c in table_df.columns if c in SERVING_COLUMNS]
    return table_df.rename({c: f"source_{c}" for c in clashes})
