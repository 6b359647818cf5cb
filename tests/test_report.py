"""EDA report: renders from the tiny fixture, replaces atomically, CLI prints the path."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.errors import DatasetError
from retrieval.reports.eda import write_report
from tests.conftest import require_course_data

FIXTURE = Path(__file__).parent / "fixtures" / "course_tiny"


def _check_report(index: Path) -> str:
    assert index.name == "index.html" and index.is_file()
    page = index.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 5
    for name in images:
        png = index.parent / name
        assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return page


def test_report_renders_fixture(tmp_path: Path) -> None:
    page = _check_report(write_report(FIXTURE, tmp_path / "report"))
    assert len(list((tmp_path / "report").glob("*.png"))) >= 5
    for needle in ("Kendall tau", "expert pairs", "mentioning children", "dawid_skene", "median (default)",
                   "test queries / test images"):
        assert needle in page
    assert "<th>expert pairs</th><td>10</td>" in page
    assert "<th>pairs rated by experts and crowd</th><td>5</td>" in page
    # Only 1001_aa (boy, child, kid) and 1004_dd (girls, children, kids) have child captions.
    assert "2 of 6 (33.3%)" in page


def test_report_replaces_previous_atomically(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    write_report(FIXTURE, out)
    assert not (out / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp or backup folders left


def test_failed_report_keeps_previous_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(FIXTURE, out)
    before = sorted(p.name for p in out.iterdir())
    broken = Path(shutil.copytree(FIXTURE, tmp_path / "broken"))
    (broken / "CrowdAnnotations.tsv").unlink()
    with pytest.raises(DatasetError, match="CrowdAnnotations.tsv"):
        write_report(broken, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "report"]


def test_cli_report_prints_index_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", "--data", str(FIXTURE), "--out", str(tmp_path / "r"), "--no-policy"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "r" / "index.html")
    bad = CliRunner().invoke(cli, ["report", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "error:" in bad.output and "nope" in bad.output


@pytest.mark.slow
def test_report_renders_real_data(tmp_path: Path) -> None:
    root = require_course_data()
    page = _check_report(write_report(root, tmp_path / "report", policy=True))
    assert (tmp_path / "report" / "child_pr.png").stat().st_size > 0 and "child image probe" in page
    assert "<th>expert pairs</th><td>5,822</td>" in page
    assert "<th>pairs rated by experts and crowd</th><td>2,329</td>" in page
