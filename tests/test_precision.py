"""Encoder precision (retrieval.encoders.precision): the setting, the CLI option, and bf16 features close to float32."""
from __future__ import annotations

import os

import numpy as np
import pytest

from retrieval.encoders import precision
from retrieval.errors import InvalidQueryError
from tests.conftest import require_course_data, run_cli


def test_the_setting_maps_to_openvino_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.inference_precision() == "f32" and precision.training_precision() == "f32"
    monkeypatch.setenv(precision.PRECISION_ENV, "auto")
    assert precision.inference_precision() == ("bf16" if precision.cpu_has_bf16() else "f32")
    assert precision.training_precision() == "f32"  # heads are fitted on float32 features unless bf16 is asked for
    monkeypatch.setenv(precision.PRECISION_ENV, "BF16")
    assert precision.training_precision() == ("bf16" if precision.cpu_has_bf16() else "f32")
    monkeypatch.setenv(precision.PRECISION_ENV, "int4")
    with pytest.raises(InvalidQueryError, match="RETRIEVAL_PRECISION='int4'.*auto, fp32, bf16"):
        precision.inference_precision()


def test_cli_option_sets_the_precision_of_the_process(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    res = run_cli("--precision", "fp32", "query", "a dog", "--index", tmp_path / "missing")
    assert res.exit_code != 0 and os.environ[precision.PRECISION_ENV] == "fp32"
    assert run_cli("--precision", "int8", "query", "x", "--index", tmp_path).exit_code == 2  # click refuses it


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2-hires"])
def test_bf16_features_stay_close_to_float32(name: str) -> None:
    """bf16 moves pooled features by < 1 % in cosine on real photos, and a different precision is a different
    compiled encoder (the per-process cache keys on it)."""
    from PIL import Image

    from retrieval.encoders import build_image_encoder

    if not precision.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 arithmetic: OpenVINO runs float32 either way")
    folder = require_course_data("train_images") / "train_images"
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:8]]
    f32 = build_image_encoder(name, views=("center", "full"), precision="f32")
    b16 = build_image_encoder(name, views=("center", "full"), precision="bf16")
    assert f32 is not b16 and f32.checksum() == b16.checksum()
    items = [f32.preprocess(im) for im in images]
    a, b = f32.embed_batch(items), b16.embed_batch(items)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99 and cos.mean() > 0.998
    assert not np.allclose(a, b)  # bf16 really ran: it rounds
