"""Atomic file writes: write a temp file in the target's folder, then `os.replace` it into place.

Readers see the old file or the new one, never half of one; a crash (or an exception in the writer) leaves the
previous file untouched and removes the temp file. Folder swaps (index store, model folder, report) have their
own two-step rename because a folder cannot be replaced in one call.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text", "write_bytes"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, so format-by-extension writers work); on a clean exit it
    replaces `path`, on an exception it is deleted and `path` keeps its old content. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    """Atomically write `data` to `path`; returns the path. `durable` also fsyncs the file and its folder, so the
    new content survives a power cut once this returns (records a person typed in: operator decisions)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    if durable:
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, durable: bool = False) -> Path:
    """Atomically write UTF-8 `text` to `path`; returns the path."""
    return write_bytes(path, text.encode("utf-8"), durable)
