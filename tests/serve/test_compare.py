"""`python -m serve compare` (serve/compare.py): two bundles on the same held-out users. A bundle
against itself differs by nothing; against a bundle planted on other taste clusters it loses by
what the metric code serving uses measures for each, with an interval as wide as the normal
approximation's and clear of zero."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from features.prepare import HeldOut
from features.schema import ITEM_ID, USER_ID
from serve import Recommender
from serve.__main__ import main
from serve.compare import compare_bundles
from serve.evaluate import evaluate_recommender
from tests.serve.conftest import (
    ITEM_ID_OFFSET,
    NUM_USERS,
    USER_ID_OFFSET,
    planted_bundle,
    planted_clusters,
)


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """The planted bundle's users and items with other taste clusters and histories (seed 1)."""
    return planted_bundle(tmp_path_factory.mktemp("other") / "bundle", seed=1)


@pytest.fixture(scope="module")
def pairs(recommender) -> pl.DataFrame:
    """One held-out item per user: an unseen item of the user's own cluster in the planted
    bundle (seed 0), and a pair of a user neither bundle knows."""
    rng = np.random.default_rng(7)
    item_cluster, user_cluster = planted_clusters(0)
    seen = recommender.bundle.users["seen"].to_list()
    users, items = [], []
    for user in range(NUM_USERS):
        own = np.setdiff1d(np.flatnonzero(item_cluster == user_cluster[user]), seen[user])
        if len(own):
            users.append(user + USER_ID_OFFSET)
            items.append(int(rng.choice(own)) + ITEM_ID_OFFSET)
    return pl.DataFrame({USER_ID: [*users, 1], ITEM_ID: [*items, ITEM_ID_OFFSET]})


def _mean(recommender: Recommender, pairs: pl.DataFrame, name: str) -> float:
    """`name` over the known users of `pairs`, by evaluate_recommender (the metric sums)."""
    known = pairs.filter(pl.col(USER_ID) >= USER_ID_OFFSET)
    rows = recommender.user_vocab.frame.with_row_index("row")
    joined = known.join(rows, left_on=USER_ID, right_on="raw_id").sort("row")
    item_row = {item: row for row, item in enumerate(recommender.item_id_list)}
    held_out = HeldOut(
        joined["row"].to_numpy().astype(np.int64),
        np.arange(joined.height + 1, dtype=np.int64),
        np.array([item_row[i] for i in joined[ITEM_ID]], dtype=np.int64),
    )
    return evaluate_recommender(recommender, held_out, (20, 50))[f"test/{name}"]


def test_a_bundle_against_itself_differs_by_nothing(recommender, pairs):
    out = compare_bundles(recommender, recommender, pairs, resamples=200)
    assert out["users"] == pairs.height - 1 and out["unknown_users"] == 1
    for name, figures in out["metrics"].items():
        assert figures["a"] == figures["b"] == pytest.approx(_mean(recommender, pairs, name))
        assert figures["difference"] == figures["low"] == figures["high"] == 0.0
        assert figures["within_noise"]


def test_a_bundle_on_other_clusters_loses_by_more_than_the_noise(recommender, other_bundle, pairs):
    other = Recommender.load(other_bundle)
    out = compare_bundles(recommender, other, pairs, ks=(20,), resamples=2000, seed=3)
    assert set(out["metrics"]) == {"recall@20", "ndcg@20"}
    for name, figures in out["metrics"].items():
        a, b = _mean(recommender, pairs, name), _mean(other, pairs, name)
        assert figures["a"] == pytest.approx(a) and figures["b"] == pytest.approx(b)
        assert figures["difference"] == pytest.approx(b - a) and b - a < -0.3
        assert figures["low"] < b - a < figures["high"] < 0 and not figures["within_noise"]
    # The interval's width against the normal approximation's 2 x 1.96 x sd / sqrt(n): the
    # per-user differences of recall@20 (one held-out item: a hit is 1) from the served lists.
    served_a = recommender.recommend_many(pairs[USER_ID][:-1].to_list(), k=20)
    served_b = other.recommend_many(pairs[USER_ID][:-1].to_list(), k=20)
    held = pairs[ITEM_ID][:-1].to_list()
    delta = np.array(
        [
            float(item in {r.item_id for r in b}) - float(item in {r.item_id for r in a})
            for item, a, b in zip(held, served_a, served_b, strict=True)
        ]
    )
    assert delta.mean() == pytest.approx(out["metrics"]["recall@20"]["difference"])
    normal = 2 * 1.96 * delta.std(ddof=1) / np.sqrt(len(delta))
    width = out["metrics"]["recall@20"]["high"] - out["metrics"]["recall@20"]["low"]
    assert width == pytest.approx(normal, rel=0.15)


def test_the_command_prints_the_comparison_and_names_a_missing_bundle(
    bundle_dir, other_bundle, pairs, tmp_path, capsys
):
    path = tmp_path / "pairs.parquet"
    pairs.write_parquet(path)
    argv = ["compare", "--bundle", str(bundle_dir), "--bundle", str(other_bundle)]
    assert main([*argv, "--held-out", str(path), "--k", "20", "--resamples", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = compare_bundles(
        Recommender.load(bundle_dir), Recommender.load(other_bundle), pairs, (20,), 300
    )
    assert out["metrics"] == expected["metrics"]  # JSON keeps every float exactly
    assert (out["a"], out["b"], out["held_out"]) == (str(bundle_dir), str(other_bundle), str(path))
    assert main(["compare", "--bundle", str(bundle_dir), "--held-out", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --bundle must be given twice") and error.count("\n") == 1
