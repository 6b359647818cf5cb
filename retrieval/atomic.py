"""Atomic file writes: write a temp file in the target's folder, then `os.replace` it into place.

Readers see the old file or the new one, never half of one; a crash (or an exception in the writer) leaves the
previous file untouched and removes the temp file. Folders (model folder, report) are replaced whole with
`atomic_folder`, on the index store's swap (`index_store.atomic`: one exchange syscall on Linux).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_folder", "write_text", "write_bytes"]


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


@contextmanager
def atomic_folder(path: str | os.PathLike[str], mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on a clean exit its files are fsynced and it replaces `path`
    whole (readers see the old folder or the new one); on an exception it is deleted and `path` is untouched."""
    import shutil

    from index_store.atomic import clean_stale, fsync_dir, fsync_file, swap_in, temp_sibling

    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path, complete=None)
    tmp = temp_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.chmod(tmp, mode)
        for child in tmp.rglob("*"):
            if child.is_file():
                os.chmod(child, 0o644)
                fsync_file(child)
        fsync_dir(tmp)
        swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
