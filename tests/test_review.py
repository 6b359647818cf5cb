"""Operator review: the decision store (round trip, rebuild, rename, export/import), precedence over the detector,
the review queue, the refit and its refusal below the recall target, the CLI and the audit server's routes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_store import IndexStore
from retrieval.errors import RetrievalError
from retrieval.policy.apply import apply_policy
from retrieval.policy.detector import FEATURES, ChildDetector
from retrieval.policy.detector_train import constant_probe
from retrieval.policy.operator import IndexPolicy
from retrieval.policy.queue import review_queue
from retrieval.policy.refit import Refit, RefitRefusedError, fit_refit
from retrieval.policy.review import Decision, ReviewStore, now_iso
from retrieval.policy.types import Hit, RawResult
from tests.conftest import run_cli
from tests.test_build import build, colour

SHA = "ab" * 32


def _index(tmp_path: Path) -> tuple[Path, Path]:
    images, index = tmp_path / "images", tmp_path / "idx"
    colour(images / "red.png", (220, 10, 10))
    colour(images / "green.png", (10, 200, 10))
    colour(images / "blue.png", (10, 10, 230))
    build(images, index, cache=False)
    return images, index


def _policy(index: Path) -> IndexPolicy:
    loaded = IndexStore.load(index)
    return IndexPolicy(index, loaded.meta, None, "heads-1", 0.5)


def test_decisions_round_trip_and_log(tmp_path: Path) -> None:
    _, index = _index(tmp_path)
    store = ReviewStore(index)
    d = Decision(SHA, "none", "ana", now_iso(), "a.jpg")
    assert store.record([d]) == 1 and store.record([d]) == 0  # the same answer twice changes nothing
    assert ReviewStore(index).decisions() == {SHA: d}
    assert store.clear(SHA, "ana") and not store.clear(SHA, "ana")
    assert store.decisions() == {}
    assert [e["event"] for e in store.log()] == ["decision", "clear"]


def test_decisions_survive_rebuild_and_rename(tmp_path: Path) -> None:
    images, index = _index(tmp_path)
    pol = _policy(index)
    row = pol.sha.index(pol.sha[IndexStore.load(index).meta["rel_path"].tolist().index("red.png")])
    ReviewStore(index).record([Decision(pol.sha[row], "child", "ana", now_iso(), "red.png")])
    (images / "sub").mkdir()
    os.rename(images / "red.png", images / "sub" / "renamed.png")
    colour(images / "yellow.png", (230, 230, 10))
    build(images, index, cache=False)  # rewrites the folder (new rows, moved file)
    loaded = IndexStore.load(index)
    pol = _policy(index)
    moved = loaded.meta["rel_path"].tolist().index("sub/renamed.png")
    assert pol.review(moved) is not None and pol.review(moved).decision == "child"
    assert sum(pol.review(i) is not None for i in range(loaded.count)) == 1
    # the index folder itself moves with its decisions
    shutil.move(str(index), str(tmp_path / "moved_idx"))
    assert len(ReviewStore(tmp_path / "moved_idx").decisions()) == 1


def test_export_import_merges_later_answers(tmp_path: Path) -> None:
    _, a = _index(tmp_path / "a")
    _, b = _index(tmp_path / "b")
    other = "cd" * 32
    ReviewStore(a).record([Decision(SHA, "none", "ana", "2026-01-01T00:00:00+00:00"),
                           Decision(other, "child", "ana", "2026-01-01T00:00:00+00:00")])
    ReviewStore(b).record([Decision(SHA, "child", "bo", "2026-06-01T00:00:00+00:00")])
    assert ReviewStore(a).export(tmp_path / "team.json") == 2
    changed, read = ReviewStore(b).import_file(tmp_path / "team.json")
    assert (changed, read) == (1, 2)  # bo's later "child" on SHA stays
    got = ReviewStore(b).decisions()
    assert got[SHA].decision == "child" and got[SHA].operator == "bo" and got[other].decision == "child"
    (tmp_path / "bad.json").write_text('{"format": 1, "decisions": {"xyz": {"decision": "none"}}}')
    with pytest.raises(RetrievalError, match="not a sha256"):
        ReviewStore(b).import_file(tmp_path / "bad.json")
    assert ReviewStore(b).decisions() == got  # a bad import changes nothing


def _hit(prob: float, review: str | None = None, flagged: bool | None = None) -> Hit:
    d = Decision(SHA, review, "ana", "2026-12-03T00:00:00+00:00") if review else None  # type: ignore[arg-type]
    return Hit(1, "x.jpg", "/p/x.jpg", 0.9, prob, 0, flagged=flagged, review=d)


@pytest.mark.parametrize("prob,review,flagged,withheld", [
    (0.9, "none", None, False),   # a human "none" shows what the detector flags
    (0.9, "none", True, False),   # ... and outranks a forced flag
    (0.01, "child", None, True),  # a human "child" always withholds
    (0.9, None, None, True),
    (0.01, None, None, False),
])
def test_operator_decision_outranks_the_detector(prob, review, flagged, withheld) -> None:
    raw = RawResult("a dog", False, [_hit(prob, review, flagged)], image_threshold=0.5)
    strict = apply_policy(raw, "strict")["hits"][0]
    assert (strict["path"] is None) == withheld
    audit = apply_policy(raw, "audit")["hits"][0]
    assert audit["restricted"] == withheld
    assert ("review" in audit["why"]) == (review is not None)


def test_a_child_query_stays_restricted_whatever_the_reviews() -> None:
    raw = RawResult("a little girl", True, [_hit(0.0, "none")], image_threshold=0.5)
    assert apply_policy(raw, "strict")["hits"] == []


def test_queue_prefers_gain_and_spreads_over_the_library() -> None:
    vectors = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]  # rows 0 and 1 are the same photo
    gain = np.array([0.9, 0.89, 0.5, 0.1, 0.8])
    assert review_queue(gain, vectors, np.zeros(5, bool), 3) == [0, 4, 2]
    reviewed = np.array([False, False, False, False, True])
    assert review_queue(gain, vectors, reviewed, 5)[:2] == [0, 2]
    assert 4 not in review_queue(gain, vectors, reviewed, 5)


def _detector(n: int = 400, seed: int = 0) -> ChildDetector:
    """Training rows where the first feature (image logit) separates child from none."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    Z = np.zeros((n, len(FEATURES)))
    Z[:, 0] = np.where(y, 1.5, -1.5) + rng.normal(0, 1, n)
    Z[:, 1] = 5.0  # everyone passes the gate (person head)
    Z[:, 6] = 1.0
    mean, scale = Z[:, :6].mean(0), Z[:, :6].std(0) + 1e-6
    return ChildDetector(constant_probe(2), constant_probe(2), constant_probe(2), mean, scale,
                         np.array([1.0, 0, 0, 0, 0, 0]), 0.0, 0.01, 0.1, -1.0,
                         train_rows=Z.astype(np.float32), train_labels=y.astype(np.int8))


def test_refit_keeps_recall_on_the_operators_child_images() -> None:
    det = _detector()
    rng = np.random.default_rng(1)
    Zr = np.zeros((40, len(FEATURES)))
    child = np.arange(40) < 15
    Zr[:, 0] = np.where(child, 1.5, -1.5) + rng.normal(0, 1, 40)
    Zr[:, 1], Zr[:, 6] = 5.0, 1.0
    params, threshold, numbers = fit_refit(det, Zr, child)
    assert numbers["oof_recall_reviewed_child"] >= 0.97 and numbers["oof_recall_all"] >= 0.97
    mean, scale, w, b = params
    refit = Refit("m", tuple(mean), tuple(scale), tuple(w), b, threshold, now_iso(), "ana")
    p = refit.apply(det).fuse(np.vstack([det.train_rows, Zr]))
    y = np.concatenate([det.train_labels != 0, child])
    assert (p[y] >= threshold).mean() >= 0.96  # in-sample, the same target holds


def test_refit_is_refused_below_the_recall_target() -> None:
    det = _detector()
    Zr = np.zeros((32, len(FEATURES)))
    child = np.arange(32) < 2  # two "child" answers on images that look least like a child to the detector
    Zr[:, 0] = np.where(child, -4.0, -1.5)
    Zr[:, 1], Zr[:, 6] = 5.0, 1.0
    with pytest.raises(RefitRefusedError, match="legal target is 97%"):
        fit_refit(det, Zr, child)


def test_refit_without_training_rows_is_refused_with_the_fix() -> None:
    det = _detector()
    from dataclasses import replace

    with pytest.raises(RefitRefusedError, match="retrain"):
        fit_refit(replace(det, train_rows=None), np.zeros((1, len(FEATURES))), np.ones(1, bool))


def test_cli_review_refit_and_audit_server(fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on a fake-encoder index: decide by path and id, list, export/import, queue, refit (atomic: a crash
    while saving keeps the previous refit), and the audit page's routes."""
    index = tmp_path / "idx"
    shutil.copytree(fake_env / "idx", index)
    model = fake_env / "model"
    names = IndexStore.load(index).meta["rel_path"].tolist()
    res = run_cli("review", "--index", index, "--model", model, "--next", 3, "--json")
    assert res.exit_code == 0, res.output
    queue = json.loads(res.output)
    assert 0 < len(queue) <= 3 and len({q["id"] for q in queue}) == len(queue)
    res = run_cli("review", "--index", index, "--model", model, "--image", fake_env / "images" / names[0],
                  "--decision", "none", "--operator", "ana")
    assert res.exit_code == 0 and "recorded" in res.output, res.output
    res = run_cli("review", "--index", index, "--model", model, "--id", 1, "--decision", "child")
    assert res.exit_code == 0, res.output
    res = run_cli("review", "--index", index, "--model", model, "--id", 99, "--decision", "child")
    assert res.exit_code == 2 and "--id 99 is not a row" in res.output
    res = run_cli("review", "--index", index, "--list", "--json")
    listed = json.loads(res.output)
    assert {(d["rel_path"], d["decision"]) for d in listed} == {(names[0], "none"), (names[1], "child")}
    assert run_cli("review", "--index", index, "--export", tmp_path / "d.json").exit_code == 0
    res = run_cli("query", "a dog", "--index", index, "--model", model, "--json", "--policy", "audit", "-k", 10)
    why = {h["image"]: h["why"] for h in json.loads(res.output)["hits"]}
    assert why[Path(names[0]).name]["review"]["operator"] == "ana"

    res = run_cli("policy-refit", "--index", index, "--model", model)
    assert res.exit_code == 0, res.output
    saved = (index / "reviews" / "refit.json").read_text()
    import retrieval.atomic as atomic

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    res = run_cli("policy-refit", "--index", index, "--model", model)
    assert res.exit_code != 0
    monkeypatch.undo()
    assert (index / "reviews" / "refit.json").read_text() == saved
    assert sum(e["event"] == "refit" for e in ReviewStore(index).log()) == 1

    from retrieval.server import create_app
    from retrieval.search import Retriever

    retriever = Retriever.open(index, model)
    audit = TestClient(create_app(retriever, "audit", thumb_dir=tmp_path / "thumbs"))
    got = audit.get("/api/review/queue", params={"n": 2}).json()["hits"]
    assert got and all(h["id"] not in (0, 1) or "review" not in h["why"] for h in got)
    row = next(i for i in range(len(names)) if i not in (0, 1))
    res = audit.post("/api/review", json={"id": row, "decision": "child", "operator": "web"})
    assert res.status_code == 200 and res.json()["hit"]["restricted"] is True
    assert ReviewStore(index).decisions()[retriever.policy.sha[row]].operator == "web"
    assert audit.post("/api/review", json={"id": "1", "decision": "child"}).status_code == 400
    strict = TestClient(create_app(retriever, "strict", thumb_dir=tmp_path / "thumbs"))
    assert strict.post("/api/review", json={"id": row, "decision": "none"}).status_code == 403
    assert strict.get(f"/api/image/{row}").status_code == 451  # the web decision withholds it under strict


def test_a_refit_made_for_another_model_is_ignored_and_said(fake_env: Path, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    shutil.copytree(fake_env / "idx", index)
    Refit("another-model", (0.0,) * 6, (1.0,) * 6, (0.0,) * 6, 0.0, 0.99, now_iso(), "ana").save(index)
    res = run_cli("query", "a dog", "--index", index, "--model", fake_env / "model", "--json")
    assert res.exit_code == 0, res.output
    assert "note: refit.json was made for model another-mode" in res.stderr
    from retrieval.search import Retriever

    retriever = Retriever.open(index, fake_env / "model")
    assert retriever.policy.refit is None and retriever.image_threshold == retriever.model.config.child_image_threshold
