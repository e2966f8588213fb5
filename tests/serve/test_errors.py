"""serve/errors.py: every input error of serving is typed and carries its field and value."""

from __future__ import annotations

import pickle

import polars as pl
import pytest

from serve import Recommender, read_bundle, update_items
from serve.__main__ import _read_table
from serve.errors import (
    BundleError,
    RequestError,
    UnknownIdError,
    UnknownItemError,
    UnknownUserError,
    check_k,
)


def test_request_error_carries_field_and_value_and_names_both():
    err = RequestError("filters", {"colour": "red"}, "must name filterable columns ['genres']")
    assert isinstance(err, ValueError)  # callers catching ValueError still catch it
    assert (err.field, err.value) == ("filters", {"colour": "red"})
    assert str(err) == "filters must name filterable columns ['genres'], got {'colour': 'red'}"
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.field, copy.value, str(copy)) == (
        RequestError,
        "filters",
        {"colour": "red"},
        str(err),
    )


def test_long_values_are_shortened_in_the_message_only():
    history = list(range(10_000))
    err = RequestError("history", history, "must be short")
    assert err.value is history and len(str(err)) < 200 and "..." in str(err)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "10", None])
def test_check_k_names_field_and_value(k):
    with pytest.raises(RequestError) as raised:
        check_k(k)
    assert raised.value.field == "k" and raised.value.value == k
    assert str(raised.value) == f"k must be a positive integer, got {k!r}"
    assert check_k(7) == 7


def test_unknown_ids_carry_kind_id_and_field():
    user = UnknownUserError("ghost", 300)
    assert (user.kind, user.raw_id, user.field) == ("user", "ghost", "user_id")
    assert str(user) == "unknown user id 'ghost': not one of the bundle's 300 users"
    item = UnknownItemError(5, 120, "exclude")
    assert isinstance(item, UnknownIdError) and isinstance(item, LookupError)
    assert (item.kind, item.raw_id, item.field) == ("item", 5, "exclude")
    assert UnknownItemError(5, 120).field == "item_id"
    assert not isinstance(item, ValueError) and not issubclass(BundleError, ValueError)


def _raised(call, *args, **kwargs) -> Exception:
    with pytest.raises((RequestError, UnknownIdError)) as raised:
        call(*args, **kwargs)
    return raised.value


def test_recommender_input_errors_name_their_field(recommender):
    user = read_bundle(recommender.bundle.path).users["user_id"][0]
    item = recommender.item_id_list[0]
    cases = [
        # (error, type, field, value)
        (_raised(recommender.recommend, user, 0), RequestError, "k", 0),
        (_raised(recommender.similar_items, item, -1), RequestError, "k", -1),
        (
            _raised(recommender.recommend, user, 5, filters={"colour": "red"}),
            RequestError,
            "filters",
            "colour",
        ),
        (
            _raised(recommender.recommend, user, 5, filters=["genres"]),
            RequestError,
            "filters",
            ["genres"],
        ),
        (
            _raised(recommender.recommend, user, 5, exclude="abc"),
            RequestError,
            "exclude",
            "abc",
        ),
        (
            _raised(recommender.recommend, user, 5, history="abc"),
            RequestError,
            "history",
            "abc",
        ),
        (
            _raised(recommender.recommend_many, [user, user], 5, histories=[[item]]),
            RequestError,
            "histories",
            [[item]],
        ),
        (
            _raised(recommender.recommend, user, 5, exclude=[item, "nope"]),
            UnknownItemError,
            "exclude",
            "nope",
        ),
        (
            _raised(recommender.recommend, "new", 5, history=["nope"]),
            UnknownItemError,
            "history",
            "nope",
        ),
        (_raised(recommender.recommend, "ghost", 5), UnknownUserError, "user_id", "ghost"),
        (_raised(recommender.similar_items, "nope", 5), UnknownItemError, "item_id", "nope"),
        (
            _raised(Recommender, recommender.bundle, cold_start="guess"),
            RequestError,
            "cold_start",
            "guess",
        ),
    ]
    for err, kind, field, value in cases:
        assert type(err) is kind, err
        assert err.field == field, err
        assert (err.value if kind is RequestError else err.raw_id) == value, err
        if kind is RequestError:  # the message names both
            assert str(err).startswith(f"{field} ") and repr(value)[:20] in str(err), err


def test_a_filter_that_does_not_fit_its_column_is_a_request_error(recommender):
    user = read_bundle(recommender.bundle.path).users["user_id"][0]
    filters = {"year": "not a year"}
    err = _raised(recommender.recommend, user, 5, filters=filters)
    assert type(err) is RequestError and err.field == "filters" and err.value == filters


def test_update_input_errors_name_their_field(bundle_copy, tmp_path):
    item = read_bundle(bundle_copy).items["item_id"][0]
    cases = [
        (_raised(update_items, bundle_copy, remove=[123456789]), UnknownItemError, "remove"),
        (
            _raised(
                update_items, bundle_copy, upsert=pl.DataFrame({"item_id": [item]}), remove=[item]
            ),
            RequestError,
            "remove",
        ),
        (
            _raised(
                update_items, bundle_copy, upsert=pl.DataFrame({"item_id": [5], "year": ["soon"]})
            ),
            RequestError,
            "upsert",
        ),
        (
            _raised(
                update_items, bundle_copy, upsert=pl.DataFrame({"item_id": [5], "colour": ["r"]})
            ),
            RequestError,
            "upsert",
        ),
        (
            _raised(update_items, bundle_copy, upsert=pl.DataFrame({"item_id": [7, 7, 8]})),
            RequestError,
            "upsert",
        ),
        (_raised(_read_table, str(tmp_path / "new.txt")), RequestError, "--upsert"),
    ]
    year_type = {"item_id": pl.Int64, "year": pl.String}  # not the table's Int32
    values = [123456789, item, year_type, ["item_id", "colour"], [7, 7], str(tmp_path / "new.txt")]
    for (err, kind, field), value in zip(cases, values, strict=True):
        assert type(err) is kind and err.field == field, err
        assert (err.value if kind is RequestError else err.raw_id) == value, err
    assert read_bundle(bundle_copy).version == "v000001"  # no failed update wrote a version
