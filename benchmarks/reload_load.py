"""Reloads under load: 32 keep-alive clients hold `python -m serve http` busy over loopback while
the bundle is updated and reloaded twice. Are there errors, does any answer mix two versions, does
the server's memory settle, and what do the reloads cost in latency? Prints a table and a verdict
per target, and writes benchmarks/results/reload_load.json. Not a test: nothing here asserts.

    python benchmarks/reload_load.py                     # 60 s, 32 clients, 100k items (issue 19)
    python benchmarks/reload_load.py --seconds 10 --clients 8      # a short look

What happens, in order:
- A synthetic bundle (`serving.synthetic_tables`: clustered item vectors written into real
  towers, 10,000 users) is exported with `--index` (flat, as conf/train.yaml ships), and served
  by `python -m serve http` in a subprocess on a free 127.0.0.1 port. The server gets an admin
  token in TWOTOWER_ADMIN_TOKEN; `POST /admin/reload` is sent with `Authorization: Bearer`. When
  the server answers a first such call with 404 (admin routes off), 401 / 403 (token not taken)
  or any other 4xx (printed), it is restarted with `--watch 0.2` and a reload is "returned" once
  /readyz names the new version. The JSON and the table say which was used and why ("reload":
  "admin" or "watch"); `--reload watch` skips the admin call.
- `--clients` keep-alive HTTP/1.1 connections (the asyncio client of this process) send plain
  `POST /recommend` (k=10) for users drawn at random from a fixed sample (`--sample-users`) for
  `--seconds`; they stop by themselves. The run is extended past `--seconds` only when the second
  reload has not settled by then (said in the output).
- At 1/4 and 1/2 of the run (the second no earlier than 1 s after the first reload returned):
  `serve.update.update_items` writes a new version (1: removes the first-ranked item of the first
  half of the sampled users and adds 5 new items; 2: puts those items back and removes the
  first-ranked item of the other half), in a separate process so that the clients' timing is not
  held up by the update in this one; then the server reloads (the admin call; a watching server
  begins as soon as CURRENT switches).
- After the load, with the server stopped, this process loads each version with
  `Recommender.load` and computes the expected top-k of every sampled user (k+2 deep: an item tied
  with the k-th within 1e-5 may stand in for it). Each answer is checked against the expected
  list of the version it names: an answer naming a version with no lists, naming one version but
  holding another's list, or matching no version's list is a mix. Also counted (not a target):
  answers naming an older version although sent after a newer one's reload returned. Errors: any
  non-200, connection error or unreadable body.
- Latency: "during" a reload is from the update's start to 1 s after the reload returned (a
  request counts there when its time in flight overlaps that span; "reload" is the admin call's
  round trip, or with --watch from CURRENT's switch until /readyz names the version); "outside"
  is every other request. The server's resident memory (psutil, else /proc/PID/status VmRSS) is
  read right after the first reload returns, every 0.25 s, and at the end of the load.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
from results_file import write_results
from serving import INDEXES, NUM_USERS, free_port, send, synthetic_tables  # benchmarks/serving.py

from serve.versions import current_version

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reload_load.json"
K = 10
SLACK = 2  # expected lists hold k + SLACK items, so a tie at the k-th place can be recognised
TIE = 1e-5  # scores this close are a tie (batched and single searches differ in the last bits)
SETTLE_S = 1.0  # a reload's window ends this long after the reload returned
RSS_TOLERANCE = 0.10  # the end's RSS within 10% of the RSS after the first reload
WATCH_S = 0.2  # the fallback: the server polls CURRENT this often
NEW_ITEMS = 5  # items the first update adds
TOKEN_ENV = "TWOTOWER_ADMIN_TOKEN"
ISSUE = {"clients": 32, "seconds": 60, "reloads": 2}  # issue 19, item 7

# {version: {user: (item ids, scores)}}: each sampled user's expected list in each version
Expected = dict[str, dict[int, tuple[tuple, tuple]]]


# -- the updater process writes versions; each version's expected lists ----------------------
def _updater_init() -> None:
    """One thread in the updater process: the server and the clients share the rest."""
    import faiss
    import torch

    import serve.update  # noqa: F401 (imported before the run, not in the first update)

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def expected_lists(path: Path, users: list[int], k: int) -> dict:
    """{user: (item ids, scores)}, k + SLACK deep, of the bundle version at `path` (a version
    directory), as `Recommender.load` answers them (exclude_seen, like a plain request)."""
    from serve import Recommender

    recommender = Recommender.load(path)
    rows = np.array([recommender.users.index_of(u) for u in users], dtype=np.int64)
    scores, found = recommender.top_k(rows, k + SLACK)
    ids = recommender.item_id_list
    return {
        user: (
            tuple(ids[j] for j in row if j >= 0),
            tuple(float(s) for s, j in zip(score, row, strict=True) if j >= 0),
        )
        for user, row, score in zip(users, found.tolist(), scores.tolist(), strict=True)
    }


def write_update(bundle: str, remove: list, upsert: list) -> tuple[str, dict]:
    """`update_items` (upsert: new or removed item ids, encoded by the bundle's own towers):
    (the version written, how many items were added, replaced, removed)."""
    import polars as pl

    from serve.update import update_items

    table = pl.DataFrame({"item_id": pl.Series(upsert, dtype=pl.Int64)}) if upsert else None
    report = update_items(bundle, upsert=table, remove=remove)
    return report.version, {f: len(getattr(report, f)) for f in ("added", "replaced", "removed")}


def next_update(
    step: int, users: list[int], lists: dict, removed_before: list, new_id: int
) -> dict:
    """What update `step` (1 or 2) changes, chosen from the first version's expected `lists` so
    that answers visibly change: step 1 removes the first-ranked item of the first half of the
    sampled users and adds NEW_ITEMS new ids from `new_id` on; step 2 puts those items back
    (`removed_before`) and removes the first-ranked item of the other half (those still in)."""
    half = len(users) // 2
    chosen = users[:half] if step == 1 else users[half:]
    firsts = list(dict.fromkeys(lists[u][0][0] for u in chosen if lists[u][0]))
    if step == 1:
        return {"remove": firsts, "upsert": list(range(new_id, new_id + NEW_ITEMS))}
    back = set(removed_before)
    return {"remove": [i for i in firsts if i not in back], "upsert": list(removed_before)}


def changed_share(before: dict, after: dict, k: int) -> float:
    """Share of sampled users whose top-k differs between two versions' expected lists."""
    return float(np.mean([before[u][0][:k] != after[u][0][:k] for u in before]))


# -- the verdict logic: pure functions over records ----------------------------------------------
def matches(items: tuple, ids: tuple, scores: tuple, k: int) -> bool:
    """`items` is the expected top-k (`ids`, `scores`: k + SLACK deep) up to ties: k distinct
    items, each an expected one whose expected score is within TIE of the score expected at its
    place."""
    if len(items) != min(k, len(ids)) or len(set(items)) != len(items):
        return False
    score_of = dict(zip(ids, scores, strict=True))
    return all(
        item in score_of and abs(score_of[item] - scores[i]) <= TIE for i, item in enumerate(items)
    )


def classify(version: str | None, user: int, items: tuple, expected: Expected, k: int) -> str:
    """The verdict on one answer: "ok", or the kind of mix: "unknown_version" (names a version
    with no lists), "other_version" (names one version, holds another's list) or "no_version"
    (matches no version's list)."""
    lists = expected.get(version)
    if lists is None:
        return "unknown_version"
    if matches(items, *lists[user], k):
        return "ok"
    if any(matches(items, *e[user], k) for v, e in expected.items() if v != version):
        return "other_version"
    return "no_version"


def read_answer(payload: bytes) -> tuple[str | None, tuple] | None:
    """(version, item ids) of a /recommend body; None when it cannot be read."""
    try:
        body = json.loads(payload)
        return body["version"], tuple(item["item_id"] for item in body["items"])
    except (ValueError, KeyError, TypeError):
        return None


def in_window(sent: float, done: float, windows: list[tuple[float, float]]) -> bool:
    return any(sent < end and done > start for start, end in windows)


def percentiles_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def summarise(
    records: list[tuple],
    windows: list[tuple[float, float]],
    reloaded: list[tuple[str, float]],
    expected: Expected,
    k: int,
    span: tuple[float, float],
) -> dict:
    """Figures of one run. records: (user, sent, done, status, body bytes or error text);
    windows: (start, end) of each reload's window; reloaded: (version, when its reload returned),
    in order; span: (start, end) of the load."""
    latency = {"during": [], "outside": []}
    errors, kinds, per_version = [], Counter(), Counter()
    stale = 0  # answers naming a version older than one whose reload had returned when sent
    telling = 0  # ok answers unlike every other version's list: the check would catch a swap
    order = {v: i for i, (v, _) in enumerate(reloaded)}
    returns = [t for _, t in reloaded]
    for user, sent, done, status, body in records:
        latency["during" if in_window(sent, done, windows) else "outside"].append(done - sent)
        if status != 200:
            errors.append(body if status is None else f"HTTP {status}")
            continue
        answer = read_answer(body)
        if answer is None:
            errors.append("unreadable body")
            continue
        version, items = answer
        per_version[version] += 1
        kind = classify(version, user, items, expected, k)
        kinds[kind] += 1
        if kind == "ok" and not any(
            matches(items, *e[user], k) for v, e in expected.items() if v != version
        ):
            telling += 1
        newest = bisect.bisect_right(returns, sent) - 1  # the last reload returned before sending
        if newest >= 0 and order.get(version, len(order)) < newest:
            stale += 1
    seconds = span[1] - span[0]
    during_s = sum(min(e, span[1]) - max(s, span[0]) for s, e in windows if e > span[0])
    phases = {}
    for name, phase_s in (("during", during_s), ("outside", seconds - during_s)):
        phases[name] = {
            **percentiles_ms(latency[name]),
            "requests": len(latency[name]),
            "seconds": phase_s,
            "qps": len(latency[name]) / phase_s if phase_s > 0 else None,
        }
    every = latency["during"] + latency["outside"]
    phases["all"] = {
        **percentiles_ms(every),
        "requests": len(every),
        "seconds": seconds,
        "qps": len(every) / seconds,
    }
    checked = sum(kinds.values())
    return {
        "latency": phases,
        "errors": {"count": len(errors), "first": [str(e) for e in errors[:10]]},
        "answers": {
            "checked": checked,
            "ok": kinds["ok"],
            "mixes": checked - kinds["ok"],
            "mix_kinds": {kind: n for kind, n in kinds.items() if kind != "ok"},
            "per_version": dict(sorted(per_version.items(), key=lambda kv: str(kv[0]))),
            "ok_unlike_other_versions": telling,
            "stale_after_reload": stale,
        },
    }


def verdicts(figures: dict, setup: dict) -> dict:
    """The issue's targets, each with the figure it was judged on."""
    requests = figures["latency"]["all"]["requests"]
    answers, errors, rss = figures["answers"], figures["errors"]["count"], figures["rss"]
    reloads = len(figures["reloads"])
    ratio = rss["ratio_end_to_first_reload"]
    return {
        "zero errors": {
            "errors": errors,
            "requests": requests,
            "met": errors == 0 and requests > 0,
        },
        "every answer from one version (never a mix)": {
            "mixes": answers["mixes"],
            "checked": answers["checked"],
            "versions": list(answers["per_version"]),
            "met": answers["mixes"] == 0
            and answers["checked"] > 0
            and answers["checked"] + errors == requests
            and reloads == ISSUE["reloads"],
        },
        f"server RSS at the end within {RSS_TOLERANCE:.0%} of after the first reload": {
            "ratio": ratio,
            "met": ratio is not None and abs(ratio - 1) <= RSS_TOLERANCE,
        },
        "the issue's setup (32 clients, 60 s, 2 reloads)": {
            "clients": setup["clients"],
            "seconds": setup["seconds"],
            "reloads": reloads,
            "met": setup["clients"] >= ISSUE["clients"]
            and setup["seconds"] >= ISSUE["seconds"]
            and reloads == ISSUE["reloads"],
        },
    }


# -- the server and HTTP --------------------------------------------------------------------------
def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process: psutil when installed, else /proc/PID/status VmRSS."""
    try:
        import psutil
    except ImportError:
        psutil = None
    try:
        if psutil is not None:
            return psutil.Process(pid).memory_info().rss
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


async def request(port: int, method: str, path: str, headers: dict | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await send(reader, writer, method, path, None, headers or {})
    finally:
        writer.close()


class Server:
    """`python -m serve http` on a free loopback port, with an admin token in its environment
    (and `--watch` when asked); its stderr kept in a file, shown if it fails."""

    def __init__(self, bundle: Path, token: str, watch: float | None):
        self.port, self.token, self.watch = free_port(), token, watch
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        options = ["--watch", str(watch)] if watch else []
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "serve", "http", "--bundle", str(bundle)),
                *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, TOKEN_ENV: token},
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the HTTP server exited:\n{self.stderr()}")
            with contextlib.suppress(OSError):
                if asyncio.run(request(self.port, "GET", "/readyz"))[0] == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError("the HTTP server did not become ready")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    async def admin_reload(self) -> tuple[int, bytes]:
        return await request(
            self.port, "POST", "/admin/reload", {"Authorization": f"Bearer {self.token}"}
        )

    async def reload(self, version: str) -> float:
        """Make the server serve `version`: the admin call, or (watching) wait for /readyz to
        name it. Returns when that happened (perf_counter)."""
        if not self.watch:
            status, body = await self.admin_reload()
            served = json.loads(body).get("version") if status == 200 else None
            if served != version:
                raise RuntimeError(f"admin reload answered {status} {body[:200]!r}")
            return time.perf_counter()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, body = await request(self.port, "GET", "/readyz")
            if status == 200 and json.loads(body).get("version") == version:
                return time.perf_counter()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the watching server did not reload {version}")


def start_server(
    bundle: Path, token: str, how: str, stack: contextlib.ExitStack
) -> tuple[Server, dict]:
    """The server and how it reloads. how="auto": {"reload": "admin"} when `POST /admin/reload`
    with the token answers 200, else (any 4xx) a server restarted with --watch ({"reload":
    "watch", "why": ...}); "watch": --watch from the start."""
    if how == "auto":
        server = Server(bundle, token, None)
        stack.callback(server.stop)
        server.wait_ready()
        status, body = asyncio.run(server.admin_reload())
        if status == 200:
            return server, {"reload": "admin", "admin_status": status}
        if not 400 <= status < 500:
            raise RuntimeError(f"POST /admin/reload answered {status}: {body[:200]!r}")
        server.stop()
        why = f"POST /admin/reload with the token answered {status}"
        if status not in (401, 403, 404):  # not an answer of the token work: show it
            why += f" {body[:200].decode(errors='replace')}"
            print(f"warning: {why}; reloading by --watch instead", flush=True)
    else:
        status, why = None, "asked for (--reload watch)"
    server = Server(bundle, token, WATCH_S)
    stack.callback(server.stop)
    server.wait_ready()
    return server, {"reload": "watch", "admin_status": status, "watch_s": WATCH_S, "why": why}


# -- the run --------------------------------------------------------------------------------------
class Load:
    """Keep-alive clients sending /recommend for random sampled users until `stop_at`, and past
    it while `hold` is set (never past `hard_stop`)."""

    def __init__(self, port: int, users: list[int], k: int, stop_at: float, hold: bool = False):
        self.port, self.users, self.k, self.stop_at = port, users, k, stop_at
        self.hold, self.hard_stop = hold, stop_at + 300
        self.records: list[tuple] = []  # (user, sent, done, status or None, body or error)

    def running(self) -> bool:
        now = time.perf_counter()
        return now < self.stop_at or (self.hold and now < self.hard_stop)

    async def client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        connection = None
        while self.running():
            user = self.users[int(rng.integers(len(self.users)))]
            body = json.dumps({"user_id": user, "k": self.k}).encode()
            sent = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", self.port)
                status, payload = await send(*connection, "POST", "/recommend", body, {})
                self.records.append((user, sent, time.perf_counter(), status, payload))
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                self.records.append((user, sent, time.perf_counter(), None, repr(err)))
                if connection is not None:
                    connection[1].close()
                connection = None
                await asyncio.sleep(0.05)
        if connection is not None:
            connection[1].close()

    async def run(self, clients: int, seed: int) -> None:
        await asyncio.gather(*(self.client(seed * 1000 + i) for i in range(clients)))


async def reload_cycle(server, pool, bundle, plan: dict, t0: float) -> dict:
    """One update (written by the updater process) and its reload; returns its figures."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    version, report = await loop.run_in_executor(
        pool, write_update, str(bundle), plan["remove"], plan["upsert"]
    )
    written = time.perf_counter()
    returned = await server.reload(version)
    rss_after = rss_bytes(server.pid)
    return {
        "version": version,
        "report": report,
        "update_s": written - started,
        # admin: the call's round trip; watch: from CURRENT's switch to /readyz naming it
        "reload_s": returned - written,
        "window": [started - t0, returned + SETTLE_S - t0],
        "returned_at": returned - t0,
        "rss_after_bytes": rss_after,
    }


async def sample_rss(pid: int, t0: float, samples: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.perf_counter() - t0, rss_bytes(pid)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def measured_run(server, pool, bundle, users, args, first_lists: dict) -> dict:
    """The load with two reloads in it: its records and timeline, every time in seconds from
    the load's start. The updates are planned from the first version's lists."""
    t0 = time.perf_counter()
    load = Load(server.port, users, args.k, t0 + args.seconds, hold=True)
    stop_sampling, rss_samples = asyncio.Event(), []
    sampler = asyncio.create_task(sample_rss(server.pid, t0, rss_samples, stop_sampling))
    clients = asyncio.create_task(load.run(args.clients, seed=1))
    reloads, removed = [], []
    try:
        for step, at in ((1, 0.25), (2, 0.5)):
            after = reloads[-1]["window"][1] if reloads else 0.0
            await asyncio.sleep(max(0.0, t0 + max(args.seconds * at, after) - time.perf_counter()))
            plan = next_update(step, users, first_lists, removed, args.items)
            reloads.append(await reload_cycle(server, pool, bundle, plan, t0))
            reloads[-1]["removed_items"] = removed = plan["remove"]
        # outside time after the last window, too: the run is extended if the reloads ran late
        load.stop_at = max(load.stop_at, t0 + reloads[-1]["window"][1] + SETTLE_S)
    finally:
        if len(reloads) < 2:  # a reload failed: stop now
            load.stop_at = time.perf_counter()
        load.hold = False
        await clients
        end = time.perf_counter()
        rss_end = rss_bytes(server.pid)
        stop_sampling.set()
        await sampler
    first = reloads[0]["rss_after_bytes"] if reloads else None
    return {
        "records": [(u, s - t0, d - t0, status, body) for u, s, d, status, body in load.records],
        "windows": [tuple(r["window"]) for r in reloads],
        "reloads": reloads,
        "seconds": end - t0,
        "rss": {
            "after_first_reload_bytes": first,
            "end_bytes": rss_end,
            "ratio_end_to_first_reload": rss_end / first if first and rss_end else None,
            "peak_bytes": max((b for _, b in rss_samples if b), default=None),
            "samples": [[round(t, 2), b] for t, b in rss_samples],
        },
    }


def judge(run: dict, bundle: Path, first_version: str, users: list[int], args) -> dict:
    """The run's figures: each version's expected lists computed now (the server stopped), then
    every answer checked against them."""
    expected = {first_version: expected_lists(bundle / first_version, users, args.k)}
    for r in run["reloads"]:
        previous = expected[list(expected)[-1]]
        expected[r["version"]] = lists = expected_lists(bundle / r["version"], users, args.k)
        r["changed_share"] = changed_share(previous, lists, args.k)
        r.pop("removed_items", None)
    reloaded = [(first_version, 0.0)] + [(r["version"], r["returned_at"]) for r in run["reloads"]]
    figures = summarise(
        run["records"], run["windows"], reloaded, expected, args.k, (0.0, run["seconds"])
    )
    return {
        **figures,
        "rss": run["rss"],
        "reloads": run["reloads"],
        "seconds": run["seconds"],
        "extended": run["seconds"] > args.seconds + 0.5,
    }


# -- output ----------------------------------------------------------------------------------------
def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MB"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_figures(figures: dict, mode: dict) -> None:
    print(f"\n{'phase':<8} {'seconds':>8} {'requests':>9} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, p in figures["latency"].items():
        qps = "-" if p["qps"] is None else f"{p['qps']:,.0f}"
        print(
            f"{name:<8} {p['seconds']:>8.1f} {p['requests']:>9,} {qps:>8} "
            f"{ms(p['p50_ms']):>8} {ms(p['p99_ms']):>8}"
        )
    how = "POST /admin/reload (token)" if mode["reload"] == "admin" else f"--watch ({mode['why']})"
    print(f"\nreloads by {how}:")
    for r in figures["reloads"]:
        start, end = r["window"]
        print(
            f"  {r['version']}: +{r['report']['added']} / -{r['report']['removed']} items, "
            f"update {r['update_s']:.1f} s, reload {r['reload_s']:.1f} s; window "
            f"{start:.1f}-{end:.1f} s; top-{K} changed for {r['changed_share']:.0%} of sampled "
            f"users; RSS after {mb(r['rss_after_bytes'])}"
        )
    rss, answers = figures["rss"], figures["answers"]
    ratio = rss["ratio_end_to_first_reload"]
    print(
        f"memory: server RSS after the first reload {mb(rss['after_first_reload_bytes'])}, "
        f"at the end {mb(rss['end_bytes'])} (x{ratio:.3f}), peak {mb(rss['peak_bytes'])}"
        if ratio
        else f"memory: {rss}"
    )
    print(
        f"answers: {answers['checked']:,} checked, {answers['mixes']} mixes {answers['mix_kinds']} "
        f"({answers['ok_unlike_other_versions']:,} ok answers unlike any other version's list); "
        f"per version {answers['per_version']}; an older version after a reload returned: "
        f"{answers['stale_after_reload']}"
    )
    print(f"errors: {figures['errors']['count']} {figures['errors']['first'][:3]}")
    if figures["extended"]:
        print(f"(the run was extended to {figures['seconds']:.1f} s: the reloads ran late)")


def machine(load_before: tuple) -> dict:
    import faiss

    versions = {"faiss": faiss.__version__}
    for name in ("numpy", "torch", "fastapi", "uvicorn", "polars"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def write_json(result: dict, out: Path) -> None:
    write_results(out, result, default=str)


def build_bundle(path: Path, args) -> None:
    from serve import export_bundle
    from towers import Scorer

    started = time.perf_counter()
    user_tower, item_tower, features, items_df, users_df = synthetic_tables(
        args.items, "clustered", seed=args.items
    )
    config = {**INDEXES[args.index], "device": "cpu", "sweep_k": 100, "sweep_queries": 500}
    scorer = Scorer([(user_tower, item_tower)])
    export_bundle(path, scorer, features, items_df, users_df, index_config=config)
    print(f"bundle: {args.items:,} items ({args.index}), {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--index", choices=list(INDEXES), default="flat")
    parser.add_argument(
        "--sample-users", type=int, default=2000, help="users the clients ask for (checked)"
    )
    parser.add_argument(
        "--reload",
        choices=("auto", "watch"),
        default="auto",
        help="auto: POST /admin/reload with the token, --watch when that answers a 4xx",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.k = K
    load_before = os.getloadavg()
    users = sorted(
        np.random.default_rng(0)
        .choice(NUM_USERS, size=min(args.sample_users, NUM_USERS), replace=False)
        .tolist()
    )
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="twotower-reload-") as tmp,
        contextlib.ExitStack() as stack,
        concurrent.futures.ProcessPoolExecutor(1, spawn, initializer=_updater_init) as pool,
    ):
        bundle = Path(tmp) / "bundle"
        build_bundle(bundle, args)
        first_version = current_version(bundle)
        first_lists = expected_lists(bundle / first_version, users, args.k)
        pool.submit(os.getpid).result()  # the updater process started (and imported) now
        server, mode = start_server(bundle, secrets.token_urlsafe(24), args.reload, stack)
        print(
            f"server: pid {server.pid}, port {server.port}, reloads by {mode['reload']}", flush=True
        )
        warm = Load(server.port, users, args.k, time.perf_counter() + 2)
        asyncio.run(warm.run(min(4, args.clients), seed=0))
        run = asyncio.run(measured_run(server, pool, bundle, users, args, first_lists))
        server_log = server.stderr()
        server.stop()
        figures = judge(run, bundle, first_version, users, args)
    setup = {
        "clients": args.clients,
        "seconds": args.seconds,
        "items": args.items,
        "index": args.index,
        "users": NUM_USERS,
        "sample_users": len(users),
        "k": args.k,
        **mode,
    }
    result = {
        "command": " ".join(
            ["python", "benchmarks/reload_load.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "setup": setup,
        "machine": machine(load_before),
        "figures": figures,
        "targets": verdicts(figures, setup),
    }
    if server_log.strip():
        result["server_stderr_tail"] = server_log[-2000:]
    print_figures(figures, mode)
    print("\ntargets:")
    for name, value in result["targets"].items():
        figure = json.dumps({k: v for k, v in value.items() if k != "met"})
        print(f"  {'MET ' if value['met'] else 'MISS'} {name}: {figure}")
    print(f"load average before/after: {load_before} / {result['machine']['loadavg_after']}")
    write_json(result, args.out)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
