"""Small numpy helpers for CSR-grouped interactions, shared by training, export and evaluation.

Kept apart from `features.datamodule` so that serving can use them without importing Lightning."""

from __future__ import annotations

import numpy as np


def padded_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray, pad: int) -> np.ndarray:
    """Rows of a CSR matrix as a (len(rows), max_len) array padded with `pad` (max_len >= 1)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out = np.full((len(rows), max(int(lengths.max(initial=0)), 1)), pad, dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row_of, col] = values[np.repeat(starts, lengths) + col]
    return out


def csr_by_user(pairs: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) grouping `pairs` ([user, item] rows) by user."""
    order = np.argsort(pairs[:, 0], kind="stable")
    counts = np.bincount(pairs[:, 0], minlength=num_users)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), pairs[order, 1]
