"""Search by example (part of #14): query images, "more like this" on an indexed row, text steering, the folder
filter, and the legal policy on each (a query image showing a child is restricted like a child text query)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_store import IndexStore
from retrieval.index.imageio import load_image
from retrieval.policy.apply import apply_policy
from retrieval.search import Retriever
from tests.conftest import run_cli


@pytest.fixture()
def retriever(fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Retriever:
    index = tmp_path / "idx"
    shutil.copytree(fake_env / "idx", index)
    r = Retriever.open(index, fake_env / "model")
    monkeypatch.setattr(r, "_images_show_a_child", lambda images, feats, threshold: False)
    return r


def test_an_indexed_photo_finds_itself_first_and_more_like_this_excludes_it(retriever, fake_env: Path) -> None:
    names = retriever.store.meta["rel_path"].tolist()
    raw = retriever.search_by_example([load_image(fake_env / "images" / names[2])], k=3)
    assert raw.hits[0].image_id == 2 and raw.hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert all(h.score is None for h in raw.hits)
    sims = [h.similarity for h in raw.hits]
    assert sims == sorted(sims, reverse=True)
    like = retriever.search_by_example(like_row=2, k=3)
    assert 2 not in [h.image_id for h in like.hits] and len(like.hits) == 3
    out = apply_policy(like, "audit")
    assert all(h["score"] is None and -1.0 <= h["similarity"] <= 1.0 for h in out["hits"])


def test_words_steer_the_example_and_a_child_query_or_child_photo_is_refused(retriever, fake_env, monkeypatch):
    steered = retriever.search_by_example(like_row=0, text="a dog on the grass", k=3)
    assert steered.query == "a dog on the grass" and len(steered.hits) == 3
    assert apply_policy(retriever.search_by_example(like_row=0, text="a little girl", k=3), "strict")["hits"] == []
    monkeypatch.setattr(retriever, "_images_show_a_child", lambda images, feats, threshold: True)
    image = load_image(fake_env / "images" / retriever.store.meta["rel_path"].iloc[0])
    out = apply_policy(retriever.search_by_example([image], k=3), "strict")
    assert out["restricted"] and out["hits"] == [] and out["disclaimer"]


def test_the_folder_filter_applies_to_searches_by_example(tmp_path: Path, fake_env: Path) -> None:
    images = tmp_path / "images"
    for i, p in enumerate(sorted((fake_env / "images").glob("[0-9]*.jpg"))):
        (images / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, images / ("a" if i % 2 else "b") / p.name)
    assert run_cli("build-index", images, "--index", tmp_path / "idx", "--model", fake_env / "model",
                   "--quiet").exit_code == 0
    r = Retriever.open(tmp_path / "idx", fake_env / "model")
    raw = r.search_by_example(like_row=0, k=2, under="a")
    assert raw.hits and all(h.path.split("/images/")[1].startswith("a/") for h in raw.hits)


def test_cli_and_api_search_by_example(fake_env: Path, tmp_path: Path) -> None:
    from retrieval.server import create_app

    name = IndexStore.load(fake_env / "idx").meta["rel_path"].iloc[1]
    res = run_cli("query", "--image", fake_env / "images" / name, "--index", fake_env / "idx", "--policy", "audit",
                  "-k", 2, "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout.splitlines()[-1])["hits"]
    assert hits[0]["image"] == Path(name).name and hits[0]["score"] is None and "similarity" in hits[0]
    res = run_cli("query", "--image", tmp_path / "missing.jpg", "--index", fake_env / "idx")
    assert res.exit_code != 0 and "file not found" in res.output
    retriever = Retriever.open(fake_env / "idx", fake_env / "model")
    audit = TestClient(create_app(retriever, "audit", thumb_dir=tmp_path / "t"))
    body = audit.get("/api/similar/1", params={"k": 3}).json()
    assert [h["id"] for h in body["hits"]] and 1 not in [h["id"] for h in body["hits"]]
    assert all(h["score"] is None for h in body["hits"])
    assert audit.get("/api/similar/999").status_code == 404
    strict = TestClient(create_app(retriever, "strict", thumb_dir=tmp_path / "t"))
    withheld = [i for i in range(retriever.store.count) if retriever.hit(i).child_prob is not None
                and retriever.hit(i).child_prob >= retriever.image_threshold]
    if withheld:  # the fake model withholds what its detector flags: such a source is 451 like its image
        assert strict.get(f"/api/similar/{withheld[0]}").status_code == 451


def test_search_by_uploaded_photo(fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /api/search with a photo: hits like it; not an image 400; too big 413; too many per minute 429; a photo
    the child detector flags is refused under strict like a child text query."""
    from retrieval.limits import MAX_UPLOAD_BYTES
    from retrieval.server import create_app
    import retrieval.server.access as access

    retriever = Retriever.open(fake_env / "idx", fake_env / "model")
    monkeypatch.setattr(retriever, "_images_show_a_child", lambda images, feats, threshold: False)
    client = TestClient(create_app(retriever, "audit", thumb_dir=tmp_path / "t"))
    name = retriever.store.meta["rel_path"].iloc[3]
    photo = (fake_env / "images" / name).read_bytes()
    res = client.post("/api/search", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"k": "2"})
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    assert hits[0]["image"] == Path(name).name and hits[0]["score"] is None and len(hits) == 2
    res = client.post("/api/search", files={"image": ("x.jpg", b"not a photo", "image/jpeg")})
    assert res.status_code == 400 and "not a usable photo" in res.json()["error"]
    res = client.post("/api/search", data={"q": "dogs"})
    assert res.status_code == 400 and "`image`" in res.json()["error"]
    big = client.post("/api/search", files={"image": ("big.jpg", b"\xff" * (MAX_UPLOAD_BYTES + 100_000), "image/jpeg")})
    assert big.status_code == 413
    monkeypatch.setattr(retriever, "_images_show_a_child", lambda images, feats, threshold: True)
    strict = TestClient(create_app(retriever, "strict", thumb_dir=tmp_path / "t"))
    res = strict.post("/api/search", files={"image": ("p.jpg", photo, "image/jpeg")})
    assert res.status_code == 200 and res.json()["restricted"] and res.json()["hits"] == []
    gate = access.UploadGate(per_minute=2)
    gate.admit("1.2.3.4")
    gate.admit("1.2.3.4")
    with pytest.raises(access.UploadRateError):
        gate.admit("1.2.3.4")
    gate.admit("5.6.7.8")  # per client
