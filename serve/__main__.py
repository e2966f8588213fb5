"""Command line: `python -m serve recommend --bundle PATH --user ID --k 10` prints JSON.

Errors (unknown ids, bad k, a broken bundle) print one line to stderr and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys

from serve.errors import BundleError, UnknownIdError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("recommend", help="items for a user, as JSON")
    rec.add_argument("--bundle", required=True, help="bundle directory written by export")
    rec.add_argument("--user", required=True, action="append", help="raw user id (repeatable)")
    rec.add_argument("--k", type=int, default=10, help="number of results")
    rec.add_argument("--include-seen", action="store_true", help="do not exclude the user's seen items")
    sim = commands.add_parser("similar", help="items near an item, as JSON")
    sim.add_argument("--bundle", required=True)
    sim.add_argument("--item", required=True, help="raw item id")
    sim.add_argument("--k", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from serve.recommender import Recommender

    try:
        recommender = Recommender.load(args.bundle)
        if args.command == "recommend":
            results = recommender.recommend_many(args.user, k=args.k, exclude_seen=not args.include_seen)
            payload = [
                {"user_id": user, "items": [r.to_dict() for r in recs]}
                for user, recs in zip(args.user, results, strict=True)
            ]
            out = payload[0] if len(payload) == 1 else payload
        else:
            out = {"item_id": args.item, "items": [r.to_dict() for r in recommender.similar_items(args.item, args.k)]}
    except (BundleError, UnknownIdError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
