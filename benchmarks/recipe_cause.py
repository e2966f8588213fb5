"""Why the contrastive (SimpleX) recipe falls behind the default one on dense data: one lever
at a time, each recipe's parts switched to the other's.

    python benchmarks/recipe_cause.py --datasets ml100k movielens  # 52 runs, ~25 min, 2-core CPU
    python benchmarks/recipe_cause.py --datasets ml100k --only contrastive c:margin-0.5

Per dataset (ml-100k, the bundled ml-latest-small), each with a random 8:1:1 split per user
(`features.split.RandomSplit`, seed 42, the same split for every run), `train.train` runs with
`refit=false`:
- `contrastive`: SimpleX's recipe as experiment=gowalla runs it (conf/recipe/auto.yaml's
  `contrastive_192`: CCL margin 0.95 / weight 150 over 1,024 shared uniform negatives, no
  in-batch ones, 192 dims, shared sparse item table, lr 0.02, prior 0.0005, batch 512, the
  target kept in the history), and `c:<lever>` runs that switch ONE part of it to the default
  recipe's value (or a step towards it: a lower margin or weight, a shorter history), plus three
  probes of the CCL itself: weight 15, popularity-sampled negatives, a stronger prior (0.002);
  `c:ids-only` / `d:ids-only` drop the side features (`features=lightgcn`: ids and history only,
  as on the interaction logs where the collapse was seen);
- `default`: the default recipe (conf/model/two_tower.yaml: sampled softmax, temperature 0.15,
  logQ, in-batch + 1,024 uniform negatives, 64 dims), and `d:<lever>` runs that switch ONE part
  of it to the contrastive recipe's value (`d:simplex-loss`: the CCL with the in-batch negatives
  off, the pair `model=simplex` sets).
The ensemble is not a lever here: without a refit model it serves the selection model alone.

Each run reports validation recall@20 (the selected epoch's; the figure that decides) and test
recall@20 (the exported bundle, through `serve.Recommender`), popularity's on the same users
(training counts for validation, train + validation counts for test, the user's known items
excluded as for the model), and how close the model's top-20 lists are to popularity's: `pop
overlap`, the mean share of a user's 20 recommended slots that are also in popularity's 20 for
that user, and `top-20 share`, the share of slots taken by the catalogue's 20 most popular items
(training counts). Validation lists come from the selected checkpoint ranked as training
validates (training items excluded; `val/recall@20_of_lists` recomputes the metric from them as
a check); test lists from the bundle. The table is printed and the
results merge into benchmarks/results/recipe_cause.json. A benchmark, not a test: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_module  # noqa: E402
from features.arrays import csr_by_user, padded_rows  # noqa: E402
from serve.evaluate import evaluate_popularity  # noqa: E402
from serve.recommender import Recommender  # noqa: E402
from towers.metrics import RankingMetrics  # noqa: E402
from towers.ranking import exact_top_k  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recipe_cause.json"
RUNS = ROOT / "runs" / "recipe_cause"  # ignored by git
DATASETS = {"ml100k": "movielens_100k", "movielens": "movielens"}  # name -> conf/data/<config>
RANDOM_SPLIT = [
    "data.split._target_=features.split.RandomSplit",
    "+data.split.by_user=true",
    "+data.split.seed=42",
    "data.split.val_ratio=0.1",
    "data.split.test_ratio=0.1",
]
COMMON = ["refit=false", "resume=false", "threads=1", "trainer.enable_progress_bar=false"]
K = 20
HISTORY = "features.user.features.history.length"

# name -> the overrides on top of its base recipe (`c:` the contrastive one, `d:` the default).
# In run order: the two references first, then the levers most suspected.
LEVERS: dict[str, list[str]] = {
    "contrastive": [],
    "default": [],
    "c:softmax-loss": ["model/loss=sampled_softmax"],
    "c:margin-0.8": ["model.loss.margin=0.8"],
    "c:margin-0.5": ["model.loss.margin=0.5"],
    "c:in-batch": ["model.negatives.in_batch=true"],
    "c:weight-50": ["model.loss.negative_weight=50"],
    "c:weight-15": ["model.loss.negative_weight=15"],
    "c:popularity-negatives": ["model.negatives.distribution=popularity"],
    "c:prior-0": ["model.popularity_prior=0.0"],
    "c:prior-0.002": ["model.popularity_prior=0.002"],
    "c:lr-0.01": ["model.optim.lr=0.01"],
    "c:mask-target": ["data.mask_target_in_history=true"],
    "c:history-20": [f"{HISTORY}=20"],
    "c:dim-64": ["model.towers.embedding_dim=64"],
    "c:separate-items": ["model.towers.share_item_embeddings=false"],
    "c:ids-only": ["features=lightgcn"],  # ids + history, as on the logs (no side tables)
    "d:ccl-loss": ["model/loss=cosine_contrastive"],
    "d:simplex-loss": ["model=simplex"],  # CCL over the shared uniform negatives only
    "d:no-in-batch": ["model.negatives.in_batch=false"],
    "d:prior-0.0005": ["model.popularity_prior=0.0005"],
    "d:lr-0.02": ["model.optim.lr=0.02"],
    "d:keep-target": ["data.mask_target_in_history=false"],
    "d:dim-192": ["model.towers.embedding_dim=192"],
    "d:shared-items": ["model.towers.share_item_embeddings=true", "model.towers.sparse=true"],
    "d:ids-only": ["features=lightgcn"],
}


def contrastive_overrides() -> list[str]:
    """The SimpleX recipe's overrides, as conf/recipe/auto.yaml declares its 192-d candidate."""
    recipe = OmegaConf.load(ROOT / "conf" / "recipe" / "auto.yaml")
    return list(recipe.candidates.contrastive_192)


def overrides_of(name: str, data: str) -> list[str]:
    base = contrastive_overrides() if name == "contrastive" or name.startswith("c:") else []
    return [f"data={data}", *RANDOM_SPLIT, *COMMON, *base, *LEVERS[name]]


# -- closeness to popularity -------------------------------------------------------------------
def popularity_lists(counts: np.ndarray, seen: tuple, users: np.ndarray) -> np.ndarray:
    """Popularity's top-K item rows for `users`, their `seen` excluded, ties broken by row as
    serve.evaluate.evaluate_popularity breaks them."""
    scores = torch.from_numpy(counts.astype(np.float64) - np.arange(len(counts)) * 1e-9)
    ones = torch.ones((len(users), 1), dtype=torch.float64)
    excluded = torch.from_numpy(padded_rows(*seen, users, pad=-1))
    return exact_top_k(ones, scores[:, None], K, excluded)[1].numpy()


def closeness(lists: np.ndarray, popular: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """`pop_overlap`: the mean share of a user's K slots also in popularity's K for that user;
    `top_share`: the share of slots holding one of the K most popular items (by `counts`);
    `distinct`: distinct items recommended over all users."""
    top_items = np.argsort(-counts, kind="stable")[:K]
    overlap = [len(np.intersect1d(a, b)) / K for a, b in zip(lists, popular, strict=True)]
    return {
        "pop_overlap": float(np.mean(overlap)),
        "top_share": float(np.isin(lists, top_items).mean()),
        "distinct": len(np.unique(lists)),
    }


def recall(lists: np.ndarray, held_out) -> float:
    """recall@K of `lists` (rows in held_out.users order) by towers.metrics.RankingMetrics."""
    metrics = RankingMetrics([K])
    rows = np.arange(len(held_out))
    relevant = padded_rows(held_out.indptr, held_out.items, rows, pad=-1)
    counts = held_out.indptr[rows + 1] - held_out.indptr[rows]
    metrics.update(torch.from_numpy(lists), torch.from_numpy(relevant), torch.from_numpy(counts))
    return metrics.compute("val")[f"val/recall@{K}"]


def validation_lists(cfg, output_dir: Path):
    """The selected checkpoint's top-K for every validation user, ranked as training validates
    (training histories, training items excluded); with the prepared data."""
    datamodule = train_module.prepare_data(cfg)
    data = datamodule.data
    model = train_module.build_model(cfg, data)
    best = torch.load(
        output_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    model.load_state_dict(best["state_dict"])
    model.eval()
    lists = []
    with torch.no_grad():
        items = model.encode_catalogue()
        for batch in datamodule.val_dataloader():
            users = model.scorer.encode_users(batch["user_inputs"])
            lists.append(exact_top_k(users, items, K, batch["seen"])[1].numpy())
    return np.concatenate(lists), data  # rows in data.val.users order (the loader is unshuffled)


def closeness_figures(cfg, output_dir: Path) -> dict[str, float]:
    val_lists, data = validation_lists(cfg, output_dir)
    train_seen = csr_by_user(data.train, data.num_users)
    val_popular = popularity_lists(data.item_counts, train_seen, data.val.users)
    recommender = Recommender.load(output_dir / "bundle")
    _, test_lists = recommender.top_k(data.test.users, K, exclude_seen=True)
    known_seen = csr_by_user(data.before_test, data.num_users)
    known_counts = data.item_counts_before_test()
    test_popular = popularity_lists(known_counts, known_seen, data.test.users)
    popularity_val = evaluate_popularity(data.item_counts, train_seen, data.val, [K], "val")
    figures = {
        f"val/{k}": v for k, v in closeness(val_lists, val_popular, data.item_counts).items()
    }
    test = closeness(test_lists, test_popular, known_counts)
    figures |= {f"test/{k}": v for k, v in test.items()}
    figures["popularity/val/recall@20"] = popularity_val["val/recall@20"]
    # The lists above must be the ones the validation metric scored: recall@20 recomputed.
    figures["val/recall@20_of_lists"] = recall(val_lists, data.val)
    figures["num_items"] = data.num_items
    return figures


# -- runs --------------------------------------------------------------------------------------
def run(dataset: str, name: str, extra: list[str]) -> dict:
    overrides = [*overrides_of(name, DATASETS[dataset]), *extra]
    output_dir = RUNS / dataset / name.replace(":", "-")
    shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run: checkpoints/best.ckpt is its own
    cfg = train_module.compose([*overrides, f"paths.output_dir={output_dir}"])
    started = time.perf_counter()
    metrics = train_module.train(cfg, overrides)
    minutes = (time.perf_counter() - started) / 60
    figures = closeness_figures(cfg, output_dir)
    keep = ("val/recall@20", "val/ndcg@20", "test/recall@20", "test/ndcg@20", "train/epochs")
    return {
        "command": "python train.py " + " ".join(overrides),
        "minutes": round(minutes, 2),
        **{key: metrics[key] for key in keep},
        "popularity/test/recall@20": metrics["popularity/test/recall@20"],
        **figures,
    }


def table(runs: dict) -> str:
    lines = [
        f"{'variant':<24}{'val R@20':>9}{'test R@20':>10}{'pop overlap':>12}{'top-20 share':>13}"
        f"{'distinct':>9}{'epochs':>7}{'min':>6}"
    ]
    any_run = next(iter(runs.values()))
    lines.append(
        f"{'popularity':<24}{any_run['popularity/val/recall@20']:>9.4f}"
        f"{any_run['popularity/test/recall@20']:>10.4f}{1.0:>12.2f}"
    )
    for name in [n for n in LEVERS if n in runs]:
        r = runs[name]
        lines.append(
            f"{name:<24}{r['val/recall@20']:>9.4f}{r['test/recall@20']:>10.4f}"
            f"{r['val/pop_overlap']:>12.2f}{r['val/top_share']:>13.2f}{r['val/distinct']:>9}"
            f"{r['train/epochs']:>7.0f}{r['minutes']:>6.1f}"
        )
    return "\n".join(lines)


def merge(dataset: str, name: str, result: dict) -> dict:
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stored.setdefault(dataset, {})[name] = result
    stored["_machine"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_name(f".{RESULTS.name}.tmp")
    temporary.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, RESULTS)
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), help="variants (default: all)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    stored: dict = {}
    for dataset in args.datasets:
        for name in args.only or list(LEVERS):
            print(f"== {dataset} {name}", flush=True)
            result = run(dataset, name, args.extra)
            stored = merge(dataset, name, result)
            print(
                f"   val recall@20 {result['val/recall@20']:.4f}, pop overlap "
                f"{result['val/pop_overlap']:.2f} ({result['minutes']:.1f} min)",
                flush=True,
            )
    for dataset in args.datasets:
        print(f"\n{dataset} (validation: recall@20 and closeness to popularity)")
        print(table(stored[dataset]))
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
