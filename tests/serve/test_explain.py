"""`explain=True`: each result's `because` against independent computations: by hand from the
towers' weights (cosine, a known user), and by leaving each history item out (dot, a user
known only by their history); the refusals, and the field over HTTP on a real socket."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from features.serving import HISTORY
from serve import Recommender, export_bundle, read_bundle
from serve.errors import RequestError
from serve.explain import EXPLAIN_ITEMS
from towers import ItemTower, Scorer, TowerConfig, UserTower


def _rebuilt(bundle_dir, path, similarity="cosine", mlp_layers=0, projection_seed=None):
    """The session bundle's towers under another config, exported to `path` (exact index): an
    MLP keeps its random initial weights; `projection_seed`: a random history projection."""
    bundle = read_bundle(bundle_dir)
    ((user, item),) = bundle.scorer.members
    cfg = TowerConfig(**{**user.cfg.to_dict(), "similarity": similarity, "mlp_layers": mlp_layers})
    towers = UserTower(user.spec, cfg), ItemTower(item.spec, cfg)
    for new, old in zip(towers, (user, item), strict=True):
        new.load_state_dict(old.state_dict(), strict=False)
    if projection_seed is not None:
        generator = torch.Generator().manual_seed(projection_seed)
        dim = cfg.embedding_dim
        with torch.no_grad():
            weight = torch.randn(dim, dim, generator=generator) / math.sqrt(dim)
            towers[0].encoders["history"].projection.weight.copy_(weight)
    scorer = Scorer([(towers[0].eval(), towers[1].eval())])
    return export_bundle(
        path, scorer, bundle.features, bundle.items, bundle.users, index_config={"factory": "Flat"}
    )


@pytest.fixture(scope="module")
def dot_recommender(bundle_dir, tmp_path_factory):
    """Dot similarity and a random history projection: scores linear in the pooled history."""
    path = tmp_path_factory.mktemp("dot") / "bundle"
    return Recommender.load(_rebuilt(bundle_dir, path, similarity="dot", projection_seed=0))


def _expected(contributions: dict) -> list[tuple[object, float]]:
    """The `because` an item's contributions {history item: amount} call for."""
    ranked = sorted(contributions.items(), key=lambda pair: -pair[1])
    return [(item, amount) for item, amount in ranked if amount > 0][:EXPLAIN_ITEMS]


def test_a_known_users_because_by_hand(recommender):
    """Cosine, the gate 1/2: x = g id + (1 - g) mean_i W e_i, u = x / |x|; history item i adds
    (1 - g) / n <W e_i, v> / |x| to the score <u, v>, the id the rest."""
    bundle = recommender.bundle
    ((user, _),) = bundle.scorer.members
    row = 3
    user_id = bundle.users["user_id"][row]
    history = bundle.users[HISTORY][row].to_list()  # item rows, no repeats
    user_code = bundle.features.user.transform(bundle.users)["user_id"][row]
    item_codes = bundle.features.item.transform(bundle.items)["item_id"]
    with torch.no_grad():
        gate = float(torch.sigmoid(user.gate_logit))
        id_row = user.encoders["user_id"].table.weight[user_code].numpy()
        rows = user.encoders["history"].table.weight[item_codes[history]].numpy()  # (n, D)
        projected = rows @ user.encoders["history"].projection.weight.numpy().T  # (n, D)
    x = gate * id_row + (1 - gate) * projected.mean(0)
    norm = np.linalg.norm(x)
    results = recommender.recommend(user_id, k=8, explain=True)
    assert len(results) == 8
    for result in results:
        vector = bundle.item_vectors[recommender.catalogue.item_index(result.item_id)]
        amounts = (1 - gate) / len(history) * projected @ vector / norm  # (n,)
        assert gate * id_row @ vector / norm + amounts.sum() == pytest.approx(
            result.score, abs=1e-5
        )
        ids = [recommender.item_id_list[r] for r in history]
        expected = _expected(dict(zip(ids, amounts.tolist(), strict=True)))
        assert [b.item_id for b in result.because] == [item for item, _ in expected]
        for because, (item, amount) in zip(result.because, expected, strict=True):
            assert because.contribution == pytest.approx(amount, abs=1e-5)
            assert because.share == pytest.approx(amount / result.score, rel=1e-3)
            assert because.title == recommender.titles[recommender.catalogue.item_index(item)]


def test_leaving_each_history_item_out_changes_the_score_by_its_contribution(dot_recommender):
    """Dot, mean pooling, no id: s(H) = mean over H of a_i. Leaving out an item that occurs m
    of L times leaves s(H') = (L s(H) - m a) / (L - m), so its contribution m a / L is
    s(H) - (L - m) / L s(H'): brute force through `recommend`, against `because`."""
    rec = dot_recommender
    history = [rec.item_id_list[r] for r in (3, 17, 40, 17, 99, 120)]  # 17 twice
    length = len(history)

    def scores(given: list) -> dict:
        found = rec.recommend("nobody", k=rec.num_items, history=given, exclude_seen=False)
        return {r.item_id: r.score for r in found}

    full = scores(history)
    left_out = {item: scores([h for h in history if h != item]) for item in set(history)}
    results = rec.recommend("nobody", k=10, history=history, explain=True)
    assert results.source == "history" and len(results) == 10
    for result in results:
        contributions = {
            item: full[result.item_id]
            - (length - history.count(item)) / length * without[result.item_id]
            for item, without in left_out.items()
        }
        assert sum(contributions.values()) == pytest.approx(result.score, abs=1e-5)
        expected = _expected(contributions)
        assert [b.item_id for b in result.because] == [item for item, _ in expected]
        for because, (_, amount) in zip(result.because, expected, strict=True):
            assert because.contribution == pytest.approx(amount, abs=1e-5)
            assert because.share == pytest.approx(amount / result.score, rel=1e-3)


def test_explain_changes_nothing_else(recommender):
    user_id = recommender.bundle.users["user_id"][5]
    plain = recommender.recommend(user_id, k=6)
    explained = recommender.recommend(user_id, k=6, explain=True)
    assert [(r.item_id, r.score) for r in plain] == [(r.item_id, r.score) for r in explained]
    assert all(r.because is None and "because" not in r.to_dict() for r in plain)
    assert all(isinstance(r.to_dict()["because"], list) for r in explained)


def test_popularity_results_have_no_because(bundle_dir):
    rec = Recommender.load(bundle_dir, cold_start="popularity")
    results = rec.recommend("nobody", k=4, explain=True)
    assert results.source == "popularity" and [r.because for r in results] == [()] * 4


def test_a_bad_value_names_the_field(recommender):
    user_id = recommender.bundle.users["user_id"][0]
    with pytest.raises(RequestError) as err:
        recommender.recommend(user_id, explain="yes")
    assert err.value.field == "explain"


def test_a_tower_with_a_residual_mlp_is_refused(bundle_dir, tmp_path):
    rec = Recommender.load(_rebuilt(bundle_dir, tmp_path / "mlp", mlp_layers=1))
    user_id = rec.bundle.users["user_id"][0]
    assert len(rec.recommend(user_id, k=3)) == 3
    with pytest.raises(RequestError, match="residual MLP") as err:
        rec.recommend(user_id, k=3, explain=True)
    assert err.value.field == "explain"


def test_explain_over_http(server, recommender):
    users = recommender.bundle.users["user_id"].to_list()
    item = recommender.item_id_list[10]
    with server.client() as client:
        plain = client.post("/recommend", json={"user_id": users[0], "k": 3}).json()
        assert all("because" not in i for i in plain["items"])
        body = client.post("/recommend", json={"user_id": users[0], "k": 3, "explain": True})
        assert body.status_code == 200
        expected = [r.to_dict() for r in recommender.recommend(users[0], k=3, explain=True)]
        assert body.json()["items"] == pytest.approx(expected)
        batch = client.post(
            "/recommend/batch",
            json={"user_ids": [users[1], "new"], "histories": [None, [item]], "explain": True},
        ).json()
        assert [r["source"] for r in batch["results"]] == ["model", "history"]
        new = batch["results"][1]["items"]
        assert all([b["item_id"] for b in i["because"]] in ([item], []) for i in new)
        bad = client.post("/recommend", json={"user_id": users[0], "explain": "maybe"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "explain"]
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert set(schemas["Because"]["properties"]) == {"item_id", "title", "contribution", "share"}
    assert "because" in schemas["Item"]["properties"]
    request = document["paths"]["/recommend"]["post"]["requestBody"]["content"]
    assert "explain" in request["application/json"]["schema"]["properties"]


def test_a_prefix_bundles_because_by_hand(recommender, tmp_path):
    """Served at the first d = 8 coordinates (export.dim): u = x[:d] / |x[:d]|, so history item i
    adds (1 - g) / n <(W e_i)[:d], v> / |x[:d]| to the score, v the item's served prefix."""
    bundle, dim = recommender.bundle, 8
    prefix = Recommender.load(
        export_bundle(
            tmp_path / "prefix",
            bundle.scorer.at_dim(dim),
            bundle.features,
            bundle.items,
            bundle.users,
            index_config={"factory": "Flat"},
        )
    )
    ((user, _),) = bundle.scorer.members
    row = 3
    history = bundle.users[HISTORY][row].to_list()
    user_code = bundle.features.user.transform(bundle.users)["user_id"][row]
    item_codes = bundle.features.item.transform(bundle.items)["item_id"]
    with torch.no_grad():
        gate = float(torch.sigmoid(user.gate_logit))
        id_row = user.encoders["user_id"].table.weight[user_code].numpy()[:dim]
        rows = user.encoders["history"].table.weight[item_codes[history]].numpy()
        projected = (rows @ user.encoders["history"].projection.weight.numpy().T)[:, :dim]
    norm = np.linalg.norm(gate * id_row + (1 - gate) * projected.mean(0))
    results = prefix.recommend(bundle.users["user_id"][row], k=8, explain=True)
    for result in results:
        vector = prefix.item_vectors[prefix.catalogue.item_index(result.item_id)]  # (d,)
        amounts = (1 - gate) / len(history) * projected @ vector / norm  # (n,)
        assert gate * id_row @ vector / norm + amounts.sum() == pytest.approx(
            result.score, abs=1e-5
        )
        ids = [prefix.item_id_list[r] for r in history]
        expected = _expected(dict(zip(ids, amounts.tolist(), strict=True)))
        assert [b.item_id for b in result.because] == [item for item, _ in expected]
        for because, (_, amount) in zip(result.because, expected, strict=True):
            assert because.contribution == pytest.approx(amount, abs=1e-5)
