"""The seam a second index backend plugs into: what the application needs from an index, as two Protocols.

`IndexStore` (a FAISS folder, `index_store.store`) is the one backend today; `backend_for(location)` picks the
backend from the location the user gave (`--index`).
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

    def search(self, queries: npt.NDArray[Any], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(scores, row ids), each (n_queries, min(k, count)); -1 = no row."""
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


def backend_for(location: str | os.PathLike[str]) -> IndexBackend:
    """The backend that serves `location`: a folder path -> a FAISS folder (`store.FolderBackend`)."""
    from index_store.store import FolderBackend

    return FolderBackend(Path(location))
