"""Operator review, simulated: does answering the queue's questions lower over-blocking, with recall kept?

    python benchmarks/bench_review.py [--model default] [--seeds 3] [--extra-library INDEX] [--learners] [--json]

The operator is simulated by the visual labels (`retrieval/policy/visual_labels.tsv`: child and unsure answered
"child", none answered "none"). The shipped model stores every training image's detector features as its heads saw
them out of fold (`ChildDetector.train_rows`). Each run splits the 1,000 images 2:1 (image-grouped, stratified):
the detector's fusion, gates and threshold are fitted on the 2/3 exactly as training does (`fusion_detector`, with
the threshold from out-of-fold scores at recall 0.97), the other 1/3 is the user's library. Then, for queue order
(`retrieval.review`'s expected gain + diversity, in the model's own projected vector space) and for random order,
after 0/10/20/30/50 answers: `policy.refit.fit_refit` on the 2/3 + the answers, measured on the library images
nobody reviewed, against the detector's own decision on those same images. "library" columns count every library
image as strict shows it (reviewed ones as the operator said). 3 seeds x 3 folds, means.
Needs the course data ($RETRIEVAL_COURSE_DATA, else ../shared/data/course-train) for the image features of the
diversity term. Writes benchmarks/results/bench_review.json.

`--extra-library INDEX` (e.g. an index of tests/fixtures/ood): a library unlike the training photos. Every library
also holds that index's photos (child-free, answered "none"), so the operator's answers carry what the 1,000
training photos do not; `extra_unreviewed_withheld_*` are the shares of them withheld among the unreviewed.
Writes benchmarks/results/bench_review_extra.json.

`--learners`: the same curves for the refit variants tried besides the shipped one (`LEARNERS`): the fusion with
familiarity and faceless-only terms, and the whole-image probe relearnt on the index's vectors. None of them moves
the unreviewed child-free rate beyond the seeds' spread on the course library (see docs/legal.md).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

STEPS = (0, 10, 20, 30, 50)


def extra_library(index_dir: str, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(stored detector features, projected vectors) of every row of an index built with `model`: photos added to
    each simulated library, all answered "none" (use a folder known to be child-free, e.g. tests/fixtures/ood)."""
    from retrieval.search import open_index
    from retrieval.policy.operator import IndexPolicy

    store, m = open_index(index_dir)
    if m.config.model_id != model.config.model_id:
        raise SystemExit(f"{index_dir} was built with another model; rebuild it with this one")
    policy = IndexPolicy.for_model(store.folder, store.meta, m)
    if not policy.has_features.all():
        raise SystemExit(f"{index_dir} has rows without stored detector features; rebuild it")
    return policy.features, np.asarray(store.vectors, np.float32)


def shipped_learner(own: Any, ZA: np.ndarray, VA: np.ndarray, yA: np.ndarray, Zr: np.ndarray, Vr: np.ndarray,
                    yr: np.ndarray, seed: int) -> Any:
    """The product's refit (`policy.refit.fit_refit`): fusion + threshold on the stored detector features."""
    from dataclasses import replace

    from retrieval.policy.refit import RefitRefusedError, fit_refit

    try:
        (mean, scale, w, b), t, _ = fit_refit(own, Zr, yr, seed=seed)
    except RefitRefusedError:
        return None
    det = replace(own, fusion_mean=mean, fusion_scale=scale, fusion_weight=w, fusion_bias=b)
    return (lambda Z, V: det.fuse(Z)), t


def _weighted_refit(own: Any, X: np.ndarray, Zall: np.ndarray, y: np.ndarray, n_rev: int, seed: int,
                    features: Any, weight: float = 5.0) -> Any:
    """The shipped refit's learner (`policy.refit.fit_fusion`) and rules (`policy.refit.refit_threshold`: folds,
    threshold at 97 % out-of-fold recall, refusal) on another design matrix `X` (training + reviewed rows);
    `features(Z, V)` builds X for any rows. None when the rules refuse."""
    from retrieval.policy.refit import RefitRefusedError, fit_fusion, refit_threshold

    w = np.concatenate([np.ones(len(y) - n_rev), np.full(n_rev, weight)])

    def scorer(params: Any) -> Any:
        mean, scale, coef, bias = params
        return lambda XX, ZZ: np.where(own.person(ZZ), 1.0 / (1.0 + np.exp(-(((XX - mean) / scale) @ coef + bias))), 0.0)

    def fit(tr: np.ndarray) -> Any:
        score = scorer(fit_fusion(X[tr], y[tr], w[tr]))
        return lambda rows: score(X[rows], Zall[rows])

    try:
        t, _ = refit_threshold(fit, y, len(y) - n_rev, seed=seed)
    except RefitRefusedError:
        return None
    final = scorer(fit_fusion(X, y, w))
    return (lambda Z, V: final(features(Z, V), Z)), t


def faceless_learner(own: Any, ZA: np.ndarray, VA: np.ndarray, yA: np.ndarray, Zr: np.ndarray, Vr: np.ndarray,
                     yr: np.ndarray, seed: int) -> Any:
    """Variant: the fusion also sees familiarity, and the image/person logits and familiarity of faceless photos
    on their own (where the whole-image probe decides)."""
    def features(Z: np.ndarray, V: np.ndarray) -> np.ndarray:
        nf = (Z[:, 2] <= 0).astype(float)[:, None]
        return np.hstack([Z[:, :6], Z[:, 6:7], nf * Z[:, [0, 1, 6]]])

    Zall, Vall = np.vstack([ZA, Zr]), np.vstack([VA, Vr])
    return _weighted_refit(own, features(Zall, Vall), Zall, np.concatenate([yA, yr]), len(yr), seed, features)


def vector_learner(own: Any, ZA: np.ndarray, VA: np.ndarray, yA: np.ndarray, Zr: np.ndarray, Vr: np.ndarray,
                   yr: np.ndarray, seed: int, weight: float = 5.0) -> Any:
    """Variant: the whole-image probe relearnt on the index's own 256-d vectors (training + reviewed photos; the
    product would have to ship the training photos' vectors), its out-of-fold logit replacing image_logit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    Zall, Vall, y = np.vstack([ZA, Zr]), np.vstack([VA, Vr]).astype(np.float64), np.concatenate([yA, yr])
    w = np.concatenate([np.ones(len(yA)), np.full(len(yr), weight)])
    logit = np.zeros(len(y))
    for tr, va in StratifiedKFold(5, shuffle=True, random_state=seed).split(Vall, y):
        logit[va] = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(
            Vall[tr], y[tr], sample_weight=w[tr]).decision_function(Vall[va])
    probe = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(Vall, y, sample_weight=w)

    def features(Z: np.ndarray, V: np.ndarray, lg: np.ndarray | None = None) -> np.ndarray:
        X = Z[:, :6].copy()
        X[:, 0] = probe.decision_function(np.asarray(V, np.float64)) if lg is None else lg
        return X

    return _weighted_refit(own, features(Zall, Vall, logit), Zall, y, len(yr), seed, features, weight)


LEARNERS = {"shipped": shipped_learner, "faceless-terms": faceless_learner, "vector-probe": vector_learner}


def simulate(model: Any, vectors: np.ndarray, labels: np.ndarray, seeds: int,
             extra: tuple[np.ndarray, np.ndarray] | None = None, learner: Any = shipped_learner) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    from retrieval.policy.classifiers import threshold_for_recall
    from retrieval.policy.detector_train import fusion_detector, fusion_out_of_fold
    from retrieval.policy.queue import calibration, expected_gain, review_queue

    det0 = model.detector
    Z = np.asarray(det0.train_rows, np.float64)
    y = labels != "none"
    rows: dict[str, list[dict[str, float]]] = {"queue": [], "random": []}
    for seed in range(seeds):
        for A, B in StratifiedKFold(3, shuffle=True, random_state=seed).split(Z, labels):
            oof, _ = fusion_out_of_fold(Z[A], labels[A], 5, seed + 1)
            own = fusion_detector(Z[A], y[A], threshold_for_recall(y[A], oof, 0.97), labels[A])
            # the library: the held-out third, plus the extra child-free photos when given
            ZB, VB, lab = Z[B], vectors[B], labels[B]
            if extra is not None:
                ZB, VB = np.concatenate([ZB, extra[0]]), np.concatenate([VB, extra[1]])
                lab = np.concatenate([lab, np.full(len(extra[0]), "none", dtype=lab.dtype)])
            yB = lab != "none"
            p_own = own.fuse(ZB)
            p_child = calibration(own.fuse(Z[A]), y[A]).predict(p_own)
            gain = expected_gain(p_own, own.threshold, p_child)
            orders = {"queue": review_queue(gain, VB, np.zeros(len(ZB), bool), max(STEPS)),
                      "random": list(np.random.default_rng(seed).permutation(len(ZB))[:max(STEPS)])}
            for kind, order in orders.items():
                for n in STEPS:
                    rev = np.asarray(order[:n], int)
                    un = np.setdiff1d(np.arange(len(ZB)), rev)
                    refused = 0
                    p, t = p_own, own.threshold
                    if n:
                        fitted = learner(own, Z[A], vectors[A], y[A], ZB[rev], VB[rev], yB[rev], seed)
                        if fitted is None:
                            refused = 1
                        else:
                            p, t = fitted[0](ZB, VB), fitted[1]
                    hit, hit_own = p >= t, p_own >= own.threshold
                    shown_lib = hit.copy()
                    shown_lib[rev] = yB[rev]
                    u = lab[un]
                    rows[kind].append({
                        **({"extra_unreviewed_withheld_refit": float(hit[un][un >= len(B)].mean()),
                            "extra_unreviewed_withheld_detector": float(hit_own[un][un >= len(B)].mean())}
                           if extra is not None else {}),
                        "n": n, "refused": refused,
                        "unreviewed_none_withheld_refit": float(hit[un][u == "none"].mean()),
                        "unreviewed_none_withheld_detector": float(hit_own[un][u == "none"].mean()),
                        "unreviewed_recall_child_unsure": float(hit[un][u != "none"].mean()),
                        "unreviewed_recall_child": float(hit[un][u == "child"].mean()),
                        "library_none_withheld": float(shown_lib[lab == "none"].mean()),
                        "library_none_withheld_detector": float(hit_own[lab == "none"].mean()),
                        "library_recall_child_unsure": float(shown_lib[lab != "none"].mean()),
                    })
    out: dict[str, Any] = {}
    for kind, items in rows.items():
        out[kind] = {}
        for n in STEPS:
            sel = [r for r in items if r["n"] == n]
            out[kind][str(n)] = {k: round(float(np.mean([r[k] for r in sel])), 4) for k in sel[0] if k != "n"}
            out[kind][str(n)]["min_unreviewed_recall_child_unsure"] = round(
                min(r["unreviewed_recall_child_unsure"] for r in sel), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or default/light (default: shipped default)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--extra-library", default=None, metavar="INDEX",
                    help="an index (built with the same model) of child-free photos added to every simulated library")
    ap.add_argument("--learners", action="store_true",
                    help=f"also simulate the refit variants that were tried ({', '.join(list(LEARNERS)[1:])})")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from retrieval.learn.model import load_model
    from retrieval.config import course_data_dir
    from retrieval.learn.features import combine_image_features
    from retrieval.policy.visual_labels import labels_for
    from retrieval.vectors import l2n

    model = load_model(args.model)
    if model.detector is None or model.detector.train_rows is None:
        raise SystemExit("this model stores no detector training rows; retrain it with `make train-default`")
    data = course_data_dir()
    names, feats = combine_image_features(data, model.config.image_encoder, tuple(model.config.image_views))
    labels = np.asarray(labels_for(names), dtype="<U8")
    vectors = l2n(np.asarray(model.project_images(feats), np.float32))
    info = banner({"benchmark": "operator review simulation (visual labels as the operator)"})
    extra = extra_library(args.extra_library, model) if args.extra_library else None
    result = {**info, "model_id": model.config.model_id, "seeds": args.seeds, "steps": list(STEPS),
              "extra_library": args.extra_library, **simulate(model, vectors, labels, args.seeds, extra)}
    if args.learners:
        result["learners"] = {name: simulate(model, vectors, labels, args.seeds, extra, learner)
                              for name, learner in list(LEARNERS.items())[1:]}
    path = write_json(RESULTS_DIR / ("bench_review_extra.json" if args.extra_library else "bench_review.json"), result)
    if args.json:
        print(json.dumps(result, indent=1))
    for name, curves in [("shipped", result), *result.get("learners", {}).items()]:
        print(f"refit: {name}")
        for kind in ("queue", "random"):
            print(f"{kind:>7}  n  unreviewed none withheld (refit / detector)  recall child+unsure (min)  "
                  "library none withheld" + ("  extra withheld (refit / detector)" if extra is not None else ""))
            for n in STEPS:
                r = curves[kind][str(n)]
                print(f"{'':>7} {n:>2}  {r['unreviewed_none_withheld_refit']:.3f} / "
                      f"{r['unreviewed_none_withheld_detector']:.3f}{'':>20}{r['unreviewed_recall_child_unsure']:.3f} "
                      f"({r['min_unreviewed_recall_child_unsure']:.3f}){'':>12}{r['library_none_withheld']:.3f}"
                      + (f"{'':>10}{r['extra_unreviewed_withheld_refit']:.3f} / "
                         f"{r['extra_unreviewed_withheld_detector']:.3f}" if extra is not None else ""))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
