"""Learned second lines of the legal policy: probes on frozen encoder features.

* Text probe: logistic regression on the query's text embedding, trained on course captions labelled by the
  lexicon, to catch phrasings the lexicon misses ("a little lass", "a pupil raising her hand"). A query is
  restricted when the lexicon fires OR the probe's probability reaches its threshold.
* Image probe: logistic regression on image embeddings; an image is labelled positive
  when ANY of its captions mentions a child. Its threshold favours recall (chosen on out-of-fold predictions of a
  grouped cross-validation).

Probes are plain arrays (`to_tensors`/`from_tensors`) so they live in the model folder's safetensors, never
pickles. Inputs are L2-normalised, then standardised with the stored mean/scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.errors import ModelMismatchError
from retrieval.policy.lexicon import mentions_child
from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

__all__ = ["LinearProbe", "LabelledQueries", "train_text_probe", "train_image_probe", "image_child_labels", "text_child_labels",
           "threshold_for_recall", "threshold_for_fpr"]


def _l2(x: npt.ArrayLike) -> FloatArray:
    return l2n(np.asarray(x, np.float32))


def _sigmoid(z: npt.NDArray[np.float64]) -> FloatArray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # tanh form: no overflow warnings


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """p(child | x) = sigmoid(standardise(l2(x)) . weight + bias): a logistic regression as plain arrays.

    Attributes:
        mean, scale: (d,) standardisation of the L2-normalised input.
        weight: (d,) coefficients; bias: (1,).
        threshold: operating point; `predict` returns prob >= threshold.
    """

    mean: FloatArray
    scale: FloatArray
    weight: FloatArray
    bias: FloatArray
    threshold: float = 0.5

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def decision_function(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ModelMismatchError(
                f"child probe expects features of dimension {self.dim}, got shape {X.shape}; "
                "the probe was trained for another encoder -- retrain it or pick the matching encoder"
            )
        h = ((_l2(X) - self.mean) / self.scale).astype(np.float64)
        return (h @ self.weight.reshape(h.shape[1], -1)).reshape(-1) + float(self.bias.reshape(-1)[0])

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        """(n, d) features -> (n,) probability of describing/depicting a child."""
        return _sigmoid(self.decision_function(X))

    def predict(self, X: npt.ArrayLike) -> BoolArray:
        return self.predict_proba(X) >= self.threshold

    def with_threshold(self, threshold: float) -> LinearProbe:
        return LinearProbe(self.mean, self.scale, self.weight, self.bias, float(threshold))

    def to_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Plain float32 arrays for safetensors (keys: mean, scale, weight, bias, threshold)."""
        out = {
            f"{prefix}mean": np.asarray(self.mean, np.float32),
            f"{prefix}scale": np.asarray(self.scale, np.float32),
            f"{prefix}weight": np.asarray(self.weight, np.float32),
            f"{prefix}bias": np.asarray(self.bias, np.float32).reshape(1),
            f"{prefix}threshold": np.asarray([self.threshold], np.float32),
        }
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], prefix: str = "") -> LinearProbe:
        """Inverse of `to_tensors` (accepts numpy arrays or torch tensors)."""

        def get(key: str) -> FloatArray:
            if prefix + key not in tensors:
                raise ModelMismatchError(f"child probe tensor {prefix + key!r} is missing; retrain the model folder")
            return np.asarray(tensors[prefix + key], np.float32)

        return cls(get("mean"), get("scale"), get("weight"), get("bias").reshape(1), float(get("threshold")[0]))


# ----------------------------------------------------------------------------------------------- labels
def text_child_labels(texts: Sequence[str]) -> BoolArray:
    """Lexicon labels for texts (the text probe's training target)."""
    return mentions_child(texts)


def image_child_labels(
    image_names: Sequence[str], captions: Sequence[tuple[str, str]]
) -> BoolArray:
    """An image is positive when ANY caption written for it mentions a child.

    Args:
        image_names: images to label (row order of the image features).
        captions: (query_id, text) pairs, query_id = "<image>#<n>" (train_dataset query texts + extra captions).
    """
    positive: set[str] = set()
    texts = [t for _, t in captions]
    for (qid, _), hit in zip(captions, mentions_child(texts)):
        if hit:
            positive.add(qid.split("#", 1)[0])
    return np.array([n in positive for n in image_names], dtype=bool)


# ----------------------------------------------------------------------------------------------- thresholds
def threshold_for_recall(y: npt.ArrayLike, scores: npt.ArrayLike, recall: float) -> float:
    """Largest threshold whose recall on (y, scores) is >= `recall` (favours recall: ties are included)."""
    y = np.asarray(y, bool)
    pos = np.sort(np.asarray(scores, np.float64)[y])[::-1]
    if pos.size == 0:
        return 0.5
    k = int(np.ceil(recall * pos.size)) - 1
    return float(pos[min(max(k, 0), pos.size - 1)])


def threshold_for_fpr(y: npt.ArrayLike, scores: npt.ArrayLike, max_fpr: float) -> float:
    """Smallest threshold whose false-positive rate on the negatives stays <= `max_fpr`."""
    y = np.asarray(y, bool)
    neg = np.sort(np.asarray(scores, np.float64)[~y])[::-1]
    if neg.size == 0:
        return 0.5
    n_allowed = int(np.floor(max_fpr * neg.size))
    return float(np.nextafter(neg[n_allowed], np.inf)) if n_allowed < neg.size else 0.0


# ----------------------------------------------------------------------------------------------- training
def _standardiser(X: FloatArray) -> tuple[FloatArray, FloatArray]:
    Z = _l2(X)
    return Z.mean(0).astype(np.float32), np.maximum(Z.std(0), 1e-6).astype(np.float32)


def _fit_lr(X: FloatArray, y: BoolArray, C: float, class_weight: str | None,
            sample_weight: npt.ArrayLike | None = None) -> LinearProbe:
    from sklearn.linear_model import LogisticRegression

    mean, scale = _standardiser(X)
    Z = (_l2(X) - mean) / scale
    lr = LogisticRegression(C=C, class_weight=class_weight, max_iter=3000)
    lr.fit(Z, y, sample_weight=sample_weight)
    return LinearProbe(mean, scale, lr.coef_[0].astype(np.float32), lr.intercept_.astype(np.float32))


def _fit(X: FloatArray, y: BoolArray, C: float) -> LinearProbe:
    return _fit_lr(X, y, C, "balanced")


def out_of_fold(
    X: FloatArray, y: BoolArray, groups: Sequence[Any], C: float = 0.001, n_splits: int = 5, seed: int = 0,
) -> FloatArray:
    """Out-of-fold probabilities from a grouped, stratified K-fold (no group spans train and validation)."""
    from sklearn.model_selection import StratifiedGroupKFold

    X = np.asarray(X, np.float32)
    y = np.asarray(y, bool)
    oof = np.zeros(len(y), np.float32)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for tr, va in folds.split(X, y, np.asarray(groups)):
        oof[va] = _fit(X[tr], y[tr], C).predict_proba(X[va])
    return oof


@dataclass(frozen=True)
class LabelledQueries:
    """Hand-labelled search queries for the text probe (`retrieval/policy/child_queries_train.tsv`).

    Attributes:
        feats: (n, d) text-encoder features.
        is_child: (n,) true labels (the query asks for a child).
        lexicon: (n,) the lexicon's verdict; the probe's threshold is set on adult queries the lexicon lets through.
    """

    feats: FloatArray
    is_child: BoolArray
    lexicon: BoolArray


def train_text_probe(
    text_feats: npt.ArrayLike, labels: npt.ArrayLike, C: float = 0.5, max_fpr: float = 0.02,
    groups: Sequence[Any] | None = None, n_splits: int = 5, seed: int = 0,
    queries: LabelledQueries | None = None, query_weight: float = 3.0,
) -> LinearProbe:
    """Logistic regression on text embeddings of lexicon-labelled captions (+ hand-labelled queries).

    Queries are blocked when the lexicon OR the probe fires, so the probe only has to add recall without blocking
    ordinary adult queries. Threshold:
    * with `queries`: the probe is trained on captions + queries (weight `query_weight`); the threshold is the
      (1 - max_fpr) quantile of the out-of-fold probabilities of the adult queries the lexicon does not block
      (stratified K-fold over queries; captions are always in training).
    * without: the smallest threshold whose out-of-fold false-positive rate on lexicon-negative captions stays
      <= `max_fpr`.
    """
    X = np.asarray(text_feats, np.float32)
    y = np.asarray(labels, bool)
    if queries is None:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        oof = out_of_fold(X, y, groups, C, n_splits=n_splits, seed=seed)
        return _fit_lr(X, y, C, "balanced").with_threshold(threshold_for_fpr(y, oof, max_fpr))
    from sklearn.model_selection import StratifiedKFold

    Xq, yq = np.asarray(queries.feats, np.float32), np.asarray(queries.is_child, bool)

    def fit(rows: npt.NDArray[np.int64]) -> LinearProbe:  # all captions + these queries (weighted)
        return _fit_lr(np.vstack([X, Xq[rows]]), np.concatenate([y, yq[rows]]), C, "balanced",
                       np.concatenate([np.ones(len(y)), np.full(len(rows), query_weight)]))

    oof = np.zeros(len(yq), np.float32)
    for tr, va in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(Xq, yq):
        oof[va] = fit(tr).predict_proba(Xq[va])
    free = oof[~yq & ~np.asarray(queries.lexicon, bool)]
    threshold = float(np.quantile(free, 1.0 - max_fpr)) if free.size else 0.5
    return fit(np.arange(len(yq))).with_threshold(threshold)


def train_image_probe(
    image_feats: npt.ArrayLike, labels: npt.ArrayLike, groups: Sequence[Any], C: float = 0.001,
    target_recall: float = 0.97, n_splits: int = 5, seed: int = 0,
) -> tuple[LinearProbe, dict[str, float]]:
    """Image probe + its grouped cross-validated metrics.

    The threshold is the largest one whose out-of-fold recall is >= `target_recall` (the law favours recall);
    the returned probe is refit on all images. Metrics (AUC, AP, precision/recall/FPR at that threshold) are
    from the out-of-fold predictions, i.e. honest for unseen images.
    """
    from retrieval.policy.metrics import policy_metrics

    X = np.asarray(image_feats, np.float32)
    y = np.asarray(labels, bool)
    oof = out_of_fold(X, y, groups, C, n_splits, seed)
    threshold = threshold_for_recall(y, oof, target_recall)
    probe = _fit(X, y, C).with_threshold(threshold)
    return probe, policy_metrics(y, oof, threshold)


def save_probe(probe: LinearProbe, path: Path) -> None:
    """Standalone safetensors file (the ML helper normally stores probes inside the model folder instead)."""
    import os
    import tempfile

    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(probe.to_tensors(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_probe(path: Path) -> LinearProbe:
    from safetensors.numpy import load_file

    return LinearProbe.from_tensors(load_file(str(path)))
