import logging

import numpy as np
import polars as pl
import pytest
import yaml

from features.auto import announce, infer, infer_column
from features.fitting import FittedSide
from features.spec import FeaturesConfig

LONG = [
    "A crew of miners wakes up to a distress call from a moon",
    "Two strangers meet on a night train across Europe and talk",
    "A detective hunts a killer through the rain of a future city",
    "An old fisherman fights a giant marlin far out at sea",
    "A family moves into a house where the walls remember things",
    "A chef loses her sense of taste the week her restaurant opens",
]


@pytest.fixture
def items_df() -> pl.DataFrame:
    """One column of each sort a user's item table may have."""
    return pl.DataFrame({
        "item_id": [11, 12, 13, 14, 15, 16],
        "genre": ["drama", "comedy", "drama", "drama", "comedy", "drama"],
        "synopsis": LONG,
        "title": ["Moon Call", "Night Train", "Rain City", "The Sea", "Walls", "Taste"],
        "views": [0, 3, 1, 7, 12000, 2],  # skewed counts: log1p
        "rating": [3.5, 4.0, 2.5, 5.0, 3.0, 4.5],  # standard
        "tags": [["space"], ["train", "talk"], [], None, ["sea"], ["food", "family"]],
        "sku": ["A-1", "A-2", "A-3", "A-4", "A-5", "A-6"],  # unique short strings: an id
        "tmdb_id": [901, 455, 23, 78, 1200, 6],  # unique integers named like an id
        "is_new": [True, False, True, None, False, False],
        "released": pl.date_range(pl.date(2020, 1, 1), pl.date(2020, 1, 6), eager=True),
    })  # fmt: skip


def test_infer_gives_each_column_its_kind(items_df, caplog):
    users_df = pl.DataFrame({"user_id": ["u1", "u2", "u3", "u4", "u5"],
                             "age": [20, 35, 20, 61, 35], "gender": ["f", "m", "f", "f", "m"]})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="features.auto"):
        config = infer(users_df, items_df, history_length=30)
    user = {f.name: f.to_config() for f in config.user.features}
    item = {f.name: f.to_config() for f in config.item.features}
    assert list(user) == ["user_id", "history", "age", "gender"]
    assert user["history"]["length"] == 30
    assert (user["age"]["kind"], user["age"]["normalization"]) == ("numeric", "standard")
    assert user["gender"]["kind"] == "categorical"
    assert list(item) == ["item_id", "genre", "views", "rating", "tags", "is_new", "text"]
    assert {name: options["kind"] for name, options in item.items()} == {
        "item_id": "id", "genre": "categorical", "views": "numeric", "rating": "numeric",
        "tags": "multi_hot", "is_new": "categorical", "text": "text",
    }  # fmt: skip
    assert (
        item["views"]["normalization"] == "log1p" and item["rating"]["normalization"] == "standard"
    )
    assert item["text"]["columns"] == ["synopsis", "title"]
    skipped = {r.args[1]: r.args[2] for r in caplog.records}
    assert set(skipped) == {"sku", "tmdb_id", "released"}
    assert "id" in skipped["sku"] and "id" in skipped["tmdb_id"] and "Date" in skipped["released"]


def test_inferred_config_yaml_parses_back_to_the_same_config(items_df):
    config = infer(None, items_df)
    assert FeaturesConfig.parse(yaml.safe_load(config.to_yaml())) == config
    assert [f.name for f in config.user.features] == ["user_id", "history"]


def test_inferred_config_fits_its_table(items_df):
    config = infer(None, items_df)
    fitted = FittedSide.fit(config.item, items_df, None, "items.csv", lambda model: _Encoder())
    arrays = fitted.transform(items_df)
    np.testing.assert_array_equal(arrays["genre"], [1, 0, 1, 1, 0, 1])  # comedy, drama


class _Encoder:
    dim = 2

    def encode(self, texts):
        return np.ones((len(texts), 2), dtype=np.float32)


@pytest.mark.parametrize(
    ("values", "kind", "options"),
    [
        (["a", "b", "a", "b", "a", None], "categorical", {}),
        (["x" * 40, "y" * 40, "x" * 40], "text", {}),
        ([f"word{i} word" for i in range(10)], "text", {}),
        ([f"code{i}" for i in range(10)], None, {}),  # unique per row: an id
        ([f"z{i % 6}" for i in range(10)], None, {}),  # 6 codes in 10 rows: too many, too short
        ([0.0, 0.5, 1.0, 500.0], "numeric", {"normalization": "log1p"}),
        ([-1.0, 0.5, 1.0, 500.0], "numeric", {"normalization": "standard"}),
        ([0, 1, 2, 3], None, {}),  # numbers its rows
        ([4, 9, 2, 7], "numeric", {"normalization": "standard"}),
        ([[1, 2], [3]], "multi_hot", {}),
        ([[0.5], [1.5]], None, {}),
        ([None, None], None, {}),
        (["", " "], None, {}),
        ([float("nan"), None], None, {}),
    ],
)
def test_infer_column(values, kind, options):
    inferred = infer_column("c", pl.Series("c", values))
    assert (inferred.kind, inferred.options) == (kind, options), inferred.reason


def test_id_names_and_name_clashes():
    assert infer_column("movieId", pl.Series([5, 9, 3])).kind is None
    assert infer_column("paid", pl.Series([5, 9, 3])).kind == "numeric"
    table_df = pl.DataFrame({"item_id": [1, 2, 3, 4, 5], "text": ["a", "b", "a", "b", "a"],
                             "the plot": [w * 40 for w in "abcde"]})  # fmt: skip
    item = infer(None, table_df).item
    assert [(f.name, f.kind, f.columns) for f in item.features[1:]] == [
        ("text", "categorical", ("text",)),
        ("text_2", "text", ("the plot",)),
    ]


def test_announce_prints_the_yaml_and_how_to_keep_it(items_df):
    config = infer(None, items_df)
    lines = announce(config).splitlines()
    assert lines[0] == "features=auto inferred:"
    assert "\n".join(lines[1:-1]) + "\n" == config.to_yaml()
    assert "conf/features/<name>.yaml" in lines[-1] and "features=<name>" in lines[-1]
