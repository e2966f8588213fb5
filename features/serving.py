"""The per-item and per-user tables a bundle is served from, as polars frames.

Built from everything known before the test period (train + val): at serving time a user's
features are their current ones, and their seen items are all they interacted with."""

from __future__ import annotations

import polars as pl

from features import schema
from features.arrays import csr_by_user, csr_lists, unpadded
from features.prepare import PreparedData
from features.vocab import RAW_ID

# The bundle tables' own columns (beside the source's item_id, title, genres, year, user_id);
# serve/ reads them by these names.
GENRE_IDS = "genre_ids"  # items: genre indices of the item tower's vocabulary
YEAR_BUCKET = "year_bucket"  # items: release-year bucket of the item tower
ACTIVE = "active"  # items: in the index now (a removed item keeps its row, inactive)
HISTORY = "history"  # users: recent item indices, oldest first
SEEN = "seen"  # users: every item index the user interacted with
ITEM_COLUMNS = (schema.ITEM_ID, GENRE_IDS, YEAR_BUCKET, ACTIVE)  # what serving needs
USER_COLUMNS = (schema.USER_ID, HISTORY, SEEN)


def item_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: item_id, title, genres, year, genre_ids, year_bucket."""
    return data.items_df.with_columns(
        unpadded(data.item_genres, data.num_genres).alias(GENRE_IDS),
        pl.Series(YEAR_BUCKET, data.item_year, dtype=pl.Int64),
    )


def user_table(data: PreparedData) -> pl.DataFrame:
    """Index-ordered: user_id, history (recent item indices, oldest first), seen (item indices)."""
    return pl.DataFrame(
        {
            schema.USER_ID: data.user_vocab.frame[RAW_ID],
            HISTORY: unpadded(data.before_test_histories, data.num_items),
            SEEN: csr_lists(*csr_by_user(data.before_test, data.num_users)),
        }
    )
