"""schemathesis over the served OpenAPI document, against the real server on a loopback port:
no request it generates, valid or not, gets a 5xx, an undocumented status or a body that breaks
the document (checks not_a_server_error, status_code_conformance, response_schema_conformance).
Deterministic and bounded: derandomized, at most 30 generated examples per operation (plus
schemathesis's boundary cases of each schema); the admin token is sent with every request."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from serve.http import create_app
from serve.http_messages import Limits
from tests.serve.conftest import Server

TOKEN = "schemathesis-admin-token"
# Small limits, so that generated bodies reach them often.
LIMITS = Limits(max_k=50, max_history=20, max_exclude=20, max_batch=8, max_body_bytes=16_384)
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def running(bundle_dir, tmp_path_factory):
    import polars as pl
    from serve import export_bundle, read_bundle
    b = read_bundle(bundle_dir)
    items = b.items.with_columns(pl.col("item_id").cast(pl.String))
    users = b.users.with_columns(pl.col("user_id").cast(pl.String))
    path = export_bundle(tmp_path_factory.mktemp("strs") / "bundle", b.scorer, items, users)
    with Server(create_app(path, cold_start="popularity", limits=Limits(max_k=400, max_batch=30, max_body_bytes=4000), admin_token=TOKEN)) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(running):
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=300,
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_every_answer_as_documented(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS, timeout=30)


def test_the_documents_examples_are_answered(running):
    """The document's example bodies name ids the served bundle knows: each is a 200."""
    with httpx.Client(base_url=running.url, timeout=10) as client:
        document = client.get("/openapi.json").json()
        for path in ("/recommend", "/recommend/batch", "/similar-items"):
            body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            assert client.post(path, json=body["example"]).status_code == 200, path
