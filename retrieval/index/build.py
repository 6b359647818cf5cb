"""Wires the build side: model folder -> image encoder + heads -> `indexer.build_index` into an index folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.encoders import build_image_encoder
from retrieval.index.ray_embed import ray_embedder
from retrieval.errors import DetectorUnavailableError, ImageDecodeError, ModelMismatchError
from retrieval.index.imageio import load_image
from retrieval.index.indexer import build_index
from retrieval.learn.bridge import image_classifier
from retrieval.learn.model import index_identity, load_model, resolve_model_dir
from retrieval.policy.detector import DetectorRuntime
from retrieval.policy.faces import DECODE_SHORT_SIDE


def child_detector(model: Any, max_megapixels: float | None = 100.0) -> Any:
    """`detect(entries, feats) -> [Detection]` for the indexer: decodes each file (EXIF-upright, any mode) and runs
    the model's child detector on it. Raises DetectorUnavailableError now, before any work, if a part cannot load."""

    if model.detector is None:
        raise DetectorUnavailableError("this model has no child detector; retrain it with `retrieve train`")
    runtime = DetectorRuntime(model.detector)

    def detect(entries: Any, feats: Any) -> Any:
        images = []
        for e in entries:
            try:  # enough resolution for small faces: the detector's own working size (faces.DECODE_SHORT_SIDE)
                images.append(load_image(e.abs_path, max_megapixels=max_megapixels, target_size=DECODE_SHORT_SIDE))
            except ImageDecodeError:  # decoded a moment ago for the embedding: only a file changed meanwhile
                raise DetectorUnavailableError(f"{e.rel_path} changed while indexing; run build-index again") from None
        return runtime.detect(images, feats)

    return detect


def build_index_with_model(
    images_dir: str | Path,
    index_dir: str | Path,
    model_dir: str | Path | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    max_megapixels: float = 100.0,
    progress: bool = True,
    image_weights: str | Path | None = None,
    ray: str | None = None,
) -> Any:
    """Embed every image under `images_dir` with the model's encoders and write/update `index_dir` atomically.

    `image_weights`: a weights file for the image encoder (e.g. ResNet offline); it must be the one the model was
    trained with (checked by checksum). `ray`: "local" embeds on a local Ray, an address joins that cluster
    (`ray_embed`); None embeds in this process."""

    model = load_model(model_dir)
    encoder = build_image_encoder(model.config.image_encoder, Path(image_weights) if image_weights else None,
                                  views=tuple(model.config.image_views))
    if encoder.checksum() != model.config.image_encoder_checksum:
        raise ModelMismatchError(
            f"image encoder {model.config.image_encoder!r} weights (sha {encoder.checksum()[:12]}) differ from the "
            f"ones the model was trained with (sha {model.config.image_encoder_checksum[:12]}); pass the training "
            "weights with --image-weights or retrain with `retrieve train`")
    return build_index(
        Path(images_dir),
        Path(index_dir),
        image_encoder=encoder,
        project=model.project_images,
        detect=child_detector(model, max_megapixels),
        classify=image_classifier(model.bridge, model.config.image_encoder),
        # the folder is recorded so that queries find this model without --model (shipped ones by model_id)
        manifest_fields={**index_identity(model), "model_dir": str(resolve_model_dir(model_dir).absolute())},
        workers=workers,
        batch_size=batch_size,
        max_megapixels=max_megapixels,
        progress=progress,
        embed=None if ray is None else ray_embedder(model.config.image_encoder, model.config.image_views,
                                                    image_weights, None if ray == "local" else ray),
    )
