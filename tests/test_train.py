"""End to end: train a few epochs on synthetic data, export, load the bundle, recommend."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import hydra.utils
import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir

import train as train_module
from serve import BundleError, Recommender, UnknownItemError, UnknownUserError
from serve.bundle import FORMAT_VERSION, MANIFEST, USERS, resolve
from tests.conftest import ROOT, compose_config
from towers.metrics import KS, METRICS, metric_name
from towers.ranking import exact_top_k


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


def test_two_tower_beats_popularity_on_planted_clusters(trained_run):
    _, metrics = trained_run
    for key in ("recall@20", "ndcg@20"):
        assert metrics[f"test/{key}"] > 1.5 * metrics[f"popularity/test/{key}"], key


def test_checkpoints_load_without_unpickling_objects(trained_run):
    output_dir, _ = trained_run
    state = torch.load(
        output_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert "state_dict" in state


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _exported_item_table(bundle_dir, member: int = 0):
    from safetensors.torch import load_file

    from serve.bundle import ITEM_TOWER

    return load_file(resolve(bundle_dir)[0] / ITEM_TOWER)[f"{member}.item_embedding.weight"]


def test_the_refit_model_is_the_one_exported(trained_run):
    """refit (the default): selection picks the epoch count on validation, a fresh model is
    trained on train + validation for that many epochs, and that model is the bundle."""
    output_dir, metrics = trained_run
    assert metrics["refit/epochs"] == metrics["train/epochs"] >= 1
    refit_last = output_dir / "checkpoints" / f"refit-{metrics['refit/epochs']:.0f}" / "last.ckpt"
    refit = _weights(refit_last)
    selected = _weights(output_dir / "checkpoints" / "best.ckpt")
    exported = _exported_item_table(output_dir / "bundle")
    name = "item_tower.item_embedding.weight"
    torch.testing.assert_close(exported, refit[name])
    assert not torch.allclose(exported, selected[name])


def test_without_refit_the_selected_checkpoint_is_exported(tmp_path):
    # ensemble=true has no refit model to add: the selection model is served alone.
    overrides = ["refit=false", "ensemble=true", "trainer.max_epochs=2"]
    metrics = train_module.train(compose_config(tmp_path, overrides))
    assert "refit/epochs" not in metrics
    assert not list((tmp_path / "checkpoints").glob("refit*"))
    torch.testing.assert_close(
        _exported_item_table(tmp_path / "bundle"),
        _weights(tmp_path / "checkpoints" / "best.ckpt")["item_tower.item_embedding.weight"],
    )


def test_ensemble_serves_the_selection_and_refit_models_as_one(tmp_path):
    """ensemble=true: the bundle's towers are the selection model's and the refit model's side by
    side (vectors twice as long, scores the weighted mean of their cosines), and test metrics
    rank with it."""
    metrics = train_module.train(
        compose_config(
            tmp_path, ["ensemble=true", "ensemble_selection_weight=0.3", "trainer.max_epochs=2"]
        )
    )
    # The refit starts from another seed (seed + 1): a more different second member.
    refit = _weights(tmp_path / "checkpoints" / "refit-2-seed43" / "last.ckpt")
    selected = _weights(tmp_path / "checkpoints" / "best.ckpt")
    name = "item_tower.item_embedding.weight"
    torch.testing.assert_close(_exported_item_table(tmp_path / "bundle", 0), selected[name])
    torch.testing.assert_close(_exported_item_table(tmp_path / "bundle", 1), refit[name])
    manifest = json.loads((resolve(tmp_path / "bundle")[0] / MANIFEST).read_text())
    dim = selected[name].shape[1]
    assert manifest["embedding_dim"] == 2 * dim
    assert manifest["model"]["scoring"]["members"] == 2
    assert manifest["model"]["scoring"]["weights"] == [0.3, 0.7]  # selection, refit
    recommender = Recommender.load(tmp_path / "bundle")
    user = recommender.user_vocab.raw_ids(np.array([0]))[0]
    scores = [r.score for r in recommender.recommend(user, k=5)]
    assert all(-1.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


def test_a_popularity_prior_is_served_with_the_known_interactions_counts(tmp_path):
    """model.popularity_prior: the selection model validates with it (its own training counts),
    the served ensemble adds it once, counted over train + validation."""
    overrides = ["ensemble=true", "trainer.max_epochs=2", "model.popularity_prior=0.01"]
    cfg = compose_config(tmp_path, overrides)
    metrics = train_module.train(cfg)
    selected = _weights(tmp_path / "checkpoints" / "best.ckpt")
    data = instantiate_data(cfg)
    known = np.bincount(data.before_test[:, 1], minlength=data.num_items) + 1.0
    train_counts = np.bincount(data.train[:, 1], minlength=data.num_items) + 1.0
    validated = train_module._build_model(cfg, data).scorer.item_prior  # what validation ranks by
    np.testing.assert_allclose(
        validated[:-1].numpy(),
        np.log(train_counts) - np.log(train_counts).mean(),
        rtol=1e-5,
        atol=1e-6,
    )
    manifest = json.loads((resolve(tmp_path / "bundle")[0] / MANIFEST).read_text())
    dim = selected["item_tower.item_embedding.weight"].shape[1]
    assert manifest["embedding_dim"] == 2 * dim + 2
    assert manifest["model"]["scoring"]["popularity_prior"] == 0.01
    recommender = Recommender.load(tmp_path / "bundle")
    log_p = np.log(known) - np.log(known).mean()
    np.testing.assert_allclose(recommender.item_vectors[:, -2] * 10.0, log_p, rtol=1e-5, atol=1e-6)
    assert metrics["test/recall@20"] > metrics["popularity/test/recall@20"]


@pytest.mark.parametrize("weight", [0.0, 1.0, -0.2])
def test_an_ensemble_weight_outside_0_1_is_named_before_training(tmp_path, weight):
    cfg = compose_config(tmp_path, ["ensemble=true", f"ensemble_selection_weight={weight}"])
    with pytest.raises(ValueError, match=rf"ensemble_selection_weight: .*got {weight}"):
        train_module.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def instantiate_data(cfg):
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    return datamodule.data


def test_an_experiment_sets_top_level_keys():
    """Experiments override train.yaml's own keys (`_self_` comes first in its defaults)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose(config_name="train")
        gowalla = compose(config_name="train", overrides=["experiment=gowalla"])
    assert default.ensemble is False and gowalla.ensemble is True


def test_offline_top_k_equals_what_the_recommender_returns(bundle_dir):
    recommender = Recommender.load(bundle_dir)
    bundle = recommender.bundle
    users = np.arange(len(recommender.user_vocab))
    # Independent path: torch exact ranking over the exported item vectors.
    histories = recommender.histories[users]
    with torch.no_grad():
        user_vectors = bundle.scorer.encode_users(torch.from_numpy(users), histories)
    seen = torch.full((len(users), 200), -1, dtype=torch.long)
    for u in users:
        s = recommender.seen(u)
        seen[u, : len(s)] = torch.from_numpy(s)
    _, expected = exact_top_k(user_vectors, torch.from_numpy(bundle.item_vectors), 20, seen)
    _, offline = recommender.top_k(users, 20)  # what evaluate_recommender ranks with
    np.testing.assert_array_equal(offline, expected.numpy())
    raw_users = recommender.user_vocab.raw_ids(users)
    for u, raw in zip(users[:50], raw_users[:50], strict=True):
        online = [r.item_id for r in recommender.recommend(raw, k=20)]
        assert online == recommender.item_ids[offline[u]].tolist()


def test_recommend_returns_k_unseen_items_with_titles(bundle_dir):
    recommender = Recommender.load(bundle_dir)
    user = recommender.user_vocab.raw_ids(np.array([0]))[0]
    seen = set(recommender.item_ids[recommender.seen(0)].tolist())
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


def test_similar_items_exclude_the_item_itself(bundle_dir):
    recommender = Recommender.load(bundle_dir)
    item = recommender.item_ids[0].item()
    results = recommender.similar_items(item, k=5)
    assert len(results) == 5 and item not in [r.item_id for r in results]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_named(bundle_dir, k):
    recommender = Recommender.load(bundle_dir)
    with pytest.raises(ValueError, match=f"k must be a positive integer, got {k!r}"):
        recommender.recommend(recommender.user_vocab.raw_ids(np.array([0]))[0], k=k)


def test_unknown_ids_are_named(bundle_dir):
    recommender = Recommender.load(bundle_dir)
    with pytest.raises(UnknownUserError, match="unknown user id 'nobody'"):
        recommender.recommend("nobody")
    with pytest.raises(UnknownItemError, match="unknown item id 12"):
        recommender.similar_items(12)


def _copy(bundle_dir, tmp_path):
    """A copy of the bundle's current version directory (itself a plain bundle)."""
    target = tmp_path / "bundle"
    shutil.copytree(resolve(bundle_dir)[0], target)
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


def test_cli_prints_json_and_names_errors(bundle_dir):
    recommender = Recommender.load(bundle_dir)
    user = str(recommender.user_vocab.raw_ids(np.array([1]))[0])
    command = [
        sys.executable,
        "-m",
        "serve",
        "recommend",
        "--bundle",
        str(bundle_dir),
        "--user",
        user,
        "--k",
        "4",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    out = json.loads(done.stdout)
    assert out["user_id"] == user and len(out["items"]) == 4
    assert out["items"][0]["item_id"] == recommender.recommend(user, k=1)[0].item_id
    bad = subprocess.run([*command[:-1], "0"], capture_output=True, text=True, cwd=ROOT)
    assert (
        bad.returncode == 2
        and "k must be a positive integer" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def test_same_seed_gives_the_same_metrics(tmp_path, trained_run):
    _, metrics = trained_run
    again = train_module.train(compose_config(tmp_path))
    for key in ("test/recall@20", "test/ndcg@20", "val/recall@20"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-9)


def test_training_resumes_from_the_last_checkpoint(tmp_path):
    train_module.train(compose_config(tmp_path, ["trainer.max_epochs=2", "logger=csv"]))
    first = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    # Same run directory, another seed: a finished run is not retrained from scratch.
    train_module.train(compose_config(tmp_path, ["trainer.max_epochs=2", "seed=7", "logger=csv"]))
    for name, tensor in _weights(tmp_path / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(tensor, first["state_dict"][name], msg=name)
    # Asking for more epochs continues where it stopped.
    train_module.train(compose_config(tmp_path, ["trainer.max_epochs=3", "logger=csv"]))
    resumed = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert resumed["global_step"] == first["global_step"] * 3 // 2
    # The training log keeps the epochs from before the resume (Lightning alone would not).
    logged = pl.read_csv(tmp_path / "metrics.csv", infer_schema_length=None)
    assert logged.select("epoch", "train/loss_epoch").drop_nulls()["epoch"].to_list() == [0, 1, 2]
    assert logged["val/recall@20"].drop_nulls().len() == 3 + 1  # every epoch, then validate()


def test_train_py_command_line_writes_the_run_directory(tmp_path):
    from tests.conftest import TINY

    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            "trainer.max_epochs=2",
            "logger=csv",
            f"paths.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    last_lines = done.stdout.strip().splitlines()
    assert last_lines[-1] == f"bundle: {tmp_path / 'bundle'}"
    assert last_lines[-2] == f"metrics: {tmp_path / 'metrics.json'}"
    assert any(line.startswith("recall@20") for line in last_lines)
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert Recommender.load(tmp_path / "bundle").num_items > 0
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "training.png").stat().st_size > 0
    logged = pl.read_csv(tmp_path / "metrics.csv", infer_schema_length=None)
    epoch_losses = logged.select("epoch", "train/loss_epoch").drop_nulls()
    assert epoch_losses["epoch"].to_list() == [0, 1]  # one mean training loss per epoch
    assert logged["train/loss_step"].drop_nulls().len() >= 1


def test_row_wise_adam_trains_like_dense_adam_flushes_and_resumes(tmp_path):
    overrides = ["trainer.max_epochs=2", "refit=false"]
    dense = train_module.train(compose_config(tmp_path / "dense", overrides))
    rows = train_module.train(
        compose_config(tmp_path / "rows", [*overrides, "model.towers.sparse=true"])
    )
    assert rows["val/recall@20"] == pytest.approx(dense["val/recall@20"], abs=0.01)
    assert rows["test/recall@20"] == pytest.approx(dense["test/recall@20"], abs=0.01)
    checkpoint = torch.load(
        tmp_path / "rows" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
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
            tmp_path / "rows", ["trainer.max_epochs=3", "refit=false", "model.towers.sparse=true"]
        )
    )
    assert resumed["train/epochs"] == 3
