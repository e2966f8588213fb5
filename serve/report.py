"""A run directory's report: `report.html`, one self-contained file to look at (plots as base64
PNG data URIs, the CSS inline, nothing fetched), rendered from what the run wrote. train.py
writes it at the end of every run; `python -m serve report --run DIR` renders it again.

Sections, each from one source:
- key metrics: the model's, popularity's and (when the run measured it) ALS's test metrics and
  catalogue audit (metrics.json);
- training curves: the run's training.png (train.py draws it from metrics.csv; with recipe=auto
  it is the winning candidate's, recipe/<winner>/training.png; a run without a CSV log,
  logger=none, has none);
- recall@k for k = 1..100: the served bundle and popularity ranked again on the run's test pairs
  (test_pairs.parquet) through the serving path, as `python -m serve audit` ranks them
  (serve.evaluate.evaluate_bundle), so the curves at k = 20 repeat metrics.json's
  test/recall@20 and popularity/test/recall@20; ALS only at the k metrics.json holds (it is not
  in the bundle, and fitting it again would be a training run). The curves' figures are in the
  file as JSON too, in the element with id CURVE_DATA;
- recall@20 by the target item's popularity bucket and by user activity (serve.audit's keys);
- Matryoshka: each trained prefix's recall@20, recall@50 and index bytes per item (the
  `test_d<d>/` keys), beside the served vectors' (`test/`);
- ANN operating points: the served index's sweep as its manifest records it (serve.sweep), or a
  line saying that the index is exact, or that its search setting was fixed in the config;
- recipe=auto: each candidate's overrides, validation figure, epochs and seconds, and each rung
  of the search (recipe.json, metrics.json's recipe/ keys).

A section whose source the run lacks says so, and the others still render. The file is written
atomically (a temporary file, then a rename)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from dataclasses import dataclass, fields
from html import escape
from pathlib import Path

import polars as pl

from features.schema import ITEM_ID
from features.vocab import Vocabulary
from serve.audit import ACTIVITY, AUDIT_K, BUCKETS, CATALOGUE_METRICS
from serve.bundle import BYTES_PER_ITEM, read_manifest
from serve.errors import RequestError
from serve.evaluate import evaluate_bundle
from serve.held_out import TEST_PAIRS, held_out_pairs
from serve.recommender import Recommender
from serve.sweep import OperatingPoint, Sweep, plot
from serve.versions import resolve
from towers.metrics import METRICS, metric_name

REPORT = "report.html"
BUNDLE = "bundle"  # the served bundle in a run directory (train.py exports it there)


def prefix_bundle(dim: int) -> str:
    """The run directory's bundle of Matryoshka prefix `dim` (train.py exports each there)."""
    return f"{BUNDLE}_d{dim}"


METRICS_JSON = "metrics.json"
TRAINING_PNG = "training.png"
RECIPE_JSON = "recipe.json"
MAX_K = 100  # the recall@k curves run from k = 1 to this (or to the catalogue's size)
CURVE_DATA = "recall-at-k-data"  # id of the JSON element holding the curves' figures
MATRYOSHKA_KS = (20, 50)
# Each series: its name in the report, its metrics.json prefix, its colour in every plot.
SERIES = (("twotower", "", "#1f77b4"), ("popularity", "popularity/", "#ff7f0e"))
ALS = ("ALS", "als/", "#2ca02c")
DPI = 110


class RunDirectoryError(ValueError):
    """`path` is not a run directory a report can be rendered from: `missing` names what a run
    writes and it lacks."""

    def __init__(self, path: Path, missing: str) -> None:
        self.path, self.missing = path, missing
        super().__init__(
            f"{path}: not a run directory a report can be rendered from: no {missing} "
            "(train.py writes it in its run directory, paths.output_dir)"
        )


@dataclass(frozen=True)
class RecallCurves:
    """recall@k of the served bundle and of popularity at each k, on the held-out users."""

    ks: list[int]
    recall: dict[str, list[float]]  # series name ("twotower", "popularity") -> one per k
    users: int  # held-out users ranked
    unknown_users: int  # held-out users the bundle does not know (left out)

    def to_dict(self) -> dict:
        return {"k": self.ks, **self.recall, "users": self.users}


def recall_curves(bundle: Path, pairs_path: Path, max_k: int = MAX_K) -> RecallCurves:
    """recall@k for k = 1..max_k (at most the active items) of the bundle (a bundle or one of
    its version directories) and of popularity on the held-out pairs at `pairs_path` (Parquet),
    through the serving path (serve.evaluate.evaluate_bundle, as `python -m serve audit`); a
    `RequestError` names a file that cannot be read or holds no user the bundle knows."""
    recommender = Recommender.load(bundle)
    items = Vocabulary.from_ids(recommender.bundle.items[ITEM_ID])
    try:
        table = pl.read_parquet(pairs_path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise RequestError(pairs_path.name, str(pairs_path), f"cannot be read ({err})") from None
    pairs = held_out_pairs(table, recommender.user_vocab, items, field=str(pairs_path))
    ks = list(range(1, min(max_k, int(recommender.active.sum())) + 1))
    metrics = evaluate_bundle(recommender, pairs.held_out, ks)
    recall = {
        name: [metrics[prefix + metric_name("recall", k, "test")] for k in ks]
        for name, prefix, _ in SERIES
    }
    return RecallCurves(ks, recall, len(pairs.held_out), pairs.unknown_users)


def write_report(run_dir: str | Path) -> Path:
    """Render `run_dir`'s report.html from its metrics.json, served bundle and test pairs (and
    training.png, recipe.json where the run wrote them); its path."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_JSON).is_file():
        raise RunDirectoryError(run_dir, METRICS_JSON)
    if not (run_dir / BUNDLE).is_dir():
        raise RunDirectoryError(run_dir, f"{BUNDLE}/")
    metrics = json.loads((run_dir / METRICS_JSON).read_text())
    version_dir, version = resolve(run_dir / BUNDLE)
    manifest = read_manifest(version_dir)
    pairs = run_dir / TEST_PAIRS
    curves = recall_curves(version_dir, pairs) if pairs.is_file() else None  # that version
    recipe = run_dir / RECIPE_JSON
    search = json.loads(recipe.read_text()) if recipe.is_file() else None
    body = "\n".join(
        [
            _overview(run_dir, manifest, version, metrics, curves),
            _metrics_section(metrics),
            _training_section(run_dir, search, metrics),
            _recall_section(curves, metrics),
            _buckets_section(metrics),
            _matryoshka_section(metrics, manifest, _prefix_priors(run_dir, metrics)),
            _ann_section(manifest),
            _recipe_section(search, metrics),
        ]
    )
    path = run_dir / REPORT
    tmp = path.with_name(f".{REPORT}.{os.getpid()}.tmp")
    tmp.write_text(_page(f"twotower run {run_dir.name}", body), encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- sections ------------------------------------------------------------------------------------
def _overview(
    run_dir: Path,
    manifest: dict,
    version: str | None,
    metrics: dict,
    curves: RecallCurves | None,
) -> str:
    index = manifest["index"]
    rows = [
        ("run directory", str(run_dir)),
        ("bundle", f"{BUNDLE}/{version or ''}"),
        ("similarity, dimension", f"{manifest['similarity']}, {manifest['embedding_dim']}"),
        ("items (active), users", _items_users(manifest)),
        ("index", " ".join([index["factory"], *_settings(index.get("search_params"))])),
        ("epochs chosen on validation", _number(metrics.get("train/epochs"), "{:.0f}")),
        ("refit on train + validation", _refit(metrics)),
    ]
    if curves is not None:
        rows.append(("test users ranked", f"{curves.users}"))
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<h1>twotower run: {escape(run_dir.name)}</h1>\n<table class="facts">{cells}</table>'


def _refit(metrics: dict) -> str:
    epochs = metrics.get("refit/epochs")
    return "none (refit=false)" if epochs is None else f"{epochs:.0f} epochs"


def _settings(params: dict | None) -> list[str]:
    """An index's search settings as knob=value words."""
    return [f"{knob}={value}" for knob, value in (params or {}).items()]


def _items_users(manifest: dict) -> str:
    return f"{manifest['num_items']} ({manifest['num_active_items']}), {manifest['num_users']}"


def _metrics_section(metrics: dict) -> str:
    """Every test metric of the model, popularity and ALS, and the catalogue audit at 20."""
    series = _series(metrics)
    ks = _ks(metrics, "test/recall@")
    names = [metric_name(m, k) for m in METRICS for k in ks]
    names += [metric_name(m, AUDIT_K) for m in CATALOGUE_METRICS]
    head = "".join(f"<th>{escape(name)}</th>" for name, _, _ in series)
    rows = []
    for name in names:
        values = [metrics.get(f"{prefix}test/{name}") for _, prefix, _ in series]
        if all(v is None for v in values):
            continue
        cells = "".join(f"<td>{_number(v)}</td>" for v in values)
        rows.append(f"<tr><th>test/{escape(name)}</th>{cells}</tr>")
    return _section(
        "metrics",
        "Key metrics on test",
        "<p>Every test user, each user's training items excluded, the full catalogue ranked "
        "(metrics.json). coverage, gini and tail_share describe the top-20 lists over the "
        "catalogue (serve/audit.py).</p>"
        f'<table class="numbers"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>',
    )


def _training_section(run_dir: Path, search: dict | None, metrics: dict) -> str:
    candidates = [run_dir / TRAINING_PNG]
    if search is not None:
        candidates.append(run_dir / "recipe" / str(search.get("winner")) / TRAINING_PNG)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return _section(
            "training",
            "Training curves",
            "<p class='note'>No training.png: the run kept no CSV training log (logger=none).</p>",
        )
    data = base64.b64encode(found.read_bytes()).decode("ascii")
    where = escape(str(found.relative_to(run_dir)))
    epochs = metrics.get("refit/epochs")
    refit = "" if epochs is None else f"; the refit then trained {epochs:.0f} epochs, unlogged"
    return _section(
        "training",
        "Training curves",
        "<p>Training loss and the monitored validation metric per epoch of the fit that chose "
        f"the epoch count ({where}){refit}.</p>"
        f'<img alt="training curves" src="data:image/png;base64,{data}">',
    )


def _recall_section(curves: RecallCurves | None, metrics: dict) -> str:
    if curves is None:
        return _section(
            "recall-at-k",
            "recall@k",
            f"<p class='note'>No {TEST_PAIRS} in the run directory: the curves need the test "
            "split to rank.</p>",
        )
    fig, ax = _figure(7.5, 4.2)
    for name, prefix, colour in SERIES:
        ax.plot(curves.ks, curves.recall[name], color=colour, label=name)
        _metric_points(ax, metrics, prefix, colour, label=None)
    if _has_als(metrics):
        name, prefix, colour = ALS
        _metric_points(ax, metrics, prefix, colour, label=f"{name} (metrics.json)", line=True)
    ax.plot([], [], "o", mfc="none", color="black", label="metrics.json figures")
    ax.axvline(AUDIT_K, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("k (results per user)")
    ax.set_ylabel("recall@k")
    ax.set_xlim(0, curves.ks[-1] + 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"recall@k on test, {curves.users} users")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    rows = "".join(
        f"<tr><td>{k}</td>"
        + "".join(f"<td>{_number(curves.recall[n][i])}</td>" for n, _, _ in SERIES)
        + "</tr>"
        for i, k in enumerate(curves.ks)
    )
    head = "".join(f"<th>{n}</th>" for n, _, _ in SERIES)
    data = json.dumps(curves.to_dict()).replace("</", "<\\/")
    als = (
        " ALS is not in the bundle: only its metrics.json figures are drawn."
        if _has_als(metrics)
        else ""
    )
    unknown = (
        f" {curves.unknown_users} held-out users the bundle does not know are left out."
        if curves.unknown_users
        else ""
    )
    return _section(
        "recall-at-k",
        "recall@k, k = 1 to " + str(curves.ks[-1]),
        "<p>The served bundle and popularity ranked again on the run's test pairs through the "
        "serving path (as <code>python -m serve audit</code>); circles are the figures "
        f"metrics.json holds, which the curves pass through.{als}{unknown}</p>"
        + _img(fig, f"recall at k for k = 1 to {curves.ks[-1]}")
        + f'<details><summary>the curves\' figures</summary><table class="numbers">'
        f"<tr><th>k</th>{head}</tr>{rows}</table></details>"
        + f'<script type="application/json" id="{CURVE_DATA}">{data}</script>',
    )


def _metric_points(ax, metrics: dict, prefix: str, colour: str, label, line=False) -> None:
    """metrics.json's recall@k of one series, at each k it holds, as circles on the plot."""
    ks = _ks(metrics, f"{prefix}test/recall@")
    values = [metrics[f"{prefix}test/recall@{k}"] for k in ks]
    style = "o--" if line else "o"
    ax.plot(ks, values, style, mfc="none", color=colour, label=label, linewidth=1)


def _buckets_section(metrics: dict) -> str:
    groups = [
        ("by the target item's popularity", [f"test_{b}" for b in BUCKETS], BUCKETS),
        ("by the user's activity", [f"test_{a}" for a in ACTIVITY], ("light", "heavy")),
    ]
    if not any(f"{stages[0]}/recall@{AUDIT_K}" in metrics for _, stages, _ in groups):
        return _section(
            "buckets",
            f"recall@{AUDIT_K} by popularity bucket",
            "<p class='note'>No retrievability audit in metrics.json (test_head/, ...): "
            "a run from before it.</p>",
        )
    series = _series(metrics)
    fig, axes = _figure(9, 3.8, ncols=2, width_ratios=(3, 2), sharey=True)
    width = 0.8 / len(series)
    for ax, (title, stages, labels) in zip(axes, groups, strict=True):
        for s, (name, prefix, colour) in enumerate(series):
            # A group without held-out users has no figure (serve.audit): no bar, "none".
            values = [
                metrics.get(f"{prefix}{stage}/recall@{AUDIT_K}", math.nan) for stage in stages
            ]
            positions = [i + (s - (len(series) - 1) / 2) * width for i in range(len(stages))]
            bars = ax.bar(positions, values, width, color=colour, label=name)
            shown = ["none" if math.isnan(v) else f"{v:.3f}" for v in values]
            ax.bar_label(bars, labels=shown, fontsize=7, padding=1)
        ax.set_xticks(range(len(stages)), labels)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"recall@{AUDIT_K}")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=3)
    tallest = max(
        (b.get_height() for ax in axes for b in ax.patches if not math.isnan(b.get_height())),
        default=0.0,
    )
    axes[0].set_ylim(0, 1.15 * max(tallest, 1e-9))  # room for the labels; shared
    return _section(
        "buckets",
        f"recall@{AUDIT_K} by popularity bucket and user activity",
        "<p>Items sorted by training interactions and cut into thirds of the interactions "
        "(head: the few items that hold the first third; tail: the many that hold the last, "
        "and every item never seen in training); a user counts only their held-out items of "
        "that bucket. Light users have at most the median number of training interactions, "
        "heavy users more (serve/audit.py).</p>" + _img(fig, "recall by popularity bucket"),
    )


def _prefix_priors(run_dir: Path, metrics: dict) -> dict[int, float]:
    """The popularity prior each prefix bundle the run evaluated (bundle_d<d>/) serves with."""
    priors = {}
    for dim in (int(d) for d in _prefix_dims(metrics)):
        path = run_dir / prefix_bundle(dim)
        if path.is_dir():
            scoring = read_manifest(resolve(path)[0])["model"]["scoring"]
            priors[dim] = float(scoring["popularity_prior"])
    return priors


def _matryoshka_section(metrics: dict, manifest: dict, priors: dict[int, float]) -> str:
    """Recall and bytes per served dimension; `priors`: each prefix bundle's popularity prior
    (the served bundle's own from `manifest`)."""
    dims = sorted(int(d) for d in _prefix_dims(metrics))
    if not dims:
        return _section(
            "matryoshka",
            "Matryoshka dimensions",
            "<p class='note'>No Matryoshka prefixes in this run (model.matryoshka is empty): "
            "one vector size only.</p>",
        )
    scoring = manifest["model"]["scoring"]
    served = int(scoring.get("dim") or manifest["model"]["members"][0]["embedding_dim"])
    stages = {d: f"test_d{d}" for d in dims}
    stages.setdefault(served, "test")  # export.dim=d serves a prefix that test_d<d> has
    dims = sorted(stages)
    priors = {**priors, served: float(scoring["popularity_prior"])}
    fig, (ax_recall, ax_bytes) = _figure(9, 3.6, ncols=2)
    for k, style in zip(MATRYOSHKA_KS, ("o-", "s--"), strict=True):
        values = [metrics.get(f"{stages[d]}/recall@{k}") for d in dims]
        ax_recall.plot(dims, values, style, color=SERIES[0][2], label=f"recall@{k}")
        for d, v in zip(dims, values, strict=True):
            ax_recall.annotate(
                f"{v:.3f}",
                (d, v),
                fontsize=7,
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
            )
    sizes = [metrics.get(f"{stages[d]}/{BYTES_PER_ITEM}") for d in dims]
    bars = ax_bytes.bar(range(len(dims)), sizes, color="#9467bd")  # evenly spaced, labelled d
    ax_bytes.set_xticks(range(len(dims)), [str(d) for d in dims])
    ax_bytes.bar_label(bars, fmt="%.0f", fontsize=7)
    ax_recall.set_xscale("log", base=2)
    ax_recall.set_xticks(dims, [str(d) for d in dims])
    ax_recall.minorticks_off()
    ax_recall.set_xlim(min(dims) / 1.4, max(dims) * 1.4)
    ax_recall.margins(y=0.15)
    for ax, title, ylabel in (
        (ax_recall, "test recall by dimension", "recall"),
        (ax_bytes, "index bytes per item", "bytes"),
    ):
        ax.set_xlabel("dimension (prefix of each model's vector)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_recall.legend(fontsize=8)
    full = {k: metrics.get(f"{stages[max(dims)]}/recall@{k}") or 0.0 for k in MATRYOSHKA_KS}
    rows = "".join(
        f"<tr><td>{d}{' (served)' if d == served else ''}</td>"
        + "".join(
            f"<td>{_number(metrics.get(f'{stages[d]}/recall@{k}'))}</td>" for k in MATRYOSHKA_KS
        )
        + "".join(
            f"<td>{_share(metrics.get(f'{stages[d]}/recall@{k}'), full[k])}</td>"
            for k in MATRYOSHKA_KS
        )
        + f"<td>{_number(metrics.get(f'{stages[d]}/{BYTES_PER_ITEM}'), '{:.1f}')}</td>"
        + f"<td>{_number(priors.get(d), '{:g}')}</td></tr>"
        for d in dims
    )
    head = "".join(f"<th>recall@{k}</th>" for k in MATRYOSHKA_KS)
    head += "".join(f"<th>share of d={max(dims)}'s recall@{k}</th>" for k in MATRYOSHKA_KS)
    return _section(
        "matryoshka",
        "Matryoshka dimensions",
        "<p>Each trained prefix exported as its own bundle (bundle_d&lt;d&gt;/) and ranked on "
        "test through the serving path; bytes per item are the index file's; each serves with "
        "its own popularity prior where model.matryoshka_prior gives one.</p>"
        + _img(fig, "Matryoshka dimension against recall and bytes")
        + f'<table class="numbers"><tr><th>dimension</th>{head}<th>bytes per item</th>'
        f"<th>popularity prior</th></tr>{rows}</table>",
    )


def _ann_section(manifest: dict) -> str:
    index = manifest["index"]
    recorded = index.get("sweep")
    if recorded is None:
        params = index.get("search_params") or {}
        why = (
            "an approximate index whose search setting the config fixed "
            f"({escape(' '.join(_settings(params)))}): no sweep was run"
            if params and index["factory"] != "Flat"
            else "exact search (every query scores every item): no operating points to choose"
        )
        return _section(
            "ann",
            "ANN operating points",
            f"<p class='note'>Index {escape(index['factory'])}: {why}.</p>",
        )
    names = {f.name for f in fields(Sweep)}
    result = Sweep(
        **{key: value for key, value in recorded.items() if key in names and key != "points"},
        points=[OperatingPoint(**p) for p in recorded["points"]],
    )
    buffer = io.BytesIO()
    plot(result, buffer, title=f"{index['factory']}: recall@{result.k} vs exact, against latency")
    rows = "".join(
        f"<tr><td>{p.value}{' (served)' if p.value == result.chosen else ''}</td>"
        f"<td>{_number(p.recall)}</td><td>{p.latency_ms_p50:.3f}</td>"
        f"<td>{p.latency_ms_p99:.3f}</td></tr>"
        for p in result.points
    )
    reached = "reaches" if result.reached else "does not reach (the best is served)"
    return _section(
        "ann",
        "ANN operating points",
        f"<p>The export swept {escape(result.knob)} over the served index "
        f"({escape(index['factory'])}) on a sample of users: recall@{result.k} against exact "
        f"search and the latency of one query at a time. {escape(result.knob)}="
        f"{result.chosen} is the cheapest setting that {reached} the target "
        f"{result.target_recall}.</p>"
        + _png(buffer.getvalue(), "ANN operating points")
        + f'<table class="numbers"><tr><th>{escape(result.knob)}</th><th>recall@{result.k}</th>'
        f"<th>p50 ms</th><th>p99 ms</th></tr>{rows}</table>",
    )


def _recipe_section(search: dict | None, metrics: dict) -> str:
    if search is None:
        return _section(
            "recipe",
            "Recipe candidates",
            "<p class='note'>The recipe was given, not searched (no recipe=auto).</p>",
        )
    names = sorted(search["candidates"])
    monitor = _recipe_monitor(metrics, names)
    rungs = search.get("rungs") or []
    names.sort(key=lambda n: -float(metrics.get(f"recipe/{n}/{monitor}", float("-inf"))))
    rung_head = "".join(
        f"<th>{'finals' if r.get('finals') else f'rung {i + 1}'}: {r['epochs']} "
        f"epoch{'s' if r['epochs'] != 1 else ''}</th>"
        for i, r in enumerate(rungs)
    )
    rows = []
    for name in names:
        chosen = " (chosen)" if name == search["winner"] else ""
        overrides = " ".join(search["candidates"][name]) or "(the run's own settings)"
        scores = "".join(f"<td>{_number(r['scores'].get(name))}</td>" for r in rungs)
        rows.append(
            f"<tr><th>{escape(name + chosen)}</th><td class='text'>{escape(overrides)}</td>"
            f"<td>{_number(metrics.get(f'recipe/{name}/{monitor}'))}</td>"
            f"<td>{_number(metrics.get(f'recipe/{name}/epochs'), '{:.0f}')}</td>"
            f"<td>{_number(metrics.get(f'recipe/{name}/seconds'), '{:.1f}')}</td>{scores}</tr>"
        )
    budget = f"budget {search.get('budget_minutes')} minutes" + (
        ", cut short by it" if search.get("out_of_budget") else ""
    )
    return _section(
        "recipe",
        "Recipe candidates (recipe=auto)",
        f"<p>Successive halving on validation ({escape(budget)}): every candidate trains the "
        "first rung, the better half of each loss family trains on to the next; in the finals "
        "the families' finalists train side by side until the others cannot reach the leader, "
        "which trains to its own epoch count and is the run's model. "
        f"{escape(monitor)} is each candidate's best.</p>"
        f'<table class="numbers"><tr><th>candidate</th><th>overrides</th>'
        f"<th>{escape(monitor)}</th><th>epochs</th><th>seconds</th>{rung_head}</tr>"
        f"{''.join(rows)}</table>",
    )


def _recipe_monitor(metrics: dict, names: list[str]) -> str:
    """The validation metric the candidates were compared on: metrics.json's
    recipe/<name>/<monitor> key that is neither epochs nor seconds."""
    prefix = f"recipe/{names[0]}/" if names else "recipe/"
    found = [k[len(prefix) :] for k in metrics if k.startswith(prefix)]
    return next((k for k in found if k not in ("epochs", "seconds")), "val/recall@20")


# -- pieces --------------------------------------------------------------------------------------
def _series(metrics: dict) -> list[tuple[str, str, str]]:
    """The model and popularity, and ALS where metrics.json holds it."""
    return [*SERIES, ALS] if _has_als(metrics) else list(SERIES)


def _has_als(metrics: dict) -> bool:
    return f"{ALS[1]}test/recall@{AUDIT_K}" in metrics


def _ks(metrics: dict, prefix: str) -> list[int]:
    """The k of every metrics.json key `prefix`<k>, in order."""
    return sorted(
        int(k[len(prefix) :]) for k in metrics if re.fullmatch(re.escape(prefix) + r"\d+", k)
    )


def _prefix_dims(metrics: dict) -> set[str]:
    """The Matryoshka prefixes d of metrics.json's test_d<d>/ keys."""
    return {m.group(1) for k in metrics if (m := re.fullmatch(r"test_d(\d+)/.+", k))}


def _number(value: object, fmt: str = "{:.4f}") -> str:
    return "" if value is None else fmt.format(float(value))


def _share(value: float | None, full: float) -> str:
    return "" if value is None or not full else f"{100 * value / full:.1f}%"


def _figure(width: float, height: float, ncols: int = 1, **grid):
    """A matplotlib Figure (no pyplot state) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(1, ncols, **grid)


def _img(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return _png(buffer.getvalue(), alt)


def _png(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape(title)}</h2>\n{content}\n</section>'


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1040px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
section { margin-bottom: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td.text { text-align: left; font-family: monospace; font-size: 0.85em; }
img { max-width: 100%; }
.note { color: #666; font-style: italic; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )
