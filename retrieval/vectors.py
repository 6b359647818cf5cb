"""The one L2 normaliser: every vector the engine compares by inner product goes through `l2n`."""
from __future__ import annotations

import numpy as np


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length along the last axis (zero rows stay zero); keeps the dtype."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
