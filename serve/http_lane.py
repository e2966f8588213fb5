"""The service's hot path, in pure ASGI: the fast lane for plain `POST /recommend` requests
(`FastLane`), the batcher that coalesces them into one `recommend_many` call (`Batcher`), and
the middleware that counts and times every request (`MetricsMiddleware`, `Metrics`).

The lane only ever answers 200s; every request it cannot answer goes to the FastAPI app
(serve/http.py) with its body replayed, and the app owns every error response, a body over
`Limits.max_body_bytes` included (the lane stops reading it and hands it on)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serve.http_messages import (
    BodyTooLarge,
    Limits,
    parse,
    recommend_payload,
    request_models,
)
from serve.recommender import Recommender

if TYPE_CHECKING:
    from serve.http import Service

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
ROUTES = (
    "/recommend",
    "/recommend/batch",
    "/similar-items",
    "/user-history",
    "/examples",
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/reload",
)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "twotower_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "twotower_request_latency_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "twotower_reloads", "bundle reloads by outcome", ["outcome"], registry=self.registry
        )
        self.items = Gauge(
            "twotower_active_items", "items in the served index", registry=self.registry
        )


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every request (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, str(status[0])).inc()


class Batcher:
    """Coalesces plain /recommend requests that arrive together into one `recommend_many` call
    (one tower call, one FAISS search). A batch is flushed on the event loop's next turn, so a
    lone request waits for nothing; under load, every request parsed in the same turn shares
    the batch. A request joins a batch only of its own recommender (reloads stay clean)."""

    def __init__(self):
        self.pending: dict[tuple, tuple[Recommender, list, list]] = {}

    def submit(
        self, recommender: Recommender, user_id, k: int, exclude_seen: bool
    ) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        key = (id(recommender), k, exclude_seen)
        group = self.pending.get(key)
        if group is None:
            group = self.pending[key] = (recommender, [], [])
            loop.call_soon(self._flush, key)
        group[1].append(user_id)
        group[2].append(future)
        return future

    def _flush(self, key: tuple) -> None:
        recommender, user_ids, futures = self.pending.pop(key)
        _, k, exclude_seen = key
        try:
            results = recommender.recommend_many(user_ids, k, exclude_seen)
        except Exception:  # one bad id must not fail the others: answer each on its own
            for user_id, future in zip(user_ids, futures, strict=True):
                try:
                    future.set_result(recommender.recommend(user_id, k, exclude_seen))
                except Exception as err:
                    future.set_exception(err)
            return
        for future, result in zip(futures, results, strict=True):
            future.set_result(result)


class FastLane:
    """Pure ASGI: answers plain `POST /recommend` requests (known fields only; no history,
    exclude list or filters) without FastAPI's routing, exception and response layers, which
    cost about a third of the server's CPU per request (py-spy, 32 clients, 100k items).

    The lane parses with the routes' own `parse` and only ever answers 200s. A request it
    cannot answer (invalid body, no bundle yet, an unknown user, any error) is handed to the
    FastAPI app with its body replayed, whose handlers (`error_response`) answer every error:
    the lane and the route cannot disagree on one. A body over `limits.max_body_bytes` is
    handed on as soon as a message shows it (by the bytes so far, or by its Content-Length
    while more is coming), unread past that: the route's `read_body` answers 413. On the hot
    path (a body in one message) the limit costs one integer comparison."""

    def __init__(self, app, service: Service, batcher: Batcher, limits: Limits | None = None):
        limits = limits or Limits()
        self.app, self.service, self.batcher = app, service, batcher
        self.model, self.max_body_bytes = request_models(limits).recommend, limits.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/recommend" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        read = await _read_body(scope, receive, self.max_body_bytes)
        if read is None:  # the client went away
            return
        raw, more = read
        if more or len(raw) > self.max_body_bytes:  # over the limit: the app answers 413
            return await self.app(scope, _replay(raw, receive, more), send)
        try:
            body = parse(self.model, raw)
            recommender = self.service.recommender
            if recommender is None or not body.plain:
                raise LookupError("not for the fast lane")
            recs = await self.batcher.submit(recommender, body.user_id, body.k, body.exclude_seen)
        except Exception:
            return await self.app(scope, _replay(raw, receive), send)
        payload = orjson.dumps(recommend_payload(body.user_id, recommender, recs))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


async def _read_body(scope, receive, limit: int) -> tuple[bytes, bool] | None:
    """(body, more) of an ASGI request, or None when the client disconnects first. Reading stops
    early (more: True) once the body is over `limit` bytes, or is still coming and its
    Content-Length says it will be; a body in one message (the hot path) is returned as it came."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    raw, more = message.get("body", b""), message.get("more_body", False)
    while more and len(raw) <= limit and content_length(scope) <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return None
        raw += message.get("body", b"")
        more = message.get("more_body", False)
    return raw, more


def content_length(scope) -> int:
    """The request's Content-Length, or -1 when it has none (chunked) or an unreadable one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return -1


def _replay(raw: bytes, receive, more_body: bool = False):
    """An ASGI `receive` that yields the already-read body once (`more_body`: with more of it
    still to come), then defers to `receive`."""
    pending = [{"type": "http.request", "body": raw, "more_body": more_body}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def read_body(request, limit: int) -> bytes:
    """A Starlette request's whole body (the routes' reader), or `BodyTooLarge` as soon as its
    Content-Length, or the bytes streamed so far (chunked), pass `limit`."""
    if content_length(request.scope) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
