"""Operator review, simulated: does answering the queue's questions lower over-blocking, with recall kept?

    python benchmarks/bench_review.py [--model default] [--seeds 3] [--extra-library INDEX] [--json]

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


def simulate(model: Any, vectors: np.ndarray, labels: np.ndarray, seeds: int,
             extra: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    from retrieval.policy.classifiers import threshold_for_recall
    from retrieval.policy.detector_train import fusion_detector, fusion_out_of_fold
    from retrieval.policy.queue import calibration, expected_gain, review_queue
    from retrieval.policy.refit import RefitRefusedError, fit_refit

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
                        try:
                            params, t, _ = fit_refit(own, ZB[rev], yB[rev], seed=seed)
                            mean, scale, w, b = params
                            from dataclasses import replace

                            p = replace(own, fusion_mean=mean, fusion_scale=scale, fusion_weight=w, fusion_bias=b).fuse(ZB)
                        except RefitRefusedError:
                            refused = 1
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
    result = {**info, "model_id": model.config.model_id, "seeds": args.seeds, "steps": list(STEPS),
              "extra_library": args.extra_library,
              **simulate(model, vectors, labels, args.seeds,
                         extra_library(args.extra_library, model) if args.extra_library else None)}
    path = write_json(RESULTS_DIR / ("bench_review_extra.json" if args.extra_library else "bench_review.json"), result)
    if args.json:
        print(json.dumps(result, indent=1))
    for kind in ("queue", "random"):
        print(f"{kind:>7}  n  unreviewed none withheld (refit / detector)  recall child+unsure (min)  library none withheld")
        for n in STEPS:
            r = result[kind][str(n)]
            print(f"{'':>7} {n:>2}  {r['unreviewed_none_withheld_refit']:.3f} / {r['unreviewed_none_withheld_detector']:.3f}"
                  f"{'':>20}{r['unreviewed_recall_child_unsure']:.3f} ({r['min_unreviewed_recall_child_unsure']:.3f})"
                  f"{'':>12}{r['library_none_withheld']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
