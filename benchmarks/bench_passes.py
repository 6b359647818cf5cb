"""What each CNN pass of the default image encoder buys: 10-fold retrieval and score quality without it.

    python benchmarks/bench_passes.py [--variants all] [--json]

The default encoder makes five passes per image: Lite0 and Lite2 on the center crop and on the full frame, and
Lite2-hires (full frame at 384 px). Each variant drops some of them and reruns the training's image-grouped 10-fold
validation (`train.cross_validate` with the shipped `HeadConfig`, projection and reranker refitted per fold, the
blend chosen as training does) on the cached float32 course features. Reported per variant: passes per image,
non-child R@1/5/10, expert tau-c / crowd tau-b of the chosen key, and the differences to the full encoder measured
in the same run. Writes benchmarks/results/bench_passes.json (issue #16, "cheaper default recipe if it is free").
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

#: name -> (image encoder, views): the default first, then one thing dropped at a time
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default (5 passes)": ("efficientnet-lite0+efficientnet-lite2+efficientnet-lite2-hires", ("center", "full")),
    "no Lite2-hires (4)": ("efficientnet-lite0+efficientnet-lite2", ("center", "full")),
    "no Lite0 (3)": ("efficientnet-lite2+efficientnet-lite2-hires", ("center", "full")),
    "no Lite2 260 px (3)": ("efficientnet-lite0+efficientnet-lite2-hires", ("center", "full")),
    "center views only (3)": ("efficientnet-lite0+efficientnet-lite2+efficientnet-lite2-hires", ("center",)),
    "full-frame views only (3)": ("efficientnet-lite0+efficientnet-lite2+efficientnet-lite2-hires", ("full",)),
}


def passes(encoder: str, views: tuple[str, ...]) -> int:
    return sum(1 if part.endswith("-hires") else len(views) for part in encoder.split("+"))


def measure(encoder: str, views: tuple[str, ...]) -> dict[str, Any]:
    from retrieval.config import course_data_dir
    from retrieval.learn.train import (DEFAULT_TEXT_ENCODER, HeadConfig, choose_blend, cross_validate,
                                       load_training_set, validation_summary)

    cfg = HeadConfig()
    t = time.perf_counter()
    ts = load_training_set(course_data_dir(), image_encoder=encoder, text_encoder=DEFAULT_TEXT_ENCODER, views=views)
    cv = cross_validate(ts, cfg, seed=0)
    j = choose_blend(cv.metrics, cfg.blends, cfg.recall_tolerance)
    v = validation_summary(cv, cfg.blends[j])["validation"]
    r, s = v["retrieval_non_child"], v["score"]
    return {"encoder": encoder, "views": list(views), "passes": passes(encoder, views),
            "image_dim": int(ts.emb.image_feats.shape[1]), "key": validation_summary(cv, cfg.blends[j])["rank_key"],
            **{k: round(r[k], 2) for k in ("R@1", "R@5", "R@10")},
            "expert_tau_c": round(s["expert_tau_c"], 4), "crowd_tau_b": round(s["crowd_tau_b"], 4),
            "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="all", help="comma-separated variant names, or all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else [n.strip() for n in args.variants.split(",")]
    info = banner({"benchmark": "what each CNN pass buys (10-fold)"})
    rows = {}
    for name in names:
        rows[name] = measure(*VARIANTS[name])
        print(json.dumps({name: rows[name]}), flush=True)
    base = rows.get("default (5 passes)")
    if base:
        for row in rows.values():
            row["delta"] = {k: round(row[k] - base[k], 4) for k in ("R@1", "R@5", "R@10", "expert_tau_c", "crowd_tau_b")}
    out = {**info, "variants": rows}
    path = write_json(RESULTS_DIR / "bench_passes.json", out)
    print(f"wrote {path}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
