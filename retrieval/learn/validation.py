"""Validation protocol: course pairs, image-grouped K-fold, the training-data rule and retrieval metrics.

Fold f holds out ~1/K of the training images. Gallery = the held-out images; queries = their extra captions
(5 per image, query_id = image#n, like the user's test set). No leakage: every text owned by a held-out image
(its captions, and train_dataset texts whose query_id names it) and every pair involving a held-out image is
out of training for that fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.learn.features import CourseEmbeddings, _course, read_extra_captions, read_train_queries
from retrieval.learn.reranker import brier, ece

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


class RowKind(IntEnum):
    """What a reranker row is: an image's own caption, a mismatched caption, an expert grade, a crowd vote."""

    CAPTION = 0
    NEGATIVE = 1
    EXPERT = 2
    CROWD = 3


@dataclass(frozen=True)
class CoursePairs:
    """Index-level view of the course: everything refers to rows of a CourseEmbeddings.

    caption_img/caption_txt: the own-caption positives (image i, text j); graded_*: annotated pairs with a soft
    target in [0,1] (expert mean (g-1)/3, crowd share); text_owner[j]: image row that wrote text j (-1 unknown).
    """

    n_images: int
    n_texts: int
    caption_img: IntArray
    caption_txt: IntArray
    caption_qid: list[str]
    text_owner: IntArray
    graded_img: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    graded_txt: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    graded_target: FloatArray = field(default_factory=lambda: np.zeros(0, np.float32))
    graded_source: list[str] = field(default_factory=list)
    #: expert rows: the 3 raw grades (1-4); crowd rows: NaN
    graded_raw: FloatArray = field(default_factory=lambda: np.zeros((0, 3), np.float32))


def _read_grades(data_dir: Path) -> list[tuple[str, str, float, str, tuple[float, float, float]]]:
    """Expert mean (g-1)/3 and crowd share -> [(image, query_id, target, source, raw expert grades)]."""

    course = _course(str(data_dir))
    exp, crowd = course.expert, course.crowd
    raw = exp[["e1", "e2", "e3"]].to_numpy(float)
    tgt = (raw.mean(axis=1) - 1.0) / 3.0
    out: list[tuple[str, str, float, str, tuple[float, float, float]]] = [
        (i, q, float(t), "expert", tuple(g)) for i, q, t, g in zip(exp["image"], exp["query_id"], tgt, raw)]
    out += [(i, q, float(sh), "crowd", (np.nan,) * 3) for i, q, sh in zip(crowd["image"], crowd["query_id"], crowd["share_yes"])]
    return out


def course_pairs(data_dir: Path, emb: CourseEmbeddings, extra_captions: bool = True) -> CoursePairs:
    """Positives = own captions (all extra captions, or only train_dataset query texts when extra_captions=False)."""
    img_ix, txt_ix = emb.image_index(), emb.text_index()
    queries = read_train_queries(data_dir)
    extra = read_extra_captions(data_dir)
    qid_text = dict(extra) | {q: t for _, q, t in queries}
    owner = np.full(len(emb.texts), -1, np.int64)
    for qid, text in list(extra) + list(qid_text.items()):
        im = img_ix.get(qid.split("#")[0])
        if im is not None and text in txt_ix:
            owner[txt_ix[text]] = im
    positives = extra if extra_captions else sorted({q: t for _, q, t in queries}.items())
    rows = [(img_ix[q.split("#")[0]], txt_ix[t], q) for q, t in positives if q.split("#")[0] in img_ix and t in txt_ix]
    g_rows = [
        (img_ix[i], txt_ix[qid_text[q]], t, s, g)
        for i, q, t, s, g in _read_grades(data_dir)
        if i in img_ix and q in qid_text and qid_text[q] in txt_ix
    ]
    return CoursePairs(
        n_images=len(emb.image_names), n_texts=len(emb.texts),
        caption_img=np.array([r[0] for r in rows], np.int64), caption_txt=np.array([r[1] for r in rows], np.int64),
        caption_qid=[r[2] for r in rows], text_owner=owner,
        graded_img=np.array([r[0] for r in g_rows], np.int64), graded_txt=np.array([r[1] for r in g_rows], np.int64),
        graded_target=np.array([r[2] for r in g_rows], np.float32), graded_source=[r[3] for r in g_rows],
        graded_raw=np.array([r[4] for r in g_rows], np.float32).reshape(-1, 3),
    )


def eval_queries(data_dir: Path, emb: CourseEmbeddings) -> tuple[IntArray, IntArray, list[str]]:
    """(image row, text row, query_id) of every extra caption: the validation queries (5 per image)."""
    p = course_pairs(data_dir, emb, extra_captions=True)
    return p.caption_img, p.caption_txt, p.caption_qid


def restricted_images(pairs: CoursePairs, text_child: BoolArray) -> BoolArray:
    """An image is restricted when ANY text it owns (own captions, texts whose query_id names it) mentions a child."""
    flag = np.zeros(pairs.n_images, bool)
    owned = pairs.text_owner >= 0
    np.logical_or.at(flag, pairs.text_owner[owned], text_child[owned])
    np.logical_or.at(flag, pairs.caption_img, text_child[pairs.caption_txt])
    return flag


def image_folds(n_images: int, n_folds: int = 10, seed: int = 0) -> list[tuple[IntArray, IntArray]]:
    """Shuffled image-grouped folds: [(train image rows, held-out image rows)]; every image held out exactly once."""
    if not 2 <= n_folds <= n_images:
        raise ValueError(f"n_folds={n_folds} must be between 2 and the number of images ({n_images})")
    order = np.random.default_rng(seed).permutation(n_images)
    chunks = np.array_split(order, n_folds)
    return [(np.sort(np.concatenate(chunks[:k] + chunks[k + 1 :])), np.sort(chunks[k])) for k in range(n_folds)]


def train_mask_for(pairs: CoursePairs, train_images: IntArray) -> tuple[BoolArray, BoolArray]:
    """(image allowed, text allowed) for a fold: held-out images and every text they own are excluded."""
    img_ok = np.zeros(pairs.n_images, bool)
    img_ok[train_images] = True
    txt_ok = np.ones(pairs.n_texts, bool)
    held = ~img_ok
    txt_ok[(pairs.text_owner >= 0) & held[np.maximum(pairs.text_owner, 0)]] = False
    txt_ok[pairs.caption_txt[held[pairs.caption_img]]] = False
    return img_ok, txt_ok


def retrieval_metrics(sim: FloatArray, target: IntArray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """sim (n_query, n_gallery), target[q] = gallery column of the right image -> R@K (%), MRR, median rank."""
    if len(target) == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "MRR": float("nan"), "medR": float("nan"), "n": 0}
    own = sim[np.arange(len(target)), target]
    rank = 1 + (sim > own[:, None]).sum(axis=1)
    out = {f"R@{k}": float(100.0 * np.mean(rank <= k)) for k in ks}
    out["MRR"] = float(np.mean(1.0 / rank))
    out["medR"] = float(np.median(rank))
    out["n"] = int(len(target))
    return out


def mean_metrics(per_fold: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in per_fold[0] if k != "n"]
    out = {k: float(np.nanmean([m[k] for m in per_fold])) for k in keys}
    out["n"] = int(sum(m["n"] for m in per_fold))
    return out


def reranker_quality(ev: CoursePairs, rows: "Any", prob: np.ndarray, key: np.ndarray, cos: np.ndarray, text_child: BoolArray,
                     restricted: BoolArray, allowed: BoolArray) -> dict[str, float]:
    """Out-of-fold score quality on non-child pairs (neither the image's captions nor the text mention children).

    Expert: Kendall tau-c with the 3 grades stacked as rows, own-caption pairs dropped (CLIPScore protocol).
    Crowd: Kendall tau-b against the share of yes votes. Calibration: ECE / Brier against the soft targets of all
    allowed rows (own captions, sampled mismatches, expert, crowd). Raw cosine taus are given for reference.
    """
    from scipy.stats import kendalltau

    nc = ~restricted[rows.img] & ~text_child[rows.txt]
    own = ev.text_owner[rows.txt] == rows.img
    out: dict[str, float] = {}
    exp = (rows.kind == RowKind.EXPERT) & nc & ~own
    grades = ev.graded_raw[rows.gid[exp]]
    for name, s in (("", key), ("_calibrated", prob), ("_cosine", cos)):
        x = np.repeat(s[exp], 3)
        out[f"expert_tau_c{name}"] = float(kendalltau(x, grades.reshape(-1), variant="c")[0]) if exp.sum() > 1 else float("nan")
    crowd = (rows.kind == RowKind.CROWD) & nc
    for name, s in (("", key), ("_calibrated", prob), ("_cosine", cos)):
        out[f"crowd_tau_b{name}"] = float(kendalltau(s[crowd], rows.target[crowd], variant="b")[0]) if crowd.sum() > 1 else float("nan")
    out["ece"] = ece(prob[allowed], rows.target[allowed])
    out["brier"] = brier(prob[allowed], rows.target[allowed])
    for kind, name in ((RowKind.EXPERT, "expert"), (RowKind.CROWD, "crowd")):
        m = allowed & (rows.kind == kind)
        out[f"ece_{name}"] = ece(prob[m], rows.target[m]) if m.any() else float("nan")
        out[f"brier_{name}"] = brier(prob[m], rows.target[m]) if m.any() else float("nan")
    out["n_expert_pairs"] = int(exp.sum())
    out["n_crowd_pairs"] = int(crowd.sum())
    return out

