"""serve's public calls as a user makes them on a loaded bundle: Recommender.load, recommend,
recommend_many, similar_items, and the errors they name. (They were in tests/test_train.py, on a
trained bundle; the planted one answers them alike.)"""

from __future__ import annotations

import json
import shutil

import pytest

from serve import (
    FORMAT_VERSION,
    BundleError,
    Recommender,
    UnknownItemError,
    UnknownUserError,
    read_bundle,
)

MANIFEST, USERS = "manifest.json", "users.parquet"  # two files of a bundle version


def first_user(recommender: Recommender):
    """The raw id of the user in row 0 of the bundle's users table."""
    return recommender.bundle.users["user_id"][0]


def test_recommend_returns_k_unseen_items_with_titles(recommender):
    user = first_user(recommender)
    item_ids = recommender.bundle.items["item_id"]
    seen = set(item_ids.gather(recommender.bundle.users["seen"][0]).to_list())
    results = recommender.recommend(user, k=15)
    assert len(results) == 15
    assert not {r.item_id for r in results} & seen
    assert all(r.title and r.title.startswith("Item ") for r in results)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    with_seen = recommender.recommend(
        str(user), k=15, exclude_seen=False
    )  # ids given as strings work
    assert len(with_seen) == 15
    # One batched tower call: the same items; scores equal up to float rounding (a Linear layer
    # in the tower rounds differently for a batch of 2 than for 1).
    batched = recommender.recommend_many([user, user], k=3)
    for recs in batched:
        assert [r.item_id for r in recs] == [r.item_id for r in results[:3]]
        assert [r.score for r in recs] == pytest.approx([r.score for r in results[:3]], abs=1e-5)


def test_similar_items_exclude_the_item_itself(recommender):
    item = recommender.bundle.items["item_id"][0]
    results = recommender.similar_items(item, k=5)
    assert len(results) == 5 and item not in [r.item_id for r in results]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_named(recommender, k):
    with pytest.raises(ValueError, match=f"k must be a positive integer, got {k!r}"):
        recommender.recommend(first_user(recommender), k=k)


def test_unknown_ids_are_named(recommender):
    with pytest.raises(UnknownUserError, match="unknown user id 'nobody'"):
        recommender.recommend("nobody")
    with pytest.raises(UnknownItemError, match="unknown item id 12"):
        recommender.similar_items(12)


def _copy(bundle_dir, tmp_path):
    """A copy of the bundle's current version directory (itself a plain bundle)."""
    target = tmp_path / "bundle"
    shutil.copytree(read_bundle(bundle_dir).path, target)
    return target


def test_a_bundle_missing_a_file_is_named(bundle_dir, tmp_path):
    broken = _copy(bundle_dir, tmp_path)
    (broken / USERS).unlink()
    with pytest.raises(BundleError, match=r"bundle is missing users\.parquet"):
        Recommender.load(broken)
    with pytest.raises(BundleError, match="no bundle directory"):
        Recommender.load(tmp_path / "nowhere")


def test_another_format_version_or_a_similarity_mismatch_fails_loudly(bundle_dir, tmp_path):
    bundle = _copy(bundle_dir, tmp_path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(
        BundleError, match=f"bundle format version 99; this twotower reads version {FORMAT_VERSION}"
    ):
        Recommender.load(bundle)
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "similarity": "dot"}))
    with pytest.raises(
        BundleError, match="similarity 'dot' but the towers were trained with 'cosine'"
    ):
        Recommender.load(bundle)
