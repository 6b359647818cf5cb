"""Reranker: calibration stays in [0, 1] and is monotone; soft-target logistic learns the right direction."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.learn.reranker import (Calibration, Reranker, brier, ece, fit_calibration, fit_logistic, logit_grid,
                                pair_features)


def test_calibration_range_and_monotone():
    rng = np.random.default_rng(0)
    logit = rng.normal(size=2000) * 3
    target = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(float)
    cal = fit_calibration(logit, target)
    grid = np.linspace(-50, 50, 5001)
    p = cal(grid)
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert np.all(np.diff(p) >= 0)
    # strictly increasing inside the knot range (no ties from isotonic flat steps)
    inside = (grid > cal.x[0]) & (grid < cal.x[-1])
    assert np.all(np.diff(p[inside]) > 0)
    assert ece(cal(logit), target) < 0.05


def test_soft_target_logistic_orders_pairs_by_agreement():
    rng = np.random.default_rng(1)
    d = 8
    zi = rng.normal(size=(600, d))
    zi /= np.linalg.norm(zi, axis=1, keepdims=True)
    zt = zi + rng.normal(scale=1.0, size=zi.shape) * rng.random((600, 1)) * 2
    zt /= np.linalg.norm(zt, axis=1, keepdims=True)
    feats = pair_features(zi, zt)
    target = np.clip((feats[:, 0] + 1) / 2, 0, 1)
    coef, icpt = fit_logistic(feats, target)
    rr = Reranker(coef, icpt, Calibration(np.array([-10.0, 10.0], np.float32), np.array([0.0, 1.0], np.float32)))
    s = rr.calibration(rr.logit(zi, zt))
    assert np.corrcoef(s, target)[0, 1] > 0.8
    again = Reranker.from_tensors(rr.to_tensors())
    np.testing.assert_array_equal(again.calibration(again.logit(zi, zt)), s)


def test_brier_and_ece_of_perfect_predictions_are_zero():
    t = np.array([0.0, 1.0, 0.5])
    assert brier(t, t) == 0.0 and ece(t, t) == 0.0


def test_caption_memory_pseudo_caption_is_the_neighbours_caption_mean():
    from retrieval.learn.reranker import build_memory

    img = np.eye(3, dtype=np.float32)
    caps = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
    mem = build_memory(img, caps, np.array([0, 1, 2, 2]), k=1)
    np.testing.assert_allclose(mem.pseudo(img)[0], np.eye(3), atol=1e-6)
    feats = pair_features(img, caps[[0, 0, 2]], mem)
    assert feats.shape == (3, 1 + 3 + 1)
    np.testing.assert_allclose(feats[:, -1], [1.0, 0.0, 1.0], atol=1e-6)


def test_reliability_plot_is_written(tmp_path):
    from retrieval.learn.reranker import plot_reliability

    rng = np.random.default_rng(2)
    p = rng.random(500)
    plot_reliability(p, (rng.random(500) < p).astype(float), tmp_path / "rel.png")
    assert (tmp_path / "rel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _memory_reranker(rng: np.random.Generator, d: int, knn_products: bool) -> tuple[Reranker, np.ndarray, np.ndarray]:
    from retrieval.learn.reranker import build_memory

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    mem = build_memory(unit(rng.normal(size=(20, d))), unit(rng.normal(size=(40, d))), np.repeat(np.arange(20), 2), k=3)
    n_coef = 2 + d + (d if knn_products else 0)
    rr = Reranker(rng.normal(size=n_coef).astype(np.float32), 0.3,
                  Calibration(np.array([-10.0, 10.0], np.float32), np.array([0.0, 1.0], np.float32)), mem)
    return rr, unit(rng.normal(size=(7, d))), unit(rng.normal(size=(7, d)))


def test_knn_products_are_the_text_times_pseudo_caption_and_drive_the_logit():
    rng = np.random.default_rng(4)
    d = 6
    rr, zi, zt = _memory_reranker(rng, d, knn_products=True)
    feats = pair_features(zi, zt, rr.memory, knn_products=True)
    assert feats.shape == (7, 2 + 2 * d)
    kp = rr.memory.pseudo(zi)[0] * zt
    np.testing.assert_allclose(feats[:, 2 + d :], kp, atol=1e-6)
    np.testing.assert_allclose(feats[:, 1 + d], kp.sum(axis=1), atol=1e-6)
    assert rr.uses_knn_products()
    np.testing.assert_allclose(rr.logit(zi, zt), feats @ rr.coef + 0.3, rtol=1e-5, atol=1e-5)
    again = Reranker.from_tensors(rr.to_tensors())
    assert again.uses_knn_products()
    np.testing.assert_array_equal(again.logit(zi, zt), rr.logit(zi, zt))


def test_models_without_knn_products_keep_their_feature_layout():
    rng = np.random.default_rng(5)
    d = 6
    rr, zi, zt = _memory_reranker(rng, d, knn_products=False)
    assert not rr.uses_knn_products()
    feats = pair_features(zi, zt, rr.memory)
    assert feats.shape == (7, 2 + d)
    np.testing.assert_allclose(rr.logit(zi, zt), feats @ rr.coef + 0.3, rtol=1e-5, atol=1e-5)


def test_logit_grid_equals_the_per_pair_logits_with_and_without_knn_products():
    rng = np.random.default_rng(6)
    for knn_products in (True, False):
        rr, zi, zt = _memory_reranker(rng, 6, knn_products)
        grid = logit_grid(rr.coef, rr.intercept, zt[:3], zi, rr.memory.pseudo(zi)[0])
        assert grid.shape == (3, 7)
        for q in range(3):
            np.testing.assert_allclose(grid[q], rr.logit(zi, zt[q]), rtol=1e-5, atol=1e-5)


def _raw_memory_reranker(rng: np.random.Generator, d: int = 6, d_raw: int = 9):
    """Reranker whose memory also keeps raw captions: 20 images x 2 captions; returns (rr, zi, zt, raw queries)."""
    from retrieval.learn.reranker import build_memory

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    raw_captions = rng.normal(size=(40, d_raw)) * 3.0  # not normalised: build_memory normalises each caption
    mem = build_memory(unit(rng.normal(size=(20, d))), unit(rng.normal(size=(40, d))), np.repeat(np.arange(20), 2), k=3,
                       caption_raw=raw_captions)
    rr = Reranker(rng.normal(size=3 + 2 * d).astype(np.float32), 0.3,
                  Calibration(np.array([-10.0, 10.0], np.float32), np.array([0.0, 1.0], np.float32)), mem)
    return rr, unit(rng.normal(size=(7, d))), unit(rng.normal(size=(7, d))), rng.normal(size=(7, d_raw)) * 2.0


def test_raw_memory_feature_is_the_raw_query_cosine_with_the_neighbours_raw_captions():
    rng = np.random.default_rng(8)
    rr, zi, zt, raw = _raw_memory_reranker(rng)
    assert rr.needs_raw_text() and rr.uses_knn_products()
    feats = pair_features(zi, zt, rr.memory, knn_products=True, txt_raw=raw)
    assert feats.shape == (7, 3 + 2 * 6)
    # by hand: softmax-weighted mean of the k nearest images' normalised raw captions, normalised, dot normalised query
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    m = rr.memory
    for i in range(7):
        sim = m.img_z @ zi[i]
        top = np.argsort(-sim)[: m.k]
        w = np.exp((sim[top] - sim[top].max()) / m.temperature)
        pseudo = unit((w[:, None] * m.raw_caption[top]).sum(0) / w.sum())
        assert abs(feats[i, -1] - float(unit(raw[i]) @ pseudo)) < 1e-5
    np.testing.assert_allclose(rr.logit(zi, zt, raw), feats @ rr.coef + 0.3, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="txt_raw"):
        rr.logit(zi, zt)
    again = Reranker.from_tensors(rr.to_tensors())
    assert again.needs_raw_text()
    np.testing.assert_array_equal(again.logit(zi, zt, raw), rr.logit(zi, zt, raw))


def test_logit_grid_with_raw_memory_equals_the_per_pair_logits():
    rng = np.random.default_rng(9)
    rr, zi, zt, raw = _raw_memory_reranker(rng)
    grid = logit_grid(rr.coef, rr.intercept, zt[:3], zi, rr.memory.pseudo(zi)[0], (raw[:3], rr.memory.pseudo(zi)[1]))
    for q in range(3):
        np.testing.assert_allclose(grid[q], rr.logit(zi, zt[q], raw[q]), rtol=1e-5, atol=1e-5)


def test_reranker_logit_grid_runs_the_memory_once_and_equals_the_per_query_logits(monkeypatch):
    rng = np.random.default_rng(10)
    rr, zi, zt, raw = _raw_memory_reranker(rng)
    calls = []
    real = type(rr.memory).pseudo
    monkeypatch.setattr(type(rr.memory), "pseudo", lambda self, z: calls.append(len(z)) or real(self, z))
    grid = rr.logit_grid(zi, zt[:4], raw[:4])
    assert calls == [len(zi)]  # one neighbour search for the whole gallery
    assert grid.shape == (4, 7)
    for q in range(4):
        np.testing.assert_allclose(grid[q], rr.logit(zi, zt[q], raw[q]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="txt_raw"):
        rr.logit_grid(zi, zt[:4])


def test_listwise_term_teaches_the_ranking_that_graded_rows_do_not_show():
    from retrieval.learn.reranker import fit_listwise

    rng = np.random.default_rng(7)
    n_feat = 5
    # graded rows: target depends on feature 0 only; lists: the right candidate stands out on feature 3
    x = rng.normal(size=(400, n_feat)).astype(np.float32)
    target = 1 / (1 + np.exp(-2 * x[:, 0]))
    lists_f = rng.normal(size=(200, 10, n_feat)).astype(np.float32)
    pos = rng.integers(0, 10, 200)
    lists_f[np.arange(200), pos, 3] += 3.0
    w = np.ones(400, np.float32)
    coef, icpt = fit_listwise(x, target, w, [(lists_f, pos)], rank_weight=0.0, steps=300)
    np.testing.assert_allclose(coef, [2.0, 0.0, 0.0, 0.0, 0.0], atol=0.1)  # plain soft-target fit: target = sigmoid(2 x0)
    assert np.mean((lists_f @ coef).argmax(axis=1) == pos) < 0.3
    coef, icpt = fit_listwise(x, target, w, [(lists_f, pos)], rank_weight=1.0, steps=300)
    assert np.mean((lists_f @ coef).argmax(axis=1) == pos) > 0.8
    assert coef[0] > 0.2  # the graded signal is still used
