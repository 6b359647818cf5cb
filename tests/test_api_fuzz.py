"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): no 5xx, every 4xx a one-line JSON error.
Runs against the app with a fake retriever (strict and audit, with a token on audit)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install -e '.[dev]')")
from hypothesis import HealthCheck, settings  # noqa: E402

from retrieval.server import create_app  # noqa: E402
from retrieval.server.fake import FakeRetriever  # noqa: E402
from tests.test_server import make_fake_images  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="retrieval-fuzz-"))
APP = create_app(FakeRetriever(make_fake_images(_ROOT / "images")), "strict", thumb_dir=_ROOT / "thumbs")
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)
AUDIT = create_app(FakeRetriever(make_fake_images(_ROOT / "audit-images")), "audit", thumb_dir=_ROOT / "thumbs",
                   token="fuzz-token")
audit_schema = schemathesis.openapi.from_asgi("/api/openapi.json", AUDIT, headers={"Authorization": "Bearer fuzz-token"})


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_json_errors(case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.path, case.query, response.text[:200])
    if response.status_code >= 400 and response.status_code != 451:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"] and "\n" not in body["error"]


@audit_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_audit_server_with_token_no_5xx(case) -> None:
    response = case.call(headers={"Authorization": "Bearer fuzz-token"})
    assert response.status_code < 500, (case.path, case.query, response.text[:200])
    if response.status_code >= 400 and response.status_code != 451:
        assert isinstance(response.json().get("error"), str)
