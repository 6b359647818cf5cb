"""Decode + preprocess parallelism: serial vs thread pool vs process pool (what embed_pipeline's workers do).

Usage: python benchmarks/bench_decode.py [--images DIR] [--n 200] [--encoder efficientnet-lite0]
Prints images/s (median of 3 runs after a warm-up) and writes benchmarks/results/decode.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from retrieval.config import course_data_dir
from retrieval.encoders import build_image_encoder
from retrieval.index.imageio import load_image

_ENC = None


def _init(name: str) -> None:
    global _ENC
    _ENC = build_image_encoder(name)


def _work(path: str):
    return _ENC.preprocess(load_image(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(course_data_dir() / "train_images"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = ap.parse_args()
    paths = sorted(str(p) for p in Path(args.images).glob("*.jpg"))[: args.n]
    print(f"{platform.machine()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} images={len(paths)}")
    _init(args.encoder)
    results = {}

    def timed(fn) -> float:
        fn()  # warm-up
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return len(paths) / float(np.median(runs))

    results["serial"] = timed(lambda: [_work(p) for p in paths])
    with ThreadPoolExecutor(2) as pool:
        results["threads-2"] = timed(lambda: list(pool.map(_work, paths)))
    with mp.get_context("fork").Pool(2, initializer=_init, initargs=(args.encoder,)) as pool:
        results["processes-2"] = timed(lambda: pool.map(_work, paths, chunksize=8))
    for k, v in results.items():
        print(f"{k:12s} {v:7.1f} img/s  x{v / results['serial']:.2f} vs serial")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"encoder": args.encoder, "n": len(paths), "img_per_s": results,
                                          "load_avg": os.getloadavg()[0]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
