"""The service's OpenAPI document: a model for the body of every answer (`answers` gives a
route's documented responses), and the parts that depend on the bundle being served
(`install`): the columns `filters` can name, typed as the item table has them, and example ids
the bundle knows. The request models carry the limits (serve/http_messages.py), so the document
says what the server accepts and what it answers; tests/serve/test_schemathesis.py holds the
server to it."""

from __future__ import annotations

import copy
from typing import Literal

import polars as pl
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from features.schema import USER_ID
from serve.catalogue import INTERNAL_COLUMNS
from serve.recommender import Recommender


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


AnyId = int | str
Source = Literal["model", "features", "history", "popularity"]  # serve.users.Source


class Because(_Answer):
    item_id: AnyId = Field(description="a history item")
    title: str | None = None
    contribution: float = Field(description="what it adds to the result's score")
    share: float = Field(description="contribution / the score less the popularity prior")


class Item(_Answer):
    item_id: AnyId
    score: float = Field(description="what the index ranks by; popularity: how many users saw it")
    title: str | None = None
    because: list[Because] | None = Field(
        None,
        description="with explain: the history items that raised the score most, largest first",
    )


class RecommendAnswer(_Answer):
    user_id: AnyId
    source: Source
    version: str | None
    items: list[Item]


class UserResults(_Answer):
    user_id: AnyId
    source: Source
    items: list[Item]


class BatchAnswer(_Answer):
    version: str | None
    results: list[UserResults]


class SimilarItemsAnswer(_Answer):
    item_id: AnyId
    version: str | None
    items: list[Item]


class TitledItem(_Answer):
    item_id: AnyId
    title: str | None = None


class UserHistoryAnswer(_Answer):
    user_id: AnyId
    version: str | None
    items: list[TitledItem] = Field(
        description="the stored history the user tower reads, most recent first"
    )


class ExamplesAnswer(_Answer):
    version: str | None
    user_ids: list[AnyId] = Field(description="users the bundle knows")
    items: list[TitledItem] = Field(description="the most seen items, most seen first")


class FieldError(_Answer):
    loc: list[str | int] = Field(description='["body", field, ...]')
    msg: str
    type: str
    limit: int | None = Field(None, description="the limit a value is past")
    value: int | None = Field(None, description="the value past the limit (a list: its length)")


class Unprocessable(_Answer):
    detail: list[FieldError]
    message: str


class NotFound(_Answer):
    detail: str
    kind: Literal["user", "item"]
    id: AnyId
    field: str = Field(description="the request field that named the id")


class TooLarge(_Answer):
    detail: str
    limit: int = Field(description="max_body_bytes")


class Detail(_Answer):
    detail: str


ERROR_MODELS: dict[int, tuple[type[BaseModel], str]] = {
    401: (Detail, "no `Authorization: Bearer <admin token>`, or another token"),
    404: (NotFound, "an id the bundle does not know"),
    413: (TooLarge, "a body over max_body_bytes"),
    422: (Unprocessable, "a body that does not fit the request model, or a value past a limit"),
    503: (Detail, "no bundle loaded yet"),
}


def answers(ok: type[BaseModel] | None, *codes: int) -> dict:
    """FastAPI's `responses` of a route: its 200 body and the error bodies of `codes`."""
    out = {} if ok is None else {200: {"model": ok}}
    for code in codes:
        model, description = ERROR_MODELS[code]
        out[code] = {"model": model, "description": description}
    return out


class Health(_Answer):
    status: Literal["ok"]


class Ready(_Answer):
    status: Literal["ready"]
    version: str | None
    num_items: int


class Loading(_Answer):
    status: Literal["loading"]


class ReloadAnswer(_Answer):
    reloaded: bool
    version: str | None
    previous: str | None


class ReloadFailed(_Answer):
    detail: str
    version: str | None


# -- what depends on the bundle served --------------------------------------------------------
def install(app: FastAPI, service) -> None:
    """Serve `app`'s document with the served bundle's parts: built once per bundle version
    (after a reload, the next request for it builds the new one)."""
    routes_document = app.openapi  # FastAPI's, from the routes (cached by FastAPI)
    built: dict[tuple, dict] = {}

    def openapi() -> dict:
        recommender = service.recommender
        if recommender is None:
            return routes_document()
        key = (id(recommender), recommender.version)
        if key not in built:
            built.clear()
            built[key] = bundle_document(routes_document(), recommender)
        return built[key]

    app.openapi = openapi


def bundle_document(document: dict, recommender: Recommender) -> dict:
    """`document` with `filters` typed by the item table's columns and examples of known ids."""
    document = copy.deepcopy(document)
    filters = {
        "type": "object",
        "properties": _filter_columns(recommender.catalogue.items.schema),
        "additionalProperties": False,
        "description": "item attributes: {column: value or [values]}; a list column passes when "
        "it holds any of the values",
    }
    examples = _examples(recommender)
    for path, operation in document["paths"].items():
        body = operation.get("post", {}).get("requestBody", {}).get("content", {})
        media = body.get("application/json")
        if media is None:
            continue
        properties = media["schema"].get("properties", {})
        if "filters" in properties:
            properties["filters"] = {"anyOf": [filters, {"type": "null"}], "default": None}
        if path in examples:
            media["example"] = examples[path]
    return document


def _filter_columns(schema: pl.Schema) -> dict:
    """{column: JSON schema of a value or a list of values} of the item table's filterable
    columns (those of a type a JSON value can match)."""
    out = {}
    for column, dtype in schema.items():
        inner = dtype.inner if isinstance(dtype, pl.List) else dtype
        value = _json_type(inner)
        if column not in INTERNAL_COLUMNS and value is not None:
            out[column] = {"anyOf": [value, {"type": "array", "items": value}]}
    return out


def _json_type(dtype: pl.DataType) -> dict | None:
    if dtype.is_integer():
        low = 0 if dtype.is_unsigned_integer() else -(2**63)
        return {"type": "integer", "minimum": low, "maximum": 2**63 - 1}
    if dtype.is_float():
        return {"type": "number"}
    if dtype == pl.Boolean:
        return {"type": "boolean"}
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return {"type": "string"}
    return None


def _examples(recommender: Recommender) -> dict[str, dict]:
    """An example body of each route, with a user and an item the bundle knows."""
    users = recommender.bundle.users[USER_ID]
    order = recommender.catalogue.popular_order  # active items, the most seen first
    out = {}
    if len(order):
        item = recommender.item_id_list[int(order[0])]
        out["/similar-items"] = {"item_id": item, "k": 10}
    if len(users):
        out["/recommend"] = {"user_id": users[0], "k": 10}
        out["/user-history"] = {"user_id": users[0]}
        out["/recommend/batch"] = {"user_ids": users[:2].to_list(), "k": 10}
    return out
