"""Held-out interactions as a table of raw ids (user_id, item_id), and back against a bundle.

train.py writes each run's test split as `<run>/test_pairs.parquet` (TEST_PAIRS, beside the
run's bundle/); `python -m serve audit` reads it, or any table of held-out pairs, against a bundle:
one row per held-out interaction, users the bundle does not know left out (and counted), items it
does not know (a null item_id included) kept in their user's held-out set as misses, as the run's
test split keeps them (features.prepare)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.prepare import HeldOut
from features.schema import ITEM_ID, USER_ID
from features.vocab import RAW_ID, Vocabulary
from serve.errors import RequestError

TEST_PAIRS = "test_pairs.parquet"  # a run's test split, beside its bundle
_USER, _ITEM = "_user_row", "_item_row"


@dataclass(frozen=True)
class HeldOutPairs:
    """A table of held-out pairs read against a bundle's users and items."""

    held_out: HeldOut  # the known users' interactions; item -1 where the bundle lacks the item
    unknown_users: int  # distinct users the bundle does not know (left out)
    unknown_user_pairs: int  # their interactions
    unknown_items: int  # interactions (of known users) with an item the bundle does not know


def held_out_table(held_out: HeldOut, users: Vocabulary, items: Vocabulary) -> pl.DataFrame:
    """`held_out` (rows of `users` and `items`) as raw ids: user_id, item_id (null for -1)."""
    user_rows = np.repeat(held_out.users, np.diff(held_out.indptr))
    item_rows = pl.Series(held_out.items, dtype=pl.Int64)
    known = pl.select(pl.when(item_rows >= 0).then(item_rows)).to_series()
    return pl.DataFrame(
        {
            USER_ID: users.frame[RAW_ID].gather(user_rows),
            ITEM_ID: items.frame[RAW_ID].gather(known),
        }
    )


def write_held_out(path: Path, held_out: HeldOut, users: Vocabulary, items: Vocabulary) -> Path:
    """`held_out_table` written to `path` (Parquet)."""
    held_out_table(held_out, users, items).write_parquet(path)
    return path


def held_out_pairs(
    table: pl.DataFrame, users: Vocabulary, items: Vocabulary, field: str = "held_out"
) -> HeldOutPairs:
    """The pairs of `table` (columns user_id and item_id, as raw ids) as rows of `users` and
    `items`; `field` names the table in a `RequestError` (a column missing, no user known)."""
    missing = [c for c in (USER_ID, ITEM_ID) if c not in table.columns]
    if missing:
        raise RequestError(field, table.columns, f"must have the columns {USER_ID}, {ITEM_ID}")
    coded = table.select(
        pl.col(USER_ID).cast(users.dtype, strict=False),
        pl.col(ITEM_ID).cast(items.dtype, strict=False),
    ).lazy()
    coded = users.encode(coded, USER_ID, _USER)
    coded_df = items.encode(coded, ITEM_ID, _ITEM).collect()
    unknown = coded_df.filter(pl.col(_USER).is_null())
    known = coded_df.filter(pl.col(_USER).is_not_null()).sort(_USER, maintain_order=True)
    if known.height == 0:
        raise RequestError(field, table.height, "must hold pairs of users the bundle knows")
    user_rows, counts = np.unique(known[_USER].to_numpy(), return_counts=True)
    item_rows = known[_ITEM].fill_null(-1).to_numpy().astype(np.int64)
    return HeldOutPairs(
        held_out=HeldOut(
            user_rows.astype(np.int64),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            item_rows,
        ),
        unknown_users=unknown[USER_ID].n_unique(),
        unknown_user_pairs=unknown.height,
        unknown_items=int((item_rows < 0).sum()),
    )
