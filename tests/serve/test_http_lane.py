"""serve/http_lane.py: the batcher coalesces one turn's requests; the fast lane answers plain
/recommend bodies itself and hands everything else (a body over the limit included, read no
further than it must) to the app unchanged; its answers are the app's."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve import read_bundle
from serve.http_lane import Batcher, FastLane
from serve.http_messages import Limits


@pytest.fixture(scope="module")
def ids(bundle_dir):
    bundle = read_bundle(bundle_dir)
    return bundle.users["user_id"].to_list(), bundle.items["item_id"].to_list()


def test_batcher_coalesces_requests_of_one_turn(recommender):
    """Requests submitted in the same event-loop turn share one recommend_many call; a bad id
    among them fails only its own request."""
    from serve import UnknownUserError

    users = read_bundle(recommender.bundle.path).users["user_id"].to_list()[:6]
    calls = []
    original = recommender.recommend_many

    def counted(user_ids, *args, **kwargs):
        calls.append(list(user_ids))
        return original(user_ids, *args, **kwargs)

    async def run(ids):
        batcher = Batcher()
        futures = [batcher.submit(recommender, u, 5, True) for u in ids]
        return await asyncio.gather(*futures, return_exceptions=True)

    recommender.recommend_many = counted
    try:
        results = asyncio.run(run(users))
        assert calls == [users]
        assert [[r.item_id for r in recs] for recs in results] == [
            [r.item_id for r in original([u], 5)[0]] for u in users
        ]
        calls.clear()
        mixed = asyncio.run(run([users[0], "ghost", users[1]]))
        assert isinstance(mixed[1], UnknownUserError)
        assert [r.item_id for r in mixed[2]] == [r.item_id for r in original([users[1]], 5)[0]]
    finally:
        del recommender.recommend_many


def test_fast_lane_answers_plain_requests_and_hands_the_rest_to_the_app(recommender):
    """Plain /recommend bodies are answered by the lane (the app never sees them); invalid ones,
    unknown users and requests with options reach the app with the body unchanged."""
    user = read_bundle(recommender.bundle.path).users["user_id"][0]
    service = type("S", (), {"recommender": recommender})()
    seen_by_app = []

    async def app(scope, receive, send):
        message = await receive()
        seen_by_app.append((scope["path"], message["body"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    lane = FastLane(app, service, Batcher())

    async def call(path, body: bytes, method="POST"):
        chunks = [body[:3], body[3:]]  # the body arrives in two messages
        sent = []

        async def receive():
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": path, "method": method}
        await lane(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    plain = json.dumps({"user_id": user, "k": 4}).encode()
    status, body = asyncio.run(call("/recommend", plain))
    expected = recommender.recommend(user, 4)
    answer = json.loads(body)
    assert status == 200 and seen_by_app == []
    assert [i["item_id"] for i in answer["items"]] == [r.item_id for r in expected]
    assert answer["source"] == expected.source and answer["user_id"] == user
    for other in (
        b'{"user_id": 1, "k": 0}',  # invalid: the app names the field
        json.dumps({"user_id": "ghost", "k": 4}).encode(),  # unknown: the app answers 404
        json.dumps({"user_id": user, "k": 4, "exclude": []}).encode(),  # options
        b"{not json",
    ):
        assert asyncio.run(call("/recommend", other)) == (299, b"app")
        assert seen_by_app.pop() == ("/recommend", other)
    assert asyncio.run(call("/similar-items", plain)) == (299, b"app")


def test_fast_lane_and_app_answer_alike_over_http(server, ids):
    users, _ = ids

    def answered(client) -> float:
        prefix = 'twotower_requests_total{route="/recommend",status="200"}'
        text = client.get("/metrics").text
        return float(next(ln for ln in text.splitlines() if ln.startswith(prefix)).split()[-1])

    with server.client() as client:
        for user in users[:5]:
            lane = client.post("/recommend", json={"user_id": user, "k": 6})
            app = client.post("/recommend", json={"user_id": user, "k": 6, "exclude": []})
            assert lane.status_code == app.status_code == 200
            assert lane.json() == app.json()
            assert lane.headers["content-type"] == app.headers["content-type"]
        before = answered(client)
        for user in users[:3]:
            client.post("/recommend", json={"user_id": user, "k": 6})
        assert answered(client) == before + 3  # the lane's answers are counted


def test_the_lane_reads_a_body_no_further_than_the_limit(recommender):
    """A body in one message costs one receive; one over max_body_bytes, or still coming with a
    Content-Length over it, is handed to the app after the message that showed it, with what was
    read replayed and more to come (the app answers 413); the rest stays unread."""
    service = type("S", (), {"recommender": recommender})()
    user = read_bundle(recommender.bundle.path).users["user_id"][0]
    handed = []

    async def app(scope, receive, send):
        handed.append(await receive())
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    lane = FastLane(app, service, Batcher(), Limits(max_body_bytes=100))

    def call(chunks: list[bytes], headers=()) -> tuple[int, int]:
        """(status, messages received) of a POST /recommend whose body comes in `chunks`."""
        pending, sent = list(chunks), []

        async def receive():
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/recommend", "method": "POST", "headers": list(headers)}
        asyncio.run(lane(scope, receive, send))
        return sent[0]["status"], len(chunks) - len(pending)

    assert call([json.dumps({"user_id": user}).encode()]) == (200, 1)
    assert not handed
    assert call([b"x" * 60, b"x" * 60, b"x" * 60, b"x"]) == (413, 2)  # over after the second
    assert handed.pop() == {"type": "http.request", "body": b"x" * 120, "more_body": True}
    announced = [(b"content-length", b"181")]
    assert call([b"x" * 60, b"x" * 60, b"x" * 60, b"x"], announced) == (413, 1)
    assert handed.pop() == {"type": "http.request", "body": b"x" * 60, "more_body": True}
