"""Slow: the shipped default model and the real course features (skips without the course data / cache)."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.config import DEFAULT_MODEL_DIR
from retrieval.learn.model import RetrievalModel
from tests.conftest import require_course_data

pytestmark = pytest.mark.slow


def test_shipped_default_model_loads_and_is_small():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("no shipped default model; run `retrieve train --data ../shared/data/course-train --out retrieval/default_model`")
    m = RetrievalModel.load(DEFAULT_MODEL_DIR)
    assert m.config.text_encoder == "all-mpnet-base-v2"
    from retrieval.encoders import build_image_encoder

    image_dim = build_image_encoder(m.config.image_encoder, views=tuple(m.config.image_views)).dim
    assert m.config.image_dim == image_dim == 3840 and m.config.text_dim == 768 and m.dim == 256
    # heads only (12 MB): the 3,840 x 256 image map (3.9 MB) and the bridge's 1,000 class vectors (3 MB)
    # dominate; no encoder weights travel with the model
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()) < 16_000_000
    assert m.config.training["keep_restricted"] is False
    val = m.config.validation["validation"]["retrieval_non_child"]
    assert val["R@1"] > 40 and val["R@10"] > 85  # K-fold numbers recorded at training time
    z = m.project_images(np.random.default_rng(0).normal(size=(3, image_dim)))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


def test_real_text_encoder_scores_own_caption_above_a_mismatch():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("no shipped default model")
    data = require_course_data("train_images")
    import pandas as pd

    from retrieval.scoring import score_pairs

    m = RetrievalModel.load(DEFAULT_MODEL_DIR)
    img = "1056338697_4f7d7ce270.jpg"  # "A blond woman is on the street hailing a taxi ."
    pairs = pd.DataFrame({"image": [img, img], "text": ["A woman on the street hailing a taxi .",
                                                        "A black dog swims in a lake ."]})
    out = score_pairs(m, pairs, base_dir=data / "train_images")
    assert (out["error"] == "").all()
    assert out.loc[0, "score"] > out.loc[1, "score"]
