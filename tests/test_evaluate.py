"""`retrieve evaluate` on a course-layout folder whose test part is built from training images (fake encoders)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from tests.conftest import TINY, run_cli


def course_with_test_part(dst: Path) -> Path:
    """Copy the tiny course folder; its test part = the train images + their 5 captions each, in the `|` format."""
    shutil.copytree(TINY, dst)
    shutil.rmtree(dst / "test_images")
    shutil.copytree(TINY / "train_images", dst / "test_images")
    caps = pd.read_csv(TINY / "extra_captions.tsv", sep="\t", header=None, names=["query_id", "query_text"])
    caps["image"] = caps["query_id"].str.split("#").str[0]
    caps[["query_id", "query_text", "image"]].to_csv(dst / "test_queries.csv", sep="|")
    return dst


def test_evaluate_writes_metrics_sheet_and_kendall(fake_env, tmp_path):
    data = course_with_test_part(tmp_path / "course")
    res = run_cli("evaluate", "--data", data, "--model", fake_env / "model", "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    n_queries = len(pd.read_csv(data / "test_queries.csv", sep="|"))
    assert metrics["n_queries"] == n_queries and metrics["n_images"] == 6
    for scorer in ("projection", "reranked"):
        all_q, non_child = metrics[f"{scorer}_all"], metrics[f"{scorer}_non_child"]
        assert all_q["n"] == n_queries and non_child["n"] == n_queries - metrics["n_child_queries"]
        assert 0 <= all_q["R@1"] <= all_q["R@5"] <= all_q["R@10"] <= 100
        assert 1 <= all_q["medR"] <= 6 and 0 < all_q["MRR"] <= 1
    assert -1 <= metrics["expert_tau_c_all"] <= 1 and metrics["expert_pairs_all"] > 0
    assert -1 <= metrics["crowd_tau_b_all"] <= 1
    assert (tmp_path / "ev" / "sheet.png").stat().st_size > 0
    assert "R@1" in res.output and "expert_tau_c_all" in res.output


def test_evaluate_without_test_part_is_a_clear_error(fake_env, tmp_path):
    shutil.copytree(TINY, tmp_path / "c")
    (tmp_path / "c" / "test_queries.csv").unlink()
    res = run_cli("evaluate", "--data", tmp_path / "c", "--model", fake_env / "model", "--out", tmp_path / "ev")
    assert res.exit_code != 0 and "test_queries.csv" in res.output and len(res.output.strip().splitlines()) == 1
