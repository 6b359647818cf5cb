"""The index backend contract, run against the FAISS folder and Milvus Lite (`index_store.backend_for`): round trip,
upsert/delete, exact search agreeing across backends, identity refused, a crashed write resumed, bad locations."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index_store import backend_for
from index_store.errors import IdentityMismatchError, IndexNotFoundError, IndexStoreError

FIELDS = {"image_encoder": "fake-image", "image_encoder_sha": "aa", "text_encoder": "fake-text",
          "text_encoder_sha": "bb", "model_id": "heads-1", "images_root": "/photos"}
KINDS = ["folder", "milvus-lite"]


def location(kind: str, tmp_path: Path) -> Path:
    if kind == "milvus-lite":
        pytest.importorskip("pymilvus", reason="Milvus backend needs `pip install '.[scale]'`")
        return tmp_path / "idx.db"
    return tmp_path / "idx"


def rows(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    meta = pd.DataFrame({
        "rel_path": [f"album/{i:05d}.jpg" for i in range(n)],
        "size": np.arange(n, dtype=np.int64) + 100, "mtime_ns": np.arange(n, dtype=np.int64) * 7,
        "sha256": [f"{i:064x}" for i in range(n)],
        "child_prob": np.where(np.arange(n) % 5 == 0, np.nan, np.linspace(0, 1, n)),
        "detection": ["" if i % 3 else '{"p":0.1}' for i in range(n)],
    })
    return v, meta


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_identity(kind: str, tmp_path: Path) -> None:
    loc = location(kind, tmp_path)
    backend = backend_for(loc)
    assert not backend.exists()
    with pytest.raises(IndexNotFoundError, match="retrieve build-index"):
        backend.load()
    v, meta = rows(300)
    backend.write(v, meta, FIELDS)
    got = backend_for(loc).load(expect={"model_id": "heads-1"})
    assert got.count == 300 and got.manifest.model_id == "heads-1" and got.manifest.dim == 16
    pd.testing.assert_frame_equal(got.meta[list(meta.columns)].reset_index(drop=True), meta, check_dtype=False)
    np.testing.assert_allclose(np.asarray(got.vectors[np.arange(300)]), v, atol=1e-6)
    with pytest.raises(IdentityMismatchError, match="model_id"):
        backend_for(loc).load(expect={"model_id": "heads-2"})


@pytest.mark.parametrize("kind", KINDS)
def test_rewrite_upserts_changes_and_deletes_missing_rows(kind: str, tmp_path: Path) -> None:
    loc = location(kind, tmp_path)
    v, meta = rows(200)
    backend_for(loc).write(v, meta, FIELDS)
    keep = np.arange(200) % 4 != 0  # a quarter removed
    v2, meta2 = v[keep].copy(), meta[keep].reset_index(drop=True)
    meta2.loc[0, "sha256"] = "f" * 64  # one changed in place
    v2[0] = -v2[0]
    extra_v, extra = rows(10, seed=5)
    extra["rel_path"] = [f"new/{i}.jpg" for i in range(10)]
    v3 = np.vstack([v2, extra_v])
    meta3 = pd.concat([meta2, extra], ignore_index=True).sort_values("rel_path", kind="stable")
    v3 = v3[meta3.index.to_numpy()]
    meta3 = meta3.reset_index(drop=True)
    backend_for(loc).write(v3, meta3, FIELDS)
    got = backend_for(loc).load()
    assert got.count == 160 and set(got.meta["rel_path"]) == set(meta3["rel_path"])
    row = int(np.flatnonzero(got.meta["rel_path"].to_numpy() == meta2.loc[0, "rel_path"])[0])
    assert got.meta.loc[row, "sha256"] == "f" * 64
    np.testing.assert_allclose(np.asarray(got.vectors[[row]])[0], v2[0], atol=1e-6)


def test_exact_search_agrees_across_backends(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    v, meta = rows(2000, dim=32, seed=3)
    queries = rows(20, dim=32, seed=9)[0]
    results = {}
    for kind in KINDS:
        loc = location(kind, tmp_path / kind)
        backend_for(loc).write(v, meta, FIELDS)
        store = backend_for(loc).load()
        _, ids = store.search(queries, 10)
        results[kind] = [store.meta["rel_path"].to_numpy()[r].tolist() for r in ids]
    assert results["folder"] == results["milvus-lite"]


def test_a_write_that_dies_halfway_resumes_to_the_same_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pymilvus")
    import index_store.milvus as milvus

    loc = tmp_path / "crash.db"
    v, meta = rows(2500)
    backend = milvus.MilvusBackend(loc)
    real = backend.client().upsert
    calls = []

    def dying_upsert(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # the process dies after the first batch reached the collection
        return real(*a, **k)

    monkeypatch.setattr(backend.client(), "upsert", dying_upsert)
    with pytest.raises(KeyboardInterrupt):
        backend.write(v, meta, FIELDS)
    assert not backend.exists()  # the manifest is written last: an unfinished first build is not an index
    monkeypatch.undo()
    backend.write(v, meta, FIELDS)  # the rerun upserts the rest (idempotent by rel_path key)
    got = backend.load()
    assert got.count == 2500 and got.meta["rel_path"].tolist() == meta["rel_path"].tolist()
    backend.close()


def test_bad_milvus_locations_are_one_line_errors_in_bounded_time(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    from index_store.milvus import MilvusBackend

    t0 = time.monotonic()
    with pytest.raises(IndexStoreError, match="cannot reach Milvus at 'http://127.0.0.1:9'"):
        MilvusBackend("http://127.0.0.1:9", timeout=3).exists()
    assert time.monotonic() - t0 < 60  # bounded, not a hang
    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pymilvus import MilvusClient
        MilvusClient({str(db)!r}).has_collection("x")
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexStoreError, match="open in another process"):
            MilvusBackend(db).exists()
    finally:
        holder.kill()
        holder.wait()


def test_cli_queries_a_milvus_lite_index_like_the_folder(fake_env: Path, tmp_path: Path) -> None:
    """build-index / query over `x.db` give the same hits as the FAISS folder of the same images."""
    pytest.importorskip("pymilvus")
    import json

    from tests.conftest import run_cli

    res = run_cli("build-index", fake_env / "images", "--index", tmp_path / "lib.db", "--model", fake_env / "model",
                  "--quiet")
    assert res.exit_code == 0, res.output
    out = {}
    for loc in (fake_env / "idx", tmp_path / "lib.db"):
        res = run_cli("query", "a dog on the grass", "--index", loc, "--json", "--policy", "audit", "-k", 5)
        assert res.exit_code == 0, res.output
        out[loc.name] = [(h["image"], round(h["score"], 5)) for h in json.loads(res.stdout.splitlines()[-1])["hits"]]
    assert out["idx"] == out["lib.db"] and out["idx"]


def filtered_and_exact(store, q: np.ndarray, k: int, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the filtered search, ids of exact search over the folder's rows); asserts k hits, all inside."""
    _, ids = store.search(q, k, under=folder)
    names = store.meta["rel_path"].to_numpy()
    assert (ids >= 0).all() and all(n.startswith(folder + "/") for n in names[ids.reshape(-1)])
    inside = np.flatnonzero(np.char.startswith(names.astype(str), folder + "/"))
    return ids, inside[np.argsort(-(q @ np.asarray(store.vectors[inside]).T), axis=1)[:, :k]]


@pytest.mark.parametrize("kind", KINDS)
def test_folder_filter_is_inside_the_search_and_keeps_k(kind: str, tmp_path: Path) -> None:
    """`under` keeps only rows in that folder ("trip_1" not "trip_10"), exactly as exact search over them would."""
    loc = location(kind, tmp_path)
    v, meta = rows(600, dim=16, seed=4)
    meta["rel_path"] = [f"{['trip_1', 'trip_10', 'home'][i % 3]}/{i:05d}.jpg" for i in range(600)]
    order = np.argsort(meta["rel_path"].to_numpy(), kind="stable")
    v, meta = v[order], meta.iloc[order].reset_index(drop=True)
    backend_for(loc).write(v, meta, FIELDS)
    store = backend_for(loc).load()
    q = rows(5, dim=16, seed=11)[0]
    ids, exact = filtered_and_exact(store, q, 20, "trip_1")
    assert [set(a) for a in ids.tolist()] == [set(b) for b in exact.tolist()]


def test_folder_filter_on_a_large_hnsw_index_keeps_k(tmp_path: Path) -> None:
    """Above the exact-subset size the ANN itself filters (FAISS id selector): k hits, high recall."""
    from index_store.ann import SUBSET_EXACT_MAX
    from index_store.store import IndexStore

    n = 2 * SUBSET_EXACT_MAX + 6000
    v, meta = rows(n, dim=16, seed=2)
    meta["rel_path"] = [f"{'a' if i % 2 else 'b'}/{i:06d}.jpg" for i in range(n)]
    order = np.argsort(meta["rel_path"].to_numpy(), kind="stable")
    v, meta = v[order], meta.iloc[order].reset_index(drop=True)
    IndexStore.write(tmp_path / "big", v, meta, FIELDS, flat_max=1000)
    store = IndexStore.load(tmp_path / "big")
    assert store.manifest.index_type == "hnsw_sq8"
    q = rows(20, dim=16, seed=7)[0]
    ids, exact = filtered_and_exact(store, q, 10, "a")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())])
    assert recall >= 0.9


@pytest.mark.slow
def test_kill_9_during_a_milvus_lite_build_then_resume(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-write leaves no index (the manifest comes last); the rerun completes it."""
    pytest.importorskip("pymilvus")
    import os
    import signal

    db = tmp_path / "killed.db"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from index_store.milvus import MilvusBackend
        from tests.test_backends import FIELDS, rows
        v, meta = rows(40000, dim=64)
        backend = MilvusBackend({str(db)!r})
        real = backend.client().upsert
        def upsert(*a, **k):
            out = real(*a, **k)
            print("batch", flush=True)
            return out
        backend.client().upsert = upsert
        backend.write(v, meta, FIELDS)
        print("done", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # a few batches reached the collection
        assert proc.stdout.readline().strip() == "batch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from index_store.milvus import MilvusBackend

    backend = MilvusBackend(db)
    assert not backend.exists()  # no manifest: not an index yet, so nothing half-built is ever served
    v, meta = rows(40000, dim=64)
    real = backend.client().upsert
    resent: list[int] = []
    backend.client().upsert = lambda name, data, **kw: resent.append(len(data)) or real(name, data, **kw)
    backend.write(v, meta, FIELDS)
    assert 0 < sum(resent) <= 40000 - 3000  # it resumes: the batches that had landed are not sent again
    got = backend.load()
    assert got.count == 40000 and got.meta["rel_path"].tolist() == meta["rel_path"].tolist()
    backend.close()
