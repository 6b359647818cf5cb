"""Fitting the semantic bridge (retrieval.learn.bridge) on the course data, after the heads' cross-validation.

What is fitted: the weight w of the bridge cosine in the ranking key (key = a*logit + b*cos + w*bridge), and the
score calibration on that key. Rule: the largest w on `WEIGHTS` whose in-domain (10 image-grouped folds, non-child)
R@1/5/10 stay within `RECALL_TOLERANCE` points of w = 0 and expert tau-c / crowd tau-b within `TAU_TOLERANCE`.
The course data holds almost nothing the ImageNet classes add (dogs, people, sports are what its captions already
teach), so in-domain numbers can only bound w; the out-of-domain set (benchmarks/bench_ood.py) never takes part in
the choice. Every number of every w is kept in metrics["bridge"].
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from retrieval.learn.bridge import TOP_K, SemanticBridge, class_prompts
from retrieval.learn.reranker import fit_calibration
from retrieval.learn.validation import mean_metrics, reranker_quality, retrieval_metrics
from retrieval.vectors import l2n

# TrainingSet / CrossValidation / FinalHeads are retrieval.learn.train's (typed Any here: train imports this module)
TrainingSet = CrossValidation = FinalHeads = Any

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)
RECALL_TOLERANCE = 0.5
TAU_TOLERANCE = 0.005


@dataclass(frozen=True)
class CourseClasses:
    """Each course image's top ImageNet classes (as the index stores them) and the bridge's text side."""

    ids: np.ndarray
    p: np.ndarray
    class_text: np.ndarray
    part: str
    scale: float


def pooled_norm(data_dir: Path, part: str, views: tuple[str, ...], n_sample: int = 64) -> float:
    """Median norm of the part's mean pool on course images: the scale its classifier sees (`ClassifierHead`).
    A plain mean part's cached features are that pool; a mean+max part caches L2-normalised halves, so the first
    `n_sample` images run through its net once more."""
    from retrieval.data.course import TRAIN_IMAGES
    from retrieval.encoders import build_image_encoder
    from retrieval.encoders.image import LITE_VARIANTS
    from retrieval.encoders.imagenet import LITE_WIDTH
    from retrieval.encoders.precision import training_precision
    from retrieval.index.imageio import load_image
    from retrieval.learn.features import combine_image_features

    if LITE_VARIANTS[part].blocks == 1:
        _, raw = combine_image_features(data_dir, part, views)  # one part: the raw view-averaged pool
        return float(np.median(np.linalg.norm(raw, axis=1)))
    enc = build_image_encoder(part, views=views, precision=training_precision())
    files = sorted((Path(data_dir) / TRAIN_IMAGES).glob("*.jpg"))[:n_sample]
    raw = np.asarray(enc.pooled([enc.preprocess(load_image(f)) for f in files]))[:, :LITE_WIDTH]
    return float(np.median(np.linalg.norm(raw, axis=1)))


def course_classes(ts: "TrainingSet", image_encoder: str, text_encoder: str, views: tuple[str, ...]
                   ) -> CourseClasses | None:
    """None when no part of the image encoder has an ImageNet head (ResNet, fake encoders)."""
    from retrieval.encoders.imagenet import head_part, imagenet_class_names, lite_head, part_columns
    from retrieval.learn.features import text_features

    part = head_part(image_encoder)
    if part is None:
        return None
    scale = pooled_norm(ts.data_dir, part, views)
    head = lite_head(part)
    ids, p = head.top(ts.emb.image_feats[:, part_columns(image_encoder, part)], scale, TOP_K)
    names = imagenet_class_names()[: head.weight.shape[0]]
    class_text = l2n(text_features(class_prompts(names), text_encoder)).astype(np.float32)
    return CourseClasses(ids, p, class_text, part, scale)


@dataclass(frozen=True)
class BridgeFit:
    bridge: SemanticBridge
    heads: "FinalHeads"
    metrics: dict[str, Any]
    oof_prob: np.ndarray  # calibrated out-of-fold scores of the chosen key, per reranker row


def fit_bridge(ts: "TrainingSet", cv: "CrossValidation", blend: int, ab: tuple[float, float], heads: "FinalHeads",
               classes: CourseClasses,
               say: Callable[[str], None] = lambda _m: None) -> BridgeFit:
    """The bridge with the chosen weight, and the heads with the reranker calibration refitted on the new key."""
    bridge = SemanticBridge(classes.class_text, classes.part, classes.scale)
    a, b = ab
    qc_all = bridge.query_classes(ts.emb.text_feats)  # (n_texts, C): every course text against every class
    norms = bridge.norms(classes.ids, classes.p)
    rows = cv.rows
    row_bridge = bridge.pair_cos(qc_all[rows.txt], classes.ids[rows.img], classes.p[rows.img], norms[rows.img])
    allowed = cv.allowed(ts)
    fold_bridge = [bridge.grid_cos(qc_all[g.query_txt], classes.ids[g.images], classes.p[g.images], norms[g.images])
                   for g in cv.grids]
    results: dict[str, Any] = {}
    keys: dict[float, np.ndarray] = {}
    probs: dict[float, np.ndarray] = {}
    for w in WEIGHTS:
        per_fold = []
        for g, bg in zip(cv.grids, fold_bridge):
            sim = a * g.logit + b * g.cos + w * bg
            per_fold.append((retrieval_metrics(sim[g.non_child], g.target[g.non_child]), retrieval_metrics(sim, g.target)))
        key = (cv.keys[blend] + w * row_bridge).astype(np.float32)
        prob = np.zeros(len(key), np.float32)
        for f in np.unique(cv.fold_id):
            train = (cv.fold_id != f) & allowed
            prob[cv.fold_id == f] = fit_calibration(key[train], rows.target[train])(key[cv.fold_id == f])
        keys[w], probs[w] = key, prob
        results[f"{w:g}"] = {"retrieval_non_child": mean_metrics([r[0] for r in per_fold]),
                             "retrieval_all": mean_metrics([r[1] for r in per_fold]),
                             "score": reranker_quality(ts.ev, rows, prob, key, cv.X[:, 0], ts.text_child, ts.restricted,
                                                       allowed)}
    w = choose_weight(results)
    chosen = results[f"{w:g}"]
    say(f"semantic bridge ({classes.part}, scale {classes.scale:.1f}): weight {w:g}; non-child R@1/5/10 "
        + "/".join(f"{chosen['retrieval_non_child'][k]:.1f}" for k in ("R@1", "R@5", "R@10"))
        + f", tau-c {chosen['score']['expert_tau_c']:.3f} (w=0: "
        + "/".join(f"{results['0']['retrieval_non_child'][k]:.1f}" for k in ("R@1", "R@5", "R@10")) + ")")
    calibration = fit_calibration(keys[w][allowed], rows.target[allowed])
    heads = replace(heads, reranker=replace(heads.reranker, calibration=calibration))
    metrics = {"weights": results, "weight": w, "part": classes.part, "scale": classes.scale, "top_k": TOP_K,
               "rule": f"largest weight with non-child R@1/5/10 within {RECALL_TOLERANCE} points and tau-c/tau-b "
                       f"within {TAU_TOLERANCE} of weight 0 (in-domain, out of fold)"}
    return BridgeFit(replace(bridge, weight=w), heads, metrics, probs[w])


def choose_weight(results: dict[str, Any]) -> float:
    """The largest weight whose in-domain numbers stay within the tolerances of weight 0 (see module doc)."""
    base = results["0"]
    best = 0.0
    for name, m in results.items():
        ok = all(m["retrieval_non_child"][k] >= base["retrieval_non_child"][k] - RECALL_TOLERANCE - 1e-9
                 for k in ("R@1", "R@5", "R@10"))
        ok = ok and all(m["score"][k] >= base["score"][k] - TAU_TOLERANCE - 1e-9 for k in ("expert_tau_c", "crowd_tau_b"))
        if ok:
            best = max(best, float(name))
    return best

