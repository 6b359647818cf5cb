"""Index storage, independent of the application: FAISS index + row metadata + stored vectors + manifest, written
atomically (`store`); the interface a backend offers (`backend`: `IndexReader`, `IndexBackend`, `backend_for`);
`build_ann` picks exact (flat) or HNSW-SQ8 by size; its own errors (`errors`).

`IndexStore.write(folder, vectors, meta, manifest_fields)` / `IndexStore.load(folder, expect=...)`.
"""
from __future__ import annotations

from index_store.ann import FLAT_MAX, build_ann
from index_store.backend import IndexBackend, IndexReader, backend_for
from index_store.manifest import FORMAT_VERSION, IDENTITY_KEYS, Manifest
from index_store.store import META_COLUMNS, IndexStore, LoadedIndex

__all__ = ["FLAT_MAX", "FORMAT_VERSION", "IDENTITY_KEYS", "META_COLUMNS", "IndexBackend", "IndexReader", "IndexStore",
           "LoadedIndex", "Manifest", "backend_for", "build_ann"]
