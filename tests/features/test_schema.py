import polars as pl
import pytest

from features import schema


def test_validate_names_missing_and_mistyped_columns_and_what_was_found():
    lf = pl.LazyFrame({"user_id": [1], "item_id": [1.5], "ts": [3]})
    with pytest.raises(schema.SchemaError) as err:
        schema.validate(lf, {"user_id": "id", "item_id": "id", "timestamp": "int"}, "ratings.csv")
    message = str(err.value)
    assert "ratings.csv" in message
    assert "missing column 'timestamp'" in message
    assert "column 'item_id' has type Float64" in message
    assert "Found columns: user_id: Int64, item_id: Float64, ts: Int64" in message


def test_validate_accepts_string_or_integer_ids_and_checks_optional_columns():
    ok = pl.LazyFrame({"user_id": ["a"], "item_id": [7], "rating": [4.0]})
    assert schema.validate(ok, schema.INTERACTIONS, "x", schema.INTERACTIONS_OPTIONAL) is ok
    bad = pl.LazyFrame({"user_id": ["a"], "item_id": [7], "rating": ["good"]})
    with pytest.raises(schema.SchemaError, match="'rating' has type String, expected float"):
        schema.validate(bad, schema.INTERACTIONS, "x", schema.INTERACTIONS_OPTIONAL)
