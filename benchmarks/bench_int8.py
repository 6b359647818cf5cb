"""INT8 image encoders vs bf16 and float32: speed and feature cosine per EfficientNet-Lite part of the default model.

    python benchmarks/bench_int8.py [--calibration 128] [--json]

INT8 here is post-training quantisation written straight into the OpenVINO graph `lite_fast.openvino_model`
builds: a FakeQuantize (256 levels, per-tensor range) on the input of every convolution, its range the min/max that
input took over --calibration course photos, and a symmetric per-output-channel FakeQuantize (255 levels) on every
convolution weight; OpenVINO's CPU plugin then runs those convolutions in INT8. The ranges would be a few hundred
numbers stored with a model, so users would need no calibration photos. Measured on 64 other course photos,
batches of 16, 2 threads, best of 3; cosine per pooled block against float32. Writes
benchmarks/results/bench_int8.json. The verdict in docs/performance.md: on this CPU (AMX bf16) INT8 is 1.3-1.6x
bf16 at 10x bf16's feature error, so it is not shipped.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

PARTS = ("efficientnet-lite0", "efficientnet-lite2-hires")
BATCH = 16


def graph(spec: Any, ranges: list[tuple[float, float]] | None = None, taps: list[Any] | None = None) -> Any:
    """`lite_fast.openvino_model`; with `ranges` every conv input and weight is fake-quantised, with `taps` the conv
    inputs are collected and their per-image min and max added as outputs (for calibration)."""
    import openvino as ov
    import openvino.opset13 as ops

    from retrieval.encoders import lite_fast

    k = [0]

    def c(v: Any) -> Any:
        return ops.constant(np.asarray(v, np.float32))

    def act(h: Any) -> Any:
        if taps is not None:
            taps.append(h)
            return h
        lo, hi = ranges[k[0]]  # type: ignore[index]
        k[0] += 1
        lo = min(lo, 0.0)
        return ops.fake_quantize(h, c(lo), c(hi), c(lo), c(hi), 256)

    def weight(w: np.ndarray) -> Any:
        m = np.maximum(np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True), 1e-8)
        return ops.fake_quantize(ops.constant(w), c(-m), c(m), c(-m), c(m), 255)

    quantised = ranges is not None
    model = lite_fast.openvino_model(spec, act if quantised or taps is not None else None, weight if quantised else None)
    if taps is None:
        return model
    every = ops.constant(np.array([1, 2, 3], np.int64))
    outs = [r.input_value(0) for r in model.get_results()]
    outs += [ops.reduce_min(t, every, keep_dims=False).output(0) for t in taps]
    outs += [ops.reduce_max(t, every, keep_dims=False).output(0) for t in taps]
    return ov.Model(outs, model.get_parameters())


def run(compiled: Any, X: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(X[i:i + BATCH])[compiled.outputs[0]] for i in range(0, len(X), BATCH)])


def images_per_s(compiled: Any, X: np.ndarray) -> float:
    run(compiled, X[:BATCH])
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        run(compiled, X)
        best = min(best, time.perf_counter() - t)
    return len(X) / best


def block_cosine(a: np.ndarray, b: np.ndarray, blocks: int) -> np.ndarray:
    """Per image, the smallest cosine over its pooled blocks (mean, max)."""
    from retrieval.encoders.imagenet import LITE_WIDTH

    cs = []
    for j in range(blocks):
        cols = slice(j * LITE_WIDTH, (j + 1) * LITE_WIDTH)
        A, B = a[:, cols], b[:, cols]
        cs.append((A * B).sum(1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1))
    return np.min(cs, axis=0)


def part_numbers(name: str, n_cal: int) -> dict[str, Any]:
    import openvino as ov
    import torch

    from retrieval.config import course_data_dir
    from retrieval.encoders import build_image_encoder, lite_fast
    from retrieval.encoders.image import LITE_VARIANTS, lite_net
    from retrieval.index.imageio import load_image

    v = LITE_VARIANTS[name]
    spec = lite_fast.lite_spec(lite_net(name), v.size, v.pool)
    enc = build_image_encoder(name, views=("full",))
    files = sorted((course_data_dir() / "train_images").glob("*.jpg"))

    def tensors(paths: list[Any]) -> np.ndarray:
        with torch.inference_mode():
            return enc.normalise(enc.stack_views([enc.preprocess(load_image(p)) for p in paths])).numpy()

    cal, test = tensors(files[:n_cal]), tensors(files[500:564])
    core = ov.Core()

    def compile_(model: Any, precision: str) -> Any:
        return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": precision,
                                                 "PERFORMANCE_HINT": "LATENCY"})

    taps: list[Any] = []
    probe = compile_(graph(spec, taps=taps), "f32")
    lows, highs = [], []
    for i in range(0, len(cal), BATCH):
        r = probe(cal[i:i + BATCH])
        vals = [r[o] for o in probe.outputs]
        lows.append(np.stack(vals[1:1 + len(taps)], 1))
        highs.append(np.stack(vals[1 + len(taps):], 1))
    ranges = list(zip(np.concatenate(lows).min(0).tolist(), np.concatenate(highs).max(0).tolist()))
    f32 = compile_(graph(spec), "f32")
    ref = run(f32, test)
    out: dict[str, Any] = {"convolutions": len(taps), "f32_images_per_s": round(images_per_s(f32, test), 1)}
    for label, compiled in (("bf16", compile_(graph(spec), "bf16")), ("int8", compile_(graph(spec, ranges), "f32"))):
        cos = block_cosine(run(compiled, test), ref, v.blocks)
        out[label] = {"images_per_s": round(images_per_s(compiled, test), 1), "cosine_min": round(float(cos.min()), 4),
                      "cosine_mean": round(float(cos.mean()), 4)}
    out["int8_over_bf16"] = round(out["int8"]["images_per_s"] / out["bf16"]["images_per_s"], 2)
    out["int8_over_f32"] = round(out["int8"]["images_per_s"] / out["f32_images_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibration", type=int, default=128, help="course photos whose activations set the ranges")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    info = banner({"benchmark": "INT8 (fake-quantised graph) vs bf16 vs float32 image encoders"})
    result = {**info, "calibration_images": args.calibration,
              "parts": {name: part_numbers(name, args.calibration) for name in PARTS}}
    path = write_json(RESULTS_DIR / "bench_int8.json", result)
    print(json.dumps(result if args.json else result["parts"], indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
