"""Choose, build and search the FAISS index over L2-normalised vectors (metric "ip" = cosine).

- n < `flat_max` (default 50,000): `IndexFlatIP`, exact (50k x 256-d brute force is a few ms per query);
  4*d bytes per image.
- n >= flat_max: `IndexHNSWSQ` (HNSW graph, M=32, efConstruction=80, over 8-bit scalar-quantised vectors), searched
  with efSearch=768: the smallest setting with recall@10 >= 0.95 (with a margin) on the real model's vectors at 1M
  images, about 27x faster than exact; about 530 bytes per image at d=256 (1M images ~ 0.53 GB in RAM).
  The reranker re-scores the candidates with the float32 vectors, which absorbs SQ8's blur of near-ties.
Measured by `benchmarks/bench_ann.py` (synthetic clustered vectors) and `benchmarks/bench_query.py --n 1000000`
(real vectors and caption queries); the numbers are in benchmarks/results/.
"""
from __future__ import annotations

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


#: A filter keeping at most this many rows is searched exactly over them (cheaper and exact); above it, the ANN
#: searches with an id selector (FAISS `IDSelectorBatch`), so a filter never costs recall or k.
SUBSET_EXACT_MAX = 20_000


def search_subset(index: Any, vectors: Any, queries: FloatArray, k: int, rows: npt.NDArray[np.int64]
                  ) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Top-k among `rows` only: (scores, row ids), padded with -1 when fewer rows exist."""
    import faiss

    n_q = len(queries)
    scores = np.full((n_q, k), -np.inf, np.float32)
    ids = np.full((n_q, k), -1, np.int64)
    if not len(rows):
        return scores, ids
    if len(rows) <= SUBSET_EXACT_MAX:
        sims = queries @ np.asarray(vectors[rows], np.float32).T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        m = top.shape[1]
        scores[:, :m] = np.take_along_axis(sims, top, axis=1)
        ids[:, :m] = rows[top]
        return scores, ids
    selector = faiss.IDSelectorBatch(rows)
    params = (faiss.SearchParametersHNSW(sel=selector, efSearch=max(int(index.hnsw.efSearch), k))
              if hasattr(index, "hnsw") else faiss.SearchParameters(sel=selector))
    return index.search(queries, k, params=params)
