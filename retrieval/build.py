"""Wires the build side: model folder -> image encoder + heads -> `indexer.build_index` into an index folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.encoders import build_image_encoder


def build_index_with_model(
    images_dir: str | Path,
    index_dir: str | Path,
    model_dir: str | Path | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    max_megapixels: float = 100.0,
    progress: bool = True,
) -> Any:
    """Embed every image under `images_dir` with the model's encoders and write/update `index_dir` atomically."""
    from retrieval.indexer import build_index
    from retrieval.model import RetrievalModel, default_model_dir

    model = RetrievalModel.load(Path(model_dir) if model_dir else default_model_dir())
    encoder = build_image_encoder(model.config.image_encoder, views=tuple(model.config.image_views))
    return build_index(
        Path(images_dir),
        Path(index_dir),
        image_encoder=encoder,
        project=model.project_images,
        child_prob=model.child_image_prob,
        manifest_fields=model.index_identity(),
        workers=workers,
        batch_size=batch_size,
        max_megapixels=max_megapixels,
        progress=progress,
    )
