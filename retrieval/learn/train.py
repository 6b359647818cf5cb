"""Train the heads: K-fold validation first (honest numbers), then the final heads on all allowed training data.

Training-data rule (default ON, `keep_restricted=True` turns it off): images whose visual label
(retrieval/policy/visual_labels.tsv) is child or unsure are dropped -- images without a visual label fall back to
"any caption mentions a child" -- and so is every pair whose text mentions a child (or flagged by
`is_restricted_image`).
Out-of-fold projections give the reranker honest features; a second grouped CV over those gives honest logits
for the calibration table and for choosing the ranking blend. Deterministic for a given seed.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retrieval.encoders import build_image_encoder, build_text_encoder
from retrieval.learn.bridge import SemanticBridge
from retrieval.learn.bridge_train import course_classes, fit_bridge
from retrieval.learn.examples import calibration_to_json, example_pairs, fit_example_calibration
from retrieval.learn.features import CourseEmbeddings, course_embeddings, course_face_table, read_extra_captions
from retrieval.learn.model import ModelConfig, RetrievalModel
from retrieval.learn.projection import LinearProjection, Pairs, fit_cca, fit_contrastive
from retrieval.learn.reranker import (Calibration, CaptionMemory, Reranker, build_memory, fit_calibration, fit_listwise,
                                      fit_logistic, logit_grid, pair_features, plot_reliability)
from retrieval.learn.validation import (CoursePairs, RowKind, course_pairs, image_folds, mean_metrics, reranker_quality,
                                        restricted_images, retrieval_metrics, train_mask_for)
from retrieval.policy.detector_train import caption_person_labels, detector_metrics, fit_detector
from retrieval.policy.lexicon import mentions_child
from retrieval.policy.train import fit_text_probe
from retrieval.policy.visual_labels import labels_for

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0+efficientnet-lite2-hires"
DEFAULT_TEXT_ENCODER = "all-mpnet-base-v2"
DEFAULT_VIEWS: tuple[str, ...] = ("center", "full")
#: progress(message) — the CLI prints it; the core never prints.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of the heads, chosen by image-grouped K-fold validation on the course data (the numbers
    each choice gave are in docs/models.md)."""

    #: projection: CCA to `d` dimensions with these ridge terms (image side, text side) and spectrum power
    d: int = 256
    reg_img: float = 10.0
    reg_txt: float = 3.0
    power: float = 1.0
    #: InfoNCE fine-tuning epochs on top of CCA (0 = off: it did not beat CCA out of fold)
    contrastive_epochs: int = 0
    #: mismatched captions per own caption among the reranker rows; C of the logistic fallback
    neg_per_pos: int = 2
    logistic_c: float = 3.0
    #: fit weights of the reranker rows by kind: expert grades carry the fit (crowd rows lowered expert tau-c more
    #: than they raised crowd tau-b); every allowed row still calibrates
    caption_row_weight: float = 0.0
    expert_row_weight: float = 1.0
    crowd_row_weight: float = 0.0
    #: caption-memory kNN feature: neighbours (0 = off) and softmax temperature
    knn_k: int = 10
    knn_temperature: float = 0.05
    #: per-dimension weights on the kNN match too (z_txt * pseudo_caption: d more coefficients)
    knn_products: bool = True
    #: the memory also keeps the captions' raw text-encoder vectors; feature = cosine of the raw query with the
    #: neighbours' raw captions (all the text encoder's dimensions, not only the projection's)
    raw_memory: bool = True
    n_folds: int = 10
    #: a ranking/score key a * logit + b * cosine may rank at most this many points of non-child R@1/5/10 below
    #: plain cosine; among those, the best expert tau-c + crowd tau-b becomes the single ranking AND score key
    recall_tolerance: float = 0.0
    #: listwise term of the reranker fit (0 = logistic only): a softmax over each out-of-fold caption's
    #: `rank_candidates` nearest allowed images pushes its own image first, so the logit ranks as well as it scores
    rank_loss_weight: float = 0.1
    rank_candidates: int = 20
    rank_steps: int = 200
    rank_weight_decay: float = 1e-4
    #: candidate blends (a, b); (0, 1) = plain cosine must be among them
    blends: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (1.0, 3.0), (1.0, 4.0),
                                               (1.0, 5.0), (1.0, 6.0), (1.0, 8.0), (1.0, 10.0), (1.0, 15.0), (1.0, 20.0),
                                               (1.0, 30.0), (1.0, 50.0), (1.0, 100.0))


def fit_projection(img_x: np.ndarray, txt_x: np.ndarray, pairs: Pairs, cfg: HeadConfig, seed: int = 0) -> LinearProjection:
    proj = fit_cca(img_x, txt_x, pairs, d=cfg.d, reg_img=cfg.reg_img, reg_txt=cfg.reg_txt, power=cfg.power)
    if cfg.contrastive_epochs > 0:
        proj = fit_contrastive(img_x, txt_x, pairs, proj, epochs=cfg.contrastive_epochs, seed=seed)
    return proj


def caption_memory(emb: CourseEmbeddings, proj: LinearProjection, pairs: Pairs, cfg: HeadConfig) -> CaptionMemory | None:
    """kNN memory over the projection's own training images and captions (None when cfg.knn_k == 0)."""
    if cfg.knn_k <= 0 or len(pairs.img) == 0:
        return None
    imgs, row = np.unique(pairs.img, return_inverse=True)
    return build_memory(proj.project_images(emb.image_feats[imgs]), proj.project_texts(emb.text_feats[pairs.txt]),
                        row, cfg.knn_k, cfg.knn_temperature, emb.text_feats[pairs.txt] if cfg.raw_memory else None)


def ranking_list(zi: np.ndarray, zt: np.ndarray, target: np.ndarray, memory: CaptionMemory | None,
                 cfg: HeadConfig, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of each query's `rank_candidates` most cosine-similar gallery images (its own image always included)
    -> (F (n_query, k, n_feat), position of the own image). `raw`: the queries' raw text features."""
    k = min(cfg.rank_candidates, zi.shape[0])
    top = np.argsort(-(zt @ zi.T), axis=1, kind="stable")[:, :k]
    missing = ~(top == target[:, None]).any(axis=1)
    top[missing, -1] = target[missing]
    feats = pair_features(zi[top.reshape(-1)], np.repeat(zt, k, axis=0), memory, cfg.knn_products,
                          None if raw is None else np.repeat(raw, k, axis=0))
    return feats.reshape(len(zt), k, -1).astype(np.float32), (top == target[:, None]).argmax(axis=1)


def _fit_head(X: np.ndarray, target: np.ndarray, weight: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]],
              cfg: HeadConfig, seed: int) -> tuple[np.ndarray, float]:
    if cfg.rank_loss_weight > 0 and lists:
        return fit_listwise(X, target, weight, lists, cfg.rank_loss_weight, cfg.rank_weight_decay, cfg.rank_steps, seed=seed)
    return fit_logistic(X, target, weight, c=cfg.logistic_c, seed=seed)


def _row_weights(rows: "Rows", cfg: HeadConfig) -> np.ndarray:
    """Fit weight of each reranker row by kind (own captions and mismatches share `caption_row_weight`)."""
    return np.select([rows.kind == RowKind.EXPERT, rows.kind == RowKind.CROWD],
                     [cfg.expert_row_weight, cfg.crowd_row_weight], cfg.caption_row_weight)


def _caption_pairs(cp: CoursePairs, img_ok: np.ndarray, txt_ok: np.ndarray) -> Pairs:
    m = img_ok[cp.caption_img] & txt_ok[cp.caption_txt]
    return Pairs(cp.caption_img[m], cp.caption_txt[m])


@dataclass(frozen=True)
class Rows:
    """Reranker rows: (image, text, soft target, `RowKind`); gid = row of the graded pair in CoursePairs (-1 otherwise)."""

    img: np.ndarray
    txt: np.ndarray
    target: np.ndarray
    kind: np.ndarray
    gid: np.ndarray


def reranker_rows(cp: CoursePairs, images: np.ndarray, rng: np.random.Generator, neg_per_pos: int) -> Rows:
    """Rows whose image is in `images`: own captions (1), mismatched captions of the same image set (0), grades."""
    in_set = np.zeros(cp.n_images, bool)
    in_set[images] = True
    pm = in_set[cp.caption_img]
    pi, pt = cp.caption_img[pm], cp.caption_txt[pm]
    ni = np.repeat(pi, neg_per_pos)
    nt = pt[rng.integers(0, len(pt), len(ni))] if len(pt) else np.zeros(0, np.int64)
    keep = cp.text_owner[nt] != ni
    gm = in_set[cp.graded_img]
    kind_g = (np.where(np.array(cp.graded_source) == "expert", RowKind.EXPERT, RowKind.CROWD)[gm]
              if len(cp.graded_source) else np.zeros(0, int))
    return Rows(
        img=np.concatenate([pi, ni[keep], cp.graded_img[gm]]),
        txt=np.concatenate([pt, nt[keep], cp.graded_txt[gm]]),
        target=np.concatenate([np.ones(len(pi)), np.zeros(int(keep.sum())), cp.graded_target[gm]]).astype(np.float32),
        kind=np.concatenate([np.full(len(pi), RowKind.CAPTION, int), np.full(int(keep.sum()), RowKind.NEGATIVE, int),
                             kind_g]).astype(int),
        gid=np.concatenate([np.full(len(pi) + int(keep.sum()), -1), np.flatnonzero(gm)]),
    )


def data_fingerprint(data_dir: Path) -> str:
    """sha256 over the annotation files and the image names + sizes (what the heads were trained on)."""
    h = hashlib.sha256()
    for name in ("train_dataset.csv", "ExpertAnnotations.tsv", "CrowdAnnotations.tsv", "extra_captions.tsv"):
        p = Path(data_dir) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    folder = Path(data_dir) / "train_images"
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


def _child_flags(texts: Sequence[str]) -> np.ndarray:
    return np.asarray(mentions_child(list(texts)), bool)


@dataclass(frozen=True)
class TrainingSet:
    """The course data embedded once, with the labels every step reads.

    Attributes:
        cp: the pairs the heads learn from (extra captions optional); ev: the pairs every number is measured on.
        text_child: per text, it mentions a child; caption_restricted: per image, a caption mentions a child.
        labels: per image, its visual label (child / none / unsure; the caption rule where nobody looked).
        restricted: per image, the training rule drops it (label not none, or forced by the caller).
        policy_splits: folds of the policy heads (each needs child and child-free images; < 2 skips them).
        rule: the training-data rule is on.
    """

    data_dir: Path
    emb: CourseEmbeddings
    cp: CoursePairs
    ev: CoursePairs
    text_child: np.ndarray
    caption_restricted: np.ndarray
    labels: list[str]
    restricted: np.ndarray
    policy_splits: int
    rule: bool


def load_training_set(data_dir: Path | str, extra_captions: bool = True, keep_restricted: bool = False,
                      image_encoder: str = DEFAULT_IMAGE_ENCODER, text_encoder: str = DEFAULT_TEXT_ENCODER,
                      views: Sequence[str] = DEFAULT_VIEWS, is_restricted_image: np.ndarray | None = None,
                      say: Progress = lambda _m: None) -> TrainingSet:
    data_dir = Path(data_dir)
    say(f"embedding course data with {image_encoder} {list(views)} / {text_encoder} (cached after the first run)")
    emb = course_embeddings(data_dir, image_encoder, text_encoder, tuple(views),
                            progress=lambda s, d, n: say(f"  {s}: {d}/{n}") if d == n else None)
    cp = course_pairs(data_dir, emb, extra_captions=extra_captions)
    ev = course_pairs(data_dir, emb, extra_captions=True)
    text_child = _child_flags(emb.texts)
    caption_restricted = restricted_images(ev, text_child)
    labels = _visual_or_caption_labels(emb.image_names, caption_restricted)
    restricted = np.asarray([lab != "none" for lab in labels], bool)
    policy_splits = int(min(5, restricted.sum(), (~restricted).sum()))  # before any caller override
    if is_restricted_image is not None:
        restricted = restricted | np.asarray(is_restricted_image, bool)
    rule = not keep_restricted
    say(f"{len(emb.image_names)} images ({int(restricted.sum())} restricted), {len(emb.texts)} texts "
        f"({int(text_child.sum())} mention children); training rule {'ON' if rule else 'OFF'}")
    return TrainingSet(data_dir, emb, cp, ev, text_child, caption_restricted, labels, restricted, policy_splits, rule)


@dataclass(frozen=True)
class FoldGrid:
    """One fold's gallery ranking, out of fold: held-out image rows, query text rows, the head's logit and the
    cosine of every (query, image), each query's own image column and whether the query is non-child."""

    images: np.ndarray
    query_txt: np.ndarray
    logit: np.ndarray
    cos: np.ndarray
    target: np.ndarray
    non_child: np.ndarray


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold results of the heads, per reranker row.

    Attributes:
        metrics: JSON-able numbers ("n_folds", "rule", "blends": per blend retrieval and score quality).
        X: pair features; rows: what each row is; fold_id: its validation fold.
        keys: (n_blend, n_rows) ranking keys a*logit + b*cosine; oof_prob: their calibrated scores.
        lists: listwise training lists of every fold (the final head learns from all of them).
        fold_z: per fold, its held-out image rows and their vectors under that fold's projection (out of fold).
        grids: per fold, the gallery ranking terms (later keys, e.g. the semantic bridge, are added to them).
    """

    metrics: dict[str, Any]
    X: np.ndarray
    rows: Rows
    keys: np.ndarray
    fold_id: np.ndarray
    oof_prob: np.ndarray
    lists: list[tuple[np.ndarray, np.ndarray]]
    fold_z: list[tuple[np.ndarray, np.ndarray]]
    grids: list[FoldGrid] = field(default_factory=list)

    def allowed(self, ts: TrainingSet) -> np.ndarray:
        """Rows the training rule keeps (all rows when the rule is off)."""
        if not ts.rule:
            return np.ones(len(self.rows.img), bool)
        return ~ts.restricted[self.rows.img] & ~ts.text_child[self.rows.txt]


def cross_validate(ts: TrainingSet, cfg: HeadConfig, seed: int, progress: Progress | None = None) -> CrossValidation:
    """Image-grouped K-fold: projections and reranker refitted per fold, every number out of fold."""
    emb, cp, ev, text_child, restricted, rule = ts.emb, ts.cp, ts.ev, ts.text_child, ts.restricted, ts.rule
    folds = image_folds(cp.n_images, min(cfg.n_folds, cp.n_images), seed)
    rng = np.random.default_rng(seed)
    fold_data, feats, rows_list, fold_of, lists, fold_z = [], [], [], [], [], []
    for f, (tr, va) in enumerate(folds):
        img_ok, txt_ok = train_mask_for(ev, tr)
        if rule:
            img_ok, txt_ok = img_ok & ~restricted, txt_ok & ~text_child
        pairs = _caption_pairs(cp, img_ok, txt_ok)
        proj = fit_projection(emb.image_feats, emb.text_feats, pairs, cfg, seed)
        memory = caption_memory(emb, proj, pairs, cfg)
        qm = np.isin(ev.caption_img, va)
        col = np.full(cp.n_images, -1)
        col[va] = np.arange(len(va))
        zi = proj.project_images(emb.image_feats[va])
        fold_z.append((va, zi))
        zt = proj.project_texts(emb.text_feats[ev.caption_txt[qm]])
        raw = emb.text_feats[ev.caption_txt[qm]] if cfg.raw_memory else None
        pseudo, pseudo_raw = memory.pseudo(zi) if memory is not None else (None, None)
        raw_pair = (raw, pseudo_raw) if pseudo_raw is not None else None
        fold_data.append((zi, zt, col[ev.caption_img[qm]], ~text_child[ev.caption_txt[qm]], pseudo, raw_pair,
                          va, ev.caption_txt[qm]))
        if cfg.rank_loss_weight > 0:  # listwise training data: allowed queries against allowed gallery images only
            ok_img = ~restricted[va] if rule else np.ones(len(va), bool)
            q_ok = ~text_child[ev.caption_txt[qm]] & ok_img[col[ev.caption_img[qm]]] if rule else np.ones(int(qm.sum()), bool)
            gcol = np.cumsum(ok_img) - 1
            if q_ok.any():
                lists.append(ranking_list(zi[ok_img], zt[q_ok], gcol[col[ev.caption_img[qm]][q_ok]], memory, cfg,
                                          None if raw is None else raw[q_ok]))
        rows = reranker_rows(ev, va, rng, cfg.neg_per_pos)
        feats.append(pair_features(proj.project_images(emb.image_feats[rows.img]), proj.project_texts(emb.text_feats[rows.txt]), memory,
                                   cfg.knn_products, emb.text_feats[rows.txt]))
        rows_list.append(rows)
        fold_of.append(np.full(len(rows.img), f))
        if progress:
            progress(f"fold {f + 1}/{len(folds)}: projection fitted")
    X = np.concatenate(feats)
    rows = Rows(*(np.concatenate([getattr(r, k) for r in rows_list]) for k in ("img", "txt", "target", "kind", "gid")))
    fold_id = np.concatenate(fold_of)
    allowed = ~restricted[rows.img] & ~text_child[rows.txt] if rule else np.ones(len(rows.img), bool)
    n_blend = len(cfg.blends)
    keys = np.zeros((n_blend, len(rows.img)), np.float32)
    per_blend: list[list[tuple[dict, dict]]] = [[] for _ in cfg.blends]
    weight = _row_weights(rows, cfg)
    grids = []
    for f, (zi, zt, tgt, nc, pseudo, raw_pair, va, q_txt) in enumerate(fold_data):
        train = (fold_id != f) & allowed & (weight > 0)
        coef, icpt = _fit_head(X[train], rows.target[train], weight[train], lists[:f] + lists[f + 1 :], cfg, seed)
        cos = zt @ zi.T
        lg = logit_grid(coef, icpt, zt, zi, pseudo, raw_pair)
        grids.append(FoldGrid(va, q_txt, lg, cos, tgt, nc))
        for j, (a, b) in enumerate(cfg.blends):
            keys[j, fold_id == f] = a * (X[fold_id == f] @ coef + icpt) + b * X[fold_id == f, 0]
            sim = a * lg + b * cos
            per_blend[j].append((retrieval_metrics(sim[nc], tgt[nc]), retrieval_metrics(sim, tgt)))
    metrics: dict[str, Any] = {"n_folds": len(folds), "rule": rule, "blends": {}}
    probs = np.zeros(keys.shape, np.float32)
    for j, (a, b) in enumerate(cfg.blends):
        prob = probs[j]
        for f in range(len(folds)):
            train = (fold_id != f) & allowed
            prob[fold_id == f] = fit_calibration(keys[j, train], rows.target[train])(keys[j, fold_id == f])
        res = per_blend[j]
        metrics["blends"][_blend_name(a, b)] = {
            "retrieval_non_child": mean_metrics([r[0] for r in res]), "retrieval_all": mean_metrics([r[1] for r in res]),
            "score": reranker_quality(ev, rows, prob, keys[j], X[:, 0], text_child, restricted, allowed),
        }
    return CrossValidation(metrics, X, rows, keys, fold_id, probs, lists, fold_z, grids)


def _blend_name(a: float, b: float) -> str:
    return f"{a:g}*logit+{b:g}*cos"


def choose_blend(metrics: dict[str, Any], blends: Sequence[tuple[float, float]], tolerance: float = 0.0) -> int:
    """Best score quality (expert tau-c + crowd tau-b) among blends whose non-child R@1/5/10 are not below the
    plain-cosine ranking's by more than `tolerance` points (the reranker must not lower recall); plain cosine if
    none qualifies."""
    names = [_blend_name(a, b) for a, b in blends]
    base = metrics["blends"][_blend_name(0.0, 1.0)]["retrieval_non_child"]
    best, best_q = names.index(_blend_name(0.0, 1.0)), -np.inf
    for j, name in enumerate(names):
        m = metrics["blends"][name]
        if all(m["retrieval_non_child"][k] >= base[k] - tolerance - 1e-9 for k in ("R@1", "R@5", "R@10")):
            q = m["score"]["expert_tau_c"] + m["score"]["crowd_tau_b"]
            if np.isfinite(q) and q > best_q:
                best, best_q = j, q
    return best


@dataclass(frozen=True)
class FinalHeads:
    """The projection and reranker fitted on every allowed training image, and what they were fitted on."""

    projection: LinearProjection
    reranker: Reranker
    n_images: int
    n_pairs: int
    n_rows: int


def fit_final_heads(ts: TrainingSet, cv: CrossValidation, blend: int, cfg: HeadConfig, seed: int,
                    say: Progress = lambda _m: None) -> FinalHeads:
    """Projection on all allowed caption pairs; reranker on all allowed rows, calibrated on the out-of-fold keys of
    the chosen blend (so the shipped score is calibrated on numbers it did not see)."""
    allowed = cv.allowed(ts)
    img_ok = ~ts.restricted if ts.rule else np.ones(ts.cp.n_images, bool)
    txt_ok = ~ts.text_child if ts.rule else np.ones(ts.cp.n_texts, bool)
    pairs = _caption_pairs(ts.cp, img_ok, txt_ok)
    say(f"final heads on {len(np.unique(pairs.img))} images / {len(pairs.img)} pairs")
    proj = fit_projection(ts.emb.image_feats, ts.emb.text_feats, pairs, cfg, seed)
    weight = _row_weights(cv.rows, cfg)
    fit_rows = allowed & (weight > 0)
    coef, icpt = _fit_head(cv.X[fit_rows], cv.rows.target[fit_rows], weight[fit_rows], cv.lists, cfg, seed)
    reranker = Reranker(coef.astype(np.float32), icpt,
                        fit_calibration(cv.keys[blend, allowed], cv.rows.target[allowed]),
                        caption_memory(ts.emb, proj, pairs, cfg))
    return FinalHeads(proj, reranker, int(len(np.unique(pairs.img))), int(len(pairs.img)), int(allowed.sum()))


@dataclass(frozen=True)
class PolicyHeads:
    """The child detector (with its out-of-fold metrics) and the child text probe; None where skipped."""

    detector: Any
    detector_metrics: dict[str, Any]
    text_probe: Any


def fit_policy_heads(ts: TrainingSet, text_encoder: str, seed: int, say: Progress = lambda _m: None) -> PolicyHeads:
    detector, det_metrics = _detector(ts.data_dir, ts.emb, ts.labels, ts.caption_restricted, ts.policy_splits, seed, say)
    text_probe = _text_probe(ts.emb, ts.text_child, ts.policy_splits, seed, say, text_encoder)
    return PolicyHeads(detector, det_metrics, text_probe)


def validation_summary(cv: CrossValidation, blend: tuple[float, float]) -> dict[str, Any]:
    """The metrics JSON of a training run: every blend, plus the chosen key's and plain cosine's numbers."""
    metrics = dict(cv.metrics)
    name = _blend_name(*blend)
    metrics["score_key"] = name
    metrics["rank_key"] = name
    metrics["validation"] = {"retrieval_non_child": metrics["blends"][name]["retrieval_non_child"],
                             "retrieval_all": metrics["blends"][name]["retrieval_all"],
                             "score": metrics["blends"][name]["score"]}
    metrics["validation_cosine"] = metrics["blends"][_blend_name(0.0, 1.0)]
    return metrics


def model_config(ts: TrainingSet, heads: FinalHeads, policy: PolicyHeads, blend: tuple[float, float],
                 metrics: dict[str, Any], image_encoder: str, text_encoder: str, views: Sequence[str],
                 extra_captions: bool, keep_restricted: bool, seed: int, cfg: HeadConfig,
                 example_calibration: Calibration | None = None, bridge: SemanticBridge | None = None) -> ModelConfig:
    ienc = build_image_encoder(image_encoder, views=tuple(views))
    tenc = build_text_encoder(text_encoder)
    return ModelConfig(
        image_encoder=image_encoder, image_encoder_checksum=ienc.checksum(), image_views=tuple(views),
        text_encoder=text_encoder, text_encoder_checksum=tenc.checksum(), image_dim=int(ts.emb.image_feats.shape[1]),
        text_dim=int(ts.emb.text_feats.shape[1]), dim=heads.projection.dim,
        method="cca" + ("+infonce" if cfg.contrastive_epochs else ""),
        rank_logit_weight=float(blend[0]), rank_cos_weight=float(blend[1]), seed=seed,
        child_image_threshold=float(policy.detector.threshold) if policy.detector is not None else 0.5,
        child_text_threshold=float(policy.text_probe.threshold) if policy.text_probe is not None else 0.5,
        training={"data_fingerprint": data_fingerprint(ts.data_dir), "extra_captions": extra_captions,
                  "keep_restricted": keep_restricted, "n_images": heads.n_images, "n_pairs": heads.n_pairs,
                  "n_reranker_rows": heads.n_rows, "heads": {k: v for k, v in vars(cfg).items()}},
        validation=metrics, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        example_calibration=calibration_to_json(example_calibration) if example_calibration is not None else {},
        bridge=bridge.config() if bridge is not None else {},
    )


def train_model(
    data_dir: Path | str, out_dir: Path | str, extra_captions: bool = True, seed: int = 0, keep_restricted: bool = False,
    image_encoder: str = DEFAULT_IMAGE_ENCODER, text_encoder: str = DEFAULT_TEXT_ENCODER,
    views: Sequence[str] = DEFAULT_VIEWS, progress: Progress | None = None, cfg: HeadConfig = HeadConfig(),
    is_restricted_image: np.ndarray | None = None, reliability_png: Path | str | None = None,
) -> dict[str, Any]:
    """The training pipeline: data -> K-fold validation -> blend choice -> final heads -> policy heads -> save.
    Writes the model folder atomically and returns the metrics (JSON-able)."""

    say = progress or (lambda _m: None)
    t0 = time.time()
    ts = load_training_set(data_dir, extra_captions, keep_restricted, image_encoder, text_encoder, views,
                           is_restricted_image, say)
    cv = cross_validate(ts, cfg, seed, say)
    # One key ranks AND scores: key = a * logit + b * cosine, the blend with the best taus among those that do not
    # lower non-child R@1/5/10 against plain cosine (beyond cfg.recall_tolerance); score = isotonic(key). So hits
    # sorted by rank are sorted by their calibrated score too.
    j = choose_blend(cv.metrics, cfg.blends, cfg.recall_tolerance)
    blend = cfg.blends[j]
    metrics = validation_summary(cv, blend)
    heads = fit_final_heads(ts, cv, j, cfg, seed, say)
    heads, bridge, oof_prob = add_bridge(ts, cv, j, blend, heads, metrics, image_encoder, text_encoder, views, say)
    policy = fit_policy_heads(ts, text_encoder, seed, say)
    if policy.detector_metrics:
        metrics["child_detector"] = policy.detector_metrics
    example_cal = fit_examples(ts, cv, metrics, say)
    config = model_config(ts, heads, policy, blend, metrics, image_encoder, text_encoder, views, extra_captions,
                          keep_restricted, seed, cfg, example_cal, bridge)
    model = RetrievalModel(config, heads.projection, heads.reranker, policy.detector, policy.text_probe, bridge)
    model.save(out_dir)
    allowed = cv.allowed(ts)
    # the reliability diagram of the shipped score travels with the model (or goes where the caller asked)
    plot_reliability(oof_prob[allowed], cv.rows.target[allowed],
                     reliability_png if reliability_png is not None else Path(out_dir) / "reliability.png")
    metrics["model_id"] = model.config.model_id
    metrics["seconds"] = round(time.time() - t0, 1)
    say(f"saved {out_dir} (model_id {model.config.model_id[:12]})")
    return metrics


def add_bridge(ts: TrainingSet, cv: CrossValidation, j: int, blend: tuple[float, float], heads: FinalHeads,
               metrics: dict[str, Any], image_encoder: str, text_encoder: str, views: Sequence[str],
               say: Progress = lambda _m: None) -> tuple[FinalHeads, SemanticBridge | None, np.ndarray]:
    """The semantic bridge on top of the chosen key (retrieval.learn.bridge_train): (heads with the calibration
    of the new key, bridge or None, out-of-fold scores of the shipped key). metrics["validation"] becomes the
    shipped key's numbers; the key without the bridge stays as metrics["validation_no_bridge"]."""
    classes = course_classes(ts, image_encoder, text_encoder, tuple(views))
    if classes is None:
        say("no ImageNet head in the image encoder: no semantic bridge")
        return heads, None, cv.oof_prob[j]
    fit = fit_bridge(ts, cv, j, blend, heads, classes, say)
    metrics["bridge"] = fit.metrics
    metrics["validation_no_bridge"] = metrics["validation"]
    metrics["validation"] = fit.metrics["weights"][f"{fit.bridge.weight:g}"]
    return fit.heads, fit.bridge, fit.oof_prob


def fit_examples(ts: TrainingSet, cv: CrossValidation, metrics: dict[str, Any],
                 say: Progress = lambda _m: None) -> Calibration | None:
    """The image-to-image score's calibration (retrieval.learn.examples); its numbers go to metrics["by_example"].
    None (hits then carry only the raw cosine) when the data has too few graded image pairs."""
    try:
        cal, m = fit_example_calibration(example_pairs(ts, cv.fold_z))
    except ValueError as exc:
        say(f"image-to-image scores not calibrated: {exc}")
        return None
    metrics["by_example"] = m
    say(f"image-to-image score: {m['n_pairs']} graded image pairs, tau-b {m['tau_b']:.3f}, ECE {m['ece']:.3f} "
        "(out of fold)")
    return cal


def _visual_or_caption_labels(image_names: Sequence[str], caption_restricted: np.ndarray) -> list[str]:
    """Each image's visual label; images nobody looked at fall back to the caption rule (child / none)."""

    return [v if v is not None else ("child" if c else "none")
            for v, c in zip(labels_for(image_names), caption_restricted)]


def _detector(data_dir: Path, emb: CourseEmbeddings, labels: Sequence[str], caption_restricted: np.ndarray,
              n_splits: int, seed: int, say: Progress) -> tuple[Any, dict[str, Any]]:
    """The child detector (retrieval.policy.detector) fitted on the visual labels, with its out-of-fold metrics."""

    if n_splits < 2:
        say("too few child / child-free images for the child detector; skipped")
        return None, {}
    say("child detector: faces (MTCNN) + crop features of the training images (cached after the first run)")
    faces = course_face_table(data_dir, progress=lambda s, d, n: say(f"  {s}: {d}/{n}") if d == n else None)
    person = caption_person_labels(emb.image_names, read_extra_captions(data_dir))
    detector, m, oof = fit_detector(emb.image_feats, faces, labels, person, n_splits=n_splits, seed=seed)
    cap = np.where(caption_restricted, "child", "none")
    m["against_caption_labels"] = {k: v for k, v in detector_metrics(cap, oof, m["threshold"]).items()
                                   if k in ("withheld_child", "withheld_none", "auc")}
    say("child detector (out of fold, visual labels): " + ", ".join(
        f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
    return detector, m


def _text_probe(emb: CourseEmbeddings, text_child: np.ndarray, n_splits: int, seed: int, say: Progress,
                text_encoder: str) -> Any:
    if n_splits < 2:
        return None
    say("child text probe: captions + hand-labelled training queries (retrieval/policy/child_queries_train.tsv)")
    return fit_text_probe(emb.text_feats, text_child, text_encoder, n_splits=n_splits, seed=seed)
