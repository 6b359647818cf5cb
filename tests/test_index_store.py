"""index_store: round trip, exact search vs numpy, ANN recall, refusal of newer formats / other encoders, atomicity."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import index_store.atomic as atomic_mod
import index_store.store as store_mod
from benchmarks.ann_data import recall_at_k, synthetic_clustered, synthetic_queries
from index_store import FORMAT_VERSION, IndexStore, build_ann
from index_store.errors import IdentityMismatchError, IndexNotFoundError, IndexVersionError, InvalidLocationError

FIELDS = {"image_encoder": "fake-image", "image_encoder_sha": "aa", "text_encoder": "fake-text",
          "text_encoder_sha": "bb", "model_id": "heads-1", "images_root": "/photos"}
NAMES = ["a.jpg", "NA", "123", "comma, \"quoted\".png", "ünï cödé.jpg", "sub/dir/x.PNG", "null", "line\nbreak.jpg"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n: int = 200, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((n, dim)))
    names = NAMES + [f"img_{i:04d}.jpg" for i in range(n - len(NAMES))]
    meta = pd.DataFrame({
        "rel_path": names,
        "size": rng.integers(1, 10**9, n),
        "mtime_ns": rng.integers(10**18, 2 * 10**18, n),
        "sha256": [f"{i:064x}" for i in range(n)],
        "child_prob": np.where(np.arange(n) % 3 == 0, np.nan, rng.random(n)),
    })
    return vectors, meta


def test_round_trip(tmp_path: Path) -> None:
    vectors, meta = _data()
    IndexStore.write(tmp_path / "idx", vectors, meta, FIELDS)
    loaded = IndexStore.load(tmp_path / "idx", expect=FIELDS)
    pd.testing.assert_frame_equal(loaded.meta, meta, check_dtype=False)
    assert loaded.meta["rel_path"].tolist() == meta["rel_path"].tolist()  # "NA", "null", "123" stay strings
    assert np.isnan(loaded.meta["child_prob"][0]) and loaded.meta["child_prob"][1] == meta["child_prob"][1]
    assert isinstance(loaded.vectors, np.memmap) and np.array_equal(np.asarray(loaded.vectors), vectors)
    m = loaded.manifest
    assert (m.format_version, m.count, m.dim, m.metric, m.index_type) == (FORMAT_VERSION, 200, 32, "ip", "flat")
    assert (m.image_encoder, m.text_encoder, m.model_id, m.images_root) == ("fake-image", "fake-text", "heads-1", "/photos")
    assert {"faiss", "numpy"} <= set(m.versions) and m.created and m.updated
    assert loaded.index.ntotal == 200
    on_disk = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert on_disk["format_version"] == FORMAT_VERSION and on_disk["image_encoder_sha"] == "aa"
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]  # no temp folder left behind (the lock file stays: deleting one races)


def test_flat_search_matches_numpy_bruteforce(tmp_path: Path) -> None:
    vectors, meta = _data(n=500, dim=48, seed=3)
    IndexStore.write(tmp_path / "idx", vectors, meta, FIELDS)
    loaded = IndexStore.load(tmp_path / "idx")
    queries = _unit(np.random.default_rng(9).standard_normal((20, 48)))
    scores, ids = loaded.index.search(queries, 10)
    ref_scores = queries @ vectors.T
    ref_ids = np.argsort(-ref_scores, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(ref_scores, ref_ids, axis=1), atol=1e-5)
    s2, i2 = loaded.search(queries[0], 10_000)  # 1-D query, k clipped to the row count
    assert i2.shape == (1, 500) and i2[0, :10].tolist() == ref_ids[0].tolist()


def test_ann_above_threshold_keeps_recall(tmp_path: Path) -> None:
    x, centres = synthetic_clustered(6000, dim=32, seed=1)
    queries = synthetic_queries(centres, 200, seed=2)
    ann, params = build_ann(x, flat_max=1000)
    assert params["index_type"] == "hnsw_sq8"
    exact, _ = build_ann(x, flat_max=10**9)
    assert recall_at_k(ann, exact, queries, k=10) >= 0.95
    # and through the store: the query-time parameters survive the round trip
    meta = pd.DataFrame({"rel_path": [f"{i}.jpg" for i in range(6000)], "size": 1, "mtime_ns": 1, "sha256": "x",
                         "child_prob": np.nan})
    IndexStore.write(tmp_path / "idx", x, meta, FIELDS, flat_max=1000)
    loaded = IndexStore.load(tmp_path / "idx")
    assert loaded.manifest.index_type == "hnsw_sq8"
    assert loaded.index.hnsw.efSearch == loaded.manifest.index_params["efSearch"]
    assert recall_at_k(loaded.index, exact, queries, k=10) >= 0.95


def test_missing_index_message(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match=r"no index at .*; run `retrieve build-index IMAGES --index"):
        IndexStore.load(tmp_path / "nothing")


def test_refuses_newer_format_version(tmp_path: Path) -> None:
    vectors, meta = _data(n=20)
    IndexStore.write(tmp_path / "idx", vectors, meta, FIELDS)
    path = tmp_path / "idx" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(IndexVersionError, match=f"format_version {FORMAT_VERSION + 1}"):
        IndexStore.load(tmp_path / "idx")


@pytest.mark.parametrize("key", ["image_encoder", "image_encoder_sha", "text_encoder", "model_id"])
def test_refuses_other_encoders_or_heads(tmp_path: Path, key: str) -> None:
    vectors, meta = _data(n=20)
    IndexStore.write(tmp_path / "idx", vectors, meta, FIELDS)
    with pytest.raises(IdentityMismatchError, match=rf"{key}=.*but the model uses {key}=.*rebuild with `retrieve build-index"):
        IndexStore.load(tmp_path / "idx", expect={**FIELDS, key: "something-else"})


def test_inconsistent_folder_is_reported(tmp_path: Path) -> None:
    vectors, meta = _data(n=20)
    IndexStore.write(tmp_path / "idx", vectors, meta, FIELDS)
    np.save(tmp_path / "idx" / "vectors.npy", vectors[:5])
    with pytest.raises(IndexNotFoundError, match="inconsistent"):
        IndexStore.load(tmp_path / "idx")


def test_failed_overwrite_keeps_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_vectors, old_meta = _data(n=30, seed=1)
    IndexStore.write(tmp_path / "idx", old_vectors, old_meta, FIELDS)

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "swap_in", boom)
    new_vectors, new_meta = _data(n=40, seed=2)
    with pytest.raises(OSError, match="disk full"):
        IndexStore.write(tmp_path / "idx", new_vectors, new_meta, FIELDS)
    loaded = IndexStore.load(tmp_path / "idx")
    assert loaded.count == 30 and np.array_equal(np.asarray(loaded.vectors), old_vectors)
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


def test_overwrite_replaces_and_fallback_swap_also_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, m1 = _data(n=30, seed=1)
    v2, m2 = _data(n=40, seed=2)
    IndexStore.write(tmp_path / "idx", v1, m1, FIELDS)
    IndexStore.write(tmp_path / "idx", v2, m2, FIELDS)  # renameat2 exchange on Linux
    assert IndexStore.load(tmp_path / "idx").count == 40
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)  # rename-aside path (other OSes)
    IndexStore.write(tmp_path / "idx", v1, m1, FIELDS)
    assert IndexStore.load(tmp_path / "idx").count == 30
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


def test_crash_between_renames_is_readable_and_repaired(tmp_path: Path) -> None:
    v1, m1 = _data(n=30, seed=1)
    IndexStore.write(tmp_path / "idx", v1, m1, FIELDS)
    dead_pid = 2**22 + 12345  # above pid_max defaults: no such process
    os.rename(tmp_path / "idx", tmp_path / f".idx.old-{dead_pid}")  # writer killed after moving the old one aside
    (tmp_path / f".idx.tmp-{dead_pid}").mkdir()  # and its half-written temp folder
    assert IndexStore.load(tmp_path / "idx").count == 30  # readers fall back to the aside copy
    v2, m2 = _data(n=40, seed=2)
    IndexStore.write(tmp_path / "idx", v2, m2, FIELDS)  # cleans up: aside restored then replaced, temp removed
    assert IndexStore.load(tmp_path / "idx").count == 40
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    vectors, meta = _data(n=10)
    with pytest.raises(InvalidLocationError, match="non-empty folder without manifest.json"):
        IndexStore.write(tmp_path / "photos", vectors, meta, FIELDS)
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def test_empty_index_round_trips(tmp_path: Path) -> None:
    vectors, meta = _data(n=10)
    IndexStore.write(tmp_path / "idx", vectors[:0], meta.iloc[:0], FIELDS)
    loaded = IndexStore.load(tmp_path / "idx")
    assert loaded.count == 0 and loaded.vectors.shape == (0, 32) and loaded.index.ntotal == 0
