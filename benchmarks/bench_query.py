"""Query latency / recall / memory at index size N, end to end through the public API.

    python benchmarks/bench_query.py --n 1000000 [--queries 200] [--json] [--model DIR] [--reuse] [--by-example]

Index: the course images embedded with the model's image encoder (`retrieval.learn.features.course_embeddings`) and
projected with `model.project_images`, plus N - 1000 synthetic vectors drawn from a Gaussian mixture fitted to
those projected vectors (spherical k-means clusters, per-cluster covariance shrunk towards the global one,
samples re-normalised; NOT iid noise: see `synthetic_check` in the output for how close the fit is). It is built
with the build-index code path (`index_store.build_ann` + `IndexStore.write` / `IndexStore.load`).
Queries: real course captions, one at a time through `Retriever(text_encoder, model, store).search` (text
encoding + projection + ANN + rerank + metadata). Reference in the same run: exact `IndexFlatIP` over the same
vectors (`exact_p50_ms`, and the ground truth of `recall_at_10`). Warm-up queries are dropped; medians.
Writes benchmarks/results/bench_query_<n>.json; with --json the last stdout line is that JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS_DIR, banner, ensure_repo_on_path, folder_bytes, median_ms, pct_ms, rss_bytes, write_json

ensure_repo_on_path()

WARMUP = 10
REAL_PREFIX = "train_images/"


# ----------------------------------------------------------------------------------------- synthetic vectors
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def spherical_kmeans(z: np.ndarray, k: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """Cluster labels of unit rows by cosine (k-means++ seeding)."""
    rng = np.random.default_rng(seed)
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d = 1.0 - np.max(z @ np.array(centres).T, axis=1)
        centres.append(z[rng.choice(len(z), p=np.maximum(d, 0) / max(d.sum(), 1e-12))])
    c = np.array(centres)
    for _ in range(iters):
        labels = np.argmax(z @ c.T, axis=1)
        c = _unit(np.array([z[labels == j].sum(0) if np.any(labels == j) else c[j] for j in range(k)]))
    return np.argmax(z @ c.T, axis=1)


def fit_mixture(z: np.ndarray, k: int = 64, shrink: float = 16.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian mixture of the real projected vectors: weights, means, Cholesky factors of the covariances.

    Each cluster covariance S_c (n_c members) is shrunk as (n_c S_c + shrink S_global) / (n_c + shrink): a
    15-point cluster cannot estimate a 256-d covariance alone. k=64, shrink=16 make the median cosine of a
    sample to its nearest real vector match real-to-real nearest neighbours (0.62 vs 0.63 on the course data).
    """
    z = np.asarray(z, np.float64)
    labels = spherical_kmeans(z.astype(np.float32), k, seed)
    glob = np.cov(z, rowvar=False)
    weights, means, chols = [], [], []
    for j in range(k):
        members = z[labels == j]
        if len(members) < 2:
            continue
        cov = (len(members) * np.cov(members, rowvar=False) + shrink * glob) / (len(members) + shrink)
        cov += 1e-9 * np.trace(cov) / len(cov) * np.eye(len(cov))
        weights.append(len(members))
        means.append(members.mean(0))
        chols.append(np.linalg.cholesky(cov))
    w = np.array(weights, np.float64)
    return {"weights": w / w.sum(), "means": np.array(means), "chols": np.array(chols)}


def sample_mixture(mix: dict[str, np.ndarray], n: int, seed: int = 1, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors drawn from the mixture (float32, generated in chunks to bound memory)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(mix["weights"]), size=n, p=mix["weights"])
    d = mix["means"].shape[1]
    out = np.empty((n, d), np.float32)
    means = mix["means"].astype(np.float32)
    chols = mix["chols"].astype(np.float32)
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        eps = rng.standard_normal((len(lab), d)).astype(np.float32)
        block = means[lab].copy()
        for j in np.unique(lab):
            rows = lab == j
            block[rows] += eps[rows] @ chols[j].T
        out[start : start + len(lab)] = _unit(block)
    return out


def synthetic_check(real: np.ndarray, synth: np.ndarray, queries: np.ndarray, m: int = 2000) -> dict[str, float]:
    """How real the synthetic vectors look: nearest-neighbour and query cosines, real vs synthetic."""
    s = synth[:m]
    rr = real @ real.T
    np.fill_diagonal(rr, -1)
    return {
        "real_nn_cos_median": float(np.median(rr.max(1))),
        "synth_to_real_nn_cos_median": float(np.median((s @ real.T).max(1))),
        "real_pairwise_cos_mean": float(rr[rr > -1].mean()),
        "synth_pairwise_cos_mean": float(np.mean(s[:500] @ s[:500].T)),
        "query_top1_cos_real_median": float(np.median((queries @ real.T).max(1))),
        "query_top1_cos_synth_same_count_median": float(np.median((queries @ s[: len(real)].T).max(1))),
    }


# ----------------------------------------------------------------------------------------- benchmark
def course_vectors(model: Any) -> tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(image names, raw image feats, projected image vectors, texts, raw text feats) of the course data."""
    from retrieval.config import course_data_dir
    from retrieval.learn.features import course_embeddings

    c = model.config
    emb = course_embeddings(course_data_dir(), c.image_encoder, c.text_encoder, tuple(c.image_views))
    return emb.image_names, emb.image_feats, model.project_images(emb.image_feats), emb.texts, emb.text_feats


def make_meta(names: list[str], n: int, child_prob: np.ndarray, classes: list[str] | None = None, seed: int = 0) -> Any:
    """Rows of the bench index. `classes`: the real images' semantic-bridge column; each synthetic row copies a
    random real row's (so the bridge's inverted lists are as long as a real library's of this size)."""
    import pandas as pd

    rel = [REAL_PREFIX + x for x in names] + [f"synthetic/{i:07d}.jpg" for i in range(n - len(names))]
    frame = pd.DataFrame({"rel_path": rel, "size": np.full(n, 120_000, np.int64),
                          "mtime_ns": np.full(n, 1_700_000_000_000_000_000, np.int64),
                          "sha256": [f"{i:064x}" for i in range(n)], "child_prob": child_prob})
    if classes is not None:
        pick = np.random.default_rng(seed).integers(0, len(classes), n - len(names))
        frame["classes"] = list(classes[: len(names)]) + [classes[i] for i in pick]
    return frame


def build_vectors(z_real: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    mix = fit_mixture(z_real, seed=seed)
    n_real = min(n, len(z_real))
    synth = sample_mixture(mix, n - n_real, seed=seed + 1) if n > n_real else np.zeros((0, z_real.shape[1]), np.float32)
    return np.concatenate([z_real[:n_real], synth]).astype(np.float32), mix


def single_query_ms(index: Any, q: np.ndarray, k: int, warmup: int = WARMUP) -> list[float]:
    times = []
    for i in range(len(q)):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def recall(got: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) for a, b in zip(got, ref)]) / k)


def by_example_latency(retriever: Any, names: list[str], n_queries: int) -> dict[str, Any]:
    """Searches by example on the same index, one at a time after warm-up: "more like this" (an indexed row's
    stored vector) and a search by photo (a course JPEG decoded, embedded by the index's image encoder, checked by
    the child detector), each with per-stage medians; the photo's stages show where its time goes."""
    from retrieval.index.imageio import load_image

    root = retriever.images_root
    rows = list(range(min(len(names), WARMUP + n_queries)))
    like, like_stages, photo, photo_stages = [], [], [], []
    for i in rows:
        t = time.perf_counter()
        retriever.search_by_example(like_row=i, k=10)
        if i >= WARMUP:
            like.append(time.perf_counter() - t)
            like_stages.append(dict(retriever.stats.stages))
    for i in rows:
        t = time.perf_counter()
        image = load_image(root / (REAL_PREFIX + names[i]))  # decoding is part of the query
        retriever.search_by_example([image], k=10)
        if i >= WARMUP:
            photo.append(time.perf_counter() - t)
            photo_stages.append(dict(retriever.stats.stages))

    def stage_p50(stages: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(float(np.median([s[key] for s in stages])), 2) for key in stages[0]} if stages else {}

    return {"queries": len(like), "more_like_this_p50_ms": median_ms(like), "more_like_this_stages_p50_ms": stage_p50(like_stages),
            "photo_p50_ms": median_ms(photo), "photo_stages_p50_ms": stage_p50(photo_stages)}


def run(n: int, n_queries: int, model_dir: Path | None, index_dir: Path | None, seed: int, reuse: bool,
        faiss_threads: int, by_example: bool = False) -> dict[str, Any]:
    import faiss

    from index_store import IndexStore, build_ann
    from retrieval.learn.model import index_identity, load_model
    from retrieval.config import cache_dir, course_data_dir
    from retrieval.encoders import build_text_encoder
    from retrieval.search import Retriever, candidate_count

    out: dict[str, Any] = banner({"n": n, "seed": seed})
    model = load_model(model_dir)
    names, img_feats, z_real, texts, text_feats = course_vectors(model)
    dim = int(z_real.shape[1])
    index_dir = Path(index_dir or cache_dir() / "bench" / f"query_{n}")
    identity = index_identity(model)
    rng = np.random.default_rng(seed)
    q_rows = rng.choice(len(texts), size=min(n_queries + WARMUP, len(texts)), replace=False)
    q_texts = [texts[i] for i in q_rows]
    q_z = model.project_texts(text_feats[q_rows])

    reused = False
    if reuse and IndexStore.exists(index_dir):
        try:
            IndexStore.load(index_dir, expect=identity)
            reused = True
        except Exception:  # noqa: BLE001 - a stale bench index is simply rebuilt
            reused = False
    if reused:
        x = np.load(index_dir / "vectors.npy")
        if len(x) != n:
            reused = False
    if not reused:
        t = time.perf_counter()
        x, mix = build_vectors(z_real, n, seed)
        out["generate_s"] = time.perf_counter() - t
        out["mixture_components"] = int(len(mix["weights"]))
        faiss.omp_set_num_threads(max(1, (faiss.omp_get_max_threads())))
        t = time.perf_counter()
        index, params = build_ann(x)
        out["build_s"] = time.perf_counter() - t
        if model.detector is not None:  # the detector's verdict as if no face were found (rows have no pixels)
            n_img = len(img_feats)
            det = model.detector
            child = det.fuse(det.image_features(img_feats, [[]] * n_img, [np.zeros(0)] * n_img, [(1, 1)] * n_img))
        else:
            child = np.full(len(names), np.nan)
        child_prob = np.concatenate([child[: min(n, len(names))], np.zeros(max(0, n - len(names)))])
        from retrieval.learn.bridge import image_classifier

        classify = image_classifier(model.bridge, model.config.image_encoder)
        meta = make_meta(names[: min(n, len(names))], n, child_prob,
                         classify(img_feats) if classify is not None else None, seed)
        t = time.perf_counter()
        fields = {**identity, "images_root": str(course_data_dir())}
        IndexStore.write(index_dir, x, meta, fields, index=index, index_params=params)
        out["write_s"] = time.perf_counter() - t
        del index, meta
        gc.collect()
    out["reused_index"] = reused
    out["index_dir"] = str(index_dir)
    out["synthetic_check"] = synthetic_check(z_real, x[len(names):], q_z) if n > len(names) else {}

    # --- load through the public path, measure memory of the loaded index --------------------------------
    rss0, _ = rss_bytes()
    t = time.perf_counter()
    store = IndexStore.load(index_dir, expect=identity)
    rss_store, _ = rss_bytes()
    text_encoder = build_text_encoder(model.config.text_encoder)
    retriever = Retriever(text_encoder, model, store)
    out["load_s"] = time.perf_counter() - t
    out["model_id"] = model.config.model_id
    out["text_encoder"] = f"{model.config.text_encoder} ({type(text_encoder).__name__})"
    out["index_type"] = store.manifest.index_type
    out["index_params"] = store.manifest.index_params
    out["n"], out["dim"] = int(store.count), dim

    # --- end to end ----------------------------------------------------------------------------------------
    faiss.omp_set_num_threads(faiss_threads)
    out["faiss_threads"] = faiss_threads
    k = 10
    n_cand = candidate_count(k, store.count)
    e2e, cpu, stages = [], [], []
    for i, text in enumerate(q_texts):
        c, t = time.process_time(), time.perf_counter()
        retriever.search(text, k=k)
        if i >= WARMUP:
            e2e.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            stages.append(dict(retriever.stats.stages))
    rss1, peak = rss_bytes()
    if by_example:
        out["by_example"] = by_example_latency(retriever, names, n_queries=min(30, n_queries))
    out.update(p50_ms=median_ms(e2e), p90_ms=pct_ms(e2e, 90), p99_ms=pct_ms(e2e, 99), queries=len(e2e))
    #: process CPU time per query (all threads): what the wall time would be on an idle machine when one thread works
    out["cpu_p50_ms"] = median_ms(cpu)
    out["stages_p50_ms"] = {key: float(np.median([s[key] for s in stages])) for key in stages[0]} if stages else {}

    # --- ANN vs exact on the same vectors, same queries ---------------------------------------------------
    ann = store.index
    out["ann_p50_ms"] = median_ms(single_query_ms(ann, q_z, n_cand))
    _, got = ann.search(q_z, n_cand)
    exact = faiss.IndexFlatIP(dim)
    exact.add(np.ascontiguousarray(x, np.float32))
    out["exact_p50_ms"] = median_ms(single_query_ms(exact, q_z, n_cand))
    _, ref = exact.search(q_z, n_cand)
    out["recall_at_10"] = recall(got, ref, 10)
    #: share of the exact top-10 that reaches the reranker (it sees the n_cand ANN candidates and re-scores them
    #: with the stored float32 vectors, so this is the recall after refinement; SQ8 distances alone blur near-ties)
    out["candidate_recall_at_10"] = float(np.mean([len(set(a.tolist()) & set(b[:10].tolist())) for a, b in zip(got, ref)]) / 10)
    out["candidates"] = n_cand
    out["ann_speedup_vs_exact"] = out["exact_p50_ms"] / out["ann_p50_ms"]
    faiss.omp_set_num_threads(2)
    out["ann_p50_ms_2threads"] = median_ms(single_query_ms(ann, q_z, n_cand))
    out["exact_p50_ms_2threads"] = median_ms(single_query_ms(exact, q_z, n_cand))
    faiss.omp_set_num_threads(faiss_threads)
    if hasattr(ann, "hnsw"):
        out["ef_sweep"] = ef_sweep(ann, q_z, ref, n_cand, int(store.manifest.index_params.get("efSearch", 0)))
    elif hasattr(ann, "nprobe"):
        out["nprobe_sweep"] = nprobe_sweep(ann, q_z, ref, n_cand)
    del exact
    gc.collect()
    # --- growing the graph: what build-index does when a large index only gains images (indexer._appendable) ---
    if hasattr(ann, "hnsw"):
        rng = np.random.default_rng(seed + 1)
        extra = np.asarray(x[rng.choice(len(x), APPEND_N, replace=False)], np.float32)
        extra = extra + rng.normal(0.0, 0.02, extra.shape).astype(np.float32)
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
        t = time.perf_counter()
        ann.add(extra)
        out["append_s"] = time.perf_counter() - t
        out["append_n"] = APPEND_N
        if "build_s" in out:
            out["build_vs_append"] = out["build_s"] / out["append_s"]

    # --- memory ----------------------------------------------------------------------------------------------
    files = folder_bytes(index_dir)
    out["memory"] = {
        "rss_after_queries_mb": rss1 / 2**20, "rss_peak_mb": peak / 2**20,
        "rss_added_by_index_load_mb": (rss_store - rss0) / 2**20,
        "rss_added_by_encoder_and_queries_mb": (rss1 - rss_store) / 2**20,
        "bytes_per_image_ram": (rss_store - rss0) / n, "bytes_per_image_disk": sum(files.values()) / n,
        "faiss_bytes_per_image": files.get("index.faiss", 0) / n, "files_bytes": files,
    }
    return out


#: Vectors added to the loaded HNSW graph to time an incremental build (perturbed copies of indexed vectors).
APPEND_N = 1000


def ef_sweep(index: Any, q: np.ndarray, ref: np.ndarray, n_cand: int, default_ef: int) -> list[dict[str, float]]:
    from index_store.ann import HNSW_PARAMS

    rows = []
    for ef in (32, 64, 128, 256, 512, 768, 1024):
        index.hnsw.efSearch = max(ef, n_cand)
        _, got = index.search(q, n_cand)
        rows.append({"efSearch": index.hnsw.efSearch, "recall_at_10": recall(got, ref),
                     "ann_p50_ms": median_ms(single_query_ms(index, q, n_cand))})
    index.hnsw.efSearch = default_ef or HNSW_PARAMS["efSearch"]
    return rows


def nprobe_sweep(index: Any, q: np.ndarray, ref: np.ndarray, n_cand: int) -> list[dict[str, float]]:
    rows, default = [], index.nprobe
    for nprobe in (4, 8, 16, 32, 64):
        index.nprobe = nprobe
        _, got = index.search(q, n_cand)
        rows.append({"nprobe": nprobe, "recall_at_10": recall(got, ref),
                     "ann_p50_ms": median_ms(single_query_ms(index, q, n_cand))})
    index.nprobe = default
    return rows


def summary_line(r: dict[str, Any]) -> str:
    s = r.get("stages_p50_ms", {})
    return (f"n={r['n']:,} dim={r['dim']} {r['index_type']}: e2e p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms "
            f"[encode {s.get('encode_ms', math.nan):.1f} project {s.get('project_ms', math.nan):.2f} "
            f"ann {s.get('ann_ms', math.nan):.2f} rerank {s.get('rerank_ms', math.nan):.2f}] CPU p50 "
            f"{r['cpu_p50_ms']:.1f} ms | ANN {r['ann_p50_ms']:.2f} ms "
            f"vs exact {r['exact_p50_ms']:.2f} ms ({r['ann_speedup_vs_exact']:.1f}x) recall@10 {r['recall_at_10']:.3f} "
            f"| {r['memory']['bytes_per_image_disk']:.0f} B/image on disk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="Index size (course images + synthetic vectors).")
    ap.add_argument("--queries", type=int, default=200, help="Timed queries (after %d warm-up ones)." % WARMUP)
    ap.add_argument("--model", type=Path, default=None, help="Model folder (default: the shipped model).")
    ap.add_argument("--index-dir", type=Path, default=None, help="Where to build the index (default: cache/bench).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads for single-query search.")
    ap.add_argument("--reuse", action="store_true", help="Reuse an existing bench index of the same size/model.")
    ap.add_argument("--delete", action="store_true", help="Delete the index folder afterwards.")
    ap.add_argument("--by-example", action="store_true",
                    help="Also time 'more like this' and search by photo on the same index (issue #14's target).")
    ap.add_argument("--json", action="store_true", help="Print the result JSON as the last stdout line.")
    ap.add_argument("--out", type=Path, default=None, help="Result file (default results/bench_query_<n>.json).")
    args = ap.parse_args()
    result = run(args.n, args.queries, args.model, args.index_dir, args.seed, args.reuse, args.faiss_threads,
                 args.by_example)
    if args.by_example:
        ex = result["by_example"]
        ex["more_like_this_over_text"] = round(ex["more_like_this_p50_ms"] / result["p50_ms"], 2)
        ex["photo_over_text"] = round(ex["photo_p50_ms"] / result["p50_ms"], 2)
    result["command"] = "python benchmarks/bench_query.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("n", args.n), ("queries", args.queries))) + (
        " --by-example" if args.by_example else "")
    path = write_json(args.out or RESULTS_DIR / f"bench_query_{args.n}.json", result)
    if args.delete:
        from retrieval.config import cache_dir

        shutil.rmtree(args.index_dir or cache_dir() / "bench" / f"query_{args.n}", ignore_errors=True)
    print(summary_line(result))
    print(f"# wrote {path}")
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
