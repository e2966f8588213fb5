"""The explorer: a page for people at GET / and the JSON it reads that the rest of the API does
not give.

    GET  /               serve/static/explorer.html: one file, inline CSS and JS, nothing
                         fetched from elsewhere (it works offline)
    POST /user-history   {"user_id": 42}: a known user's stored history, most recent first
    GET  /examples       user ids and the most seen items, to pick from

The page asks POST /recommend (with `"explain": true`) and POST /similar-items for the rest. It
inserts every string it shows as text (text nodes, textContent), never as HTML: titles are
data. Its Content-Security-Policy lets only its own inline script run (by the script's sha256)
and lets it connect to this server only."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from features.schema import USER_ID
from serve.http_lane import read_body
from serve.http_messages import Limits, json_response, openapi_body, parse, request_models
from serve.http_openapi import ExamplesAnswer, UserHistoryAnswer, answers
from serve.recommender import Recommender

PAGE = "static/explorer.html"  # in the serve package (package data)
EXAMPLE_IDS = 20  # users and items GET /examples offers
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def explorer_page() -> tuple[str, str]:
    """(the page's HTML, its Content-Security-Policy): scripts only the page's own inline one,
    styles inline, no images but data: URLs, requests to this server only."""
    html = resources.files("serve").joinpath(PAGE).read_text(encoding="utf-8")
    digests = [hashlib.sha256(script.encode()).digest() for script in _SCRIPT.findall(html)]
    hashes = " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)
    policy = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, policy


def examples(recommender: Recommender, n: int = EXAMPLE_IDS) -> dict:
    """The first `n` users of the bundle's table and its `n` most seen active items."""
    rows = recommender.catalogue.popular_order[:n].tolist()
    ids, titles = recommender.item_id_list, recommender.titles
    return {
        "version": recommender.version,
        "user_ids": recommender.bundle.users[USER_ID].head(n).to_list(),
        "items": [
            {"item_id": ids[r], "title": None if titles is None else titles[r]} for r in rows
        ],
    }


def add_explorer_routes(app: FastAPI, ready: Callable[[], Recommender], limits: Limits) -> None:
    """GET /, POST /user-history, GET /examples; `ready()`: the recommender served now (or
    `BundleError`, a 503)."""
    model = request_models(limits).history
    html, policy = explorer_page()

    @app.get("/", include_in_schema=False)
    async def explorer():
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    @app.post(
        "/user-history",
        openapi_extra=openapi_body(model),
        responses=answers(UserHistoryAnswer, 404, 413, 422, 503),
    )
    async def user_history(request: Request):
        body = parse(model, await read_body(request, limits.max_body_bytes))
        recommender = ready()
        items = [item._asdict() for item in recommender.user_history(body.user_id)]
        return json_response(
            {"user_id": body.user_id, "version": recommender.version, "items": items}
        )

    @app.get("/examples", responses=answers(ExamplesAnswer, 503))
    async def example_ids():
        return json_response(examples(ready()))
