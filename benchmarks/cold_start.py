"""Cold start, measured on its own slices: items and users held out entirely, each slice beside
popularity on the same slice and, for cold items, the content-only baseline (the mean text
vector of the user's history against the cold items' text vectors, the same text model).

    python benchmarks/cold_start.py                      # every variant below
    python benchmarks/cold_start.py --variants items items-no-text

Variants (each one `train.train` run, the experiment's recipe chosen on validation):
- items: `experiment=movielens_cold` (ml-latest-small, 10% of the movies cold; text + genres +
  year; DropoutNet on the item id);
- items-no-text: the same without the text feature;
- items-no-dropout: the same with text but `item_id_dropout=0` (the content path untrained alone);
- users: `experiment=movielens_100k_cold` (ML-100K, 10% of the users cold, served from their
  demographics and first n = 0, 1, 5 interactions; needs ../shared/datasets/ml-100k).

Prints one table (the bundle, popularity and content per slice, and the warm test beside them)
and writes benchmarks/results/cold_start.json. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import train as train_module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cold_start.json"
VARIANTS = {
    "items": ["experiment=movielens_cold"],
    "items-no-text": ["experiment=movielens_cold", "~features.item.features.text"],
    "items-no-dropout": ["experiment=movielens_cold", "model.towers.item_id_dropout=0.0"],
    "users": ["experiment=movielens_100k_cold"],
}
SLICES = {
    "items": ("test", "test_cold_items", "test_cold_items_all"),
    "users": ("test", "test_cold_users_n0", "test_cold_users_n1", "test_cold_users_n5"),
}
METRICS = ("recall@20", "ndcg@20")


def run_variant(name: str, overrides: list[str], output_root: Path) -> dict:
    """One training run's slice metrics, with its wall time."""
    cfg = train_module.compose([*overrides, f"paths.output_dir={output_root / name}"])
    started = time.perf_counter()
    metrics = train_module.train(cfg)
    return {"overrides": overrides, "seconds": time.perf_counter() - started, "metrics": metrics}


def table(results: dict[str, dict]) -> str:
    """Rows variant / slice / metric; columns twotower, popularity, content."""
    lines = [
        f"{'variant':<18}{'slice':<22}{'metric':<11}{'twotower':>9}{'popular':>9}{'content':>9}"
    ]
    for name, result in results.items():
        metrics = result["metrics"]
        for stage in SLICES["users" if name == "users" else "items"]:
            for metric in METRICS:
                key = f"{stage}/{metric}"
                if key not in metrics:
                    continue
                cells = [metrics.get(p + key) for p in ("", "popularity/", "content/")]
                shown = "".join(f"{c:>9.4f}" if c is not None else f"{'':>9}" for c in cells)
                lines.append(f"{name:<18}{stage:<22}{metric:<11}{shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=None, help="run directories (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.output or Path(scratch)
        results = {name: run_variant(name, VARIANTS[name], root) for name in args.variants}
    print(table(results))
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stamp = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node()}
    previous.update({name: {**stamp, **result} for name, result in results.items()})
    RESULTS.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
