"""Who may see what: a server that listens beyond loopback, or runs the audit view, requires its access token."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval.server import create_app
from retrieval.server.access import MAX_BODY_BYTES, is_loopback, serving_token
from retrieval.server.fake import FakeRetriever
from tests.test_server import make_fake_images


@pytest.fixture()
def app(tmp_path: Path):
    return create_app(FakeRetriever(make_fake_images(tmp_path / "images")), "audit", thumb_dir=tmp_path / "t",
                      token="s3cret-token")


def test_requests_without_the_token_get_401_json(app) -> None:
    client = TestClient(app)
    for path in ("/", "/api/health", "/api/search?q=dog", "/api/image/0", "/api/thumb/0", "/static/app.js"):
        res = client.get(path)
        assert res.status_code == 401 and "access token" in res.json()["error"], path
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_bearer_header_or_the_page_url_with_the_token_let_in(app) -> None:
    api = TestClient(app)
    assert api.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    page = TestClient(app)
    res = page.get("/?token=s3cret-token", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/"  # the token leaves the address bar
    assert page.cookies.get("retrieval_token") == "s3cret-token"
    assert page.get("/").status_code == 200 and page.get("/api/search?q=dog").status_code == 200
    assert page.get("/api/thumb/0").status_code in (200, 451)  # thumbnails from the page carry the cookie


def test_oversized_bodies_are_refused_before_reading(app) -> None:
    client = TestClient(app, headers={"Authorization": "Bearer s3cret-token"})
    res = client.post("/api/review", content=b"x" * (MAX_BODY_BYTES + 1), headers={"Content-Type": "application/json"})
    assert res.status_code == 413


@pytest.mark.parametrize("host,policy,given,needs", [
    ("127.0.0.1", "strict", None, False), ("localhost", "off", None, False), ("::1", "strict", None, False),
    ("0.0.0.0", "strict", None, True), ("192.168.1.5", "strict", None, True), ("127.0.0.1", "audit", None, True),
    ("0.0.0.0", "strict", "mine", True),
])
def test_which_servers_need_a_token(monkeypatch, host, policy, given, needs) -> None:
    monkeypatch.delenv("RETRIEVAL_TOKEN", raising=False)
    token = serving_token(host, policy, given)
    assert (token is not None) == needs
    if given:
        assert token == given
    if needs and not given:
        assert len(token) >= 24 and token != serving_token(host, policy, None)  # fresh and unguessable
    assert is_loopback("127.0.0.1") and not is_loopback("0.0.0.0")
