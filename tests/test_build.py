"""retrieval.index.indexer.build_index + embed pipeline with fake encoders: incremental, junk-tolerant, kill-safe."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index_store import IndexStore
from retrieval.config import REPO_ROOT
from retrieval.index.embed import EmbeddingCache, embed_files
from retrieval.encoders.fake import FakeImageEncoder
from retrieval.errors import DatasetError
from retrieval.index.fs import walk_images
from retrieval.index.imageio import load_image
from retrieval.index.indexer import build_index
from retrieval.policy.detector import Detection, PersonBox
from tests.test_imageio import BAD, GOOD, make_junk_folder

FIELDS = {"text_encoder": "fake-text", "text_encoder_sha": "t", "model_id": "heads-1"}


class CountingEncoder(FakeImageEncoder):
    """Fake encoder that counts the images it really embeds (cache hits and reused rows never get here)."""

    def __init__(self) -> None:
        self.seen = 0

    def embed_batch(self, items):
        self.seen += len(items)
        return super().embed_batch(items)


def l2(feats: np.ndarray) -> np.ndarray:
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def colour(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _fake_detect(entries, feats):
    """Stands in for the child detector: probability = first feature, one face box per image."""
    return [Detection(float(f[0]), True, (PersonBox((1.0, 2.0, 3.0, 4.0), 0.99, float(f[0])),), (float(f[0]),), (8, 8))
            for f in feats]


def build(images: Path, index: Path, cache: EmbeddingCache | bool, encoder=None, **kw):
    enc = encoder or CountingEncoder()
    kw.setdefault("manifest_fields", FIELDS)
    return build_index(images, index, enc, project=l2, detect=_fake_detect, cache=cache, workers=2,
                       batch_size=3, **kw)


@pytest.fixture()
def cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "cache" / "emb.sqlite")


def test_incremental_add_update_delete(tmp_path: Path, cache: EmbeddingCache) -> None:
    images, index = tmp_path / "img", tmp_path / "idx"
    colours = {"a.jpg": (255, 0, 0), "b.jpg": (0, 255, 0), "c.png": (0, 0, 255), "d/e.png": (200, 200, 0),
               "f.bmp": (9, 9, 9)}
    for name, rgb in colours.items():
        colour(images / name, rgb)
    enc = CountingEncoder()
    first = build(images, index, cache, enc)
    assert (first.count, first.added, first.embedded, first.failures, enc.seen) == (5, 5, 5, (), 5)
    loaded = IndexStore.load(index, expect={"image_encoder": "fake-image", "model_id": "heads-1"})
    assert loaded.meta["rel_path"].tolist() == sorted(colours)
    feats = np.stack([enc.preprocess(load_image(images / n)) for n in sorted(colours)])
    np.testing.assert_allclose(np.asarray(loaded.vectors), l2(feats), atol=1e-6)
    np.testing.assert_allclose(loaded.meta["child_prob"], feats[:, 0], atol=1e-6)
    # the detector's output travels with each row: boxes and their child probabilities round-trip through meta.csv
    back = [Detection.from_json(t) for t in loaded.meta["detection"]]
    np.testing.assert_allclose([d.boxes[0].child_prob for d in back], feats[:, 0], atol=1e-4)
    assert all(d.boxes[0].box == (1.0, 2.0, 3.0, 4.0) and d.size == (8, 8) for d in back)

    enc = CountingEncoder()
    again = build(images, index, cache, enc)
    assert (again.written, again.skipped, again.added, again.updated, again.removed, enc.seen) == (False, 5, 0, 0, 0, 0)

    colour(images / "new.png", (0, 128, 128))  # added
    colour(images / "b.jpg", (128, 0, 128))  # changed content
    os.utime(images / "b.jpg", ns=(1, 1))
    (images / "c.png").unlink()  # deleted
    os.utime(images / "a.jpg", ns=(2, 2))  # touched: same bytes, new mtime -> reused
    enc = CountingEncoder()
    rep = build(images, index, cache, enc)
    assert (rep.added, rep.updated, rep.removed, rep.skipped, rep.count) == (1, 1, 1, 3, 5)
    assert enc.seen == 2 and rep.embedded == 2
    loaded = IndexStore.load(index)
    names = loaded.meta["rel_path"].tolist()
    assert names == sorted(["a.jpg", "b.jpg", "d/e.png", "f.bmp", "new.png"])
    row_b = names.index("b.jpg")
    expected_b = l2(enc.preprocess(load_image(images / "b.jpg"))[None, :])[0]
    np.testing.assert_allclose(loaded.vectors[row_b], expected_b, atol=1e-6)
    assert loaded.meta["mtime_ns"][names.index("a.jpg")] == 2
    assert loaded.index.ntotal == 5


def test_hnsw_index_that_only_gains_images_grows_in_place_and_keeps_ids(tmp_path: Path, cache: EmbeddingCache,
                                                                         monkeypatch) -> None:
    import index_store.store as store_mod

    images, index = tmp_path / "img", tmp_path / "idx"
    rng = np.random.default_rng(0)
    for i in range(12):
        colour(images / f"p{i:02d}.png", tuple(int(v) for v in rng.integers(0, 256, 3)))
    build(images, index, cache, flat_max=8)
    first = IndexStore.load(index)
    assert first.manifest.index_type == "hnsw_sq8"
    old_names, old_vectors = first.meta["rel_path"].tolist(), np.asarray(first.vectors).copy()

    for name in ("a_new.png", "z_new.png"):  # sort before and after the existing names
        colour(images / name, tuple(int(v) for v in rng.integers(0, 256, 3)))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the graph was rebuilt instead of grown")

    monkeypatch.setattr(store_mod, "build_ann", no_rebuild)
    rep = build(images, index, cache, flat_max=8)
    assert (rep.added, rep.removed, rep.count) == (2, 0, 14)
    grown = IndexStore.load(index)
    names = grown.meta["rel_path"].tolist()
    assert names[:12] == old_names and names[12:] == ["a_new.png", "z_new.png"]  # old ids unchanged, new appended
    np.testing.assert_array_equal(np.asarray(grown.vectors)[:12], old_vectors)
    assert grown.index.ntotal == 14 and grown.manifest.index_params == first.manifest.index_params
    _, ids = grown.index.search(np.ascontiguousarray(grown.vectors[12:], np.float32), 14)
    assert all(set(row) == set(range(14)) for row in ids.tolist())  # the new nodes are linked into the graph

    monkeypatch.undo()  # a removal cannot be done in a graph: full rebuild, walk order again
    (images / "p03.png").unlink()
    rep = build(images, index, cache, flat_max=8)
    assert (rep.removed, rep.count) == (1, 13)
    assert IndexStore.load(index).meta["rel_path"].tolist() == sorted(set(names) - {"p03.png"})


def test_heads_change_rebuilds_from_cache_without_embedding(tmp_path: Path, cache: EmbeddingCache) -> None:
    images, index = tmp_path / "img", tmp_path / "idx"
    for i in range(4):
        colour(images / f"{i}.jpg", (60 * i, 10, 10))
    build(images, index, cache)
    enc = CountingEncoder()
    rep = build(images, index, cache, enc, manifest_fields={**FIELDS, "model_id": "heads-2"})
    assert rep.rebuilt_reason and "model_id" in rep.rebuilt_reason
    assert (rep.count, rep.cached, enc.seen) == (4, 4, 0)
    assert IndexStore.load(index, expect={"model_id": "heads-2"}).count == 4


def test_junk_folder_indexes_exactly_the_decodable_images(tmp_path: Path, cache: EmbeddingCache) -> None:
    junk = make_junk_folder(tmp_path / "junk")
    rep = build(junk, tmp_path / "idx", cache)
    loaded = IndexStore.load(tmp_path / "idx")
    assert set(loaded.meta["rel_path"]) == GOOD and rep.count == len(GOOD)
    reasons = dict(rep.failures)
    assert set(reasons) == set(BAD)
    for name, word in BAD.items():
        assert word in reasons[name], (name, reasons[name])


def test_missing_empty_and_all_broken_folders_are_clear_errors(tmp_path: Path, cache: EmbeddingCache) -> None:
    with pytest.raises(DatasetError, match="does not exist; pass an existing folder to build-index"):
        build(tmp_path / "missing", tmp_path / "idx", cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        build(tmp_path / "empty", tmp_path / "idx", cache)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_text("nope")
    with pytest.raises(DatasetError, match=r"none of the 1 image files .*x\.jpg.*not an image"):
        build(tmp_path / "broken", tmp_path / "idx", cache)
    assert not (tmp_path / "idx").exists()


def test_everything_deleted_gives_an_empty_index(tmp_path: Path, cache: EmbeddingCache) -> None:
    images = tmp_path / "img"
    colour(images / "a.jpg", (1, 2, 3))
    build(images, tmp_path / "idx", cache)
    (images / "a.jpg").unlink()
    rep = build(images, tmp_path / "idx", cache)
    assert (rep.count, rep.removed) == (0, 1) and IndexStore.load(tmp_path / "idx").count == 0


def test_embed_files_order_failures_and_cache(tmp_path: Path, cache: EmbeddingCache) -> None:
    images = tmp_path / "img"
    for i in range(7):
        colour(images / f"{i}.png", (30 * i, 0, 0))
    (images / "3.png").write_bytes(b"")
    files = walk_images(images)
    enc = CountingEncoder()
    ids, feats, failures = embed_files(files, enc, workers=2, batch_size=2, cache=cache)
    assert ids == [0, 1, 2, 4, 5, 6] and feats.shape == (6, enc.dim) and feats.dtype == np.float32
    assert failures == [("3.png", "empty file (0 bytes)")]
    again = embed_files(files, enc, workers=2, batch_size=2, cache=cache)
    assert enc.seen == 6 and again.n_cached == 6 and np.array_equal(again.feats, feats)


HELPER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from retrieval.index.embed import EmbeddingCache
    from retrieval.encoders.fake import FakeImageEncoder
    from retrieval.index.indexer import build_index

    class SlowFake(FakeImageEncoder):
        def embed_batch(self, items):
            with open(os.environ["PROGRESS_FILE"], "a") as fh:
                fh.write(f"{len(items)}\\n")
            time.sleep(float(os.environ["SLEEP_PER_BATCH"]))
            return super().embed_batch(items)

    images, index, cache = sys.argv[1:4]
    build_index(images, index, SlowFake(), project=lambda f: f / np.linalg.norm(f, axis=1, keepdims=True),
                manifest_fields={"model_id": "heads-1"}, cache=EmbeddingCache(cache), workers=1, batch_size=2)
    """
)


def test_sigkill_mid_build_keeps_old_index_and_resumes_from_cache(tmp_path: Path) -> None:
    images, index, cache_path = tmp_path / "img", tmp_path / "idx", tmp_path / "emb.sqlite"
    for i in range(4):
        colour(images / f"old_{i}.png", (50 * i, 0, 0))
    cache = EmbeddingCache(cache_path)
    build_index(images, index, FakeImageEncoder(), project=l2, manifest_fields={"model_id": "heads-1"}, cache=cache)
    assert cache.count() == 4
    for i in range(16):
        colour(images / f"new_{i:02d}.png", (0, 15 * i, 255 - 10 * i))

    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "PROGRESS_FILE": str(progress), "SLEEP_PER_BATCH": "0.5",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(images), str(index), str(cache_path)], env=env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        # The 3rd forward pass only starts after batches 1-2 were committed to the cache.
        while not (progress.exists() and len(progress.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "helper build did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    old = IndexStore.load(index)  # the previous complete index is still there
    assert old.count == 4 and set(old.meta["rel_path"]) == {f"old_{i}.png" for i in range(4)}
    committed_new = EmbeddingCache(cache_path).count() - 4
    assert 4 <= committed_new < 16  # killed mid-build, after at least two committed batches

    enc = CountingEncoder()
    rep = build_index(images, index, enc, project=l2, manifest_fields={"model_id": "heads-1"},
                      cache=EmbeddingCache(cache_path), workers=2, batch_size=4)
    assert rep.count == 20 and rep.added == 16 and rep.skipped == 4
    assert rep.cached == committed_new and enc.seen == 16 - committed_new == rep.embedded
    assert IndexStore.load(index).count == 20


def test_process_backend_gives_the_same_result(tmp_path: Path, cache: EmbeddingCache) -> None:
    images = tmp_path / "img"
    for i in range(5):
        colour(images / f"{i}.png", (0, 40 * i, 0))
    files = walk_images(images)
    threads = embed_files(files, FakeImageEncoder(), workers=None, batch_size=2)
    procs = embed_files(files, FakeImageEncoder(), workers=2, batch_size=2, cache=cache, backend="process")
    assert procs.ids == threads.ids and np.array_equal(procs.feats, threads.feats)
    assert cache.count() == 5  # rows written by the main process, looked up by the workers next time
