"""Training throughput of `towers.TwoTowerModule` under `lightning.Trainer` against a bare torch
loop over the same model and the same batches, in one run.

    python benchmarks/train_speed.py                       # Gowalla (experiment=gowalla), 2 rounds
    python benchmarks/train_speed.py --data synthetic      # Gowalla-sized synthetic data
    python benchmarks/train_speed.py --steps 200 --rounds 3

What is compared (each variant starts from the same seeded initial weights and sees the same
precomputed batches, so data loading is out of the picture for all of them):

- bare: a plain loop. The optimisers and schedulers come from the module's own
  `configure_optimizers()`; the loop does zero_grad / loss.backward() / step / scheduler.step()
  itself and calls `training_step` only for the loss (the module's Lightning hooks, which it uses
  for manual optimisation, are swapped for no-ops: `optimizers()` → [], `manual_backward` →
  nothing, `log` → nothing).
- lightning (lean): `Trainer.fit` with no progress bar, no logger, no checkpointing.
- lightning (conf/trainer): the repository's trainer config (progress bar, CSV logger,
  `log_every_n_steps`), checkpointing off, validation off (it is not training speed).
- lightning (conf/trainer, bar off): the same, progress bar off.

Two measurements, in steady state (from step `--warmup` on), in training examples per second:

- paired (the headline): each Lightning variant trains while a callback steps a bare-torch twin
  (same initial weights) on the same batch right before each Lightning step. A Lightning step
  is timed from the end of the twin's step to the start of the next one, so it holds everything
  Lightning does between steps; the overhead is the median over steps of (Lightning step / bare
  step) - 1. Adjacent steps see the same load from other processes, which is what makes the
  figure usable on a shared CPU.
- sequential (cross-check): each variant alone, one after another, `--rounds` times; the
  median total time. Honest on a quiet machine, noisy on a shared one. Prints a table and writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import lightning as L
import torch
from results_file import write_results
from torch.utils.data import DataLoader

import train
from features.prepare import PreparedData

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_speed.json"
OVERHEAD_TARGET = 0.10  # Lightning's overhead over the bare loop, at most


def build_model(cfg, data: PreparedData, seed: int):
    L.seed_everything(seed, verbose=False)
    return train.build_model(cfg, data)  # the catalogue's inputs and the spec, as train.py


def fixed_batches(datamodule, steps: int) -> list[dict[str, torch.Tensor]]:
    """The first `steps` training batches (cycling epochs if needed), materialised once."""
    batches = []
    while len(batches) < steps:
        for batch in datamodule.train_dataloader():
            batches.append(batch)
            if len(batches) == steps:
                break
    return batches


def _examples(batches, warmup: int) -> int:
    return sum(len(b["item"]) for b in batches[warmup:])


# -- bare torch --------------------------------------------------------------------------------
def bare_setup(model):
    """The module's own optimisers and schedulers; its Lightning hooks made no-ops.

    training_step does manual optimisation through Lightning hooks (`optimizers()`,
    `manual_backward`, `lr_schedulers()`, `log`); with them swapped for no-ops it only computes
    the loss, and `bare_step` does the optimisation itself."""
    optimizers, schedulers = model.configure_optimizers()
    model.optimizers = lambda *args, **kwargs: []
    model.lr_schedulers = lambda: []
    model.manual_backward = lambda loss, *args, **kwargs: None
    model.log = lambda *args, **kwargs: None
    model.train()
    return optimizers, schedulers


def bare_step(model, optimizers, schedulers, batch, step: int) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss = model.training_step(batch, step)
    loss.backward()
    for opt in optimizers:
        opt.step()
    for scheduler in schedulers:
        scheduler.step()


def run_bare(model, batches, warmup: int, seed: int) -> list[float]:
    """Start time of every step from `warmup` on, plus the end of the last, in a plain torch loop."""
    optimizers, schedulers = bare_setup(model)
    L.seed_everything(seed, verbose=False)
    stamps = []
    for step, batch in enumerate(batches):
        if step >= warmup:
            stamps.append(time.perf_counter())
        bare_step(model, optimizers, schedulers, batch, step)
    stamps.append(time.perf_counter())
    return stamps


# -- Lightning ---------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Start time of every step from `warmup` on, plus the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.stamps: list[float] = []
        self.ended = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # batch_idx, not global_step: under manual optimisation global_step counts every
        # optimiser's steps (two per batch here).
        if batch_idx >= self.warmup:
            self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ended = time.perf_counter()


class PairedBare(L.Callback):
    """Runs one bare-torch step of a twin model on the same batch right before each Lightning
    step, and times both: Lightning's step i is from the end of bare step i to the start of bare
    step i + 1 (so it holds everything Lightning does between steps). Adjacent in time, the two
    see the same load from other processes, which a shared CPU makes essential."""

    def __init__(self, twin, warmup: int):
        self.twin = twin
        self.optimizers, self.schedulers = bare_setup(twin)
        self.warmup = warmup
        self.bare: list[float] = []  # seconds per bare step
        self.lightning: list[float] = []  # seconds per Lightning step
        self._bare_ended: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        started = time.perf_counter()
        if self._bare_ended is not None and batch_idx > self.warmup:
            self.lightning.append(started - self._bare_ended)
        bare_step(self.twin, self.optimizers, self.schedulers, batch, batch_idx)
        ended = time.perf_counter()
        if batch_idx >= self.warmup:
            self.bare.append(ended - started)
        self._bare_ended = ended

    def on_train_end(self, trainer, pl_module):
        # The last Lightning step: from the last bare step's end to the end of training.
        if self._bare_ended is not None and len(self.bare) > len(self.lightning):
            self.lightning.append(time.perf_counter() - self._bare_ended)


def _trainer(trainer_kwargs: dict, callback, num_batches: int) -> L.Trainer:
    return L.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_train_batches": num_batches,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            **trainer_kwargs,
            "callbacks": [callback],
        }
    )


def run_paired(model, twin, batches, warmup: int, seed: int, trainer_kwargs: dict) -> PairedBare:
    paired = PairedBare(twin, warmup)
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    L.seed_everything(seed, verbose=False)
    _trainer(trainer_kwargs, paired, len(batches)).fit(model, train_dataloaders=loader)
    return paired


def run_lightning(model, batches, warmup: int, seed: int, trainer_kwargs: dict) -> list[float]:
    timer = StepTimer(warmup)
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    L.seed_everything(seed, verbose=False)
    _trainer(trainer_kwargs, timer, len(batches)).fit(model, train_dataloaders=loader)
    return [*timer.stamps, timer.ended]


def variants(cfg, log_dir: Path) -> dict[str, dict | None]:
    """name → Trainer kwargs (None: the bare loop)."""
    repo = {
        k: cfg.trainer[k]
        for k in ("log_every_n_steps", "enable_progress_bar")
        if k in cfg.trainer and cfg.trainer[k] is not None
    }
    csv_logger = lambda: L.pytorch.loggers.CSVLogger(str(log_dir), name="", version="")  # noqa: E731
    return {
        "bare torch": None,
        "lightning (lean)": {"enable_progress_bar": False, "logger": False},
        "lightning (conf/trainer)": {**repo, "logger": csv_logger},
        "lightning (conf/trainer, bar off)": {
            **repo,
            "enable_progress_bar": False,
            "logger": csv_logger,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="gowalla", choices=["gowalla", "synthetic"])
    parser.add_argument(
        "--steps", type=int, default=120, help="training steps per variant and round"
    )
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument(
        "--rounds", type=int, default=2, help="sequential cross-check rounds (0: paired only)"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="extra Hydra override (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.data == "gowalla":
        overrides = ["experiment=gowalla"]
    else:  # Gowalla's sizes: 29,858 users, 40,981 items, ~34 training interactions per user
        overrides = [
            "data=synthetic", "data.source.num_users=29858", "data.source.num_items=40981",
            "data.source.num_clusters=200", "data.source.interactions_per_user=34",
            "data.batch_size=2048", "features.user.features.history.length=50",
        ]  # fmt: skip
    overrides = [*overrides, *args.override, "paths.output_dir=/tmp/unused"]
    cfg = train.compose(overrides)
    datamodule = train.prepare_data(cfg)  # the declared features fitted, as train.py
    data = datamodule.data
    batches = fixed_batches(datamodule, args.steps)
    examples = _examples(batches, args.warmup)
    batch_size = len(batches[0]["item"])
    print(
        f"{data.name}: {data.num_users} users, {data.num_items} items; batch {batch_size}, "
        f"{args.steps} steps ({args.warmup} warm-up) x {args.rounds} rounds, {torch.get_num_threads()} threads",
        flush=True,
    )

    # 1. Paired (the headline): each Lightning variant trains with a bare-torch twin stepped on
    #    the same batch right before each of its steps, so both see the same machine load.
    # 2. Sequential (cross-check): each variant alone, one after another, over `rounds`.
    paired: dict[str, dict] = {}
    sequential: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        plan = variants(cfg, Path(log_dir))
        for name, kwargs in plan.items():
            if kwargs is None:
                continue
            kwargs = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
            model, twin = build_model(cfg, data, cfg.seed), build_model(cfg, data, cfg.seed)
            run = run_paired(model, twin, batches, args.warmup, cfg.seed, kwargs)
            ratios = [a / b for a, b in zip(run.lightning, run.bare, strict=False)]
            paired[name] = {
                "bare_examples_per_second": batch_size / statistics.median(run.bare),
                "lightning_examples_per_second": batch_size / statistics.median(run.lightning),
                "overhead_median_step": statistics.median(ratios) - 1.0,
                "overhead_total": sum(run.lightning) / sum(run.bare) - 1.0,
            }
            print(
                f"  paired {name:<36} bare {paired[name]['bare_examples_per_second']:>8,.0f} ex/s, "
                f"lightning {paired[name]['lightning_examples_per_second']:>8,.0f} ex/s, "
                f"overhead {100 * paired[name]['overhead_median_step']:.1f}% (median step) "
                f"{100 * paired[name]['overhead_total']:.1f}% (total)",
                flush=True,
            )
        for round_ in range(args.rounds):
            for name, kwargs in plan.items():
                model = build_model(cfg, data, cfg.seed)
                if kwargs is None:
                    stamps = run_bare(model, batches, args.warmup, cfg.seed)
                else:
                    kwargs = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
                    stamps = run_lightning(model, batches, args.warmup, cfg.seed, kwargs)
                sequential.setdefault(name, []).append(stamps[-1] - stamps[0])
                print(
                    f"  sequential round {round_ + 1} {name:<36} "
                    f"{examples / (stamps[-1] - stamps[0]):>8,.0f} examples/s",
                    flush=True,
                )

    rows = {name: dict(paired.get(name, {})) for name in plan}
    if sequential:
        bare_seconds = statistics.median(sequential["bare torch"])
        for name, runs in sequential.items():
            seconds = statistics.median(runs)
            rows[name].update(
                {
                    "sequential_examples_per_second": examples / seconds,
                    "sequential_overhead": seconds / bare_seconds - 1.0,
                    "sequential_seconds_per_round": runs,
                }
            )
    percent = lambda row, key: f"{100 * row[key]:.1f}%" if key in row else "-"  # noqa: E731
    lines = [
        f"{'variant':<36}{'paired: bare ex/s':>18}{'lightning ex/s':>16}{'overhead':>10}"
        f"{'(total)':>9}{'sequential ex/s':>17}{'overhead':>10}"
    ]
    for name, row in rows.items():
        bare_eps = f"{row['bare_examples_per_second']:,.0f}" if name in paired else "-"
        light_eps = f"{row['lightning_examples_per_second']:,.0f}" if name in paired else "-"
        lines.append(
            f"{name:<36}{bare_eps:>18}{light_eps:>16}{percent(row, 'overhead_median_step'):>10}"
            f"{percent(row, 'overhead_total'):>9}"
            f"{row.get('sequential_examples_per_second', float('nan')):>17,.0f}"
            f"{percent(row, 'sequential_overhead'):>10}"
        )
    print()
    print("\n".join(lines))
    lean = rows["lightning (lean)"]["overhead_median_step"]
    print(
        f"Lightning (lean) overhead, paired median step: {100 * lean:.1f}% "
        f"(target <= {100 * OVERHEAD_TARGET:.0f}%)"
    )

    result = {
        "data": data.name,
        "overrides": overrides,
        "batch_size": batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "variants": rows,
        "overhead_target": OVERHEAD_TARGET,
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S"),
            "command": " ".join(
                [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
            ),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
    }
    write_results(args.out, result)
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
