"""Recipe search: many variants of an experiment's training recipe on one prepared split, ranked
by validation recall@20. Built to spend a borrowed GPU well; it runs on a CPU too.

    python benchmarks/recipe_search.py prepare --experiment gowalla --out .search/gowalla
    python benchmarks/recipe_search.py run --data .search/gowalla --workers 8
    python benchmarks/recipe_search.py run --data .search/gowalla --only baseline dropout-0.1

`prepare` (needs the full stack: polars, Hydra) composes `conf/` with `experiment=<name>` exactly
as `train.py` does (same seed, so the same split, validation carve and fitted features) and writes
what training and validation need to `<out>/data.safetensors` (the pairs, the histories and every
tower input) plus `<out>/meta.json` (the declared features, the towers' inputs and the
experiment's model, batch size and epoch count). A side that declares no id feature gets one
fitted beside the others, left out of the recipe, so that a variant can add it. The test split is
not written: a search can only ever look at validation.

`run` needs torch, Lightning and safetensors only (no polars, Hydra or FAISS, so it runs on a bare
GPU machine): each variant is a set of dotted overrides of that config (`towers.user_dropout`,
`loss.margin`, `batch_size`, `max_epochs`, ...); the declared features take Hydra's forms
(`~features.user.features.user_id` drops the user id, `+features.user.features.user_id` with
`{kind: id}` adds it back, `features.user.combine`), each feature one the split was prepared
with. Each trains `towers.TwoTowerModule` under
`lightning.Trainer` on the available accelerator (`--accelerator`), and the module's own
validation (full catalogue, training items masked) is recorded every `--val-every` epochs and at
the end. Variants run in `--workers` parallel processes; each result is appended to a JSON-lines
file as it finishes (`--results`), and a table sorted by the final validation recall@20 is printed.

Validation recall of a variant is one seed on one split: differences of a few thousandths are
noise (the `baseline-seed*` variants show how much). A variant worth adopting is then checked with
`python train.py experiment=<name> <overrides>`, which refits and reports the test split.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MONITOR = "val/recall@20"
CURVE = (MONITOR, "val/ndcg@20", "val/recall@50")  # recorded at every validation
SIDES = ("user", "item")
USER_ID = "+features.user.features.user_id"  # the override that adds a user-id table

# name -> dotted overrides of the experiment's recipe, written for the Gowalla recipe
# (`model=simplex`: CCL loss); first the references, then one lever at a time, then combinations.
# The order is the priority when a run is cut short. Variants that change `towers.embedding_dim`
# or add the user id were measured when the experiment had 64 dims and no user id (prepared with
# `model.towers.embedding_dim=64 ~features.user.features.user_id`).
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "baseline-seed1": {"seed": 1},
    "baseline-seed2": {"seed": 2},
    "dropout-0.1": {"towers.user_dropout": 0.1},
    "dropout-0.2": {"towers.user_dropout": 0.2},
    "dropout-0.3": {"towers.user_dropout": 0.3},
    "shared-items": {"towers.share_item_embeddings": True},
    "user-id": {USER_ID: {"kind": "id"}},
    "user-id-dropout-0.2": {USER_ID: {"kind": "id"}, "towers.user_dropout": 0.2},
    "dim-128": {"towers.embedding_dim": 128},
    "margin-0.9": {"loss.margin": 0.9},
    "margin-0.8-w50": {"loss.margin": 0.8, "loss.negative_weight": 50.0},
    "w-300": {"loss.negative_weight": 300.0},
    "w-75": {"loss.negative_weight": 75.0},
    "neg-2048": {"negatives.num_negatives": 2048},
    "neg-512": {"negatives.num_negatives": 512},
    "in-batch": {"negatives.in_batch": True},
    "lr-0.005": {"optim.lr": 0.005},
    "lr-0.02": {"optim.lr": 0.02},
    "dense-lr-0.01": {"optim.dense_lr": 0.01},
    "cosine-schedule": {"optim.schedule": "cosine"},
    "epochs-8": {"max_epochs": 8},
    "epochs-16": {"max_epochs": 16},
    "epochs-24": {"max_epochs": 24},
    "batch-256": {"batch_size": 256},
    "batch-1024": {"batch_size": 1024},
    "init-0.05": {"towers.init_std": 0.05},
    "init-0.2": {"towers.init_std": 0.2},
    "no-projection": {"towers.history_projection": False},
    "history-l2-1e-4": {"optim.embedding_l2": 1e-4},
    "weight-decay-0.01": {"optim.weight_decay": 0.01},
    "popularity-negatives": {"negatives.distribution": "popularity"},
    "softmax-t0.05": {
        "loss": {"_target_": "towers.SampledSoftmaxLoss", "temperature": 0.05},
    },
    "softmax-t0.1": {
        "loss": {"_target_": "towers.SampledSoftmaxLoss", "temperature": 0.1},
    },
    "softmax-t0.1-in-batch": {
        "loss": {"_target_": "towers.SampledSoftmaxLoss", "temperature": 0.1},
        "negatives.in_batch": True,
    },
    "dropout-0.2-dim-128": {"towers.user_dropout": 0.2, "towers.embedding_dim": 128},
    "dropout-0.2-epochs-16": {"towers.user_dropout": 0.2, "max_epochs": 16},
    "dropout-0.2-shared": {"towers.user_dropout": 0.2, "towers.share_item_embeddings": True},
    "dropout-0.2-margin-0.9": {"towers.user_dropout": 0.2, "loss.margin": 0.9},
    "dropout-0.2-neg-2048": {"towers.user_dropout": 0.2, "negatives.num_negatives": 2048},
    "dim-128-epochs-16": {"towers.embedding_dim": 128, "max_epochs": 16},
    "dim-128-seed1": {"towers.embedding_dim": 128, "seed": 1},
    "dim-256": {"towers.embedding_dim": 256},
    "dim-192": {"towers.embedding_dim": 192},
    "dim-128-user-id": {"towers.embedding_dim": 128, USER_ID: {"kind": "id"}},
    "dim-128-lr-0.02": {"towers.embedding_dim": 128, "optim.lr": 0.02},
    "dim-128-epochs-8": {"towers.embedding_dim": 128, "max_epochs": 8},
    "dim-128-neg-2048": {"towers.embedding_dim": 128, "negatives.num_negatives": 2048},
    "dim-128-margin-0.9": {"towers.embedding_dim": 128, "loss.margin": 0.9},
}


# -- prepare (full stack) ---------------------------------------------------------------------------
def prepare(experiment: str | None, out: Path, overrides: list[str]) -> None:
    import numpy as np
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from safetensors.numpy import save_file

    import train
    from features.arrays import csr_by_user, padded_rows
    from features.fitted import item_codes_of

    chosen = [f"experiment={experiment}"] if experiment else []
    cfg = train.compose([*chosen, *overrides])
    source = instantiate(cfg.data.source)
    declared = train.features_config(cfg, source)  # what train.py declares (conf/features, or auto)
    datamodule = instantiate(cfg.data, source=source)
    datamodule.features = with_ids(declared)
    datamodule.setup()
    data = datamodule.data
    # Validation users sorted by how many items they have seen, so each chunk's padding is tight.
    seen_indptr, seen_items = csr_by_user(data.train, data.num_users)
    order = np.argsort(np.diff(seen_indptr)[data.val.users], kind="stable")
    arrays = {
        "train": data.train.astype(np.int32),
        "histories": data.train_histories.astype(np.int32),  # (U, N) item rows, pad num_items
        "item_codes": item_codes_of(data.item_inputs, data.features.item),  # (I + 1,)
        "item_counts": data.item_counts.astype(np.int64),
        **{f"user.{name}": values for name, values in data.user_inputs.items()},
        **{f"item.{name}": values for name, values in data.item_inputs.items()},
    }
    chunk = int(cfg.data.eval_batch_size)
    starts = range(0, len(order), chunk)
    for number, start in enumerate(starts):
        rows = order[start : start + chunk]
        users = data.val.users[rows]
        arrays[f"val.{number}.user"] = users.astype(np.int64)
        arrays[f"val.{number}.seen"] = padded_rows(seen_indptr, seen_items, users, pad=-1)
        arrays[f"val.{number}.relevant"] = padded_rows(
            data.val.indptr, data.val.items, rows, pad=-1
        )
        arrays[f"val.{number}.num_relevant"] = data.val.indptr[rows + 1] - data.val.indptr[rows]
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, out / "data.safetensors")
    spec = data.tower_spec()
    meta = {
        "experiment": experiment,
        "overrides": overrides,
        "seed": int(cfg.seed),
        "features": declared.to_config(),  # the recipe's features
        "prepared": data.features.config.to_config(),  # those fitted: the recipe's and the ids
        "inputs": {side: list(spec[f"{side}_inputs"]) for side in SIDES},
        "num_users": data.num_users,
        "num_items": data.num_items,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "batch_size": int(cfg.data.batch_size),
        "max_epochs": int(cfg.trainer.max_epochs),
        "mask_target_in_history": bool(cfg.data.mask_target_in_history),
        "val_chunks": len(starts),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = (out / "data.safetensors").stat().st_size / 2**20
    print(f"{data.name}: {len(data.train)} training pairs, {len(data.val)} validation users")
    print(f"wrote {out / 'data.safetensors'} ({size:.1f} MiB) and {out / 'meta.json'}")


def with_ids(features):
    """`features` (a features.spec.FeaturesConfig) with an id feature (`{kind: id}`, named after
    the side's key column) on each side that declares none: fitted and written beside the
    recipe's features, so that a variant can add it."""
    from features.spec import KEY_COLUMNS, FeaturesConfig, IdFeature, SideFeatures

    sides = {}
    for side in SIDES:
        spec = features.side(side)
        if spec.of_kind("id") is None:
            extra = IdFeature(side, KEY_COLUMNS[side])
            spec = SideFeatures(side, (*spec.features, extra), spec.combine)
        sides[side] = spec
    return FeaturesConfig(**sides)


# -- run (torch + Lightning only) -------------------------------------------------------------------
def apply_overrides(meta: dict, overrides: dict) -> dict:
    """The experiment's recipe with dotted overrides applied: {model, features, batch_size,
    max_epochs, seed, mask_target_in_history}. A key under `features` may start with `~` (drop
    it) or `+` (add it), as in Hydra; any other key must name a field that exists."""
    recipe = {
        "model": _current_model(copy.deepcopy(meta["model"])),
        "features": copy.deepcopy(meta.get("features")),
        "batch_size": meta["batch_size"],
        "max_epochs": meta["max_epochs"],
        "seed": meta["seed"],
        "mask_target_in_history": meta.get("mask_target_in_history", True),
    }
    for key, value in overrides.items():
        if key not in ("model", "features") and key in recipe:  # a top-level field of the recipe
            recipe[key] = value
            continue
        action, dotted = (key[0], key[1:]) if key[:1] in "~+" else ("", key)
        *path, leaf = dotted.split(".")
        if path[:1] == ["features"]:
            node, path, where = recipe["features"], path[1:], "the declared features"
            if node is None:
                raise KeyError(f"override {key!r}: the split was prepared without features")
        elif action:
            raise KeyError(f"override {key!r}: only features are added (+) or dropped (~)")
        else:
            node, where = recipe["model"], "the model config"
        for part in path:
            if part not in node:
                raise KeyError(f"override {key!r}: no {part!r} in {where}")
            node = node[part]
        if action == "+" and leaf in node:
            raise KeyError(f"override {key!r}: {leaf!r} is already in {where}")
        if action != "+" and leaf not in node and not (action == "" and isinstance(value, dict)):
            raise KeyError(f"override {key!r}: no {leaf!r} in {where}")
        if action == "~":
            del node[leaf]
        else:
            node[leaf] = copy.deepcopy(value)
    return recipe


def _current_model(model: dict) -> dict:
    """A model config as `towers.TwoTowerModule` takes it today. A split prepared before the
    scoring layer (towers.scoring) has the popularity prior under `towers`; it is the module's
    own argument now."""
    towers = model.get("towers", {})
    if "popularity_prior" in towers:
        model["popularity_prior"] = towers.pop("popularity_prior")
    return model


def tower_spec(meta: dict, features: dict):
    """The `towers.FeatureSpec` of a recipe's declared `features` (after its overrides): each
    feature's input as prepared. A feature the split was not prepared with, or declared with
    options other than the prepared ones, is a KeyError that names it."""
    from towers import FeatureSpec

    if "inputs" not in meta:
        raise KeyError("the split was prepared before declared features: run `prepare` again")
    inputs = {}
    for side in SIDES:
        prepared = {i["name"]: i for i in meta["inputs"][side]}
        for name, options in features[side]["features"].items():
            fitted = meta["prepared"][side]["features"].get(name)
            if fitted is None or any(fitted.get(k) != v for k, v in (options or {}).items()):
                raise KeyError(
                    f"feature {side}.{name} {options}: the split was prepared with "
                    f"{fitted or 'no such feature'}; prepare it with the feature declared"
                )
        inputs[side] = [prepared[name] for name in features[side]["features"]]
    return FeatureSpec(
        inputs["user"],
        inputs["item"],
        num_users=meta["num_users"],
        num_items=meta["num_items"],
        user_combine=features["user"].get("combine", "sum"),
        item_combine=features["item"].get("combine", "sum"),
    )


def build(node):
    """A config node → its object, `_target_` nodes built depth first and `_partial_` ones left
    as a partial (what hydra.utils.instantiate does with these configs; Hydra need not be
    installed where `run` runs)."""
    if not isinstance(node, dict):
        return node
    kwargs = {k: build(v) for k, v in node.items() if not k.startswith("_")}
    if "_target_" not in node:
        return kwargs
    module, _, name = node["_target_"].rpartition(".")
    target = getattr(importlib.import_module(module), name)
    return functools.partial(target, **kwargs) if node.get("_partial_") else target(**kwargs)


class UserInputs:
    """The user tower's inputs for user rows, from the prepared tensors: every table input, and
    the history (item rows mapped to item id codes, -1 = padding), as
    `features.datamodule.UserInputs` gives them."""

    def __init__(self, tensors: dict, meta: dict):
        self.tables = {
            name.removeprefix("user."): values
            for name, values in tensors.items()
            if name.startswith("user.")
        }
        history = [i["name"] for i in meta["inputs"]["user"] if i["encoding"] == "history"]
        self.history_name = history[0] if history else None
        self.histories = tensors["histories"].long()  # (U, N) item rows padded with num_items
        self.item_codes = tensors["item_codes"].long()  # (I + 1,) the padding row's code: -1

    def __call__(self, users: torch.Tensor, histories: torch.Tensor | None = None) -> dict:
        """Inputs of `users` (B,); `histories` (B, N) item rows in place of the stored ones."""
        inputs = {name: values[users] for name, values in self.tables.items()}
        if self.history_name is not None:
            rows = self.histories[users] if histories is None else histories
            inputs[self.history_name] = self.item_codes[rows]  # (B, N)
        return inputs


class TrainBatches:
    """Shuffled training batches gathered on the device, the same fields as
    `features.datamodule.TrainBatches` (the target masked out of its own history unless
    `mask_target` is off)."""

    def __init__(
        self, tensors: dict, meta: dict, batch_size: int, seed: int, mask_target: bool = True
    ):
        self.mask_target = mask_target
        self.pairs = tensors["train"].long()
        self.user_inputs = UserInputs(tensors, meta)
        self.pad = len(self.user_inputs.item_codes) - 1  # num_items
        self.batch_size = batch_size
        self.generator = torch.Generator(device=self.pairs.device).manual_seed(seed)

    def __len__(self) -> int:
        return max(len(self.pairs) // self.batch_size, 1)  # drop_last, as the datamodule

    def __iter__(self):
        order = torch.randperm(len(self.pairs), generator=self.generator, device=self.pairs.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            pairs = self.pairs[order[start : start + self.batch_size]]
            user, item = pairs[:, 0], pairs[:, 1]  # (B,), (B,)
            history = self.user_inputs.histories[user]  # (B, N)
            if self.mask_target:
                history = history.masked_fill(history == item[:, None], self.pad)
            yield {"user": user, "item": item, "user_inputs": self.user_inputs(user, history)}


class ValBatches:
    """Chunks of validation users: user, user_inputs, seen, relevant, num_relevant (one iterable,
    so Lightning sees one validation loader, not one per chunk)."""

    def __init__(self, tensors: dict, meta: dict):
        user_inputs = UserInputs(tensors, meta)
        self.batches = []
        for number in range(meta["val_chunks"]):
            batch = {
                name: tensors[f"val.{number}.{name}"]
                for name in ("user", "seen", "relevant", "num_relevant")
            }
            batch["user_inputs"] = user_inputs(batch["user"])
            self.batches.append(batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


_LOADED: dict[tuple[str, str], tuple[dict, dict]] = {}  # per worker process: loaded once


def _load(data_dir: str, device: str) -> tuple[dict, dict]:
    """(tensors on `device`, meta) of a `prepare` output directory."""
    if (data_dir, device) not in _LOADED:
        from safetensors.torch import load_file

        tensors = load_file(str(Path(data_dir) / "data.safetensors"), device=device)
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
        _LOADED[data_dir, device] = tensors, meta
    return _LOADED[data_dir, device]


def train_variant(job: tuple[str, dict, dict]) -> dict:
    """One variant, start to end, in a worker process; returns its result row (with `error`
    instead of metrics when it failed, so one bad variant does not stop the others)."""
    try:
        return _train_variant(*job)
    except Exception as error:
        return {"variant": job[0], "overrides": job[1], "error": f"{type(error).__name__}: {error}"}


def _train_variant(name: str, overrides: dict, options: dict) -> dict:
    import lightning as L

    from towers import ItemCatalogue

    torch.set_num_threads(options["threads"])
    device = "cuda" if options["accelerator"] != "cpu" and torch.cuda.is_available() else "cpu"
    tensors, meta = _load(options["data"], device)
    recipe = apply_overrides(meta, overrides)
    spec = tower_spec(meta, recipe["features"])
    L.seed_everything(recipe["seed"], workers=True, verbose=False)
    model = build(recipe["model"])(  # as train.py: instantiate(cfg.model)(spec=, catalogue=)
        spec=spec,
        catalogue=ItemCatalogue(
            inputs={i.name: tensors[f"item.{i.name}"].cpu() for i in spec.item_inputs},
            counts=tensors["item_counts"].cpu(),
        ),
    )
    curve: list[dict] = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, module):
            values = {k: float(trainer.callback_metrics[k]) for k in CURVE}
            curve.append({"epoch": trainer.current_epoch + 1, **values})

    epochs = recipe["max_epochs"]
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=min(options["val_every"], epochs),
        limit_train_batches=options["limit_train_batches"],
        callbacks=[Record()],
    )
    started = time.perf_counter()
    trainer.fit(
        model,
        train_dataloaders=TrainBatches(
            tensors, meta, recipe["batch_size"], recipe["seed"], recipe["mask_target_in_history"]
        ),
        val_dataloaders=ValBatches(tensors, meta),
    )
    if not curve or curve[-1]["epoch"] != epochs:
        trainer.validate(model, dataloaders=ValBatches(tensors, meta), verbose=False)
        curve[-1]["epoch"] = epochs  # after fit, Lightning's epoch counter is one past the last
    seconds = time.perf_counter() - started
    final = curve[-1]
    return {
        "variant": name,
        "overrides": overrides,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "seconds": round(seconds, 1),
        "recall@20": final.get(MONITOR),
        "ndcg@20": final.get("val/ndcg@20"),
        "best_epoch": max(curve, key=lambda row: row.get(MONITOR, 0.0))["epoch"],
        "curve": curve,
    }


def table(rows: list[dict]) -> str:
    done = [r for r in rows if "error" not in r]
    reference = next((r["recall@20"] for r in done if r["variant"] == "baseline"), None)
    lines = [f"{'variant':<26}{'recall@20':>10}{'ndcg@20':>9}{'vs base':>9}{'best ep':>8}{'s':>7}"]
    for row in sorted(done, key=lambda r: -r["recall@20"]):
        delta = f"{row['recall@20'] / reference - 1:+.1%}" if reference else ""
        lines.append(
            f"{row['variant']:<26}{row['recall@20']:>10.4f}{row['ndcg@20']:>9.4f}{delta:>9}"
            f"{row['best_epoch']:>8}{row['seconds']:>7.0f}"
        )
    lines += [f"{r['variant']:<26}failed: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    options = {
        "data": str(args.data),
        "accelerator": args.accelerator,
        "threads": args.threads,
        "val_every": args.val_every,
        "limit_train_batches": args.limit_train_batches,
    }
    jobs = [(name, VARIANTS[name], options) for name in names]
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    context = mp.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for row in pool.imap_unordered(train_variant, jobs):
            rows.append(row)
            with results_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            outcome = (
                f"failed: {row['error']}"
                if "error" in row
                else f"recall@20 {row['recall@20']:.4f} ndcg@20 {row['ndcg@20']:.4f} "
                f"({row['seconds']:.0f} s)"
            )
            print(f"[{len(rows)}/{len(jobs)}] {row['variant']}: {outcome}", flush=True)
    print(table(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write an experiment's split for `run`")
    p.add_argument("--experiment", help="conf/experiment/<name>.yaml (default: conf/train.yaml)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.root=...")
    r = sub.add_parser("run", help="train the variants, rank them on validation")
    r.add_argument("--data", type=Path, required=True, help="a `prepare` output directory")
    r.add_argument("--only", nargs="*", help="variant names (default: all, in priority order)")
    r.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    r.add_argument("--accelerator", choices=("auto", "cpu"), default="auto")
    r.add_argument("--val-every", type=int, default=4, help="validate every N epochs")
    r.add_argument("--limit-train-batches", type=float, default=1.0, help="for smoke runs")
    r.add_argument("--results", default="benchmarks/results/recipe_search.jsonl")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.experiment, args.out, args.overrides)
    else:
        run(args)


if __name__ == "__main__":
    main()
