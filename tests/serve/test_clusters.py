"""serve.clusters and `python -m serve clusters / duplicates`: planted clusters come back as
the clusters, a planted duplicate is the one pair above the threshold, the tables' columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from features.schema import ITEM_ID
from features.serving import SEEN
from serve import clusters as clusters_module
from serve import export_bundle, read_bundle
from serve.__main__ import main
from serve.clusters import (
    ANALYSIS,
    cluster_items,
    cluster_tops,
    default_out,
    item_space,
    near_duplicates,
    write_table,
)
from serve.errors import RequestError
from tests.serve.conftest import (
    EMBEDDING_DIM,
    NUM_CLUSTERS,
    NUM_ITEMS,
    planted_features,
    planted_tables,
    planted_towers,
)
from towers import Scorer

ORIGINAL, DUPLICATE = 7, 120  # rows of the planted duplicate pair


def _clustered_bundle(path):
    """(path, each item's cluster) of a bundle whose item vectors are their cluster's centre
    plus noise (norm 0.6: items of one cluster have cosines about 0.7, of two clusters about 0),
    and item DUPLICATE's the same as item ORIGINAL's (so in its cluster): the id embedding
    alone (genres and years read zeros)."""
    rng = np.random.default_rng(1)
    items_df, users_df, item_cluster, user_cluster = planted_tables(rng)
    features = planted_features(items_df, users_df)
    user, item = planted_towers(rng, item_cluster, user_cluster, features, items_df, users_df)
    centres = rng.normal(size=(NUM_CLUSTERS, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(NUM_ITEMS, EMBEDDING_DIM)) * 0.6 / np.sqrt(EMBEDDING_DIM)
    rows = centres[item_cluster] + noise
    rows[DUPLICATE] = rows[ORIGINAL]
    codes = features.item.transform(items_df)["item_id"]
    with torch.no_grad():
        item.encoders["item_id"].table.weight[torch.as_tensor(codes)] = torch.as_tensor(
            rows, dtype=torch.float32
        )
        item.encoders["genres"].table.weight.zero_()
        item.encoders["year"].table.weight.zero_()
    export_bundle(path, Scorer([(user, item)]), features, items_df, users_df, index_factory="Flat")
    item_cluster[DUPLICATE] = item_cluster[ORIGINAL]
    return path, item_cluster


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    return _clustered_bundle(tmp_path_factory.mktemp("clustered") / "bundle")


def test_planted_clusters_are_the_clusters(clustered):
    path, planted = clustered
    bundle = read_bundle(path)
    found = cluster_items(bundle, NUM_CLUSTERS, seed=0)
    assert found.columns == [ITEM_ID, "cluster", "distance"] and found.height == NUM_ITEMS
    assert found[ITEM_ID].to_list() == bundle.items[ITEM_ID].to_list()  # row order
    labels = found["cluster"].to_numpy()
    pairs = set(zip(labels.tolist(), planted.tolist(), strict=True))
    assert len(pairs) == NUM_CLUSTERS == len(set(labels.tolist()))  # a one-to-one match


def test_distance_is_to_the_clusters_unit_mean(clustered):
    """Cosine: spherical k-means, so a centroid is the normalised mean of its (unit) members."""
    path, _ = clustered
    bundle = read_bundle(path)
    found = cluster_items(bundle, NUM_CLUSTERS, seed=0)
    _, vectors = item_space(bundle)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = found["cluster"].to_numpy()
    for cluster in range(NUM_CLUSTERS):
        members = vectors[labels == cluster]
        centre = members.mean(0) / np.linalg.norm(members.mean(0))
        expected = np.linalg.norm(members - centre, axis=1)
        got = found["distance"].to_numpy()[labels == cluster]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_same_seed_gives_the_same_clusters(clustered):
    bundle = read_bundle(clustered[0])
    first = cluster_items(bundle, 4, seed=3)
    assert first.equals(cluster_items(bundle, 4, seed=3))


def test_each_cluster_lists_its_most_seen_items_first(clustered):
    path, _ = clustered
    bundle = read_bundle(path)
    found = cluster_items(bundle, NUM_CLUSTERS, seed=0)
    seen = np.bincount(np.concatenate(bundle.users[SEEN].to_list()), minlength=NUM_ITEMS)
    titles = bundle.items["title"].to_list()
    labels = found["cluster"].to_numpy()
    for top in cluster_tops(bundle, found, 3):
        members = np.flatnonzero(labels == top.cluster)
        order = members[np.lexsort((members, -seen[members]))][:3]
        assert top.size == len(members) and top.titles == [titles[r] for r in order]


def test_the_planted_duplicate_is_the_only_pair(clustered, monkeypatch):
    path, _ = clustered
    bundle = read_bundle(path)
    ids = bundle.items[ITEM_ID]
    pairs = near_duplicates(bundle, 0.95)
    assert pairs.columns == [ITEM_ID, "duplicate_id", "cosine"]
    assert pairs.rows() == [(ids[ORIGINAL], ids[DUPLICATE], pytest.approx(1.0, abs=1e-5))]
    lines = []
    monkeypatch.setattr(clusters_module, "DUPLICATE_BLOCK", 16)  # ten blocks: the same pairs
    assert near_duplicates(bundle, 0.95, progress=lines.append).equals(pairs)
    assert lines[-1] == f"duplicates: {NUM_ITEMS}/{NUM_ITEMS} items searched, 1 pairs"


def test_a_lower_threshold_finds_pairs_within_clusters_only(clustered):
    path, planted = clustered
    bundle = read_bundle(path)
    pairs = near_duplicates(bundle, 0.6)  # two clusters: cosines up to about 0.5
    rows = {item: row for row, item in enumerate(bundle.items[ITEM_ID].to_list())}
    first = np.array([rows[i] for i in pairs[ITEM_ID].to_list()])
    second = np.array([rows[i] for i in pairs["duplicate_id"].to_list()])
    assert len(pairs) > 1 and (first < second).all()
    assert (planted[first] == planted[second]).all()
    assert (np.diff(pairs["cosine"].to_numpy()) <= 0).all()  # the most alike first


def test_the_prior_coordinates_are_left_out(bundle_dir, prior_bundle):
    rows, vectors = item_space(read_bundle(bundle_dir))
    prior_rows, prior_vectors = item_space(read_bundle(prior_bundle))
    np.testing.assert_array_equal(rows, prior_rows)
    np.testing.assert_allclose(vectors, prior_vectors, atol=1e-6)


def test_bad_arguments_name_their_field(clustered, tmp_path):
    bundle = read_bundle(clustered[0])
    for k in (0, NUM_ITEMS + 1):
        with pytest.raises(RequestError) as err:
            cluster_items(bundle, k)
        assert err.value.field == "k"
    for threshold in (0.0, 1.5, "high"):
        with pytest.raises(RequestError) as err:
            near_duplicates(bundle, threshold)
        assert err.value.field == "threshold"
    with pytest.raises(RequestError) as err:
        write_table(pl.DataFrame({"a": [1]}), bundle.path / "clusters.parquet")
    assert err.value.field == "out"


def test_clusters_command_writes_beside_the_versions(clustered, capsys):
    path, _ = clustered
    assert main(["clusters", "--bundle", str(path), "--k", str(NUM_CLUSTERS)]) == 0
    out, err = capsys.readouterr()
    written = path / ANALYSIS / "clusters-v000001.parquet"
    assert written == default_out(read_bundle(path), "clusters")
    table = pl.read_parquet(written)
    assert table.schema == pl.Schema(
        {ITEM_ID: pl.Int64, "cluster": pl.Int32, "distance": pl.Float32}
    )
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]  # no temporary
    lines = out.splitlines()
    assert len(lines) == NUM_CLUSTERS and all(line.startswith("cluster ") for line in lines)
    assert "k-means: 150 items of 32 dimensions, k=6" in err and str(written) in err


def test_duplicates_command_writes_the_pairs(clustered, tmp_path, capsys):
    path, _ = clustered
    out_path = tmp_path / "pairs.parquet"
    args = ["duplicates", "--bundle", str(path), "--threshold", "0.95", "--out", str(out_path)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    table = pl.read_parquet(out_path)
    ids = read_bundle(path).items[ITEM_ID]
    assert table.columns == [ITEM_ID, "duplicate_id", "cosine"]
    assert table.select(ITEM_ID, "duplicate_id").rows() == [(ids[ORIGINAL], ids[DUPLICATE])]
    assert out.split()[1:] == [str(ids[ORIGINAL]), str(ids[DUPLICATE])]
    assert "wrote 1 pairs" in err


def test_commands_exit_2_naming_the_problem(clustered, capsys):
    path = str(clustered[0])
    assert main(["clusters", "--bundle", path, "--k", "999"]) == 2
    assert "k must be at most the number of active items (150)" in capsys.readouterr().err
    assert main(["duplicates", "--bundle", path, "--threshold", "2"]) == 2
    assert "threshold must be a number in (0, 1]" in capsys.readouterr().err
    version = str(clustered[0] / "v000001" / "pairs.parquet")
    assert main(["duplicates", "--bundle", path, "--out", version]) == 2
    assert "out must not be inside a bundle version directory" in capsys.readouterr().err
