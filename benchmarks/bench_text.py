"""Text encoding speed per backend, same run: one query at a time and batched, optionally with a busy core.

    python benchmarks/bench_text.py [--model all-mpnet-base-v2] [--queries 30] [--batch 600] [--busy] [--json]

Backends (retrieval.encoders.text): "openvino" (compiled layers with INT8 matrices, the default), "openvino-f32"
(the same layers in float32, `--precision fp32`), "numpy" (the numpy forward a one-shot
`retrieve query` uses) and "transformers" (the torch reference). Texts: real course captions. Single query: median
wall time of `encode([text])` over --queries captions after 3 warm-up calls (the openvino encoder is warmed first, as
the server does). Batched: ms per text for one `encode` of --batch captions. --busy runs a CPU-bound process on one
core during the measurement (what a query costs beside a training job). Vectors of each backend are compared with
the numpy forward's (worst cosine). Writes benchmarks/results/bench_text_<model>[_busy].json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

BACKENDS = ("openvino", "openvino-f32", "numpy", "transformers")


def course_captions(n: int) -> list[str]:
    from retrieval.config import course_data_dir

    path = course_data_dir() / "extra_captions.tsv"
    if not path.is_file():
        sys.exit(f"course data not found at {path.parent}; set RETRIEVAL_COURSE_DATA to the course-train folder")
    return [line.rstrip("\n").split("\t", 1)[1] for line in open(path, encoding="utf-8")][:n]


def measure(name: str, backend: str, queries: list[str], batch: list[str]) -> tuple[dict[str, float], np.ndarray]:
    from retrieval.encoders import text

    folder = text.minilm_path() if name == "all-MiniLM-L6-v2" else text.mpnet_path()
    weights = "f32" if backend.endswith("-f32") else "int8"  # INT8 matrices: the query default (OpenVINO only)
    enc = text.load(name, folder, 128, backend=backend.removesuffix("-f32"), weights=weights)
    if hasattr(enc, "warm"):
        enc.warm()
    for q in queries[:3]:
        enc.encode([q])
    times = []
    for q in queries:
        t = time.perf_counter()
        enc.encode([q])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    vectors = enc.encode(batch)
    batched = (time.perf_counter() - t) / len(batch)
    return {"single_query_p50_ms": float(np.median(times)) * 1000, "batched_ms_per_text": batched * 1000}, vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-mpnet-base-v2", choices=("all-mpnet-base-v2", "all-MiniLM-L6-v2"))
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--batch", type=int, default=600)
    ap.add_argument("--busy", action="store_true", help="Keep one core busy with another process meanwhile.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = course_captions(args.queries + args.batch)
    queries, batch = texts[: args.queries], texts[args.queries :]
    result: dict[str, Any] = {**banner(), "model": args.model, "busy_core": args.busy, "backends": {}}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        vectors = {}
        for backend in BACKENDS:
            result["backends"][backend], vectors[backend] = measure(args.model, backend, queries, batch)
    finally:
        if hog is not None:
            hog.kill()
    unit = {b: v / np.linalg.norm(v, axis=1, keepdims=True) for b, v in vectors.items()}
    ref = result["backends"]["numpy"]
    for backend, row in result["backends"].items():
        row["worst_cosine_vs_numpy"] = float(np.min(np.sum(unit[backend] * unit["numpy"], axis=1)))
        row["single_query_speedup_vs_numpy"] = ref["single_query_p50_ms"] / row["single_query_p50_ms"]
        print(f"{args.model} {backend:13s} one query {row['single_query_p50_ms']:6.1f} ms "
              f"({row['single_query_speedup_vs_numpy']:.2f}x numpy) | batched {row['batched_ms_per_text']:5.1f} ms/text"
              f" | worst cosine vs numpy {row['worst_cosine_vs_numpy']:.7f}{' | other core busy' if args.busy else ''}")
    result["command"] = "python benchmarks/bench_text.py --model %s%s" % (args.model, " --busy" * args.busy)
    write_json(RESULTS_DIR / f"bench_text_{args.model}{'_busy' if args.busy else ''}.json", result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
