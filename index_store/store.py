"""Read and write an index folder atomically: a reader sees the old complete index or the new one, never a mix.

Folder layout (row i of every file is FAISS id i):
  index.faiss    the ANN index (see index_store.ann)
  meta.csv       rel_path, size, mtime_ns, sha256, child_prob (NaN = not scored) [+ caller's extra columns, e.g.
                 `detection`: the child detector's JSON (probability, face boxes, fusion features), `classes`: the
                 semantic bridge's top ImageNet classes]
  vectors.npy    (count, dim) float32/float16 L2-normalised vectors, memory-mapped on load (rerank / rebuild)
  manifest.json  format_version, count, dim, metric, index type + params, encoders, model_id, versions, dates
meta is CSV because pyarrow is not a dependency; it is written with surrogateescape so any file name round-trips.

Sidecar folders the caller names in `carry` (e.g. `reviews/`, the operator's decisions) are copied from the current
folder into the new one at the swap, under `IndexStore.lock` (a sibling `.<name>.lock` file, left in place: deleting
a lock file races with the next locker), so a rebuild never drops them.

Write protocol: everything goes to a sibling `.<name>.tmp-<pid>` folder, each file and the folder are fsynced,
then the folder is swapped in (`index_store.atomic.swap_in`); `load` falls back to the aside copy a non-Linux swap
leaves for a moment, and the next write restores or deletes leftovers of a crashed writer.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from index_store.ann import FLAT_MAX, apply_search_params, build_ann
from index_store.atomic import aside_copy, clean_stale, flush, fsync_dir, fsync_file, swap_in, temp_sibling
from index_store.manifest import MANIFEST_NAME, Manifest, check_expected, manifest_for
from index_store.errors import IndexNotFoundError, InvalidLocationError

INDEX_NAME = "index.faiss"
META_NAME = "meta.csv"
VECTORS_NAME = "vectors.npy"
META_COLUMNS = ("rel_path", "size", "mtime_ns", "sha256", "child_prob")
_META_DTYPES = {"rel_path": str, "size": "int64", "mtime_ns": "int64", "sha256": str, "child_prob": "float64",
                "detection": str, "classes": str}


@dataclass(frozen=True)
class LoadedIndex:
    folder: Path
    index: Any
    meta: pd.DataFrame
    vectors: npt.NDArray[Any]
    manifest: Manifest

    @property
    def count(self) -> int:
        return self.manifest.count

    def search(self, queries: npt.NDArray[Any], k: int, under: str | None = None
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(scores, row ids), each (n_queries, min(k, count)); ids index `meta` and `vectors` rows (-1 = none).
        `under`: only rows whose rel_path starts with this folder prefix (a filtered search: still k hits)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        k = min(int(k), self.count)
        if k <= 0 or not len(q):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        from index_store.ann import search, search_subset

        if under:
            return search_subset(self.index, self.vectors, q, k, rows_under(self.meta, under))
        return search(self.index, q, k)  # one OpenMP thread for small batches


def rows_under(meta: pd.DataFrame, under: str) -> npt.NDArray[np.int64]:
    """Row ids whose rel_path lies under the folder `under` ("2024/trip" matches "2024/trip/x.jpg", not "2024/tripod")."""
    prefix = under.strip("/") + "/"
    paths = meta["rel_path"].to_numpy(dtype=str)
    return np.flatnonzero(np.char.startswith(paths, prefix)).astype(np.int64)


def _missing(folder: Path) -> IndexNotFoundError:
    return IndexNotFoundError(f"no index at {str(folder)!r}; run `retrieve build-index IMAGES --index {folder}`")


class IndexStore:
    """Stateless reader/writer of index folders (see module docstring)."""

    @staticmethod
    def exists(folder: str | os.PathLike[str]) -> bool:
        folder = Path(folder)
        return (folder / MANIFEST_NAME).is_file() or aside_copy(folder) is not None

    @staticmethod
    def write(
        folder: str | os.PathLike[str],
        vectors: npt.NDArray[Any],
        meta: pd.DataFrame,
        manifest_fields: Mapping[str, Any],
        index: Any = None,
        index_params: Mapping[str, Any] | None = None,
        flat_max: int = FLAT_MAX,
        vector_dtype: str = "float32",
        carry: Sequence[str] = (),
    ) -> Manifest:
        """Write a complete index folder atomically; builds the ANN from `vectors` unless `index` is given.
        Entries named in `carry` are copied over from the folder being replaced (under the folder's lock)."""
        import faiss

        folder = _target(folder)
        vectors = np.asarray(vectors)
        _check_rows(vectors, meta, vector_dtype)
        metric = str(manifest_fields.get("metric", "ip"))
        if index is None:
            index, params = build_ann(vectors.astype(np.float32, copy=False), metric=metric, flat_max=flat_max)
        else:
            params = dict(index_params or {"index_type": type(index).__name__})
        if index.ntotal != len(vectors):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(vectors)} rows were given")

        manifest = manifest_for(manifest_fields, len(vectors), int(vectors.shape[1]), metric, params, vector_dtype)

        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)
        tmp = temp_sibling(folder)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            faiss.write_index(index, str(tmp / INDEX_NAME))
            fsync_file(tmp / INDEX_NAME)
            with open(tmp / VECTORS_NAME, "wb") as fh:
                np.save(fh, np.ascontiguousarray(vectors, dtype=vector_dtype))
                flush(fh)
            cols = list(META_COLUMNS) + [c for c in meta.columns if c not in META_COLUMNS]
            with open(tmp / META_NAME, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
                meta[cols].to_csv(fh, index=False)
                flush(fh)
            manifest.write(tmp)
            fsync_file(tmp / MANIFEST_NAME)
            with IndexStore.lock(folder):
                _carry_over(folder, tmp, carry)
                fsync_dir(tmp)
                swap_in(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    @staticmethod
    def lock(folder: str | os.PathLike[str], timeout: float = 60.0) -> Any:
        """An exclusive inter-process lock on the index folder (a sibling `.<name>.lock` file, so it survives the
        swap): taken by `write` for the swap and by every writer of a sidecar folder."""
        from filelock import FileLock

        folder = Path(folder).expanduser().resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=timeout)

    @staticmethod
    def load(
        folder: str | os.PathLike[str], expect: Mapping[str, Any] | None = None, mmap: bool = True
    ) -> LoadedIndex:
        """Load a folder written by `write`. Raises IndexNotFoundError, IndexVersionError, IdentityMismatchError."""
        import faiss

        folder = Path(folder)
        source = folder if (folder / MANIFEST_NAME).is_file() else aside_copy(folder)
        if source is None:
            raise _missing(folder)
        try:
            manifest = Manifest.read(source)
        except (OSError, ValueError) as exc:
            raise IndexNotFoundError(
                f"index at {str(folder)!r} has an unreadable manifest ({exc}); rebuild with "
                f"`retrieve build-index IMAGES --index {folder}`"
            ) from None
        check_expected(manifest, expect, folder)
        try:
            index = apply_search_params(faiss.read_index(str(source / INDEX_NAME)), manifest.index_params)
            vectors = np.load(source / VECTORS_NAME, mmap_mode="r" if (mmap and manifest.count) else None)
            meta = read_meta(source / META_NAME)
        except (OSError, ValueError, RuntimeError) as exc:
            raise IndexNotFoundError(
                f"index at {str(folder)!r} is incomplete or corrupt ({type(exc).__name__}); rebuild with "
                f"`retrieve build-index IMAGES --index {folder}`"
            ) from None
        sizes = {"manifest": manifest.count, "meta": len(meta), "vectors": len(vectors), "faiss": index.ntotal}
        if len(set(sizes.values())) != 1 or (vectors.ndim == 2 and vectors.shape[1] != manifest.dim):
            raise IndexNotFoundError(
                f"index at {str(folder)!r} is inconsistent (row counts {sizes}); rebuild with "
                f"`retrieve build-index IMAGES --index {folder}`"
            )
        return LoadedIndex(folder=folder, index=index, meta=meta, vectors=vectors, manifest=manifest)


@dataclass(frozen=True)
class FolderBackend:
    """`backend.IndexBackend` for one index folder (the default backend)."""

    folder: Path

    def exists(self) -> bool:
        return IndexStore.exists(self.folder)

    def load(self, expect: Mapping[str, Any] | None = None, mmap: bool = True) -> LoadedIndex:
        return IndexStore.load(self.folder, expect=expect, mmap=mmap)

    def write(self, vectors: npt.NDArray[Any], meta: pd.DataFrame, manifest_fields: Mapping[str, Any],
              index: Any = None, index_params: Mapping[str, Any] | None = None, flat_max: int | None = None,
              vector_dtype: str = "float32", carry: Sequence[str] = ()) -> Manifest:
        return IndexStore.write(self.folder, vectors, meta, manifest_fields, index=index, index_params=index_params,
                                flat_max=FLAT_MAX if flat_max is None else flat_max, vector_dtype=vector_dtype,
                                carry=carry)

    def lock(self, timeout: float = 60.0) -> Any:
        return IndexStore.lock(self.folder, timeout)

    def sidecar_root(self) -> Path:
        """Where sidecar folders (e.g. `reviews/`) live: inside the index folder, carried across writes."""
        return self.folder


def read_meta(path: Path) -> pd.DataFrame:
    """meta.csv with exact dtypes: names like "NA" or "123" stay strings; an empty child_prob is NaN."""
    return pd.read_csv(
        path,
        dtype=_META_DTYPES,
        keep_default_na=False,
        na_values={"child_prob": ["", "NaN", "nan"]},
        encoding="utf-8",
        encoding_errors="surrogateescape",
    )


def _check_rows(vectors: npt.NDArray[Any], meta: pd.DataFrame, vector_dtype: str) -> None:
    """ValueError naming what is wrong with rows the caller asked to write."""
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (count, dim), got shape {vectors.shape}")
    if len(meta) != len(vectors):
        raise ValueError(f"meta has {len(meta)} rows but vectors has {len(vectors)}; row i must be FAISS id i")
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"meta is missing columns {missing}; expected at least {list(META_COLUMNS)}")
    if meta["rel_path"].duplicated().any():
        raise ValueError(f"meta has duplicate rel_path values, e.g. {meta['rel_path'][meta['rel_path'].duplicated()].iloc[0]!r}")
    if vector_dtype not in ("float32", "float16"):
        raise ValueError(f"vector_dtype {vector_dtype!r} is not supported; use 'float32' or 'float16'")


def _carry_over(folder: Path, tmp: Path, names: Sequence[str]) -> None:
    """Copy each sidecar entry of the current folder into the new one (files fsynced)."""
    for name in names:
        src = folder / name
        if not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, tmp / name)
            for path in (tmp / name).rglob("*"):
                if path.is_file():
                    fsync_file(path)
            fsync_dir(tmp / name)
        else:
            shutil.copy2(src, tmp / name)
            fsync_file(tmp / name)


def _target(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder).expanduser().absolute()
    if path.is_symlink():
        path = path.resolve()
    if path.exists():
        if not path.is_dir():
            raise InvalidLocationError(f"--index {str(path)!r} is a file; pass a folder path for the index")
        if any(path.iterdir()) and not (path / MANIFEST_NAME).is_file():
            raise InvalidLocationError(
                f"--index {str(path)!r} is a non-empty folder without {MANIFEST_NAME}; pass a new or empty folder"
            )
    return path
