"""Content hashes: the one sha256 of a file (index rows, operator decisions, weights checksums, thumbnails)."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

__all__ = ["sha256_bytes", "sha256_file", "cached_sha256_file"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def cached_sha256_file(path: str) -> str:
    """`sha256_file` once per process per path: for weights files that do not change while we run."""
    return sha256_file(path)
