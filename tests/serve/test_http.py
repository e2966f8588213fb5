"""serve/http.py over a real socket (and in process over a stand-in recommender): every status
case, errors answered by type alike in the fast lane and the routes, metrics, reload under load.
The lane and the batcher on their own: test_http_lane.py; limits and the admin token:
test_http_limits.py."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import polars as pl
import pytest

from serve import read_bundle, update_items
from serve.errors import RequestError, UnknownItemError
from serve.http import create_app
from tests.serve.conftest import Server

ADMIN = {"Authorization": "Bearer test-admin-token"}  # /admin/* needs the app's admin token


@pytest.fixture(scope="module")
def ids(bundle_dir):
    bundle = read_bundle(bundle_dir)
    return bundle.users["user_id"].to_list(), bundle.items["item_id"].to_list()


def test_recommend(server, ids):
    users, _ = ids
    with server.client() as client:
        response = client.post("/recommend", json={"user_id": users[0], "k": 7})
        assert response.status_code == 200
        body = response.json()
        assert (
            body["user_id"] == users[0]
            and body["source"] == "model"
            and body["version"] == "v000001"
        )
        assert len(body["items"]) == 7 and set(body["items"][0]) == {"item_id", "score", "title"}
        # Raw ids given as strings are coerced to the bundle's id type.
        assert (
            client.post("/recommend", json={"user_id": str(users[0]), "k": 7}).json()["items"]
            == body["items"]
        )


def test_recommend_with_filters_history_and_batch(server, ids):
    users, items = ids
    with server.client() as client:
        cold = client.post(
            "/recommend", json={"user_id": "someone-new", "k": 5, "history": items[:3]}
        ).json()
        assert cold["source"] == "history" and len(cold["items"]) == 5
        excluded = client.post(
            "/recommend", json={"user_id": users[1], "k": 5, "exclude": items[:50]}
        ).json()
        assert not {i["item_id"] for i in excluded["items"]} & set(items[:50])
        genre = read_bundle(server_bundle(server)).items["genres"][0][0]
        filtered = client.post(
            "/recommend", json={"user_id": users[1], "k": 5, "filters": {"genres": [genre]}}
        )
        assert filtered.status_code == 200 and len(filtered.json()["items"]) == 5
        batch = client.post("/recommend/batch", json={"user_ids": users[:4], "k": 3}).json()
        assert [r["user_id"] for r in batch["results"]] == users[:4]
        single = client.post("/recommend", json={"user_id": users[2], "k": 3}).json()
        # Same items; scores equal up to float rounding (one batched tower call vs one per user).
        assert [i["item_id"] for i in batch["results"][2]["items"]] == [
            i["item_id"] for i in single["items"]
        ]
        assert [i["score"] for i in batch["results"][2]["items"]] == pytest.approx(
            [i["score"] for i in single["items"]], abs=1e-5
        )
        similar = client.post("/similar-items", json={"item_id": items[0], "k": 4}).json()
        assert len(similar["items"]) == 4 and items[0] not in {
            i["item_id"] for i in similar["items"]
        }


def server_bundle(server: Server) -> Path:
    return server.server.config.app.state.service.path


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"user_id": 1, "k": 0}, "k"),
        ("/recommend", {"user_id": 1, "k": "many"}, "k"),
        ("/recommend", {"k": 5}, "user_id"),
        ("/recommend", {"user_id": 1, "colour": "red"}, "colour"),
        ("/recommend", {"user_id": 1, "filters": {"colour": "red"}}, "filters"),
        ("/recommend", {"user_id": 1, "history": "not a list"}, "history"),
        ("/recommend/batch", {"user_ids": [], "k": 5}, "user_ids"),
        ("/similar-items", {"item_id": None}, "item_id"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(server, ids, path, body, field):
    users, _ = ids
    if body.get("user_id") == 1:
        body = {**body, "user_id": users[0]}
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_malformed_json_and_unknown_routes(server):
    with server.client() as client:
        response = client.post(
            "/recommend", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert client.get("/recommend").status_code == 405
        assert client.get("/nowhere").status_code == 404


def test_unknown_ids_get_404(server):
    with server.client() as client:
        user = client.post("/recommend", json={"user_id": "ghost", "k": 3})
        assert user.status_code == 404 and "unknown user id 'ghost'" in user.json()["detail"]
        assert user.json()["field"] == "user_id" and user.json()["id"] == "ghost"
        item = client.post("/similar-items", json={"item_id": -5, "k": 3})
        assert item.status_code == 404 and item.json()["kind"] == "item"
        assert item.json()["field"] == "item_id" and item.json()["id"] == -5
        history = client.post("/recommend", json={"user_id": "ghost", "history": ["nope"]})
        assert history.status_code == 404
        assert history.json() | {"detail": None} == {
            "detail": None,
            "kind": "item",
            "id": "nope",
            "field": "history",
        }
        batch = client.post("/recommend/batch", json={"user_ids": ["ghost"]})
        assert batch.status_code == 404


def test_request_error_from_the_recommender_is_a_422_naming_its_field(server, recommender, ids):
    """The recommender's own checks (here: a filter on a column the items lack, an exclude list
    with an unknown item) reach the client as the field and message the error carries."""
    users, _ = ids
    with pytest.raises(RequestError) as raised:
        recommender.recommend(users[0], 5, filters={"colour": "red"})
    with server.client() as client:
        response = client.post(
            "/recommend", json={"user_id": users[0], "filters": {"colour": "red"}}
        )
        unknown = client.post("/recommend", json={"user_id": users[0], "exclude": ["no-such"]})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"loc": ["body", "filters"], "msg": str(raised.value), "type": "value_error"}],
        "message": "invalid request: filters",
    }
    assert unknown.status_code == 404
    assert unknown.json()["field"] == "exclude" and unknown.json()["id"] == "no-such"


class _Raising:
    """A stand-in recommender whose every call raises `err`."""

    version = "stub"

    def __init__(self, err: Exception):
        self.err = err

    def recommend(self, *args, **kwargs):
        raise self.err

    recommend_many = similar_items = recommend


@pytest.mark.parametrize(
    ("err", "status", "body"),
    [
        (
            RequestError("exclude", ["x"], "is not what the stub wants"),
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "exclude"],
                        "msg": "exclude is not what the stub wants, got ['x']",
                        "type": "value_error",
                    }
                ],
                "message": "invalid request: exclude",
            },
        ),
        (
            UnknownItemError("x", 12, "history"),
            404,
            {
                "detail": "unknown item id 'x': not one of the bundle's 12 items",
                "kind": "item",
                "id": "x",
                "field": "history",
            },
        ),
        # An untyped ValueError is a fault of the server, whatever its message says.
        (ValueError("filters: looks like a field"), 500, "Internal Server Error"),
    ],
)
def test_errors_are_answered_by_type_alike_in_the_lane_and_the_route(tmp_path, err, status, body):
    """The status and body come from the error's type and attributes; a plain request (the fast
    lane's) and one with options (the FastAPI route's) are answered identically."""
    import asyncio

    app = create_app(tmp_path / "never-loaded")
    # In process and without the lifespan (nothing is loaded): the stub is the recommender.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def ask():
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            not_ready = await client.post("/recommend", json={"user_id": 1})
            app.state.service.recommender = _Raising(err)
            lane = await client.post("/recommend", json={"user_id": 1, "k": 3})
            route = await client.post("/recommend", json={"user_id": 1, "k": 3, "exclude": []})
            return not_ready, lane, route

    not_ready, lane, route = asyncio.run(ask())
    assert not_ready.status_code == 503 and not_ready.json() == {"detail": "no bundle loaded yet"}
    for response in (lane, route):
        assert response.status_code == status
        assert (response.json() if status != 500 else response.text) == body


def test_fast_lane_and_route_give_the_same_error_answers_over_http(server, ids):
    users, _ = ids
    with server.client() as client:
        for plain in ({"user_id": "ghost", "k": 3}, {"user_id": users[0], "k": 0}):
            lane = client.post("/recommend", json=plain)
            route = client.post("/recommend", json={**plain, "exclude": []})
            assert lane.status_code == route.status_code and lane.status_code in (404, 422)
            assert lane.json() == route.json()


def test_health_ready_docs_and_metrics(server, ids):
    users, _ = ids
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["version"] == "v000001"
        assert client.get("/openapi.json").json()["paths"].keys() >= {
            "/recommend",
            "/recommend/batch",
            "/similar-items",
        }
        assert client.get("/docs").status_code == 200
        client.post("/recommend", json={"user_id": users[0]})
        client.post("/recommend", json={"user_id": "ghost"})
        text = client.get("/metrics").text
    assert 'twotower_requests_total{route="/recommend",status="200"}' in text
    assert 'twotower_requests_total{route="/recommend",status="404"}' in text
    assert 'twotower_request_latency_seconds_bucket{le="0.005",route="/recommend"}' in text
    assert "twotower_request_latency_seconds_count" in text


def test_reload_under_load_drops_no_request(bundle_dir, tmp_path):
    """Clients hammer /recommend while a new version (one item removed) is written and the
    server reloads: every request succeeds, and after the reload the removed item is gone."""
    path = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    users = read_bundle(path).users["user_id"].to_list()
    stop = threading.Event()
    statuses: Counter = Counter()
    versions: list[list[str]] = [[] for _ in range(4)]  # per client, in its request order

    def client_loop(offset: int):
        with httpx.Client(base_url=running.url, timeout=10) as client:
            i = offset
            while not stop.is_set():
                response = client.post(
                    "/recommend", json={"user_id": users[i % len(users)], "k": 20}
                )
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[offset].append(response.json()["version"])
                i += 1

    with Server(create_app(path, admin_token="test-admin-token")) as running:
        threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        # The most recommended item, so the removal is visible.
        with httpx.Client(base_url=running.url) as client:
            top = client.post("/recommend", json={"user_id": users[0], "k": 1}).json()["items"][0][
                "item_id"
            ]
        update_items(path, remove=[top])
        with httpx.Client(base_url=running.url, timeout=30) as client:
            reload = client.post("/admin/reload", headers=ADMIN).json()
            assert reload == {"reloaded": True, "version": "v000002", "previous": "v000001"}
            again = client.post("/admin/reload", headers=ADMIN).json()
            assert again["reloaded"] is False  # nothing new
            time.sleep(0.3)
            stop.set()
            for thread in threads:
                thread.join()
            assert top not in {
                i["item_id"]
                for i in client.post("/recommend", json={"user_id": users[0], "k": 50}).json()[
                    "items"
                ]
            }
            metrics = client.get("/metrics").text
    assert set(statuses) == {200}, statuses
    for seen in versions:  # a client's next request starts after its previous one answered
        assert seen[0] == "v000001" and seen[-1] == "v000002"
        first_new = seen.index("v000002")
        assert set(seen[first_new:]) == {"v000002"}  # once switched, never back
    assert 'twotower_reloads_total{outcome="ok"} 1.0' in metrics


def test_watcher_reloads_and_a_broken_version_keeps_the_old_one(bundle_dir, tmp_path):
    path = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    item = read_bundle(path).items["item_id"][0]
    app = create_app(path, watch_seconds=0.1, admin_token="test-admin-token")
    with Server(app) as running, running.client() as client:
        update_items(path, upsert=pl.DataFrame({"item_id": [424242]}))
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["version"] != "v000002":
            assert time.monotonic() < deadline, "the watcher did not reload"
            time.sleep(0.05)
        (path / "CURRENT").write_text("v000099\n")  # a pointer to nothing
        failed = client.post("/admin/reload", headers=ADMIN)
        assert failed.status_code == 409 and "v000099" in failed.json()["detail"]
        assert client.get("/readyz").json()["version"] == "v000002"
        assert client.post("/similar-items", json={"item_id": item, "k": 2}).status_code == 200
