"""Images served by index id only, through the policy choke point, with cached JPEG thumbnails.

A client never names a file: `/api/image/{id}` parses a decimal id, checks it against the index size, asks the
retriever for that row's hit and runs it through `apply_policy` like any search result. A withheld image has no path
after the policy, so it cannot be fetched by id either. Thumbnails are cached in memory (LRU) and on disk under
cache_dir()/thumbs keyed by the image's content hash, so a changed file never gets a stale thumbnail.
"""
from __future__ import annotations

import io
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from retrieval.atomic import write_bytes
from retrieval.errors import ImageDecodeError, InvalidQueryError, RetrievalError
from retrieval.hashing import sha256_file
from retrieval.policy.apply import apply_policy
from retrieval.policy.types import DEFAULT_IMAGE_THRESHOLD, Hit, RawResult

_ID = re.compile(r"[0-9]{1,12}")


class ImageNotFoundError(RetrievalError):
    """No indexed image has this id, or its file is gone (HTTP 404)."""


class ImageWithheldError(RetrievalError):
    """The policy withholds this image (HTTP 451)."""


def hit_for_id(retriever: Any, image_id: int) -> Hit:
    """The retriever's own Hit for one index row (the same builder search results use, so flags match)."""
    lookup = getattr(retriever, "hit", None) or retriever._hit  # public `hit` preferred; Retriever has `_hit` today
    return lookup(rank=1, image_id=image_id, score=0.0)


def image_threshold(retriever: Any) -> float:
    """The child-image threshold search results carry: the retriever's (an operator refit moves it), else the
    model's attribute or config."""
    own = getattr(retriever, "image_threshold", None)
    if isinstance(own, (int, float)):
        return float(own)
    model = getattr(retriever, "model", None)
    for owner in (model, getattr(model, "config", None)):
        value = getattr(owner, "child_image_threshold", None)
        if value is not None:
            return float(value)
    return DEFAULT_IMAGE_THRESHOLD


def make_thumbnail(path: Path, size: int) -> bytes:
    """JPEG of at most size x size pixels (EXIF rotation applied; JPEG decoded at reduced scale when possible)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85, optimize=True)
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"cannot decode {path.name}: {err}; rebuild the index with `retrieve build-index`") from err


class ImageService:
    """Resolves ids to files under a policy and produces cached thumbnails. Thread-safe."""

    def __init__(self, retriever: Any, policy: str, thumb_dir: Path, thumb_size: int = 256,
                 memory_bytes: int = 64 << 20) -> None:
        self.retriever = retriever
        self.policy = policy
        self.thumb_dir = Path(thumb_dir)
        self.thumb_size = int(thumb_size)
        self.memory_bytes = memory_bytes
        self._lru: OrderedDict[tuple, bytes] = OrderedDict()
        self._lru_bytes = 0
        self._lock = threading.Lock()

    def hit(self, image_id: int) -> Hit:
        return hit_for_id(self.retriever, image_id)

    def path_of(self, raw_id: str) -> Path:
        """File of index row `raw_id` (a decimal string) if the policy lets it be shown; else 404 / 451 errors."""
        count = int(self.retriever.store.count)
        if not _ID.fullmatch(raw_id or "") or int(raw_id) >= count:
            raise ImageNotFoundError(f"no image with id {raw_id[:40]!r}; ids are 0..{count - 1}, "
                                     f"take them from the url fields of /api/search")
        image_id = int(raw_id)
        raw = RawResult(query="", query_child=False, hits=[hit_for_id(self.retriever, image_id)],
                        image_threshold=image_threshold(self.retriever))
        shown = apply_policy(raw, self.policy)["hits"][0]
        if shown["path"] is None:
            raise ImageWithheldError(f"image {image_id} is withheld under the {self.policy} policy: {shown['disclaimer']}")
        path = Path(shown["path"])
        if not path.is_file():
            raise ImageNotFoundError(f"image {image_id} is no longer on disk; rebuild the index with "
                                     f"`retrieve build-index`")
        return path

    def thumbnail(self, raw_id: str) -> bytes:
        path = self.path_of(raw_id)
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size, self.thumb_size)
        with self._lock:
            data = self._lru.get(key)
            if data is not None:
                self._lru.move_to_end(key)
                return data
        data = self._disk_thumbnail(path)
        self._remember(key, data)
        return data

    def _disk_thumbnail(self, path: Path) -> bytes:
        digest = sha256_file(path)
        cached = self.thumb_dir / str(self.thumb_size) / digest[:2] / f"{digest}.jpg"
        try:
            return cached.read_bytes()
        except OSError:
            pass
        data = make_thumbnail(path, self.thumb_size)
        try:  # atomic: readers never see half a JPEG; a failed write only costs a regeneration
            write_bytes(cached, data)
        except OSError:
            pass
        return data

    def _remember(self, key: tuple, data: bytes) -> None:
        with self._lock:
            if key in self._lru:
                return
            self._lru[key] = data
            self._lru_bytes += len(data)
            while self._lru_bytes > self.memory_bytes and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._lru_bytes -= len(old)


def public_result(raw: Any, policy: str) -> dict[str, Any]:
    """`apply_policy(raw, policy)` plus url/thumb on each hit the policy left visible (withheld hits get none), and
    the row id on every hit the page may act on (visible ones; all under audit)."""
    out = apply_policy(raw, policy)
    if out["hits"]:
        for shown, hit in zip(out["hits"], raw.hits):
            if policy == "audit" or shown["path"] is not None:  # review and "more like this" buttons name the row
                shown["id"] = int(hit.image_id)
            if shown["path"] is not None:
                shown["url"] = f"/api/image/{int(hit.image_id)}"
                shown["thumb"] = f"/api/thumb/{int(hit.image_id)}"
    return out


def parse_count(value: str | None, name: str, default: int) -> int:
    """A query-string count in 1..MAX_K (`k`, `n`); InvalidQueryError naming the bad value and an example."""
    from retrieval.limits import MAX_K

    try:
        count = int(value) if value is not None else default
    except ValueError:
        raise InvalidQueryError(f"{name} must be an integer in 1..{MAX_K}, got {str(value)[:20]!r}; pass e.g. "
                                f"{name}={default}") from None
    if not 1 <= count <= MAX_K:
        raise InvalidQueryError(f"{name} must be an integer in 1..{MAX_K}, got {count}; pass e.g. {name}={default}")
    return count


def parse_min_score(value: str | None) -> float:
    """A query-string / form `min_score` in 0..1 (empty = 0); InvalidQueryError naming the bad value."""
    try:
        score = float(value) if value not in (None, "") else 0.0
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 1.0:  # also rejects nan
        raise InvalidQueryError(f"min_score must be a number in 0..1, got {str(value)[:20]!r}; pass e.g. min_score=0.5")
    return score
