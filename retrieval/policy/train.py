"""Fit and measure the child probes on the course data (features from `retrieval.learn.features.course_embeddings`).

The ML helper calls `fit_policy_probes(emb, captions)` while building the model folder and stores
`probes.text.to_tensors("child_text.")` / `probes.image.to_tensors("child_image.")` in its safetensors;
`evaluate_policy` reproduces the numbers quoted in the report (`retrieve policy-eval`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retrieval.encoders import build_text_encoder
from retrieval.learn.features import course_embeddings, read_extra_captions, read_train_queries, text_features
from retrieval.policy.classifiers import (LabelledQueries, LinearProbe, image_child_labels, out_of_fold,
                                          text_child_labels, threshold_for_recall, train_image_probe, train_text_probe)
from retrieval.policy.detector_train import detector_metrics
from retrieval.policy.lexicon import mentions_child
from retrieval.policy.metrics import (load_policy_queries, plot_child_pr, policy_metrics, query_policy_metrics,
                                      read_policy_file)
from retrieval.policy.visual_labels import labels_for

__all__ = ["PolicyProbes", "course_captions", "fit_policy_probes", "evaluate_policy", "training_queries", "fit_text_probe",
           "IMAGE_C", "TEXT_C", "TARGET_RECALL", "TEXT_MAX_FPR", "TEXT_QUERY_FPR", "TRAIN_QUERIES"]

#: Defaults chosen by grouped CV on the course images / captions (see the policy report).
IMAGE_C = 0.001
TEXT_C = 0.5
#: Image threshold = largest one with out-of-fold recall >= this (the law favours recall).
TARGET_RECALL = 0.97
#: Text threshold = smallest one whose out-of-fold false-positive rate on lexicon-negative captions is <= this.
TEXT_MAX_FPR = 0.02
#: With the hand-labelled training queries: threshold = (1 - this) quantile of the out-of-fold probe probabilities of
#: the adult training queries the lexicon lets through. That set is mostly hard negatives (baby animals, "boys' trip",
#: brand names), so the rate on ordinary adult queries is far lower (see README, Legal rule).
TEXT_QUERY_FPR = 0.1
#: Hand-labelled search queries (500 child, 700 adult, written apart from the held-out evaluation sets).
TRAIN_QUERIES = Path(__file__).with_name("child_queries_train.tsv")


def training_queries(text_encoder: str, path: Path = TRAIN_QUERIES) -> LabelledQueries:
    """The labelled training queries, encoded with `text_encoder` (features cached like the course captions)."""

    texts, is_child = load_policy_queries(path)
    return LabelledQueries(text_features(texts, text_encoder), is_child, mentions_child(texts))


def fit_text_probe(text_feats: Any, labels: Any, text_encoder: str, C: float = TEXT_C, n_splits: int = 5,
                   seed: int = 0) -> LinearProbe:
    """The shipped query probe (the model folder's and `policy-eval`'s): lexicon-labelled captions + the
    hand-labelled training queries, threshold at TEXT_QUERY_FPR of the adult queries the lexicon lets through."""
    return train_text_probe(text_feats, labels, C=C, max_fpr=TEXT_QUERY_FPR, n_splits=n_splits, seed=seed,
                            queries=training_queries(text_encoder))


@dataclass(frozen=True)
class PolicyProbes:
    text: LinearProbe
    image: LinearProbe
    image_metrics: dict[str, float]


def course_captions(data_dir: Path) -> list[tuple[str, str]]:
    """(query_id, text) for every train_dataset query text and extra caption, duplicates removed."""

    pairs = [(q, t) for _, q, t in read_train_queries(Path(data_dir))] + read_extra_captions(Path(data_dir))
    return list(dict.fromkeys(pairs))


def fit_policy_probes(
    emb: Any, captions: Sequence[tuple[str, str]], image_C: float = IMAGE_C, text_C: float = TEXT_C,
    target_recall: float = TARGET_RECALL, text_max_fpr: float = TEXT_MAX_FPR, seed: int = 0,
) -> PolicyProbes:
    """Train both probes from a CourseEmbeddings (`image_names`, `image_feats`, `texts`, `text_feats`).

    Image labels: positive when any caption of the image mentions a child; CV groups = images.
    Text labels: the lexicon on each unique caption.
    """
    y_img = image_child_labels(emb.image_names, captions)
    image, metrics = train_image_probe(emb.image_feats, y_img, groups=np.asarray(emb.image_names), C=image_C,
                                       target_recall=target_recall, seed=seed)
    text = train_text_probe(emb.text_feats, text_child_labels(emb.texts), C=text_C, max_fpr=text_max_fpr,
                            seed=seed)
    return PolicyProbes(text, image, metrics)


def _against_visual_labels(image_names: Sequence[str], oof: np.ndarray, threshold: float, target_recall: float
                           ) -> dict[str, Any]:
    """The caption-label probe judged by the visual labels: at its own threshold, and re-thresholded like the
    child detector (recall `target_recall` on child + unsure)."""

    labels = labels_for(image_names)
    known = np.array([lab is not None for lab in labels])
    if not known.any():
        return {}
    lab = np.asarray([lab for lab in labels if lab is not None])
    p = np.asarray(oof, np.float64)[known]
    keep = ("withheld_child", "withheld_none", "withheld_unsure", "threshold")
    visual_t = threshold_for_recall(lab != "none", p, target_recall)
    return {"own_threshold": {k: v for k, v in detector_metrics(lab, p, threshold).items() if k in keep},
            "detector_rule": {k: v for k, v in detector_metrics(lab, p, visual_t).items() if k in keep}}


def evaluate_policy(
    data_dir: Path, image_encoder: str = "efficientnet-lite0", text_encoder: str = "all-mpnet-base-v2",
    views: Sequence[str] = ("center",), queries: Path | None = None, plot: Path | None = None,
    image_C: float = IMAGE_C, text_C: float = TEXT_C, target_recall: float = TARGET_RECALL,
    text_max_fpr: float = TEXT_MAX_FPR,
) -> dict[str, Any]:
    """Measure the policy: image probe on grouped out-of-fold predictions; lexicon / text probe / both on the
    held-out query file (`text<TAB>child|adult`). Optionally saves the precision-recall PNG to `plot`."""

    emb = course_embeddings(data_dir, image_encoder, text_encoder, tuple(views))
    captions = course_captions(data_dir)
    y_img = image_child_labels(emb.image_names, captions)
    oof = out_of_fold(emb.image_feats, y_img, np.asarray(emb.image_names), image_C)
    t_img = threshold_for_recall(y_img, oof, target_recall)
    out: dict[str, Any] = {
        "image_encoder": image_encoder, "text_encoder": text_encoder, "views": list(views),
        "image_probe": policy_metrics(y_img, oof, t_img),
        "image_probe_at_recall_0.95": policy_metrics(y_img, oof, threshold_for_recall(y_img, oof, 0.95)),
    }
    out["image_probe_vs_visual_labels"] = _against_visual_labels(emb.image_names, oof, t_img, target_recall)
    curves = {f"image probe ({image_encoder}, LR)": (y_img, oof)}
    points = {f"image probe ({image_encoder}, LR)": t_img}
    if queries is not None:
        texts, y_q, kinds = read_policy_file(queries)
        text_probe = fit_text_probe(emb.text_feats, text_child_labels(emb.texts), text_encoder, C=text_C)
        probs = text_probe.predict_proba(build_text_encoder(text_encoder).encode(texts))  # as queries run
        out["queries"] = query_policy_metrics(texts, y_q, probs, text_probe.threshold)
        out["text_threshold"] = text_probe.threshold
        blocked = (probs >= text_probe.threshold) | text_child_labels(texts)
        out["missed_child_queries"] = [t for t, y, b in zip(texts, y_q, blocked) if y and not b]
        out["blocked_adult_queries"] = [t for t, y, b in zip(texts, y_q, blocked) if not y and b]
        if kinds is not None:  # e.g. ordinary vs hard-negative adult queries
            out["blocked_by_kind"] = {k: float(np.mean([b for b, kk in zip(blocked, kinds) if kk == k]))
                                      for k in sorted(set(kinds))}
        curves[f"text probe ({text_encoder}) on held-out queries"] = (y_q, probs)
        points[f"text probe ({text_encoder}) on held-out queries"] = text_probe.threshold
    if plot is not None:
        out["plot"] = str(plot_child_pr(curves, Path(plot), points))
    return out
