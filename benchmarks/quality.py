"""Retrieval quality side by side: popularity, tuned ALS (implicit) and twotower, on the same split
with the same metric code, next to the published numbers for that split.

    python benchmarks/quality.py --datasets movielens lastfm
    python benchmarks/quality.py --datasets gowalla --models popularity als   # skip twotower

Per dataset: the data config the experiment uses is prepared once (same seed, so the same split
`train.train` sees). Every model ranks the full catalogue for each held-out user with the user's
known items masked (`towers.ranking.exact_top_k`, or FAISS through the bundle for twotower) and is
scored by `towers.metrics.RankingMetrics` over the same `HeldOut` sets.

- popularity: training + validation counts (`serve.baselines`, as train.py reports it).
- ALS: `serve.baselines.tune_als` (implicit's `AlternatingLeastSquares`) over this file's grid,
  wider than a run's default, with at least as many factors as twotower has dimensions: fitted
  on the training pairs for each grid point; the point with the best validation recall@20 is
  refit on train + validation and evaluated on test.
- twotower: `train.train(cfg)` with the dataset's experiment config (recipe and epoch count
  chosen on validation, then refit on train + validation: `refit=true`, the default).

Prints two tables (quality; where recall comes from: recall@20 by the target item's popularity
third, coverage@20 and tail share, `serve.audit`) and merges the results into benchmarks/results/quality.json (one key per
dataset). It is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf
from results_file import write_results

import train as train_module
from features.prepare import PreparedData
from serve import baselines
from serve.audit import ACTIVITY, AUDIT_K, BUCKETS
from serve.baselines import popularity_metrics, tune_als, with_factors_at_least
from towers.metrics import KS, metric_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"


@dataclass
class Dataset:
    experiment: str | None  # conf/experiment/<name>.yaml, used when it exists
    data: str  # conf/data/<name>.yaml, the fallback when the experiment file is absent
    published: list[dict] = field(default_factory=list)  # rows from ../shared/datasets/README.md
    ks_shown: tuple[int, ...] = (20, 50)


GOWALLA_PUBLISHED = [
    {"model": "MF-BPR", "recall@20": 0.1627, "ndcg@20": 0.1378, "source": "BARS re-run"},
    {
        "model": "YoutubeDNN (two-tower)",
        "recall@20": 0.1754,
        "ndcg@20": 0.1473,
        "source": "BARS re-run",
    },
    {"model": "EASE^R", "recall@20": 0.1765, "ndcg@20": 0.1467, "source": "BARS re-run"},
    {"model": "LightGCN", "recall@20": 0.1820, "ndcg@20": 0.1547, "source": "BARS re-run"},
    {"model": "MF-CCL", "recall@20": 0.1837, "ndcg@20": 0.1493, "source": "BARS re-run"},
    {"model": "SimpleX", "recall@20": 0.1872, "ndcg@20": 0.1557, "source": "BARS re-run"},
    {"model": "UltraGCN", "recall@20": 0.1862, "ndcg@20": 0.1580, "source": "UltraGCN paper"},
]
LASTFM_PUBLISHED = [
    {
        "model": "BPR",
        "recall@10": 0.1761,
        "ndcg@10": 0.1674,
        "source": "RecBole-GNN results/social/lastfm.md",
    },
    {
        "model": "LightGCN",
        "recall@10": 0.2064,
        "ndcg@10": 0.1972,
        "source": "RecBole-GNN results/social/lastfm.md",
    },
]
DATASETS = {
    "movielens": Dataset(None, "movielens"),
    "ml100k": Dataset(None, "movielens_100k"),
    "electronics": Dataset(None, "bars_electronics"),
    "lastfm": Dataset("lastfm", "lastfm_hetrec", LASTFM_PUBLISHED, ks_shown=(10, 20, 50)),
    "gowalla": Dataset("gowalla", "lightgcn", GOWALLA_PUBLISHED),
}

# implicit ALS grid (all combinations). Rendle et al. 2021: tune regularisation and the
# unobserved weight (alpha here) honestly; a decade-wide grid, as narrower ones put the best on
# their edges. Factors: at least twotower's dimensions on each dataset (raised per dataset by
# `serve.baselines.with_factors_at_least`), so ALS is never the smaller model.
ALS_GRID = {
    "factors": (128,),
    "regularization": (0.1, 1.0, 10.0, 100.0, 1000.0),  # implicit's L2 is not scaled by counts
    "alpha": (5.0, 20.0, 50.0, 100.0),
    "iterations": (15,),
}
AUDITED_STAGES = ("test", *(f"test_{group}" for group in (*BUCKETS, *ACTIVITY)))
AUDIT_COLUMNS = (  # the retrievability table: recall by target popularity, catalogue coverage
    *(f"test_{bucket}/recall@{AUDIT_K}" for bucket in BUCKETS),
    f"test/coverage@{AUDIT_K}",
    f"test/tail_share@{AUDIT_K}",
)
ALS_GRID_TINY = {"factors": (64,), "regularization": (0.1,), "alpha": (5.0,), "iterations": (10,)}


# -- models ------------------------------------------------------------------------------------
def run_popularity(data: PreparedData) -> dict:
    started = time.perf_counter()
    metrics = popularity_metrics(data, KS)  # train + validation counts, as train.py's baseline
    return {"metrics": metrics, "train_seconds": 0.0, "eval_seconds": time.perf_counter() - started}


def run_als(data: PreparedData, grid: dict, seed: int, threads: int) -> dict:
    result = tune_als(data, KS, grid, seed, threads)  # logs each grid point
    return {
        "metrics": result.test,
        "params": result.chosen.params,
        "val": result.chosen.val,
        "train_seconds": result.chosen.fit_seconds,
        "refit_seconds": result.refit_seconds,
        "grid_seconds": result.grid_seconds,
        "eval_seconds": result.eval_seconds,
        # CPU seconds (all threads) do not grow with other processes' load the way wall time
        # does; divided by the thread count they estimate the wall time on an idle machine.
        "eval_cpu_seconds": result.eval_cpu_seconds,
        "grid": [asdict(trial) for trial in result.trials],
    }


def run_twotower(overrides: list[str], output_dir: Path) -> dict:
    """train.train on the dataset's config; its test metrics with the audit groups (test_head/,
    test_users_light/, ...)."""
    cfg = train_module.compose(
        [
            *overrides,
            f"paths.output_dir={output_dir}",
            "resume=false",
            "trainer.enable_progress_bar=false",
        ]
    )
    metrics = train_module.train(cfg)
    test = {k: v for k, v in metrics.items() if k.split("/")[0] in AUDITED_STAGES}
    recipe = {
        k: OmegaConf.to_container(cfg[k], resolve=True)
        for k in ("model", "features", "trainer")
        if k in cfg
    }
    recipe |= {k: cfg.get(k) for k in ("refit", "ensemble")}
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    return {
        "metrics": test,
        "val": val,
        # Selection fit plus the refit on train + validation: the whole training cost.
        "train_seconds": metrics.get("train/seconds", 0.0) + metrics.get("refit/seconds", 0.0),
        "refit_seconds": metrics.get("refit/seconds"),
        "epochs": metrics.get("train/epochs"),
        "output_dir": str(output_dir),
        "overrides": overrides,
        "recipe": recipe,  # the resolved model, features and trainer configs it ran with
    }


# -- plumbing ----------------------------------------------------------------------------------
def dataset_overrides(dataset: Dataset) -> list[str]:
    if (
        dataset.experiment
        and (ROOT / "conf" / "experiment" / f"{dataset.experiment}.yaml").is_file()
    ):
        return [f"experiment={dataset.experiment}"]
    return [f"data={dataset.data}"]


def git_revision() -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it (results say what they ran)."""
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, check=False)
    head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + ("+dirty" if dirty else "")


def _fmt(value) -> str:
    return (
        f"{value:.4f}" if isinstance(value, float) else (str(value) if value is not None else "-")
    )


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: dict) -> str:
    ks = sorted({k for r in results.values() for k in r["ks_shown"]})
    columns = [
        metric_name(m, k) for k in ks for m in ("recall", "ndcg") if not (k == 50 and m == "ndcg")
    ]
    header = (
        f"{'dataset':<12}{'model':<26}"
        + "".join(f"{c:>11}" for c in columns)
        + f"{'train s':>10}{'eval s':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        for model, run in result["ours"].items():
            m = run["metrics"]
            cells = "".join(f"{_fmt(m.get('test/' + c)):>11}" for c in columns)
            lines.append(
                f"{name:<12}{model:<26}{cells}{_seconds(run['train_seconds']):>10}"
                f"{_seconds(run.get('eval_seconds')):>9}"
            )
        for row in result["published"]:
            cells = "".join(f"{_fmt(row.get(c)):>11}" for c in columns)
            lines.append(f"{name:<12}{'(pub) ' + row['model']:<26}{cells}{'':>10}{'':>9}")
    return "\n".join(lines)


def audit_table(results: dict) -> str:
    """Where each model's recall comes from: recall@20 of test interactions whose item is in the
    head / mid / tail third of the training interactions, and the share of the catalogue (and
    of the recommended slots that go to tail items) in the test users' top 20."""
    header = f"{'dataset':<12}{'model':<26}" + "".join(
        f"{c.removeprefix('test_').removeprefix('test/'):>20}" for c in AUDIT_COLUMNS
    )
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        for model, run in result["ours"].items():
            cells = "".join(f"{_fmt(run['metrics'].get(c)):>20}" for c in AUDIT_COLUMNS)
            lines.append(f"{name:<12}{model:<26}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["movielens"], choices=sorted(DATASETS))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["popularity", "als", "twotower"],
        choices=["popularity", "als", "twotower"],
    )
    parser.add_argument(
        "--als-grid",
        default="small",
        choices=["small", "tiny"],
        help="small: 24 points; tiny: 1 (smoke)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override for every dataset (repeatable)",
    )
    for key, kind in (
        ("factors", int),
        ("regularization", float),
        ("alpha", float),
        ("iterations", int),
    ):
        parser.add_argument(
            f"--als-{key}", nargs="+", type=kind, help=f"replace the grid's {key} values"
        )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch / ALS threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="  %(message)s")  # the ALS grid's progress, one line a point
    logging.getLogger(baselines.__name__).setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    grid = dict(ALS_GRID if args.als_grid == "small" else ALS_GRID_TINY)
    for key in grid:
        if getattr(args, f"als_{key}"):
            grid[key] = tuple(getattr(args, f"als_{key}"))

    results = {}
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    revision = git_revision()  # at the start: the code the run imported
    for name in args.datasets:
        dataset = DATASETS[name]
        overrides = [*dataset_overrides(dataset), *args.override]
        cfg = train_module.compose([*overrides, "paths.output_dir=/tmp/unused"])
        torch.manual_seed(cfg.seed)
        started = time.perf_counter()
        datamodule = train_module.prepare_data(cfg)  # the declared features fitted, as train.py
        data: PreparedData = datamodule.data
        prepare_seconds = time.perf_counter() - started
        print(
            f"== {name} ({' '.join(overrides)}): {data.num_users} users, {data.num_items} items, "
            f"{len(data.train)} train / {data.val.num_interactions} val / {data.test.num_interactions} test "
            f"(prepared in {prepare_seconds:.1f}s)",
            flush=True,
        )
        ours = {}
        als_grid = with_factors_at_least(grid, int(cfg.model.towers.embedding_dim))
        if "popularity" in args.models:
            ours["popularity"] = run_popularity(data)
        if "als" in args.models:
            ours["als (implicit, tuned)"] = run_als(data, als_grid, cfg.seed, threads)
            als = ours["als (implicit, tuned)"]
            print(
                f"  als best {als['params']}; test full-catalogue eval of {len(data.test)} users "
                f"x {data.num_items} items: {als['eval_seconds']:.2f}s wall, "
                f"{als['eval_cpu_seconds']:.2f} CPU-s over {threads} threads "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        if "twotower" in args.models:
            ours["twotower"] = run_twotower(
                overrides, ROOT / "runs" / "quality" / f"{name}-{stamp}"
            )
        results[name] = {
            "overrides": overrides,
            "data": {
                "users": data.num_users,
                "items": data.num_items,
                "train": len(data.train),
                "val": data.val.num_interactions,
                "test": data.test.num_interactions,
                "test_users": len(data.test),
                "prepare_seconds": prepare_seconds,
            },
            "ours": ours,
            "published": dataset.published,
            "ks_shown": list(dataset.ks_shown),
            "als_grid": {k: list(v) for k, v in als_grid.items()},
        }

    print()
    print(table(results))
    print()
    print(audit_table(results))
    meta = {
        "date": stamp,
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "git": revision,
        "load_average_at_end": os.getloadavg()[0],
    }
    for result in results.values():
        result["meta"] = meta
    merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged.update(results)
    write_results(args.out, merged, sort_keys=True)
    print(f"results: {args.out}")
    return results


if __name__ == "__main__":
    main()
