"""serve/report.py on real run directories: the session's plain run (tests/conftest.py's
`trained_run`: flat index, no CSV log) and one run with every section's source (recipe=auto,
Matryoshka prefixes, an IVF index swept at export, ALS where implicit is installed, a CSV log).
The report is self-contained, has each section, and its recall@k curves, ranked again through
the serving path, repeat metrics.json's figures at every k metrics.json holds."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil

import pytest

import serve.report as serve_report
import train
from serve.__main__ import main
from serve.errors import RequestError
from serve.held_out import TEST_PAIRS
from serve.report import CURVE_DATA, REPORT, RunDirectoryError, write_report
from serve.versions import read_bundle
from tests.conftest import TINY
from towers.metrics import KS

SECTIONS = ("metrics", "training", "recall-at-k", "buckets", "matryoshka", "ann", "recipe")
PNG = b"\x89PNG\r\n\x1a\n"
HAS_ALS = importlib.util.find_spec("implicit") is not None
FULL = [
    "trainer.max_epochs=3",
    "logger=csv",
    "model.towers.embedding_dim=32",
    "model.matryoshka=[8,16]",
    "model.matryoshka_prior=[0.5, null]",  # the 8-dim prefix's own popularity prior
    "index=ivf",
    f"baselines=[popularity{',als' if HAS_ALS else ''}]",
]
CANDIDATES = {"learns": [], "frozen": ["model.optim.lr=0.0", "model.optim.dense_lr=0.0"]}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(output_dir, metrics) of a recipe=auto run with every section's source."""
    output_dir = tmp_path_factory.mktemp("report")
    overrides = [*TINY, *FULL, f"paths.output_dir={output_dir}"]
    cfg = train.compose([*overrides, "recipe=auto"])
    cfg.recipe.candidates = CANDIDATES
    cfg.recipe.first_epochs = 1
    return output_dir, train.train(cfg, overrides)


def _html(output_dir) -> str:
    return (output_dir / REPORT).read_text(encoding="utf-8")


def _section(html: str, anchor: str) -> str:
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert found, f"no section {anchor}"
    return found.group(1)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _curves(html: str) -> dict:
    found = re.search(rf'<script type="application/json" id="{CURVE_DATA}">(.*?)</script>', html)
    assert found, "no curve figures in the report"
    return json.loads(found.group(1))


def _assert_self_contained(html: str) -> None:
    """Nothing is fetched: every src is a data URI, nothing links out, no external script."""
    sources = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', html, re.I)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]
    assert not re.search(r"https?://|<link\b|@import|url\(", html, re.I)


@pytest.mark.slow
def test_a_plain_run_has_a_self_contained_report_whose_curves_repeat_metrics_json(trained_run):
    output_dir, metrics = trained_run
    html = _html(output_dir)
    _assert_self_contained(html)
    for anchor in SECTIONS:
        _section(html, anchor)
    curves = _curves(html)
    assert curves["k"] == list(range(1, 101))
    for name, prefix in (("twotower", ""), ("popularity", "popularity/")):
        for k in KS:  # k = 20 among them: the curve at k is metrics.json's recall@k
            assert curves[name][k - 1] == pytest.approx(metrics[f"{prefix}test/recall@{k}"]), k
        assert all(a <= b for a, b in zip(curves[name], curves[name][1:], strict=False)), name
    assert curves["twotower"][19] > curves["popularity"][19]
    assert all(image.startswith(PNG) for image in _images(html))
    assert len(_images(html)) == 2  # recall@k and the buckets: no log, no prefixes, no sweep
    assert "logger=none" in _section(html, "training")
    assert "exact search" in _section(html, "ann")
    assert "no recipe=auto" in _section(html, "recipe")
    assert not list(output_dir.glob(f".{REPORT}.*"))  # the temporary file was renamed


@pytest.mark.slow
def test_a_full_run_draws_every_section_from_its_own_files(full_run):
    output_dir, metrics = full_run
    html = _html(output_dir)
    _assert_self_contained(html)
    images = _images(html)
    assert len(images) == 5 and all(image.startswith(PNG) for image in images)
    assert _curves(html)["twotower"][19] == pytest.approx(metrics["test/recall@20"])
    assert "recipe/learns/training.png" in _section(html, "training")  # the winner's log
    matryoshka = _section(html, "matryoshka")
    for dim in (8, 16):
        assert f"<td>{dim}</td><td>{metrics[f'test_d{dim}/recall@20']:.4f}</td>" in matryoshka
        shares = [
            metrics[f"test_d{dim}/recall@{k}"] / metrics[f"test/recall@{k}"] for k in (20, 50)
        ]
        assert "".join(f"<td>{share:.1%}</td>" for share in shares) in matryoshka  # of the full
    for row, prior in (("8", "0.5"), ("16", "0"), ("32 (served)", "0")):  # the bundles' priors
        assert re.search(rf"<tr><td>{re.escape(row)}</td>.*?<td>{prior}</td></tr>", matryoshka)
    assert f"<td>32 (served)</td><td>{metrics['test/recall@20']:.4f}</td>" in matryoshka
    sweep = read_bundle(output_dir / "bundle").manifest["index"]["sweep"]
    ann = _section(html, "ann")
    assert f"<td>{sweep['chosen']} (served)</td>" in ann
    assert ann.count("<tr>") == 1 + len(sweep["points"])
    recipe = _section(html, "recipe")
    assert "learns (chosen)" in recipe and "model.optim.lr=0.0" in recipe
    assert recipe.index("learns (chosen)") < recipe.index("frozen")  # best first
    # One loss family: after the first rung its one finalist trains to its end, in the finals.
    assert "<th>rung 1: 1 epoch</th>" in recipe and recipe.count("<th>finals: ") == 1


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ALS, reason="ALS needs implicit (the bench extra)")
def test_als_is_in_the_tables_and_bars_where_the_run_measured_it(full_run):
    output_dir, metrics = full_run
    html = _html(output_dir)
    assert "<th>ALS</th>" in _section(html, "metrics")
    assert f"<td>{metrics['als/test/recall@20']:.4f}</td>" in _section(html, "metrics")
    assert "ALS is not in the bundle" in _section(html, "recall-at-k")
    assert "ALS" not in _curves(html)  # drawn from metrics.json only, not ranked again


@pytest.mark.slow
def test_the_command_renders_the_report_again(trained_run, capsys):
    output_dir, _ = trained_run
    (output_dir / REPORT).unlink()
    assert main(["report", "--run", str(output_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(output_dir / REPORT)
    assert _curves(_html(output_dir))["k"][-1] == 100


def test_a_directory_that_is_no_run_is_named_with_what_it_lacks(tmp_path, capsys):
    with pytest.raises(RunDirectoryError) as raised:
        write_report(tmp_path)
    assert raised.value.path == tmp_path and raised.value.missing == "metrics.json"
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunDirectoryError) as raised:
        write_report(tmp_path)
    assert raised.value.missing == "bundle/"
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "no bundle/" in capsys.readouterr().err
    assert not (tmp_path / REPORT).exists()


@pytest.mark.slow
def test_without_test_pairs_the_curves_say_so_and_unreadable_ones_are_named(trained_run, tmp_path):
    output_dir, _ = trained_run
    shutil.copytree(output_dir / "bundle", tmp_path / "bundle")
    shutil.copy(output_dir / "metrics.json", tmp_path / "metrics.json")
    html = write_report(tmp_path).read_text()
    assert f"No {TEST_PAIRS}" in _section(html, "recall-at-k") and CURVE_DATA not in html
    assert len(_images(html)) == 1  # the buckets, from metrics.json
    (tmp_path / TEST_PAIRS).write_text("not parquet")
    with pytest.raises(RequestError) as raised:
        write_report(tmp_path)
    assert raised.value.field == TEST_PAIRS


def _recorded_axes(monkeypatch) -> list:
    """The axes of every figure serve.report draws from now on, in order."""
    import serve.report as report

    drawn = []
    original = report._figure

    def recording_figure(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        drawn.append(axes)
        return fig, axes

    monkeypatch.setattr(report, "_figure", recording_figure)
    return drawn


def test_the_bucket_bars_are_named_by_bucket_and_labelled_by_value(monkeypatch):
    """The x axis names the thirds and the activity groups; each bar carries its own value."""
    drawn = _recorded_axes(monkeypatch)
    groups = ("head", "mid", "tail", "users_light", "users_heavy")
    metrics = {f"test_{g}/recall@20": 0.1 * (i + 1) for i, g in enumerate(groups)}
    metrics |= {f"popularity/test_{g}/recall@20": 0.01 * (i + 1) for i, g in enumerate(groups)}
    serve_report._buckets_section(metrics)
    (axes,) = drawn
    ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
    assert ticks == [["head", "mid", "tail"], ["light", "heavy"]]
    values = [t.get_text() for t in axes[0].texts]
    assert values == ["0.100", "0.200", "0.300", "0.010", "0.020", "0.030"]


def test_the_byte_bars_are_named_by_dimension_and_labelled_by_size(monkeypatch, caplog):
    """Evenly spaced bars with the dimension under each and its bytes on it, drawn without
    matplotlib guessing an axis from strings (it logs when it does)."""
    drawn = _recorded_axes(monkeypatch)
    metrics = {"test/recall@20": 0.3, "test/recall@50": 0.4, "test/bytes_per_item": 264.0}
    for d, size in ((16, 72.0), (32, 136.0)):
        metrics |= {f"test_d{d}/recall@20": d / 200, f"test_d{d}/recall@50": d / 100}
        metrics[f"test_d{d}/bytes_per_item"] = size
    manifest = {"model": {"scoring": {"popularity_prior": 0.0}, "members": [{"embedding_dim": 64}]}}
    with caplog.at_level("INFO", logger="matplotlib"):
        serve_report._matryoshka_section(metrics, manifest, priors={})
    (axes,) = drawn
    bytes_axis = axes[1]
    assert [t.get_text() for t in bytes_axis.get_xticklabels()] == ["16", "32", "64"]
    assert [t.get_text() for t in bytes_axis.texts] == ["72", "136", "264"]
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]
