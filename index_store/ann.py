"""Choose and build the FAISS index over L2-normalised vectors (metric "ip" = cosine).

Choice:
- n < `flat_max` (default 50,000): `IndexFlatIP`, exact. 50k x 256-d brute force is a few ms per query, and
  exact is what the tests compare against. Bytes/image = 4*d (1 KB at d=256).
- n >= flat_max: `IndexHNSWSQ` (HNSW graph, M=32, efConstruction=80, over 8-bit scalar-quantised vectors,
  inner product), efSearch=768 at query time. Bytes/image ~ d (SQ8 code) + 2*M*4 (level-0 links) + ~5% upper
  levels = ~530 B at d=256: 1M images ~0.53 GB in RAM, plus `vectors.npy` memory-mapped (only rows read for
  reranking are paged in), far under 4 GB. IVF-SQ8 (nlist=4*sqrt(n)) was measured too and rejected: on
  text-like (off-manifold) queries it needed nprobe > nlist/14 for recall@10 0.93, i.e. nearly brute force.

How recall was measured (`python benchmarks/bench_ann.py`, numbers in benchmarks/results/ann.json): vectors are
NOT iid Gaussian (on which every ANN looks bad and nothing is learned) but `synthetic_clustered`: an anisotropic
(power-law spectrum) space with Zipf-sized clusters, points at cosine ~0.6 to their centre, like CNN/text
embeddings after projection. Queries are held-out, noisier cluster draws (nearest cosine ~0.4, like a text query
vs images, the hard case for IVF since neighbours spread over more cells). recall@10 = |ANN top10 ∩ exact
top10| / 10 averaged over 500 queries, exact = IndexFlatIP on the same float32 vectors.
Result at n=200k, d=256 (2 shared cores, load ~10): flat 41 ms/query, 1024 B/img; HNSW-SQ8 efSearch 64/128/256/512
-> recall@10 0.908/0.941/0.959/0.971 at 0.28/0.62/0.89/2.0 ms/query (one thread), 528 B/img, build 329 s.
At n=1M with the real model's projected course vectors + a Gaussian mixture fitted to them and real caption queries
(`python benchmarks/bench_query.py --n 1000000`): efSearch 128/256/512 -> recall@10 0.919/0.938/0.953 at
0.87/1.47/2.6 ms vs exact flat 77 ms with the session-2 model. With the current default model's vectors the same
sweep gave 0.908/0.937/0.949 and 768/1024 -> 0.957/0.959 at 2.97/4.32 ms vs exact 80 ms, so efSearch=768: the
smallest setting >= 0.95 with a margin, still ~27x faster than exact. The saturation is SQ8 blurring near-ties;
the reranker re-scores the candidates with the float32 vectors (98% of the exact top-10 among its 50 candidates).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Below this many vectors the index is exact (IndexFlatIP).
FLAT_MAX = 50_000
#: HNSW graph degree, build and search beam widths (efSearch=768: recall@10 0.957 at 1M, see above).
HNSW_PARAMS = {"M": 32, "efConstruction": 80, "efSearch": 768}
#: Points used to fit the 8-bit quantiser's per-dimension ranges.
SQ_TRAIN_POINTS = 100_000


def build_ann(
    vectors: FloatArray, metric: str = "ip", flat_max: int = FLAT_MAX, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """(faiss index holding all rows, id i = row i; params for the manifest incl. "index_type")."""
    import faiss

    if metric != "ip":
        raise ValueError(f"metric {metric!r} is not supported; the index stores L2-normalised vectors, use 'ip'")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, dim), got shape {x.shape}")
    n, dim = x.shape
    if n < flat_max:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index, {"index_type": "flat", "flat_max": flat_max}
    params = dict(HNSW_PARAMS)
    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["efConstruction"]
    rng = np.random.default_rng(seed)
    n_train = min(n, SQ_TRAIN_POINTS)
    index.train(x if n_train == n else x[np.sort(rng.choice(n, n_train, replace=False))])
    index.add(x)
    index.hnsw.efSearch = params["efSearch"]
    return index, {"index_type": "hnsw_sq8", "flat_max": flat_max, **params}


def apply_search_params(index: Any, params: dict[str, Any]) -> Any:
    """Restore query-time knobs (efSearch / nprobe) from the manifest after `faiss.read_index`."""
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params and hasattr(index, "nprobe"):
        index.nprobe = int(params["nprobe"])
    return index


#: Query batches up to this size are searched on one OpenMP thread (see `search`).
SINGLE_THREAD_MAX_QUERIES = 8


def search(index: Any, queries: FloatArray, k: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """`index.search`, on one OpenMP thread for small batches.

    One query is a few hundred microseconds of work: waking a second OpenMP thread costs more than it saves, and
    on a busy 2-core machine the spinning thread waits for a core (measured with benchmarks/bench_query.py: flat
    10k x 256, 0.45 ms on 1 thread vs 40 ms on 2 under load). Large batches keep all threads. The thread count is
    process-wide, so it is restored afterwards.
    """
    import faiss

    if len(queries) > SINGLE_THREAD_MAX_QUERIES:
        return index.search(queries, k)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(before)


def recall_at_k(ann: Any, exact: Any, queries: FloatArray, k: int = 10) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over the queries."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, got = ann.search(q, k)
    _, ref = exact.search(q, k)
    hits = [len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) for a, b in zip(got, ref)]
    return float(np.mean(hits) / k) if hits else 1.0


def synthetic_clustered(
    n: int, dim: int = 256, n_clusters: int | None = None, seed: int = 0, spread: float = 0.6
) -> tuple[FloatArray, FloatArray]:
    """(n, dim) L2-normalised clustered vectors + the cluster centres, built batch-wise (1M x 256 is fine).

    Anisotropic: a random basis with power-law singular values (like real embeddings); Zipf cluster sizes;
    `spread` ~ cosine of a point to its centre.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, n // 200)
    scales = (1.0 / np.arange(1, dim + 1) ** 0.5).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32) * scales[None, :]
    centres = _unit(rng.standard_normal((n_clusters, dim)).astype(np.float32) @ basis.T)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    noise_scale = math.sqrt(1.0 / spread**2 - 1.0)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        lab = labels[start : start + 100_000]
        noise = _unit(rng.standard_normal((len(lab), dim)).astype(np.float32) @ basis.T)
        out[start : start + len(lab)] = _unit(centres[lab] + noise_scale * noise)
    return out, centres


def synthetic_queries(centres: FloatArray, n: int, seed: int = 1, spread: float = 0.45) -> FloatArray:
    """Noisier draws around random centres (a text query is farther from its images than images are)."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    lab = rng.integers(0, len(centres), n)
    noise = _unit(rng.standard_normal((n, dim)).astype(np.float32))
    return _unit(centres[lab] + math.sqrt(1.0 / spread**2 - 1.0) * noise)


def _unit(x: FloatArray) -> FloatArray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
