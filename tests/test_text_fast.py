"""The numpy text backend must reproduce the transformers reference (same token ids, cosine >= 0.999)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from retrieval.encoders import text_fast


def test_gelu_matches_erf_definition() -> None:
    x = np.linspace(-8, 8, 2001, dtype=np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.max(np.abs(text_fast._gelu(x) - ref)) < 2e-6


def test_relative_position_bucket_matches_reference_formula() -> None:
    rel = np.arange(-300, 301)[None, :]
    got = text_fast.relative_position_bucket(rel)[0]

    def ref(r: int, num_buckets: int = 32, max_distance: int = 128) -> int:  # transformers' formula, scalar form
        n, half = -r, num_buckets // 2
        ret = half if n < 0 else 0
        n, max_exact = abs(n), half // 2
        if n < max_exact:
            return ret + n
        large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
        return ret + min(large, half - 1)

    assert got.tolist() == [ref(int(r)) for r in rel[0]]


def test_read_safetensors_round_trip(tmp_path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32), "ids": np.arange(7, dtype=np.int64)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    back = text_fast.read_safetensors(tmp_path / "m.safetensors")
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_numpy_forward_matches_transformers_on_tiny_random_model(tmp_path, monkeypatch, arch: str) -> None:
    """Architecture check without real weights: a seeded tiny BERT/MPNet, padded batch, hidden states compared;
    then the prepared-weights cache: the second load maps the cached file and gives the same output."""
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64)
    if arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(**common))
    else:
        model = transformers.MPNetModel(transformers.MPNetConfig(**common))
    model.eval().save_pretrained(tmp_path / "model")
    ours = text_fast.NumpyTransformer.from_folder(tmp_path / "model")
    pad = ours.pad_id
    ids = np.array([[5, 17, 42, 8, 3, 9, 11], [5, 60, 7, pad, pad, pad, pad]], np.int64)
    mask = (np.arange(7)[None, :] < np.array([[7], [3]])).astype(np.int64)
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    got = ours(ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(text_fast.mean_pool(got, mask), text_fast.mean_pool(ref, mask), atol=1e-5)

    cached = list((tmp_path / "cache" / "text-encoders").glob("model-*.safetensors"))
    assert len(cached) == 1
    # a reinstall (same checkpoint, new mtime) prepares again and drops the stale file; other checkpoints stay
    other = cached[0].parent / "model-12345-1.safetensors"
    other.write_bytes(b"another checkpoint")
    os.utime(tmp_path / "model" / "model.safetensors", ns=(1, 10**18))
    text_fast.NumpyTransformer.from_folder(tmp_path / "model")
    now = sorted(p.name for p in cached[0].parent.glob("model-*.safetensors"))
    assert now == sorted([other.name, text_fast._prepared_cache(tmp_path / "model").name]) and cached[0].name not in now
    again = text_fast.NumpyTransformer.from_folder(tmp_path / "model")
    assert isinstance(again.w["0.qkv.w"], np.memmap)  # mapped from the cache, not prepared again
    np.testing.assert_array_equal(again(ids, mask), got)

    pytest.importorskip("openvino")
    compiled = text_fast.OpenVinoTransformer(again)
    for rows in (slice(0, 2), slice(1, 2)):  # the padded batch, then one sentence alone (another input shape)
        np.testing.assert_allclose(compiled(ids[rows], mask[rows])[real[rows]], ref[rows][real[rows]], atol=1e-4, rtol=1e-4)
    # INT8 matrices: really compressed (not the float32 graph), and still the same sentence vectors
    int8 = text_fast.OpenVinoTransformer(again, weights="int8")
    a, b = text_fast.mean_pool(int8(ids, mask), mask), text_fast.mean_pool(ref, mask)
    assert not np.allclose(a, b, atol=1e-5)
    assert (np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.999


def test_compress_keeps_each_column_within_half_a_step() -> None:
    w = np.random.default_rng(0).normal(size=(48, 20)).astype(np.float32) * np.linspace(0.01, 3, 20, dtype=np.float32)
    q, scale = text_fast.compress(w)
    assert q.dtype == np.int8 and scale.shape == (1, 20) and np.abs(q).max() == 127
    assert (np.abs(q * scale - w) <= scale / 2 + 1e-7).all()  # per column: small columns keep their resolution
    with pytest.raises(ValueError):
        text_fast._compile_layers(None, None, "int4")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- real models (slow)
@pytest.fixture(scope="module")
def course_texts() -> list[str]:
    from tests.conftest import require_course_data

    data = require_course_data("train_dataset.csv")
    from retrieval.learn.features import course_texts as load_texts

    texts = sorted(load_texts(data))
    rng = np.random.default_rng(0)
    picked = [texts[i] for i in rng.choice(len(texts), 100, replace=False)]
    # Edge cases: one word, punctuation, non-ASCII, a text longer than 128 tokens (truncation must match).
    return picked + ["dog", "A dog ... running!!", "Ein Hund läuft über die Wiese – café", " ".join(texts[:40])]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "openvino", "openvino-int8"])
@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
def test_fast_backends_match_transformers_on_course_texts(name: str, backend: str, course_texts: list[str]) -> None:
    """float32 backends within cosine 0.999 of transformers; INT8 matrices (the query default) within 0.995
    (measured: worst 0.9968, a 128-token text; short captions >= 0.998)."""
    from retrieval.encoders import text

    try:
        folder = text.minilm_path() if name == "all-MiniLM-L6-v2" else text.mpnet_path()
    except Exception as exc:  # the weights packages are optional for the fast suite
        pytest.skip(f"{name} weights not installed: {exc}")
    weights = "int8" if backend.endswith("-int8") else "f32"
    backend = backend.removesuffix("-int8")
    if backend == "openvino":
        pytest.importorskip("openvino")
    ref = text.load(name, folder, 128, backend="transformers")
    fast = text.load(name, folder, 128, backend=backend, weights=weights)
    assert isinstance(fast, text.FastTextEncoder) and isinstance(ref, text.HFTextEncoder)
    assert fast.dim == ref.dim and fast.checksum() == ref.checksum()

    for t in course_texts[-4:] + course_texts[:20]:
        assert fast.n_tokens(t) == ref.n_tokens(t)
        ids_ref = ref.tokenizer(t, truncation=True, max_length=128)["input_ids"]
        assert fast.tokenizer.encode(t).ids == ids_ref
    a, b = ref.encode(course_texts), fast.encode(course_texts)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= (0.995 if weights == "int8" else 0.999), f"worst cosine {cos.min():.6f} for {course_texts[int(cos.argmin())]!r}"
    assert (fast.forward is not None) == (backend == "openvino")  # a batch compiles the OpenVINO layers
    # A single query gives the same vector as the batched path.
    np.testing.assert_allclose(fast.encode(course_texts[:1])[0], b[0], atol=1e-4)


@pytest.mark.slow
def test_openvino_backend_compiles_only_when_a_process_encodes_more_than_one_query() -> None:
    """One-shot CLI query: numpy forward, no compile; a second call, a batch or `warm` compile once; same vectors."""
    pytest.importorskip("openvino")
    from retrieval.encoders import text

    try:
        folder = text.minilm_path()
    except Exception as exc:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed: {exc}")
    queries = ["a dog runs on the beach", "two men play football in a muddy field"]
    enc = text.load("all-MiniLM-L6-v2", folder, 128, backend="openvino")
    first = enc.encode(queries[:1])
    assert enc.forward is None
    second = enc.encode(queries[:1])
    compiled = enc.forward
    assert compiled is not None
    np.testing.assert_allclose(second, first, atol=1e-5)
    enc.warm()
    assert enc.forward is compiled
    batch = text.load("all-MiniLM-L6-v2", folder, 128, backend="openvino")
    batch.encode(queries * 3)
    assert batch.forward is not None
    numpy_only = text.load("all-MiniLM-L6-v2", folder, 128, backend="numpy")
    numpy_only.encode(queries * 3)
    numpy_only.warm()
    assert numpy_only.forward is None
    np.testing.assert_allclose(batch.encode(queries), numpy_only.encode(queries), atol=1e-5)


@pytest.mark.parametrize(("cores", "load", "busy"), [(2, 0.2, False), (2, 1.0, True), (8, 5.0, False), (8, 7.0, True)])
def test_single_query_blas_threads_follow_the_free_cores(monkeypatch, cores: int, load: float, busy: bool) -> None:
    from retrieval.encoders import text

    monkeypatch.setattr(text.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(text.os, "getloadavg", lambda: (load, load, load))
    assert text.cores_busy() is busy


def test_no_load_average_means_not_busy(monkeypatch) -> None:
    from retrieval.encoders import text

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(text.os, "getloadavg", unavailable)
    assert text.cores_busy() is False


@pytest.mark.slow
def test_openvino_compile_failure_falls_back_to_the_numpy_forward_with_a_warning(monkeypatch) -> None:
    from retrieval.encoders import text

    try:
        folder = text.minilm_path()
    except Exception as exc:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed: {exc}")

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(text_fast, "OpenVinoTransformer", broken)
    enc = text.load("all-MiniLM-L6-v2", folder, 128, backend="openvino")
    queries = ["a dog runs on the beach"] * 6
    with pytest.warns(RuntimeWarning, match="numpy forward"):
        got = enc.encode(queries)
    assert enc.forward is None and not enc.openvino
    ref = text.load("all-MiniLM-L6-v2", folder, 128, backend="numpy").encode(queries)
    np.testing.assert_array_equal(got, ref)
