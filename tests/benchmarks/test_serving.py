"""benchmarks/serving.py: its planted catalogue exported through `export_bundle` and served by
the `Recommender` as planted (a small catalogue, an exact index; nothing timed)."""

from __future__ import annotations

import sys

import numpy as np

from serve import Recommender, export_bundle
from tests.conftest import ROOT
from towers import Scorer

sys.path.insert(0, str(ROOT / "benchmarks"))
import serving

NUM_ITEMS = 1000


def test_the_planted_vectors_are_what_the_bundle_serves(tmp_path):
    user, item, features, items_df, users_df = serving.synthetic_tables(NUM_ITEMS, "clustered")
    path = export_bundle(
        tmp_path / "bundle",
        Scorer([(user, item)]),
        features,
        items_df,
        users_df,
        index_config={"factory": "Flat"},
    )
    recommender = Recommender.load(path, cache_user_vectors=False)
    # The same draws as synthetic_tables (seed 0): the item vectors first.
    planted, cluster = serving.item_vectors(NUM_ITEMS, "clustered", np.random.default_rng(0))
    np.testing.assert_allclose(recommender.item_vectors, planted, atol=1e-5)
    # A user: the unit mean of their history as the id row, gated 0.5 : 0.5 with the mean of
    # the history's vectors (no projection), then made a unit vector.
    users = np.arange(0, serving.NUM_USERS, 997)
    histories = np.array(users_df["history"].to_list())[users]  # (U, H) item rows
    assert (cluster[histories] == cluster[histories[:, :1]]).all()  # one cluster each
    mean = planted[histories].mean(1)  # (U, D)
    expected = serving.unit(0.5 * serving.unit(mean) + 0.5 * mean)
    np.testing.assert_allclose(recommender.encode_users(users), expected, atol=1e-5)
