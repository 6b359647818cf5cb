"""Milvus backend: the same index (rows, vectors, manifest) in a Milvus collection, for libraries beyond one machine.

Locations: `*.db` -> Milvus Lite (embedded, one process per .db); `http://` / `https://` -> a Milvus server or
cluster (token from $MILVUS_TOKEN, or `user:password@` in the URI). Schema of collection `images`: INT64 primary key =
a stable 63-bit hash of `rel_path` (so a write is an idempotent upsert: a build killed halfway and run again ends
in the same state), the projected vector (inner product), rel_path, size, mtime_ns, sha256, child_prob (NaN for
none), detection, classes (the semantic bridge's top ImageNet classes). The manifest (identity, format version) is stored as a collection property and checked on open
like the folder's manifest.json; it is written last, so a collection without it is an unfinished first build.
Index type: FLAT on Milvus Lite (it builds no real ANN; exact like the FAISS flat index), HNSW (M 32,
efConstruction 80, ef 768 at search) on a server. Reads that must see the last write are
`consistency_level="Strong"`; searches are "Bounded".

Sidecar data (operator reviews) lives in a local folder (`sidecar_root`): beside a `.db`, under the user cache
for a server.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from index_store.errors import IndexNotFoundError, IndexStoreError, InvalidLocationError
from index_store.manifest import Manifest, check_expected, manifest_for, parse_manifest

COLLECTION = "images"
MANIFEST_PROPERTY = "index_store.manifest"
#: Seconds a connection may take before the location counts as unreachable.
CONNECT_TIMEOUT = 10.0
BATCH = 1000
HNSW = {"M": 32, "efConstruction": 80, "ef": 768}
_META = ("rel_path", "size", "mtime_ns", "sha256", "child_prob", "detection", "classes")
_MAX_TEXT = 65_535
_OPTIONAL = ("detection", "classes")  # columns a caller may leave out (stored as "")
_MAX_CLASSES = 512  # the semantic bridge's top classes, "285:0.6120 …"


def is_milvus_location(location: str | os.PathLike[str]) -> bool:
    text = str(location)
    return text.endswith(".db") or re.match(r"^https?:/", text) is not None


def normalise_uri(location: str | os.PathLike[str]) -> str:
    """`http:/host` (what a Path makes of a URI) -> `http://host`; a .db path -> absolute."""
    text = re.sub(r"^(https?):/+", r"\1://", str(location))
    return text if text.startswith("http") else str(Path(text).expanduser().absolute())


def row_id(rel_path: str) -> int:
    """Stable primary key of a row: the first 63 bits of sha256(rel_path)."""
    return int.from_bytes(hashlib.sha256(rel_path.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1


class MilvusConnectionError(IndexStoreError):
    """The Milvus location cannot be reached, refuses the token, or is locked by another process."""


class MilvusBackend:
    """`backend.IndexBackend` over one Milvus collection (see module docstring)."""

    def __init__(self, location: str | os.PathLike[str], token: str | None = None, collection: str = COLLECTION,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.uri = normalise_uri(location)
        self.lite = not self.uri.startswith("http")
        self.token = token if token is not None else os.environ.get("MILVUS_TOKEN", "")
        self.collection = collection
        self.timeout = timeout
        self._client: Any = None

    # ------------------------------------------------------------------ connection
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise InvalidLocationError(f"--index {self.uri!r} is a Milvus location but pymilvus is not installed; "
                                       "`pip install 'retrieval[scale]'` (pymilvus, milvus-lite)") from None
        if self.lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            if _held_elsewhere(Path(self.uri)):
                raise MilvusConnectionError(
                    f"Milvus Lite file {self.uri!r} is open in another process (one process per .db); stop that "
                    "process (e.g. a running `retrieve serve`) or serve the index from a Milvus server")
        import logging

        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its iterator warns on every Lite query
        try:
            self._client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout)
        except Exception as exc:  # pymilvus raises many types: name the location and the fix
            raise self._connection_error(exc) from None
        return self._client

    def _loaded(self) -> Any:
        """The client, with the collection loaded for reads (a new process finds it released)."""
        client = self.client()
        client.load_collection(self.collection)
        return client

    def _connection_error(self, exc: Exception) -> MilvusConnectionError:
        text = f"{type(exc).__name__}: {exc}"
        if "Locked" in text or "lock" in text.lower():
            return MilvusConnectionError(f"Milvus Lite file {self.uri!r} is open in another process (one process per "
                                         ".db); stop that process or serve the index from a Milvus server")
        if "auth" in text.lower() or "password" in text.lower() or "token" in text.lower():
            return MilvusConnectionError(f"Milvus at {self.uri!r} refused the credentials; set MILVUS_TOKEN (or "
                                         "user:password@ in the URI) to a valid token")
        return MilvusConnectionError(f"cannot reach Milvus at {self.uri!r} within {self.timeout:g} s "
                                     f"({text[:120]}); start the server or check --index")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ IndexBackend
    def sidecar_root(self) -> Path:
        """`x.db.sidecar/` beside a Milvus Lite file; under the user cache for a server (created on demand)."""
        if self.lite:
            root = Path(self.uri + ".sidecar")
        else:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "index_store" / "milvus"
            root = base / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.uri}_{self.collection}")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def lock(self, timeout: float = 60.0) -> Any:
        from filelock import FileLock

        root = self.sidecar_root()
        root.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(root.parent / f".{root.name}.lock"), timeout=timeout)

    def exists(self) -> bool:
        return self._manifest_data() is not None

    def _manifest_data(self) -> dict[str, Any] | None:
        client = self.client()
        if not client.has_collection(self.collection):
            return None
        props = client.describe_collection(self.collection).get("properties") or {}
        text = props.get(MANIFEST_PROPERTY)
        return json.loads(text) if text else None

    def load(self, expect: Mapping[str, Any] | None = None, mmap: bool = True) -> "MilvusIndex":
        data = self._manifest_data()
        if data is None:
            raise IndexNotFoundError(f"no index at {self.uri!r} (collection {self.collection!r}); run "
                                     f"`retrieve build-index IMAGES --index {self.uri}`")
        manifest = parse_manifest(data, self.uri)
        check_expected(manifest, expect, Path(self.uri))
        self._loaded()
        meta = self._read_rows()
        ids = meta.pop("id").to_numpy(np.int64)
        return MilvusIndex(self, manifest, meta, ids)

    def _read_rows(self, with_vectors: bool = False) -> pd.DataFrame:
        fields = ["id", *_META] + (["vector"] if with_vectors else [])
        rows = list(self._iterate(fields))
        frame = pd.DataFrame(rows, columns=fields) if rows else pd.DataFrame({k: [] for k in fields})
        frame = frame.sort_values("rel_path", kind="stable").reset_index(drop=True)
        frame["child_prob"] = frame["child_prob"].astype("float64")
        for col in ("size", "mtime_ns", "id"):
            frame[col] = frame[col].astype("int64")
        return frame

    def _iterate(self, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
        it = self.client().query_iterator(self.collection, batch_size=BATCH, filter="", output_fields=list(fields),
                                          consistency_level="Strong")
        try:
            while True:
                batch = it.next()
                if not batch:
                    return
                yield from batch
        finally:
            it.close()

    def write(self, vectors: npt.NDArray[Any], meta: pd.DataFrame, manifest_fields: Mapping[str, Any],
              index: Any = None, index_params: Mapping[str, Any] | None = None, flat_max: int | None = None,
              vector_dtype: str = "float32", carry: Sequence[str] = ()) -> Manifest:
        """Make the collection hold exactly these rows: upsert new or changed rows, delete the rest, then store the
        manifest. A collection of another model or dimension is dropped first (never mixed)."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(meta):
            raise ValueError(f"vectors {vectors.shape} and meta ({len(meta)} rows) do not align")
        client = self.client()
        old = self._manifest_data()
        other_model = old is not None and any(old.get(k) != manifest_fields.get(k)
                                              for k in ("model_id", "image_encoder_sha") if manifest_fields.get(k))
        if client.has_collection(self.collection) and (other_model or self._dim() != int(vectors.shape[1])):
            client.drop_collection(self.collection)  # never mix rows of two models; a killed build's rows stay
        if not client.has_collection(self.collection):
            self._create(int(vectors.shape[1]))
        self._loaded()
        meta = meta.assign(**{c: "" for c in _OPTIONAL if c not in meta})
        records = meta[list(_META)].to_dict("records")
        ids = [row_id(str(r["rel_path"])) for r in records]
        have = {int(r["id"]): r for r in self._iterate(["id", *_META])}
        changed = [i for i, pk in enumerate(ids) if not _same(have.get(pk), records[i])]
        for start in range(0, len(changed), BATCH):
            part = changed[start:start + BATCH]
            client.upsert(self.collection, [_row(ids[i], vectors[i], records[i]) for i in part])
        gone = sorted(set(have) - set(ids))
        for start in range(0, len(gone), BATCH):
            client.delete(self.collection, ids=gone[start:start + BATCH])
        client.flush(self.collection)
        fields = {**manifest_fields, "created": (old or {}).get("created") or manifest_fields.get("created")}
        params = {"index_type": "milvus_flat"} if self.lite else {"index_type": "milvus_hnsw", **HNSW}
        manifest = manifest_for(fields, len(meta), int(vectors.shape[1]), "ip", params, "float32")
        client.alter_collection_properties(self.collection, properties={MANIFEST_PROPERTY: json.dumps(manifest.to_dict())})
        return manifest

    def _dim(self) -> int | None:
        """The vector dimension of the existing collection (None without one)."""
        client = self.client()
        if not client.has_collection(self.collection):
            return None
        for f in client.describe_collection(self.collection).get("fields", []):
            if f.get("name") == "vector":
                return int((f.get("params") or {}).get("dim", 0))
        return None

    def _create(self, dim: int) -> None:
        from pymilvus import DataType

        client = self.client()
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("rel_path", DataType.VARCHAR, max_length=4096)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime_ns", DataType.INT64)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("child_prob", DataType.DOUBLE)
        schema.add_field("detection", DataType.VARCHAR, max_length=_MAX_TEXT)
        schema.add_field("classes", DataType.VARCHAR, max_length=_MAX_CLASSES)
        params = client.prepare_index_params()
        if self.lite:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            params.add_index("vector", index_type="HNSW", metric_type="IP",
                             params={"M": HNSW["M"], "efConstruction": HNSW["efConstruction"]})
        client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")

    # ------------------------------------------------------------------ reads for MilvusIndex
    def search_ids(self, queries: npt.NDArray[np.float32], k: int, under: str | None = None
                   ) -> tuple[list[list[float]], list[list[int]]]:
        params = {"metric_type": "IP"} if self.lite else {"metric_type": "IP", "params": {"ef": max(HNSW["ef"], k)}}
        expr = ""
        if under:  # filtered inside Milvus (still k hits): the prefix as a string range, no LIKE wildcards
            lo = under.strip("/") + "/"
            hi = lo[:-1] + "0"  # "0" follows "/": every string starting with lo sorts in [lo, hi)
            expr = f'rel_path >= "{_quoted(lo)}" and rel_path < "{_quoted(hi)}"'
        # "Bounded": a query need not wait for the very last write (Strong waits for the next time tick, ~200 ms on
        # a server); reads that must see a write (load, the writer's diff, vectors for the rows just loaded) are Strong
        res = self.client().search(self.collection, data=[q.tolist() for q in queries], limit=k, search_params=params,
                                   filter=expr, output_fields=["id"], consistency_level="Bounded")
        return [[float(h["distance"]) for h in hits] for hits in res], [[int(h["id"]) for h in hits] for hits in res]

    def vectors_of(self, ids: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        out: dict[int, npt.NDArray[np.float32]] = {}
        for start in range(0, len(ids), BATCH):
            part = [int(i) for i in ids[start:start + BATCH]]
            rows = self.client().query(self.collection, filter=f"id in {part}", output_fields=["id", "vector"],
                                       consistency_level="Strong")
            out.update({int(r["id"]): np.asarray(r["vector"], np.float32) for r in rows})
        return out


def _quoted(text: str) -> str:
    """`text` inside a double-quoted Milvus expression string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _held_elsewhere(db: Path) -> bool:
    """True when another process holds Milvus Lite's lock on `db` (its LOCK file, flock)."""
    lock = db / "LOCK"
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # Windows: let Milvus Lite report it
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _same(stored: Mapping[str, Any] | None, row: Mapping[str, Any]) -> bool:
    if stored is None:
        return False
    for key in _META:
        a, b = stored.get(key), row[key]
        if key == "child_prob":
            if not (math.isnan(float(a)) and math.isnan(float(b))) and float(a) != float(b):
                return False
        elif str(a) != str(b if not (isinstance(b, float) and math.isnan(b)) else ""):
            return False
    return True


def _row(pk: int, vector: npt.NDArray[np.float32], row: Mapping[str, Any]) -> dict[str, Any]:
    detection, classes = row.get("detection", ""), row.get("classes", "")
    return {"id": pk, "vector": vector.tolist(), "rel_path": str(row["rel_path"]), "size": int(row["size"]),
            "mtime_ns": int(row["mtime_ns"]), "sha256": str(row["sha256"]), "child_prob": float(row["child_prob"]),
            "detection": "" if not isinstance(detection, str) else detection[:_MAX_TEXT],
            "classes": "" if not isinstance(classes, str) else classes[:_MAX_CLASSES]}


@dataclass
class _Vectors:
    """Row-indexable vectors fetched from Milvus by primary key (what the reranker reads for its candidates)."""

    backend: MilvusBackend
    ids: npt.NDArray[np.int64]
    dim: int
    cache: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ids), self.dim)

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, rows: Any) -> npt.NDArray[np.float32]:
        rows = np.atleast_1d(np.arange(len(self.ids))[rows])
        want = [int(self.ids[r]) for r in rows if int(self.ids[r]) not in self.cache]
        if want:
            self.cache.update(self.backend.vectors_of(want))
        return np.stack([self.cache[int(self.ids[r])] for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)


class MilvusIndex:
    """`backend.IndexReader` over a Milvus collection: meta in rel_path order, ids = row positions in it."""

    def __init__(self, backend: MilvusBackend, manifest: Manifest, meta: pd.DataFrame, ids: npt.NDArray[np.int64]):
        self.backend = backend
        self.manifest = manifest
        self.meta = meta
        self.folder = backend.sidecar_root()
        self.location = backend.uri
        self._row_of = {int(pk): i for i, pk in enumerate(ids)}
        self.vectors = _Vectors(backend, ids, manifest.dim)
        self.index = None

    @property
    def count(self) -> int:
        return len(self.meta)

    def search(self, queries: npt.NDArray[Any], k: int, under: str | None = None
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        k = min(int(k), self.count)
        if k <= 0 or not len(q):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        dist, pks = self.backend.search_ids(q, k, under)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, (d, p) in enumerate(zip(dist, pks)):
            found = [(s, self._row_of.get(pk, -1)) for s, pk in zip(d, p)]
            for j, (s, r) in enumerate(found[:k]):
                scores[i, j], rows[i, j] = s, r
        return scores, rows
