"""What the HTTP service says on the wire: the limits of one request (`Limits`), the request
bodies it accepts (models built from the limits, validated by pydantic-core in one parser,
`parse`), the JSON it answers with, and the answer to each error, chosen by the error's type and
never by its message (`error_response`). serve/http_openapi.py documents every answer's body.

Used by the FastAPI routes (serve/http.py) and the fast lane (serve/http_lane.py) alike, so the
two cannot disagree on a body, a limit or an answer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any, NamedTuple

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.errors import BundleError, RequestError, UnknownIdError
from serve.recommender import Recommendations, Recommender


@dataclasses.dataclass(frozen=True)
class Limits:
    """The most one request may ask of the server (each a flag of `python -m serve http`). They
    bound the work a request can cause: at most max_batch x max_k results, max_history item ids
    per user run through the user tower, max_exclude item ids left out; max_body_bytes bounds
    everything else a body holds (filters, id strings). Past one: a 422 naming it (the body:
    413)."""

    max_k: int = 1000  # results per user (--max-k)
    max_history: int = 1000  # item ids in a history given with a request (--max-history)
    max_exclude: int = 10_000  # item ids in an exclude list (--max-exclude)
    max_batch: int = 1024  # users in one /recommend/batch request (--max-batch)
    max_body_bytes: int = 1 << 20  # bytes of a request body, 1 MiB (--max-body-bytes)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RequestError(field.name, value, "must be a positive integer")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Limits:
        """The limits named in `options` (e.g. `vars(args)` of the command line; None or absent:
        the default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: v for n, v in options.items() if n in names and v is not None})


# Ids are what the data has: integers (the range of the bundle's Int64 ids) or strings.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
RawId = Int64 | str
# A filter's values: one, or a list of one type (the item table matches a column against a typed
# list: [1, 2.5] is read as floats, [1, "a"] is a 422 here rather than a TypeError deep inside).
FilterScalar = Int64 | float | str | bool
FilterValue = FilterScalar | list[Int64] | list[float] | list[str] | list[bool]
Filters = Annotated[
    dict[str, FilterValue] | None,
    Field(description='item attributes: {column: value or [values]}, e.g. {"genres": "Comedy"}'),
]

# A user the bundle does not know, described by the users table's columns.
UserFeatures = Annotated[
    dict[str, FilterValue | None] | None,
    Field(
        description='user features for a user unseen in training: {column: value}, e.g. {"age": 31}'
    ),
]


# Each result's history items behind its score (serve.explain).
Explain = Annotated[
    bool,
    Field(description="add to each result `because`: the history items that raised its score most"),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestModels(NamedTuple):
    """The request bodies under one set of limits."""

    recommend: type[BaseModel]
    batch: type[BaseModel]
    similar: type[BaseModel]
    history: type[BaseModel]


@lru_cache
def request_models(limits: Limits) -> RequestModels:
    """The request models whose JSON schema carries `limits` (maximum, maxItems), so the
    OpenAPI document says what the server accepts; one set per distinct `limits`."""
    K = Annotated[int, Field(ge=1, le=limits.max_k, description="number of results (max_k)")]
    ItemIds = Annotated[list[RawId], Field(max_length=limits.max_history)]
    History = Annotated[
        ItemIds | None,
        Field(description="raw item ids, oldest first, for users unseen in training (max_history)"),
    ]
    Exclude = Annotated[
        list[RawId] | None,
        Field(max_length=limits.max_exclude, description="raw item ids never to return"),
    ]

    class RecommendRequest(_Body):
        user_id: RawId
        k: K = 10
        exclude_seen: bool = True
        history: History = None
        features: UserFeatures = None
        exclude: Exclude = None
        filters: Filters = None
        explain: Explain = False

        @property
        def plain(self) -> bool:
            """A known user's id, k and exclude_seen only: what the Batcher coalesces."""
            return (
                self.history is None
                and self.features is None
                and self.exclude is None
                and not self.filters
                and not self.explain
            )

    class BatchRecommendRequest(_Body):
        user_ids: list[RawId] = Field(min_length=1, max_length=limits.max_batch)
        k: K = 10
        exclude_seen: bool = True
        histories: list[ItemIds | None] | None = Field(
            None, max_length=limits.max_batch, description="one history (or null) per user"
        )
        features: list[UserFeatures] | None = Field(
            None, max_length=limits.max_batch, description="one user's features (or null) per user"
        )
        exclude: Exclude = None
        filters: Filters = None
        explain: Explain = False

    class SimilarItemsRequest(_Body):
        item_id: RawId
        k: K = 10
        filters: Filters = None

    class UserHistoryRequest(_Body):
        user_id: RawId

    return RequestModels(
        RecommendRequest, BatchRecommendRequest, SimilarItemsRequest, UserHistoryRequest
    )


RecommendRequest, BatchRecommendRequest, SimilarItemsRequest, UserHistoryRequest = request_models(
    Limits()
)


def openapi_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of an endpoint that parses `model` itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    """`raw` JSON validated as `model` by pydantic-core directly (FastAPI's dependency solving
    costs more than the recommendation on the hot path); the one parser of the routes and the
    fast lane. Errors are `RequestValidationError`s located in the body (422s naming the field;
    one past a limit also names the limit and the value given)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError(
            [_field_error(e) for e in err.errors(include_url=False)]
        ) from None


_LIMIT_NAMES = {  # the request field (the first of its location) → the limit it is checked by
    "k": "max_k",
    "history": "max_history",
    "exclude": "max_exclude",
    "user_ids": "max_batch",
    "histories": "max_batch",
}


def _field_error(error: dict) -> dict:
    """One pydantic error as the 422 says it: {"loc": ["body", field, ...], "msg", "type"}, and
    for a value past a limit "limit" and "value" (a list's length) with the limit's name."""
    loc = ("body", *error.get("loc", ()))
    out = {"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")}
    ctx = error.get("ctx") or {}
    if out["type"] == "too_long":
        limit, value, verb, what = ctx.get("max_length"), ctx.get("actual_length"), "hold", " items"
    elif out["type"] == "less_than_equal":
        limit, value, verb, what = ctx.get("le"), error.get("input"), "be", ""
    else:
        return out
    if isinstance(limit, int) and isinstance(value, int):
        out |= {"limit": limit, "value": value}
        name = _LIMIT_NAMES.get(loc[1]) if len(loc) == 2 else None  # the field itself
        if len(loc) == 3 and loc[1] == "histories" and out["type"] == "too_long":
            name = "max_history"  # histories[i]: one user's history
        if name is not None:
            field = ".".join(str(p) for p in loc[1:])
            out["msg"] = f"{field} must {verb} at most {limit}{what} ({name}), got {value}"
    return out


def items_payload(recs: Recommendations) -> list[dict]:
    """Each result's fields; `because` only when explained."""
    return [
        {"item_id": r.item_id, "score": r.score, "title": r.title}
        if r.because is None
        else r.to_dict()
        for r in recs
    ]


def recommend_payload(user_id, recommender: Recommender, recs: Recommendations) -> dict:
    return {
        "user_id": user_id,
        "source": recs.source,
        "version": recommender.version,
        "items": items_payload(recs),
    }


def json_response(payload, status_code: int = 200, headers: dict | None = None) -> Response:
    """A JSON response serialised by orjson (the same bytes the fast lane sends)."""
    return Response(
        orjson.dumps(payload), status_code, headers=headers, media_type="application/json"
    )


# -- errors: the answer is chosen by the exception's type, never by its message --------------
class BodyTooLarge(Exception):
    """A request body over `limit` bytes (by its Content-Length, or counted as it streams)."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body over the limit of {limit} bytes (max_body_bytes)")


class Unauthorized(Exception):
    """An admin request without the right `Authorization: Bearer <token>`."""


def _unprocessable(errors: list[dict]) -> Response:
    """422 with FastAPI's body: one `{"loc": ["body", field, ...], "msg", "type"}` per error.
    Serialised by the standard library: a value echoed back may be any JSON integer."""
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or "body" for e in errors)
    body = {"detail": errors, "message": f"invalid request: {fields}"}
    return Response(json.dumps(body), 422, media_type="application/json")


def _invalid_body(err: RequestValidationError) -> Response:
    return _unprocessable(
        [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            | {k: e[k] for k in ("limit", "value") if k in e}
            for e in err.errors()
        ]
    )


def _invalid_value(err: RequestError) -> Response:
    return _unprocessable([{"loc": ["body", err.field], "msg": str(err), "type": "value_error"}])


def _unknown_id(err: UnknownIdError) -> Response:
    body = {"detail": str(err), "kind": err.kind, "id": err.raw_id, "field": err.field}
    return json_response(body, 404)


def _too_large(err: BodyTooLarge) -> Response:
    return json_response({"detail": str(err), "limit": err.limit}, 413)


def _unauthorized(err: Unauthorized) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="twotower admin"'}
    return json_response({"detail": str(err)}, 401, headers)


def _not_ready(err: BundleError) -> Response:
    return json_response({"detail": str(err)}, 503)


ERROR_ANSWERS: dict[type[Exception], Callable[[Any], Response]] = {
    RequestValidationError: _invalid_body,  # the body does not fit the request model
    RequestError: _invalid_value,  # the recommender rejects a field's value
    UnknownIdError: _unknown_id,
    BodyTooLarge: _too_large,
    Unauthorized: _unauthorized,
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
