"""Inference precision of the OpenVINO image encoders: bf16 where the CPU runs it natively, else float32.

Why: on CPUs with bf16 units (AMX / AVX512-BF16; OpenVINO lists "BF16" among the CPU's optimisation capabilities)
the EfficientNet-Lite passes (the index's image encoder and the child detector's crop encoder) run 1.5-2.5x faster
in bf16, and the pooled features stay within cosine 0.995 of float32 (benchmarks/bench_precision.py; the 10-fold
retrieval numbers on bf16 features are in docs/performance.md). The networks are not changed, only how OpenVINO
computes them, so encoder checksums, models and indexes stay valid across precisions.

The text encoder's OpenVINO layers keep their matrices in INT8 (weight-only, symmetric per output column, computed
in float32; `text_fast.compress`): one short query is memory-bound on reading 110M weights, so mpnet's query went
from 23 to 10 ms, embeddings within cosine 0.998 of float32, and heads retrained on such features keep every course
number (docs/performance.md). bf16 measured no faster there. Training embeds the course texts in float32 either way
(`TRAINING_TEXT_WEIGHTS`), so a model is the same on every machine.

`RETRIEVAL_PRECISION` = auto (default: bf16 if the CPU has it, else fp32) | fp32 (the float path, e.g. to compare) |
bf16 (bf16 where available; OpenVINO falls back to float32 on CPUs without it).
"""
from __future__ import annotations

import os
from functools import lru_cache

from retrieval.errors import InvalidQueryError

PRECISION_ENV = "RETRIEVAL_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")


def requested_precision() -> str:
    value = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise InvalidQueryError(f"{PRECISION_ENV}={value!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    return value


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO or no CPU plugin: the float path
        return False


#: Weights of the text encoder's OpenVINO layers when training embeds the course texts.
TRAINING_TEXT_WEIGHTS = "f32"


def text_weights() -> str:
    """How the query-time text encoder stores its matrices: "int8" (default) or "f32" (`RETRIEVAL_PRECISION=fp32`)."""
    return "f32" if requested_precision() == "fp32" else "int8"


def inference_precision() -> str:
    """The OpenVINO `INFERENCE_PRECISION_HINT` for the encoders: "bf16" or "f32"."""
    wanted = requested_precision()
    if wanted == "fp32":
        return "f32"
    return "bf16" if cpu_has_bf16() else "f32"


def training_precision() -> str:
    """The precision of the course features the heads are fitted on: float32 (the reference the shipped models were
    trained on), unless RETRIEVAL_PRECISION=bf16 asks for bf16 explicitly (to measure what bf16 features cost)."""
    return "bf16" if requested_precision() == "bf16" and cpu_has_bf16() else "f32"
