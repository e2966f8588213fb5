"""serve/update.py: add, replace and remove items without retraining, as new bundle versions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from serve import BundleError, Recommender, UnknownItemError, read_bundle, update_items
from serve.errors import RequestError
from serve.versions import CURRENT
from towers.scoring import PRIOR_SCALE


def item_row(bundle, item_id) -> int:
    return bundle.items["item_id"].to_list().index(item_id)


def item_vector(bundle, item_code: int, genres: list[str], year: int | None) -> np.ndarray:
    """The item towers on inputs built here: id row `item_code` (-1: none), the `genres`' rows
    ("g{c}" is row c of the sorted vocabulary, 6 the padding row), the year's bucket of the
    fitted edges (None: the missing row, past the buckets)."""
    _, fitted_genres, fitted_year = bundle.features.item.features
    assert fitted_genres.lookup.vocabulary.to_list() == [f"g{c}" for c in range(6)]
    bag = [int(g[1:]) for g in genres]
    bag += [6] * (fitted_genres.feature.max_length - len(bag))
    edges = np.asarray(fitted_year.edges)
    bucket = len(edges) + 1 if year is None else int(np.searchsorted(edges, year, side="right"))
    inputs = {
        "item_id": torch.tensor([item_code]),
        "genres": torch.tensor([bag]),
        "year": torch.tensor([bucket]),
    }
    with torch.inference_mode():
        return bundle.scorer.encode_items(inputs).numpy()[0]  # (D,)


@pytest.mark.parametrize(
    "fixture", ["bundle_copy", "ivf_copy", "hnsw_copy", "refine_copy", "ensemble_copy"]
)
def test_add_replace_remove(request, fixture):
    path = request.getfixturevalue(fixture)
    before = read_bundle(path)
    items = before.items
    replaced_id, removed_id = items["item_id"][0], items["item_id"][1]
    genres = items["genres"][2].to_list()  # another item's genres: known to the tower
    upsert = pl.DataFrame(
        {
            "item_id": [replaced_id, 999_001],
            "genres": [genres, genres],
            "year": [items["year"][2]] * 2,
            "title": ["changed", "brand new"],
        }
    )
    report = update_items(path, upsert=upsert, remove=[removed_id])
    assert (report.added, report.replaced, report.removed) == (
        [999_001],
        [replaced_id],
        [removed_id],
    )
    assert (
        report.base_version == before.version
        and report.version == (path / CURRENT).read_text().strip()
    )

    after = Recommender.load(path)
    assert after.version == report.version
    assert (
        after.num_items == items.height + 1 and after.num_active == items.height
    )  # +1 new, -1 removed
    # Vectors come from the item tower on the given features: the replaced item keeps its id
    # embedding, the new one has none (features alone).
    new_row = item_row(after.bundle, 999_001)
    assert new_row == items.height  # appended: no other row moved
    for row, item_code in ((0, 0), (new_row, -1)):
        expected = item_vector(before, item_code, genres, items["year"][2])
        np.testing.assert_allclose(after.item_vectors[row], expected, rtol=1e-5, atol=1e-6)
    # The replaced item keeps its mark (trained), the new one is content-only.
    assert after.bundle.items["content_only"].gather([0, new_row]).to_list() == [False, True]
    np.testing.assert_array_equal(after.item_vectors[2:new_row], before.item_vectors[2:])
    # The new item is searchable, the removed one is gone everywhere.
    similar = after.similar_items(999_001, 5)
    assert len(similar) == 5
    _, found = after.index.search(after.item_vectors[[new_row]], 1)
    assert (
        found[0, 0] == new_row
        or after.item_vectors[found[0, 0]] @ after.item_vectors[new_row] >= 0.999
    )
    with pytest.raises(UnknownItemError):
        after.similar_items(removed_id)
    for user in after.bundle.users["user_id"].to_list()[:30]:
        assert removed_id not in {r.item_id for r in after.recommend(user, 50)}
    assert after.bundle.items.filter(pl.col("item_id") == replaced_id)["title"][0] == "changed"
    # The previous version is still there, unchanged.
    assert read_bundle(path / before.version).items.height == items.height


def test_re_adding_a_removed_item_reuses_its_row(bundle_copy):
    item = read_bundle(bundle_copy).items["item_id"][4]
    update_items(bundle_copy, remove=[item])
    report = update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [item]}))
    assert report.added == [item]
    recommender = Recommender.load(bundle_copy)
    assert recommender.item_index(item) == 4 and recommender.num_active == recommender.num_items


def test_update_errors_are_named(bundle_copy):
    with pytest.raises(UnknownItemError, match="unknown item id 123456789"):
        update_items(bundle_copy, remove=[123456789])
    item = read_bundle(bundle_copy).items["item_id"][0]
    with pytest.raises(ValueError, match="both upserted and removed"):
        update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [item]}), remove=[item])
    with pytest.raises(
        RequestError, match="upsert columns must fit the bundle's item table"
    ) as err:
        update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [5], "year": ["soon"]}))
    assert err.value.field == "upsert"
    for column, value in (("colour", "red"), ("content_only", True), ("active", False)):
        with pytest.raises(RequestError, match=column) as err:
            update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [5], column: [value]}))
        assert err.value.field == "upsert"
    with pytest.raises(BundleError, match="version directory"):
        update_items(bundle_copy / "v000001", remove=[item])
    assert (bundle_copy / CURRENT).read_text().strip() == "v000001"  # nothing was written


def test_values_the_features_never_saw_read_as_missing(bundle_copy):
    # A genre the fitted vocabulary lacks reads nothing; no year reads the missing bucket.
    before = read_bundle(bundle_copy)
    upsert = pl.DataFrame({"item_id": [77_777], "genres": [["g1", "Neo-Noir"]]})
    report = update_items(bundle_copy, upsert=upsert)
    assert report.added == [77_777]
    after = read_bundle(bundle_copy)
    row = item_row(after, 77_777)
    assert after.items["genres"][row].to_list() == ["g1", "Neo-Noir"]  # the raw table keeps it
    assert after.items["year"][row] is None and after.items["content_only"][row]
    expected = item_vector(before, -1, ["g1"], None)
    np.testing.assert_allclose(after.item_vectors[row], expected, rtol=1e-5, atol=1e-6)


def test_an_item_added_under_a_popularity_prior_counts_as_never_seen(prior_copy):
    before = read_bundle(prior_copy)
    items = before.items
    upsert = pl.DataFrame(
        {
            "item_id": [items["item_id"][3], 999_002],
            "genres": [items["genres"][2].to_list()] * 2,
            "year": [items["year"][2]] * 2,
            "title": ["changed", "brand new"],
        }
    )
    update_items(prior_copy, upsert=upsert)
    after = Recommender.load(prior_copy)
    log_p = before.scorer.item_prior
    coordinate = after.item_vectors[:, -2] * PRIOR_SCALE
    assert coordinate[3] == pytest.approx(float(log_p[3]))  # kept its popularity
    new = item_row(after.bundle, 999_002)
    assert coordinate[new] == pytest.approx(float(log_p[-1]))  # the padding entry: count 0
    assert len(after.similar_items(999_002, 5)) == 5
