"""The HTTP service: a FastAPI app that is thin glue over `Recommender`.

    python -m serve http --bundle runs/ml/bundle --host 127.0.0.1 --port 8000

    POST /recommend          {"user_id": 42, "k": 10, "exclude_seen": true, "history": [...],
                              "exclude": [...], "filters": {"genres": "Comedy"},
                              "explain": true}
    POST /recommend/batch    {"user_ids": [42, 7], "k": 10, ...}
    POST /similar-items      {"item_id": 318, "k": 10, "filters": {...}}
    GET  /                   the explorer page (serve/http_explorer.py: its JSON routes
                             POST /user-history and GET /examples)
    GET  /healthz            the process answers
    GET  /readyz             a bundle is loaded (503 before)
    GET  /metrics            Prometheus text: request counts and latency histograms
    POST /admin/reload       load the bundle version CURRENT names now, if it is new (with
                             `Authorization: Bearer <admin token>`; no token configured: 404)
    GET  /docs, /openapi.json

Errors are answered by their type (`error_response`), never by their message: a body that does
not fit the request model or a `RequestError` from the recommender is a 422 naming the field
(`{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}], "message": ...}`), an
`UnknownIdError` a 404 naming the id and its field, a body over `Limits.max_body_bytes` a 413
(from its Content-Length, before it is read, or while it streams), no bundle yet a 503; any
other error is a 500 for that request only. What a request may ask (k, the length of a history,
an exclude list, a batch) is bounded by `Limits`; a value past one is a 422 naming the field,
the value and the limit ("limit", "value" beside "loc"). Plain `/recommend` requests (a user
id, k, exclude_seen) take a fast lane past FastAPI's routing and response layers (`FastLane`,
serve/http_lane.py); everything else, and every request the lane cannot answer, goes through
the FastAPI app, which owns all error responses. Request bodies, limits and the error mapping
are in serve/http_messages.py; the OpenAPI document (the limits in the request models, every
answer's body a model, the served bundle's filter columns and example ids) in
serve/http_openapi.py.
Reloading builds the new `Recommender` on the side and then swaps one reference: a request holds
the recommender it started with, so in-flight requests finish on the old version and none is
dropped. With `watch_seconds`, the app also polls CURRENT and reloads by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.errors import BundleError
from serve.http_explorer import add_explorer_routes
from serve.http_lane import Batcher, FastLane, Metrics, MetricsMiddleware, read_body
from serve.http_messages import (
    ERROR_ANSWERS,
    Limits,
    Unauthorized,
    error_response,
    items_payload,
    json_response,
    openapi_body,
    parse,
    recommend_payload,
    request_models,
)
from serve.http_openapi import (
    BatchAnswer,
    Health,
    Loading,
    Ready,
    RecommendAnswer,
    ReloadAnswer,
    ReloadFailed,
    SimilarItemsAnswer,
    answers,
    install,
)
from serve.recommender import Recommender
from serve.versions import current_version

log = logging.getLogger(__name__)
ADMIN_TOKEN_ENV = "TWOTOWER_ADMIN_TOKEN"  # the admin token, when `serve` is given none


class Service:
    """The recommender being served and how to replace it."""

    def __init__(
        self,
        bundle: str | Path,
        cold_start: str = "history",
        device: str | None = None,
        cache_user_vectors: bool | None = None,
        verify: str = "full",
    ):
        self.path = Path(bundle)
        self.cold_start = cold_start
        self.device = device
        self.cache_user_vectors = cache_user_vectors
        self.verify = verify  # what each load checks of the bundle's files (Recommender.load)
        self.recommender: Recommender | None = None
        self._lock = threading.Lock()  # one reload at a time

    def load(self) -> Recommender:
        return Recommender.load(
            self.path, self.cold_start, self.device, self.cache_user_vectors, verify=self.verify
        )

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


def _add_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, err: Exception) -> Response:
        return error_response(err)

    for cls in ERROR_ANSWERS:
        app.add_exception_handler(cls, handle)


# -- routes ----------------------------------------------------------------------------------
def _ready(service: Service):
    recommender = service.recommender
    if recommender is None:
        raise BundleError("no bundle loaded yet")
    return recommender


def _add_recommend_routes(app: FastAPI, service: Service, batcher: Batcher, limits: Limits):
    """POST /recommend and /recommend/batch: read and parse the body, ask the recommender."""
    models = request_models(limits)

    @app.post(
        "/recommend",
        openapi_extra=openapi_body(models.recommend),
        responses=answers(RecommendAnswer, 404, 413, 422, 503),
    )
    async def recommend(request: Request):
        body = parse(models.recommend, await read_body(request, limits.max_body_bytes))
        recommender = _ready(service)
        if body.plain:
            recs = await batcher.submit(recommender, body.user_id, body.k, body.exclude_seen)
        else:
            recs = recommender.recommend(
                body.user_id,
                body.k,
                body.exclude_seen,
                history=body.history,
                features=body.features,
                exclude=body.exclude,
                filters=body.filters,
                explain=body.explain,
            )
        return json_response(recommend_payload(body.user_id, recommender, recs))

    @app.post(
        "/recommend/batch",
        openapi_extra=openapi_body(models.batch),
        responses=answers(BatchAnswer, 404, 413, 422, 503),
    )
    async def recommend_batch(request: Request):
        body = parse(models.batch, await read_body(request, limits.max_body_bytes))
        recommender = _ready(service)
        results = recommender.recommend_many(
            body.user_ids,
            body.k,
            body.exclude_seen,
            histories=body.histories,
            features=body.features,
            exclude=body.exclude,
            filters=body.filters,
            explain=body.explain,
        )
        return json_response(
            {
                "version": recommender.version,
                "results": [
                    {"user_id": u, "source": recs.source, "items": items_payload(recs)}
                    for u, recs in zip(body.user_ids, results, strict=True)
                ],
            }
        )


def _add_similar_items_route(app: FastAPI, service: Service, limits: Limits) -> None:
    model = request_models(limits).similar

    @app.post(
        "/similar-items",
        openapi_extra=openapi_body(model),
        responses=answers(SimilarItemsAnswer, 404, 413, 422, 503),
    )
    async def similar_items(request: Request):
        body = parse(model, await read_body(request, limits.max_body_bytes))
        recommender = _ready(service)
        recs = recommender.similar_items(body.item_id, body.k, filters=body.filters)
        return json_response(
            {"item_id": body.item_id, "version": recommender.version, "items": items_payload(recs)}
        )


def _add_ops_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """GET /healthz, /readyz, /metrics."""

    @app.get("/healthz", response_model=Health)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Loading}})
    async def readyz():
        recommender = service.recommender
        if recommender is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {
            "status": "ready",
            "version": recommender.version,
            "num_items": recommender.num_active,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# `Authorization: Bearer <token>` of a request (None without one), and the scheme in OpenAPI.
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Security(HTTPBearer(auto_error=False, description="the admin token (--admin-token)")),
]


def _admin_guard(token: str):
    """A dependency that lets a request pass only with `Authorization: Bearer <token>`, compared
    in constant time; anything else is `Unauthorized` (401 with WWW-Authenticate)."""
    expected = token.encode()

    async def guard(credentials: BearerCredentials) -> None:
        if credentials is None:
            raise Unauthorized("admin routes need Authorization: Bearer <admin token>")
        # Starlette decodes headers as latin-1: these are the bytes the client sent.
        if not hmac.compare_digest(credentials.credentials.encode("latin-1"), expected):
            raise Unauthorized("wrong admin token")

    return guard


def _add_admin_routes(app: FastAPI, service: Service, metrics: Metrics, token: str | None):
    """POST /admin/reload, behind the admin token; without a token there are no admin routes
    (404), so a reachable port is never enough to reload."""
    if not token:
        return

    @app.post(
        "/admin/reload",
        dependencies=[Security(_admin_guard(token))],
        response_model=ReloadAnswer,
        responses={**answers(None, 401), 409: {"model": ReloadFailed}},
    )
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
    limits: Limits | None = None,
    admin_token: str | None = None,
    *,
    verify: str = "full",
) -> FastAPI:
    """The app over the bundle at `bundle` (loaded at startup; /readyz says when). `limits`:
    what one request may ask (default `Limits()`); `admin_token`: the bearer token of /admin/*
    (None: no admin routes); `verify`: what every load and reload checks of the bundle's files
    ("full", "size", "off"; serve.files)."""
    limits = limits or Limits()
    service = Service(bundle, cold_start, device, cache_user_vectors, verify)
    metrics = Metrics()
    app = FastAPI(
        title="twotower",
        summary="Two-tower retrieval: the nearest items to a user in the shared space.",
        lifespan=_lifespan(service, metrics, watch_seconds),
    )
    app.state.service, app.state.limits = service, limits
    batcher = Batcher()
    # Starlette nests the last added outermost: metrics count and time the fast lane's answers.
    app.add_middleware(FastLane, service=service, batcher=batcher, limits=limits)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app)
    _add_recommend_routes(app, service, batcher, limits)
    _add_similar_items_route(app, service, limits)
    add_explorer_routes(app, lambda: _ready(service), limits)
    _add_ops_routes(app, service, metrics)
    _add_admin_routes(app, service, metrics, admin_token)
    install(app, service)  # the OpenAPI document of the bundle served
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
    limits: Limits | None = None,
    admin_token: str | None = None,
    *,
    verify: str = "full",
) -> None:
    """Run the app with uvicorn until interrupted. `admin_token` defaults to the environment's
    TWOTOWER_ADMIN_TOKEN (neither: the admin routes are off)."""
    import uvicorn

    admin_token = admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    app = create_app(
        bundle,
        cold_start,
        device,
        watch_seconds,
        cache_user_vectors,
        limits,
        admin_token,
        verify=verify,
    )
    log.info("admin routes %s", "on (bearer token)" if admin_token else "off (no admin token)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
