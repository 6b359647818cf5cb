"""Slow: build-index through a local Ray (2 CPUs) gives the same index as the plain build; a Ray address that does
not answer is a one-line error within seconds."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from index_store import IndexStore
from tests.conftest import run_cli


@pytest.mark.slow
def test_ray_build_equals_the_plain_build(fake_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="needs `pip install '.[scale]'` (ray[data])")
    import ray

    from retrieval.index.ray_embed import start_ray

    import shutil

    images = tmp_path / "images"
    shutil.copytree(fake_env / "images", images)
    (images / "broken.jpg").write_bytes(b"not an image")
    results = {}
    for name, extra in (("plain", []), ("ray", ["--ray"])):
        monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / f"cache-{name}"))  # fresh: both really embed
        res = run_cli("build-index", images, "--index", tmp_path / name, "--model", fake_env / "model",
                      "--quiet", *extra)
        assert res.exit_code == 0, res.output
        assert "skipped broken.jpg" in res.output  # the same skip reporting
        results[name] = IndexStore.load(tmp_path / name)
    assert ray.is_initialized() and start_ray(None).cluster_resources().get("CPU") >= 1
    plain, via_ray = results["plain"], results["ray"]
    assert plain.meta["rel_path"].tolist() == via_ray.meta["rel_path"].tolist()
    np.testing.assert_allclose(np.asarray(via_ray.vectors), np.asarray(plain.vectors), atol=1e-5)
    assert plain.meta["sha256"].tolist() == via_ray.meta["sha256"].tolist()
    ray.shutdown()


def test_a_ray_address_that_does_not_answer_is_a_one_line_error(fake_env: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = run_cli("build-index", fake_env / "images", "--index", tmp_path / "idx", "--model", fake_env / "model",
                  "--quiet", "--ray", "127.0.0.1:9")
    assert res.exit_code != 0 and "does not answer" in res.output and "ray start --head" in res.output
    assert time.monotonic() - t0 < 30 and not (tmp_path / "idx").exists()  # bounded, nothing written
