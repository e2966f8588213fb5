"""serve/update.py: add, replace and remove items without retraining, as new bundle versions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from serve import BundleError, Recommender, UnknownItemError, read_bundle, update_items
from serve.versions import CURRENT
from towers.scoring import PRIOR_SCALE


def item_row(bundle, item_id) -> int:
    return bundle.items["item_id"].to_list().index(item_id)


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
    genre_ids = torch.tensor([items["genre_ids"][2].to_list()])
    year = torch.tensor([items["year_bucket"][2]])
    with torch.inference_mode():
        expected = before.scorer.encode_items(torch.tensor([0]), genre_ids, year).numpy()[0]
    np.testing.assert_allclose(after.item_vectors[0], expected, rtol=1e-5, atol=1e-6)
    new_row = item_row(after.bundle, 999_001)
    assert new_row == items.height  # appended: no other row moved
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
    with pytest.raises(ValueError, match=r"upsert item 5: year must be .*, got 1234"):
        update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [5], "year": [1234]}))
    with pytest.raises(ValueError, match="colour"):
        update_items(bundle_copy, upsert=pl.DataFrame({"item_id": [5], "colour": ["red"]}))
    with pytest.raises(BundleError, match="version directory"):
        update_items(bundle_copy / "v000001", remove=[item])
    assert (bundle_copy / CURRENT).read_text().strip() == "v000001"  # nothing was written


def test_unknown_genres_are_reported(bundle_copy):
    report = update_items(
        bundle_copy,
        upsert=pl.DataFrame({"item_id": [77_777], "genres": [["Neo-Noir"]], "year_bucket": [3]}),
    )
    assert report.unknown_genres == ["Neo-Noir"] and report.added == [77_777]


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
