"""The popularity prior each Matryoshka prefix should serve with, chosen on validation.

    python benchmarks/prefix_prior.py runs/matryoshka/gowalla_w3_wu7_e14_nw100 \
        --priors 0,0.0005,0.001,0.0015,0.002,0.0025,0.003,0.004   # ~3 min, 2-core CPU

A shorter vector ranks with less information about each item, and leans more on popularity:
on Gowalla the 32-dim prefix's validation recall@50 is best at a prior four times the full
vector's. For a finished run with `model.matryoshka`, this loads the selected checkpoint (the
model trained on the training split alone: checkpoints/best.ckpt) and validates it as training
does (training items excluded, the training counts' prior) once per prior in `--priors`, each
prefix served with that prior and the full vector with the run's own `model.popularity_prior`.
It prints recall@20 and @50 per prior and dimension, the prior with the best recall@50 for each
prefix (the value to give `model.matryoshka_prior`), and writes the table to
benchmarks/results/prefix_prior.json under the run's name. Test data is never read. A
benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train
from benchmarks.results_file import write_results
from towers import TwoTowerModule

RESULTS = Path(__file__).parent / "results" / "prefix_prior.json"
KS = (20, 50)


def selected_model(run_dir: Path) -> tuple[TwoTowerModule, train.InteractionDataModule]:
    """The run's selection model on CPU in eval mode, and its data prepared as the run did."""
    overrides = [
        o
        for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        if not o.startswith("paths.")
    ]
    cfg = train.compose(overrides)
    datamodule = train.prepare_data(cfg)
    model = train.build_model(cfg, datamodule.data)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    if model.matryoshka is None:
        raise SystemExit(f"{run_dir}: trained without model.matryoshka, no prefix to serve")
    return model.eval(), datamodule


def validate_with_prior(
    model: TwoTowerModule, datamodule: train.InteractionDataModule, prior: float
) -> dict[str, float]:
    """Validation recall@20/@50 of every dimension, each prefix served with `prior`."""
    prefixes = model.matryoshka.prefixes
    model.matryoshka = dataclasses.replace(model.matryoshka, priors=(prior,) * len(prefixes))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (logged,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    stages = ["val", *(f"val_d{d}" for d in prefixes)]
    return {f"{s}/recall@{k}": float(logged[f"{s}/recall@{k}"]) for s in stages for k in KS}


def table(rows: dict[float, dict[str, float]], prefixes: tuple[int, ...], full: float) -> str:
    dims = [f"d{d}" for d in prefixes]
    header = ["prior", *(f"{d} r@{k}" for d in dims for k in KS), *(f"full r@{k}" for k in KS)]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for prior, metrics in rows.items():
        cells = [f"{metrics[f'val_{d}/recall@{k}']:.4f}" for d in dims for k in KS]
        cells += [f"{metrics[f'val/recall@{k}']:.4f}" for k in KS]
        lines.append(" | ".join([f"{prior:g}", *cells]))
    lines.append(f"(full vector at the run's own prior {full:g} in every row)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run with model.matryoshka")
    parser.add_argument("--priors", default="0,0.0005,0.001,0.002,0.004", help="comma-separated")
    args = parser.parse_args()
    priors = [float(p) for p in args.priors.split(",")]
    model, datamodule = selected_model(args.run_dir)
    prefixes = model.matryoshka.prefixes
    rows: dict[float, dict[str, float]] = {}
    started = time.perf_counter()
    for i, prior in enumerate(priors, 1):
        rows[prior] = validate_with_prior(model, datamodule, prior)
        print(f"[{i}/{len(priors)}] prior {prior:g} validated", flush=True)
    chosen = {d: max(priors, key=lambda p, d=d: rows[p][f"val_d{d}/recall@50"]) for d in prefixes}
    print(table(rows, prefixes, model.popularity_prior))
    print("best validation recall@50: " + ", ".join(f"d{d}: {p:g}" for d, p in chosen.items()))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.run_dir.name] = {
        "run_dir": str(args.run_dir),
        "full_prior": model.popularity_prior,
        "rows": {f"{p:g}": metrics for p, metrics in rows.items()},
        "chosen_by_recall@50": {str(d): p for d, p in chosen.items()},
        "seconds": time.perf_counter() - started,
    }
    write_results(RESULTS, results, sort_keys=True)
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
