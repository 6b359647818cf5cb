"""Index folders: FAISS index + row metadata + stored vectors + manifest, written atomically.

`IndexStore.write(folder, vectors, meta, manifest_fields)` / `IndexStore.load(folder, expect=...)`;
`build_ann` picks exact or IVF by size (see index_store.ann for the recall measurement).
"""
from __future__ import annotations

from index_store.ann import FLAT_MAX, build_ann, recall_at_k
from index_store.manifest import FORMAT_VERSION, IDENTITY_KEYS, Manifest
from index_store.store import META_COLUMNS, IndexStore, LoadedIndex

__all__ = ["FLAT_MAX", "FORMAT_VERSION", "IDENTITY_KEYS", "META_COLUMNS", "IndexStore", "LoadedIndex", "Manifest",
           "build_ann", "recall_at_k"]
