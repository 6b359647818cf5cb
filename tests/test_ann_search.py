"""index_store.ann.search: same results as index.search, thread count restored (small and large batches)."""
from __future__ import annotations

import numpy as np

from benchmarks.ann_data import synthetic_clustered, synthetic_queries
from index_store.ann import SINGLE_THREAD_MAX_QUERIES, build_ann, search


def test_search_matches_faiss_and_numpy_and_restores_threads() -> None:
    import faiss

    x, centres = synthetic_clustered(2000, dim=32, seed=3)
    index, _ = build_ann(x)
    before = faiss.omp_get_max_threads()
    for n_q in (1, SINGLE_THREAD_MAX_QUERIES + 5):
        q = synthetic_queries(centres, n_q, seed=4)
        scores, ids = search(index, q, 10)
        ref_ids = np.argsort(-(q @ x.T), axis=1)[:, :10]
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ref_ids, 1), atol=1e-5)
        assert faiss.omp_get_max_threads() == before
