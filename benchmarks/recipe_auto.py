"""`recipe=auto` against the two hand recipes and tuned ALS, per dataset, on the same split.

    python benchmarks/recipe_auto.py --datasets ml100k movielens lastfm
    python benchmarks/recipe_auto.py --datasets gowalla --variants auto

Per dataset, three runs of `train.train` on `data=<config>` (same seed, so the same split):
- `auto`: `recipe=auto baselines=[popularity,als]`: the recipe chosen on validation
  (conf/recipe/auto.yaml), with popularity and ALS tuned on the same validation split;
- `default`: the default recipe (sampled softmax, 64 dimensions);
- `contrastive`: SimpleX's recipe as experiment=gowalla runs it (conf/recipe/auto.yaml's
  `contrastive_192` candidate).
Each is refit on train + validation and evaluated on test through the exported bundle. The table
gives test recall@20 / ndcg@20, the chosen candidate, auto against ALS and against the better
hand recipe, and each run's minutes; the results merge into benchmarks/results/recipe_auto.json.
It is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_module  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recipe_auto.json"
RUNS = ROOT / "runs" / "recipe_auto"  # ignored by git
DATASETS = {  # name -> conf/data/<config>.yaml
    "movielens": "movielens",
    "ml100k": "movielens_100k",
    "lastfm": "lastfm_hetrec",
    "electronics": "bars_electronics",
    "beauty": "s3rec_beauty",
    "gowalla": "lightgcn",
}
VARIANTS = ("auto", "default", "contrastive")
RECALL, NDCG = "test/recall@20", "test/ndcg@20"


def contrastive_overrides() -> list[str]:
    """The SimpleX recipe's overrides, as conf/recipe/auto.yaml declares its 192-d candidate."""
    recipe = OmegaConf.load(ROOT / "conf" / "recipe" / "auto.yaml")
    return list(recipe.candidates.contrastive_192)


def overrides_of(variant: str, data: str, output_dir: Path) -> list[str]:
    common = [f"data={data}", f"paths.output_dir={output_dir}", "trainer.enable_progress_bar=false"]
    if variant == "auto":
        return [*common, "recipe=auto", "baselines=[popularity,als]"]
    if variant == "contrastive":
        return [*common, *contrastive_overrides()]
    return common


def run(dataset: str, variant: str) -> dict:
    output_dir = RUNS / dataset / variant
    overrides = overrides_of(variant, DATASETS[dataset], output_dir)
    started = time.perf_counter()
    metrics = train_module.train(train_module.compose(overrides), overrides)
    return {
        "command": "python train.py " + " ".join(o for o in overrides if "output_dir" not in o),
        "minutes": (time.perf_counter() - started) / 60,
        "metrics": metrics,
    }


def table(results: dict) -> str:
    lines = [
        f"{'dataset':<12}{'auto':>16}{'chosen':>18}{'default':>16}{'contrastive':>16}"
        f"{'ALS':>16}{'popularity':>12}{'vs ALS':>9}{'vs best hand':>14}{'auto min':>10}"
    ]
    for dataset, runs in results.items():
        figures = {v: runs[v]["metrics"] for v in VARIANTS if v in runs}

        def pair(metrics, prefix=""):
            if metrics is None or prefix + RECALL not in metrics:
                return f"{'':>16}"
            return f"{metrics[prefix + RECALL]:>9.4f} / {metrics[prefix + NDCG]:.4f}"[-16:]

        auto = figures.get("auto")
        hands = [figures[v][RECALL] for v in ("default", "contrastive") if v in figures]
        versus_als = versus_hand = ""
        if auto is not None and "als/" + RECALL in auto:
            versus_als = f"{auto[RECALL] / auto['als/' + RECALL] - 1:+.1%}"
        if auto is not None and hands:
            versus_hand = f"{auto[RECALL] / max(hands) - 1:+.1%}"
        lines.append(
            f"{dataset:<12}{pair(auto):>16}{(auto or {}).get('recipe/winner', ''):>18}"
            f"{pair(figures.get('default')):>16}{pair(figures.get('contrastive')):>16}"
            f"{pair(auto, 'als/'):>16}"
            f"{(auto or {}).get('popularity/' + RECALL, float('nan')):>12.4f}"
            f"{versus_als:>9}{versus_hand:>14}"
            f"{runs['auto']['minutes'] if 'auto' in runs else float('nan'):>10.1f}"
        )
    return "\n".join(lines)


def merge(results: dict) -> None:
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for dataset, runs in results.items():
        stored.setdefault(dataset, {}).update(runs)
    stored["_machine"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_name(f".{RESULTS.name}.tmp")
    temporary.write_text(json.dumps(stored, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(temporary, RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=["ml100k"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    results: dict[str, dict] = {}
    for dataset in args.datasets:
        for variant in args.variants:
            print(f"== {dataset} {variant}", flush=True)
            results.setdefault(dataset, {})[variant] = run(dataset, variant)
            merge({dataset: {variant: results[dataset][variant]}})
    stored = json.loads(RESULTS.read_text())
    print(table({d: stored[d] for d in args.datasets}))
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
