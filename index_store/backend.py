"""The seam a second index backend plugs into: what the application needs from an index, as two Protocols.

Two backends: a FAISS folder (`store.FolderBackend`, the default) and Milvus (`milvus.MilvusBackend`: Milvus Lite
for a `.db`, a server for an `http(s)://` URI); `backend_for(location)` picks one from what the user gave (`--index`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ContextManager, Mapping, Protocol, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from index_store.manifest import Manifest


class IndexReader(Protocol):
    """An opened index: row i of `meta` and `vectors` is id i of `search`."""

    folder: Path
    meta: pd.DataFrame
    vectors: Any  # (count, dim) row-indexable array of L2-normalised vectors
    manifest: Manifest

    @property
    def count(self) -> int: ...

    def search(self, queries: npt.NDArray[Any], k: int, under: str | None = None
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(scores, row ids), each (n_queries, min(k, count)); -1 = no row. `under`: only rows whose rel_path is
        inside that folder, filtered in the search itself (k hits when k such rows exist)."""
        ...


class IndexBackend(Protocol):
    """One index location (`backend_for`): create or replace the index there, open it; one writer at a time."""

    def exists(self) -> bool: ...

    def load(self, expect: Mapping[str, Any] | None = None, mmap: bool = True) -> IndexReader:
        """Raises IndexNotFoundError, IndexVersionError / IndexOutdatedError, IdentityMismatchError."""
        ...

    def write(self, vectors: npt.NDArray[Any], meta: pd.DataFrame, manifest_fields: Mapping[str, Any],
              index: Any = None, index_params: Mapping[str, Any] | None = None, flat_max: int | None = None,
              vector_dtype: str = "float32", carry: Sequence[str] = ()) -> Manifest:
        """Replace the whole index atomically; `carry` names sidecar entries that survive the replacement."""
        ...

    def lock(self, timeout: float = 60.0) -> ContextManager[Any]: ...

    def sidecar_root(self) -> Path:
        """A local folder for data kept beside the index (operator reviews)."""
        ...


def backend_for(location: str | os.PathLike[str]) -> IndexBackend:
    """The backend that serves `location`: `*.db` -> Milvus Lite, `http(s)://…` -> a Milvus server (both
    `index_store.milvus`, opened once per location in a process), any other path -> a FAISS folder."""
    from index_store.milvus import MilvusBackend, is_milvus_location, normalise_uri

    if is_milvus_location(location):
        uri = normalise_uri(location)
        if uri not in _MILVUS:
            _MILVUS[uri] = MilvusBackend(uri)
        return _MILVUS[uri]
    from index_store.store import FolderBackend

    return FolderBackend(Path(location))


#: One client per Milvus location and process (Milvus Lite allows one process per .db, and a reconnect costs).
_MILVUS: dict[str, Any] = {}
