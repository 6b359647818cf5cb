"""Deterministic, dependency-light encoders for fast tests and CLI end-to-end runs.

They are real functions of their input (colour layout for images, hashed bag of words for text), so search over
them behaves meaningfully: a red image is nearest to other red images; texts sharing words are close.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Sequence

import numpy as np

from retrieval.encoders.base import FloatArray

_WORD = re.compile(r"[a-z0-9]+")


class FakeImageEncoder:
    """4x4 grid of mean RGB plus a coarse hue histogram: dim = 48 + 16 = 64."""

    id = "fake-image"
    dim = 64

    def checksum(self) -> str:
        return hashlib.sha256(b"fake-image-v1").hexdigest()

    def preprocess(self, image: Any) -> np.ndarray:
        small = np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32) / 255.0
        hsv = np.asarray(image.convert("RGB").resize((32, 32)).convert("HSV"), dtype=np.float32)
        hist, _ = np.histogram(hsv[..., 0], bins=16, range=(0, 256))
        return np.concatenate([small.reshape(-1), hist.astype(np.float32) / hist.sum()]).astype(np.float32)

    def embed_batch(self, items: Sequence[Any]) -> FloatArray:
        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.asarray(it, dtype=np.float32) for it in items])


class FakeTextEncoder:
    """Signed feature hashing of lower-cased words into `dim` buckets."""

    id = "fake-text"
    max_tokens = 64

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def checksum(self) -> str:
        return hashlib.sha256(f"fake-text-v1-{self.dim}".encode()).hexdigest()

    def n_tokens(self, text: str) -> int:
        return len(_WORD.findall(text.lower()))

    def encode(self, texts: Sequence[str]) -> FloatArray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower())[: self.max_tokens]:
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return out
