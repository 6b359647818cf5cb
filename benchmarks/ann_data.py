"""Synthetic vectors and recall for the ANN benchmarks and tests (not part of the engine).

Vectors are not iid Gaussian (on which every ANN looks bad and nothing is learned) but clustered in an anisotropic
space (power-law spectrum, Zipf-sized clusters, points at cosine ~0.6 to their centre), like CNN/text embeddings
after projection; queries are noisier draws (nearest cosine ~0.4, like a text query against images).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


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
