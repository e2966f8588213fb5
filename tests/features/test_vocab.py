import numpy as np
import polars as pl

from features.vocab import Vocabulary


def test_fit_is_sorted_contiguous_and_encodes_unknown_as_null():
    vocab = Vocabulary.fit(pl.Series([30, 10, 20, 10]))
    assert vocab.frame["raw_id"].to_list() == [10, 20, 30]
    lf = pl.LazyFrame({"item_id": [20, 99, 10]})
    assert vocab.encode(lf, "item_id", "item").collect()["item"].to_list() == [1, None, 0]
    np.testing.assert_array_equal(vocab.raw_ids(np.array([2, 0])), [30, 10])


def test_index_of_coerces_string_ids_for_integer_vocabularies():
    vocab = Vocabulary.fit(pl.Series([5, 7]))
    assert vocab.index_of("7") == 1
    assert vocab.index_of(7) == 1
    assert vocab.index_of("seven") is None
    assert vocab.index_of(True) is None
    assert Vocabulary.fit(pl.Series(["a", "b"])).index_of("b") == 1
