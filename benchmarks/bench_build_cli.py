"""`retrieve build-index` end to end as a user runs it, float32 vs the default precision, both shipped models.

    python benchmarks/bench_build_cli.py [--n 200] [--naive-n 48] [--json]

Each run is a fresh process (`python -m retrieval.cli --precision P build-index DIR --index NEW --model M --quiet`):
start-up, decoding, every CNN pass, the child detector (MTCNN faces + crop encoder + heads) and the index write
are all in the wall time; the embedding cache is a fresh folder each run (prepared model weights are shared, as on a
user's machine after the first run). Input: the first --n course JPEGs (500x375). Reference in the same run: the
naive one-image-at-a-time EfficientNet-Lite0 loop (PIL open, preprocess, the published torch module, batch of 1),
the issue's yardstick. Runs alternate (fp32 / auto per model) so a busy neighbour does not land on one side only.
Writes benchmarks/results/bench_build_cli.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()


def naive_lite0(files: list[Path]) -> float:
    """Images/s of the naive loop (reference torch module, one image per forward)."""
    import torch
    from PIL import Image

    from retrieval.encoders.image import efficientnet_lite

    enc = efficientnet_lite("efficientnet-lite0", backend="reference")
    with torch.no_grad():
        enc.embed_batch([enc.preprocess(Image.open(files[0]).convert("RGB"))])
        t = time.perf_counter()
        for p in files:
            enc.embed_batch([enc.preprocess(Image.open(p).convert("RGB"))])
    return len(files) / (time.perf_counter() - t)


def build_once(images: Path, model: str, precision: str, cache: Path, shared: Path) -> float:
    """Wall seconds of one `retrieve build-index` into a new index with an empty embedding cache."""
    fresh = cache / f"{re.sub(r'[^A-Za-z0-9]+', '_', model)}-{precision}-{time.monotonic_ns()}"
    fresh.mkdir(parents=True)
    for sub in ("models", "text-encoders"):  # prepared weights, not embeddings
        if (shared / sub).is_dir():
            (fresh / sub).symlink_to(shared / sub)
    env = {**os.environ, "RETRIEVAL_CACHE_DIR": str(fresh), "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "retrieval.cli", "--precision", precision, "build-index", str(images),
           "--index", str(fresh / "idx"), "--model", model, "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    shutil.rmtree(fresh, ignore_errors=True)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--naive-n", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--reference", action="append", default=[], metavar="MODEL_DIR",
                    help="also build with this model folder (default precision), e.g. the previous default recipe: "
                         "git worktree add /tmp/old c5deb68~1 && --reference /tmp/old/retrieval/default_model")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from retrieval.config import cache_dir, course_data_dir
    from retrieval.encoders.precision import cpu_has_bf16

    info = banner({"benchmark": "retrieve build-index end to end"})
    files = sorted((course_data_dir() / "train_images").glob("*.jpg"))[: args.n]
    out: dict[str, Any] = {**info, "images": len(files), "cpu_has_bf16": cpu_has_bf16(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in files:
            shutil.copy(p, folder / p.name)
        out["naive_lite0_images_per_s"] = round(naive_lite0(files[: args.naive_n]), 2)
        walls: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for model in ("default", "light"):
                for precision in ("fp32", "auto"):
                    walls.setdefault(f"{model} {precision}", []).append(
                        build_once(folder, model, precision, Path(tmp) / "cache", cache_dir()))
            for ref in args.reference:
                walls.setdefault(f"reference {ref}", []).append(
                    build_once(folder, ref, "auto", Path(tmp) / "cache", cache_dir()))
    for key, w in walls.items():
        out["runs"][key] = {"wall_s": round(min(w), 2), "images_per_s": round(len(files) / min(w), 2)}
    for model in ("default", "light"):
        fp32, auto = out["runs"][f"{model} fp32"], out["runs"][f"{model} auto"]
        out[f"{model}_auto_over_fp32"] = round(auto["images_per_s"] / fp32["images_per_s"], 2)
        out[f"{model}_auto_over_naive"] = round(auto["images_per_s"] / out["naive_lite0_images_per_s"], 2)
    for ref in args.reference:
        out[f"default_over_reference {ref}"] = round(
            out["runs"]["default auto"]["images_per_s"] / out["runs"][f"reference {ref}"]["images_per_s"], 2)
    path = write_json(RESULTS_DIR / "bench_build_cli.json", out)
    print(json.dumps({k: v for k, v in out.items() if k not in info}, indent=1))
    print(f"wrote {path}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
