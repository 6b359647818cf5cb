"""The image-to-image score (retrieval.learn.examples): which graded pairs become image pairs, and the fit."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from retrieval.learn.examples import (calibration_from_json, calibration_to_json, example_pairs,
                                      fit_example_calibration)
from retrieval.learn.validation import CoursePairs


def _training_set(restricted: list[bool], text_child: list[bool], rule: bool = True) -> SimpleNamespace:
    """6 images, text j written for image j // 2 (3 owners); graded pairs (image, text) with targets."""
    n_img, n_txt = 6, 6
    graded = [(1, 0, 0.6), (1, 1, 0.8), (0, 2, 0.9), (3, 4, 0.2), (2, 0, 0.5), (4, 2, 0.4), (0, 0, 1.0), (5, 5, 0.7)]
    ev = CoursePairs(n_images=n_img, n_texts=n_txt, caption_img=np.zeros(0, np.int64), caption_txt=np.zeros(0, np.int64),
                     caption_qid=[], text_owner=np.array([0, 0, 1, 1, 2, 2]),
                     graded_img=np.array([g[0] for g in graded]), graded_txt=np.array([g[1] for g in graded]),
                     graded_target=np.array([g[2] for g in graded], np.float32),
                     graded_source=["expert", "crowd", "expert", "crowd", "expert", "crowd", "expert", "crowd"])
    return SimpleNamespace(ev=ev, restricted=np.array(restricted), text_child=np.array(text_child), rule=rule)


def _folds() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return [(np.array([0, 1, 2]), z[:3]), (np.array([3, 4, 5]), z[3:])]


def test_pairs_are_other_images_of_the_same_fold_averaged_over_their_captions() -> None:
    folds = _folds()
    p = example_pairs(_training_set([False] * 6, [False] * 6), folds)
    got = {(int(a), int(b)): float(t) for a, b, t in zip(p.a, p.b, p.target)}
    # (1, text 0/1 of image 0) -> pair (0, 1), mean of 0.6 and 0.8; (0, text 2 of image 1) -> (1, 0); (2, text 0) ->
    # (0, 2). Left out: (3, text 4: image 2 is in the other fold), (4, text 2: other fold), (0, own text 0),
    # (5, own text 5).
    assert got == pytest.approx({(0, 1): 0.7, (1, 0): 0.9, (0, 2): 0.5})
    z = folds[0][1]
    for a, b, c in zip(p.a, p.b, p.cos):
        assert c == pytest.approx(float(z[a] @ z[b]), abs=1e-6)
    assert p.expert.tolist() == [True, True, True]  # every kept pair had an expert row


def test_the_training_rule_drops_pairs_with_a_restricted_image_or_a_child_caption() -> None:
    folds = _folds()
    p = example_pairs(_training_set([False, False, True, False, False, False], [False] * 6), folds)
    assert {(int(a), int(b)) for a, b in zip(p.a, p.b)} == {(0, 1), (1, 0)}
    p = example_pairs(_training_set([False] * 6, [True, False, False, False, False, False]), folds)
    assert {(int(a), int(b)): round(float(t), 3) for a, b, t in zip(p.a, p.b, p.target)} == {(0, 1): 0.8, (1, 0): 0.9}
    p = example_pairs(_training_set([False, False, True, False, False, False], [True] * 6, rule=False), folds)
    assert len(p.a) == 3


def test_the_fit_is_monotone_cross_fitted_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    cos = rng.uniform(-0.3, 0.9, n).astype(np.float32)
    target = np.clip(cos + rng.normal(0, 0.15, n), 0, 1).astype(np.float32)
    pairs = SimpleNamespace(a=rng.integers(0, 300, n), b=rng.integers(0, 300, n), cos=cos, target=target,
                            fold=rng.integers(0, 5, n), expert=rng.random(n) < 0.3)
    cal, m = fit_example_calibration(pairs)
    grid = np.linspace(-1, 1, 50, dtype=np.float32)
    assert np.all(np.diff(cal(grid)) >= 0)
    assert m["tau_b"] > 0.5 and m["ece"] < 0.05 and m["brier"] < m["brier_constant"]
    assert 0.3 < m["cosine_at_0.5"] < 0.7  # target = cos + noise crosses 0.5 near cos 0.5
    assert sum(r["n"] for r in m["reliability"]) == n
    assert cal(np.array([1.0], np.float32))[0] > 0.97  # the same photo fully matches a description of itself
    assert m["max_score_observed_range"] < 0.97
    again = calibration_from_json(calibration_to_json(cal))
    assert np.allclose(again(grid), cal(grid), atol=1e-5)
    assert calibration_from_json({}) is None


def test_too_few_pairs_is_a_clear_refusal() -> None:
    pairs = SimpleNamespace(a=np.arange(5), b=np.arange(5), cos=np.zeros(5, np.float32), target=np.zeros(5, np.float32),
                            fold=np.array([0, 0, 1, 1, 1]), expert=np.ones(5, bool))
    with pytest.raises(ValueError, match="too few"):
        fit_example_calibration(pairs)
