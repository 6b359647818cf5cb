"""`retrieve score`: calibrated 0-1 relevance of (image, text) pairs with a trained model folder.

Unique images and texts are encoded once each (batched). An unreadable image gives that row an `error` and a
NaN score; the other rows are still scored. An empty text is a user error for the whole call (InvalidQueryError).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from retrieval.atomic import write_text
from retrieval.encoders import build_image_encoder, build_text_encoder
from retrieval.errors import DatasetError, ImageDecodeError, InvalidQueryError
from retrieval.index.imageio import load_image
from retrieval.learn.bridge import BridgedImages, image_classifier
from retrieval.learn.model import RetrievalModel


def _encoders(model: RetrievalModel) -> tuple[Any, Any]:
    cfg = model.config
    ienc = build_image_encoder(cfg.image_encoder, views=tuple(cfg.image_views))
    tenc = build_text_encoder(cfg.text_encoder)
    model.check_encoders(image_checksum=ienc.checksum(), text_checksum=tenc.checksum())
    return ienc, tenc


def _load(path: Path) -> Any:
    return load_image(path)


def _check_texts(texts: Sequence[Any]) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        text = "" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t).strip()
        if not text:
            raise InvalidQueryError(f"row {i + 1}: empty text; every pair needs a non-empty `text`")
        out.append(text)
    return out


def score_pairs(model: RetrievalModel, pairs: pd.DataFrame, base_dir: Path | str | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """pairs with columns `image` (path, relative to `base_dir`) and `text` -> DataFrame(image, text, score, error)."""
    text_col = "text" if "text" in pairs.columns else "query_text" if "query_text" in pairs.columns else None
    if "image" not in pairs.columns or text_col is None:
        raise DatasetError(f"pairs table has columns {list(pairs.columns)}; expected `image,text`")
    texts = _check_texts(pairs[text_col].tolist())
    images = [str(x) for x in pairs["image"].tolist()]
    base = Path(base_dir) if base_dir is not None else Path(".")
    ienc, tenc = _encoders(model)

    uniq_img = sorted(set(images))
    errors: dict[str, str] = {}
    items, ok_names = [], []
    for name in uniq_img:
        path = Path(name) if Path(name).is_absolute() else base / name
        try:
            items.append(ienc.preprocess(_load(path)))
            ok_names.append(name)
        except ImageDecodeError as exc:
            errors[name] = str(exc)
    img_feat = np.zeros((0, ienc.dim), np.float32)
    if items:
        img_feat = np.concatenate([ienc.embed_batch(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])
    img_z = model.project_images(img_feat) if ok_names else np.zeros((0, model.dim), np.float32)
    img_row = {n: i for i, n in enumerate(ok_names)}  # row of img_feat / img_z
    classify = image_classifier(model.bridge, model.config.image_encoder)
    bridged = BridgedImages.from_column(model.bridge, classify(img_feat)) if classify is not None else None

    uniq_txt = sorted(set(texts))
    raw = tenc.encode(uniq_txt)
    txt_z, txt_raw = dict(zip(uniq_txt, model.project_texts(raw))), dict(zip(uniq_txt, raw))

    ok = np.array([n in img_row for n in images], bool)
    scores = np.full(len(images), np.nan, np.float32)
    if ok.any():
        rows = np.asarray([img_row[n] for n, good in zip(images, ok) if good], np.int64)
        kept = [t for t, good in zip(texts, ok) if good]
        raw_kept = np.stack([txt_raw[t] for t in kept])
        bridge = bridged.aligned(raw_kept, rows) if bridged is not None else None
        scores[ok] = model.score(img_z[rows], np.stack([txt_z[t] for t in kept]), raw_kept, bridge)
    return pd.DataFrame({"image": images, "text": texts, "score": scores,
                         "error": [errors.get(n, "") for n in images]})


def score_one(model: RetrievalModel, image_path: Path | str, text: str) -> float:
    """Score of one pair; an unreadable image raises ImageDecodeError."""
    row = score_pairs(model, pd.DataFrame({"image": [str(image_path)], "text": [text]})).iloc[0]
    if row["error"]:
        raise ImageDecodeError(str(row["error"]))
    return float(row["score"])


def read_pairs(path: Path | str) -> pd.DataFrame:
    """CSV (or TSV by extension) with `image,text` columns."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"pairs file {str(path)!r} not found; pass an existing CSV with columns image,text")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def write_scores(scores: pd.DataFrame, path: Path | str) -> Path:
    """Atomic CSV write (temp file in the same folder, then os.replace)."""

    return write_text(path, scores.to_csv(index=False))
