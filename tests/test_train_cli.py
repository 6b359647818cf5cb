"""`retrieve train` and `retrieve score` end to end on the tiny course fixture with fake encoders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


import pandas as pd
import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.learn.model import RetrievalModel

TINY = Path(__file__).parent / "fixtures" / "course_tiny"
FAKE = ["--image-encoder", "fake-image", "--text-encoder", "fake-text"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
    res = CliRunner().invoke(cli, ["train", "--data", str(TINY), "--out", str(root / "model"), "--seed", "3", *FAKE])
    yield root, res
    mp.undo()


def test_train_cli_writes_a_loadable_model_and_prints_metrics(trained):
    root, res = trained
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout[res.stdout.index("{"):])
    assert metrics["validation"]["retrieval_non_child"]["n"] > 0
    m = RetrievalModel.load(root / "model")
    assert m.config.image_encoder == "fake-image" and m.config.seed == 3
    assert m.config.training["keep_restricted"] is False
    assert m.config.training["n_images"] == 4  # 2 of the 6 fixture images show children (rule ON)


def test_training_is_deterministic_and_rule_can_be_turned_off(trained, tmp_path, monkeypatch):
    root, _ = trained
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
    res = CliRunner().invoke(cli, ["train", "--data", str(TINY), "--out", str(tmp_path / "again"), "--seed", "3", *FAKE])
    assert res.exit_code == 0, res.output
    a, b = RetrievalModel.load(root / "model"), RetrievalModel.load(tmp_path / "again")
    assert a.config.model_id == b.config.model_id
    res = CliRunner().invoke(cli, ["train", "--data", str(TINY), "--out", str(tmp_path / "keep"), "--keep-restricted", *FAKE])
    assert res.exit_code == 0, res.output
    assert RetrievalModel.load(tmp_path / "keep").config.training["n_images"] == 6


def test_score_cli_pairs_with_an_unreadable_image(trained, tmp_path):
    root, _ = trained
    for name in ("1002_bb.jpg", "1005_ee.jpg"):
        shutil.copy(TINY / "train_images" / name, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    pd.DataFrame({"image": ["1002_bb.jpg", "broken.jpg", "1005_ee.jpg"],
                  "text": ["A dog runs on the beach .", "A dog", "A woman on a bicycle ."]}).to_csv(tmp_path / "pairs.csv", index=False)
    res = CliRunner().invoke(cli, ["score", "--model", str(root / "model"), "--pairs", str(tmp_path / "pairs.csv"),
                                   "--out", str(tmp_path / "scores.csv")])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert list(out.columns) == ["image", "text", "score", "error"]
    assert out.loc[1, "error"] and out.loc[1, "score"] == ""
    good = out.loc[[0, 2], "score"].astype(float)
    assert ((good >= 0) & (good <= 1)).all() and (out.loc[[0, 2], "error"] == "").all()


def test_score_cli_single_pair_and_empty_text(trained):
    root, _ = trained
    img = str(TINY / "train_images" / "1002_bb.jpg")
    res = CliRunner().invoke(cli, ["score", "--model", str(root / "model"), img, "A dog runs on the beach ."])
    assert res.exit_code == 0, res.output
    assert 0.0 <= float(res.stdout.strip()) <= 1.0
    res = CliRunner().invoke(cli, ["score", "--model", str(root / "model"), img, "   "])
    assert res.exit_code == 2 and "empty text" in res.output
