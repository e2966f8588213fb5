"""The HTTP service: a FastAPI app that is thin glue over `Recommender`.

    python -m serve http --bundle runs/ml/bundle --host 127.0.0.1 --port 8000

    POST /recommend          {"user_id": 42, "k": 10, "exclude_seen": true, "history": [...],
                              "exclude": [...], "filters": {"genres": "Comedy"}}
    POST /recommend/batch    {"user_ids": [42, 7], "k": 10, ...}
    POST /similar-items      {"item_id": 318, "k": 10, "filters": {...}}
    GET  /healthz            the process answers
    GET  /readyz             a bundle is loaded (503 before)
    GET  /metrics            Prometheus text: request counts and latency histograms
    POST /admin/reload       load the bundle version CURRENT names now, if it is new
    GET  /docs, /openapi.json

Errors are answered by their type (`error_response`), never by their message: a body that does
not fit the request model or a `RequestError` from the recommender is a 422 naming the field
(`{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}], "message": ...}`), an
`UnknownIdError` a 404 naming the id and its field, no bundle yet a 503; any other error is a
500 for that request only. Plain `/recommend` requests (a user id, k, exclude_seen) take a fast
lane past FastAPI's routing and response layers (`FastLane`); everything else, and every request
the lane cannot answer, goes through the FastAPI app, which owns all error responses.
Reloading builds the new `Recommender` on the side and then swaps one reference: a request holds
the recommender it started with, so in-flight requests finish on the old version and none is
dropped. With `watch_seconds`, the app also polls CURRENT and reloads by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.bundle import current_version
from serve.errors import BundleError, RequestError, UnknownIdError
from serve.recommender import Recommendations, Recommender

log = logging.getLogger(__name__)

RawId = int | str
FilterValue = int | float | str | bool | list[int | float | str | bool]
K = Annotated[int, Field(ge=1, le=10_000, description="number of results")]
MAX_BATCH = 4096
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
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/reload",
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user_id: RawId
    k: K = 10
    exclude_seen: bool = True
    history: list[RawId] | None = Field(
        None, description="raw item ids, oldest first (users unseen in training)"
    )
    exclude: list[RawId] | None = Field(None, description="raw item ids never to return")
    filters: dict[str, FilterValue] | None = Field(
        None, description='item attributes, e.g. {"genres": "Comedy"}'
    )

    @property
    def plain(self) -> bool:
        """A known user's id, k and exclude_seen only: what the Batcher coalesces."""
        return self.history is None and self.exclude is None and not self.filters


class BatchRecommendRequest(_Body):
    user_ids: list[RawId] = Field(min_length=1, max_length=MAX_BATCH)
    k: K = 10
    exclude_seen: bool = True
    histories: list[list[RawId] | None] | None = None
    exclude: list[RawId] | None = None
    filters: dict[str, FilterValue] | None = None


class SimilarItemsRequest(_Body):
    item_id: RawId
    k: K = 10
    filters: dict[str, FilterValue] | None = None


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

    The lane parses with the route's own `_parse` and only ever answers 200s. A request it
    cannot answer (invalid body, no bundle yet, an unknown user, any error) is handed to the
    FastAPI app with its body replayed, whose handlers (`error_response`) answer every error:
    the lane and the route cannot disagree on one."""

    def __init__(self, app, service: Service, batcher: Batcher):
        self.app, self.service, self.batcher = app, service, batcher

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/recommend" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        raw = await _read_body(receive)
        if raw is None:  # the client went away
            return
        try:
            body = _parse(RecommendRequest, raw)
            recommender = self.service.recommender
            if recommender is None or not body.plain:
                raise LookupError("not for the fast lane")
            recs = await self.batcher.submit(recommender, body.user_id, body.k, body.exclude_seen)
        except Exception:
            return await self.app(scope, _replay(raw, receive), send)
        payload = orjson.dumps(_recommend_payload(body.user_id, recommender, recs))
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


async def _read_body(receive) -> bytes | None:
    """The whole body of an ASGI request, or None when the client disconnects first."""
    raw, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        raw += message.get("body", b"")
        more = message.get("more_body", False)
    return raw


def _replay(raw: bytes, receive):
    """An ASGI `receive` that yields the already-read body once, then defers to `receive`."""
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


class Service:
    """The recommender being served and how to replace it."""

    def __init__(
        self,
        bundle: str | Path,
        cold_start: str = "history",
        device: str | None = None,
        cache_user_vectors: bool | None = None,
    ):
        self.path = Path(bundle)
        self.cold_start, self.device, self.cache_user_vectors = (
            cold_start,
            device,
            cache_user_vectors,
        )
        self.recommender: Recommender | None = None
        self._lock = threading.Lock()  # one reload at a time

    def load(self) -> Recommender:
        return Recommender.load(self.path, self.cold_start, self.device, self.cache_user_vectors)

    def reload(self, force: bool = False) -> dict:
        """Load the version CURRENT names, if it differs from the one served (or `force`)."""
        with self._lock:
            previous = None if self.recommender is None else self.recommender.version
            if (
                not force
                and self.recommender is not None
                and current_version(self.path) == previous
            ):
                return {"reloaded": False, "version": previous, "previous": previous}
            recommender = self.load()
            # One reference swap: requests in flight keep the recommender they started with.
            self.recommender = recommender
            # The bundle's long-lived objects need no cyclic GC: keep them out of its scans
            # (shorter pauses in the request path). Unfreeze first, so a replaced bundle is freed.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            return {"reloaded": True, "version": recommender.version, "previous": previous}


def _request_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of an endpoint that parses `model` itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    """`raw` JSON validated as `model` by pydantic-core directly (FastAPI's dependency solving
    costs more than the recommendation on the hot path); the one parser of the routes and the
    fast lane. Errors are `RequestValidationError`s located in the body (422s naming the field)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *e.get("loc", ()))}
                for e in err.errors(include_url=False, include_context=False)
            ]
        ) from None


def _items(recs: Recommendations) -> list[dict]:
    return [{"item_id": r.item_id, "score": r.score, "title": r.title} for r in recs]


def _recommend_payload(user_id, recommender: Recommender, recs: Recommendations) -> dict:
    return {
        "user_id": user_id,
        "source": recs.source,
        "version": recommender.version,
        "items": _items(recs),
    }


def _json(payload, status_code: int = 200) -> Response:
    """A JSON response serialised by orjson (the same bytes the fast lane sends)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


# -- errors: the answer is chosen by the exception's type, never by its message ----------------
def _unprocessable(errors: list[dict]) -> Response:
    """422 with FastAPI's body: one `{"loc": ["body", field, ...], "msg", "type"}` per error."""
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or "body" for e in errors)
    return _json({"detail": errors, "message": f"invalid request: {fields}"}, 422)


def _invalid_body(err: RequestValidationError) -> Response:
    return _unprocessable(
        [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in err.errors()
        ]
    )


def _invalid_value(err: RequestError) -> Response:
    return _unprocessable([{"loc": ["body", err.field], "msg": str(err), "type": "value_error"}])


def _unknown_id(err: UnknownIdError) -> Response:
    body = {"detail": str(err), "kind": err.kind, "id": err.raw_id, "field": err.field}
    return _json(body, 404)


def _not_ready(err: BundleError) -> Response:
    return _json({"detail": str(err)}, 503)


ERROR_ANSWERS: dict[type[Exception], Callable[[Any], Response]] = {
    RequestValidationError: _invalid_body,  # the body does not fit the request model
    RequestError: _invalid_value,  # the recommender rejects a field's value
    UnknownIdError: _unknown_id,
    BundleError: _not_ready,  # no bundle loaded yet
}


def error_response(err: Exception) -> Response | None:
    """The HTTP answer to an error raised while answering a request, by the nearest of its
    types in `ERROR_ANSWERS`; None for any other error (which is a 500)."""
    for cls in type(err).__mro__:
        answer = ERROR_ANSWERS.get(cls)
        if answer is not None:
            return answer(err)
    return None


def _add_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, err: Exception) -> Response:
        return error_response(err)

    for cls in ERROR_ANSWERS:
        app.add_exception_handler(cls, handle)


# -- routes ----------------------------------------------------------------------------------
def _ready(service: Service) -> Recommender:
    recommender = service.recommender
    if recommender is None:
        raise BundleError("no bundle loaded yet")
    return recommender


def _add_recommend_routes(app: FastAPI, service: Service, batcher: Batcher) -> None:
    """POST /recommend and /recommend/batch: parse the body, ask the recommender, answer."""

    @app.post("/recommend", openapi_extra=_request_body(RecommendRequest))
    async def recommend(request: Request):
        body = _parse(RecommendRequest, await request.body())
        recommender = _ready(service)
        if body.plain:
            recs = await batcher.submit(recommender, body.user_id, body.k, body.exclude_seen)
        else:
            recs = recommender.recommend(
                body.user_id,
                body.k,
                body.exclude_seen,
                history=body.history,
                exclude=body.exclude,
                filters=body.filters,
            )
        return _json(_recommend_payload(body.user_id, recommender, recs))

    @app.post("/recommend/batch", openapi_extra=_request_body(BatchRecommendRequest))
    async def recommend_batch(request: Request):
        body = _parse(BatchRecommendRequest, await request.body())
        recommender = _ready(service)
        results = recommender.recommend_many(
            body.user_ids,
            body.k,
            body.exclude_seen,
            histories=body.histories,
            exclude=body.exclude,
            filters=body.filters,
        )
        return _json(
            {
                "version": recommender.version,
                "results": [
                    {"user_id": u, "source": recs.source, "items": _items(recs)}
                    for u, recs in zip(body.user_ids, results, strict=True)
                ],
            }
        )


def _add_similar_items_route(app: FastAPI, service: Service) -> None:
    @app.post("/similar-items", openapi_extra=_request_body(SimilarItemsRequest))
    async def similar_items(request: Request):
        body = _parse(SimilarItemsRequest, await request.body())
        recommender = _ready(service)
        recs = recommender.similar_items(body.item_id, body.k, filters=body.filters)
        return _json(
            {"item_id": body.item_id, "version": recommender.version, "items": _items(recs)}
        )


def _add_ops_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """GET /healthz, /readyz, /metrics and POST /admin/reload."""

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        recommender = service.recommender
        if recommender is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {
            "status": "ready",
            "version": recommender.version,
            "num_items": recommender.num_active,
        }

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload():
        try:
            return await _reload(service, metrics)
        except (BundleError, OSError, ValueError) as err:
            served = None if service.recommender is None else service.recommender.version
            return JSONResponse(
                {"detail": f"reload failed: {err}", "version": served}, status_code=409
            )


# -- loading and reloading -------------------------------------------------------------------
async def _reload(service: Service, metrics: Metrics) -> dict:
    """`service.reload()` off the event loop, counted and logged; a failure keeps the old one."""
    try:
        result = await asyncio.to_thread(service.reload)
    except (BundleError, OSError, ValueError) as err:
        metrics.reloads.labels("failed").inc()
        log.error("reload failed, still serving %s: %s", service.recommender.version, err)
        raise
    if result["reloaded"]:
        metrics.reloads.labels("ok").inc()
        metrics.items.set(service.recommender.num_active)
        log.info("reloaded bundle %s (was %s)", result["version"], result["previous"])
    return result


async def _watch(service: Service, metrics: Metrics, seconds: float) -> None:
    """Reload whenever CURRENT names a new version, checking every `seconds`."""
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(Exception):
            await _reload(service, metrics)


def _lifespan(service: Service, metrics: Metrics, watch_seconds: float | None):
    """The app's lifespan: load the bundle at startup; with `watch_seconds`, watch CURRENT."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(service.reload, True)
        metrics.items.set(service.recommender.num_active)
        watcher = None
        if watch_seconds:
            watcher = asyncio.create_task(_watch(service, metrics, watch_seconds))
        yield
        if watcher is not None:
            watcher.cancel()

    return lifespan


def create_app(
    bundle: str | Path,
    cold_start: str = "history",
    device: str | None = None,
    watch_seconds: float | None = None,
    cache_user_vectors: bool | None = None,
) -> FastAPI:
    """The app over the bundle at `bundle` (loaded at startup; /readyz says when)."""
    service = Service(bundle, cold_start, device, cache_user_vectors)
    metrics = Metrics()
    app = FastAPI(
        title="twotower",
        summary="Two-tower retrieval: the nearest items to a user in the shared space.",
        lifespan=_lifespan(service, metrics, watch_seconds),
    )
    app.state.service = service
    batcher = Batcher()
    # Starlette nests the last added outermost: metrics count and time the fast lane's answers.
    app.add_middleware(FastLane, service=service, batcher=batcher)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app)
    _add_recommend_routes(app, service, batcher)
    _add_similar_items_route(app, service)
    _add_ops_routes(app, service, metrics)
    return app


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    cold_start: str = "history",
    device: str | None = None,
    watch_seconds: float | None = None,
    log_level: str = "info",
    cache_user_vectors: bool | None = None,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(bundle, cold_start, device, watch_seconds, cache_user_vectors)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
