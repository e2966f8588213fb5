"""End to end: train a few epochs on synthetic data, select, refit, export, evaluate, serve.

Training is what costs here, so the tests share runs: the session's `trained_run` (the default
recipe, tests/conftest.py), one ensemble run with a popularity prior, one run without refit,
and one `python train.py` run that an in-process run repeats and then resumes. serve/ on its
own is tested on a planted bundle (tests/serve/conftest.py), without training."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import train as train_module
from serve import Recommender, read_bundle
from tests.conftest import ROOT, TINY, compose_config
from towers.config import ConfigError
from towers.matryoshka import MatryoshkaError
from towers.metrics import KS, METRICS, metric_name
from towers.ranking import exact_top_k
from towers.scoring import PRIOR_DIMS, PRIOR_SCALE

ITEM_TABLE = "item_tower.encoders.item_id.table.weight"  # a checkpoint's item-id table
SHORT = ["trainer.max_epochs=2", "logger=csv"]  # the command-line and resume runs
ENSEMBLE = [  # one run for the ensemble's and the popularity prior's tests
    "ensemble=true",
    "ensemble_selection_weight=0.3",
    "model.popularity_prior=0.01",
    "trainer.max_epochs=2",
]
# ensemble=true without refit has no refit model to add: the selection model is served alone.
NO_REFIT = ["trainer.max_epochs=2", "refit=false", "ensemble=true"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _exported_item_table(bundle_dir, member: int = 0) -> torch.Tensor:
    """A bundle member's item-id table, as serving loads it."""
    (_, item_tower) = read_bundle(bundle_dir).scorer.members[member]
    return item_tower.id_table().weight.detach()


def instantiate_data(cfg):
    return train_module.prepare_data(cfg).data


# -- the session's run: the default recipe (select, refit, export, evaluate) ---------------------
@pytest.mark.slow
def test_metrics_json_is_flat_with_every_name_for_model_and_popularity(trained_run):
    output_dir, metrics = trained_run
    written = json.loads((output_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    for name in METRICS:
        for k in KS:
            for prefix in ("test/", "popularity/test/", "val/"):
                assert isinstance(written[prefix + metric_name(name, k)], float)
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    assert (output_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_the_retrievability_audit_is_in_metrics_json_and_the_audit_command_repeats_it(
    trained_run, capsys
):
    """serve.audit's keys for the model and popularity; `python -m serve audit` on the run's
    bundle (by default on the test pairs the run wrote beside it) gives the same figures."""
    output_dir, _ = trained_run
    written = json.loads((output_dir / "metrics.json").read_text())
    audit_keys = [
        *(f"test_{b}/{m}@20" for b in ("head", "mid", "tail") for m in ("recall", "ndcg")),
        "test_users_light/recall@20",
        "test_users_heavy/recall@20",
        *(f"test/{m}@20" for m in ("coverage", "gini", "tail_share")),
    ]
    for prefix in ("", "popularity/"):
        for key in audit_keys:
            assert 0.0 <= written[prefix + key] <= 1.0, prefix + key
    assert written["test/coverage@20"] > written["popularity/test/coverage@20"]
    table = train_module.metrics_table(written, KS).splitlines()
    assert any(line.split()[:2] == ["test_tail", "recall@20"] for line in table)
    assert any(line.split()[:2] == ["test", "coverage@20"] for line in table)

    from serve.__main__ import main as serve_main

    capsys.readouterr()
    assert serve_main(["audit", "--bundle", str(output_dir / "bundle")]) == 0
    audited = json.loads(capsys.readouterr().out)
    assert audited["unknown_users"] == 0
    assert audited["metrics"] == pytest.approx({k: written[k] for k in audited["metrics"]})


@pytest.mark.slow
def test_two_tower_beats_popularity_on_planted_clusters(trained_run):
    _, metrics = trained_run
    for key in ("recall@20", "ndcg@20"):
        assert metrics[f"test/{key}"] > 1.5 * metrics[f"popularity/test/{key}"], key


@pytest.mark.slow
def test_checkpoints_load_without_unpickling_objects(trained_run):
    output_dir, _ = trained_run
    state = torch.load(
        output_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert "state_dict" in state


@pytest.mark.slow
def test_the_refit_model_is_the_one_exported(trained_run):
    """refit (the default): selection picks the epoch count on validation, a fresh model is
    trained on train + validation for that many epochs, and that model is the bundle."""
    output_dir, metrics = trained_run
    assert metrics["refit/epochs"] == metrics["train/epochs"] >= 1
    refit_last = output_dir / "checkpoints" / f"refit-{metrics['refit/epochs']:.0f}" / "last.ckpt"
    refit = _weights(refit_last)
    selected = _weights(output_dir / "checkpoints" / "best.ckpt")
    exported = _exported_item_table(output_dir / "bundle")
    torch.testing.assert_close(exported, refit[ITEM_TABLE])
    assert not torch.allclose(exported, selected[ITEM_TABLE])


@pytest.mark.slow
def test_offline_top_k_equals_what_the_recommender_returns(trained_run):
    """The test metrics rank the bundle the run exported, as serving does."""
    output_dir, metrics = trained_run
    assert metrics["test/recall@20"] > 0
    recommender = Recommender.load(output_dir / "bundle")
    bundle = recommender.bundle
    spec = bundle.scorer.spec
    # Independent path: the bundle's own tables, and torch exact ranking over its item vectors.
    users = np.arange(bundle.users.height)
    # History inputs are item id codes (-1: padding), from the fitted item id's own transform.
    item_codes = torch.from_numpy(bundle.features.item.transform(bundle.items)["item_id"])
    histories = torch.full((len(users), spec.history_length), -1)
    seen = torch.full((len(users), 200), -1, dtype=torch.long)
    stored = zip(bundle.users["history"].to_list(), bundle.users["seen"].to_list(), strict=True)
    for u, (history, items) in enumerate(stored):
        history = history[: spec.history_length]
        histories[u, : len(history)] = item_codes[torch.tensor(history, dtype=torch.long)]
        seen[u, : len(items)] = torch.tensor(items, dtype=torch.long)
    user_codes = bundle.features.user.transform(bundle.users)["user_id"]
    with torch.no_grad():
        inputs = {"user_id": torch.from_numpy(user_codes), "history": histories}
        user_vectors = bundle.scorer.encode_users(inputs)
    _, expected = exact_top_k(user_vectors, torch.from_numpy(bundle.item_vectors), 20, seen)
    _, offline = recommender.top_k(users, 20)  # what evaluate_recommender ranks with
    np.testing.assert_array_equal(offline, expected.numpy())
    item_ids = bundle.items["item_id"].to_numpy()
    raw_users = bundle.users["user_id"].to_list()
    for u, raw in zip(users[:50], raw_users[:50], strict=True):
        online = [r.item_id for r in recommender.recommend(raw, k=20)]
        assert online == item_ids[offline[u]].tolist()


@pytest.mark.slow
def test_the_exported_bundle_recommends_over_http(trained_run):
    """The last step of the end-to-end path: train.py's bundle behind the HTTP app."""
    from fastapi.testclient import TestClient

    from serve.http import create_app

    bundle_dir = trained_run[0] / "bundle"
    user = read_bundle(bundle_dir).users["user_id"][0]
    expected = Recommender.load(bundle_dir).recommend(user, k=5)
    with TestClient(create_app(bundle_dir)) as client:
        response = client.post("/recommend", json={"user_id": user, "k": 5})
    assert response.status_code == 200
    assert [i["item_id"] for i in response.json()["items"]] == [r.item_id for r in expected]


# -- an ensemble with a popularity prior -----------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """(output_dir, cfg, metrics) of one run with ENSEMBLE's settings."""
    output_dir = tmp_path_factory.mktemp("ensemble")
    cfg = compose_config(output_dir, ENSEMBLE)
    return output_dir, cfg, train_module.train(cfg)


@pytest.mark.slow
def test_ensemble_serves_the_selection_and_refit_models_as_one(ensemble_run):
    """ensemble=true: the bundle's towers are the selection model's and the refit model's side by
    side (vectors twice as long, scores the weighted mean of their cosines), and test metrics
    rank with it."""
    output_dir, _, metrics = ensemble_run
    # The refit starts from another seed (seed + 1): a more different second member.
    refit = _weights(output_dir / "checkpoints" / "refit-2-seed43" / "last.ckpt")
    selected = _weights(output_dir / "checkpoints" / "best.ckpt")
    torch.testing.assert_close(_exported_item_table(output_dir / "bundle", 0), selected[ITEM_TABLE])
    torch.testing.assert_close(_exported_item_table(output_dir / "bundle", 1), refit[ITEM_TABLE])
    recommender = Recommender.load(output_dir / "bundle")
    manifest = recommender.bundle.manifest
    dim = selected[ITEM_TABLE].shape[1]
    assert manifest["embedding_dim"] == 2 * dim + PRIOR_DIMS  # (+ the prior's coordinates)
    assert manifest["model"]["scoring"]["members"] == 2
    assert manifest["model"]["scoring"]["weights"] == [0.3, 0.7]  # selection, refit
    user = recommender.bundle.users["user_id"][0]
    results = recommender.recommend(user, k=5)
    scores = [r.score for r in results]
    # A score is the weighted mean of the members' cosines, plus the prior's 0.01 * log p(item).
    item_ids = recommender.bundle.items["item_id"].to_list()
    log_p = recommender.bundle.item_vectors[:, -2] * PRIOR_SCALE
    cosines = [r.score - 0.01 * log_p[item_ids.index(r.item_id)] for r in results]
    assert all(-1.0 <= s <= 1.0 for s in cosines) and scores == sorted(scores, reverse=True)
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


@pytest.mark.slow
def test_a_popularity_prior_is_served_with_the_known_interactions_counts(ensemble_run):
    """model.popularity_prior: the selection model validates with it (its own training counts),
    the served ensemble adds it once, counted over train + validation."""
    output_dir, cfg, metrics = ensemble_run
    selected = _weights(output_dir / "checkpoints" / "best.ckpt")
    data = instantiate_data(cfg)
    known = np.bincount(data.before_test[:, 1], minlength=data.num_items) + 1.0
    train_counts = np.bincount(data.train[:, 1], minlength=data.num_items) + 1.0
    validated = train_module.build_model(cfg, data).scorer.item_prior  # what validation ranks by
    np.testing.assert_allclose(
        validated[:-1].numpy(),
        np.log(train_counts) - np.log(train_counts).mean(),
        rtol=1e-5,
        atol=1e-6,
    )
    recommender = Recommender.load(output_dir / "bundle")
    manifest = recommender.bundle.manifest
    dim = selected[ITEM_TABLE].shape[1]
    assert manifest["embedding_dim"] == 2 * dim + 2
    assert manifest["model"]["scoring"]["popularity_prior"] == 0.01
    log_p = np.log(known) - np.log(known).mean()
    np.testing.assert_allclose(
        recommender.bundle.item_vectors[:, -2] * 10.0, log_p, rtol=1e-5, atol=1e-6
    )
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


@pytest.mark.slow
def test_refit_seeds_serves_that_many_refit_models_as_one(tmp_path):
    """refit_seeds=2: two refits, from seeds 42 and 43, are the bundle's two members with equal
    shares; the selection model is not served."""
    cfg = compose_config(tmp_path, ["trainer.max_epochs=2", "refit_seeds=2"])
    metrics = train_module.train(cfg)
    first = _weights(tmp_path / "checkpoints" / "refit-2" / "last.ckpt")[ITEM_TABLE]
    second = _weights(tmp_path / "checkpoints" / "refit-2-seed43" / "last.ckpt")[ITEM_TABLE]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(_exported_item_table(tmp_path / "bundle", 0), first)
    torch.testing.assert_close(_exported_item_table(tmp_path / "bundle", 1), second)
    scoring = Recommender.load(tmp_path / "bundle").bundle.manifest["model"]["scoring"]
    assert scoring["members"] == 2 and scoring["weights"] is None  # None: equal shares
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


@pytest.mark.parametrize(
    "override, setting",
    [
        ("refit_seeds=0", "refit_seeds"),
        ("refit_seeds=-1", "refit_seeds"),
        ("refit_seeds=1.5", "refit_seeds"),
        ("refit_seeds=true", "refit_seeds"),
        ("ensemble_selection_weight=0.0", "ensemble_selection_weight"),
        ("ensemble_selection_weight=1.0", "ensemble_selection_weight"),
        ("ensemble_selection_weight=-0.2", "ensemble_selection_weight"),
        ("model.optim.schedule=step", "model.optim.schedule"),
        ("model.optim.lr=-0.01", "model.optim.lr"),
        ("model.negatives.distribution=zipf", "model.negatives.distribution"),
        ("model.towers.user_dropout=1.0", "model.towers.user_dropout"),
        ("model.loss.temperature=0", "model.loss.temperature"),
    ],
)
def test_a_bad_setting_is_named_by_its_key_before_any_data_is_read(tmp_path, override, setting):
    """Each raises ConfigError naming the key (not Hydra's InstantiationException around it)
    from train(), before the data is prepared or a checkpoint written."""
    cfg = compose_config(tmp_path, ["ensemble=true", override])
    with pytest.raises(ConfigError) as raised:
        train_module.train(cfg)
    assert raised.value.setting == setting
    assert str(raised.value.value) == override.split("=", 1)[1].replace("true", "True")
    assert not (tmp_path / "checkpoints").exists()


def test_a_prefix_loss_setting_the_loss_lacks_is_named_before_any_data_is_read(tmp_path):
    cfg = compose_config(
        tmp_path, ["model.matryoshka=[8]", "model.matryoshka_loss=[{margin: 0.5}]"]
    )  # the default loss, sampled softmax, has no margin
    with pytest.raises(ConfigError) as raised:
        train_module.train(cfg)
    assert raised.value.setting == "model.matryoshka_loss[0].margin"
    assert not (tmp_path / "checkpoints").exists()


def test_an_experiment_sets_top_level_keys():
    """Experiments override train.yaml's own keys (`_self_` comes first in its defaults)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose(config_name="train")
        gowalla = compose(config_name="train", overrides=["experiment=gowalla"])
    assert default.ensemble is False and gowalla.ensemble is True


GOWALLA_MATRYOSHKA = [  # the command benchmarks/README.md's Matryoshka figures were measured with
    "experiment=gowalla",
    "model.matryoshka=[32,64]",
    "model.matryoshka_weights=[3,0.5,1]",
    "model.matryoshka_warmup=7",
    "trainer.max_epochs=14",
    "model.matryoshka_loss=[{negative_weight: 100}, null]",
    "model.matryoshka_prior=[0.002, 0.0015]",
]


def test_the_gowalla_matryoshka_experiment_is_the_measured_command():
    """experiment=gowalla_matryoshka composes exactly the config of the measured command line,
    and every Matryoshka setting in it is one the run accepts."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        short = compose(config_name="train", overrides=["experiment=gowalla_matryoshka"])
        measured = compose(config_name="train", overrides=GOWALLA_MATRYOSHKA)
    assert OmegaConf.to_container(short, resolve=True) == OmegaConf.to_container(
        measured, resolve=True
    )
    assert short.model.matryoshka_prior == [0.002, 0.0015] and short.trainer.max_epochs == 14
    train_module._check_settings(short)  # raises a ConfigError for a setting it refuses


# -- Matryoshka prefixes, served at one of them ---------------------------------------------------
MATRYOSHKA = [  # 32 dimensions trained with their 8- and 16-dim prefixes, the 16 served
    "model.towers.embedding_dim=32",
    "model.matryoshka=[8,16]",
    "model.matryoshka_loss=[{temperature: 0.3}, null]",  # the 8-dim prefix's own temperature
    "model.matryoshka_prior=[null, 0.5]",  # the 16-dim prefix's own popularity prior
    "export.dim=16",
    "trainer.max_epochs=2",
    "refit=false",
]


@pytest.fixture(scope="module")
def matryoshka_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("matryoshka")
    return output_dir, train_module.train(compose_config(output_dir, MATRYOSHKA))


@pytest.mark.slow
def test_a_matryoshka_run_evaluates_each_prefix_through_its_exported_bundle(matryoshka_run):
    """Each prefix is exported (bundle_d8/, bundle_d16/) and ranked on test through the serving
    path; export.dim=16 serves the 16-dim prefix with its own prior, so test_d16/ repeats test/.
    The index bytes per item shrink with the prefix; the printed table shows the prefixes'
    rows."""
    output_dir, metrics = matryoshka_run
    written = json.loads((output_dir / "metrics.json").read_text())
    scoring = {}
    for dim, prior_dims in ((8, 0), (16, PRIOR_DIMS)):  # the 16-dim prefix with its prior
        for name in ("recall@20", "ndcg@20", "bytes_per_item"):
            assert isinstance(written[f"test_d{dim}/{name}"], float), (dim, name)
        bundle = read_bundle(output_dir / f"bundle_d{dim}")
        assert bundle.scorer.dim == dim and bundle.index.d == dim + prior_dims
        scoring[dim] = bundle.manifest["model"]["scoring"]
        assert scoring[dim]["dim"] == dim
    assert scoring[8]["popularity_prior"] == 0.0 and scoring[16]["popularity_prior"] == 0.5
    served = read_bundle(output_dir / "bundle")
    assert served.manifest["model"]["scoring"] == scoring[16]
    assert served.index.d == 16 + PRIOR_DIMS
    for k in KS:
        for name in ("recall", "ndcg"):
            key = metric_name(name, k)
            assert written[f"test_d16/{key}"] == pytest.approx(written[f"test/{key}"])
    assert written["test_d16/bytes_per_item"] == written["test/bytes_per_item"]
    assert written["test_d8/bytes_per_item"] < written["test_d16/bytes_per_item"]
    assert written["test_d8/recall@20"] > written["popularity/test/recall@20"]
    table = train_module.metrics_table(metrics, KS).splitlines()
    for row in ("test_d8 recall@20", "test_d16 ndcg@20", "test_d8 bytes_per_item"):
        stage, name = row.split()
        assert any(line.split()[:2] == [stage, name] for line in table), row


def test_a_matryoshka_run_validates_each_prefix_beside_the_full_vector(matryoshka_run):
    """The selected model's validation figures, val_d8/ and val_d16/ beside val/, in
    metrics.json and in the plotted columns (training.png's curves)."""
    output_dir, _ = matryoshka_run
    written = json.loads((output_dir / "metrics.json").read_text())
    columns = train_module.validation_columns(list(written), "val/recall@20")
    assert columns == ["val/recall@20", "val_d8/recall@20", "val_d16/recall@20"]
    assert all(0 < written[c] <= 1 for c in columns)
    assert written["val_d8/recall@20"] != written["val_d16/recall@20"]
    checkpoint = torch.load(output_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["matryoshka_prior"] == [None, 0.5]
    state = checkpoint["state_dict"]
    torch.testing.assert_close(state["prefix_losses.0.log_scale"], torch.tensor(math.log(1 / 0.3)))
    assert "prefix_losses.1.log_scale" not in state  # the 16-dim prefix: the run's loss itself


def test_training_curves_stop_at_the_last_trained_epoch():
    """The CSV log as a fit of 3 epochs then the selected model's validation leave it: one
    loss and one validation row an epoch, then a validation row at epoch 3 with no training."""
    none = None
    log_df = pl.DataFrame({
        "epoch": [0, 0, 1, 1, 2, 2, 3],
        "train/loss_epoch": [0.9, none, 0.7, none, 0.6, none, none],
        "val/recall@20": [none, 0.1, none, 0.2, none, 0.15, 0.2],
        "val_d8/recall@20": [none, 0.05, none, 0.1, none, 0.12, 0.1],
    })  # fmt: skip
    curves = train_module.training_curves(log_df, "val/recall@20")
    assert curves == {
        "train/loss_epoch": ([0, 1, 2], [0.9, 0.7, 0.6]),
        "val/recall@20": ([0, 1, 2], [0.1, 0.2, 0.15]),
        "val_d8/recall@20": ([0, 1, 2], [0.05, 0.1, 0.12]),
    }


def test_validation_columns_take_the_monitored_metric_of_each_prefix_in_order():
    columns = ["epoch", "val_d64/recall@20", "val/recall@20", "val_d8/recall@20",
               "val_d8/recall@200", "val_d8/ndcg@20", "test_d8/recall@20"]  # fmt: skip
    assert train_module.validation_columns(columns, "val/recall@20") == [
        "val/recall@20", "val_d8/recall@20", "val_d64/recall@20"]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("model.matryoshka=[16,8]", "model.matryoshka"),
        ("export.dim=65", "export.dim"),
        ("model.matryoshka_warmup=-1", "model.matryoshka_warmup"),
        ("model.matryoshka_prior=[0.1]", "model.matryoshka_prior"),
    ],
)
def test_bad_matryoshka_settings_are_named_before_training(tmp_path, override, setting):
    with pytest.raises(MatryoshkaError) as raised:
        train_module.train(compose_config(tmp_path, [override]))
    assert raised.value.setting == setting
    assert not (tmp_path / "checkpoints").exists()


def test_the_served_prefix_does_not_change_what_a_run_trains(tmp_path):
    """export.dim is chosen at export: a rerun with another one resumes the same checkpoints."""
    settings = train_module._training_settings(compose_config(tmp_path, ["export.dim=16"]))
    assert settings == train_module._training_settings(compose_config(tmp_path))
    assert settings["model.matryoshka"] == []


# -- without refit; row-wise Adam beside dense Adam ------------------------------------------------
@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """(output_dir, metrics) of one run with NO_REFIT's settings (dense Adam), ALS beside it."""
    output_dir = tmp_path_factory.mktemp("dense")
    overrides = [*NO_REFIT, "baselines=[popularity,als]"]
    return output_dir, train_module.train(compose_config(output_dir, overrides))


@pytest.mark.slow
def test_baselines_als_is_reported_beside_the_model_on_every_test_metric(dense_run):
    output_dir, metrics = dense_run
    model_keys = [k for k in metrics if k.startswith("test/")]
    assert model_keys and all(f"als/{k}" in metrics for k in model_keys)
    assert metrics["als/factors"] >= compose_config(output_dir).model.towers.embedding_dim
    table = train_module.metrics_table(metrics, (20,))
    assert table.splitlines()[0].split()[-1] == "als"
    assert f"{metrics['als/test/recall@20']:.4f}" in table


@pytest.mark.slow
def test_without_refit_the_selected_checkpoint_is_exported(dense_run):
    # ensemble=true has no refit model to add: the selection model is served alone.
    output_dir, metrics = dense_run
    assert "refit/epochs" not in metrics
    assert not list((output_dir / "checkpoints").glob("refit*"))
    torch.testing.assert_close(
        _exported_item_table(output_dir / "bundle"),
        _weights(output_dir / "checkpoints" / "best.ckpt")[ITEM_TABLE],
    )


@pytest.mark.slow
def test_row_wise_adam_trains_like_dense_adam_flushes_and_resumes(dense_run, tmp_path):
    _, dense = dense_run
    rows = train_module.train(compose_config(tmp_path, [*NO_REFIT, "model.towers.sparse=true"]))
    assert rows["val/recall@20"] == pytest.approx(dense["val/recall@20"], abs=0.01)
    assert rows["test/recall@20"] == pytest.approx(dense["test/recall@20"], abs=0.01)
    checkpoint = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    states = [
        state
        for optimizer in checkpoint["optimizer_states"]
        for state in optimizer["state"].values()
        if "last" in state
    ]
    assert states  # the id tables were updated by RowAdam
    for state in states:  # flushed at the epoch's end: no row has pending steps
        assert state["last"].dtype == torch.int64
        assert bool(((state["last"] == 0) | (state["last"] == state["step"])).all())
    resumed = train_module.train(
        compose_config(
            tmp_path,
            [*NO_REFIT, "trainer.max_epochs=3", "model.towers.sparse=true", "resume=force"],
        )
    )
    assert resumed["train/epochs"] == 3


# -- the command line, repeated in process, then resumed -------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`python train.py` as a user runs it, once: (output_dir, stdout lines, the overrides it ran
    with beyond TINY). It runs with this process's torch thread count, so that train() here,
    given the same overrides, computes alike."""
    output_dir = tmp_path_factory.mktemp("cli")
    overrides = [*SHORT, f"threads={torch.get_num_threads()}"]
    done = subprocess.run(
        [sys.executable, "train.py", *TINY, *overrides, f"paths.output_dir={output_dir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return output_dir, done.stdout.strip().splitlines(), overrides


@pytest.mark.slow
def test_train_py_command_line_writes_the_run_directory(cli_run):
    output_dir, last_lines, _ = cli_run
    assert last_lines[-1] == f"bundle: {output_dir / 'bundle'}"
    assert last_lines[-2] == f"metrics: {output_dir / 'metrics.json'}"
    assert any(line.split()[:2] == ["test", "recall@20"] for line in last_lines)
    assert (output_dir / ".hydra" / "config.yaml").is_file()
    assert Recommender.load(output_dir / "bundle").num_items > 0
    assert (output_dir / "metrics.csv").is_file()
    assert (output_dir / "training.png").stat().st_size > 0
    logged = pl.read_csv(output_dir / "metrics.csv", infer_schema_length=None)
    epoch_losses = logged.select("epoch", "train/loss_epoch").drop_nulls()
    assert epoch_losses["epoch"].to_list() == [0, 1]  # one mean training loss per epoch
    assert logged["train/loss_step"].drop_nulls().len() >= 1


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_and_training_resumes(cli_run, tmp_path):
    cli_dir, _, overrides = cli_run
    metrics = train_module.train(compose_config(tmp_path, overrides))
    # The same seed gives the same metrics: train() here, `python train.py` in another process.
    written = json.loads((cli_dir / "metrics.json").read_text())
    for key in ("test/recall@20", "test/ndcg@20", "val/recall@20"):
        assert metrics[key] == pytest.approx(written[key], abs=1e-9), key
    first = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    # Same run directory, another seed, resume=force (resume=true refuses other settings,
    # tests/test_resume.py): a finished run is not retrained from scratch.
    train_module.train(compose_config(tmp_path, [*overrides, "seed=7", "resume=force"]))
    for name, tensor in _weights(tmp_path / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(tensor, first["state_dict"][name], msg=name)
    # Asking for more epochs continues where it stopped.
    train_module.train(
        compose_config(tmp_path, [*overrides, "trainer.max_epochs=3", "resume=force"])
    )
    resumed = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert resumed["global_step"] == first["global_step"] * 3 // 2
    # The training log keeps the epochs from before the resume (Lightning alone would not).
    logged = pl.read_csv(tmp_path / "metrics.csv", infer_schema_length=None)
    assert logged.select("epoch", "train/loss_epoch").drop_nulls()["epoch"].to_list() == [0, 1, 2]
    assert logged["val/recall@20"].drop_nulls().len() == 3 + 1  # every epoch, then validate()
