"""float32 vs bf16 inference of the encoders, in one run: speed and how far the features move.

    python benchmarks/bench_precision.py [--images 48] [--texts 100] [--json]

For each EfficientNet-Lite part of the default model (lite0, lite2 with the center + full views, lite2-hires on the
full frame) and for the whole 5,120-d default image feature: images/s embedding course JPEGs (already decoded and
preprocessed, batches of 16 and one image at a time, this process's threads; best of 3 alternating rounds) and the per-image cosine between the
bf16 and float32 features (min / mean). For the text encoders (all-mpnet-base-v2, all-MiniLM-L6-v2): one caption
at a time, p50 ms, and the cosine. Precision is switched with RETRIEVAL_PRECISION (retrieval.encoders.precision);
on a CPU without bf16 both runs are float32 and the report says so. Writes benchmarks/results/bench_precision.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import numpy as np
from common import RESULTS_DIR, banner, ensure_repo_on_path, median_ms, write_json

ensure_repo_on_path()

PARTS = ("efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2-hires")
VIEWS = ("center", "full")
TEXTS = ("all-mpnet-base-v2", "all-MiniLM-L6-v2")


def _with_precision(precision: str, make: Callable[[], Any]) -> Any:
    old = os.environ.get("RETRIEVAL_PRECISION")
    os.environ["RETRIEVAL_PRECISION"] = precision
    try:
        return make()
    finally:
        if old is None:
            os.environ.pop("RETRIEVAL_PRECISION", None)
        else:
            os.environ["RETRIEVAL_PRECISION"] = old


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def image_part(name: str, images: list[Any], rounds: int = 3) -> dict[str, Any]:
    """Both precisions built and warmed first, then timed in alternating rounds (best round each): a slow first
    pass (page faults, a busy neighbour) does not land on one side only."""
    from retrieval.encoders.image import efficientnet_lite

    encoders, items = {}, None
    for precision in ("fp32", "bf16"):
        def build() -> Any:
            enc = efficientnet_lite(name, views=VIEWS)
            enc.embed_batch([enc.preprocess(images[0])])  # the forward compiles now, under this precision
            return enc

        encoders[precision] = _with_precision(precision, build)
    items = [encoders["fp32"].preprocess(im) for im in images]
    feats, batch_s, one_ms = {}, {"fp32": [], "bf16": []}, {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision, enc in encoders.items():
            t = time.perf_counter()
            feats[precision] = np.concatenate([enc.embed_batch(items[i:i + 16]) for i in range(0, len(items), 16)])
            batch_s[precision].append(time.perf_counter() - t)
            one = []
            for it in items[:16]:
                t = time.perf_counter()
                enc.embed_batch([it])
                one.append(time.perf_counter() - t)
            one_ms[precision].append(median_ms(one))
    out: dict[str, Any] = {p: {"images_per_s_batch16": round(len(items) / min(batch_s[p]), 1),
                               "one_image_ms": round(min(one_ms[p]), 2)} for p in encoders}
    c = _cos(feats["fp32"], feats["bf16"])
    out["cosine_min"], out["cosine_mean"] = round(float(c.min()), 5), round(float(c.mean()), 5)
    out["speedup_batch16"] = round(out["bf16"]["images_per_s_batch16"] / out["fp32"]["images_per_s_batch16"], 2)
    out["features"] = feats
    return out


def text_part(name: str, texts: list[str], rounds: int = 3) -> dict[str, Any]:
    import retrieval.encoders.text as text

    path = text.mpnet_path() if "mpnet" in name else text.minilm_path()
    encoders = {}
    for precision in ("fp32", "bf16"):
        def build() -> Any:
            enc = text.load(name, path, 128, False)
            enc.encode(texts[:2])  # compiles now, under this precision
            return enc

        encoders[precision] = _with_precision(precision, build)
    feats, p50 = {}, {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision, enc in encoders.items():
            ms, f = [], []
            for s in texts:
                t = time.perf_counter()
                f.append(enc.encode([s])[0])
                ms.append(time.perf_counter() - t)
            feats[precision] = np.asarray(f)
            p50[precision].append(median_ms(ms))
    out: dict[str, Any] = {p: {"one_query_p50_ms": round(min(p50[p]), 2)} for p in encoders}
    c = _cos(feats["fp32"], feats["bf16"])
    out["cosine_min"], out["cosine_mean"] = round(float(c.min()), 6), round(float(c.mean()), 6)
    out["speedup"] = round(out["fp32"]["one_query_p50_ms"] / out["bf16"]["one_query_p50_ms"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--texts", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from retrieval.config import course_data_dir
    from retrieval.encoders.image import part_weight
    from retrieval.encoders.precision import cpu_has_bf16
    from retrieval.index.imageio import load_image
    from retrieval.learn.features import read_extra_captions
    from retrieval.vectors import l2n

    info = banner({"benchmark": "fp32 vs bf16 encoders"})
    data = course_data_dir()
    files = sorted((data / "train_images").glob("*.jpg"))[-args.images:]
    images = [load_image(p) for p in files]
    out: dict[str, Any] = {**info, "cpu_has_bf16": cpu_has_bf16(), "images": len(images), "parts": {}}
    whole = {"fp32": [], "bf16": []}
    for name in PARTS:
        r = image_part(name, images)
        for p in whole:
            whole[p].append(part_weight(name) * l2n(r["features"][p]))
        del r["features"]
        out["parts"][name] = r
    c = _cos(np.concatenate(whole["fp32"], 1), np.concatenate(whole["bf16"], 1))
    out["default_image_feature"] = {"cosine_min": round(float(c.min()), 5), "cosine_mean": round(float(c.mean()), 5)}
    texts = [t for _, t in read_extra_captions(data)][: args.texts]
    out["text"] = {name: text_part(name, texts) for name in TEXTS}
    path = write_json(RESULTS_DIR / "bench_precision.json", out)
    for name, r in out["parts"].items():
        print(f"{name:26s} fp32 {r['fp32']['images_per_s_batch16']:6.1f} img/s  bf16 {r['bf16']['images_per_s_batch16']:6.1f}"
              f" img/s ({r['speedup_batch16']:.2f}x)  cos min {r['cosine_min']:.4f} mean {r['cosine_mean']:.4f}")
    print(f"default image feature cos min {out['default_image_feature']['cosine_min']:.4f}")
    for name, r in out["text"].items():
        print(f"{name:26s} fp32 {r['fp32']['one_query_p50_ms']:6.2f} ms  bf16 {r['bf16']['one_query_p50_ms']:6.2f} ms "
              f"({r['speedup']:.2f}x)  cos min {r['cosine_min']:.4f}")
    print(f"wrote {path}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
