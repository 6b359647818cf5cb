"""Web API and page: policy-applied JSON, validation, image-by-id serving, traversal attempts, batching, concurrency.

Uses the deterministic FakeRetriever over tiny generated PNGs (one of them stands for a photo of a child).
"""
from __future__ import annotations

import io
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.config import DISCLAIMER
from retrieval.errors import DatasetError, IndexVersionError, InvalidQueryError
from retrieval.policy.apply import apply_policy
from retrieval.server import background_server, create_app, public_result
from retrieval.limits import MAX_QUERY_CHARS
from retrieval.server.app import model_id
from retrieval.server.batcher import SearchBatcher, ServerBusyError
from retrieval.server.fake import COLOURS, FakeRetriever, make_fake_images

CHILD_ID = len(COLOURS)  # make_fake_images puts the child photo last
CHILD_QUERY = "red people playing in the park"  # ranks the child photo first


@pytest.fixture()
def fake(tmp_path: Path) -> FakeRetriever:
    return FakeRetriever(make_fake_images(tmp_path / "images"))


def make_client(fake: FakeRetriever, tmp_path: Path, policy: str = "strict") -> TestClient:
    return TestClient(create_app(fake, policy, thumb_dir=tmp_path / "thumbs"))


@pytest.fixture()
def client(fake: FakeRetriever, tmp_path: Path):
    with make_client(fake, tmp_path) as c:
        yield c


def expected(fake: FakeRetriever, q: str, k: int = 10, min_score: float = 0.0, policy: str = "strict") -> dict:
    return public_result(fake.search_many([q], k=k, min_score=min_score)[0], policy)


def without_urls(body: dict) -> dict:
    return {**body, "hits": [{key: v for key, v in h.items() if key not in ("url", "thumb", "id")} for h in body["hits"]]}


# -- health, page, static ------------------------------------------------------------------------------------------
def test_health_reports_count_model_and_policy(client: TestClient, fake: FakeRetriever) -> None:
    resp = client.get("/api/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "count": len(fake.items), "model_id": fake.model_id, "policy": "strict"}


def test_index_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="q"', 'id="min-score"', 'id="results"', 'id="banner"', 'id="empty"', 'id="error"',
                   "/static/app.js", "/static/style.css"):
        assert needle in page.text
    js, css = client.get("/static/app.js"), client.get("/static/style.css")
    assert js.status_code == css.status_code == 200
    assert "javascript" in js.headers["content-type"] and "css" in css.headers["content-type"]
    for text in (page.text, js.text, css.text):  # offline: nothing loaded from another host
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "innerHTML" not in js.text  # results are inserted as text only


def test_model_id_falls_back_to_model_config() -> None:
    config = SimpleNamespace(image_encoder="efficientnet-lite0", text_encoder="all-MiniLM-L6-v2", model_id="ab" * 32)
    assert model_id(SimpleNamespace(model=SimpleNamespace(config=config))) == \
        "efficientnet-lite0|all-MiniLM-L6-v2|" + "ab" * 6
    assert model_id(SimpleNamespace()) is None


def test_image_threshold_comes_from_the_model_config_when_needed(fake: FakeRetriever, tmp_path: Path) -> None:
    from retrieval.server.images import image_threshold

    assert image_threshold(SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(child_image_threshold=0.97)))) == 0.97
    fake.model = SimpleNamespace(config=SimpleNamespace(child_image_threshold=0.97))  # child photo has prob 0.9
    with make_client(fake, tmp_path) as c:
        assert c.get(f"/api/image/{CHILD_ID}").status_code == 200


# -- search ---------------------------------------------------------------------------------------------------------
def test_search_is_exactly_the_policy_json_plus_urls(client: TestClient, fake: FakeRetriever) -> None:
    resp = client.get("/api/search", params={"q": "a blue square", "k": 5})
    assert resp.status_code == 200
    body = resp.json()
    raw = fake.search_many(["a blue square"], k=5)[0]
    assert without_urls(body) == apply_policy(raw, "strict")
    assert body["hits"][0]["image"] == "blue_square.png" and len(body["hits"]) == 5
    for hit, raw_hit in zip(body["hits"], raw.hits):
        assert hit["url"] == f"/api/image/{raw_hit.image_id}" and hit["thumb"] == f"/api/thumb/{raw_hit.image_id}"


def test_search_min_score_and_k(client: TestClient, fake: FakeRetriever) -> None:
    body = client.get("/api/search", params={"q": "green", "k": 100, "min_score": 0.5}).json()
    assert body == expected(fake, "green", 100, 0.5)
    assert [h["image"] for h in body["hits"]] == ["green_square.png"]
    assert len(client.get("/api/search", params={"q": "green", "k": 3}).json()["hits"]) == 3


def test_child_query_is_restricted_with_disclaimer(client: TestClient) -> None:
    body = client.get("/api/search", params={"q": "two little girls playing"}).json()
    assert body == {"query": "two little girls playing", "restricted": True, "disclaimer": DISCLAIMER, "hits": []}


def test_withheld_hit_has_no_url_name_or_path(client: TestClient, fake: FakeRetriever) -> None:
    resp = client.get("/api/search", params={"q": CHILD_QUERY, "k": 20})
    top = resp.json()["hits"][0]
    assert top == {"rank": 1, "image": None, "path": None, "score": top["score"], "restricted": True,
                   "disclaimer": DISCLAIMER}
    child = fake.items[CHILD_ID].path
    assert child.name not in resp.text and str(child) not in resp.text and f"/{CHILD_ID}\"" not in resp.text


@pytest.mark.parametrize("q", ["red", "people playing", "park", CHILD_QUERY, "square colour", "a red square in a park"])
def test_strict_json_never_names_the_restricted_image(client: TestClient, fake: FakeRetriever, q: str) -> None:
    text = client.get("/api/search", params={"q": q, "k": 100}).text
    assert "secret_child_photo" not in text and str(fake.items[CHILD_ID].path.parent) + "/secret" not in text
    assert f"/api/image/{CHILD_ID}\"" not in text and f"/api/thumb/{CHILD_ID}\"" not in text


@pytest.mark.parametrize("policy", ["audit", "off"])
def test_audit_and_off_show_the_image(fake: FakeRetriever, tmp_path: Path, policy: str) -> None:
    with make_client(fake, tmp_path, policy) as c:
        body = c.get("/api/search", params={"q": CHILD_QUERY}).json()
        assert body == expected(fake, CHILD_QUERY, policy=policy)
        top = body["hits"][0]
        assert top["image"] == "secret_child_photo.png" and top["url"] == f"/api/image/{CHILD_ID}"
        assert top["restricted"] is (policy == "audit")
        assert c.get(top["url"]).status_code == 200
        assert c.get("/api/health").json()["policy"] == policy


def test_unknown_policy_is_refused(fake: FakeRetriever, tmp_path: Path) -> None:
    with pytest.raises(InvalidQueryError, match="policy"):
        create_app(fake, "lenient", thumb_dir=tmp_path)


@pytest.mark.parametrize("params, names", [
    ({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "x" * (MAX_QUERY_CHARS + 1)}, str(MAX_QUERY_CHARS)),
    ({"q": "red", "k": "0"}, "k"), ({"q": "red", "k": "101"}, "k"), ({"q": "red", "k": "-3"}, "k"),
    ({"q": "red", "k": "abc"}, "k"), ({"q": "red", "k": "1.5"}, "k"), ({"q": "red", "k": ""}, "k"),
    ({"q": "red", "min_score": "-0.1"}, "min_score"), ({"q": "red", "min_score": "1.01"}, "min_score"),
    ({"q": "red", "min_score": "nan"}, "min_score"), ({"q": "red", "min_score": "high"}, "min_score"),
    ({"q": "red", "min_score": "inf"}, "min_score"),
])
def test_invalid_search_params_give_one_line_json_errors(client: TestClient, fake: FakeRetriever, params: dict,
                                                         names: str) -> None:
    resp = client.get("/api/search", params=params)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert names in error and "\n" not in error and ("e.g." in error or "shorten" in error)
    assert fake.calls == []  # refused before reaching the retriever


def test_boundary_values_are_accepted(client: TestClient, fake: FakeRetriever) -> None:
    q = "red " * (MAX_QUERY_CHARS // 4 - 1) + "red"
    assert len(q) <= MAX_QUERY_CHARS
    assert client.get("/api/search", params={"q": q, "k": 100, "min_score": 1}).status_code == 200
    assert client.get("/api/search", params={"q": "red", "k": 1, "min_score": 0}).json() == expected(fake, "red", 1)


@pytest.mark.parametrize("err, status", [(InvalidQueryError("bad query; fix it"), 400),
                                          (IndexVersionError("index too new; upgrade"), 500),
                                          (DatasetError("broken metadata; rebuild"), 500)])
def test_retrieval_errors_map_to_json(fake: FakeRetriever, tmp_path: Path, err: Exception, status: int) -> None:
    def boom(texts, k=10, min_score=0.0, under=None):
        raise err

    fake.search_many = boom  # type: ignore[method-assign]
    with make_client(fake, tmp_path) as c:
        resp = c.get("/api/search", params={"q": "red"})
    assert resp.status_code == status and resp.json() == {"error": str(err)}


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    resp = client.get("/api/nothing")
    assert resp.status_code == 404 and "error" in resp.json()


# -- images ---------------------------------------------------------------------------------------------------------
def test_image_by_id_serves_the_indexed_file(client: TestClient, fake: FakeRetriever) -> None:
    for image_id in range(CHILD_ID):
        resp = client.get(f"/api/image/{image_id}")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert resp.content == fake.items[image_id].path.read_bytes()


def test_thumbnail_is_a_small_cached_jpeg(fake: FakeRetriever, tmp_path: Path) -> None:
    big = fake.items[0].path
    Image.new("RGB", (800, 400), (200, 30, 30)).save(big)
    with make_client(fake, tmp_path) as c:
        first = c.get("/api/thumb/0")
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(first.content)) as im:
            assert im.format == "JPEG" and im.size == (256, 128)
        cached = list((tmp_path / "thumbs").rglob("*.jpg"))
        assert len(cached) == 1 and cached[0].read_bytes() == first.content
        assert c.get("/api/thumb/0").content == first.content
        # a changed file gets a new thumbnail (content-hash key), not the stale one
        Image.new("RGB", (300, 300), (0, 0, 200)).save(big)
        with Image.open(io.BytesIO(c.get("/api/thumb/0").content)) as im:
            assert im.size == (256, 256)
        assert len(list((tmp_path / "thumbs").rglob("*.jpg"))) == 2


def test_undecodable_image_is_a_json_500(fake: FakeRetriever, tmp_path: Path) -> None:
    fake.items[1].path.write_bytes(b"not an image")
    with make_client(fake, tmp_path) as c:
        resp = c.get("/api/thumb/1")
    assert resp.status_code == 500 and "build-index" in resp.json()["error"]


def test_deleted_image_is_404(fake: FakeRetriever, tmp_path: Path) -> None:
    fake.items[2].path.unlink()
    with make_client(fake, tmp_path) as c:
        for kind in ("image", "thumb"):
            resp = c.get(f"/api/{kind}/2")
            assert resp.status_code == 404 and "build-index" in resp.json()["error"]


def test_restricted_image_cannot_be_fetched_by_id_under_strict(client: TestClient, fake: FakeRetriever) -> None:
    for kind in ("image", "thumb"):
        resp = client.get(f"/api/{kind}/{CHILD_ID}")
        assert resp.status_code == 451
        assert DISCLAIMER in resp.json()["error"] and "secret_child_photo" not in resp.text
    assert not list(Path(client.app.state.images.thumb_dir).rglob("*.jpg"))  # no thumbnail was even made


TRAVERSALS = [
    "/api/image/../../etc/passwd", "/api/image/..%2F..%2Fetc%2Fpasswd", "/api/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/image/%2e%2e/%2e%2e/etc/passwd", "/api/image/0%2F..%2F..%2F..%2Fetc%2Fpasswd", "/api/image/-1",
    "/api/image/999999", f"/api/image/{CHILD_ID + 1}", "/api/image/1e3", "/api/image/0x1", "/api/image/%00",
    "/api/image/%20%31", "/api/image/\u0661", "/api/image/99999999999999999999999", "/api/image/",
    "/api/thumb/../../etc/passwd", "/api/thumb/..%2f..%2fetc%2fpasswd", "/api/thumb/-1", "/api/thumb/999999",
    "/static/../../retrieval/server/app.py", "/static/..%2f..%2fapp.py", "/static/%2e%2e%2fapp.py",
    "/static/index.html", "/static/../../../../etc/passwd", "/static/app.js%00.png", "/static//etc/passwd",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_traversal_attempts_read_nothing_outside_the_index(client: TestClient, url: str) -> None:
    resp = client.get(url)
    assert resp.status_code in (400, 404, 405, 422), (url, resp.status_code)
    assert "root:" not in resp.text and "import" not in resp.text
    assert resp.headers["content-type"].startswith("application/json")


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """Send the request line exactly as written (clients would normalise the `..` away)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_raw_traversal_requests_against_real_server(fake: FakeRetriever, tmp_path: Path) -> None:
    app = create_app(fake, thumb_dir=tmp_path / "thumbs")
    with background_server(app) as base:
        assert raw_get(base, "/api/image/0")[0] == 200
        for target in ["/api/image/../../etc/passwd", "/api/image/..%2f..%2fetc%2fpasswd", "/static/../app.py",
                       "/api/thumb/../../../etc/passwd", "/static/..%2f..%2fserver%2fapp.py", "/../../etc/passwd",
                       f"/api/image/{CHILD_ID}", f"/api/image/../image/{CHILD_ID}"]:
            status, body = raw_get(base, target)
            assert status in (400, 404, 451), (target, status)
            assert b"root:" not in body and b"import" not in body and b"secret_child" not in body


# -- batching and concurrency ---------------------------------------------------------------------------------------
class BlockingSearch:
    """search_many that holds its first call until released, so later submissions queue up deterministically."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, texts, k=10, min_score=0.0, under=None):
        self.calls.append((list(texts), k) if under is None else (list(texts), k, under))
        self.entered.set()
        self.release.wait(10)
        if "bad" in texts:
            raise InvalidQueryError("bad query")
        return [f"{t}@{k}" for t in texts]


def test_batcher_groups_waiting_queries_by_k() -> None:
    search = BlockingSearch()
    batcher = SearchBatcher(search, max_batch=3, window_s=0.0)
    try:
        first = batcher.submit("q0", 3)
        assert search.entered.wait(10)
        futs = [batcher.submit(f"q{i}", k) for i, k in [(1, 3), (2, 5), (3, 3), (4, 3), (5, 3)]]
        search.release.set()
        assert first.result(10) == "q0@3"
        assert [f.result(10) for f in futs] == ["q1@3", "q2@5", "q3@3", "q4@3", "q5@3"]
    finally:
        batcher.close()
    # q1,q2,q3 are taken together (max_batch 3) and split by k; q4,q5 form the next batch
    assert search.calls == [(["q0"], 3), (["q1", "q3"], 3), (["q2"], 5), (["q4", "q5"], 3)]
    assert batcher.stats.largest == 2 and batcher.stats.queries == 6


def test_batcher_never_merges_queries_of_different_folders() -> None:
    search = BlockingSearch()
    batcher = SearchBatcher(search, max_batch=8, window_s=0.0)
    try:
        first = batcher.submit("q0", 3)
        assert search.entered.wait(10)
        futs = [batcher.submit("q1", 3, under="2024"), batcher.submit("q2", 3), batcher.submit("q3", 3, under="2024")]
        search.release.set()
        first.result(10)
        [f.result(10) for f in futs]
    finally:
        batcher.close()
    assert search.calls == [(["q0"], 3), (["q1", "q3"], 3, "2024"), (["q2"], 3)]


def test_batcher_isolates_a_failing_query_and_bounds_its_queue() -> None:
    search = BlockingSearch()
    batcher = SearchBatcher(search, max_batch=8, window_s=0.0, max_pending=3)
    try:
        batcher.submit("warm", 1)
        assert search.entered.wait(10)
        good1, bad, good2 = (batcher.submit(t, 1) for t in ("a", "bad", "b"))
        with pytest.raises(ServerBusyError):
            batcher.submit("one too many", 1)
        search.release.set()
        assert good1.result(10) == "a@1" and good2.result(10) == "b@1"
        with pytest.raises(InvalidQueryError):
            bad.result(10)
    finally:
        batcher.close()
    with pytest.raises(ServerBusyError):
        batcher.submit("after close", 1)


def test_fifty_concurrent_clients_get_their_own_answers(fake: FakeRetriever, tmp_path: Path) -> None:
    app = create_app(fake, thumb_dir=tmp_path / "thumbs")
    words = [name for name, _ in COLOURS]
    queries = [f"{words[i % len(words)]} square number {i}" for i in range(50)]
    ks = [1 + i % 7 for i in range(50)]
    start = threading.Barrier(50)

    def one_client(i: int) -> tuple[dict, bytes, bytes]:
        start.wait(30)
        body = http.get("/api/search", params={"q": queries[i], "k": ks[i]}).json()
        thumb = http.get(body["hits"][0]["thumb"]).content
        full = http.get(body["hits"][0]["url"]).content
        return body, thumb, full

    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    with background_server(app) as base, httpx.Client(base_url=base, timeout=30, limits=limits) as http:
        with ThreadPoolExecutor(max_workers=50) as pool:  # 50 simultaneous connections
            answers = list(pool.map(one_client, range(50)))
        health = httpx.get(base + "/api/health", timeout=10).json()
    served_calls = list(fake.calls)
    for i, (body, thumb, full) in enumerate(answers):
        assert body == expected(fake, queries[i], ks[i])
        top = fake.items[int(body["hits"][0]["url"].rsplit("/", 1)[1])]
        assert top.path.stem.startswith(words[i % len(words)])  # the query's colour wins
        assert full == top.path.read_bytes() and thumb[:2] == b"\xff\xd8"
    assert len({json.dumps(a[0]) for a in answers}) == 50  # distinct answers
    assert sum(served_calls) == 50  # every query searched exactly once, however they were batched
    assert health["status"] == "ok"


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_serve_command_is_thin(monkeypatch: pytest.MonkeyPatch, fake: FakeRetriever, tmp_path: Path) -> None:
    import retrieval.server as server
    from retrieval.cli import cli

    seen: dict = {}
    app = create_app(fake, thumb_dir=tmp_path)
    monkeypatch.setattr(server, "load_app",
                        lambda index, model, policy, token: seen.update(load=(index, model, policy, token)) or app)
    monkeypatch.setattr(server, "serve", lambda a, host, port: seen.update(serve=(a, host, port)))
    monkeypatch.delenv("RETRIEVAL_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "idx"), "--port", "8123", "--policy", "audit"])
    assert result.exit_code == 0, result.output
    token = seen["load"][3]
    assert seen == {"load": (tmp_path / "idx", None, "audit", token), "serve": (app, "127.0.0.1", 8123)}
    assert token and f"serving {len(fake.items)} images at http://127.0.0.1:8123/?token={token}" in result.output
    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "idx"), "--port", "8124"])
    assert result.exit_code == 0 and seen["load"][3] is None  # strict on loopback: no token
    bad = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path), "--policy", "lenient"])
    assert bad.exit_code == 2
