"""`Catalogue`: the items a bundle serves, looked up by raw id.

A row of the items table is an item's index and its FAISS id. The catalogue knows which rows are
active (in the index now; a removed item keeps its row), their raw ids and titles for responses,
the attribute filters over the table (compiled once, then cached) and the order the popularity
fallback answers in. It knows nothing of users' vectors or of the index.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import faiss
import numpy as np
import polars as pl

from features.schema import ITEM_ID, TITLE
from features.serving import ACTIVE
from features.vocab import RAW_ID, Vocabulary
from serve.errors import RequestError, UnknownItemError

INTERNAL_COLUMNS = frozenset({ACTIVE})  # not a filter: only active items are ever returned
MAX_CACHED_FILTERS = 1024  # the filter cache starts over past this many distinct filters
EMPTY = np.zeros(0, dtype=np.int64)  # no rows (shared, so read-only)
EMPTY.setflags(write=False)


class IdLookup:
    """Raw id → index without touching polars per request (a dict, and the vocabulary's id type
    decided once); same coercion as `Vocabulary.index_of` ("42" → 42 for integer ids)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.integer = vocab.dtype.is_integer()
        self.lookup = dict(zip(vocab.frame[RAW_ID].to_list(), range(len(vocab)), strict=True))

    def index_of(self, raw_id: object) -> int | None:
        if type(raw_id) is (int if self.integer else str):
            return self.lookup.get(raw_id)
        key = self.vocab.coerce(raw_id)
        return None if key is None else self.lookup.get(key)


class ItemFilter:
    """Items passing an attribute filter: a boolean mask over rows, and its FAISS selector."""

    def __init__(self, eligible: np.ndarray):
        self.eligible = eligible  # (I,) bool, active items passing the filter
        self.count = int(eligible.sum())
        self._bits = np.packbits(eligible, bitorder="little")  # kept alive for the selector
        self.selector = faiss.IDSelectorBitmap(len(eligible), faiss.swig_ptr(self._bits))


class Catalogue:
    def __init__(self, items: pl.DataFrame, seen_items: np.ndarray):
        """`items`: a bundle's items table; `seen_items`: every user's seen item rows, one after
        another (what the popularity fallback counts)."""
        self.items = items
        self._ids = IdLookup(Vocabulary.from_ids(items[ITEM_ID]))
        self.item_ids = items[ITEM_ID].to_numpy()
        self.item_id_list = self.item_ids.tolist()  # Python ints / strs, for responses
        self.titles = items[TITLE].to_list() if TITLE in items.columns else None
        self.active = items[ACTIVE].to_numpy().astype(bool)  # (I,)
        self.num_items = len(self.item_ids)  # rows (FAISS ids 0..num_items-1)
        self.num_active = int(self.active.sum())  # rows in the index
        # How many users have seen each item: the popularity fallback's scores, and its order
        # (most seen first, ties by row).
        self.seen_counts = np.bincount(seen_items, minlength=self.num_items).astype(np.float64)
        order = np.lexsort((np.arange(self.num_items), -self.seen_counts))
        self.popular_order = order[self.active[order]]
        self._filters: dict[tuple, ItemFilter] = {}
        self._filters_lock = threading.Lock()

    # -- ids ------------------------------------------------------------------------------------
    def item_index(self, item_id: object) -> int:
        """Row of an item in the catalogue now (removed items are unknown)."""
        row = self._ids.index_of(item_id)
        if row is None or not self.active[row]:
            raise UnknownItemError(item_id, self.num_active)
        return row

    def item_rows(self, item_ids: Sequence[object] | None, field: str = "item_ids") -> np.ndarray:
        """Rows of raw item ids, given as request field `field`; removed items keep their row
        (their vectors are not searched), unknown ones are an error."""
        if not item_ids:
            return EMPTY
        if isinstance(item_ids, str | bytes) or not isinstance(item_ids, Sequence | np.ndarray):
            raise RequestError(field, item_ids, "must be a list of item ids")
        rows = []
        for item_id in item_ids:
            row = self._ids.index_of(item_id)
            if row is None:
                raise UnknownItemError(item_id, self.num_active, field)
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    # -- filters --------------------------------------------------------------------------------
    def item_filter(self, filters: Mapping[str, object] | None) -> ItemFilter | None:
        """The active items passing every `column: value(s)` condition (a list column passes when
        it holds any of the values); None without filters. Cached, so a repeated filter costs a
        dict lookup."""
        if not filters:
            return None
        key = _filter_key(filters)
        cached = self._filters.get(key)
        if cached is not None:
            return cached
        result = ItemFilter(self._mask(key, filters) & self.active)
        with self._filters_lock:
            if len(self._filters) > MAX_CACHED_FILTERS:
                self._filters.clear()
            self._filters[key] = result
        return result

    def _mask(self, key: tuple, filters: Mapping[str, object]) -> np.ndarray:
        """(I,) bool: the rows passing the conditions of `key` (from `_filter_key`)."""
        allowed = sorted(set(self.items.columns) - INTERNAL_COLUMNS)
        conditions = []
        for column, values in key:
            if column not in allowed:
                raise RequestError("filters", column, f"must name filterable columns {allowed}")
            conditions.append(_condition(column, self.items.schema[column], values))
        try:
            passing = self.items.select(pl.all_horizontal(conditions)).to_series().to_numpy()
        except (pl.exceptions.PolarsError, TypeError) as err:
            raise RequestError(
                "filters", dict(filters), f"cannot be applied to the item table ({err})"
            ) from None
        return passing.astype(bool)

    # -- the popularity fallback ----------------------------------------------------------------
    def popular(
        self, k: int, exclude: np.ndarray, item_filter: ItemFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) (≤ k,): the most seen active items, none of `exclude`, all passing
        `item_filter`; a score is how many users have seen the item."""
        order = self.popular_order
        if item_filter is None:
            order = order[: k + len(exclude)]
        else:
            order = order[item_filter.eligible[order]]
        if len(exclude):
            order = order[~np.isin(order, exclude)]
        order = order[:k]
        return self.seen_counts[order], order


def _filter_key(filters: Mapping[str, object]) -> tuple:
    """A hashable, order-free form of `filters`: ((column, (values...)), ...)."""
    if not isinstance(filters, Mapping):
        raise RequestError("filters", filters, "must be an object of column: value(s)")
    return tuple(
        sorted(
            (str(column), tuple(values) if isinstance(values, list | tuple) else (values,))
            for column, values in filters.items()
        )
    )


def _condition(column: str, dtype: pl.DataType, values: tuple) -> pl.Expr:
    """Rows whose `column` is one of `values`; for a list column, holds any of them."""
    if isinstance(dtype, pl.List):
        held = pl.col(column).list.eval(pl.element().is_in(list(values)))
        return held.list.any().fill_null(False)
    return pl.col(column).is_in(list(values)).fill_null(False)
