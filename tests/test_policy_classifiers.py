"""Probes on seeded synthetic features: they learn, thresholds honour their targets, tensors round-trip."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import ModelMismatchError
from retrieval.policy.classifiers import (
    LinearProbe, image_child_labels, load_probe, save_probe, threshold_for_fpr, threshold_for_recall,
    train_image_probe, train_text_probe,
)
from retrieval.policy.metrics import policy_metrics, query_policy_metrics


def _blobs(n: int = 400, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    direction = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + np.outer(np.where(y, 1.5, -1.5), direction / np.linalg.norm(direction))
    return X.astype(np.float32), y


def test_image_probe_learns_and_meets_its_recall_target() -> None:
    X, y = _blobs()
    probe, m = train_image_probe(X, y, groups=np.arange(len(y)), target_recall=0.97)
    assert m["auc"] > 0.95
    assert m["recall"] >= 0.97
    assert 0.0 < probe.threshold < 1.0
    p = probe.predict_proba(X)
    assert p.shape == (len(y),) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()


def test_probe_is_plain_arrays_and_round_trips(tmp_path) -> None:
    X, y = _blobs(seed=1)
    probe, m = train_image_probe(X, y, groups=np.arange(len(y)))
    assert m["auc"] > 0.9
    tensors = probe.to_tensors(prefix="child_image.")
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in tensors.values())
    back = LinearProbe.from_tensors(tensors, prefix="child_image.")
    np.testing.assert_allclose(back.predict_proba(X), probe.predict_proba(X), rtol=1e-6)
    assert back.threshold == pytest.approx(probe.threshold)
    save_probe(probe, tmp_path / "p.safetensors")
    np.testing.assert_allclose(load_probe(tmp_path / "p.safetensors").predict_proba(X), probe.predict_proba(X),
                               rtol=1e-6)


def test_text_probe_threshold_keeps_fpr_below_target() -> None:
    X, y = _blobs(n=600, seed=2)
    probe = train_text_probe(X, y, max_fpr=0.02)
    assert policy_metrics(y, probe.predict_proba(X), probe.threshold)["fpr"] <= 0.05
    back = LinearProbe.from_tensors(probe.to_tensors())
    np.testing.assert_allclose(back.predict_proba(X), probe.predict_proba(X), rtol=1e-6)


def test_grouped_cv_never_splits_a_group() -> None:
    from retrieval.policy.classifiers import out_of_fold

    X, y = _blobs(n=200, seed=3)
    X[1::2] = X[::2]  # duplicate pairs: a leak would let validation see its own twin
    y[1::2] = y[::2]
    groups = np.repeat(np.arange(100), 2)
    oof = out_of_fold(X, y, groups, n_splits=4)
    assert oof.shape == (200,) and np.isfinite(oof).all()


def test_wrong_dimension_is_a_clear_error() -> None:
    X, y = _blobs()
    probe = train_text_probe(X, y)
    with pytest.raises(ModelMismatchError, match="dimension 16"):
        probe.predict_proba(np.zeros((2, 5), np.float32))
    with pytest.raises(ModelMismatchError, match="missing"):
        LinearProbe.from_tensors({"mean": np.zeros(3)})


def test_thresholds() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.05])
    assert threshold_for_recall(y, s, 0.75) == pytest.approx(0.7)
    assert threshold_for_recall(y, s, 1.0) == pytest.approx(0.2)
    t = threshold_for_fpr(y, s, 0.25)
    assert policy_metrics(y, s, t)["fpr"] <= 0.25 and t <= 0.3 + 1e-9


def test_image_labels_use_any_caption() -> None:
    captions = [("a.jpg#0", "A man on a bench"), ("a.jpg#1", "A girl's kite"), ("b.jpg#0", "A cowboy"),
                ("c.jpg#3", "two dogs")]
    assert image_child_labels(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], captions).tolist() == [True, False, False, False]


def test_query_policy_metrics_combines_rules() -> None:
    texts = ["two kids", "students on a bus", "a man", "a cowboy"]
    y = np.array([True, True, False, False])
    m = query_policy_metrics(texts, y, np.array([0.1, 0.9, 0.2, 0.1]), threshold=0.5)
    assert m["lexicon"]["child_blocked"] == 0.5 and m["combined"]["child_blocked"] == 1.0
    assert m["combined"]["adult_blocked"] == 0.0


def test_pr_plot_is_written(tmp_path) -> None:
    from retrieval.policy.metrics import plot_child_pr

    X, y = _blobs()
    out = plot_child_pr({"probe": (y, X[:, 0])}, tmp_path / "pr.png", {"probe": 0.0})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_probe_with_labelled_queries_sets_threshold_on_adult_queries_the_lexicon_misses() -> None:
    from retrieval.policy.classifiers import LabelledQueries, train_text_probe

    rng = np.random.default_rng(0)
    d = 16
    direction = np.zeros(d, np.float32)
    direction[0] = 3.0
    caps_y = rng.random(400) < 0.3
    caps = rng.normal(size=(400, d)).astype(np.float32) + np.outer(caps_y, direction)
    q_y = rng.random(300) < 0.4
    q = rng.normal(size=(300, d)).astype(np.float32) + np.outer(q_y, direction)
    lexicon = q_y & (rng.random(300) < 0.5)  # the lexicon catches half of the child queries and no adult one
    probe = train_text_probe(caps, caps_y, C=1.0, max_fpr=0.1,
                             queries=LabelledQueries(q, q_y, lexicon), query_weight=3.0)
    fresh_y = rng.random(2000) < 0.5
    fresh = rng.normal(size=(2000, d)).astype(np.float32) + np.outer(fresh_y, direction)
    blocked = probe.predict(fresh)
    assert 0.02 < blocked[~fresh_y].mean() < 0.25  # the threshold targets ~10 % of adult queries the lexicon misses
    assert blocked[fresh_y].mean() > 0.8
