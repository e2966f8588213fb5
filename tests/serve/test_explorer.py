"""The explorer (serve/http_explorer.py, serve/static/explorer.html) over a real socket: the page
at GET / is self-contained and inserts text, never HTML; the JSON it reads answers for known ids
and names the field of an unknown one. The page's script itself runs in Node.js over a stand-in
DOM against the server (tests/serve/explorer_harness.js), where Node.js is installed."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from serve import read_bundle, update_items
from serve.http import create_app
from tests.serve.conftest import Server

HARNESS = Path(__file__).with_name("explorer_harness.js")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
EVIL = '<script>alert("x")</script> & <b>bold</b>'  # a title that is markup


@pytest.fixture(scope="module")
def ids(bundle_dir):
    bundle = read_bundle(bundle_dir)
    return bundle.users["user_id"].to_list(), bundle.items["item_id"].to_list()


def page_script(html: str) -> str:
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    return script


def run_page(server: Server, query: str = "") -> dict:
    """What the page shows after loading `/{query}` (explorer_harness.js)."""
    done = subprocess.run(
        [NODE, str(HARNESS), server.url, query], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the page ---------------------------------------------------------------------------------
def test_the_page_is_served_self_contained(server):
    with server.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert "<title>twotower explorer</title>" in html
    # Nothing from elsewhere: no absolute URL at all, no script or stylesheet file, no import.
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html)
    assert not re.search(r"<script\s[^>]*src|<link\s[^>]*stylesheet|@import|url\(", html)
    # Only the page's own inline script may run, and it may only ask this server.
    policy = response.headers["content-security-policy"]
    digest = hashlib.sha256(page_script(html).encode()).digest()
    assert f"script-src 'sha256-{base64.b64encode(digest).decode()}';" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_the_page_inserts_text_never_html(server):
    with server.client() as client:
        script = page_script(client.get("/").text)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "document.createTextNode(String(child))" in script  # how `el` and `fill` insert text
    for path in ("/recommend", "/user-history", "/similar-items", "/examples", "/readyz"):
        assert f'"{path}"' in script, path  # the routes the page asks, tested below


# -- the JSON it reads ------------------------------------------------------------------------
def test_user_history_is_the_stored_history_most_recent_first(server, recommender, ids):
    users, _ = ids
    user = users[3]
    row = recommender.user_index(user)
    stored = recommender.bundle.users["history"][row].to_list()  # item rows, oldest first
    with server.client() as client:
        response = client.post("/user-history", json={"user_id": user})
        as_text = client.post("/user-history", json={"user_id": str(user)})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == user and body["version"] == "v000001"
    assert body["items"] == [
        {"item_id": recommender.item_id_list[r], "title": recommender.titles[r]}
        for r in reversed(stored)
    ]
    assert as_text.json()["items"] == body["items"]  # ids as strings are coerced


def test_examples_are_known_users_and_the_most_seen_items(server, recommender, ids):
    users, _ = ids
    with server.client() as client:
        body = client.get("/examples").json()
        assert body["version"] == "v000001" and body["user_ids"] == users[:20]
        top = recommender.catalogue.popular_order[:20]
        assert [i["item_id"] for i in body["items"]] == [recommender.item_id_list[r] for r in top]
        assert all(
            i["title"] == recommender.titles[r] for i, r in zip(body["items"], top, strict=True)
        )
        # Each example is answered by the routes the page asks.
        user, item = body["user_ids"][0], body["items"][0]["item_id"]
        assert client.post("/user-history", json={"user_id": user}).status_code == 200
        explained = client.post("/recommend", json={"user_id": user, "explain": True}).json()
        assert explained["source"] == "model" and "because" in explained["items"][0]
        similar = client.post("/similar-items", json={"item_id": item, "k": 5})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 5


@pytest.mark.parametrize(
    ("path", "body", "kind", "field"),
    [
        ("/user-history", {"user_id": "ghost"}, "user", "user_id"),
        ("/user-history", {"user_id": -1}, "user", "user_id"),
        ("/similar-items", {"item_id": "ghost"}, "item", "item_id"),
        ("/recommend", {"user_id": "ghost", "explain": True}, "user", "user_id"),
    ],
)
def test_unknown_ids_get_404_naming_the_field(server, path, body, kind, field):
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 404
    answer = response.json()
    assert answer["kind"] == kind and answer["field"] == field
    assert answer["id"] == body[field] and f"unknown {kind} id" in answer["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "user_id"), ({"user_id": None}, "user_id"), ({"user_id": 1, "k": 5}, "k")],
)
def test_a_bad_user_history_body_gets_422_naming_the_field(server, body, field):
    with server.client() as client:
        response = client.post("/user-history", json=body)
    assert response.status_code == 422
    assert {tuple(e["loc"][:2]) for e in response.json()["detail"]} == {("body", field)}


def test_openapi_documents_the_json_and_not_the_page(server):
    with server.client() as client:
        document = client.get("/openapi.json").json()
        paths = document["paths"]
        assert "/" not in paths and "get" in paths["/examples"]
        operation = paths["/user-history"]["post"]
        assert set(operation["responses"]) == {"200", "404", "413", "422", "503"}
        example = operation["requestBody"]["content"]["application/json"]["example"]
        assert client.post("/user-history", json=example).status_code == 200


# -- the page's script, run against the server ------------------------------------------------
@needs_node
def test_the_page_shows_a_users_history_recommendations_and_an_items_neighbours(
    server, recommender, ids
):
    users, items = ids
    user, item = users[5], items[7]
    shown = run_page(server, f"?user={user}&item={item}")["shown"]
    assert shown["bundle"]["text"] == f"bundle v000001, {recommender.num_active} items"
    assert len(shown["user-ids"]["children"]) == 20  # users to pick from
    assert shown["user-error"]["hidden"] and not shown["user-result"]["hidden"]
    assert "model" in shown["user-source"]["text"]
    history = recommender.user_history(user)
    assert shown["history"]["children"] == [f"{h.title}{h.item_id}" for h in history]
    recs = recommender.recommend(user, 10, explain=True)
    rows = shown["recs"]["children"]
    assert len(rows) == 10
    for i, (row, rec) in enumerate(zip(rows, recs, strict=True)):
        assert row.startswith(f"{i + 1}{rec.title}{rec.item_id}{rec.score:.4f}")
        assert all(b.title in row for b in rec.because)
    similar = recommender.similar_items(item, 10)
    assert not shown["item-result"]["hidden"]
    assert shown["similar-title"]["text"] == f"Nearest to {recommender.titles[7]}{item}"
    assert shown["similar"]["children"] == [
        f"{i + 1}{s.title}{s.item_id}{s.score:.4f}" for i, s in enumerate(similar)
    ]


@needs_node
def test_the_page_shows_the_error_of_an_unknown_id(server):
    shown = run_page(server, "?user=ghost&item=nothing")["shown"]
    assert not shown["user-error"]["hidden"] and shown["user-result"]["hidden"]
    assert shown["user-error"]["text"] == (
        "unknown user id 'ghost': not one of the bundle's 200 users (field user_id)"
    )
    assert not shown["item-error"]["hidden"] and shown["item-result"]["hidden"]
    assert "unknown item id 'nothing'" in shown["item-error"]["text"]
    assert shown["item-error"]["text"].endswith("(field item_id)")


@needs_node
def test_the_page_names_the_serving_path_of_a_given_history(server, recommender, ids):
    _, items = ids
    given = items[10:13]  # oldest first
    shown = run_page(server, f"?user=someone-new&history={','.join(map(str, given))}")["shown"]
    assert shown["user-error"]["hidden"] and not shown["user-result"]["hidden"]
    assert shown["user-source"]["text"].startswith("served by history")
    assert shown["history-title"]["text"] == "History given (most recent first)"
    rows = shown["history"]["children"]
    assert len(rows) == 3 and all(
        row.endswith(str(i)) for row, i in zip(rows, given[::-1], strict=True)
    )
    recs = recommender.recommend("someone-new", 10, history=given)
    assert len(shown["recs"]["children"]) == len(recs) == 10
    assert all(
        f"{r.title}{r.item_id}" in row
        for r, row in zip(recs, shown["recs"]["children"], strict=True)
    )


@pytest.fixture(scope="module")
def markup_title_server(bundle_dir, ids, tmp_path_factory):
    """The session bundle with the most recent history item of user 0 titled `EVIL`."""
    users, _ = ids
    bundle = read_bundle(bundle_dir)
    row = bundle.users["history"][0].to_list()[-1]
    path = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("markup") / "bundle"))
    retitled = bundle.items[row].select("item_id", "genres", "year")
    update_items(path, upsert=retitled.with_columns(pl.lit(EVIL).alias("title")))
    with Server(create_app(path)) as running:
        yield running, users[0], bundle.items["item_id"][row]


def test_a_markup_title_comes_back_as_data(markup_title_server):
    server, user, item = markup_title_server
    with server.client() as client:
        history = client.post("/user-history", json={"user_id": user}).json()
    assert history["items"][0] == {"item_id": item, "title": EVIL}


@needs_node
def test_a_markup_title_is_shown_as_text(markup_title_server):
    server, user, item = markup_title_server
    page = run_page(server, f"?user={user}&item={item}")
    assert page["shown"]["history"]["children"][0] == f"{EVIL}{item}"
    assert page["shown"]["similar-title"]["text"] == f"Nearest to {EVIL}{item}"
    assert EVIL in page["texts"]  # inserted as one text node
    assert set(page["created"]) <= {"button", "li", "option", "span", "td", "tr"}
