"""Command line.

    python -m serve recommend --bundle PATH --user ID --k 10      items for a user, as JSON
    python -m serve similar --bundle PATH --item ID --k 10        items near an item, as JSON
    python -m serve http --bundle PATH --host 127.0.0.1 --port 8000   the HTTP service
    python -m serve update --bundle PATH --upsert new.parquet --remove ID   a new bundle version
    python -m serve verify --bundle PATH [--version v000002]   every file against its checksum
    python -m serve clusters --bundle PATH --k 50      k-means of the item vectors, as Parquet
    python -m serve duplicates --bundle PATH --threshold 0.95   item pairs above a cosine
    python -m serve audit --bundle PATH [--held-out pairs.parquet]   metrics and retrievability
    python -m serve compare --bundle A --bundle B [--held-out pairs.parquet]   B - A, and its noise
    python -m serve report --run DIR      a run directory's report.html (serve.report), again

`audit` prints the bundle's and popularity's metrics on held-out pairs, with the retrievability
audit (serve.audit), as JSON; by default on the test split of the run that wrote the bundle.
`compare` prints two bundles' recall and ndcg on the same held-out users (by default the test
split beside the first), B - A and its 95% paired bootstrap interval (serve.compare).

Errors (unknown ids, bad k, a broken bundle, an unreadable held-out file) print one line to
stderr and exit with status 2;
`verify` prints its JSON summary, and a line to stderr for each bad file (then exits with 2).
`clusters` and `duplicates` report progress on stderr, write a Parquet table (by default in
analysis/ under the bundle's root) and print what they found."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serve.errors import BundleError, RequestError, UnknownIdError, check_k
from serve.files import VERIFY
from serve.held_out import TEST_PAIRS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("recommend", help="items for a user, as JSON")
    rec.add_argument("--bundle", required=True, help="bundle directory written by export")
    rec.add_argument("--user", required=True, action="append", help="raw user id (repeatable)")
    rec.add_argument("--k", type=int, default=10, help="number of results")
    rec.add_argument(
        "--include-seen", action="store_true", help="do not exclude the user's seen items"
    )
    rec.add_argument(
        "--history", action="append", default=None, help="raw item id of a history (repeatable)"
    )
    rec.add_argument(
        "--cold-start",
        default="history",
        choices=("history", "popularity", "error"),
        help="users the bundle does not know: from --history (else an error), popularity, or an error",
    )
    rec.add_argument(
        "--explain", action="store_true", help="list the history items behind each result"
    )
    sim = commands.add_parser("similar", help="items near an item, as JSON")
    sim.add_argument("--bundle", required=True)
    sim.add_argument("--item", required=True, help="raw item id")
    sim.add_argument("--k", type=int, default=10)
    _add_http_command(commands)
    ver = commands.add_parser(
        "verify", help="check every file of a bundle version against its manifest's sha256"
    )
    ver.add_argument("--bundle", required=True)
    ver.add_argument("--version", help="the version to check (v000002); default: CURRENT's")
    upd = commands.add_parser(
        "update", help="add, replace or remove items: writes a new bundle version"
    )
    upd.add_argument("--bundle", required=True)
    upd.add_argument(
        "--upsert",
        help="Parquet, CSV or JSON file: item_id and any of the items table's own columns",
    )
    upd.add_argument(
        "--remove", action="append", default=[], help="raw item id to remove (repeatable)"
    )
    aud = commands.add_parser(
        "audit",
        help="the bundle and popularity on held-out pairs: metrics and the retrievability audit",
    )
    aud.add_argument("--bundle", required=True)
    aud.add_argument(
        "--held-out",
        help="Parquet, CSV or JSON file of held-out user_id, item_id pairs (default: the "
        f"{TEST_PAIRS} that train.py wrote beside the bundle: the run's test split)",
    )
    cmp = commands.add_parser(
        "compare", help="two bundles on the same held-out users: B - A and its bootstrap interval"
    )
    cmp.add_argument(
        "--bundle", required=True, action="append", help="A, then B (given twice, in that order)"
    )
    cmp.add_argument("--held-out", help=f"held-out pairs (default: the {TEST_PAIRS} beside A)")
    cmp.add_argument("--k", type=int, action="append", help="cutoffs (repeatable; default 20, 50)")
    cmp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the users")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    _add_catalogue_commands(commands)
    rep = commands.add_parser(
        "report", help="render a run directory's report.html again (plots of what the run wrote)"
    )
    rep.add_argument("--run", required=True, help="the run directory train.py wrote")
    return parser


def _add_catalogue_commands(commands) -> None:
    """`clusters` and `duplicates`: what the item vectors say about the catalogue."""
    clu = commands.add_parser("clusters", help="k-means of the item vectors, written as Parquet")
    clu.add_argument("--bundle", required=True)
    clu.add_argument("--k", type=int, default=50, help="number of clusters")
    clu.add_argument("--seed", type=int, default=0, help="k-means seed")
    clu.add_argument("--titles", type=int, default=5, help="popular titles printed per cluster")
    clu.add_argument("--out", help="Parquet file (default: analysis/clusters-<version>.parquet)")
    dup = commands.add_parser("duplicates", help="item pairs above a cosine, written as Parquet")
    dup.add_argument("--bundle", required=True)
    dup.add_argument("--threshold", type=float, default=0.95, help="cosine the pairs exceed")
    dup.add_argument("--show", type=int, default=10, help="pairs printed, the most alike first")
    dup.add_argument("--out", help="Parquet file (default: analysis/duplicates-<version>.parquet)")


def _add_http_command(commands) -> None:
    """`http`: the service's flags, the limits of one request and the admin token among them."""
    http = commands.add_parser("http", help="serve the bundle over HTTP (uvicorn)")
    http.add_argument("--bundle", required=True)
    http.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    http.add_argument("--port", type=int, default=8000)
    http.add_argument(
        "--cold-start",
        default="history",
        choices=("history", "popularity", "error"),
        help="users the bundle does not know: their given history, popularity, or 404",
    )
    http.add_argument(
        "--device", default=None, choices=("auto", "cpu", "gpu"), help="override index.device"
    )
    http.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="poll the bundle's CURRENT and reload a new version by itself",
    )
    http.add_argument("--log-level", default="info")
    http.add_argument(
        "--cache-user-vectors",
        choices=("auto", "on", "off"),
        default="auto",
        help="encode every known user once at load instead of at each request "
        "(auto: when that table is at most 512 MiB)",
    )
    for flag, default, what in (
        ("--max-k", 1000, "results a request may ask for"),
        ("--max-history", 1000, "item ids in a history given with a request"),
        ("--max-exclude", 10_000, "item ids in a request's exclude list"),
        ("--max-batch", 1024, "users in one /recommend/batch request"),
        ("--max-body-bytes", 1 << 20, "bytes of a request body (past it: 413)"),
    ):
        http.add_argument(flag, type=int, metavar="N", help=f"most {what} (default {default})")
    http.add_argument(
        "--verify",
        choices=VERIFY,
        default="full",
        help="what each load and reload checks of the bundle's files: full (size and sha256), "
        "size (very large indexes), off",
    )
    http.add_argument(
        "--admin-token",
        default=None,
        help="bearer token that /admin/* requires (default: the TWOTOWER_ADMIN_TOKEN environment "
        "variable, which stays out of the process list; neither: the admin routes are off)",
    )


def _read_table(path: str, flag: str = "--upsert"):
    import polars as pl

    readers = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".json": pl.read_json}
    reader = readers.get(Path(path).suffix)
    if reader is None:
        raise RequestError(flag, path, "must be a .parquet, .csv or .json file")
    try:
        return reader(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise RequestError(flag, path, f"cannot be read ({err})") from None


def _held_out_path(given: str | None, bundle: str) -> str:
    """`--held-out`, else the run's test split beside `bundle`, which must then exist."""
    path = given or str(Path(bundle).parent / TEST_PAIRS)
    if not given and not Path(path).is_file():
        raise RequestError(
            "--held-out",
            path,
            f"must be given: no {TEST_PAIRS} (a run's test split) is beside the bundle",
        )
    return path


def _audit(args: argparse.Namespace, recommender) -> dict:
    """The bundle and popularity on the held-out pairs (serve.evaluate.evaluate_bundle), with
    how many pairs the bundle could not rank."""
    from features.schema import ITEM_ID
    from features.vocab import Vocabulary
    from serve.evaluate import evaluate_bundle
    from serve.held_out import held_out_pairs

    path = _held_out_path(args.held_out, args.bundle)
    items = Vocabulary.from_ids(recommender.bundle.items[ITEM_ID])
    pairs = held_out_pairs(_read_table(path, "--held-out"), recommender.user_vocab, items)
    return {
        "bundle": str(args.bundle),
        "held_out": path,
        "users": len(pairs.held_out),
        "interactions": pairs.held_out.num_interactions,
        "unknown_users": pairs.unknown_users,
        "unknown_user_interactions": pairs.unknown_user_pairs,
        "unknown_items": pairs.unknown_items,
        "metrics": evaluate_bundle(recommender, pairs.held_out),
    }


def _compare(args: argparse.Namespace) -> int:
    """`compare`: B against A on the same held-out users (serve.compare), as JSON."""
    from serve.compare import COMPARED_KS, compare_bundles
    from serve.recommender import Recommender

    try:
        if len(args.bundle) != 2:
            raise RequestError("--bundle", args.bundle, "must be given twice: A, then B")
        if args.resamples < 1:
            raise RequestError("--resamples", args.resamples, "must be at least 1")
        a, b = (Recommender.load(path) for path in args.bundle)
        path = _held_out_path(args.held_out, args.bundle[0])
        ks = tuple(args.k or COMPARED_KS)
        for k in ks:
            check_k(k)
        table = _read_table(path, "--held-out")
        out = compare_bundles(a, b, table, ks, args.resamples, args.seed)
    except (BundleError, UnknownIdError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"a": args.bundle[0], "b": args.bundle[1], "held_out": path} | out, indent=2))
    return 0


def _http(args: argparse.Namespace) -> int:
    """The HTTP service until interrupted (0), or 2 for a bad flag."""
    from serve.http import serve
    from serve.http_messages import Limits

    try:
        limits = Limits.from_options(vars(args))  # --max-k → max_k, ...; absent: the default
    except RequestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(
        args.bundle,
        args.host,
        args.port,
        args.cold_start,
        args.device,
        args.watch,
        args.log_level,
        {"auto": None, "on": True, "off": False}[args.cache_user_vectors],
        limits,
        args.admin_token,
        verify=args.verify,
    )
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _clusters(args: argparse.Namespace) -> int:
    """`clusters`: the table written, each cluster's size and most popular titles printed."""
    from serve.clusters import cluster_items, cluster_tops, default_out, write_table
    from serve.versions import read_bundle

    bundle = read_bundle(args.bundle)
    clusters = cluster_items(bundle, args.k, seed=args.seed, progress=_progress)
    path = write_table(clusters, args.out or default_out(bundle, "clusters"))
    _progress(f"wrote {clusters.height} items' clusters to {path}")
    for top in cluster_tops(bundle, clusters, args.titles):
        print(f"cluster {top.cluster} ({top.size} items): " + " | ".join(top.titles))
    return 0


def _duplicates(args: argparse.Namespace) -> int:
    """`duplicates`: the table written, the most alike pairs printed."""
    from serve.clusters import default_out, near_duplicates, write_table
    from serve.versions import read_bundle

    bundle = read_bundle(args.bundle)
    pairs = near_duplicates(bundle, args.threshold, progress=_progress)
    path = write_table(pairs, args.out or default_out(bundle, "duplicates"))
    _progress(f"wrote {pairs.height} pairs above cosine {args.threshold} to {path}")
    for item, duplicate, cosine in pairs.head(max(args.show, 0)).iter_rows():
        print(f"{cosine:.4f}  {item}  {duplicate}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from serve.recommender import Recommender

    if args.command == "http":
        return _http(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "report":
        from serve.report import RunDirectoryError, write_report

        try:
            print(write_report(args.run))
        except (RunDirectoryError, BundleError, RequestError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("clusters", "duplicates"):
        try:
            return (_clusters if args.command == "clusters" else _duplicates)(args)
        except (BundleError, RequestError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.command == "verify":
        from serve.versions import verify_version

        try:
            summary = verify_version(args.bundle, args.version)
        except BundleError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2))
        for problem in summary["bad"].values():
            print(f"error: {problem}", file=sys.stderr)
        return 0 if summary["ok"] else 2
    if args.command == "update":
        from serve.update import update_items

        try:
            upsert = _read_table(args.upsert) if args.upsert else None
            report = update_items(args.bundle, upsert=upsert, remove=args.remove)
        except (BundleError, UnknownIdError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    try:
        recommender = Recommender.load(
            args.bundle, cold_start=getattr(args, "cold_start", "history")
        )
        if args.command == "audit":
            out = _audit(args, recommender)
        elif args.command == "recommend":
            histories = None if args.history is None else [args.history] * len(args.user)
            results = recommender.recommend_many(
                args.user,
                k=args.k,
                exclude_seen=not args.include_seen,
                histories=histories,
                explain=args.explain,
            )
            payload = [
                {"user_id": user, "source": recs.source, "items": [r.to_dict() for r in recs]}
                for user, recs in zip(args.user, results, strict=True)
            ]
            out = payload[0] if len(payload) == 1 else payload
        else:
            out = {
                "item_id": args.item,
                "items": [r.to_dict() for r in recommender.similar_items(args.item, args.k)],
            }
    except (BundleError, UnknownIdError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
