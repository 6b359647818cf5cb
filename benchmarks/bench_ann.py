"""ANN choice benchmark: recall@10 vs exact, per-query latency and bytes/image for the index types considered.

Usage: python benchmarks/bench_ann.py [--n 200000] [--dim 256]  -> prints and writes benchmarks/results/ann.json.
Vectors: ann_data.synthetic_clustered (anisotropic, Zipf clusters); queries: synthetic_queries (text-like,
off-manifold). Latency is single-query (one thread, queries one by one), median over queries after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from ann_data import synthetic_clustered, synthetic_queries
from index_store.ann import build_ann


def _latency_ms(index, queries: np.ndarray, k: int = 10) -> float:
    index.search(queries[:20], k)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _recall(index, queries, ref, k=10) -> float:
    _, got = index.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) for a, b in zip(got, ref)]) / k)


def _bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ann.json"))
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()} cpus={faiss.omp_get_max_threads()} faiss={faiss.__version__}")
    x, centres = synthetic_clustered(args.n, args.dim)
    q = synthetic_queries(centres, args.queries)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    sims, ref = exact.search(q, 10)
    out: dict = {"n": args.n, "dim": args.dim, "query_top1_cos": float(sims[:, 0].mean()), "results": []}
    faiss.omp_set_num_threads(1)
    out["results"].append({"index": "flat", "recall@10": 1.0, "ms_per_query": _latency_ms(exact, q),
                           "bytes_per_image": _bytes(exact) / args.n})
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    hnsw, params = build_ann(x, flat_max=1)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    for ef in (64, 128, 256, 512):
        hnsw.hnsw.efSearch = ef
        out["results"].append({"index": "hnsw_sq8", **params, "efSearch": ef, "build_s": build_s,
                               "recall@10": _recall(hnsw, q, ref), "ms_per_query": _latency_ms(hnsw, q),
                               "bytes_per_image": _bytes(hnsw) / args.n})
    for row in out["results"]:
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
