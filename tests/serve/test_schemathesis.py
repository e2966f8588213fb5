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
    path = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("schemathesis") / "bundle"))
    with Server(create_app(path, limits=LIMITS, admin_token=TOKEN)) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(running):
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
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
