"""Encoder features of the course data (all train images, all unique texts), computed once and cached.

Each (single image encoder, view) pair and each text encoder is cached separately as
`cache_dir()/features/<key>.npz`, so any subset of views can be averaged later without re-running a CNN.
The key holds the encoder id, its weight checksum, the view and a fingerprint of the inputs (file names and
sizes for images, the text list for texts): a different checkpoint or data set never hits a stale cache.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.atomic import atomic_path
from retrieval.config import cache_dir
from retrieval.data.course import load_course
from retrieval.encoders import build_image_encoder, build_text_encoder, part_views, part_weight
from retrieval.encoders.precision import TRAINING_TEXT_WEIGHTS, training_precision
from retrieval.index.imageio import load_image
from retrieval.policy.detector import CROP_CONTEXT, CROP_ENCODER, MAX_FACES, faces_and_crop_features, load_crop_encoder
from retrieval.policy.detector_train import FaceTable
from retrieval.policy.faces import DECODE_SHORT_SIDE, FaceFinder
from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]
#: progress(stage, done, total)
Progress = Callable[[str, int, int], None]



@dataclass(frozen=True)
class CourseEmbeddings:
    """Row i of `image_feats` is `image_names[i]`; row j of `text_feats` is `texts[j]` (unique, sorted)."""

    image_names: list[str]
    image_feats: FloatArray
    texts: list[str]
    text_feats: FloatArray

    def text_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.texts)}

    def image_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.image_names)}


# ----------------------------------------------------------------------------------------------- course inputs
@lru_cache(maxsize=4)
def _course(data_dir: str) -> Any:
    """The validated course tables (`retrieval.data.course.load_course`), loaded once per folder and process."""

    return load_course(data_dir)


def course_image_names(data_dir: Path) -> list[str]:
    return sorted(_course(str(data_dir)).train_image_names)


def read_extra_captions(data_dir: Path) -> list[tuple[str, str]]:
    """extra_captions.tsv -> [(query_id, caption)] (empty when the file is absent)."""
    caps = _course(str(data_dir)).extra_captions
    return [] if caps is None else list(zip(caps["query_id"], caps["query_text"]))


def read_train_queries(data_dir: Path) -> list[tuple[str, str, str]]:
    """train_dataset.csv -> [(image, query_id, query_text)]."""
    train = _course(str(data_dir)).train
    return list(zip(train["image"], train["query_id"], train["query_text"]))


def course_texts(data_dir: Path) -> list[str]:
    """All unique texts: train_dataset query texts + extra captions, sorted for a stable order."""
    texts = {t for _, _, t in read_train_queries(data_dir)} | {c for _, c in read_extra_captions(data_dir)}
    return sorted(t for t in texts if t)


# ----------------------------------------------------------------------------------------------- caching
def _sha(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _precision_key(precision: str) -> list[str]:
    """Cache-key part of the features' precision: none for float32 (the reference caches keep their names)."""
    return [] if precision == "f32" else [f"precision={precision}"]


def _save_npz(path: Path, **arrays: Any) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _feature_dir() -> Path:
    return cache_dir() / "features"


def _decode(path: Path) -> Any:
    """RGB PIL image, EXIF orientation applied. Prefers the shared loader when it exists."""
    try:
        return load_image(path)
    except ImportError:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")


def image_view_features(
    data_dir: Path, encoder_name: str, view: str, progress: Progress | None = None, batch_size: int = 16
) -> tuple[list[str], FloatArray]:
    """Raw (un-normalised) features of every train image for ONE encoder and ONE view, cached."""

    data_dir = Path(data_dir)
    names = course_image_names(data_dir)
    folder = data_dir / "train_images"
    precision = training_precision()
    encoder = build_image_encoder(encoder_name, views=(view,), precision=precision)
    data_fp = _sha([f"{n}:{(folder / n).stat().st_size}" for n in names])
    key = _sha([encoder_name, encoder.checksum(), view, data_fp] + _precision_key(precision))[:24]
    path = _feature_dir() / f"img-{encoder_name}-{view}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return [str(n) for n in z["names"]], z["feats"].astype(np.float32)
    feats = np.zeros((len(names), encoder.dim), np.float32)
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        items = [encoder.preprocess(_decode(folder / n)) for n in chunk]
        feats[start : start + len(chunk)] = encoder.embed_batch(items)
        if progress:
            progress(f"{encoder_name}[{view}]", start + len(chunk), len(names))
    _save_npz(path, names=np.array(names), feats=feats)
    return names, feats


def text_features(texts: Sequence[str], encoder_name: str, progress: Progress | None = None) -> FloatArray:
    """Raw text features for `texts` (cached by encoder id + checksum + the exact text list)."""

    encoder = build_text_encoder(encoder_name, weights=TRAINING_TEXT_WEIGHTS)
    key = _sha([encoder_name, encoder.checksum(), str(encoder.max_tokens), _sha(list(texts))]
               + _precision_key(TRAINING_TEXT_WEIGHTS))[:24]
    path = _feature_dir() / f"txt-{encoder_name}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["feats"].astype(np.float32)
    chunks = []
    step = 256
    for start in range(0, len(texts), step):
        chunks.append(encoder.encode(list(texts[start : start + step])))
        if progress:
            progress(encoder_name, min(start + step, len(texts)), len(texts))
    feats = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, encoder.dim), np.float32)
    _save_npz(path, feats=feats)
    return feats


def combine_image_features(
    data_dir: Path, image_encoder: str, views: Sequence[str], progress: Progress | None = None
) -> tuple[list[str], FloatArray]:
    """Same features the live encoder gives: mean over views per part; "+"-joined parts L2-normalised (times
    `part_weight`), concatenated."""

    parts = image_encoder.split("+")
    names: list[str] = []
    blocks = []
    for part in parts:
        per_view = []
        for view in part_views(part, views):
            names, f = image_view_features(data_dir, part, view, progress)
            per_view.append(f)
        mean = np.mean(per_view, axis=0).astype(np.float32)
        blocks.append(part_weight(part) * l2n(mean) if len(parts) > 1 else mean)
    return names, np.concatenate(blocks, axis=1).astype(np.float32)


def course_embeddings(
    data_dir: Path | str,
    image_encoder: str,
    text_encoder: str,
    views: Sequence[str] = ("center",),
    progress: Progress | None = None,
) -> CourseEmbeddings:
    """Embeddings of all train images and all unique course texts (cached per encoder and view)."""
    data_dir = Path(data_dir)
    names, image_feats = combine_image_features(data_dir, image_encoder, tuple(views), progress)
    texts = course_texts(data_dir)
    return CourseEmbeddings(names, image_feats, texts, text_features(texts, text_encoder, progress))


def course_face_table(data_dir: Path | str, progress: Progress | None = None) -> Any:
    """Faces (MTCNN) and crop-encoder features of every train image, as a `detector_train.FaceTable` (cached by the
    face finder's settings, the crop encoder's checksum and the image files)."""

    data_dir = Path(data_dir)
    names = course_image_names(data_dir)
    folder = data_dir / "train_images"
    precision = training_precision()
    encoder = load_crop_encoder(precision)
    data_fp = _sha([f"{n}:{(folder / n).stat().st_size}" for n in names])
    key = _sha([FaceFinder.id, CROP_ENCODER, encoder.checksum(), str(CROP_CONTEXT), str(MAX_FACES), data_fp]
               + _precision_key(precision))[:24]
    path = _feature_dir() / f"faces-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return FaceTable(z["image"], z["boxes"], z["probs"], z["feats"], z["sizes"])
    finder = FaceFinder()
    image, boxes, probs, feats, sizes = [], [], [], [], []
    for i, n in enumerate(names):
        im = load_image(folder / n, target_size=DECODE_SHORT_SIDE)  # as the build decodes for the detector
        sizes.append(im.size)
        [faces], f = faces_and_crop_features(finder, encoder, [im])
        if faces:
            feats.append(f)
            image += [i] * len(faces)
            boxes += [face.box for face in faces]
            probs += [face.prob for face in faces]
        if progress and ((i + 1) % 50 == 0 or i + 1 == len(names)):
            progress("faces", i + 1, len(names))
    table = FaceTable(np.asarray(image, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(probs, np.float32), np.concatenate(feats).astype(np.float32) if feats
                      else np.zeros((0, encoder.dim), np.float32), np.asarray(sizes, np.int64).reshape(-1, 2))
    _save_npz(path, image=table.image, boxes=table.boxes, probs=table.probs, feats=table.feats, sizes=table.sizes)
    return table
