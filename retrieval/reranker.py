"""Relevance head: (projected image, projected text) -> calibrated score in [0, 1] ("how well the text fits").

Features of a pair in the shared space: [cosine, z_img * z_txt]. A logistic regression on soft targets
(expert mean grade, crowd share, own caption = 1, sampled mismatches = 0; each soft row split into a positive
and a negative row weighted t and 1 - t) gives a logit; the key is a * logit + b * cosine (folded into `coef`,
blend chosen on validation so ranking by it never loses recall against plain cosine); isotonic regression
fitted on out-of-fold keys maps the key to a calibrated probability. Applying the head is numpy only (a dot product and a table lookup).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def pair_features(img_z: np.ndarray, txt_z: np.ndarray) -> np.ndarray:
    """(n, d) x (n, d) L2-normalised -> (n, 1 + d): cosine and elementwise product."""
    prod = np.asarray(img_z, np.float32) * np.asarray(txt_z, np.float32)
    return np.concatenate([prod.sum(axis=1, keepdims=True), prod], axis=1)


@dataclass(frozen=True)
class Calibration:
    """Monotone piecewise-linear map from logit to probability (isotonic knots), clipped to [0, 1]."""

    x: FloatArray
    y: FloatArray

    def __call__(self, logit: np.ndarray) -> FloatArray:
        return np.clip(np.interp(np.asarray(logit, np.float64), self.x, self.y), 0.0, 1.0).astype(np.float32)


def fit_calibration(logit: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, max_knots: int = 64,
                    tie_break: float = 0.02) -> Calibration:
    """Isotonic regression of soft targets on logits, thinned to at most `max_knots` knots.

    Isotonic fits have flat steps, which would turn distinct scores into ties (bad for ranking and Kendall tau);
    mixing in a `tie_break` share of a linear ramp over the knots makes the map strictly increasing.
    """
    from sklearn.isotonic import IsotonicRegression

    logit = np.asarray(logit, np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(logit, np.asarray(target, np.float64), sample_weight=weight)
    xs = np.asarray(iso.X_thresholds_, np.float64)
    ys = np.asarray(iso.y_thresholds_, np.float64)
    if len(xs) > max_knots:
        keep = np.unique(np.linspace(0, len(xs) - 1, max_knots).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    if len(xs) == 1:
        xs, ys = np.array([xs[0] - 1.0, xs[0] + 1.0]), np.array([ys[0], ys[0]])
    ys = (1.0 - tie_break) * ys + tie_break * np.linspace(0.0, 1.0, len(ys))
    return Calibration(xs.astype(np.float32), ys.astype(np.float32))


@dataclass(frozen=True)
class Reranker:
    """Logistic head on `pair_features` + calibration. `blend` weights its logit in the ranking score."""

    coef: FloatArray
    intercept: float
    calibration: Calibration

    def logit(self, img_z: np.ndarray, txt_z: np.ndarray) -> FloatArray:
        return (pair_features(img_z, txt_z) @ self.coef + self.intercept).astype(np.float32)

    def score(self, img_z: np.ndarray, txt_z: np.ndarray) -> FloatArray:
        return self.calibration(self.logit(img_z, txt_z))

    def to_tensors(self, prefix: str = "rerank.") -> dict[str, np.ndarray]:
        return {
            f"{prefix}coef": np.asarray(self.coef, np.float32),
            f"{prefix}intercept": np.asarray([self.intercept], np.float32),
            f"{prefix}calib_x": np.asarray(self.calibration.x, np.float32),
            f"{prefix}calib_y": np.asarray(self.calibration.y, np.float32),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], prefix: str = "rerank.") -> "Reranker":
        return cls(
            coef=np.asarray(t[f"{prefix}coef"], np.float32),
            intercept=float(np.asarray(t[f"{prefix}intercept"]).reshape(-1)[0]),
            calibration=Calibration(np.asarray(t[f"{prefix}calib_x"], np.float32), np.asarray(t[f"{prefix}calib_y"], np.float32)),
        )


def fit_logistic(feats: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, c: float = 1.0,
                 seed: int = 0) -> tuple[FloatArray, float]:
    """Soft-target logistic regression via row duplication: (x, 1) weight t*w and (x, 0) weight (1-t)*w."""
    from sklearn.linear_model import LogisticRegression

    target = np.clip(np.asarray(target, np.float64), 0.0, 1.0)
    w = np.ones(len(target)) if weight is None else np.asarray(weight, np.float64)
    x = np.concatenate([feats, feats])
    y = np.concatenate([np.ones(len(target)), np.zeros(len(target))])
    sw = np.concatenate([target * w, (1.0 - target) * w])
    keep = sw > 0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit(x[keep], y[keep], sample_weight=sw[keep])
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


# ------------------------------------------------------------------------------------------- calibration metrics
def reliability(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: (mean predicted, mean target, count)."""
    prob, target = np.asarray(prob, np.float64), np.asarray(target, np.float64)
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return np.bincount(idx, prob, bins) / safe, np.bincount(idx, target, bins) / safe, count


def ece(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error against (soft) targets, equal-width bins."""
    mp, mt, n = reliability(prob, target, bins)
    return float(np.sum(n / max(n.sum(), 1) * np.abs(mp - mt)))


def brier(prob: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob, np.float64) - np.asarray(target, np.float64)) ** 2))
