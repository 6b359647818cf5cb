"""Image-to-image relevance ("more like this", search by photo): what its 0-1 score means and how it is fitted.

Definition: the score of gallery image B for query image A estimates the relevance that the course's experts and
crowd gave B for a caption written for A: "does this photo show what a description of the query photo says". The
course data observes it directly: every graded pair (image B, caption of image A) with A != B is a labelled image
pair (target = mean expert grade mapped to 0-1 / crowd share of yes, averaged over A's graded captions). Key = the
cosine of the two images in the shared space; score = isotonic regression of the pair targets on that cosine.

Honesty: the cosines are taken out of fold (both images held out of the projection that produced them, the fold
projections of `train.cross_validate`), and every reported number is cross-fitted (calibration fitted on the
other folds' pairs). The text score is calibrated the same way, so a 0.5 means the same kind of thing in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.learn.reranker import Calibration, brier, ece, fit_calibration

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

#: (held-out image rows, their projected vectors) of each validation fold
FoldVectors = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ExamplePairs:
    """Ordered image pairs (query a, gallery b), both in the same validation fold, with their out-of-fold cosine."""

    a: IntArray
    b: IntArray
    cos: FloatArray
    target: FloatArray
    fold: IntArray
    expert: npt.NDArray[np.bool_]  # an expert graded at least one of the pair's rows


def example_pairs(ts: Any, fold_z: FoldVectors) -> ExamplePairs:
    """The graded (image, caption of another image) pairs of `ts` (a train.TrainingSet) as image pairs.

    Under the training-data rule, pairs touching a restricted image or a child-mentioning caption are left out:
    they are never shown, so they need no calibrated score."""
    ev = ts.ev
    a_all, b_all = ev.text_owner[ev.graded_txt], ev.graded_img
    ok = (a_all >= 0) & (a_all != b_all)
    if ts.rule:
        ok &= ~ts.restricted[np.maximum(a_all, 0)] & ~ts.restricted[b_all] & ~ts.text_child[ev.graded_txt]
    fold_of = np.full(ev.n_images, -1)
    pos = np.full(ev.n_images, -1)
    for f, (va, _) in enumerate(fold_z):
        fold_of[va] = f
        pos[va] = np.arange(len(va))
    ok &= (fold_of[np.maximum(a_all, 0)] == fold_of[b_all]) & (fold_of[b_all] >= 0)
    is_expert = np.asarray(ev.graded_source) == "expert" if len(ev.graded_source) else np.zeros(0, bool)
    a, b, t, e = a_all[ok], b_all[ok], ev.graded_target[ok].astype(np.float64), is_expert[ok]
    # one row per ordered pair: the mean target of its graded captions
    key = a.astype(np.int64) * ev.n_images + b
    uniq, inv = np.unique(key, return_inverse=True)
    target = np.bincount(inv, weights=t) / np.bincount(inv)
    expert = np.bincount(inv, weights=e.astype(float)) > 0
    ua, ub = uniq // ev.n_images, uniq % ev.n_images
    folds = fold_of[ua]
    cos = np.empty(len(uniq), np.float32)
    for f, (_, zi) in enumerate(fold_z):
        m = folds == f
        cos[m] = np.sum(zi[pos[ua[m]]] * zi[pos[ub[m]]], axis=1)
    return ExamplePairs(ua, ub, cos, target.astype(np.float32), folds, expert)


#: The same photo (cosine 1) fully matches a description of itself: the course's own-caption target (experts gave
#: grade 4 to 458 of 474 own-caption pairs). Graded pairs of different photos stop below cosine ~0.85, so between
#: the last of them and 1 the score is interpolated towards this anchor (near-duplicates), not measured.
SELF_ANCHOR = (1.0, 1.0)


def fit_example_calibration(pairs: ExamplePairs) -> tuple[Calibration, dict[str, Any]]:
    """Isotonic calibration of the pair targets on cosine (all pairs plus `SELF_ANCHOR`), and its cross-fitted
    quality on the pairs."""
    from scipy.stats import kendalltau

    if len(pairs.cos) < 20 or len(np.unique(pairs.fold)) < 2:
        raise ValueError(f"only {len(pairs.cos)} graded image pairs: too few to calibrate image-to-image scores")
    oof = np.zeros(len(pairs.cos), np.float32)
    for f in np.unique(pairs.fold):
        m = pairs.fold == f
        oof[m] = fit_calibration(pairs.cos[~m], pairs.target[~m])(pairs.cos[m])
    calibration = fit_calibration(np.append(pairs.cos, SELF_ANCHOR[0]), np.append(pairs.target, SELF_ANCHOR[1]))
    bins = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0001]
    reliability = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (oof >= lo) & (oof < hi)
        if m.any():
            reliability.append({"score": f"{lo:.1f}-{min(hi, 1.0):.1f}", "n": int(m.sum()),
                                "mean_score": round(float(oof[m].mean()), 3),
                                "mean_target": round(float(pairs.target[m].mean()), 3)})
    grid = np.linspace(-1.0, 1.0, 2001, dtype=np.float32)
    above = grid[calibration(grid) >= 0.5]
    observed = grid[grid <= float(pairs.cos.max())]
    metrics = {
        "n_pairs": int(len(pairs.cos)), "n_query_images": int(len(np.unique(pairs.a))),
        "n_expert_pairs": int(pairs.expert.sum()),
        "tau_b": float(kendalltau(oof, pairs.target, variant="b")[0]),
        "tau_b_cosine": float(kendalltau(pairs.cos, pairs.target, variant="b")[0]),
        "tau_b_expert": float(kendalltau(oof[pairs.expert], pairs.target[pairs.expert], variant="b")[0]),
        "ece": ece(oof, pairs.target), "brier": brier(oof, pairs.target),
        "brier_constant": brier(np.full(len(oof), float(pairs.target.mean()), np.float32), pairs.target),
        "cosine_at_0.5": float(above[0]) if len(above) else None,
        "max_pair_cosine": float(pairs.cos.max()),
        "max_score_observed_range": float(calibration(observed).max()) if len(observed) else None,
        "reliability": reliability,
    }
    return calibration, metrics


def calibration_to_json(cal: Calibration) -> dict[str, list[float]]:
    return {"x": [round(float(v), 6) for v in cal.x], "y": [round(float(v), 6) for v in cal.y]}


def calibration_from_json(data: Any) -> Calibration | None:
    """The stored knots (None for models trained before image-to-image scores were calibrated)."""
    if not data or not data.get("x"):
        return None
    return Calibration(np.asarray(data["x"], np.float32), np.asarray(data["y"], np.float32))
