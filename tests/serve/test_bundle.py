"""serve/bundle.py, serve/versions.py and serve/export.py: the versioned layout, the sweep
written at export, strict reading, atomic version switches."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from serve import FORMAT_VERSION, BundleError, Recommender, export_bundle, read_bundle
from serve.files import FEATURES, INDEX, MANIFEST, PLOT
from serve.index import DEFAULT_K_FACTOR, K_FACTOR, NPROBE
from serve.versions import CURRENT, resolve, write_version
from tests.serve.conftest import planted_features, planted_tables


def version_dir(root: Path) -> Path:
    return resolve(root)[0]


def test_export_writes_a_versioned_bundle(bundle_dir):
    assert (bundle_dir / CURRENT).read_text().strip() == "v000001"
    manifest = json.loads((bundle_dir / "v000001" / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["index"]["metric"] == "inner_product"
    assert manifest["index"]["sweep"] is None  # exact search: nothing to sweep
    bundle = read_bundle(bundle_dir)
    assert bundle.version == "v000001" and bundle.path == bundle_dir / "v000001"
    # A version directory on its own is a plain bundle too.
    assert read_bundle(bundle_dir / "v000001").version is None


def test_ann_export_sweeps_and_serves_the_chosen_setting(ivf_bundle):
    manifest = json.loads((version_dir(ivf_bundle) / MANIFEST).read_text())
    sweep = manifest["index"]["sweep"]
    assert sweep["knob"] == NPROBE and sweep["target_recall"] == 0.95
    assert manifest["index"]["search_params"] == {NPROBE: sweep["chosen"]}
    points = {p["value"]: p for p in sweep["points"]}
    assert points[sweep["chosen"]]["recall"] >= 0.95
    assert all(p["recall"] < 0.95 for v, p in points.items() if v < sweep["chosen"])
    png = version_dir(ivf_bundle) / PLOT
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["files"][PLOT]  # checksummed with the rest
    recommender = Recommender.load(ivf_bundle)
    assert recommender.search_params == {NPROBE: sweep["chosen"]}
    assert recommender._params.nprobe == sweep["chosen"]


def test_hnsw_export_chooses_ef_search(hnsw_bundle):
    manifest = json.loads((version_dir(hnsw_bundle) / MANIFEST).read_text())
    assert set(manifest["index"]["search_params"]) == {"efSearch"}
    assert manifest["index"]["sweep"]["reached"]


def test_reranked_export_sweeps_nprobe_at_its_k_factor(refine_bundle):
    manifest = json.loads((version_dir(refine_bundle) / MANIFEST).read_text())
    sweep = manifest["index"]["sweep"]
    assert sweep["knob"] == NPROBE and sweep["reached"]
    assert manifest["index"]["search_params"] == {
        K_FACTOR: DEFAULT_K_FACTOR,
        NPROBE: sweep["chosen"],
    }
    recommender = Recommender.load(refine_bundle)
    assert recommender.search_params == manifest["index"]["search_params"]
    assert recommender._params.k_factor == DEFAULT_K_FACTOR


def test_missing_file_is_named(bundle_copy):
    (version_dir(bundle_copy) / INDEX).unlink()
    with pytest.raises(BundleError, match=r"missing index\.faiss"):
        read_bundle(bundle_copy)


def test_features_json_carries_the_fitted_features(bundle_dir):
    # The planted tables fitted again give exactly the bundle's features (features.json).
    items_df, users_df, _, _ = planted_tables(np.random.default_rng(0))
    expected = planted_features(items_df, users_df)
    bundle = read_bundle(bundle_dir)
    assert bundle.features.to_json() == expected.to_json()
    assert json.loads((version_dir(bundle_dir) / FEATURES).read_text()) == expected.to_json()
    manifest = json.loads((version_dir(bundle_dir) / MANIFEST).read_text())
    assert FEATURES in manifest["files"]  # checksummed with the rest
    inputs = [i["name"] for i in manifest["model"]["spec"]["item_inputs"]]
    assert inputs == ["item_id", "genres", "year"]


def test_missing_or_unreadable_features_are_named(bundle_copy):
    features = version_dir(bundle_copy) / FEATURES
    text = features.read_text()
    features.write_text(text.replace('"format": 1', '"format": 7'))
    with pytest.raises(BundleError, match=r"features\.json: cannot read the fitted features"):
        read_bundle(bundle_copy, verify="off")
    with pytest.raises(BundleError, match=r"features\.json: sha256 mismatch"):
        read_bundle(bundle_copy)
    features.unlink()
    with pytest.raises(BundleError, match=r"missing features\.json"):
        read_bundle(bundle_copy)


def test_other_format_version_is_refused(bundle_copy):
    path = version_dir(bundle_copy) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=f"format version 1; this twotower reads version {FORMAT_VERSION}"
    ):
        Recommender.load(bundle_copy)
    del manifest["format_version"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version None"):
        read_bundle(bundle_copy)


def test_broken_pointer_and_non_bundles_are_named(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="no bundle directory"):
        read_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match=r"missing manifest\.json"):
        read_bundle(tmp_path)
    (bundle_copy / CURRENT).write_text("v000009\n")
    with pytest.raises(BundleError, match="v000009"):
        read_bundle(bundle_copy)
    (bundle_copy / CURRENT).write_text("../../etc\n")
    with pytest.raises(BundleError, match="not a version directory"):
        read_bundle(bundle_copy)


def test_inconsistent_counts_are_named(bundle_copy):
    path = version_dir(bundle_copy) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["num_items"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="item counts disagree"):
        read_bundle(bundle_copy)


def _copy_version(src: Path):
    def fill(directory: Path) -> None:
        for file in src.iterdir():
            shutil.copy(file, directory / file.name)

    return fill


def test_a_failed_write_leaves_the_served_version_alone(bundle_copy):
    def fail(directory: Path) -> None:
        (directory / MANIFEST).write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version(bundle_copy, fail)
    assert (bundle_copy / CURRENT).read_text().strip() == "v000001"
    assert sorted(p.name for p in bundle_copy.iterdir()) == [CURRENT, "v000001"]


def test_readers_see_the_old_or_the_new_version_never_half(bundle_copy):
    """Versions are switched while another thread keeps reading: every read is whole."""
    source = bundle_copy / "v000001"
    snapshot = bundle_copy.parent / "snapshot"
    shutil.copytree(source, snapshot)
    seen, errors, done = set(), [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.add(read_bundle(bundle_copy).version)
            except BundleError as err:  # pragma: no cover - the failure this test looks for
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(6):
            write_version(bundle_copy, _copy_version(snapshot))
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert (bundle_copy / CURRENT).read_text().strip() == "v000007"
    # Older versions are pruned (the last three are kept).
    assert sorted(p.name for p in bundle_copy.iterdir() if p.is_dir()) == [
        "v000005",
        "v000006",
        "v000007",
    ]
    assert len(seen) >= 1


def test_exporting_over_a_plain_bundle_makes_it_versioned(bundle_dir, tmp_path):
    plain = Path(shutil.copytree(bundle_dir / "v000001", tmp_path / "plain"))
    from tests.serve.conftest import reexport

    reexport(bundle_dir, plain, {"factory": "Flat"})
    assert (plain / CURRENT).read_text().strip() == "v000001"
    assert not (plain / MANIFEST).exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="refusing"):
        reexport(bundle_dir, tmp_path / "junk", {"factory": "Flat"})


# -- export at a Matryoshka prefix ----------------------------------------------------------------
PREFIX = 8  # of the planted towers' 32 dimensions


@pytest.fixture(scope="module")
def prefix_bundle(bundle_dir, tmp_path_factory) -> Path:
    """The session bundle's towers exported at their first PREFIX coordinates (export.dim)."""
    bundle = read_bundle(bundle_dir)
    return export_bundle(
        tmp_path_factory.mktemp("prefix") / "bundle",
        bundle.scorer.at_dim(PREFIX),
        bundle.features,
        bundle.items,
        bundle.users,
        index_config={"factory": "Flat"},
        num_train_users=bundle.manifest["num_train_users"],
    )


def _unit_prefix(vectors: np.ndarray) -> np.ndarray:
    cut = vectors[:, :PREFIX]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)


def test_a_prefix_export_indexes_the_prefix_and_recommends_by_brute_force_over_it(
    recommender, prefix_bundle
):
    """The index holds PREFIX-dim vectors, the manifest says so, and `recommend` returns the
    brute-force top k over the full bundle's vectors cut to PREFIX and renormalised, the user's
    seen items left out, with their scores."""
    prefix = Recommender.load(prefix_bundle)
    manifest = prefix.bundle.manifest
    assert manifest["model"]["scoring"]["dim"] == PREFIX and manifest["embedding_dim"] == PREFIX
    assert prefix.index.d == PREFIX and prefix.item_vectors.shape == (recommender.num_items, 8)
    items = _unit_prefix(recommender.item_vectors)
    np.testing.assert_allclose(prefix.item_vectors, items, atol=1e-6)
    users = np.arange(0, 200, 17)
    queries = _unit_prefix(recommender.encode_users(users))
    for user, query in zip(users, queries, strict=True):
        scores = items @ query
        scores[recommender.seen(user)] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:10]
        got = prefix.recommend(prefix.bundle.users["user_id"][int(user)], k=10)
        assert [r.item_id for r in got] == [recommender.item_id_list[i] for i in expected]
        np.testing.assert_allclose([r.score for r in got], scores[expected], atol=1e-5)


def test_a_smaller_prefix_makes_a_smaller_index(bundle_dir, prefix_bundle):
    full, prefix = read_bundle(bundle_dir), read_bundle(prefix_bundle)
    # A flat index stores each vector's float32 coordinates and an 8-byte id.
    assert prefix.bytes_per_item == pytest.approx(PREFIX * 4 + 8, abs=2)
    assert full.bytes_per_item == pytest.approx(32 * 4 + 8, abs=2)


def test_a_manifest_whose_prefix_disagrees_with_the_vectors_is_refused(prefix_bundle, tmp_path):
    copy = Path(shutil.copytree(prefix_bundle, tmp_path / "bundle"))
    path = version_dir(copy) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model"]["scoring"]["dim"] = 16
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="vector lengths disagree") as raised:
        read_bundle(copy)
    assert "the scorer's user vectors 16" in str(raised.value)
    manifest["model"]["scoring"]["dim"] = 64  # longer than the towers' 32
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"bad scoring settings \(export\.dim=64"):
        read_bundle(copy)
