"""The whole CLI end to end on the tiny course fixture with fake encoders: train -> build-index -> query."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retrieval.config import DISCLAIMER

from tests.conftest import FAKE, TINY, run_cli as run

HIT_KEYS = {"rank", "image", "path", "score", "restricted", "disclaimer"}


@pytest.fixture()
def env(fake_env):
    return fake_env


def query_json(env: Path, *args: str) -> list[dict]:
    res = run("query", *args, "--index", env / "idx", "--model", env / "model", "--json")
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_build_index_reports_counts_and_skips_junk(env):
    res = run("build-index", env / "images", "--index", env / "idx", "--model", env / "model", "--quiet")
    assert res.exit_code == 0, res.output
    assert "added 0, updated 0, removed 0, unchanged 6" in res.output and "6 images indexed" in res.output


def test_query_json_schema_scores_sorted_and_k(env):
    [out] = query_json(env, "a dog runs on the beach", "-k", "4", "--policy", "audit")
    assert set(out) == {"query", "restricted", "disclaimer", "hits"}
    assert out["query"] == "a dog runs on the beach" and out["restricted"] is False
    assert len(out["hits"]) == 4
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3, 4]
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for hit in out["hits"]:
        assert set(hit) == HIT_KEYS | {"why"} and Path(hit["path"]).is_file() and Path(hit["path"]).name == hit["image"]
        assert {"reason", "child_prob", "threshold", "boxes"} <= set(hit["why"])  # audit says why


def test_min_score_filters(env):
    [full] = query_json(env, "a dog runs on the beach", "-k", "6", "--policy", "off")
    cut = sorted(h["score"] for h in full["hits"])[len(full["hits"]) // 2]
    [out] = query_json(env, "a dog runs on the beach", "-k", "6", "--policy", "off", "--min-score", str(cut))
    assert out["hits"] and all(h["score"] >= cut for h in out["hits"])
    assert len(out["hits"]) < len(full["hits"])


def test_child_query_blocked_under_strict_only(env):
    [strict] = query_json(env, "two kids playing in a fountain")
    assert strict["restricted"] is True and strict["hits"] == [] and strict["disclaimer"] == DISCLAIMER
    [audit] = query_json(env, "two kids playing in a fountain", "--policy", "audit")
    assert audit["restricted"] is True and audit["hits"]
    [off] = query_json(env, "two kids playing in a fountain", "--policy", "off")
    assert off["restricted"] is False and off["hits"]


def test_strict_output_never_names_a_restricted_image(env):
    [audit] = query_json(env, "a person outdoors", "-k", "6", "--policy", "audit")
    withheld = [h for h in audit["hits"] if h["restricted"]]
    assert withheld, "fixture has child images; the probe must flag some"
    res = run("query", "a person outdoors", "-k", "6", "--index", env / "idx", "--model", env / "model")
    table = res.stdout
    res_json = run("query", "a person outdoors", "-k", "6", "--index", env / "idx", "--model", env / "model", "--json")
    for hit in withheld:
        for text in (table, res_json.stdout):
            assert hit["image"] not in text and hit["path"] not in text
    assert DISCLAIMER in table


def test_queries_file_plain_and_course_format_keep_order(env, tmp_path):
    plain = tmp_path / "q.txt"
    plain.write_text("a dog runs on the beach\n\nA woman on a bicycle .\n", encoding="utf-8")
    outs = query_json(env, "--queries-file", plain, "-k", "2")
    assert [o["query"] for o in outs] == ["a dog runs on the beach", "A woman on a bicycle ."]
    outs = query_json(env, "--queries-file", TINY / "test_queries.csv", "-k", "2")
    texts = (TINY / "test_queries.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [o["query"] for o in outs] == [" ".join(t.split("|")[2].split()) for t in texts]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["   "], "empty query"),
        (["a dog", "-k", "0"], "k must be a positive integer"),
        ([], "give either a query TEXT or --queries-file"),
        (["x" * 5000], "characters long"),
    ],
)
def test_bad_queries_are_one_line_errors(env, args, needle):
    res = run("query", *args, "--index", env / "idx", "--model", env / "model")
    assert res.exit_code != 0
    assert needle in res.output and len(res.output.strip().splitlines()) == 1


def test_long_query_is_truncated_with_a_note(env):
    text = " ".join(["dog"] * 200)
    res = run("query", text, "--index", env / "idx", "--model", env / "model", "--json")
    assert res.exit_code == 0, res.output
    assert "truncated" in res.stderr


def test_missing_index_and_missing_folder(env, tmp_path):
    res = run("query", "a dog", "--index", tmp_path / "nope", "--model", env / "model")
    assert res.exit_code != 0 and "retrieve build-index" in res.output
    res = run("build-index", tmp_path / "no_such_dir", "--index", tmp_path / "i", "--model", env / "model")
    assert res.exit_code != 0 and "does not exist" in res.output


def test_index_from_other_model_is_refused(env, tmp_path):
    res = run("train", "--data", TINY, "--out", tmp_path / "other", "--seed", "7", "--keep-restricted", *FAKE)
    assert res.exit_code == 0, res.output
    res = run("query", "a dog", "--index", env / "idx", "--model", tmp_path / "other")
    assert res.exit_code != 0 and "rebuild with `retrieve build-index" in res.output


def test_query_without_model_uses_the_model_the_index_was_built_with(env):
    """build-index --model M records M; a later query needs no --model (and gets M's results, not an error)."""
    res = run("query", "a dog", "--index", env / "idx", "--json")
    assert res.exit_code == 0, res.output
    assert query_json(env, "a dog") == [json.loads(res.stdout.splitlines()[-1])]


def test_incremental_add_update_remove(env, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(env / "images", images)
    idx = tmp_path / "idx"
    assert run("build-index", images, "--index", idx, "--model", env / "model", "--quiet").exit_code == 0
    names = sorted(p.name for p in images.glob("[0-9]*.jpg"))
    (images / names[0]).unlink()
    shutil.copy(images / names[1], images / "new copy.jpg")
    res = run("build-index", images, "--index", idx, "--model", env / "model", "--quiet")
    assert res.exit_code == 0, res.output
    assert "added 1, updated 0, removed 1, unchanged 5" in res.output and "6 images indexed" in res.output
    (images / names[2]).write_bytes((images / names[3]).read_bytes())  # content changed in place
    res = run("build-index", images, "--index", idx, "--model", env / "model", "--quiet")
    assert "added 0, updated 1, removed 0" in res.output, res.output


def test_build_with_image_weights_other_than_the_models_is_refused(env, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(env / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["image_encoder_checksum"] = "0" * 64  # as if trained with other weights of the same architecture
    (model / "config.json").write_text(json.dumps(config))
    res = run("build-index", env / "images", "--index", tmp_path / "i", "--model", model)
    assert res.exit_code != 0 and "differ from the ones the model was trained with" in res.output
    assert "--image-weights" in res.output and not (tmp_path / "i").exists()
