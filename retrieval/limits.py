"""The limits every entry point shares (CLI, server, library): one value each, read from here."""
from __future__ import annotations

from index_store.ann import SINGLE_THREAD_MAX_QUERIES

#: `SINGLE_THREAD_MAX_QUERIES` (query batches searched and reranked on one thread) is owned by index_store.ann.
__all__ = ["MAX_QUERY_CHARS", "MAX_K", "SINGLE_THREAD_MAX_QUERIES", "SINGLE_THREAD_MAX_TEXTS", "MAX_UPLOAD_BYTES",
           "MAX_UPLOAD_REQUEST_BYTES", "UPLOADS_PER_MINUTE"]

#: Queries longer than this many characters are refused (a pasted document is not a query).
MAX_QUERY_CHARS = 1000
#: Most hits one HTTP request may ask for (`k`) and most images one review-queue page lists.
MAX_K = 100
#: Texts per call up to which the numpy text backend runs BLAS on one thread when the machine is busy: a single
#: query is a few skinny matmuls (one mpnet query on 2 cores: idle, 2 threads 62-70 ms vs 1 thread 95-104 ms; with
#: the other core busy, 2 threads 222 ms vs 1 thread 89 ms).
SINGLE_THREAD_MAX_TEXTS = 4
#: Largest photo one search-by-photo request may upload, and how many such uploads one client may send per minute.
MAX_UPLOAD_BYTES = 20 * 2**20
#: The whole request of such an upload: the photo plus headroom for the multipart framing and the small fields.
MAX_UPLOAD_REQUEST_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
UPLOADS_PER_MINUTE = 30
