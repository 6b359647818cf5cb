"""The same index through each backend: FAISS folder, Milvus Lite (`x.db`) and, where it starts, a Milvus server.

    python benchmarks/bench_backends.py [--n 100000] [--queries 200] [--server] [--ray-images 500] [--json]

Vectors: the real projected course images + a Gaussian mixture fitted to them (`bench_query.build_vectors`, default
model); queries: real course captions through the model's text projection. Per backend: insert throughput
(`backend.write` of all rows), per-query search p50/p99 (top-10, one query at a time, after warm-up) and recall@10
against exact inner-product search on the same float32 vectors. `--server` also starts the embedded Milvus 2.3.5
server (PyPI `milvus`) in a private network namespace (`unshare -rn`, as the slow test does) and measures it there.
`--ray-images N`: `retrieve build-index` of the first N course images (`--model light`, fresh embedding caches, fresh
processes) in one process and with `--ray` (a local Ray on this machine's CPUs), wall times and their ratio.
Writes benchmarks/results/bench_backends_<n>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

WARMUP = 5


def vectors_and_queries(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from bench_query import build_vectors, course_vectors

    from retrieval.learn.model import load_model

    model = load_model(None)
    _names, _img, z_real, texts, text_feats = course_vectors(model)
    x, _ = build_vectors(z_real, n, seed)
    rows = np.random.default_rng(seed).choice(len(texts), size=n_queries + WARMUP, replace=False)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(model.project_texts(text_feats[rows]), np.float32)


def meta_for(n: int) -> Any:
    import pandas as pd

    return pd.DataFrame({"rel_path": [f"bench/{i:07d}.jpg" for i in range(n)], "size": np.zeros(n, np.int64),
                         "mtime_ns": np.zeros(n, np.int64), "sha256": [f"{i:064x}" for i in range(n)],
                         "child_prob": np.zeros(n), "detection": [""] * n})


def measure(location: str, x: np.ndarray, q: np.ndarray, exact_ids: np.ndarray) -> dict[str, Any]:
    from index_store import backend_for

    fields = {"model_id": "bench", "image_encoder": "bench", "images_root": "/bench"}
    backend = backend_for(location)
    t = time.perf_counter()
    backend.write(x, meta_for(len(x)), fields)
    insert_s = time.perf_counter() - t
    store = backend_for(location).load()
    names = store.meta["rel_path"].to_numpy()
    ms, got = [], []
    for i, row in enumerate(q):
        t = time.perf_counter()
        _, ids = store.search(row[None, :], 10)
        if i >= WARMUP:
            ms.append((time.perf_counter() - t) * 1e3)
            got.append([int(names[r][6:13]) if r >= 0 else -1 for r in ids[0]])
    recall = float(np.mean([len(set(a) & set(b.tolist())) / 10 for a, b in zip(got, exact_ids[WARMUP:])]))
    return {"location": location, "index_type": store.manifest.index_type, "insert_s": round(insert_s, 2),
            "insert_rows_per_s": round(len(x) / insert_s, 1), "search_p50_ms": round(float(np.median(ms)), 2),
            "search_p99_ms": round(float(np.percentile(ms, 99)), 2), "recall_at_10": round(recall, 4)}


SERVER_CHILD = """
import json, re, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import numpy as np
import milvus
from milvus import MilvusServer
work = Path(sys.argv[2])
data = np.load(work / "data.npz")
template = Path(milvus.__file__).parent / "data" / "config.yaml.template"
(work / "milvus.yaml").write_text(re.sub(r"(?m)^(\\s*)ip: # if not specify.*$", r"\\1ip: 127.0.0.1", template.read_text()))
server = MilvusServer(template=str(work / "milvus.yaml"))
server.set_base_dir(str(work / "milvus-data"))
server.start()
try:
    from bench_backends import measure
    print("RESULT " + json.dumps(measure(f"http://127.0.0.1:{server.listen_port}", data["x"], data["q"], data["exact"])))
finally:
    server.stop()
"""


def ray_vs_single(n_images: int) -> dict[str, Any]:
    import os

    from retrieval.config import course_data_dir

    src = course_data_dir() / "train_images"
    out: dict[str, Any] = {"images": n_images, "model": "light"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for name in sorted(os.listdir(src))[:n_images]:
            (folder / name).symlink_to(src / name)
        exe = [sys.executable, "-m", "retrieval.cli", "build-index", str(folder), "--model", "light", "--quiet"]
        for name, extra in (("single_process", []), ("ray_local", ["--ray"])):
            env = {**os.environ, "RETRIEVAL_CACHE_DIR": f"{tmp}/cache-{name}"}
            t = time.perf_counter()
            res = subprocess.run([*exe, "--index", f"{tmp}/{name}", *extra], env=env, capture_output=True, text=True)
            out[f"{name}_s"] = round(time.perf_counter() - t, 2)
            if res.returncode:
                out[f"{name}_error"] = res.stderr[-300:]
    out["ray_over_single"] = round(out["ray_local_s"] / out["single_process_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--server", action="store_true", help="also measure the embedded Milvus server")
    ap.add_argument("--ray-images", type=int, default=0, help="also time build-index with and without --ray")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import faiss

    info = banner({"benchmark": "index backends", "n": args.n, "queries": args.queries})
    x, q = vectors_and_queries(args.n, args.queries)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, exact_ids = exact.search(q, 10)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for loc in (f"{tmp}/folder", f"{tmp}/lite.db"):
            results.append(measure(loc, x, q, exact_ids))
            print(json.dumps(results[-1]), flush=True)
        if args.server:
            np.savez(Path(tmp) / "data.npz", x=x, q=q, exact=exact_ids)
            child = Path(tmp) / "child.py"
            child.write_text(SERVER_CHILD)
            repo = str(Path(__file__).resolve().parents[1])
            res = subprocess.run(["unshare", "-rn", "sh", "-c", f"ip link set lo up && exec {sys.executable} {child} "
                                  f"{repo} {tmp}"], capture_output=True, text=True, timeout=3600)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
            results.append(json.loads(line[7:]) if line else {"location": "server", "error": res.stderr[-500:]})
            print(json.dumps(results[-1]), flush=True)
    out = {**info, "results": results}
    if args.ray_images:
        out["ray"] = ray_vs_single(args.ray_images)
        print(json.dumps(out["ray"]), flush=True)
    path = write_json(RESULTS_DIR / f"bench_backends_{args.n}.json", out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
