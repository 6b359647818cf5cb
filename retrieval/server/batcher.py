"""Micro-batcher: concurrent HTTP queries become one `search_many` call, so the text encoder runs batched.

One worker thread owns the retriever's search path (so nothing in it needs to be thread-safe). Requests put a job on
a queue and await a future; the worker takes the first job, gathers whatever else arrives within a short window (up
to `max_batch`), groups jobs by (k, min_score, under) so every answer is exactly what a lone `search_many` call would give,
and resolves the futures. Image serving and validation never touch this thread, so they are not serialised.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from retrieval.errors import RetrievalError

SearchMany = Callable[..., Sequence[Any]]


class ServerBusyError(RetrievalError):
    """Too many queries waiting; the client should retry shortly (HTTP 503)."""


@dataclass(frozen=True)
class _Job:
    text: str
    k: int
    min_score: float
    future: Future = field(compare=False)
    under: str | None = None


@dataclass
class BatchStats:
    """Counters for the health endpoint and tests (mutated only by the worker thread)."""

    batches: int = 0
    queries: int = 0
    largest: int = 0


class SearchBatcher:
    """Groups concurrent queries into batched `search_many(texts, k=..., min_score=..., under=...)` calls.

    Args:
        search_many: the retriever's batched search.
        max_batch: most queries per `search_many` call.
        window_s: how long the worker waits for more queries after the first one arrives.
        max_pending: queue bound; beyond it `submit` raises ServerBusyError instead of growing without limit.
    """

    def __init__(self, search_many: SearchMany, max_batch: int = 32, window_s: float = 0.002,
                 max_pending: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._search_many = search_many
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="search-batcher", daemon=True)
        self._thread.start()

    # -- client side ----------------------------------------------------------------------------------------------
    def submit(self, text: str, k: int, min_score: float = 0.0, under: str | None = None) -> Future:
        """Queue one query (`under`: only that folder of the library); the future resolves to its RawResult (or
        raises the search error)."""
        with self._lock:
            if self._closed:
                raise ServerBusyError("the server is shutting down; retry against a running `retrieve serve`")
            if self._queue.qsize() >= self.max_pending:
                raise ServerBusyError(f"{self.max_pending} queries already waiting; retry in a moment")
            fut: Future = Future()
            self._queue.put(_Job(text, int(k), float(min_score), fut, under or None))
        return fut

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the jobs already queued; later `submit`s raise ServerBusyError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    # -- worker side ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        groups: dict[tuple[int, float, str | None], list[_Job]] = {}
        for job in live:
            groups.setdefault((job.k, job.min_score, job.under), []).append(job)
        for (k, min_score, under), group in groups.items():
            self.stats.batches += 1
            self.stats.queries += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
            try:
                results = list(self._search_many([j.text for j in group], k=k, min_score=min_score, under=under))
                if len(results) != len(group):
                    raise RuntimeError(f"search_many returned {len(results)} results for {len(group)} queries")
            except Exception as err:  # noqa: BLE001 -- re-run alone so one bad query fails only its own request
                if len(group) == 1:
                    group[0].future.set_exception(err)
                else:
                    self._one_by_one(group, k, min_score, under)
                continue
            for job, res in zip(group, results):
                job.future.set_result(res)

    def _one_by_one(self, group: list[_Job], k: int, min_score: float, under: str | None) -> None:
        for job in group:
            try:
                job.future.set_result(self._search_many([job.text], k=k, min_score=min_score, under=under)[0])
            except Exception as err:  # noqa: BLE001
                job.future.set_exception(err)
