import hashlib
import json

import numpy as np
import polars as pl
import pytest

from features.fitting import FittedSide, check_columns, fit_feature, fitted_from_state
from features.schema import DataFileError
from features.spec import FeatureSpecError, parse_feature, parse_side


def feature(kind: str, name: str = "f", side: str = "item", **options):
    return parse_feature(side, name, {"kind": kind, **options})


def blake(text: str) -> int:
    """The documented hash, computed here from hashlib directly."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def roundtrip(fitted, encoder=None):
    return fitted_from_state(fitted.feature.side, json.loads(json.dumps(fitted.state())), encoder)


class FakeEncoder:
    """A deterministic stand-in for a sentence encoder: [characters, dots, 1]; records its calls."""

    dim = 3

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("."), 1.0] for t in texts], dtype=np.float32)


# --- id ---------------------------------------------------------------------------------------


def test_id_vocabulary_keeps_keys_with_min_count_interactions_and_unknown_ids_read_no_row():
    train_df = pl.DataFrame({"item_id": [40, 10, 30, 20]})
    fitted = fit_feature(feature("id", "item_id", min_count=2), train_df, np.array([0, 3, 2, 1]))
    table_df = pl.DataFrame({"item_id": [30, 10, 20, 99, 40, None]})
    np.testing.assert_array_equal(fitted.transform(table_df), [1, 0, -1, -1, -1, -1])
    assert fitted.input()["rows"] == 2 and fitted.input()["encoding"] == "index"


def test_id_without_counts_counts_each_training_row_once():
    fitted = fit_feature(
        feature("id", "user_id", side="user"), pl.DataFrame({"user_id": ["b", "a"]})
    )
    np.testing.assert_array_equal(fitted.transform(pl.DataFrame({"user_id": ["a", "b"]})), [0, 1])


def test_id_oov_buckets_are_chosen_by_a_typed_blake2b_hash():
    train_df = pl.DataFrame({"item_id": [1, 2]})
    fitted = fit_feature(feature("id", "item_id", oov_buckets=1000), train_df)
    got = fitted.transform(pl.DataFrame({"item_id": [7, 2, 12345]}))
    np.testing.assert_array_equal(
        got, [2 + blake("int:7") % 1000, 1, 2 + blake("int:12345") % 1000]
    )
    str_fitted = fit_feature(feature("id", "item_id", oov_buckets=1000), train_df.cast(pl.String))
    as_str = str_fitted.transform(pl.DataFrame({"item_id": ["7"]}))
    assert as_str[0] == 2 + blake("str:7") % 1000 != got[0]  # 7 and "7" hash apart
    assert fitted.input()["rows"] == 1002


def test_id_hash_buckets_replace_the_vocabulary():
    fitted = fit_feature(
        feature("id", "item_id", hash_buckets=16), pl.DataFrame({"item_id": [5, 6]})
    )
    got = fitted.transform(pl.DataFrame({"item_id": [5, 6, 99]}))
    np.testing.assert_array_equal(got, [blake(f"int:{i}") % 16 for i in (5, 6, 99)])
    assert fitted.input()["rows"] == 16
    np.testing.assert_array_equal(
        roundtrip(fitted).transform(pl.DataFrame({"item_id": [99]})), got[2:]
    )


# --- categorical ------------------------------------------------------------------------------


def test_categorical_vocabulary_min_count_oov_and_missing_rows():
    train_df = pl.DataFrame({"f": ["a", "b", "a", None, "c", "c", "c"]})
    fitted = fit_feature(feature("categorical", min_count=2), train_df)
    table_df = pl.DataFrame({"f": ["c", "a", "b", "zzz", None]})
    # vocabulary [a, c]; one OOV row (2) for b (too rare) and zzz (unseen); missing: the last (3)
    np.testing.assert_array_equal(fitted.transform(table_df), [1, 0, 2, 2, 3])
    assert fitted.input()["rows"] == 4


def test_categorical_without_oov_buckets_reads_unseen_values_as_missing():
    fitted = fit_feature(feature("categorical", oov_buckets=0), pl.DataFrame({"f": [3, 1, 3]}))
    np.testing.assert_array_equal(
        fitted.transform(pl.DataFrame({"f": [1, 3, 2, None]})), [0, 1, 2, 2]
    )
    assert fitted.input()["rows"] == 3


def test_categorical_booleans_and_hash_buckets():
    fitted = fit_feature(feature("categorical"), pl.DataFrame({"f": [True, False, None]}))
    np.testing.assert_array_equal(
        fitted.transform(pl.DataFrame({"f": [True, False, None]})), [1, 0, 3]
    )
    hashed = fit_feature(feature("categorical", hash_buckets=8), pl.DataFrame({"f": ["x", "y"]}))
    got = hashed.transform(pl.DataFrame({"f": ["x", "new", None]}))
    np.testing.assert_array_equal(got, [blake("str:x") % 8, blake("str:new") % 8, 8])
    assert hashed.input()["rows"] == 9


def test_oov_rows_are_the_same_across_fits_and_after_json():
    spec = parse_side("item", {"features": {"item_id": {"kind": "id", "oov_buckets": 5},
                                            "f": {"kind": "categorical", "oov_buckets": 3}}})  # fmt: skip
    train_df = pl.DataFrame({"item_id": [1, 2, 3], "f": ["a", "b", "c"]})
    unseen_df = pl.DataFrame({"item_id": [8, 9, 1000], "f": ["p", "q", "r"]})
    first = FittedSide.fit(spec, train_df, None, "items.csv")
    second = FittedSide.fit(spec, train_df.reverse(), None, "items.csv")
    restored = FittedSide.from_json(json.loads(json.dumps(first.to_json())))
    for other in (second, restored):
        for name, array in first.transform(unseen_df).items():
            np.testing.assert_array_equal(other.transform(unseen_df)[name], array)
    np.testing.assert_array_equal(
        first.transform(unseen_df)["f"], [3 + blake(f"str:{v}") % 3 for v in "pqr"]
    )


# --- multi_hot --------------------------------------------------------------------------------


def test_multi_hot_min_count_counts_rows_and_bags_are_padded_and_truncated():
    lists = [["drama", "comedy"], ["drama"], ["horror", "drama", "horror"], None]
    train_df = pl.DataFrame({"f": lists})
    assert fit_feature(feature("multi_hot", min_count=2), train_df).state()["vocabulary"] == [
        "drama"
    ]
    fitted = fit_feature(feature("multi_hot", max_length=2, pooling="sum"), train_df)
    table_df = pl.DataFrame(
        {"f": [["horror", "x", "comedy", "drama"], [], None, ["drama", "drama"]]}
    )
    # vocabulary [comedy, drama, horror]; padding row 3
    np.testing.assert_array_equal(fitted.transform(table_df), [[2, 0], [3, 3], [3, 3], [1, 3]])
    assert fitted.input() == {"name": "f", "kind": "multi_hot", "encoding": "bag", "rows": 4,
                              "dim": 0, "width": 2, "pooling": "sum"}  # fmt: skip


def test_multi_hot_reads_integer_lists():
    fitted = fit_feature(feature("multi_hot", max_length=3), pl.DataFrame({"f": [[5, 1], [1]]}))
    np.testing.assert_array_equal(fitted.transform(pl.DataFrame({"f": [[1, 9, 5]]})), [[0, 1, 2]])


# --- numeric ----------------------------------------------------------------------------------


def test_standard_z_scores_use_finite_training_values_and_flag_missing_ones():
    train = [1.0, 2.0, None, 4.0, float("nan"), float("inf")]
    fitted = fit_feature(feature("numeric"), pl.DataFrame({"f": train}))
    values = np.array([1.0, 2.0, 4.0])
    table_df = pl.DataFrame({"f": [4.0, None, float("nan"), float("-inf"), 0.0]})
    expected = [[(4 - values.mean()) / values.std(), 0], [0, 1], [0, 1], [0, 1],
                [(0 - values.mean()) / values.std(), 0]]  # fmt: skip
    got = fitted.transform(table_df)
    assert got.dtype == np.float32 and fitted.input()["dim"] == 2
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_standard_of_a_constant_column_keeps_std_one():
    fitted = fit_feature(feature("numeric"), pl.DataFrame({"f": [5, 5, 5]}))
    np.testing.assert_allclose(fitted.transform(pl.DataFrame({"f": [7, 5]})), [[2, 0], [0, 0]])


def test_log1p_standardises_log1p_values_and_reads_negative_values_as_missing():
    fitted = fit_feature(
        feature("numeric", normalization="log1p"), pl.DataFrame({"f": [0, 9, 99, None]})
    )
    logs = np.log1p([0.0, 9.0, 99.0])
    got = fitted.transform(pl.DataFrame({"f": [99.0, -1.0]}))
    np.testing.assert_allclose(got, [[(logs[2] - logs.mean()) / logs.std(), 0], [0, 1]], rtol=1e-6)


def test_log1p_refuses_negative_training_values():
    with pytest.raises(DataFileError) as caught:
        fit_feature(feature("numeric", "price", normalization="log1p"),
                    pl.DataFrame({"price": [3.0, -2.5]}), where="items.csv")  # fmt: skip
    error = caught.value
    assert (error.path, error.column, error.values) == ("items.csv", "price", (-2.5,))
    assert "'price'" in str(error) and "log1p" in str(error)


def test_quantile_buckets_match_numpy_quantiles():
    rng = np.random.default_rng(0)
    train = rng.normal(size=400)
    fitted = fit_feature(feature("numeric", normalization="quantile", buckets=8),
                         pl.DataFrame({"f": train}))  # fmt: skip
    edges = np.quantile(train, np.arange(1, 8) / 8)
    assert fitted.input()["rows"] == 9
    counts = np.bincount(fitted.transform(pl.DataFrame({"f": train})), minlength=9)
    np.testing.assert_array_equal(counts, [50] * 8 + [0])  # equal-frequency on training rows
    table = np.concatenate([rng.normal(size=50), [-10.0, 10.0, edges[3]]])
    got = fitted.transform(pl.DataFrame({"f": [*table, None]}))
    np.testing.assert_array_equal(got, [*np.searchsorted(edges, table, side="right"), 8])


def test_quantile_edges_drop_duplicates():
    train = np.concatenate([np.zeros(50), np.arange(1.0, 51.0)])
    fitted = fit_feature(feature("numeric", normalization="quantile", buckets=5),
                         pl.DataFrame({"f": train}))  # fmt: skip
    edges = np.unique(np.quantile(train, [0.2, 0.4, 0.6, 0.8]))  # 0.0 twice: 3 edges, 4 buckets
    assert fitted.state()["edges"] == edges.tolist() and fitted.input()["rows"] == 5
    np.testing.assert_array_equal(fitted.transform(pl.DataFrame({"f": [0.0, 30.0, None]})),
                                  [np.searchsorted(edges, 0.0, "right"),
                                   np.searchsorted(edges, 30.0, "right"), 4])  # fmt: skip


# --- text and history -------------------------------------------------------------------------


def test_text_joins_non_blank_columns_and_encodes_each_distinct_text_once():
    encoder = FakeEncoder()
    text = feature("text", "text", columns=["title", "tags"], separator=" | ")
    table_df = pl.DataFrame({"title": ["Alien", None, "", "Alien", " "],
                             "tags": ["space.", "drama", None, "space.", "x"]})  # fmt: skip
    fitted = fit_feature(text, table_df, text_encoder=lambda model: encoder)
    got = fitted.transform(table_df)
    expected = FakeEncoder().encode(["Alien | space.", "drama", "x"])
    np.testing.assert_array_equal(
        got, [expected[0], expected[1], [0, 0, 0], expected[0], expected[2]]
    )
    assert encoder.calls == [["Alien | space.", "drama", "x"]]
    assert fitted.input()["dim"] == 3 and fitted.state()["model"] == "all-MiniLM-L6-v2"
    np.testing.assert_array_equal(
        roundtrip(fitted, lambda model: FakeEncoder()).transform(table_df), got
    )


def test_text_refuses_a_model_of_another_dimension():
    text = feature("text", "text", columns=["title"])
    table_df = pl.DataFrame({"title": ["a"]})
    fitted = fit_feature(text, table_df, text_encoder=lambda model: FakeEncoder())
    wider = FakeEncoder()
    wider.dim = 4
    with pytest.raises(FeatureSpecError, match="model"):
        roundtrip(fitted, lambda model: wider).transform(table_df)


def test_history_describes_its_input_and_has_no_table_array():
    spec = parse_side("user", {"features": {"user_id": {"kind": "id"},
                                            "history": {"kind": "history", "length": 20,
                                                        "pooling": "attention"}}})  # fmt: skip
    fitted = FittedSide.fit(spec, pl.DataFrame({"user_id": [1, 2]}), np.array([3, 4]), "users.csv")
    assert fitted.inputs()[1] == {"name": "history", "kind": "history", "encoding": "history",
                                  "rows": 0, "dim": 0, "width": 20, "pooling": "attention"}  # fmt: skip
    assert list(fitted.transform(pl.DataFrame({"user_id": [2]}))) == ["user_id"]


def test_real_text_encoder_places_related_texts_nearer(tmp_path):
    text_encoder = pytest.importorskip("features.text_encoder")
    texts = ["a space opera with starships", "science fiction in outer space",
             "a romantic comedy in Paris"]  # fmt: skip
    table_df = pl.DataFrame({"text": texts})
    fitted = fit_feature(feature("text", "text"), table_df,
                         text_encoder=lambda m: text_encoder.encoder_for(m, cache_dir=tmp_path))  # fmt: skip
    vectors = fitted.transform(table_df)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


# --- a side, its JSON, and its errors ---------------------------------------------------------

ITEM_SPEC = {
    "combine": "concat",
    "features": {
        "item_id": {"kind": "id", "oov_buckets": 2},
        "genre": {"kind": "categorical"},
        "tags": {"kind": "multi_hot", "max_length": 3},
        "price": {"kind": "numeric", "normalization": "log1p"},
        "year": {"kind": "numeric", "normalization": "quantile", "buckets": 4},
        "text": {"kind": "text", "columns": ["title"]},
    },
}
ITEMS_DF = pl.DataFrame({
    "item_id": [1, 2, 3, 4],
    "genre": ["a", "b", None, "a"],
    "tags": [["x", "y"], None, [], ["z"]],
    "price": [0.0, 10.0, None, 3.0],
    "year": [1990, 2000, 2010, None],
    "title": ["One", "Two", None, "Four"],
})  # fmt: skip
NEW_DF = pl.DataFrame({"item_id": [9, 1], "genre": ["q", "b"], "tags": [["q", "x"], ["y"]],
                       "price": [-1.0, 5.0], "year": [3000, 1995], "title": ["New", "One"]})  # fmt: skip


def test_a_side_round_trips_through_json_with_identical_transforms():
    spec = parse_side("item", ITEM_SPEC)
    fitted = FittedSide.fit(spec, ITEMS_DF, np.array([1, 2, 3, 1]), "items.csv",
                            lambda model: FakeEncoder())  # fmt: skip
    restored = FittedSide.from_json(
        json.loads(json.dumps(fitted.to_json())), lambda m: FakeEncoder()
    )
    assert restored == fitted and restored.spec == spec and restored.inputs() == fitted.inputs()
    for table_df in (ITEMS_DF, NEW_DF):
        arrays, again = fitted.transform(table_df), restored.transform(table_df)
        assert list(arrays) == [f.name for f in spec.features]
        for name, array in arrays.items():
            assert array.dtype == again[name].dtype and len(array) == table_df.height
            assert array.flags.writeable  # torch.from_numpy takes it without a copy or warning
            np.testing.assert_array_equal(again[name], array)


def test_null_typed_columns_at_transform_read_as_missing():
    fitted = FittedSide.fit(parse_side("item", ITEM_SPEC), ITEMS_DF, None, "items.csv",
                            lambda model: FakeEncoder())  # fmt: skip
    nulls_df = pl.DataFrame({c: [None, None] for c in ITEMS_DF.columns})
    arrays = fitted.transform(nulls_df)
    np.testing.assert_array_equal(arrays["item_id"], [-1, -1])
    np.testing.assert_array_equal(arrays["genre"], [3, 3])  # vocabulary a, b; OOV 2; missing 3
    np.testing.assert_array_equal(arrays["tags"], np.full((2, 3), 3))
    np.testing.assert_array_equal(arrays["price"], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(arrays["year"], [4, 4])
    np.testing.assert_array_equal(arrays["text"], np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("change", "column", "says"),
    [
        (lambda df: df.drop("genre"), "genre", "no column"),
        (lambda df: df.with_columns(pl.col("price").cast(pl.String)), "price", "type String"),
        (lambda df: df.with_columns(genre=pl.Series([1.5, 2.5, 3.5, 4.5])), "genre", "Float64"),
        (lambda df: df.with_columns(pl.col("item_id").cast(pl.Float64)), "item_id", "type"),
        (lambda df: df.with_columns(tags=pl.lit([1.5])), "tags", "type List(Float64)"),
        (lambda df: df.with_columns(pl.col("year").cast(pl.String)), "year", "type String"),
        (lambda df: df.with_columns(pl.col("title").str.len_chars()), "title", "type UInt32"),
        (lambda df: df.with_columns(pl.lit(None, pl.String).alias("genre")), "genre", "no values"),
        (lambda df: df.with_columns(pl.lit(float("nan")).alias("price")), "price", "no values"),
        (lambda df: df.with_columns(pl.lit(" ").alias("title")), "title", "no values"),
        (lambda df: df.with_columns(tags=pl.lit([], pl.List(pl.String))), "tags", "no values"),
    ],
)
def test_bad_columns_name_the_file_column_and_feature(change, column, says):
    spec = parse_side("item", ITEM_SPEC)
    name = next(f.name for f in spec.features if column in f.columns)
    with pytest.raises(DataFileError) as caught:
        check_columns(change(ITEMS_DF), spec, "items.csv")
    error = caught.value
    assert (error.path, error.column) == ("items.csv", column)
    assert says in str(error) and f"feature {name!r}" in str(error) and "items.csv" in str(error)
    with pytest.raises(DataFileError):
        FittedSide.fit(spec, change(ITEMS_DF), None, "items.csv", lambda model: FakeEncoder())


def test_a_transform_refuses_values_of_another_kind_than_fitted():
    fitted = fit_feature(feature("categorical", "genre"), pl.DataFrame({"genre": [1, 2]}))
    with pytest.raises(DataFileError) as caught:
        fitted.transform(pl.DataFrame({"genre": ["1"]}), where="request")
    assert (caught.value.path, caught.value.column) == ("request", "genre")
    assert "feature 'genre' (categorical) reads int values" in str(caught.value)


def test_a_text_feature_joins_a_list_column_s_values():
    """Tags (a list column) join the title as "title. tag, tag"; blank parts are skipped."""
    from features.columns import joined_text

    feature = parse_feature("item", "text", {"kind": "text", "columns": ["title", "tags"]})
    table = pl.DataFrame(
        {"title": ["A film", None, " "], "tags": [["pixar", "fun"], ["noir"], None]},
        schema={"title": pl.String, "tags": pl.List(pl.String)},
    )
    assert joined_text(table, feature, "items.csv").to_list() == [
        "A film. pixar, fun",
        "noir",
        None,
    ]
