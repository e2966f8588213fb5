import numpy as np
import polars as pl

from features.arrays import csr_by_user, csr_lists, padded, padded_rows, unpadded


def test_padded_rows_pads_to_the_longest_row_or_cuts_to_a_width():
    indptr, values = np.array([0, 2, 2, 5]), np.array([1, 2, 3, 4, 5])
    rows = np.array([2, 1, 0])
    np.testing.assert_array_equal(
        padded_rows(indptr, values, rows, -1), [[3, 4, 5], [-1, -1, -1], [1, 2, -1]]
    )
    np.testing.assert_array_equal(
        padded_rows(indptr, values, rows, -1, width=2), [[3, 4], [-1, -1], [1, 2]]
    )
    np.testing.assert_array_equal(
        padded_rows(indptr, values, rows, -1, width=2, keep_last=True), [[4, 5], [-1, -1], [1, 2]]
    )
    assert padded_rows(indptr, values, np.array([1]), -1).shape == (1, 1)
    assert padded_rows(indptr, values, rows, -1, width=0).shape == (3, 0)


def test_padded_and_unpadded_are_inverses():
    lists = pl.Series([[3, 1], [], None, [2, None, 5]], dtype=pl.List(pl.Int64))
    rows = padded(lists, pad=9)
    np.testing.assert_array_equal(rows, [[3, 1], [9, 9], [9, 9], [2, 5]])
    assert unpadded(rows, pad=9).to_list() == [[3, 1], [], [], [2, 5]]
    np.testing.assert_array_equal(padded(lists, pad=9, width=3)[0], [3, 1, 9])
    fixed = pl.Series([[1, 2]], dtype=pl.Array(pl.Int64, 2))
    np.testing.assert_array_equal(padded(fixed, pad=0), [[1, 2]])


def test_csr_by_user_keeps_pair_order_and_becomes_a_list_column():
    pairs = np.array([[1, 7], [0, 5], [1, 3], [0, 6]])
    indptr, items = csr_by_user(pairs, num_users=3)
    np.testing.assert_array_equal(indptr, [0, 2, 4, 4])
    np.testing.assert_array_equal(items, [5, 6, 7, 3])
    assert csr_lists(indptr, items).to_list() == [[5, 6], [7, 3], []]
