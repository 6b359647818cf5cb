"""The semantic bridge (#15): ImageNet classes per image, class names in the text encoder's space, fused into the key."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoders.fake import FakeImageEncoder, FakeTextEncoder
from retrieval.encoders.imagenet import ClassifierHead, head_part, part_columns
from retrieval.learn.bridge import (BridgedImages, ClassLists, SemanticBridge, class_prompts, decode_classes,
                                    encode_classes)
from retrieval.learn.model import RetrievalModel
from retrieval.vectors import l2n


def _bridge(n_classes: int = 12, dim: int = 16, weight: float = 2.0, seed: int = 0) -> SemanticBridge:
    rng = np.random.default_rng(seed)
    return SemanticBridge(l2n(rng.normal(size=(n_classes, dim)).astype(np.float32)), "fake-image", 1.0, weight, 3)


def test_bridge_cosine_is_the_query_against_the_probability_weighted_class_mix() -> None:
    b = _bridge()
    rng = np.random.default_rng(1)
    ids = np.stack([rng.choice(12, 3, replace=False) for _ in range(7)])
    p = rng.dirichlet(np.ones(3), size=7).astype(np.float32)
    q = rng.normal(size=(4, 16)).astype(np.float32)
    mix = l2n(np.einsum("nk,nkd->nd", p, b.class_text[ids]))
    want = l2n(q) @ mix.T
    assert np.allclose(b.grid(q, ids, p), want, atol=1e-5)
    assert np.allclose(b.rows_cos(q[[0, 1, 2, 3]], ids[:4], p[:4]), np.diag(want[:, :4]), atol=1e-5)
    images = BridgedImages(b, ids, p)
    assert np.allclose(images.cos(b.query_classes(q[2])[0], np.arange(7)), want[2], atol=1e-5)


def test_classes_column_round_trips_and_empty_cells_match_nothing() -> None:
    ids = np.array([[5, 1, 0], [2, 3, 4]])
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.125]], np.float32)
    column = encode_classes(ids, p)
    assert column[0] == "5:0.7000 1:0.2000 0:0.1000"
    got_ids, got_p = decode_classes(column, 3)
    assert (got_ids == ids).all() and np.allclose(got_p, p, atol=1e-4)
    mixed_ids, mixed_p = decode_classes([column[0], "", None, column[1]], 3)  # the cell-by-cell path
    assert (mixed_ids[[0, 3]] == ids).all() and (mixed_p[[1, 2]] == 0).all()
    images = BridgedImages(_bridge(), mixed_ids, mixed_p)
    assert images.norms[1] == 0 and images.cos(np.ones(12, np.float32), np.array([1, 2])).tolist() == [0.0, 0.0]


def test_class_lists_give_the_most_probable_images_of_the_querys_nearest_classes() -> None:
    ids = np.array([[0, 1], [0, 2], [1, 0], [2, 1], [0, 1]])
    p = np.array([[0.9, 0.1], [0.3, 0.2], [0.6, 0.4], [0.8, 0.1], [0.5, 0.5]], np.float32)
    lists = ClassLists(ids, p, 3)
    qc = np.array([1.0, 0.0, -1.0])  # nearest class: 0
    assert lists.candidates(qc, 1, 2).tolist() == [0, 4]  # class 0 by falling probability: rows 0 (.9), 4 (.5)
    allowed = np.array([False, True, True, True, True])
    assert lists.candidates(qc, 1, 2, allowed).tolist() == [2, 4]  # a folder filter keeps k candidates
    assert set(lists.candidates(qc, 2, 10).tolist()) == {0, 1, 2, 3, 4}


def test_classifier_head_ranks_classes_by_probability_at_the_stored_scale() -> None:
    rng = np.random.default_rng(0)
    head = ClassifierHead(rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=6).astype(np.float32))
    f = rng.normal(size=(3, 8)).astype(np.float32)
    ids, p = head.top(f, 10.0, 4)
    assert ids.shape == (3, 4) and (np.diff(p, axis=1) <= 0).all() and (p.sum(axis=1) <= 1 + 1e-6).all()
    assert np.allclose(head.probs(f * 7.0, 10.0), head.probs(f, 10.0))  # only the direction of the feature counts
    assert ids[0, 0] == int(np.argmax(10.0 * l2n(f[:1]) @ head.weight.T + head.bias))


def test_the_head_part_and_its_columns_inside_the_default_encoder() -> None:
    enc = "efficientnet-lite0+efficientnet-lite2+efficientnet-lite2-hires"
    assert head_part(enc) == "efficientnet-lite2" and head_part("efficientnet-lite0") == "efficientnet-lite0"
    assert head_part("resnet50") is None
    assert part_columns(enc, "efficientnet-lite2") == slice(1280, 2560)
    assert part_columns("efficientnet-lite0", "efficientnet-lite0") == slice(None)
    assert part_columns("efficientnet-lite2-hires", "efficientnet-lite2-hires") == slice(0, 1280)
    # a mean+max part: its classifier reads the mean half only
    assert head_part("efficientnet-lite0+efficientnet-lite2-hires") == "efficientnet-lite2-hires"
    assert part_columns("efficientnet-lite0+efficientnet-lite2-hires", "efficientnet-lite2-hires") == slice(1280, 2560)
    assert part_columns("efficientnet-lite2-hires+efficientnet-lite0", "efficientnet-lite0") == slice(2560, 3840)
    with pytest.raises(ValueError):
        part_columns("resnet18+efficientnet-lite2", "efficientnet-lite2")


def test_the_key_adds_the_weighted_bridge_cosine_and_refuses_to_rank_without_it(fake_env: Path, tmp_path: Path) -> None:
    base = RetrievalModel.load(fake_env / "model")
    model = RetrievalModel(replace(base.config, bridge=_bridge(dim=64).config()), base.projection, base.reranker,
                           base.detector, base.text_probe, _bridge(dim=64))
    model.save(tmp_path / "m")
    loaded = RetrievalModel.load(tmp_path / "m")
    assert loaded.bridge is not None and loaded.bridge_weight == 2.0
    assert np.allclose(loaded.bridge.class_text, model.bridge.class_text)
    z = l2n(np.random.default_rng(0).normal(size=(3, base.dim)).astype(np.float32))
    raw = FakeTextEncoder().encode(["a red car"])[0]
    bc = np.array([0.0, 0.5, -0.2], np.float32)
    assert np.allclose(loaded.rank_key(z, z[0], raw, bc) - base.rank_key(z, z[0], raw), 2.0 * bc, atol=1e-5)
    with pytest.raises(ValueError, match="bridge"):
        loaded.rank_key(z, z[0], raw)


def _fake_zebra(fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weight: float) -> tuple[Path, str]:
    """The fake model plus a bridge whose one class, "zebra" (a word no course_tiny caption has), is what the fake
    classifier head sees in one chosen photo; returns (model folder, that photo's name)."""
    import retrieval.encoders.imagenet as imagenet
    from index_store import backend_for
    from retrieval.index.imageio import load_image

    names = backend_for(fake_env / "idx").load().meta["rel_path"].astype(str).tolist()  # the decodable photos
    target = names[3]

    enc = FakeImageEncoder()
    feats = enc.embed_batch([enc.preprocess(load_image(fake_env / "images" / n)) for n in names])
    others = np.delete(l2n(feats), 3, axis=0)
    # class 0 "zebra" fires on the target photo's direction, class 1 "pebble" on the mean of the others
    weight_rows = np.stack([l2n(feats[3:4])[0], l2n(others.mean(0, keepdims=True))[0]]) * 30.0
    head = ClassifierHead(weight_rows.astype(np.float32), np.zeros(2, np.float32))
    monkeypatch.setattr(imagenet, "lite_head", lambda part, weights=None: head)
    class_text = l2n(FakeTextEncoder().encode(class_prompts(["zebra", "pebble"])))
    bridge = SemanticBridge(class_text.astype(np.float32), "fake-image", 1.0, weight, 2)
    base = RetrievalModel.load(fake_env / "model")
    RetrievalModel(replace(base.config, bridge=bridge.config()), base.projection, base.reranker, base.detector,
                   base.text_probe, bridge).save(tmp_path / "model")
    return tmp_path / "model", target


def test_a_word_the_course_never_taught_finds_its_photo_through_the_bridge(fake_env: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.index.build import build_index_with_model
    from retrieval.search import Retriever

    model, target = _fake_zebra(fake_env, tmp_path, monkeypatch, weight=50.0)
    images = tmp_path / "images"
    shutil.copytree(fake_env / "images", images)
    build_index_with_model(images, tmp_path / "idx", model, progress=False)
    r = Retriever.open(tmp_path / "idx", model)
    stored = r.store.meta.set_index("rel_path")["classes"]
    assert stored[target].startswith("0:")  # the index keeps each photo's top classes
    hits = r.search("a zebra", k=3).hits
    assert hits[0].image == target
    bridge_cos = r.bridge_cos(r.text_encoder.encode(["a zebra"]), np.arange(r.store.count))
    assert int(np.argmax(bridge_cos)) == r.store.meta["rel_path"].tolist().index(target)


def test_the_bridges_own_candidates_respect_the_folder_filter(fake_env: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.index.build import build_index_with_model
    from retrieval.search import Retriever

    model, target = _fake_zebra(fake_env, tmp_path, monkeypatch, weight=50.0)
    images = tmp_path / "images"
    shutil.copytree(fake_env / "images", images / "a")
    shutil.copytree(fake_env / "images", images / "b")
    (images / "b" / target).unlink()
    build_index_with_model(images, tmp_path / "idx", model, progress=False)
    r = Retriever.open(tmp_path / "idx", model)
    n_b = int(r.store.meta["rel_path"].str.startswith("b/").sum())
    hits = r.search("a zebra", k=n_b, under="b").hits
    assert len(hits) == n_b and all(h.path.split("/")[-2] == "b" for h in hits)
    assert r.search("a zebra", k=1, under="a").hits[0].image == target
