"""Train a two-tower model, pick the best epoch on validation, export the bundle, and evaluate
the exported bundle on the test split next to a popularity baseline.

    python train.py                                  # bundled MovieLens, CPU, a couple of minutes
    python train.py paths.output_dir=runs/ml         # choose the run directory
    python train.py experiment=gowalla               # a shipped experiment
    python train.py data=synthetic trainer.max_epochs=2
    python train.py trainer=ddp trainer.devices=2    # several processes (README: several machines)

`main` is the Hydra entry point; `train(cfg)` does the work and can be called from tests.
This file is glue: the data pipeline lives in features/, the model in towers/, export and
ranking in serve/.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import polars as pl
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from features import InteractionDataModule
from features.auto import announce, infer
from features.prepare import PreparedData
from features.serving import item_table, user_table
from features.sources.base import Source
from features.spec import SIDES, FeaturesConfig, parse_side
from serve.audit import CATALOGUE_METRICS, AuditGroups
from serve.baselines import evaluate_baselines
from serve.bundle import BYTES_PER_ITEM, index_bytes_per_item, read_manifest
from serve.cold import evaluate_cold
from serve.evaluate import evaluate_recommender
from serve.export import export_bundle
from serve.held_out import TEST_PAIRS, write_held_out
from serve.recommender import Recommender
from serve.report import BUNDLE, prefix_bundle, write_report
from serve.versions import resolve
from towers import ConfigError, FeatureSpec, ItemCatalogue, Scorer, TwoTowerModule
from towers.checkpoint import Checkpoints
from towers.halving import first_rung_epochs, reachable, successive_halving
from towers.matryoshka import Matryoshka, check_dim
from towers.metrics import METRICS, metric_name

log = logging.getLogger("twotower")
ROOT = Path(__file__).resolve().parent
LOSS_COLUMN = "train/loss_epoch"  # the CSV log's training loss per epoch (training.png)
# conf/paths/default.yaml's ${repo_root:}: registered before any config is composed (the CLI's
# @hydra.main below, or `compose`).
OmegaConf.register_new_resolver("repo_root", lambda: str(ROOT), replace=True)


def _instantiate_all(group: DictConfig | None) -> list:
    """Every `_target_` entry of a config group (callbacks, loggers); [] when empty."""
    if not group:
        return []
    if "_target_" in group:
        return [instantiate(group)]
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def metrics_table(metrics: dict[str, float], ks) -> str:
    """Rows slice metric@k, columns twotower / popularity / content / ALS (where measured): every
    metric of the warm test and its catalogue audit (serve.audit), recall and ndcg at 20 of each
    other slice (cold, popularity bucket, user activity)."""
    slices = {k.split("/")[0] for k in metrics if k.startswith("test_")}
    stages = ["test", *sorted(slices, key=_numbers_in_order)]  # test_d8 before test_d16
    lines = [
        f"{'slice':<22}{'metric':<14}{'twotower':>10}{'popularity':>12}{'content':>10}{'als':>10}"
    ]
    for stage in stages:
        names = (*METRICS, *CATALOGUE_METRICS) if stage == "test" else ("recall", "ndcg")
        cuts = ks if stage == "test" else [k for k in ks if k == 20] or ks[-1:]
        for name in names:
            for k in cuts:
                key = f"{stage}/{metric_name(name, k)}"
                if key not in metrics:
                    continue
                row = [metrics.get(p + key) for p in ("", "popularity/", "content/", "als/")]
                cells = "".join(
                    f"{v:>{w}.4f}" if v is not None else " " * w
                    for v, w in zip(row, (10, 12, 10, 10), strict=True)
                )
                lines.append(f"{stage:<22}{metric_name(name, k):<14}{cells}")
        if f"{stage}/{BYTES_PER_ITEM}" in metrics:  # the index's size (Matryoshka prefixes)
            size = metrics[f"{stage}/{BYTES_PER_ITEM}"]
            lines.append(f"{stage:<22}{BYTES_PER_ITEM:<14}{size:>10.1f}")
    return "\n".join(lines)


def _numbers_in_order(name: str) -> list[str | int]:
    """A sort key that orders the numbers in names by value."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def recipe_table(metrics: dict[str, object], monitor: str) -> str:
    """One row per recipe candidate, best first: its validation figure, epochs, seconds."""
    names = [k.split("/")[1] for k in metrics if k.startswith("recipe/") and k.endswith("/epochs")]
    names.sort(key=lambda n: -float(metrics[f"recipe/{n}/{monitor}"]))
    lines = [f"{'recipe candidate':<24}{monitor:>16}{'epochs':>8}{'seconds':>9}"]
    for name in names:
        mark = " (chosen)" if metrics["recipe/winner"] == name else ""
        lines.append(
            f"{name:<24}{metrics[f'recipe/{name}/{monitor}']:>16.4f}"
            f"{metrics[f'recipe/{name}/epochs']:>8.0f}{metrics[f'recipe/{name}/seconds']:>9.0f}{mark}"
        )
    return "\n".join(lines)


def plot_training(metrics_csv: Path, out_png: Path, monitor: str) -> Path | None:
    """Training loss and the monitored validation metric per epoch, from the CSV log, with the
    same metric of each Matryoshka prefix (`val_d<d>/...`) beside the monitored one."""
    log_df = _read_log(metrics_csv)
    if log_df is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = training_curves(log_df, monitor)
    validation = validation_columns(log_df.columns, monitor)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, columns in ((ax_loss, [LOSS_COLUMN]), (ax_val, validation)):
        for column in (c for c in columns if c in curves):
            epochs, values = curves[column]
            ax.plot([e + 1 for e in epochs], values, marker="o", label=column)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(columns[0])
        ax.grid(alpha=0.3)
    if len(validation) > 1:
        ax_val.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def training_curves(log_df: pl.DataFrame, monitor: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each plotted column's (epochs, values), 0-based epochs: the training loss and the
    validation columns at the epochs the fit trained. The selected model's validation after the
    fit is logged one epoch past the last; a curve that went on there would show an epoch never
    trained."""
    trained = None
    if LOSS_COLUMN in log_df.columns:
        trained = log_df.select("epoch", LOSS_COLUMN).drop_nulls()["epoch"].implode()
    curves = {}
    for column in [LOSS_COLUMN, *validation_columns(log_df.columns, monitor)]:
        if column not in log_df.columns:
            continue
        points = log_df.select("epoch", column).drop_nulls()
        if trained is not None:
            points = points.filter(pl.col("epoch").is_in(trained))
        curves[column] = (points["epoch"].to_list(), points[column].cast(pl.Float64).to_list())
    return curves


def validation_columns(columns: list[str], monitor: str) -> list[str]:
    """The monitored column, then the same metric of each Matryoshka prefix, shortest first:
    "val/recall@20", "val_d16/recall@20", "val_d32/recall@20"."""
    stage, _, metric = monitor.partition("/")
    pattern = re.compile(rf"{re.escape(stage)}_d\d+/{re.escape(metric)}")
    return [monitor, *sorted((c for c in columns if pattern.fullmatch(c)), key=_numbers_in_order)]


def _read_log(path: Path) -> pl.DataFrame | None:
    return pl.read_csv(path, infer_schema_length=None) if path.is_file() else None


def _merge_log(earlier: pl.DataFrame, path: Path) -> None:
    """metrics.csv after a resumed fit: the earlier run's rows for the epochs before the resumed
    ones, then the new rows (columns united), written atomically."""
    latest = _read_log(path)
    if latest is None or latest.is_empty():
        merged = earlier
    else:
        first_new_epoch = latest["epoch"].min()
        merged = pl.concat(
            [earlier.filter(pl.col("epoch") < first_new_epoch), latest], how="diagonal_relaxed"
        )
    tmp = path.with_name(f".{path.name}.tmp")
    merged.write_csv(tmp)
    os.replace(tmp, path)


def build_model(cfg: DictConfig, data: PreparedData) -> TwoTowerModule:
    catalogue = ItemCatalogue(
        inputs={name: torch.from_numpy(a) for name, a in data.item_inputs.items()},
        counts=torch.from_numpy(data.item_counts),
    )
    return model_factory(cfg)(spec=FeatureSpec(**data.tower_spec()), catalogue=catalogue)


def model_factory(cfg: DictConfig) -> Callable[..., TwoTowerModule]:
    """`cfg.model` made (its towers, loss, negatives and optimiser settings), the module still
    to be given the data's spec and catalogue. A setting its class refuses raises that class's
    `ConfigError`, not Hydra's wrapper around it."""
    try:
        return instantiate(cfg.model)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def _fit(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: TwoTowerModule,
    datamodule: InteractionDataModule,
    last: Path,
) -> float:
    """trainer.fit, continuing from `last` when `resume` is on and it exists; wall seconds."""
    resume_from = str(last) if cfg.get("resume") and last.is_file() else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    if _multi_process(cfg):
        trainer.callbacks.append(ContinueRandomStreams())
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    return time.perf_counter() - started


class ContinueRandomStreams(L.Callback):
    """Lightning's DDP re-seeds every process each time a trainer sets the processes up
    (reset_seed), where one process continues the streams it built the model with. This puts
    the CPU streams back as they were before (as it is made, then as each run left them), so
    each rank draws (shared negatives, id dropout) what one process over the global batch draws.
    The GPUs' streams, untouched by building on the CPU, are the seed's in both."""

    def __init__(self) -> None:
        self.states = _cpu_streams()

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        python, numpy, cpu = self.states
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.states = _cpu_streams()  # what the trainer's next run (validate) continues


def _cpu_streams() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _refit(
    cfg: DictConfig, data: PreparedData, epochs: int, output_dir: Path, seed: int
) -> tuple[TwoTowerModule, float]:
    """Train a fresh model on train + validation for the epoch count validation chose.

    Everything was selected on validation already (recipe, epochs); this only lets the final
    model learn from the interactions validation held back. There is no validation metric to
    watch any more, so there is no early stopping and the last epoch is the model. `seed` sets
    its initialisation and data order.
    """
    log.info("refit on train + validation for %d epochs (seed %d)", epochs, seed)
    L.seed_everything(seed, workers=True)
    datamodule: InteractionDataModule = instantiate(cfg.data, seed=seed)
    datamodule.data = data.with_validation_merged()
    model = build_model(cfg, datamodule.data)
    # One directory per epoch count and seed: a refit resumes only towards the same schedule (a
    # resumed selection that picks another epoch count starts its refit afresh).
    name = f"refit-{epochs}" if seed == cfg.seed else f"refit-{epochs}-seed{seed}"
    directory = output_dir / "checkpoints" / name
    checkpoint = Checkpoints(dirpath=directory, save_last=True, save_top_k=0)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_epochs=epochs,
        callbacks=[checkpoint],
        logger=False,
        limit_val_batches=0,
    )
    seconds = _fit(cfg, trainer, model, datamodule, directory / "last.ckpt")
    return model.cpu().eval(), seconds


class ResumeConfigError(ValueError):
    """A rerun into a run directory whose checkpoints were trained with other settings."""

    def __init__(self, path: Path, differences: dict[str, tuple[object, object]]):
        self.path, self.differences = path, differences
        lines = [f"  {key}: {old!r} then, {new!r} now" for key, (old, new) in differences.items()]
        super().__init__(
            f"{path}: the checkpoints here were trained with other settings:\n"
            + "\n".join(lines)
            + "\nresume=force continues them anyway; resume=false starts over (the old "
            "checkpoints are set aside); or choose another paths.output_dir"
        )


# Keys that do not change what a run trains: where files go, how it resumes, the index built at
# export, progress output. Every other key must match for a run to continue its checkpoints.
NOT_TRAINING = (
    "paths",
    "resume",
    "threads",
    "index",
    "export",
    "logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
)
RUN_SETTINGS = "run_settings.json"  # in checkpoints/: the settings the checkpoints were made with


def _check_resume(cfg: DictConfig, output_dir: Path) -> None:
    """`resume`: true continues the checkpoints of the same settings and refuses others
    (`ResumeConfigError`); "force" continues them whatever the settings; false sets any earlier
    checkpoints and training log aside in replaced-<time>/ and starts over."""
    mode = cfg.get("resume")
    if mode not in (True, False, "force"):
        raise ConfigError("resume", mode, "expected true, false or force")
    checkpoints, settings = output_dir / "checkpoints", _training_settings(cfg)
    if mode is False and checkpoints.exists():
        aside = output_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
        aside.mkdir()
        for name in ("checkpoints", "metrics.csv"):
            if (output_dir / name).exists():
                os.replace(output_dir / name, aside / name)
        log.info("resume=false: the earlier checkpoints are set aside in %s", aside)
    stored = checkpoints / RUN_SETTINGS
    if (checkpoints / "last.ckpt").is_file() and stored.is_file():
        before = json.loads(stored.read_text())
        differences = {
            key: (before.get(key), settings.get(key))
            for key in sorted(before.keys() | settings.keys())
            if before.get(key) != settings.get(key)
        }
        if differences.keys() - before.keys():  # keys newer than the checkpoints
            # A key added since they were trained, at its default, is how they were trained.
            defaults = _training_settings(compose())
            for key in differences.keys() - before.keys():
                if key in defaults and defaults[key] == settings[key]:
                    del differences[key]
        if differences and mode != "force":
            raise ResumeConfigError(stored, differences)
    checkpoints.mkdir(exist_ok=True)
    _write_json(stored, settings)


def _training_settings(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as flat dotted keys, without the NOT_TRAINING ones."""
    flat: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if prefix.rstrip(".") in NOT_TRAINING:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def _start_run(cfg: DictConfig) -> Path:
    """The run directory with the resolved config in it; threads and seeds set; the settings
    that would fail only after training checked first."""
    _check_settings(cfg)
    _check_multi_process(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if _rank_zero():  # under DDP the other ranks use the directory rank 0 set up
        output_dir.mkdir(parents=True, exist_ok=True)
        _check_resume(cfg, output_dir)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True)
    return output_dir


class MultiProcessError(ValueError):
    """A setting one training process supports and several (trainer=ddp) do not: `setting`
    names it, `reason` says why, `instead` what to run."""

    def __init__(self, setting: str, reason: str, instead: str):
        self.setting, self.reason, self.instead = setting, reason, instead
        super().__init__(f"{setting} with trainer=ddp: {reason}; instead: {instead}")


def _multi_process(cfg: DictConfig) -> bool:
    """Whether the trainer runs several processes (a DDP strategy, conf/trainer/ddp.yaml)."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else strategy
    return "ddp" in str(name or "").lower()


def _check_multi_process(cfg: DictConfig) -> None:
    """Under DDP every rank runs train() and must take the same decisions: refuse the settings
    whose decisions a rank would take on its own."""
    if not _multi_process(cfg):
        return
    if cfg.get("recipe"):
        raise MultiProcessError(
            "recipe=auto",
            "the search stops on a wall-clock budget that each process measures for itself",
            "choose the recipe on one process, then train it with trainer=ddp",
        )
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise MultiProcessError(
            "-m (a sweep)",
            "Lightning starts the other ranks by re-running the command line, a sweep each",
            "sweep on one process per trial, then train the best with trainer=ddp",
        )


def _rank_zero() -> bool:
    """Whether this process is global rank 0, the one that writes the run's files. Lightning's
    rank is the launcher's (torchrun's RANK, SLURM's SLURM_PROCID, the LOCAL_RANK Lightning gives
    the processes it starts) until training starts, the process group's after; NODE_RANK tells
    apart the machines of Lightning's own launcher."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def _check_settings(cfg: DictConfig) -> None:
    """The settings that would fail only after data preparation or training, checked before any
    data is read; a `ConfigError` names the key."""
    selection_weight = float(cfg.get("ensemble_selection_weight", 0.5))
    if not 0.0 < selection_weight < 1.0:
        raise ConfigError(
            "ensemble_selection_weight", selection_weight, "expected a share in (0, 1)"
        )
    refit_seeds = cfg.get("refit_seeds", 1)
    if not isinstance(refit_seeds, int) or isinstance(refit_seeds, bool) or refit_seeds < 1:
        raise ConfigError("refit_seeds", refit_seeds, "expected a whole number >= 1")
    towers = cfg.model.towers
    check_dim(OmegaConf.select(cfg, "export.dim"), int(towers.embedding_dim))
    matryoshka = Matryoshka.parse(
        cfg.model.get("matryoshka") or [],
        cfg.model.get("matryoshka_weights"),
        int(towers.embedding_dim),
        towers.similarity,
        cfg.model.get("matryoshka_warmup", 0),
        cfg.model.get("matryoshka_loss"),
        cfg.model.get("matryoshka_prior"),
    )
    factory = model_factory(cfg)
    if matryoshka is not None:  # each prefix's loss settings against the loss's class
        matryoshka.losses(factory.keywords["loss"])


def features_config(cfg: DictConfig, source: Source) -> FeaturesConfig:
    """The declared features (conf/features), or with `auto` those inferred from the source's
    tables (printed, ready to paste into a config file); a side declared as well wins."""
    config = OmegaConf.to_container(cfg.features, resolve=True) if cfg.get("features") else {}
    if not config.get("auto"):
        return FeaturesConfig.parse(config)
    inferred = infer(
        source.users(), source.items(), history_length=int(config.get("history_length", 50))
    )
    print(announce(inferred))
    declared = {side: config[side] for side in SIDES if config.get(side)}
    sides = {
        side: parse_side(side, declared[side]) if side in declared else inferred.side(side)
        for side in SIDES
    }
    return FeaturesConfig(**sides)


def prepare_data(cfg: DictConfig) -> InteractionDataModule:
    """The data config's datamodule with its features (declared or inferred), set up: what
    train() trains on (tests and benchmarks use it too)."""
    source = instantiate(cfg.data.source)
    datamodule: InteractionDataModule = instantiate(cfg.data, source=source)
    # Set apart from instantiate, which would turn the dataclass into a config node.
    datamodule.features = features_config(cfg, source)
    datamodule.setup()
    data = datamodule.data
    log.info(
        "%s: %d users, %d items, %d train / %d val / %d test interactions",
        data.name,
        data.num_users,
        data.num_items,
        len(data.train),
        data.val.num_interactions,
        data.test.num_interactions,
    )
    return datamodule


def _select(
    cfg: DictConfig, datamodule: InteractionDataModule, output_dir: Path
) -> tuple[TwoTowerModule, dict[str, float]]:
    """Fit with validation every epoch; the best epoch's model (on CPU, eval mode), its
    validation metrics, the fit's seconds and the epoch count; training.png drawn."""
    model = build_model(cfg, datamodule.data)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    trainer = _trainer(cfg, callbacks)
    metrics_csv = output_dir / "metrics.csv"
    # Lightning's CSV logger starts metrics.csv afresh on resume: keep the rows logged so far.
    earlier_log = _read_log(metrics_csv) if cfg.get("resume") and _rank_zero() else None
    fit_seconds = _fit(cfg, trainer, model, datamodule, output_dir / "checkpoints" / "last.ckpt")
    epochs = _load_best(cfg, model, callbacks) or trainer.current_epoch
    model = model.cpu().eval()
    metrics = {
        k: float(v)
        for k, v in trainer.validate(model, datamodule=datamodule, verbose=False)[0].items()
    }
    metrics.update({"train/seconds": fit_seconds, "train/epochs": float(epochs)})
    if earlier_log is not None:
        _merge_log(earlier_log, metrics_csv)
    if _rank_zero():
        plot_training(metrics_csv, output_dir / "training.png", cfg.monitor)
    return model, metrics


def _trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=_instantiate_all(cfg.get("logger")) or False
    )


def _load_best(cfg: DictConfig, model: TwoTowerModule, callbacks: list) -> int | None:
    """The best checkpoint's weights into `model`; its epoch count (None without one)."""
    checkpoint = next(
        (c for c in callbacks if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)), None
    )
    if checkpoint is None or not checkpoint.best_model_path:
        return None
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    epochs = int(best["epoch"]) + 1
    log.info(
        "best checkpoint: %s (epoch %d, %s = %.4f)",
        checkpoint.best_model_path,
        epochs,
        cfg.monitor,
        checkpoint.best_model_score,
    )
    return epochs


def _served_scorer(
    cfg: DictConfig, selected: TwoTowerModule, data: PreparedData, metrics: dict, output_dir: Path
) -> Scorer:
    """What the bundle serves: the refit model (with `ensemble`, beside the selection model), or
    the selection model; the popularity prior counts every interaction before test."""
    members = [(selected.user_tower, selected.item_tower)]
    weights = None  # the members' shares of the score; None: equal
    if cfg.get("refit"):
        # Each refit from its own initialisation: on Gowalla validation two seeds' models together
        # measured +4.1% recall@20 over one, two runs of the same seed +1.2%.
        first = cfg.seed + 1 if cfg.get("ensemble") else cfg.seed
        epochs = int(metrics["train/epochs"])
        refits, seconds = [], 0.0
        for seed in range(first, first + int(cfg.get("refit_seeds", 1))):
            refit, fit_seconds = _refit(cfg, data, epochs, output_dir, seed)
            refits.append((refit.user_tower, refit.item_tower))
            seconds += fit_seconds
        metrics.update({"refit/seconds": seconds, "refit/epochs": float(epochs)})
        if cfg.get("ensemble"):  # the selection model, as costly as a refit, served beside them
            share = float(cfg.ensemble_selection_weight)
            members = [*members, *refits]
            weights = [share, *[(1 - share) / len(refits)] * len(refits)]
        else:
            members = refits
    elif cfg.get("ensemble"):
        log.info("ensemble: no refit model to add to the selection model; serving it alone")
    if len(members) > 1:
        log.info("serving %d models as one (weights %s)", len(members), weights or "equal")
    dim = OmegaConf.select(cfg, "export.dim")
    return Scorer(
        members,
        weights,
        popularity_prior=selected.served_prior(dim),
        item_counts=torch.from_numpy(data.item_counts_before_test()),
        dim=dim,
    )


def _evaluate(cfg: DictConfig, bundle_dir: Path, data: PreparedData, ks) -> dict[str, float]:
    """The bundle on the test split through the serving path with the retrievability audit
    (serve.audit), and the baselines beside it (`baselines`: popularity, ALS tuned on
    validation); each cold slice apart (serve.cold)."""
    recommender = Recommender.load(bundle_dir)
    audit = AuditGroups.of_data(data)
    metrics = evaluate_recommender(recommender, data.test, ks, stage="test", audit=audit)
    metrics |= evaluate_baselines(
        list(cfg.get("baselines") or ["popularity"]),
        data,
        ks,
        factors_at_least=int(cfg.model.towers.embedding_dim),
        seed=int(cfg.seed),
    )
    return metrics | evaluate_cold(recommender, data, ks)


def _export(cfg: DictConfig, scorer: Scorer, data: PreparedData, path: Path) -> Path:
    """`scorer` exported as a bundle at `path`, with the run's tables and index settings."""
    return export_bundle(
        path,
        scorer,
        data.features,
        item_table(data),
        user_table(data),
        index_config=cfg.index,
        num_train_users=data.num_train_users,
    )


def _evaluate_prefixes(
    cfg: DictConfig,
    selected: TwoTowerModule,
    scorer: Scorer,
    data: PreparedData,
    ks,
    output_dir: Path,
) -> dict[str, float]:
    """With `model.matryoshka`: each trained prefix d exported as its own bundle (bundle_d<d>/,
    what `export.dim=d` serves) and evaluated on test through the serving path as
    `test_d<d>/...`, with its index's bytes per item beside the served bundle's (`test/`); each
    prefix served with its own popularity prior (`model.matryoshka_prior`) or the model's."""
    if selected.matryoshka is None:
        return {}
    served = read_manifest(resolve(output_dir / BUNDLE)[0])
    metrics = {f"test/{BYTES_PER_ITEM}": index_bytes_per_item(served)}
    for dim in selected.matryoshka.prefixes:
        prefix_scorer = scorer.at_dim(dim, selected.served_prior(dim))
        path = _export(cfg, prefix_scorer, data, output_dir / prefix_bundle(dim))
        recommender, stage = Recommender.load(path), f"test_d{dim}"
        metrics |= evaluate_recommender(recommender, data.test, ks, stage=stage)
        metrics[f"{stage}/{BYTES_PER_ITEM}"] = recommender.bundle.bytes_per_item
    return metrics


# -- recipe=auto: the recipe chosen on validation by successive halving (towers.halving) ----------
class RecipeError(ValueError):
    """A recipe candidate that would not train on the run's split: the `candidate`, the config
    `key` it changes, and its value in the run and in the candidate."""

    def __init__(self, candidate: str, key: str, run: object, changed: object) -> None:
        self.candidate, self.key, self.run, self.changed = candidate, key, run, changed
        super().__init__(
            f"recipe candidate {candidate!r} changes {key} ({run!r} in the run, {changed!r} in "
            "the candidate): candidates share the run's data, split and features, so that "
            "their validation figures compare"
        )


# What every candidate shares with the run: the split, what is fitted on it, the selection metric.
RECIPE_SHARED = ("data.source", "data.split", "features", "seed", "monitor")


class StopAtEpoch(L.Callback):
    """Stops a fit once `epochs` epochs are done (a recipe candidate's rung), or, with a `bar`,
    as soon as the candidate can no longer reach it (towers.halving.reachable over `history`, the
    monitored score of every epoch before this fit, and this fit's). The schedule stays the one of
    the candidate's whole epoch count, so the rung is the start of its full run."""

    def __init__(
        self, epochs: int, monitor: str, history: list[float], max_epochs: int, bar: float
    ) -> None:
        self.epochs, self.monitor, self.max_epochs, self.bar = epochs, monitor, max_epochs, bar
        self.history = list(history)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.should_stop = trainer.current_epoch >= self.epochs  # resumed at or past the rung

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.bar == float("-inf"):
            return
        self.history.append(float(trainer.callback_metrics[self.monitor]))
        if reachable(self.history, self.max_epochs - (trainer.current_epoch + 1)) < self.bar:
            log.info(
                "recipe: stopped at epoch %d, %s cannot reach %.4f",
                trainer.current_epoch + 1,
                self.monitor,
                self.bar,
            )
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class RecipeTrial:
    """One recipe candidate (towers.halving's Trial): its composed config, trained in its own
    directory, each rung continuing from its last checkpoint."""

    def __init__(self, name: str, cfg: DictConfig, data: PreparedData) -> None:
        self.name, self.cfg, self.data = name, cfg, data
        self.family = str(cfg.model.loss._target_)  # curves of one loss compare early
        self.max_epochs = int(cfg.trainer.max_epochs)
        # Optimiser steps an epoch: the loader drops the last partial batch.
        self.steps_per_epoch = max(len(data.train) // int(cfg.data.batch_size), 1)
        self.output_dir = _start_run(cfg)
        if cfg.resume is False:  # _start_run set earlier checkpoints aside; rungs continue
            cfg.resume = True
        self.epochs, self.score, self.seconds, self.stopped = 0, float("-inf"), 0.0, False
        self.history: list[float] = []

    def datamodule(self) -> InteractionDataModule:
        """The candidate's loader settings over the run's prepared data."""
        datamodule: InteractionDataModule = instantiate(self.cfg.data, seed=self.cfg.seed)
        datamodule.data = self.data
        return datamodule

    def advance(self, epochs: int, bar: float = float("-inf")) -> None:
        L.seed_everything(self.cfg.seed, workers=True)
        model = build_model(self.cfg, self.data)
        callbacks = _instantiate_all(self.cfg.get("callbacks"))
        stop = StopAtEpoch(epochs, self.cfg.monitor, self.history, self.max_epochs, bar)
        trainer = _trainer(self.cfg, [*callbacks, stop])
        metrics_csv = self.output_dir / "metrics.csv"
        earlier_log = _read_log(metrics_csv)
        last = self.output_dir / "checkpoints" / "last.ckpt"
        self.seconds += _fit(self.cfg, trainer, model, self.datamodule(), last)
        if earlier_log is not None:
            _merge_log(earlier_log, metrics_csv)
        self.epochs = trainer.current_epoch
        self.history = _validation_history(metrics_csv, self.cfg.monitor)
        checkpoint = next(
            c for c in callbacks if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)
        )
        if checkpoint.best_model_score is not None:
            self.score = float(checkpoint.best_model_score)
        early = [c for c in callbacks if isinstance(c, L.pytorch.callbacks.EarlyStopping)]
        self.stopped = self.epochs >= self.cfg.trainer.max_epochs or any(
            c.stopped_epoch > 0 for c in early
        )


def _validation_history(metrics_csv: Path, monitor: str) -> list[float]:
    """The monitored validation score of each epoch in metrics.csv, in epoch order."""
    frame = _read_log(metrics_csv)
    if frame is None or monitor not in frame.columns:
        return []
    rows = frame.filter(pl.col(monitor).is_not_null()).sort("epoch", maintain_order=True)
    return rows[monitor].cast(pl.Float64).to_list()


def run_overrides(overrides: list[str] | None) -> list[str]:
    """The overrides the run's config was composed from: `overrides`, else Hydra's record of the
    command line (python train.py ...)."""
    if overrides is not None:
        return list(overrides)
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def _recipe_trials(
    cfg: DictConfig, overrides: list[str], data: PreparedData, output_dir: Path
) -> list[RecipeTrial]:
    """Each candidate of `cfg.recipe`: the run's overrides, then the candidate's, composed anew
    and trained under <output_dir>/recipe/<name>/."""
    own = ("recipe", "+recipe", "hydra", "paths.output_dir")
    base = [o for o in overrides if not o.lstrip("~+").startswith(own)]
    run_settings = _training_settings(cfg)
    trials = []
    for name, extra in cfg.recipe.candidates.items():
        directory = output_dir / "recipe" / name
        candidate = compose([*base, *extra, f"paths.output_dir={directory}"])
        changed = _training_settings(candidate)
        for key in sorted(run_settings.keys() | changed.keys()):
            if key.startswith(RECIPE_SHARED) and run_settings.get(key) != changed.get(key):
                raise RecipeError(name, key, run_settings.get(key), changed.get(key))
        trials.append(RecipeTrial(name, candidate, data))
    return trials


def _choose_recipe(
    cfg: DictConfig, overrides: list[str], data: PreparedData, output_dir: Path
) -> tuple[RecipeTrial, dict[str, object]]:
    """The winning candidate of successive halving on validation, and what the search did (for
    metrics.json and recipe.json)."""
    trials = _recipe_trials(cfg, overrides, data, output_dir)
    budget = float(cfg.recipe.budget_minutes) * 60
    first = first_rung_epochs(
        int(cfg.recipe.first_epochs),
        int(cfg.recipe.get("first_steps", 0)),
        [trial.steps_per_epoch for trial in trials],
    )
    search = successive_halving(trials, first, budget)
    winner = search.winner
    log.info("recipe: %s wins (%s = %.4f)", winner.name, cfg.monitor, winner.score)
    record: dict[str, object] = {"recipe/winner": winner.name}
    for trial in trials:
        record[f"recipe/{trial.name}/{cfg.monitor}"] = trial.score
        record[f"recipe/{trial.name}/epochs"] = float(trial.epochs)
        record[f"recipe/{trial.name}/seconds"] = trial.seconds
    search_record = {
        "winner": winner.name,
        "out_of_budget": search.out_of_budget,
        "budget_minutes": float(cfg.recipe.budget_minutes),
        "first_rung_epochs": first,
        "candidates": {n: list(o) for n, o in cfg.recipe.candidates.items()},
        "rungs": [asdict(rung) for rung in search.rungs],
    }
    _write_json(output_dir / "recipe.json", search_record)
    return winner, record


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Fit, select on validation, refit, export, evaluate on test, write the report
    (serve.report). Returns the metrics it writes.

    With `recipe` (recipe=auto), the recipe itself is chosen on validation first: each candidate
    composed from the run's `overrides` (default: the command line's) and its own."""
    output_dir = _start_run(cfg)
    datamodule = prepare_data(cfg)
    data = datamodule.data
    search: dict[str, object] = {}
    run_dir = output_dir
    if cfg.get("recipe"):
        winner, search = _choose_recipe(cfg, run_overrides(overrides), data, output_dir)
        cfg, datamodule, run_dir = winner.cfg, winner.datamodule(), winner.output_dir
    selected, metrics = _select(cfg, datamodule, run_dir)
    metrics |= search
    scorer = _served_scorer(cfg, selected, data, metrics, run_dir)
    if not _rank_zero():  # DDP: every rank trains; rank 0 exports, evaluates and reports
        log.info("rank %d: training done; rank 0 exports and evaluates", rank_zero_only.rank)
        return metrics
    bundle_dir = _export(cfg, scorer, data, output_dir / BUNDLE)
    write_held_out(output_dir / TEST_PAIRS, data.test, data.user_vocab, data.item_vocab)
    ks = selected.ks
    metrics.update(_evaluate(cfg, bundle_dir, data, ks))
    metrics.update(_evaluate_prefixes(cfg, selected, scorer, data, ks, output_dir))
    _write_json(output_dir / "metrics.json", metrics)
    print(metrics_table(metrics, ks))
    if search:
        print(recipe_table(metrics, cfg.monitor))
    print(f"report: {write_report(output_dir)}")  # report.html: the run's plots, from its files
    print(f"metrics: {output_dir / 'metrics.json'}")
    print(f"bundle: {bundle_dir}")
    return metrics


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python train.py OVERRIDES...` runs, composed from conf/ (for tests, benchmarks
    and notebooks)."""
    if GlobalHydra.instance().is_initialized():  # inside python train.py (recipe=auto)
        return hydra_compose(config_name="train", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


class SearchNeedsMultirunError(RuntimeError):
    """`hparams_search=NAME` without `-m`: a search is a sweep of many runs, not one."""

    def __init__(self, search: str | None):
        self.search = search
        super().__init__(
            f"hparams_search={search} runs an Optuna study of many trials: "
            f"python train.py -m hparams_search={search} ..."
        )


def _search_trial_dir() -> str:
    """conf/hparams_search/base/optuna.yaml's ${search_trial_dir:}: <sweep dir>/<trial number>,
    from the Hydra config of the job being launched."""
    config = HydraConfig.get()
    if config.mode != RunMode.MULTIRUN:
        raise SearchNeedsMultirunError(config.runtime.choices.get("hparams_search"))
    return str(Path(config.sweep.dir) / str(config.sweep.subdir))


OmegaConf.register_new_resolver("search_trial_dir", _search_trial_dir, replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """`python train.py`; returns the monitored validation metric, the objective that
    `python train.py -m hparams_search=NAME` (conf/hparams_search) maximises."""
    _follow_first_process(cfg)
    return train(cfg)[cfg.monitor]


# The Hydra job name Lightning's DDP launcher gives the processes it starts (they re-run the
# command line with the first process's hydra.run.dir; lightning/fabric/strategies/launchers/
# subprocess_script.py, _hydra_subprocess_cmd).
LIGHTNING_RANK_JOB = "train_ddp_process_"


def _follow_first_process(cfg: DictConfig) -> None:
    """In a rank Lightning's launcher started: paths.output_dir is the first process's run
    directory (by default a timestamp, which this process would take anew)."""
    if HydraConfig.initialized() and HydraConfig.get().job.name.startswith(LIGHTNING_RANK_JOB):
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir


if __name__ == "__main__":
    main()
