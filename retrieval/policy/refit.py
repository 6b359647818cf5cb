"""Operator refit: the detector's fusion and threshold refitted on the operator's decisions plus the training labels.

Only the last, light layer moves: the fusion (a logistic regression over the `N_FUSED` per-image numbers every index
row stores) and its threshold. The networks and heads stay as trained, so the whole index is re-scored from its
stored `detection` features without re-embedding (`ImagePolicy`). The operator's reviewed images weigh
`REVIEW_WEIGHT` training images each: a few dozen answers about the user's own photos must be able to move a fit made
on 1,000 other photos.

The threshold keeps the legal target: it is the largest whose out-of-fold recall reaches `TARGET_RECALL` on the
training positives and the operator's "child" images together; and the refit is refused when its out-of-fold recall
on the operator's "child" images alone falls below the target. Reviewed images themselves are decided by the
operator (`apply.hit_is_restricted`), whatever the refit says.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import numpy.typing as npt

from retrieval.atomic import write_text
from retrieval.errors import RetrievalError
from retrieval.policy.classifiers import threshold_for_recall
from retrieval.policy.detector import FEATURES, N_FUSED, ChildDetector, Detection
from retrieval.policy.review import REVIEW_DIR

REFIT_FILE = "refit.json"
TARGET_RECALL = 0.97
REVIEW_WEIGHT = 5.0
N_FOLDS = 5
FORMAT = 1

FloatArray = npt.NDArray[np.float64]


class RefitRefusedError(RetrievalError):
    """The refit would miss the legal recall target: nothing is written, the previous policy stays."""


@dataclass(frozen=True)
class Refit:
    """The refitted fusion + threshold, for one model (`model_id`); saved as reviews/refit.json."""

    model_id: str
    fusion_mean: tuple[float, ...]
    fusion_scale: tuple[float, ...]
    fusion_weight: tuple[float, ...]
    fusion_bias: float
    threshold: float
    created: str
    operator: str
    report: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def apply(self, detector: ChildDetector) -> ChildDetector:
        """The detector with this fusion and threshold (gates, heads, references unchanged)."""
        return dataclasses.replace(detector, fusion_mean=np.asarray(self.fusion_mean), fusion_scale=np.asarray(
            self.fusion_scale), fusion_weight=np.asarray(self.fusion_weight), fusion_bias=float(self.fusion_bias),
            threshold=float(self.threshold))

    @staticmethod
    def path(index_dir: Path) -> Path:
        """Where an index's refit lives (under its review root)."""
        return Path(index_dir) / REVIEW_DIR / REFIT_FILE

    def save(self, index_dir: Path) -> Path:
        data = {"format": FORMAT, **dataclasses.asdict(self)}
        return write_text(Refit.path(index_dir), json.dumps(data, indent=1) + "\n", durable=True)

    @classmethod
    def load(cls, index_dir: Path) -> "Refit | None":
        path = Refit.path(index_dir)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format") != FORMAT:
                raise ValueError("format")
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RetrievalError(f"{path} is unreadable ({type(exc).__name__}); delete it and run "
                                 f"`retrieve policy-refit --index {index_dir}` again") from None


def detection_rows(detections: Any) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(n, len(FEATURES)) stored features of each row and whether the row has them (rows without: not scored)."""
    texts = list(detections)
    Z = np.zeros((len(texts), len(FEATURES)))
    ok = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        if text:
            f = Detection.from_json(text).features
            if len(f) == len(FEATURES):
                Z[i], ok[i] = f, True
    return Z, ok


def fit_fusion(X: FloatArray, y: npt.NDArray[np.bool_], w: FloatArray
               ) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """(mean, scale, weight, bias) of a weighted, class-balanced logistic regression on standardised columns of X."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = np.average(X, 0, w), np.sqrt(np.average((X - np.average(X, 0, w)) ** 2, 0, w)) + 1e-6
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit((X - mean) / scale, y, sample_weight=w)
    return mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _fused(detector: ChildDetector, params: tuple[FloatArray, FloatArray, FloatArray, float], Z: FloatArray) -> FloatArray:
    mean, scale, weight, bias = params
    return dataclasses.replace(detector, fusion_mean=mean, fusion_scale=scale, fusion_weight=weight,
                               fusion_bias=bias).fuse(Z)


def fit_refit(detector: ChildDetector, Z_rev: FloatArray, child_rev: npt.NDArray[np.bool_],
              target: float = TARGET_RECALL, weight: float = REVIEW_WEIGHT, seed: int = 0
              ) -> tuple[tuple[FloatArray, FloatArray, FloatArray, float], float, dict[str, Any]]:
    """Fusion parameters and threshold from the training rows + reviewed rows; raises RefitRefusedError when the
    out-of-fold recall on the reviewed "child" rows would fall below `target`. Returns (params, threshold, numbers)."""
    if detector.train_rows is None or detector.train_labels is None:
        raise RefitRefusedError("this model stores no training rows for a refit; retrain it with `retrieve train` "
                                "(models from before operator review lack them)")
    Zt = np.asarray(detector.train_rows, np.float64)
    yt = np.asarray(detector.train_labels) != 0
    Z = np.vstack([Zt, np.asarray(Z_rev, np.float64).reshape(-1, len(FEATURES))])
    y = np.concatenate([yt, np.asarray(child_rev, bool)])
    w = np.concatenate([np.ones(len(Zt)), np.full(len(child_rev), float(weight))])

    def fit(tr: npt.NDArray[np.int64]) -> Callable[[npt.NDArray[np.int64]], FloatArray]:
        params = fit_fusion(Z[tr, :N_FUSED], y[tr], w[tr])
        return lambda rows: _fused(detector, params, Z[rows])

    threshold, numbers = refit_threshold(fit, y, len(Zt), target, seed)
    return fit_fusion(Z[:, :N_FUSED], y, w), threshold, {**numbers, "review_weight": weight}


def refit_threshold(fit: Callable[[npt.NDArray[np.int64]], Callable[[npt.NDArray[np.int64]], FloatArray]],
                    y: npt.NDArray[np.bool_], n_train: int, target: float = TARGET_RECALL, seed: int = 0
                    ) -> tuple[float, dict[str, Any]]:
    """The refit's rules for any learner: `fit(rows)` trains on those rows (training rows first, then the `len(y) -
    n_train` reviewed ones) and returns a scorer of row ids. Out-of-fold scores set the threshold at
    `target` recall; RefitRefusedError when the reviewed "child" rows' out-of-fold recall falls below it.
    Returns (threshold, numbers)."""
    from sklearn.model_selection import StratifiedKFold

    source = (np.arange(len(y)) >= n_train).astype(int)
    oof = np.zeros(len(y))
    strata = y.astype(int) * 2 + source  # reviewed rows spread over the folds when there are enough of each kind
    if np.bincount(strata, minlength=4).min() < N_FOLDS:
        strata = y.astype(int)
    n_splits = int(min(N_FOLDS, np.bincount(strata, minlength=2).min()))
    if n_splits < 2:
        raise RefitRefusedError("too few child or child-free images (training rows + decisions) to measure a refit's "
                                "recall; record more decisions with `retrieve review`")
    for tr, va in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), strata):
        oof[va] = fit(tr)(va)
    threshold = threshold_for_recall(y, oof, target)
    rev = source == 1
    n_child = int((y & rev).sum())
    recall_rev = float((oof[y & rev] >= threshold).mean()) if n_child else float("nan")
    numbers = {"threshold": threshold, "target_recall": target, "oof_recall_all": float((oof[y] >= threshold).mean()),
               "oof_recall_reviewed_child": recall_rev, "reviewed_child": n_child,
               "reviewed_none": int((~y & rev).sum())}
    if n_child and recall_rev < target:
        raise RefitRefusedError(
            f"a refit would withhold only {int((oof[y & rev] >= threshold).sum())} of the {n_child} images marked "
            f"'child' ({recall_rev:.0%} out of fold, the legal target is {target:.0%}); the current policy stays. "
            "Review more images (`retrieve review --next 20`) and refit again")
    return threshold, numbers
