"""Image files -> encoder features: parallel read/hash/decode/preprocess, batched forward, on-disk cache.

Why threads by default: decoding (libjpeg/zlib) and PIL resizing release the GIL, and the forward pass in the main
thread runs torch's own intra-op threads, so a thread pool overlaps the two without pickling tensors between
processes. Measured on the shared 2-core box (load ~11), efficientnet-lite0, 160 course images, batch 32:
threads x2 6.4-9.3 img/s, forked processes x2 4.6-5.1 img/s, one thread 6.1 img/s. Decode+preprocess alone
(benchmarks/bench_decode.py) scales better with processes (x2.07 vs x1.51), but end to end the forward pass
dominates and worker processes compete with torch's threads. `backend="process"` remains available.

Why a cache keyed by (encoder id, encoder checksum, sha256 of the file bytes): a file is never embedded twice by
the same weights, whatever its name or folder, and a build killed half-way resumes where it stopped. Rows are
committed after every batch (SQLite WAL), so `kill -9` loses at most one batch of work.
"""
from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from retrieval.encoders.base import FloatArray, ImageEncoder
from retrieval.errors import ImageDecodeError
from retrieval.hashing import sha256_bytes
from retrieval.index.fs import FileEntry
from retrieval.index.imageio import DEFAULT_MAX_MEGAPIXELS, decode_image

#: Where the default cache lives inside retrieval.config.cache_dir().
CACHE_FILENAME = "embeddings.sqlite"


class EmbeddingCache:
    """SQLite table (encoder, encoder_sha, sha256) -> float32 feature vector. Safe across threads and processes.

    Each thread gets its own connection; WAL mode lets readers (decode workers) run while the main thread writes.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            from retrieval.config import cache_dir

            path = cache_dir() / CACHE_FILENAME
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS emb (encoder TEXT NOT NULL, encoder_sha TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " dim INTEGER NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (encoder, encoder_sha, sha256)) WITHOUT ROWID"
        )
        conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=60.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kill, not power loss
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get(self, encoder: ImageEncoder, sha256: str) -> FloatArray | None:
        row = self._conn().execute(
            "SELECT dim, vec FROM emb WHERE encoder=? AND encoder_sha=? AND sha256=?",
            (encoder.id, encoder.checksum(), sha256),
        ).fetchone()
        if row is None or row[0] != encoder.dim:
            return None
        return np.frombuffer(row[1], dtype=np.float32).copy()

    def put_many(self, encoder: ImageEncoder, shas: Sequence[str], feats: FloatArray) -> None:
        """Insert one batch and commit (the unit of work a kill can lose)."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        enc_id, enc_sha = encoder.id, encoder.checksum()
        conn = self._conn()
        conn.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?, ?, ?)",
            [(enc_id, enc_sha, s, feats.shape[1], feats[i].tobytes()) for i, s in enumerate(shas)],
        )
        conn.commit()

    def count(self, encoder: ImageEncoder | None = None) -> int:
        if encoder is None:
            return int(self._conn().execute("SELECT COUNT(*) FROM emb").fetchone()[0])
        return int(
            self._conn()
            .execute("SELECT COUNT(*) FROM emb WHERE encoder=? AND encoder_sha=?", (encoder.id, encoder.checksum()))
            .fetchone()[0]
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


@dataclass(frozen=True)
class EmbeddedBatch:
    """One step of the pipeline. `ids` index into the `files` passed in; failures are (rel_path, reason)."""

    ids: list[int]
    shas: list[str]
    feats: FloatArray
    failures: list[tuple[str, str]]
    n_cached: int


@dataclass(frozen=True)
class EmbedResult:
    ids: list[int]
    shas: list[str]
    feats: FloatArray
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0

    def __iter__(self) -> Iterator[Any]:  # unpacks as `ids, feats, failures = embed_files(...)`
        return iter((self.ids, self.feats, self.failures))


@dataclass(frozen=True)
class _Prepared:
    index: int
    sha: str | None = None
    item: Any = None
    cached: FloatArray | None = None
    error: str | None = None


def _prepare(
    index: int, entry: FileEntry, encoder: ImageEncoder, cache: EmbeddingCache | None, max_megapixels: float | None
) -> _Prepared:
    """Worker: read once, hash, cache lookup, then decode + preprocess only on a miss. Never raises."""
    try:
        data = entry.abs_path.read_bytes()
    except OSError as exc:
        return _Prepared(index, error=f"cannot read file ({exc.strerror or type(exc).__name__})")
    sha = sha256_bytes(data)
    if cache is not None:
        hit = cache.get(encoder, sha)
        if hit is not None:
            return _Prepared(index, sha=sha, cached=hit)
    try:
        image = decode_image(data, max_megapixels=max_megapixels)
        del data
        return _Prepared(index, sha=sha, item=encoder.preprocess(image))
    except ImageDecodeError as exc:
        return _Prepared(index, sha=sha, error=str(exc))
    except Exception as exc:  # a preprocess bug on one odd image must not stop a 1M-image build
        return _Prepared(index, sha=sha, error=f"preprocessing failed ({type(exc).__name__}: {exc})"[:160])


_WORKER: dict[str, Any] = {}


def _init_process_worker(encoder: ImageEncoder, cache_path: Path | None, max_megapixels: float | None) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    _WORKER.update(encoder=encoder, cache=EmbeddingCache(cache_path) if cache_path else None, mmp=max_megapixels)


def _prepare_in_process(index: int, entry: FileEntry) -> _Prepared:
    return _prepare(index, entry, _WORKER["encoder"], _WORKER["cache"], _WORKER["mmp"])


def _pool(backend: str, workers: int, encoder: ImageEncoder, cache: EmbeddingCache | None, mmp: float | None) -> Any:
    if backend == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    if backend == "process":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_process_worker,
                                   initargs=(encoder, cache.path if cache else None, mmp))
    raise ValueError(f"backend {backend!r} is not supported; use 'thread' or 'process'")


def iter_embedded(
    files: Sequence[FileEntry],
    encoder: ImageEncoder,
    workers: int | None = 2,
    batch_size: int = 32,
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    backend: str = "thread",
) -> Iterator[EmbeddedBatch]:
    """Stream features batch by batch, in input order (bounded memory: at most ~4 batches are in flight).

    backend "thread" (default) or "process" (forked workers: the encoder is inherited, not pickled per item).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = max(1, int(workers)) if workers else min(4, os.cpu_count() or 1)
    window = max(2 * batch_size, 4 * workers)
    bar = tqdm(total=len(files), unit="img", desc="embedding", file=sys.stderr, disable=not progress, leave=False)
    pending: deque[Future[_Prepared]] = deque()
    with _pool(backend, workers, encoder, cache, max_megapixels) as pool:
        todo = iter(enumerate(files))

        def refill() -> None:
            while len(pending) < window:
                nxt = next(todo, None)
                if nxt is None:
                    return
                if backend == "process":
                    pending.append(pool.submit(_prepare_in_process, nxt[0], nxt[1]))
                else:
                    pending.append(pool.submit(_prepare, nxt[0], nxt[1], encoder, cache, max_megapixels))

        refill()
        try:
            while pending:
                ready: list[_Prepared] = []
                while pending and len(ready) < batch_size:
                    ready.append(pending.popleft().result())
                    refill()
                yield _embed_ready(ready, files, encoder, cache)
                bar.update(len(ready))
        finally:
            for fut in pending:
                fut.cancel()
            bar.close()


def _embed_ready(
    ready: list[_Prepared], files: Sequence[FileEntry], encoder: ImageEncoder, cache: EmbeddingCache | None
) -> EmbeddedBatch:
    failures = [(files[p.index].rel_path, p.error) for p in ready if p.error is not None]
    fresh = [p for p in ready if p.error is None and p.cached is None]
    feats_by_index: dict[int, FloatArray] = {p.index: p.cached for p in ready if p.cached is not None}
    if fresh:
        feats = np.asarray(encoder.embed_batch([p.item for p in fresh]), dtype=np.float32)
        if feats.shape != (len(fresh), encoder.dim):
            raise ValueError(f"encoder {encoder.id!r} returned shape {feats.shape}, expected ({len(fresh)}, {encoder.dim})")
        if cache is not None:
            cache.put_many(encoder, [p.sha for p in fresh], feats)  # type: ignore[misc]
        feats_by_index.update({p.index: feats[i] for i, p in enumerate(fresh)})
    ok = [p for p in ready if p.index in feats_by_index]
    stacked = (
        np.stack([feats_by_index[p.index] for p in ok]).astype(np.float32, copy=False)
        if ok
        else np.zeros((0, encoder.dim), np.float32)
    )
    return EmbeddedBatch(
        ids=[p.index for p in ok],
        shas=[p.sha for p in ok],  # type: ignore[misc]
        feats=stacked,
        failures=failures,
        n_cached=len(ok) - len(fresh),
    )


def embed_files(
    files: Sequence[FileEntry],
    encoder: ImageEncoder,
    workers: int | None = 2,
    batch_size: int = 32,
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    backend: str = "thread",
) -> EmbedResult:
    """All features at once (n_ok, encoder.dim). Unpacks as `ids_ok, feats, failures`. See `iter_embedded`."""
    ids: list[int] = []
    shas: list[str] = []
    parts: list[FloatArray] = []
    failures: list[tuple[str, str]] = []
    n_cached = 0
    for batch in iter_embedded(files, encoder, workers, batch_size, max_megapixels, cache, progress, backend):
        ids += batch.ids
        shas += batch.shas
        parts.append(batch.feats)
        failures += batch.failures
        n_cached += batch.n_cached
    feats = np.concatenate(parts, axis=0) if parts else np.zeros((0, encoder.dim), np.float32)
    return EmbedResult(ids, shas, feats, failures, n_cached)
