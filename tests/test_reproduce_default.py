"""`retrieve train` on the course data reproduces the shipped default model (README: `make train-default`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.config import DEFAULT_MODEL_DIR
from retrieval.learn.model import RetrievalModel

from tests.conftest import require_course_data, run_cli


@pytest.mark.slow
def test_training_on_course_data_reproduces_shipped_model(tmp_path):
    data = require_course_data()
    res = run_cli("train", "--data", data, "--out", tmp_path / "model")
    assert res.exit_code == 0, res.output
    shipped, fresh = RetrievalModel.load(DEFAULT_MODEL_DIR), RetrievalModel.load(tmp_path / "model")
    a, b = shipped.config, fresh.config
    assert (a.image_encoder, a.text_encoder, a.image_views) == (b.image_encoder, b.text_encoder, b.image_views)
    assert a.training["data_fingerprint"] == b.training["data_fingerprint"]
    assert (a.rank_logit_weight, a.rank_cos_weight) == (b.rank_logit_weight, b.rank_cos_weight)
    for key in ("retrieval_non_child", "retrieval_all"):
        for metric in ("R@1", "R@5", "R@10"):
            assert b.validation["validation"][key][metric] == pytest.approx(a.validation["validation"][key][metric], abs=0.2)
    # the child detector comes out the same: threshold and out-of-fold withheld shares on the visual labels
    da, db = a.validation["child_detector"], b.validation["child_detector"]
    assert db["threshold"] == pytest.approx(da["threshold"], abs=1e-3)
    for key in ("withheld_child", "withheld_none", "withheld_unsure"):
        assert db[key] == pytest.approx(da[key], abs=0.005)
    assert fresh.detector.threshold == pytest.approx(a.child_image_threshold, abs=1e-3)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((50, a.image_dim)).astype(np.float32)
    txt = rng.standard_normal((50, a.text_dim)).astype(np.float32)
    # the semantic bridge comes out the same: weight, scale, class vectors
    assert fresh.bridge is not None and b.bridge["weight"] == a.bridge["weight"]
    assert b.bridge["scale"] == pytest.approx(a.bridge["scale"], rel=1e-3)
    np.testing.assert_allclose(fresh.bridge.class_text, shipped.bridge.class_text, atol=1e-3)
    bridge = rng.uniform(0.0, 0.6, 50).astype(np.float32)
    np.testing.assert_allclose(shipped.score(shipped.project_images(img), shipped.project_texts(txt), txt, bridge),
                               fresh.score(fresh.project_images(img), fresh.project_texts(txt), txt, bridge), atol=0.02)
    printed = json.loads(res.stdout[res.stdout.index("{"):])
    assert printed["validation"]["retrieval_non_child"]["R@1"] == pytest.approx(
        b.validation["validation"]["retrieval_non_child"]["R@1"])
