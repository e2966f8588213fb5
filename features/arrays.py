"""Variable-length rows of item (or genre) indices, in the three shapes the package uses:

    CSR        (indptr, values): row i is values[indptr[i]:indptr[i + 1]]
    padded     a (rows, width) int64 array, each row's values first, then `pad`
    list       a polars list[int64] column (the bundle tables' `history`, `seen`, `genre_ids`)

This module is the one place that converts between them (`padded_rows`, `padded`, `unpadded`,
`csr_lists`). Kept apart from `features.datamodule` so that serving can use it without
importing Lightning.

Prepared data stores rows of the users table and the catalogue as int32 when they fit
(`index_dtype`): half the memory of int64 for every pair and history; whatever reads them
gets int64 back (`padded_rows`, the batches)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa


def index_dtype(size: int) -> type[np.signedinteger]:
    """int32 when every index below `size` (and `size` itself, a padding row) fits, else int64."""
    return np.int32 if size <= np.iinfo(np.int32).max else np.int64


def padded_rows(
    indptr: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    pad: int,
    width: int | None = None,
    keep_last: bool = False,
    dtype: type[np.integer] = np.int64,
) -> np.ndarray:
    """Rows of a CSR matrix as a (len(rows), width) array of `dtype` padded with `pad`.

    `width` defaults to the longest row's length (at least 1). A longer row keeps its first
    `width` values, or its last ones with `keep_last` (still in their order)."""
    starts, ends = indptr[rows].astype(np.int64), indptr[rows + 1].astype(np.int64)
    if width is None:
        width = max(int((ends - starts).max(initial=0)), 1)
    elif keep_last:
        starts = np.maximum(starts, ends - width)
    lengths = np.minimum(ends - starts, width)
    out = np.full((len(rows), width), pad, dtype=dtype)
    offsets = np.cumsum(lengths) - lengths  # (R,) where each row's values start in the flat run
    flat = np.arange(lengths.sum())  # (nnz,)
    # Value j of row r goes from values[starts[r] + j] to out[r, j]: both a shift of `flat`.
    source = flat + np.repeat(starts - offsets, lengths)
    target = flat + np.repeat(np.arange(len(rows)) * width - offsets, lengths)
    out.reshape(-1)[target] = values[source]
    return out


def padded(lists: pl.Series, pad: int, width: int | None = None) -> np.ndarray:
    """A list[int] column as a (rows, width) int64 array padded with `pad` (see `padded_rows`;
    a null list is an empty row, null elements are dropped)."""
    if isinstance(lists.dtype, pl.Array):
        lists = lists.cast(pl.List(lists.dtype.inner))
    lists = lists.list.drop_nulls()
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    flat = lists.explode().drop_nulls().to_numpy().astype(np.int64)
    return padded_rows(indptr, flat, np.arange(len(lists)), pad, width)


def unpadded(rows: np.ndarray, pad: int) -> pl.Series:
    """The inverse of `padded`: a (rows, width) array → a list[int64] Series without `pad`."""
    keep = rows != pad
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return csr_lists(indptr, rows[keep])


def csr_lists(indptr: np.ndarray, values: np.ndarray) -> pl.Series:
    """A list[int64] Series with row i = values[indptr[i]:indptr[i + 1]] (empty rows allowed)."""
    lists = pa.LargeListArray.from_arrays(
        pa.array(indptr, pa.int64()), pa.array(values, pa.int64())
    )
    return pl.Series(lists).cast(pl.List(pl.Int64))


def csr_by_user(pairs: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) grouping `pairs` ([user, item] rows) by user, each user's in pair order."""
    users = pairs[:, 0]
    counts = np.bincount(users, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if np.all(users[1:] >= users[:-1]):  # already grouped (prepared pairs are): no sort
        return indptr, np.ascontiguousarray(pairs[:, 1])
    return indptr, pairs[np.argsort(users, kind="stable"), 1]
