"""Numpy forward pass of BERT / MPNet sentence encoders, read straight from `model.safetensors`.

Why: importing transformers + torch costs 5-7 s on a 2-core machine, which is most of a cold `retrieve query`.
This module needs only numpy (already imported by everything) and the Rust `tokenizers` package (~0.1 s), maps
the weights with `np.memmap` (no copy, no parsing beyond the safetensors JSON header) and reproduces
`transformers.AutoModel(...).last_hidden_state` to float32 rounding (cosine >= 0.99999 after mean pooling,
checked in tests/test_text_fast.py against the transformers reference). The first load writes the weights in the
forward's layout (q/k/v fused, linear weights transposed) to cache_dir()/text-encoders/; later loads map that file.

`OpenVinoTransformer` runs the same layers through OpenVINO (the default backend where openvino is installed:
2.6-4x faster for one query, tests/test_text_fast.py compares it with this forward).

Covered architectures: `bert` (all-MiniLM-L6-v2, bert-base-uncased) and `mpnet` (all-mpnet-base-v2, which adds a
T5-style relative position bias and position ids offset by the padding index).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
ARCHITECTURES = ("bert", "mpnet")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """name -> read-only array view into one memory map of the file (pages are read on first touch)."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}; expected one of {list(_ST_DTYPES)}")
        start, end = info["data_offsets"]
        out[name] = raw[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _layer_norm(x: FloatArray, w: np.ndarray, b: np.ndarray, eps: float) -> FloatArray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, -1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


_GELU_POLY = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def _gelu(x: FloatArray) -> FloatArray:
    """Exact (erf) GELU; erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7, below float32 noise here).

    In place on two temporaries: the FFN activation is the largest array of the forward, and a naive expression
    (a dozen temporaries) took longer than the matmul that produced it."""
    z = np.abs(x)
    z *= np.float32(1.0 / math.sqrt(2.0))
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _GELU_POLY[0]
    for a in _GELU_POLY[1:]:
        poly += a
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    np.subtract(1.0, poly, out=poly)
    np.copysign(poly, x, out=poly)
    poly += 1.0
    poly *= x
    poly *= 0.5
    return poly.astype(np.float32, copy=False)


def relative_position_bucket(rel: npt.NDArray[np.int64], num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet/T5 bucketing of (key - query) offsets, as in transformers' MPNetEncoder."""
    n = -rel
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    safe = np.maximum(n, 1).astype(np.float32)
    large = max_exact + (np.log(safe / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


def _source_names(arch: str, i: int) -> dict[str, str]:
    """Checkpoint tensor prefixes of layer i, by role."""
    p = f"encoder.layer.{i}."
    if arch == "mpnet":
        a = p + "attention."
        names = (a + "attn.q", a + "attn.k", a + "attn.v", a + "attn.o", a + "LayerNorm")
    else:
        a = p + "attention."
        names = (a + "self.query", a + "self.key", a + "self.value", a + "output.dense", a + "output.LayerNorm")
    return dict(zip(("q", "k", "v", "o", "ln1"), names), up=p + "intermediate.dense", down=p + "output.dense",
                ln2=p + "output.LayerNorm")


def prepare_weights(arch: str, n_layers: int, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> the layout the forward uses: q/k/v fused into one matrix and every linear weight
    stored transposed (in, out) and contiguous, which makes the small-batch matmuls ~20% faster in OpenBLAS."""
    prefix = next((p for p in ("", "bert.", "mpnet.") if f"{p}embeddings.word_embeddings.weight" in raw), None)
    if prefix is None:
        raise ValueError("weights hold no embeddings.word_embeddings.weight; not a BERT/MPNet checkpoint")
    w = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    out = {"word": w["embeddings.word_embeddings.weight"], "pos": w["embeddings.position_embeddings.weight"],
           "ln0.w": w["embeddings.LayerNorm.weight"], "ln0.b": w["embeddings.LayerNorm.bias"]}
    if arch == "mpnet":
        out["rel_bias"] = w["encoder.relative_attention_bias.weight"]
    else:
        out["type0"] = w["embeddings.token_type_embeddings.weight"][0]
    for i in range(n_layers):
        n = _source_names(arch, i)
        out[f"{i}.qkv.w"] = np.ascontiguousarray(np.concatenate([w[n[r] + ".weight"] for r in "qkv"]).T)
        out[f"{i}.qkv.b"] = np.concatenate([w[n[r] + ".bias"] for r in "qkv"])
        for role in ("o", "up", "down"):
            out[f"{i}.{role}.w"] = np.ascontiguousarray(w[n[role] + ".weight"].T)
            out[f"{i}.{role}.b"] = np.asarray(w[n[role] + ".bias"])
        for role in ("ln1", "ln2"):
            out[f"{i}.{role}.w"] = np.asarray(w[n[role] + ".weight"])
            out[f"{i}.{role}.b"] = np.asarray(w[n[role] + ".bias"])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _prepared_cache(folder: Path) -> Path | None:
    """cache_dir()/text-encoders/<name>-<size>-<mtime>.safetensors: keyed by a stat, not a 420 MB hash."""
    try:
        from retrieval.config import cache_dir

        st = (folder / "model.safetensors").stat()
        return cache_dir() / "text-encoders" / f"{folder.name}-{st.st_size}-{st.st_mtime_ns}.safetensors"
    except OSError:
        return None


def _write_prepared(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Atomic (temp file + os.replace); a read-only cache just means preparing again next time."""
    from safetensors.numpy import save_file

    from retrieval.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "retrieval-text-prepared-v1"})
    except OSError:
        return
    _drop_stale_prepared(path)


def _drop_stale_prepared(path: Path) -> None:
    """Delete earlier prepared files of the same checkpoint (same folder name and size, another mtime: a reinstall
    or a fresh venv), which would otherwise pile up (90-420 MB each). At worst, two different checkpoints of equal
    size and folder name evict each other and are prepared again: a cost, never a wrong weight (the key has mtime)."""
    name, size, _ = path.stem.rsplit("-", 2)
    for old in path.parent.glob(f"{name}-{size}-*.safetensors"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass


class NumpyTransformer:
    """`last_hidden_state` of a BERT or MPNet encoder for right-padded (ids, mask) batches."""

    def __init__(self, arch: str, config: dict[str, Any], weights: dict[str, np.ndarray], prepared: bool = False) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"architecture {arch!r} is not supported by the numpy backend; expected {ARCHITECTURES}")
        self.arch = arch
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.n_layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.pad_id = int(config.get("pad_token_id", 1 if arch == "mpnet" else 0))
        self.w = weights if prepared else prepare_weights(arch, self.n_layers, weights)

    @classmethod
    def from_folder(cls, folder: Path, use_cache: bool = True) -> "NumpyTransformer":
        """Load a checkpoint folder; the prepared layout is written to the cache once and memory-mapped after."""
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        arch = str(config.get("model_type", ""))
        cached = _prepared_cache(folder) if use_cache else None
        if cached is not None and cached.is_file():
            return cls(arch, config, read_safetensors(cached), prepared=True)
        model = cls(arch, config, read_safetensors(folder / "model.safetensors"))
        if cached is not None:
            _write_prepared(cached, model.w)
        return model

    # ------------------------------------------------------------------------------------------------ forward
    def _embed(self, ids: np.ndarray) -> FloatArray:
        w = self.w
        x = w["word"][ids]
        if self.arch == "mpnet":
            real = ids != self.pad_id
            x = x + w["pos"][np.cumsum(real, axis=1) * real + self.pad_id]
        else:
            x = x + w["pos"][: ids.shape[1]][None] + w["type0"]
        return _layer_norm(x, w["ln0.w"], w["ln0.b"], self.eps)

    def _position_bias(self, length: int) -> FloatArray | None:
        if self.arch != "mpnet":
            return None
        ar = np.arange(length)
        bucket = relative_position_bucket(ar[None, :] - ar[:, None])
        return np.ascontiguousarray(self.w["rel_bias"][bucket].transpose(2, 0, 1))[None]  # (1, heads, L, L)

    def inputs(self, ids: np.ndarray, mask: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """(embedded tokens (b, L, hidden), additive attention mask broadcastable to (b, heads, L, L)): padding
        keys get -1e9, and MPNet's relative position bias is added in."""
        x = self._embed(ids).astype(np.float32, copy=False)
        add_mask = ((1.0 - mask.astype(np.float32)) * np.float32(-1e9))[:, None, None, :]
        bias = self._position_bias(ids.shape[1])
        if bias is not None:
            add_mask = add_mask + bias
        return x, add_mask

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> FloatArray:
        b, length = ids.shape
        h, dh, hid = self.heads, self.hidden // self.heads, self.hidden
        x, add_mask = self.inputs(ids, mask)
        scale = np.float32(1.0 / math.sqrt(dh))
        w = self.w
        x = x.reshape(b * length, hid)  # token rows: every linear layer is one 2-D GEMM (a 3-D @ is one per sentence)
        for i in range(self.n_layers):
            qkv = (x @ w[f"{i}.qkv.w"] + w[f"{i}.qkv.b"]).reshape(b, length, 3, h, dh).transpose(2, 0, 3, 1, 4)
            scores = (qkv[0] @ qkv[1].transpose(0, 1, 3, 2)) * scale + add_mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ qkv[2]).transpose(0, 2, 1, 3).reshape(b * length, hid)
            x = _layer_norm(ctx @ w[f"{i}.o.w"] + w[f"{i}.o.b"] + x, w[f"{i}.ln1.w"], w[f"{i}.ln1.b"], self.eps)
            inner = _gelu(x @ w[f"{i}.up.w"] + w[f"{i}.up.b"])
            x = _layer_norm(inner @ w[f"{i}.down.w"] + w[f"{i}.down.b"] + x, w[f"{i}.ln2.w"], w[f"{i}.ln2.b"], self.eps)
        return x.reshape(b, length, hid).astype(np.float32, copy=False)


class OpenVinoTransformer:
    """The same encoder layers compiled by OpenVINO for the CPU, built op by op from the prepared weights (no
    tracing or ONNX export; ~0.4 s to compile). Embedding lookup and the attention mask stay in numpy
    (`NumpyTransformer.inputs`). Same hidden states to float32 rounding; one mpnet query on 2 cores: 31 ms vs 107 ms
    for the numpy forward (one BLAS thread) and 70 ms for torch, 55 ms with the other core busy
    (`python benchmarks/bench_text.py [--busy]`).
    Calls are serialised by a lock: one infer request, shared by the server's worker threads."""

    def __init__(self, model: NumpyTransformer, threads: int | None = None, weights: str = "f32") -> None:
        import threading

        self.source = model
        self.hidden = model.hidden
        self.weights = weights
        self._request = _compile_layers(model, threads, weights).create_infer_request()
        self._lock = threading.Lock()
        self(np.array([[model.pad_id + 1] * 3]), np.ones((1, 3), np.int64))  # first inference sets up ~0.1 s of state

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> FloatArray:
        x, add_mask = self.source.inputs(ids, mask)
        with self._lock:
            out = self._request.infer({0: np.ascontiguousarray(x), 1: np.ascontiguousarray(add_mask, np.float32)})[0]
            return np.array(out, np.float32, copy=True)  # the output buffer is reused by the next call


#: Matrix storage of the compiled layers: float32, or INT8 with a float32 scale per output column.
WEIGHTS = ("f32", "int8")


def compress(w: np.ndarray) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """(in, out) float matrix -> (INT8 matrix, (1, out) scales) with w ~= q * scale, symmetric per output column."""
    w = np.asarray(w, np.float32)
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True) / 127.0, np.float32(1e-12)).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def _compile_layers(model: NumpyTransformer, threads: int | None, weights: str = "f32") -> Any:
    """(x (b, L, hidden), additive mask) -> last hidden state, as `NumpyTransformer.__call__` computes it.

    `weights` "int8": every linear layer's matrix is stored compressed (`compress`) and widened to float32 inside
    the matmul (OpenVINO's CPU plugin fuses the convert and scale into the fully-connected kernel), so a short
    query reads a quarter of the bytes; activations, biases, layer norms and attention stay float32."""
    import openvino as ov
    import openvino.opset13 as ops

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")

    w, h, hid = model.w, model.heads, model.hidden
    dh = hid // h

    def const(name: str) -> Any:
        # A copy, not shared_memory=True over the mapped weights: sharing saved ~330 MB, but processes that encoded
        # a batch and exited segfaulted at exit about 1 run in 100 (0 in 200 with copies), most likely the compiled
        # model releasing Python-owned buffers during interpreter shutdown.
        return ops.constant(np.ascontiguousarray(w[name], np.float32))

    def matrix(name: str) -> Any:
        if weights == "f32":
            return const(name)
        q, scale = compress(w[name])
        return ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))

    def linear(x: Any, i: int, role: str) -> Any:
        return ops.add(ops.matmul(x, matrix(f"{i}.{role}.w"), False, False), const(f"{i}.{role}.b"))

    def layer_norm(x: Any, i: int, role: str) -> Any:
        normed = ops.mvn(x, ops.constant(np.array([-1], np.int64)), True, model.eps, "inside_sqrt")
        return ops.add(ops.multiply(normed, const(f"{i}.{role}.w")), const(f"{i}.{role}.b"))

    def shape(*dims: int) -> Any:
        return ops.constant(np.array(dims, np.int64))

    x_in = ops.parameter(ov.PartialShape([-1, -1, hid]), ov.Type.f32, name="x")
    mask = ops.parameter(ov.PartialShape([-1, -1, -1, -1]), ov.Type.f32, name="mask")
    x, scale = x_in, ops.constant(np.float32(1.0 / math.sqrt(dh)))
    for i in range(model.n_layers):
        qkv = ops.transpose(ops.reshape(linear(x, i, "qkv"), shape(0, 0, 3, h, dh), True), shape(2, 0, 3, 1, 4))
        q, k, v = (ops.gather(qkv, ops.constant(np.int64(j)), ops.constant(np.int64(0))) for j in range(3))
        probs = ops.softmax(ops.add(ops.multiply(ops.matmul(q, k, False, True), scale), mask), -1)
        ctx = ops.reshape(ops.transpose(ops.matmul(probs, v, False, False), shape(0, 2, 1, 3)), shape(0, 0, hid), True)
        x = layer_norm(ops.add(linear(ctx, i, "o"), x), i, "ln1")
        inner = ops.gelu(linear(x, i, "up"), "erf")
        x = layer_norm(ops.add(linear(inner, i, "down"), x), i, "ln2")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ov.Model([x], [x_in, mask], f"{model.arch}_encoder"), "CPU", config)


def mean_pool(hidden: FloatArray, mask: np.ndarray) -> FloatArray:
    m = mask.astype(np.float32)[..., None]
    return ((hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)).astype(np.float32)


def load_tokenizer(folder: Path, max_tokens: int | None) -> Any:
    """Tokenizer from tokenizer.json: truncating to `max_tokens` and right-padding (None: neither, for counting)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if max_tokens is None:
        tok.no_truncation()
        tok.no_padding()
        return tok
    tok.enable_truncation(max_length=max_tokens)
    pad_id, pad_token = _pad_token(folder, tok)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
    return tok


def _pad_token(folder: Path, tok: Any) -> tuple[int, str]:
    token = "[PAD]"
    cfg = folder / "special_tokens_map.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("pad_token", token)
        token = value["content"] if isinstance(value, dict) else str(value)
    pad_id = tok.token_to_id(token)
    if pad_id is None:
        raise ValueError(f"pad token {token!r} is not in {folder / 'tokenizer.json'}")
    return int(pad_id), token


def encode_texts(model: NumpyTransformer | OpenVinoTransformer, tokenizer: Any, texts: Sequence[str],
                 batch_size: int = 64) -> FloatArray:
    """Mean-pooled embeddings; texts are batched by length (less padding) and returned in input order."""
    out = np.zeros((len(texts), model.hidden), np.float32)
    if not len(texts):
        return out
    encs = tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [tokenizer.encode(texts[0])]
    lengths = np.array([sum(e.attention_mask) for e in encs])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = int(lengths[rows].max())
        ids = np.array([encs[r].ids[:length] for r in rows], np.int64)
        mask = np.array([encs[r].attention_mask[:length] for r in rows], np.int64)
        out[rows] = mean_pool(model(ids, mask), mask)
    return out
