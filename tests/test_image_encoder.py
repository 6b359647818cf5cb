"""Image encoder backends: the fast forward passes must compute the reference model's features.

Fast tests use randomly initialised networks (with random BatchNorm statistics, so the BN folding is exercised);
the slow tests load the shipped EfficientNet-Lite weights and real course images and also check that the ImageNet
top-1 class (the published classifier applied to both sets of features) is unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from retrieval.encoders import image as image_mod  # noqa: E402
from retrieval.encoders import lite_fast  # noqa: E402
from retrieval.errors import EncoderUnavailableError  # noqa: E402
from tests.conftest import require_course_data

needs_openvino = pytest.mark.skipif(not lite_fast.openvino_available(), reason="openvino is not installed")


@pytest.fixture(autouse=True)
def _float_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the float path against the reference; bf16 is tests/test_precision.py's."""
    monkeypatch.setenv("RETRIEVAL_PRECISION", "fp32")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _random_lite(name: str = "efficientnet-lite0", seed: int = 0):
    """Lite net with random weights AND random BN statistics (default ones would make BN an identity)."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    net = EfficientNet.from_name(name)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _random_images(n: int, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (300, 400) if i % 2 else (410, 290)
        base = rng.integers(0, 256, size=(h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
        out.append(Image.fromarray(base).resize((w, h), Image.BILINEAR))  # smooth, image-like structure
    return out


@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lite") / "lite0-random.pth"
    torch.save(_random_lite().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference_features(lite_weights: Path):
    enc = image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, ("center", "full"), backend="reference")
    items = [enc.preprocess(im) for im in _random_images(5)]
    return items, enc.embed_batch(items)


def test_spec_covers_asymmetric_same_padding() -> None:
    spec = lite_fast.lite_spec(_random_lite(), 224)
    convs = [spec.stem, spec.head] + [c for b in spec.blocks for c in (b.expand, b.depthwise, b.project) if c]
    assert any(not c.symmetric for c in convs), "Lite0 stride-2 convs use TF 'same' (0,1) padding"
    assert any(c.symmetric and c.pads[0] > 0 for c in convs)
    assert any(b.residual for b in spec.blocks) and any(not b.residual for b in spec.blocks)


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_fast_lite_backend_matches_reference(backend: str, lite_weights: Path, reference_features) -> None:
    items, ref = reference_features
    enc = image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, ("center", "full"), backend=backend)
    assert enc.backend == backend
    feats = enc.embed_batch(items)
    assert feats.shape == (5, 1280) and feats.dtype == np.float32
    assert _cos(feats, ref).min() > 0.9999
    np.testing.assert_allclose(feats, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_reference_is_the_published_module(lite_weights: Path) -> None:
    net = _random_lite()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = net.extract_features(x).mean(dim=(2, 3))
    enc = image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, backend="reference")
    np.testing.assert_allclose(enc.forward(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_chunked_forward_equals_one_batch(monkeypatch: pytest.MonkeyPatch, lite_weights: Path, reference_features) -> None:
    items, _ = reference_features
    enc = image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, ("center", "full"), backend="torch")
    whole = enc.embed_batch(items[:3])
    monkeypatch.setattr(image_mod, "MAX_FORWARD_BATCH", 4)  # 6 view-images -> chunks of 4 and 2
    np.testing.assert_allclose(enc.embed_batch(items[:3]), whole, rtol=1e-4, atol=1e-5)
    assert enc.embed_batch([]).shape == (0, 1280)


def test_backend_choice_and_errors(monkeypatch: pytest.MonkeyPatch, lite_weights: Path) -> None:
    auto = image_mod.efficientnet_lite("efficientnet-lite0", lite_weights)
    assert auto.backend == ("openvino" if lite_fast.openvino_available() else "torch")
    assert auto.id == "efficientnet-lite0"  # the backend never changes the id: indexes stay interchangeable
    monkeypatch.setenv(image_mod.BACKEND_ENV, "reference")
    assert image_mod.efficientnet_lite("efficientnet-lite0", lite_weights).backend == "reference"
    with pytest.raises(ValueError, match="'fast-please'"):
        image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, backend="fast-please")
    monkeypatch.setattr(lite_fast, "openvino_available", lambda: False)
    assert image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, backend="auto").backend == "torch"
    with pytest.raises(EncoderUnavailableError, match="openvino"):
        image_mod.efficientnet_lite("efficientnet-lite0", lite_weights, backend="openvino")


def test_lite_spec_refuses_swish_models() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    with pytest.raises(ValueError, match="Lite variants only"):
        lite_fast.lite_spec(EfficientNet.from_name("efficientnet-b0"), 224)


@pytest.mark.parametrize("name", ["resnet18"])
def test_resnet_folded_matches_reference(name: str) -> None:
    torch.manual_seed(0)
    ref = image_mod.resnet(name, random_init=True, views=("center", "full-flip"), backend="reference")
    fast = image_mod.resnet(name, random_init=True, views=("center", "full-flip"), backend="auto")
    fast.net.load_state_dict(ref.net.state_dict())  # random init differs per call; compare the same weights
    fast._forward = None
    assert (ref.backend, fast.backend) == ("reference", "torch")
    assert fast.id == f"{name}[center,full-flip]" and fast.dim == 512
    items = [ref.preprocess(im) for im in _random_images(3, seed=1)]
    a, b = ref.embed_batch(items), fast.embed_batch(items)
    assert a.shape == (3, 512)
    assert _cos(a, b).min() > 0.9999


def test_preprocess_layout() -> None:
    enc = image_mod.resnet("resnet18", random_init=True, views=("center", "full-flip"), backend="reference")
    image = _random_images(1)[0]
    item = enc.preprocess(image)
    assert item.dtype == torch.uint8 and tuple(item.shape) == (2, 3, 224, 224)
    expected = np.asarray(image_mod.VIEWS["full-flip"](image, 224)).transpose(2, 0, 1)
    np.testing.assert_array_equal(item[1].numpy(), expected)


def test_views_are_averaged() -> None:
    enc = image_mod.resnet("resnet18", random_init=True, views=("center", "full"), backend="reference")
    single = {v: image_mod.resnet("resnet18", random_init=True, views=(v,), backend="reference") for v in ("center", "full")}
    for e in single.values():
        e.net.load_state_dict(enc.net.state_dict())
    images = _random_images(2, seed=2)
    both = enc.embed_batch([enc.preprocess(im) for im in images])
    parts = [e.embed_batch([e.preprocess(im) for im in images]) for e in single.values()]
    np.testing.assert_allclose(both, (parts[0] + parts[1]) / 2, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def lite2_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lite2") / "lite2-random.pth"
    torch.save(_random_lite("efficientnet-lite2", seed=1).state_dict(), path)
    return path


def test_hires_variant_is_lite2_whole_frame_mean_and_max(lite2_weights: Path) -> None:
    """efficientnet-lite2-hires = the Lite2 trunk on the whole frame at 384 px, [mean, max] of the head, each half
    L2-normalised; it keeps its own view whatever the caller asks for."""
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    from retrieval.encoders import part_views

    enc = image_mod.efficientnet_lite("efficientnet-lite2-hires", lite2_weights, ("center", "full"), backend="reference")
    assert enc.views == ("full",) and enc.dim == 2560 and enc.id == "efficientnet-lite2-hires[full]"
    assert part_views("efficientnet-lite2-hires", ("center", "full")) == ("full",)
    assert part_views("efficientnet-lite2", ("center", "full")) == ("center", "full")
    images = _random_images(2, seed=3)
    item = enc.preprocess(images[0])
    assert tuple(item.shape) == (1, 3, 384, 384)
    np.testing.assert_array_equal(item[0].numpy(), np.asarray(images[0].resize((384, 384), Image.BILINEAR)).transpose(2, 0, 1))

    net = EfficientNet.from_name("efficientnet-lite2", image_size=384)
    net.load_state_dict(torch.load(lite2_weights, weights_only=True))
    x = (torch.from_numpy(np.asarray(images[0].resize((384, 384), Image.BILINEAR), np.float32)).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5
    with torch.no_grad():
        head = net.eval().extract_features(x)
    mean, mx = head.mean((2, 3))[0].numpy(), head.amax((2, 3))[0].numpy()
    expected = np.concatenate([mean / np.linalg.norm(mean), mx / np.linalg.norm(mx)])
    np.testing.assert_allclose(enc.embed_batch([item])[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_fast_backends_match_reference_for_mean_max_pooling(backend: str, lite2_weights: Path) -> None:
    ref = image_mod.efficientnet_lite("efficientnet-lite2-hires", lite2_weights, backend="reference")
    enc = image_mod.efficientnet_lite("efficientnet-lite2-hires", lite2_weights, backend=backend)
    items = [ref.preprocess(im) for im in _random_images(3, seed=4)]
    a, b = enc.embed_batch(items), ref.embed_batch(items)
    assert a.shape == (3, 2560)
    assert _cos(a[:, :1280], b[:, :1280]).min() > 0.9999 and _cos(a[:, 1280:], b[:, 1280:]).min() > 0.9999


def test_unknown_lite_variant_and_pool_are_refused() -> None:
    with pytest.raises(ValueError, match="efficientnet-lite2-hires"):
        image_mod.efficientnet_lite("efficientnet-lite9")
    with pytest.raises(ValueError, match="meanmax"):
        lite_fast.lite_spec(_random_lite(), 224, "gem")


# ----------------------------------------------------------------------------------- real weights, real images


def _course_images(n: int) -> list:
    from PIL import Image

    folder = require_course_data("train_images") / "train_images"
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:n]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2-hires"])
def test_real_lite_backends_equivalent(name: str) -> None:
    try:
        ref = image_mod.efficientnet_lite(name, backend="reference")
    except EncoderUnavailableError as exc:
        pytest.skip(str(exc))
    images = _course_images(24)
    items = [ref.preprocess(im) for im in images]
    ref_feats = ref.embed_batch(items)
    fc = ref.net.inner._fc
    classify = ref.dim == 1280  # the published classifier reads the mean pool; the hires part is [mean, max] normed
    with torch.no_grad():
        ref_top1 = fc(torch.from_numpy(ref_feats)).argmax(1).numpy() if classify else None
    backends = ["torch"] + (["openvino"] if lite_fast.openvino_available() else [])
    for backend in backends:
        enc = image_mod.efficientnet_lite(name, backend=backend)
        assert enc.checksum() == ref.checksum()
        feats = enc.embed_batch(items)
        for half in range(ref.dim // 1280):
            block = slice(1280 * half, 1280 * (half + 1))
            assert _cos(feats[:, block], ref_feats[:, block]).min() >= 0.999, backend
        if not classify:
            continue
        with torch.no_grad():
            top1 = fc(torch.from_numpy(feats)).argmax(1).numpy()
        np.testing.assert_array_equal(top1, ref_top1, err_msg=f"{name} {backend}: ImageNet top-1 changed")


@pytest.mark.slow
def test_training_features_equal_the_live_default_encoder() -> None:
    """The model is trained on cached per-view course features and serves the live "+"-joined encoder: both must
    give the same vectors (views averaged per part, parts normalised and weighted alike)."""
    from retrieval.encoders import build_image_encoder
    from retrieval.learn.features import _decode, combine_image_features
    from retrieval.learn.train import DEFAULT_IMAGE_ENCODER, DEFAULT_VIEWS

    folder = require_course_data("train_images") / "train_images"
    try:
        enc = build_image_encoder(DEFAULT_IMAGE_ENCODER, views=DEFAULT_VIEWS)
    except EncoderUnavailableError as exc:
        pytest.skip(str(exc))
    names, cached = combine_image_features(folder.parent, DEFAULT_IMAGE_ENCODER, DEFAULT_VIEWS)
    live = enc.embed_batch([enc.preprocess(_decode(folder / n)) for n in names[:6]])
    assert live.shape == cached[:6].shape == (6, enc.dim)
    assert _cos(live, cached[:6]).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(live, axis=1), np.linalg.norm(cached[:6], axis=1), rtol=1e-4)
