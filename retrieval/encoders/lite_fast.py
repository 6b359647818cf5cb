"""Inference-only fast paths for EfficientNet-Lite, numerically equivalent to the PyPI reference model.

Why: the `efficientnet_lite_pytorch` module runs eval BatchNorm, ReLU6 and TF-"same" ZeroPad2d copies as separate
passes over every activation. On a 2-core CPU those memory-bound passes cost more than the convolutions, and each
fresh 10-150 MB activation buffer is page-faulted in again by glibc (measured: ~40% of the time is kernel time).

What changes (and why it is still the same function): BatchNorm is folded into the conv weights in float64; ReLU6
runs in place; symmetric "same" pads become conv padding; the asymmetric stride-2 pads are given to OpenVINO's
convolution directly (pads_begin/pads_end), or, in the torch fallback, written as a zero border around the
activation as it is produced. Features differ from the reference only by float32 rounding (cosine > 0.99999,
see tests/test_image_encoder.py). Two backends: an OpenVINO graph built straight from the folded weights (no
tracing or ONNX export: ~0.3 s to compile) and a plain torch module (used when openvino is not installed).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """One conv with BN folded in. `pads` = (top, left, bottom, right) zero padding, TF "same" style."""

    weight: FloatArray  # (out, in / groups, kh, kw)
    bias: FloatArray  # (out,)
    stride: int
    pads: tuple[int, int, int, int]
    groups: int
    relu6: bool

    @property
    def symmetric(self) -> bool:
        return self.pads[0] == self.pads[2] and self.pads[1] == self.pads[3]


@dataclass(frozen=True, eq=False)
class BlockSpec:
    expand: ConvSpec | None
    depthwise: ConvSpec
    project: ConvSpec
    residual: bool


@dataclass(frozen=True, eq=False)
class LiteSpec:
    """The whole trunk up to the 1280-channel head; pooled features = mean over H, W of the head output, then (pool
    "meanmax") its max over H, W."""

    size: int
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec
    pool: str = "mean"


def _conv_spec(conv: Any, bn: Any, relu6: bool) -> ConvSpec:
    import torch

    pad = conv.static_padding
    left, right, top, bottom = tuple(pad.padding) if isinstance(pad, torch.nn.ZeroPad2d) else (0, 0, 0, 0)
    assert conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.stride[0] == conv.stride[1]
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    return ConvSpec(
        weight=(w * scale.view(-1, 1, 1, 1)).float().numpy(),
        bias=bias.float().numpy(),
        stride=int(conv.stride[0]),
        pads=(top, left, bottom, right),
        groups=int(conv.groups),
        relu6=relu6,
    )


def lite_spec(net: Any, size: int, pool: str = "mean") -> LiteSpec:
    """Folded description of an `efficientnet_lite_pytorch.EfficientNet` (Lite0-4: ReLU6, no squeeze-excite)."""
    import torch

    if not isinstance(net._swish, torch.nn.ReLU6) or any(b.has_se for b in net._blocks):
        raise ValueError("fast EfficientNet path supports the Lite variants only (ReLU6, no squeeze-excite)")
    blocks = []
    for b in net._blocks:
        a = b._block_args
        blocks.append(
            BlockSpec(
                expand=_conv_spec(b._expand_conv, b._bn0, True) if a.expand_ratio != 1 else None,
                depthwise=_conv_spec(b._depthwise_conv, b._bn1, True),
                project=_conv_spec(b._project_conv, b._bn2, False),
                residual=bool(a.id_skip and a.stride == 1 and a.input_filters == a.output_filters),
            )
        )
    if pool not in ("mean", "meanmax"):
        raise ValueError(f"pool {pool!r} is not supported; choose 'mean' or 'meanmax'")
    return LiteSpec(size, _conv_spec(net._conv_stem, net._bn0, True), tuple(blocks),
                    _conv_spec(net._conv_head, net._bn1, True), pool)


# ---------------------------------------------------------------------------------------------------- OpenVINO


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_model(spec: LiteSpec, conv_input: Callable[[Any], Any] | None = None,
                   conv_weight: Callable[[np.ndarray], Any] | None = None) -> Any:
    """`spec` as an OpenVINO graph: (B,3,S,S) float32 normalised -> (B,1280) pooled features (B,2560 for "meanmax").
    `conv_input` / `conv_weight` may rewrite each convolution's input node / weight constant (in graph order):
    benchmarks/bench_int8.py fake-quantises them."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter(ov.PartialShape([-1, 3, spec.size, spec.size]), ov.Type.f32, name="images")
    weight = conv_weight or ops.constant

    def conv(h: Any, c: ConvSpec) -> Any:
        h = conv_input(h) if conv_input is not None else h
        args = ([c.stride, c.stride], list(c.pads[:2]), list(c.pads[2:]), [1, 1])
        if c.groups == 1:
            y = ops.convolution(h, weight(c.weight), *args)
        else:
            o, i, kh, kw = c.weight.shape
            w = c.weight.reshape(c.groups, o // c.groups, i, kh, kw)
            y = ops.group_convolution(h, weight(w), *args)
        y = ops.add(y, ops.constant(c.bias.reshape(1, -1, 1, 1)))
        return ops.clamp(y, 0.0, 6.0) if c.relu6 else y

    h = conv(x, spec.stem)
    for b in spec.blocks:
        y = conv(h, b.expand) if b.expand is not None else h
        y = conv(conv(y, b.depthwise), b.project)
        h = ops.add(y, h) if b.residual else y
    h = conv(h, spec.head)
    axes = ops.constant(np.array([2, 3], np.int64))
    pooled = ops.reduce_mean(h, axes, keep_dims=False)
    if spec.pool == "meanmax":
        pooled = ops.concat([pooled, ops.reduce_max(h, axes, keep_dims=False)], 1)
    return ov.Model([pooled], [x], "efficientnet_lite_pooled")


def openvino_forward(spec: LiteSpec, threads: int, precision: str = "f32") -> Callable[[FloatArray], FloatArray]:
    """Compile `spec` (`openvino_model`) for the CPU.

    `precision` is OpenVINO's INFERENCE_PRECISION_HINT, "f32" or "bf16" (`retrieval.encoders.precision`): pinned,
    because on CPUs with bf16/AMX OpenVINO would otherwise pick bf16 by itself.
    """
    if precision not in ("f32", "bf16"):
        raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")

    import openvino as ov

    model = openvino_model(spec)
    config = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "INFERENCE_PRECISION_HINT": precision,
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def forward(batch: FloatArray) -> FloatArray:
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return forward


# ---------------------------------------------------------------------------------------------------- torch


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Stop glibc from handing big freed buffers back to the kernel (process-wide, Linux only).

    Why: every conv output is a fresh 10-150 MB tensor; with glibc's defaults each one is mmap'ed and
    page-faulted in again, which measured ~40% of the torch forward time on the 2-core box. Cost: the process
    keeps its peak heap (a few hundred MB for batch 32) until it exits. Returns False where it does not apply.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def lite_pool(head: Any, pool: str) -> Any:
    """(B, C, H, W) head activations -> (B, C) mean pool, or (B, 2C) [mean, max] for "meanmax"."""
    import torch

    if pool == "mean":
        return head.mean(dim=(2, 3))
    return torch.cat([head.mean(dim=(2, 3)), head.amax(dim=(2, 3))], dim=1)


def torch_module(spec: LiteSpec) -> Any:
    """Plain torch module for `spec` (eval, channels_last). Input (B,3,S,S) float32 -> pooled (B,1280 or 2560)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def make_conv(c: ConvSpec, pad_in_conv: bool) -> nn.Conv2d:
        o, i, kh, kw = c.weight.shape
        padding = (c.pads[0], c.pads[1]) if pad_in_conv else (0, 0)
        m = nn.Conv2d(i * c.groups, o, (kh, kw), c.stride, padding, groups=c.groups, bias=True)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(c.weight))
            m.bias.copy_(torch.from_numpy(c.bias))
        return m

    def padded_relu6(y: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
        """ReLU6 written into a zero-bordered buffer: the asymmetric pad costs no extra pass over `y`."""
        top, left, bottom, right = pads
        n, ch, h, w = y.shape
        buf = torch.empty((n, ch, h + top + bottom, w + left + right), dtype=y.dtype,
                          memory_format=torch.channels_last)
        buf[:, :, :top].zero_()
        buf[:, :, top + h:].zero_()
        buf[:, :, :, :left].zero_()
        buf[:, :, :, left + w:].zero_()
        torch.clamp(y, 0.0, 6.0, out=buf[:, :, top:top + h, left:left + w])
        return buf

    class Block(nn.Module):
        def __init__(self, b: BlockSpec) -> None:
            super().__init__()
            self.expand = make_conv(b.expand, True) if b.expand is not None else None
            self.pads = b.depthwise.pads
            self.sym = b.depthwise.symmetric
            self.depthwise = make_conv(b.depthwise, self.sym)
            self.project = make_conv(b.project, True)
            self.residual = b.residual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand is not None:
                y = self.expand(x)
                y = F.hardtanh_(y, 0.0, 6.0) if self.sym else padded_relu6(y, self.pads)
            elif not self.sym:
                t, l, b, r = self.pads
                y = F.pad(y, (l, r, t, b))
            y = self.project(F.hardtanh_(self.depthwise(y), 0.0, 6.0))
            return y.add_(x) if self.residual else y

    class TorchLite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            t, l, b, r = spec.stem.pads
            self.stem_pad = (l, r, t, b)
            self.stem = make_conv(spec.stem, False)
            self.blocks = nn.Sequential(*[Block(b) for b in spec.blocks])
            self.head = make_conv(spec.head, True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.hardtanh_(self.stem(F.pad(x, self.stem_pad)), 0.0, 6.0)
            x = F.hardtanh_(self.head(self.blocks(x)), 0.0, 6.0)
            return lite_pool(x, spec.pool)

    return TorchLite().eval().to(memory_format=torch.channels_last)
