"""Build or refresh an index folder from a folder of images, incrementally.

A file is identified by its rel_path. Against the previous index (if it was built with the same image encoder
and heads): unchanged (size, mtime_ns) rows are reused from the stored vectors, a changed size/mtime triggers a
sha256 check (a touched-but-identical file is reused), new and really changed files go through the embed
pipeline (whose cache also makes re-embedding after a kill or a heads change cheap), vanished files are dropped.
Files that fail to decode never stop the build; they are reported with their reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from index_store import FLAT_MAX, IndexReader, backend_for
from retrieval import __version__
from retrieval.encoders.base import FloatArray, ImageEncoder
from retrieval.errors import DatasetError, IndexNotFoundError, IndexOutdatedError
from retrieval.hashing import sha256_file
from retrieval.index.embed import EmbeddingCache, iter_embedded
from retrieval.index.fs import FileEntry, check_images_root, walk_images
from retrieval.index.imageio import DEFAULT_MAX_MEGAPIXELS, IMAGE_EXTENSIONS
from retrieval.policy.review import REVIEW_DIR
from retrieval.vectors import l2n

#: Manifest keys that must match for the previous index's vectors to be reused.
_REUSE_KEYS = ("image_encoder", "image_encoder_sha", "model_id")


@dataclass(frozen=True)
class BuildReport:
    """What a build did. `failures` are (rel_path, reason) for files that could not be indexed."""

    index_dir: Path
    count: int
    added: int
    updated: int
    removed: int
    skipped: int  # unchanged files reused from the previous index without decoding
    failures: tuple[tuple[str, str], ...] = ()
    embedded: int = 0  # forward passes actually run (not served by the embedding cache)
    cached: int = 0  # features served by the embedding cache
    written: bool = True  # False when nothing changed and the folder was left untouched
    rebuilt_reason: str | None = None  # why the previous index could not be reused, if it existed


def build_index(
    images_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    image_encoder: ImageEncoder,
    project: Callable[[FloatArray], Any],
    detect: Callable[[list[FileEntry], FloatArray], Sequence[Any]] | None = None,
    classify: Callable[[FloatArray], Sequence[str]] | None = None,
    manifest_fields: Mapping[str, Any] | None = None,
    workers: int | None = 2,
    batch_size: int = 32,
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    progress: bool = False,
    cache: EmbeddingCache | bool = True,
    flat_max: int = FLAT_MAX,
    embed: Callable[..., Any] | None = None,
) -> BuildReport:
    """Index every decodable image under `images_dir` into `index_dir` (created or refreshed atomically).

    `project(feats) -> (n, d)` maps encoder features to search vectors (re-normalised here so "ip" = cosine);
    `detect(entries, feats) -> [Detection]` is the child detector (retrieval.policy.detector): its probability is
    stored per row as `child_prob` and its JSON as `detection` (NaN / "" when None); `classify(feats) -> [str]` the
    semantic bridge's top classes, stored as `classes` ("" when None). `workers=None` = min(4, cpus). `cache=True` uses the default
    EmbeddingCache in retrieval.config.cache_dir(), False disables it. `embed` replaces `embed.iter_embedded` (same
    arguments and batches), e.g. `ray_embed.ray_embedder(...)` to embed on a Ray cluster.
    Raises DatasetError if the folder is missing or nothing could be indexed (and nothing was before).
    """
    root = check_images_root(images_dir)
    index_dir = index_location(index_dir)
    files = walk_images(root)
    # Caller's identity wins (it is what `load(expect=index_identity(model))` compares against).
    fields = {
        "image_encoder": image_encoder.id,
        "image_encoder_sha": image_encoder.checksum(),
        **dict(manifest_fields or {}),
        "images_root": str(root),
        "versions": {"retrieval": __version__},
    }
    prev, rebuilt_reason = _previous(index_dir, fields)
    store_cache = EmbeddingCache() if cache is True else (cache or None)
    plan = _plan(files, prev)
    new = _embed_new(files, plan, image_encoder, project, detect, classify, workers, batch_size, max_megapixels, store_cache,
                     progress, embed or iter_embedded)
    if prev is None and not new.rows:
        raise _nothing_indexed(root, files, new.failures)
    append = _appendable(prev, plan, len(new.rows), flat_max)
    vectors, meta = _assemble(files, prev, plan, new, append)

    n_new = len(new.rows)
    is_new = np.isin(np.asarray(new.rows, np.int64), plan.changed, invert=True)
    added, updated = int(is_new.sum()), int(n_new - is_new.sum())
    removed = (len(prev.meta) - len(plan.reuse_prev) - updated) if prev is not None else 0
    changed_anything = prev is None or added or updated or removed or plan.touched
    if changed_anything:
        if prev is not None:
            fields["created"] = prev.manifest.created
        ann, ann_params = None, None
        if append and prev is not None:  # the previous graph grows in memory; written atomically like a rebuild
            ann, ann_params = prev.index, {"index_type": prev.manifest.index_type, **prev.manifest.index_params}
            ann.hnsw.efConstruction = int(ann_params.get("efConstruction", ann.hnsw.efConstruction))
            ann.add(np.ascontiguousarray(vectors[len(plan.reuse_prev):], np.float32))
        # the operator's decisions (keyed by content hash) outlive every rebuild
        backend_for(index_dir).write(vectors, meta, fields, index=ann, index_params=ann_params, flat_max=flat_max,
                                     carry=(REVIEW_DIR,))
    failures, n_cached = new.failures, new.n_cached
    return BuildReport(
        index_dir=index_dir,
        count=len(meta),
        added=added,
        updated=updated,
        removed=removed,
        skipped=len(plan.reuse_prev),
        failures=tuple(failures),
        embedded=n_new - n_cached,
        cached=n_cached,
        written=bool(changed_anything),
        rebuilt_reason=rebuilt_reason,
    )


@dataclass
class _NewRows:
    """What the embed pass produced for the files that needed it: `rows` index `files`, the rest align with it."""

    rows: list[int] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    vectors: list[FloatArray] = field(default_factory=list)
    probs: list[npt.NDArray[np.float64]] = field(default_factory=list)
    detections: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0


def _embed_new(files: list[FileEntry], plan: "_Plan", encoder: ImageEncoder, project: Callable[[FloatArray], Any],
               detect: Callable[[list[FileEntry], FloatArray], Sequence[Any]] | None,
               classify: Callable[[FloatArray], Sequence[str]] | None, workers: int | None,
               batch_size: int, max_megapixels: float | None, cache: EmbeddingCache | None,
               progress: bool, embed: Callable[..., Any]) -> _NewRows:
    """Decode, embed, project and run the child detector on the files the plan could not reuse."""
    todo = [files[i] for i in plan.embed]
    out = _NewRows()
    for batch in embed(todo, encoder, workers, batch_size, max_megapixels, cache, progress):
        out.failures += batch.failures
        out.n_cached += batch.n_cached
        if not batch.ids:
            continue
        out.rows += [plan.embed[i] for i in batch.ids]
        out.shas += batch.shas
        out.vectors.append(_unit(np.asarray(project(batch.feats), dtype=np.float32), len(batch.ids)))
        out.classes += list(classify(batch.feats)) if classify is not None else [""] * len(batch.ids)
        if detect is None:
            out.probs.append(np.full(len(batch.ids), np.nan))
            out.detections += [""] * len(batch.ids)
        else:
            found = detect([todo[i] for i in batch.ids], batch.feats)
            out.probs.append(np.asarray([d.prob for d in found], np.float64))
            out.detections += [d.to_json() for d in found]
    return out


def _assemble(files: list[FileEntry], prev: IndexReader | None, plan: "_Plan", new: _NewRows, append: bool
              ) -> tuple[FloatArray, pd.DataFrame]:
    """(vectors, meta) of the new index: rows in walk order (sorted rel_path), reused rows from the previous index
    and new ones merged; except that a graph index that only gains images keeps its rows and appends (`append`)."""
    dim = prev.manifest.dim if prev is not None else new.vectors[0].shape[1]
    if new.vectors and new.vectors[0].shape[1] != dim:  # heads changed dimension but kept model_id: refuse to mix
        raise ValueError(f"project() returned dim {new.vectors[0].shape[1]} but the index has dim {dim}")
    new_rows = np.asarray(new.rows, np.int64)
    file_rows = np.concatenate([plan.reuse_file, new_rows])
    if append:
        order = np.concatenate([np.argsort(plan.reuse_prev, kind="stable"),
                                len(plan.reuse_prev) + np.argsort(new_rows, kind="stable")])
    else:
        order = np.argsort(file_rows, kind="stable")
    file_rows = file_rows[order]
    reuse = plan.reuse_prev
    reused_vectors = (np.asarray(prev.vectors[reuse], dtype=np.float32) if prev is not None and len(reuse)
                      else np.zeros((0, dim), np.float32))
    vectors = np.concatenate([reused_vectors, *new.vectors])[order]

    def column(name: str, kind: Any, fresh: Any) -> Any:
        if prev is None:
            old = np.zeros(0, kind)
        elif kind is object:
            old = _prev_column(prev, name)[reuse]
        else:
            old = prev.meta[name].to_numpy(kind)[reuse]
        return np.concatenate([np.asarray(old, kind), np.asarray(fresh, kind)])[order]

    meta = pd.DataFrame({
        "rel_path": [files[i].rel_path for i in file_rows],
        "size": np.asarray([files[i].size for i in file_rows], np.int64),
        "mtime_ns": np.asarray([files[i].mtime_ns for i in file_rows], np.int64),
        "sha256": column("sha256", object, new.shas),
        "child_prob": column("child_prob", np.float64, np.concatenate(new.probs) if new.probs else np.zeros(0)),
        "detection": column("detection", object, new.detections),
        "classes": column("classes", object, new.classes),
    })
    return vectors, meta


def _appendable(prev: IndexReader | None, plan: "_Plan", n_new: int, flat_max: int) -> bool:
    """True when the previous index is an HNSW graph that only gains images (nothing removed or re-embedded, rows
    still in the previous order): adding to the graph costs seconds where rebuilding 1M images costs minutes.
    Any removal or change rebuilds (HNSW cannot delete), and so does a flat index (rebuilding it is free)."""
    if prev is None or not n_new or prev.manifest.index_type != "hnsw_sq8" or len(plan.changed):
        return False
    kept_all = len(plan.reuse_prev) == len(prev.meta)
    return kept_all and len(prev.meta) + n_new >= flat_max


@dataclass(frozen=True)
class _Plan:
    reuse_file: npt.NDArray[np.int64]  # file index of each reused row
    reuse_prev: npt.NDArray[np.int64]  # matching row in the previous index
    embed: list[int]  # file indices to run through the pipeline
    changed: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))  # subset of embed
    touched: int = 0  # size/mtime changed but same content: reused, meta updated


def _plan(files: list[FileEntry], prev: IndexReader | None) -> _Plan:
    n = len(files)
    if prev is None or not len(prev.meta):
        return _Plan(np.zeros(0, np.int64), np.zeros(0, np.int64), list(range(n)))
    cur = pd.DataFrame({
        "rel_path": [f.rel_path for f in files],
        "size": np.asarray([f.size for f in files], np.int64),
        "mtime_ns": np.asarray([f.mtime_ns for f in files], np.int64),
        "file_row": np.arange(n),
    })
    old = prev.meta[["rel_path", "size", "mtime_ns", "sha256"]].assign(prev_row=np.arange(len(prev.meta)))
    both = cur.merge(old, on="rel_path", how="inner", suffixes=("", "_old"))
    same = (both["size"] == both["size_old"]) & (both["mtime_ns"] == both["mtime_ns_old"])
    suspect = both[~same]
    same_content = np.asarray(
        [_sha_or_none(files[r].abs_path) == s for r, s in zip(suspect["file_row"], suspect["sha256"])], bool
    )
    reused = pd.concat([both[same], suspect[same_content]])
    changed = suspect["file_row"].to_numpy(np.int64)[~same_content]
    embed = np.setdiff1d(np.arange(n), reused["file_row"].to_numpy(np.int64))
    return _Plan(
        reuse_file=reused["file_row"].to_numpy(np.int64),
        reuse_prev=reused["prev_row"].to_numpy(np.int64),
        embed=embed.tolist(),
        changed=changed,
        touched=int(same_content.sum()),
    )


def _prev_column(prev: IndexReader, name: str) -> npt.NDArray[np.object_]:
    if name in prev.meta:
        return prev.meta[name].fillna("").to_numpy(dtype=object)
    return np.full(len(prev.meta), "", dtype=object)


def index_location(index_dir: str | os.PathLike[str]) -> Any:
    """A folder index as an absolute path; a Milvus location (`x.db`, `http://…`) as its normalised URI."""
    from index_store.milvus import is_milvus_location, normalise_uri

    if is_milvus_location(index_dir):
        return normalise_uri(index_dir)
    return Path(index_dir).expanduser().absolute()


def _previous(index_dir: Any, fields: Mapping[str, Any]) -> tuple[IndexReader | None, str | None]:
    """The previous index if its vectors can be reused; else (None, why). A newer format_version propagates;
    an older one (before the child detector) and a corrupt folder are rebuilt from scratch (the cache keeps it cheap)."""
    if not backend_for(index_dir).exists():
        return None, None
    try:
        prev = backend_for(index_dir).load()
    except (IndexNotFoundError, IndexOutdatedError) as exc:
        return None, str(exc)
    stored = prev.manifest.to_dict()
    for key in _REUSE_KEYS:
        wanted = fields.get(key)
        if wanted not in (None, "") and stored.get(key) != wanted:
            return None, f"previous index has {key}={stored.get(key)!r}, now {wanted!r}"
    return prev, None


def _nothing_indexed(root: Path, files: list[FileEntry], failures: list[tuple[str, str]]) -> DatasetError:
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        return DatasetError(f"no image files ({exts}) under {str(root)!r}; pass a folder that contains images")
    rel, reason = failures[0] if failures else (files[0].rel_path, "unknown")
    return DatasetError(
        f"none of the {len(files)} image files under {str(root)!r} could be decoded (e.g. {rel!r}: {reason}); "
        "check the files or raise --max-megapixels"
    )


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _unit(vectors: FloatArray, n: int) -> FloatArray:
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"project() must return ({n}, d) vectors, got shape {vectors.shape}")
    return l2n(vectors)
