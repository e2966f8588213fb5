"""Data at scale: how long `prepare` takes and how much memory it peaks at, what the prepared
data keeps resident, what the real train loader costs against batches already in memory, and
how long the export takes, on synthetic logs of 1M, 5M and 25M interactions.

    python benchmarks/data_scale.py                                  # 1M, 5M, 25M
    python benchmarks/data_scale.py --sizes 1000000 5000000 --steps 100

Each size n: `features.sources.synthetic_log` writes a log of n unique interactions with n / 25
users and n / 125 items (1M users and 200k items at 25M: the same mean activity and sparsity
at every size; Zipf popularity and activity, timestamps, an items table with category and
price, a users table with region) to Parquet, once (cached in --data-dir). A fresh subprocess
then reads it as a user's file is read (`data=interactions`, conf/features/synthetic_log.yaml:
ids, a 50-item history, region, category, price; temporal split 8:1:1) and measures:

- prepare: seconds of `train.prepare_data` (scan, split, vocabularies, fit, arrays) and the
  process's peak RSS when it returns (ru_maxrss; `baseline` is the RSS after the imports).
  Growth: (peak - baseline) / n bytes per interaction.
- resident: bytes of every array the prepared data holds (numpy arrays; polars frames: the
  vocabularies and side tables), per interaction.
- loader (torch on --threads threads): --steps training steps of the default model (conf/model/two_tower.yaml, its id tables
  sparse: RowAdam, as its comment advises for large tables) in a bare torch loop
  (benchmarks/train_speed.py's), each batch taken from the real train loader, each step paired
  with a twin model's step on the same batch built beforehand as tensors (the twin first every
  other step). Overhead: the median over steps of (fetch + step) / twin's step - 1 (a pair sees
  the same machine load); the first fetch (the epoch's permutation) is reported apart, and the
  epoch's minutes are its steps over the loader's rate.
- export: `serve.export.export_bundle` as train.py calls it (encode every item, build the flat
  index, write the bundle with its tables); encode and index also timed alone.

--csv-sizes (default: 25M): the same log in the MovieLens CSV layout (ratings.csv, movies.csv,
as ml-25m ships them), read by `data=movielens data.source.root=...`: prepare seconds and peak.

Prints a table and writes benchmarks/results/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_scale.json"
DATA_DIR = Path("~/.cache/twotower/data_scale").expanduser()
SIZES = (1_000_000, 5_000_000, 25_000_000)
USERS_PER, ITEMS_PER = 25, 125  # interactions per user and per item at every size
TARGETS = {"prepare_seconds": 180, "peak_gib": 6.0, "loader_overhead": 0.10}  # at 25M
GIB = 2**30


def log_folder(data_dir: Path, n: int, seed: int, layout: str) -> Path:
    """The files of the log of `n` interactions in `layout` ("parquet": interactions, items and
    users .parquet; "movielens": ratings.csv and movies.csv), written once."""
    from features.sources.synthetic_log import SyntheticLog

    folder = data_dir / f"{layout}_{n}_seed{seed}"
    made = folder / "made.json"
    if made.is_file():
        return folder
    started = time.perf_counter()
    log = SyntheticLog(n, max(n // USERS_PER, 1), max(n // ITEMS_PER, 1), seed=seed)
    if layout == "movielens":
        log.write_movielens(folder)
    else:
        log.write_parquet(folder)
    seconds = time.perf_counter() - started
    made.write_text(json.dumps({"seconds": seconds}))
    return folder


def overrides_for(folder: Path, layout: str) -> list[str]:
    """How a user's files of that layout are read: data=interactions, or data=movielens."""
    if layout == "movielens":  # conf/features/movielens.yaml: ids, history, genres, year
        data = ["data=movielens", f"data.source.root={folder}"]
    else:
        data = [
            "data=interactions",
            f"data.source.path={folder / 'interactions.parquet'}",
            f"data.source.users={folder / 'users.parquet'}",
            f"data.source.items={folder / 'items.parquet'}",
            "features=synthetic_log",
        ]
    unused = f"paths.output_dir={tempfile.gettempdir()}/data_scale_unused"
    return [*data, "model.towers.sparse=true", unused]


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


def resident_bytes(data) -> dict[str, int]:
    """Bytes of the arrays (numpy) and frames (polars) the prepared data holds."""
    rows = [data.train, data.before_test, data.train_histories, data.before_test_histories]
    arrays = [*rows, data.item_counts]
    for held in (data.val, data.test, *data.cold.values()):
        arrays += [held.users, held.indptr, held.items]
    arrays += [*data.user_inputs.values(), *data.item_inputs.values()]
    frames = [data.user_vocab.frame, data.item_vocab.frame, data.items_df, data.users_df]
    return {
        "arrays": sum(a.nbytes for a in arrays),
        "frames": sum(int(f.estimated_size()) for f in frames),
        "pairs_and_histories": sum(a.nbytes for a in rows),
    }


def time_loader(cfg, datamodule, steps: int, warmup: int) -> dict:
    """Steps fed by the real loader, each paired with a twin's step on the same batch built
    beforehand (see the module docstring)."""
    from train_speed import bare_setup, bare_step, build_model

    data = datamodule.data
    built = list(islice(datamodule.train_dataloader(), steps))  # the same order: epoch 0
    model, twin = build_model(cfg, data, cfg.seed), build_model(cfg, data, cfg.seed)
    optim, twin_optim = bare_setup(model), bare_setup(twin)
    batches = iter(datamodule.train_dataloader())
    fetch, step, twin_step = [], [], []
    for i in range(steps):
        if i % 2:  # every other step the twin goes first: no order effect
            started = time.perf_counter()
            bare_step(twin, *twin_optim, built[i], i)
            twin_step.append(time.perf_counter() - started)
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        bare_step(model, *optim, batch, i)
        stepped = time.perf_counter()
        fetch.append(fetched - started)
        step.append(stepped - fetched)
        if not i % 2:
            bare_step(twin, *twin_optim, built[i], i)
            twin_step.append(time.perf_counter() - stepped)
        if (i + 1) % max(steps // 5, 1) == 0:
            print(f"    step {i + 1}/{steps}", flush=True)
    ratios = [(f + s) / t for f, s, t in zip(fetch, step, twin_step, strict=True)][warmup:]
    timed = slice(warmup, None)
    loop = statistics.median(f + s for f, s in zip(fetch[timed], step[timed], strict=True))
    twin_median = statistics.median(twin_step[timed])
    return {
        "model": model,
        "batch_size": len(built[0]["item"]),
        "steps_per_epoch": len(datamodule.train_dataloader()),
        "first_fetch_seconds": fetch[0],
        "fetch_median_seconds": statistics.median(fetch[timed]),
        "loader_steps_per_second": 1 / loop,
        "built_steps_per_second": 1 / twin_median,
        "overhead_median_step": statistics.median(ratios) - 1,
        "overhead_total": sum(fetch[timed] + step[timed]) / sum(twin_step[timed]) - 1,
    }


def time_export(cfg, data, model) -> dict:
    """train.py's export of `model`, and its encode and index parts alone."""
    import numpy as np
    import torch

    from features.serving import item_table, user_table
    from serve.export import encode_items, export_bundle
    from serve.index import IndexConfig, build_index
    from towers import Scorer

    model.eval()
    counts = torch.from_numpy(data.item_counts_before_test())
    scorer = Scorer([(model.user_tower, model.item_tower)], None, model.popularity_prior, counts)
    items_df = item_table(data)
    started = time.perf_counter()
    vectors = encode_items(scorer, data.features, items_df)
    encoded = time.perf_counter()
    config = IndexConfig.parse(cfg.index)
    factory = config.factory_for(len(vectors), vectors.shape[1])
    build_index(vectors, scorer.similarity, factory, ids=np.arange(len(vectors)))
    indexed = time.perf_counter()
    with tempfile.TemporaryDirectory() as bundle:
        tables = (data.features, items_df, user_table(data))
        export_bundle(bundle, scorer, *tables, index_config=cfg.index,
                      num_train_users=data.num_train_users)  # fmt: skip
    return {
        "encode_seconds": encoded - started,
        "index_seconds": indexed - encoded,
        "index_factory": factory,
        "bundle_seconds": time.perf_counter() - indexed,
    }


def measure(folder: Path, layout: str, n: int, args) -> dict:
    """Everything for one size, in this (fresh) process; for the MovieLens layout prepare only."""
    import torch

    import train

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = _rss_gib()
    overrides = overrides_for(folder, layout)
    cfg = train.compose(overrides)
    started = time.perf_counter()
    datamodule = train.prepare_data(cfg)
    prepare_seconds = time.perf_counter() - started
    peak = _peak_gib()
    data = datamodule.data
    print(f"  prepared in {prepare_seconds:.1f} s, peak RSS {peak:.2f} GiB", flush=True)
    row = {
        "layout": layout,
        "interactions": n,
        "prepared_interactions": len(data.train) + data.val.num_interactions
        + data.test.num_interactions,
        "users": data.num_users,
        "items": data.num_items,
        "train_pairs": len(data.train),
        "prepare_seconds": prepare_seconds,
        "baseline_rss_gib": baseline,
        "peak_rss_gib": peak,
        "rss_after_prepare_gib": _rss_gib(),
        "peak_growth_bytes_per_interaction": (peak - baseline) * GIB / n,
        "overrides": overrides,
    }  # fmt: skip
    if layout == "movielens":
        return row
    resident = resident_bytes(data)
    loader = time_loader(cfg, datamodule, args.steps, args.warmup)
    print(f"  loader overhead {100 * loader['overhead_median_step']:.1f}%", flush=True)
    export = time_export(cfg, data, loader.pop("model"))
    print(f"  export {export['bundle_seconds']:.1f} s", flush=True)
    return row | {
        "resident_bytes": resident,
        "resident_bytes_per_interaction": (resident["arrays"] + resident["frames"]) / n,
        "loader": loader,
        "export": export,
        "peak_rss_gib_end": _peak_gib(),
        "torch_threads": torch.get_num_threads(),
    }


def _child(args) -> None:
    result = measure(args.folder, args.layout, args.child, args)
    args.child_out.write_text(json.dumps(result))


def run_child(args, n: int, layout: str) -> dict:
    """One size and layout measured in a fresh process (its peak RSS its own)."""
    print(f"{n:,} interactions, {layout}:", flush=True)
    folder = log_folder(args.data_dir, n, args.seed, layout)
    made = json.loads((folder / "made.json").read_text())
    print(f"  {folder} (written in {made['seconds']:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", str(n), "--layout", layout,
                   "--folder", str(folder), "--child-out", str(out), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]  # fmt: skip
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True)
        return json.loads(out.read_text()) | {"log_seconds": made["seconds"]}


def table(rows: list[dict]) -> str:
    head = (f"{'interactions':>12} {'users':>9} {'items':>7} {'prepare s':>9} {'peak GiB':>8} "
            f"{'growth B/int':>12} {'resident B/int':>14} {'loader st/s':>11} {'built st/s':>10} "
            f"{'overhead':>8} {'epoch min':>9} {'1st fetch s':>11} {'encode+index s':>14} "
            f"{'export s':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        loader, export = r["loader"], r["export"]
        epoch_minutes = loader["steps_per_epoch"] / loader["loader_steps_per_second"] / 60
        lines.append(
            f"{r['interactions']:>12,} {r['users']:>9,} {r['items']:>7,} "
            f"{r['prepare_seconds']:>9.1f} {r['peak_rss_gib']:>8.2f} "
            f"{r['peak_growth_bytes_per_interaction']:>12.0f} "
            f"{r['resident_bytes_per_interaction']:>14.1f} "
            f"{loader['loader_steps_per_second']:>11.2f} {loader['built_steps_per_second']:>10.2f} "
            f"{100 * loader['overhead_median_step']:>7.1f}% {epoch_minutes:>9.0f} "
            f"{loader['first_fetch_seconds']:>11.2f} "
            f"{export['encode_seconds'] + export['index_seconds']:>14.2f} "
            f"{export['bundle_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--csv-sizes", type=int, nargs="*", default=[SIZES[-1]],
        help="sizes also read in the MovieLens CSV layout (prepare only; none: nothing)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=200, help="loader steps timed per size")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic log's seed")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="cache of the logs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="parquet", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child(args)

    load_before = os.getloadavg()
    rows = [run_child(args, n, "parquet") for n in sorted(args.sizes)]
    csv_rows = [run_child(args, n, "movielens") for n in sorted(args.csv_sizes)]
    load_after = os.getloadavg()

    print()
    print(table(rows))
    if csv_rows:
        print("\nThe MovieLens layout (ratings.csv, movies.csv; data=movielens):")
        for r in csv_rows:
            print(f"{r['interactions']:>12,} prepare {r['prepare_seconds']:.1f} s, "
                  f"peak {r['peak_rss_gib']:.2f} GiB")  # fmt: skip
    top = rows[-1]
    print(
        f"{top['interactions']:,}: prepare {top['prepare_seconds']:.0f} s "
        f"(target <= {TARGETS['prepare_seconds']}), peak {top['peak_rss_gib']:.2f} GiB "
        f"(target <= {TARGETS['peak_gib']}), loader overhead "
        f"{100 * top['loader']['overhead_median_step']:.1f}% (target <= "
        f"{100 * TARGETS['loader_overhead']:.0f}%); load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    result = {
        "rows": rows,
        "movielens_rows": csv_rows,
        "targets": TARGETS,
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S"),
            "command": " ".join(
                [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]
            ),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    write_results(args.out, result)
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
