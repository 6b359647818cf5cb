"""retrieval.atomic: a failed write keeps the old file and leaves no temp file behind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.atomic import atomic_path, write_text


def test_write_text_replaces_and_creates_parent(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_failed_writer_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_temp_path_keeps_suffix_for_format_by_extension_writers(tmp_path: Path) -> None:
    target = tmp_path / "feats.npz"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))  # np.savez would append ".npz" to any other name
    assert np.load(target)["x"].tolist() == [0, 1, 2]
