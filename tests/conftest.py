"""Shared fixtures: a fake-encoder model trained on the tiny course fixture and an index built with it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli

TINY = Path(__file__).parent / "fixtures" / "course_tiny"
FAKE = ["--image-encoder", "fake-image", "--text-encoder", "fake-text"]


#: The cache folder the user (or CI) set before the session; `fake_env` points RETRIEVAL_CACHE_DIR at a temp folder.
_USER_CACHE = os.environ.get("RETRIEVAL_CACHE_DIR")


@pytest.fixture(autouse=True)
def _real_cache_for_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow tests run real encoders on the course data: they use the user's cache (features extracted once per
    machine, the mpnet zip unpacked once), never the fake session's temp cache, which would redo that work."""
    if request.node.get_closest_marker("slow") is None:
        return
    if _USER_CACHE is None:
        monkeypatch.delenv("RETRIEVAL_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("RETRIEVAL_CACHE_DIR", _USER_CACHE)


def run_cli(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="session")
def fake_env(tmp_path_factory):
    """(root) with root/model (fake encoders, trained on course_tiny), root/images, root/idx."""
    root = tmp_path_factory.mktemp("fake_env")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
    res = run_cli("train", "--data", TINY, "--out", root / "model", *FAKE)
    assert res.exit_code == 0, res.output
    shutil.copytree(TINY / "train_images", root / "images")
    res = run_cli("build-index", root / "images", "--index", root / "idx", "--model", root / "model", "--quiet")
    assert res.exit_code == 0, res.output
    yield root
    mp.undo()


#: Set by CI (.ci/run): missing course data fails the run instead of skipping the tests that need it.
REQUIRE_DATA_ENV = "RETRIEVAL_REQUIRE_DATA"


def require_course_data(marker: str = "ExpertAnnotations.tsv") -> Path:
    """The course folder (`RETRIEVAL_COURSE_DATA`, fallback ../shared/data/course-train) if `marker` is in it;
    else skip with the reason, or fail when $RETRIEVAL_REQUIRE_DATA is set."""
    from retrieval.config import course_data_dir

    root = course_data_dir()
    if not (root / marker).exists():
        message = f"course data not found at {root}; set RETRIEVAL_COURSE_DATA to the course-train folder"
        if os.environ.get(REQUIRE_DATA_ENV):
            pytest.fail(f"{message} ({REQUIRE_DATA_ENV} is set: this run must include the real-data tests)")
        pytest.skip(message)
    return root
