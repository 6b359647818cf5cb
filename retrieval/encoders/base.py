"""Encoder interfaces. Real encoders (CNN, BERT family) and the fakes used in fast tests both satisfy them.

An image encoder is split in two so decoding/preprocessing can run in parallel workers while the forward pass
is batched: `preprocess(PIL image) -> item` (picklable, CPU) then `embed_batch([item, ...]) -> (n, dim)`.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@runtime_checkable
class ImageEncoder(Protocol):
    #: Stable id stored in model folders and index manifests, e.g. "efficientnet-lite0".
    id: str
    #: Output dimension of `embed_batch`.
    dim: int

    def checksum(self) -> str:
        """Hex digest identifying the weights (a different checkpoint must give a different value)."""
        ...

    def preprocess(self, image: Any) -> Any:
        """RGB PIL image -> one picklable item (e.g. a tensor of views). Runs in decode workers."""
        ...

    def embed_batch(self, items: Sequence[Any]) -> FloatArray:
        """Items from `preprocess` -> float32 (n, dim) features (pooled, averaged over views, not normalised)."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    id: str
    dim: int
    #: Longest input in tokens; longer texts are truncated (callers may warn using `n_tokens`).
    max_tokens: int

    def checksum(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Texts -> float32 (n, dim) mean-pooled sentence embeddings."""
        ...

    def n_tokens(self, text: str) -> int:
        """Token count before truncation (to tell the user a query was cut)."""
        ...
