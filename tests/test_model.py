"""Model folder: save/load round trip, integrity and encoder checks, no torch needed to load."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from retrieval.errors import ModelMismatchError
from retrieval.learn.model import ModelConfig, RetrievalModel
from retrieval.learn.projection import LinearProjection
from retrieval.learn.reranker import Calibration, Reranker, build_memory


def _model(seed: int = 0) -> RetrievalModel:
    rng = np.random.default_rng(seed)
    proj = LinearProjection(rng.normal(size=12).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32),
                            rng.normal(size=10).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    memory = build_memory(unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(12, 4))), np.repeat(np.arange(6), 2), k=3)
    rr = Reranker(rng.normal(size=6).astype(np.float32), 0.3,
                  Calibration(np.array([-3, 0, 3], np.float32), np.array([0.05, 0.4, 0.97], np.float32)), memory)
    cfg = ModelConfig(image_encoder="fake-image", image_encoder_checksum="aaa", image_views=("center",),
                      text_encoder="fake-text", text_encoder_checksum="bbb", image_dim=12, text_dim=10, dim=4)
    return RetrievalModel(cfg, proj, rr)


def test_save_load_round_trip_identical_outputs(tmp_path):
    m = _model()
    m.save(tmp_path / "m")
    again = RetrievalModel.load(tmp_path / "m")
    rng = np.random.default_rng(5)
    fi, ft = rng.normal(size=(7, 12)), rng.normal(size=(7, 10))
    np.testing.assert_array_equal(m.project_images(fi), again.project_images(fi))
    np.testing.assert_array_equal(m.project_texts(ft), again.project_texts(ft))
    zi, zt = again.project_images(fi), again.project_texts(ft)
    np.testing.assert_array_equal(m.score(zi, zt), again.score(zi, zt))
    s = again.score(zi, zt)
    assert s.shape == (7,) and (s >= 0).all() and (s <= 1).all()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_id"] == again.config.model_id and len(cfg["model_id"]) == 64
    assert again.config.image_views == ("center",)


def test_save_replaces_existing_folder(tmp_path):
    _model(0).save(tmp_path / "m")
    _model(1).save(tmp_path / "m")
    x = np.ones((2, 10))
    np.testing.assert_array_equal(RetrievalModel.load(tmp_path / "m").project_texts(x), _model(1).project_texts(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp or backup folders left behind


def test_other_encoders_raise_model_mismatch_naming_both_pairs(tmp_path):
    _model().save(tmp_path / "m")
    with pytest.raises(ModelMismatchError) as err:
        RetrievalModel.load(tmp_path / "m", image_encoder="efficientnet-lite0", text_encoder="all-mpnet-base-v2")
    msg = str(err.value)
    assert "fake-image" in msg and "fake-text" in msg and "efficientnet-lite0" in msg and "all-mpnet-base-v2" in msg
    with pytest.raises(ModelMismatchError):
        RetrievalModel.load(tmp_path / "m", text_checksum="other")
    RetrievalModel.load(tmp_path / "m", image_encoder="fake-image", text_encoder="fake-text", image_checksum="aaa")


def test_tampered_weights_and_newer_format_are_refused(tmp_path):
    _model().save(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelMismatchError):
        RetrievalModel.load(tmp_path / "m")
    _model().save(tmp_path / "m2")
    cfg_path = tmp_path / "m2" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatchError, match="format_version 99"):
        RetrievalModel.load(tmp_path / "m2")


def test_loading_does_not_import_torch(tmp_path):
    _model().save(tmp_path / "m")
    code = ("import sys, numpy as np; from retrieval.learn.model import RetrievalModel; "
            f"m = RetrievalModel.load({str(tmp_path / 'm')!r}); m.score(m.project_images(np.ones((1, 12))), "
            "m.project_texts(np.ones((1, 10)))); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rank_key_blends_reranker_logit_and_cosine():
    from dataclasses import replace

    m = _model()
    rng = np.random.default_rng(9)
    zi, zt = m.project_images(rng.normal(size=(5, 12))), m.project_texts(rng.normal(size=(1, 10)))
    cos = (zi * zt).sum(axis=1)
    np.testing.assert_allclose(m.rank_key(zi, zt[0]), cos, rtol=1e-6)  # default: plain cosine
    m.config = replace(m.config, rank_logit_weight=1.0, rank_cos_weight=3.0)
    np.testing.assert_allclose(m.rank_key(zi, zt[0]), m.reranker.logit(zi, zt) + 3.0 * cos, rtol=1e-5)


def test_rank_grid_equals_rank_key_per_query_for_every_blend():
    from dataclasses import replace

    m = _model()
    rng = np.random.default_rng(11)
    zi, zt = m.project_images(rng.normal(size=(6, 12))), m.project_texts(rng.normal(size=(4, 10)))
    for a, b in ((0.0, 1.0), (1.0, 0.0), (1.0, 2.0)):
        m.config = replace(m.config, rank_logit_weight=a, rank_cos_weight=b)
        grid = m.rank_grid(zi, zt)
        assert grid.shape == (4, 6)
        for q in range(4):
            np.testing.assert_allclose(grid[q], m.rank_key(zi, zt[q]), rtol=1e-5, atol=1e-5)
