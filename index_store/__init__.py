"""Index storage, independent of the application: FAISS index + row metadata + stored vectors + manifest, written
atomically (`store`); the interface a backend offers (`backend`: `IndexReader`, `IndexBackend`, `backend_for`);
`build_ann` picks exact (flat) or HNSW-SQ8 by size; its own errors (`errors`).

`IndexStore.write(folder, vectors, meta, manifest_fields)` / `IndexStore.load(folder, expect=...)`.
"""
from __future__ import annotations

import importlib
from typing import Any

#: name -> submodule; loaded on first use so `index_store.errors` (imported by every CLI start) stays cheap.
_EXPORTS = {
    "FLAT_MAX": "ann", "build_ann": "ann",
    "IndexBackend": "backend", "IndexReader": "backend", "backend_for": "backend",
    "FORMAT_VERSION": "manifest", "IDENTITY_KEYS": "manifest", "Manifest": "manifest",
    "META_COLUMNS": "store", "IndexStore": "store", "LoadedIndex": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'index_store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"index_store.{_EXPORTS[name]}"), name)
