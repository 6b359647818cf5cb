"""Encoder registry: one place turns an encoder name into an encoder object.

Image names: efficientnet-lite0, efficientnet-lite2, efficientnet-lite2-hires (whole frame at 384 px, mean+max
pooled, its own view), resnet18, resnet50, fake-image; several joined with "+" are concatenated (e.g.
"efficientnet-lite0+efficientnet-lite2-hires", the default: Lite0 on the center crop and the full frame, Lite2
on the full frame at 384 px). Text names: all-mpnet-base-v2,
all-MiniLM-L6-v2, bert-base-uncased (or any hub id, online), fake-text.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence


from retrieval.encoders.base import FloatArray, ImageEncoder, TextEncoder
from retrieval.encoders.image import part_views, part_weight

__all__ = ["FloatArray", "ImageEncoder", "TextEncoder", "build_image_encoder", "build_text_encoder",
           "IMAGE_ENCODERS", "TEXT_ENCODERS", "part_views", "part_weight"]

IMAGE_ENCODERS = ("efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2-hires", "resnet18", "resnet50",
                  "fake-image")
TEXT_ENCODERS = ("all-mpnet-base-v2", "all-MiniLM-L6-v2", "bert-base-uncased", "fake-text")


def _one_image(name: str, weights: Path | None, views: Sequence[str], random_init: bool,
               precision: str | None = None) -> ImageEncoder:
    import retrieval.encoders.image as image

    if name.startswith("efficientnet-lite"):
        return image.efficientnet_lite(name, weights, views, precision=precision)  # refuses names outside LITE_VARIANTS
    if name in ("resnet18", "resnet50"):
        return image.resnet(name, weights, views, random_init=random_init)
    if name == "fake-image":
        from retrieval.encoders.fake import FakeImageEncoder

        return FakeImageEncoder()
    raise ValueError(f"image encoder {name!r} is not supported; choose from {IMAGE_ENCODERS}")


def build_image_encoder(
    name: str, weights: Path | None = None, views: tuple[str, ...] = ("center",), random_init: bool = False,
    precision: str | None = None,
) -> ImageEncoder:
    """Cached per process and precision: loading a CNN costs ~0.5 s and the server/CLI ask more than once.
    `precision`: "f32" or "bf16" for the OpenVINO passes (default: `precision.inference_precision()`)."""
    from retrieval.encoders.precision import inference_precision

    return _build_image_encoder(name, weights, tuple(views), random_init, precision or inference_precision())


@lru_cache(maxsize=8)
def _build_image_encoder(name: str, weights: Path | None, views: tuple[str, ...], random_init: bool,
                         precision: str) -> ImageEncoder:
    names = name.split("+")
    if len(names) == 1:
        return _one_image(name, weights, views, random_init, precision)
    from retrieval.encoders.image import ConcatImageEncoder

    return ConcatImageEncoder([_one_image(n, None, views, random_init, precision) for n in names])  # type: ignore[list-item]


def build_text_encoder(name: str, random_init: bool = False, max_tokens: int = 128, weights: str | None = None
                       ) -> TextEncoder:
    """Cached per process and weight storage. `weights`: "f32" or "int8" for the OpenVINO layers' matrices
    (default: `precision.text_weights()`; training passes `precision.TRAINING_TEXT_WEIGHTS`)."""
    from retrieval.encoders.precision import text_weights

    return _build_text_encoder(name, random_init, max_tokens, weights or text_weights())


@lru_cache(maxsize=8)
def _build_text_encoder(name: str, random_init: bool, max_tokens: int, weights: str) -> TextEncoder:
    import retrieval.encoders.text as text

    if name == "fake-text":
        from retrieval.encoders.fake import FakeTextEncoder

        return FakeTextEncoder()
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return text.load("all-MiniLM-L6-v2", text.minilm_path(), max_tokens, random_init, weights=weights)
    if name in ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        return text.load("all-mpnet-base-v2", text.mpnet_path(), max_tokens, random_init, weights=weights)
    return text.load_hf(name, None, max_tokens, random_init)
