"""Fit the child detector on visually labelled images, with image-grouped folds (measurement lives in the metrics).

Labels (`visual_labels.tsv`): child / none / unsure. `unsure` counts as positive (the law favours recall) for the
heads and the threshold; metrics report child and unsure apart. Person labels for the gate: a person is present
when the visual label is child/unsure, or when at least two of the image's captions name a person.

Face head, multiple-instance: faces in `none` images are negatives; at first every face in a `child` image is a
positive, then (twice) only the most child-like face of each child image stays positive -- the adults next to a
child stop teaching "a face means a child". Every number below is out-of-fold: each fold refits all heads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.policy.classifiers import LinearProbe, _fit_lr, threshold_for_recall
from retrieval.policy.detector import (FEATURES, LABEL_CODES, N_FUSED, ChildDetector, _logit, _sigmoid, familiarity, fusion_features,
                                       reference_space)
from retrieval.policy.faces import Face

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

TARGET_RECALL = 0.97
#: The gate lets through this share of positive images that show no face (out-of-fold).
GATE_RECALL = 0.99
#: Out-of-fold, at most this share of positive images without a face is called unfamiliar.
UNFAMILIAR_MAX = 0.01
C_IMAGE = 0.001
C_FACE = 0.003
C_FUSION = 1.0
MIL_ROUNDS = 2

_PERSON_WORDS = re.compile(
    r"\b(man|men|woman|women|person|people|boys?|girls?|child|children|kids?|bab(y|ies)|toddlers?|lad(y|ies)|guys?|"
    r"players?|riders?|bikers?|skiers?|surfers?|crowd|someone|he|she|couple|family|teen(ager)?s?|adults?|climbers?|"
    r"swimmers?|snowboarders?|skateboarders?|skaters?|cyclists?|bicyclists?|runners?|dancers?|workers?|team|infant|"
    r"male|female|gentleman|daughter|son|mother|father|dad|mom|friends|students?|hikers?|individual|kayakers?|"
    r"performers?|musicians?|band|soldiers?|police|officers?|spectators|audience|wrestlers?|boxers?|athletes?|"
    r"motorcyclists?|jockey|drivers?|cowboy|fisherman|tourists?|group)\b", re.I)


def caption_person_labels(image_names: Sequence[str], captions: Sequence[tuple[str, str]], min_captions: int = 2
                          ) -> BoolArray:
    """True where at least `min_captions` of an image's captions name a person (query_id = "<image>#<n>")."""
    count: dict[str, int] = {}
    for qid, text in captions:
        if _PERSON_WORDS.search(text):
            name = qid.split("#", 1)[0]
            count[name] = count.get(name, 0) + 1
    return np.array([count.get(n, 0) >= min_captions for n in image_names], bool)


@dataclass(frozen=True)
class FaceTable:
    """Faces of the training images: row k is a face of image `image[k]` with crop-encoder features `feats[k]`."""

    image: npt.NDArray[np.int64]
    boxes: FloatArray  # (k, 4)
    probs: FloatArray  # (k,)
    feats: FloatArray  # (k, d)
    sizes: npt.NDArray[np.int64]  # (n_images, 2) width, height

    def faces_of(self, i: int) -> tuple[list[Face], npt.NDArray[np.int64]]:
        rows = np.flatnonzero(self.image == i)
        return [Face(tuple(float(v) for v in self.boxes[k]), float(self.probs[k])) for k in rows], rows  # type: ignore[misc]


def constant_probe(dim: int, prob: float = 0.5) -> LinearProbe:
    """A probe that says `prob` for everything: the stand-in when a head has nothing to learn from (e.g. no face
    in child or in child-free training images); the fusion then gives its input no weight."""
    z = np.zeros(dim, np.float32)
    return LinearProbe(z, np.ones(dim, np.float32), z.copy(), np.asarray([_logit(prob)], np.float32))


def _fit_or_constant(X: FloatArray, y: BoolArray, C: float) -> LinearProbe:
    if y.all() or not y.any():
        return constant_probe(X.shape[1], 0.5)
    return _fit_lr(X, y, C, "balanced")


def _fit_face_head(ft: FaceTable, train: BoolArray, labels: npt.NDArray[np.str_], C: float) -> LinearProbe:
    lab = labels[ft.image]
    neg = train[ft.image] & (lab == "none")
    pos = train[ft.image] & (lab == "child")
    if not neg.any() or not pos.any():
        return constant_probe(ft.feats.shape[1])
    head = _fit_lr(ft.feats[neg | pos], pos[neg | pos], C, "balanced")
    for _ in range(MIL_ROUNDS):
        s = head.predict_proba(ft.feats)
        best: dict[int, int] = {}
        for k in np.flatnonzero(pos):
            i = int(ft.image[k])
            if i not in best or s[k] > s[best[i]]:
                best[i] = int(k)
        top = np.zeros(len(ft.image), bool)
        top[list(best.values())] = True
        head = _fit_lr(ft.feats[neg | top], top[neg | top], C, "balanced")
    return head


def _rows(heads: tuple[LinearProbe, LinearProbe, LinearProbe], G: FloatArray, ft: FaceTable,
          idx: npt.NDArray[np.int64], refs: tuple[FloatArray, FloatArray, FloatArray]) -> FloatArray:
    image_head, person_head, face_head = heads
    fp = face_head.predict_proba(ft.feats) if len(ft.feats) else np.zeros(0, np.float32)
    faces, probs = [], []
    for i in idx:
        fs, rows = ft.faces_of(int(i))
        faces.append(fs)
        probs.append(fp[rows])
    return fusion_features(_logit(image_head.predict_proba(G[idx])), _logit(person_head.predict_proba(G[idx])),
                           faces, probs, [tuple(ft.sizes[i]) for i in idx], familiarity(G[idx], *refs))  # type: ignore[misc]


def _fit_heads(G: FloatArray, ft: FaceTable, labels: npt.NDArray[np.str_], person: BoolArray, train: BoolArray
               ) -> tuple[LinearProbe, LinearProbe, LinearProbe]:
    pos = labels != "none"
    return (_fit_or_constant(G[train], pos[train], C_IMAGE), _fit_or_constant(G[train], person[train], C_IMAGE),
            _fit_face_head(ft, train, labels, C_FACE))


def _fit_fusion(Z: FloatArray, y: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    from sklearn.linear_model import LogisticRegression

    Z = Z[:, :N_FUSED]
    mean, scale = Z.mean(0), Z.std(0) + 1e-6
    lr = LogisticRegression(C=C_FUSION, class_weight="balanced", max_iter=2000).fit((Z - mean) / scale, y)
    return mean.astype(np.float64), scale.astype(np.float64), lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _gate_threshold(Z: FloatArray, y: BoolArray) -> float:
    """Person-head probability that lets GATE_RECALL of the positive images without a face through."""
    no_face = Z[:, 2] == 0
    return threshold_for_recall(y[no_face], _sigmoid(Z[no_face, 1]), GATE_RECALL) if (y & no_face).any() else 0.0


def _familiar_threshold(Z: FloatArray, y: BoolArray) -> float:
    """Familiarity below which at most UNFAMILIAR_MAX of the positive images without a face fall."""
    pos = y & (Z[:, 2] == 0)
    return float(np.quantile(Z[pos, 6], UNFAMILIAR_MAX)) if pos.sum() >= 20 else -1.0


def fit_detector(image_feats: npt.ArrayLike, ft: FaceTable, labels: Sequence[str], person: npt.ArrayLike,
                 n_splits: int = 5, seed: int = 0, target_recall: float = TARGET_RECALL
                 ) -> tuple[ChildDetector, dict[str, Any], npt.NDArray[np.float64]]:
    """Detector fitted on all images, its out-of-fold metrics, and the out-of-fold probabilities.

    Two nested levels of folds keep the fusion honest: the heads' outputs that the fusion learns from are
    themselves out-of-fold (inner folds), and the fusion + gate + threshold are judged on outer folds.
    """
    from sklearn.model_selection import StratifiedKFold

    G = np.asarray(image_feats, np.float32)
    labels_a = np.asarray(labels, dtype="<U8")
    bad = sorted(set(labels_a) - {"child", "none", "unsure"})
    if bad:
        raise ValueError(f"visual labels must be child/none/unsure, got {bad}")
    person_a = np.asarray(person, bool) | (labels_a != "none")
    y = labels_a != "none"
    n = len(labels_a)
    Z = np.zeros((n, len(FEATURES)), np.float32)  # heads' outputs, out-of-fold
    for tr, va in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(G, labels_a):
        train = np.zeros(n, bool)
        train[tr] = True
        Z[va] = _rows(_fit_heads(G, ft, labels_a, person_a, train), G, ft, va, reference_space(G[tr]))
    oof, gate_oof = fusion_out_of_fold(Z, labels_a, n_splits, seed + 1)
    threshold = threshold_for_recall(y, oof, target_recall)
    metrics = detector_metrics(labels_a, oof, threshold, person_a, gate_oof)
    mean, scale, w, b = _fit_fusion(Z, y)
    heads = _fit_heads(G, ft, labels_a, person_a, np.ones(n, bool))
    codes = np.asarray([LABEL_CODES[v] for v in labels_a], np.int8)
    detector = ChildDetector(*heads, mean, scale, w, b, _gate_threshold(Z, y), threshold, _familiar_threshold(Z, y),
                             *reference_space(G), train_rows=Z, train_labels=codes,
                             meta={"target_recall": target_recall, "features": list(FEATURES)})
    return detector, metrics, oof


def fusion_out_of_fold(Z: FloatArray, labels: npt.NDArray[np.str_], n_splits: int = 5, seed: int = 1
                       ) -> tuple[npt.NDArray[np.float64], BoolArray]:
    """Out-of-fold fused P(child) and gate verdicts of precomputed `FEATURES` rows (fusion + gates refitted per fold)."""
    from sklearn.model_selection import StratifiedKFold

    y = labels != "none"
    oof = np.zeros(len(y), np.float64)
    gate_oof = np.zeros(len(y), bool)
    for tr, va in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(Z, labels):
        det = fusion_detector(Z[tr], y[tr], 0.5)
        oof[va] = det.fuse(Z[va])
        gate_oof[va] = det.person(Z[va])
    return oof, gate_oof


def fusion_detector(Z: FloatArray, y: BoolArray, threshold: float, labels: npt.NDArray[np.str_] | None = None
                    ) -> ChildDetector:
    """A detector that fuses precomputed rows only (placeholder heads): fusion and gates fitted on (Z, y); with
    `labels` it also carries Z as its training rows (what an operator refit learns from)."""
    mean, scale, w, b = _fit_fusion(Z, y)
    d_img, d_face = 1, 1
    codes = None if labels is None else np.asarray([LABEL_CODES[v] for v in labels], np.int8)
    return ChildDetector(*_placeholder_heads(d_img, d_face), mean, scale, w, b, _gate_threshold(Z, y), threshold,
                         _familiar_threshold(Z, y), train_rows=None if labels is None else Z, train_labels=codes)


def _placeholder_heads(d_img: int, d_face: int) -> tuple[LinearProbe, LinearProbe, LinearProbe]:
    """Heads are not used when fusing precomputed rows; the dataclass still wants three."""
    return constant_probe(d_img), constant_probe(d_img), constant_probe(d_face)


def detector_metrics(labels: npt.ArrayLike, prob: npt.ArrayLike, threshold: float,
                     person: npt.ArrayLike | None = None, gate: npt.ArrayLike | None = None) -> dict[str, Any]:
    """Withheld shares per visual label at `threshold` (and AUC of child+unsure vs none)."""
    from sklearn.metrics import roc_auc_score

    lab = np.asarray(labels)
    p = np.asarray(prob, np.float64)
    hit = p >= threshold
    out: dict[str, Any] = {"threshold": float(threshold), "n": {k: int((lab == k).sum()) for k in ("child", "none", "unsure")}}
    for k in ("child", "none", "unsure"):
        out[f"withheld_{k}"] = float(hit[lab == k].mean()) if (lab == k).any() else float("nan")
    out["recall_child_and_unsure"] = float(hit[lab != "none"].mean())
    y = lab != "none"
    out["auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    if person is not None:
        per = np.asarray(person, bool)
        out["withheld_none_adults"] = float(hit[(lab == "none") & per].mean())
        out["withheld_none_no_person"] = float(hit[(lab == "none") & ~per].mean())
    if gate is not None:
        g = np.asarray(gate, bool)
        out["gate_pass_child"] = float(g[lab == "child"].mean())
        out["gate_pass_none_no_person"] = float(g[(lab == "none") & ~np.asarray(person, bool)].mean()) if person is not None else float("nan")
    return out
