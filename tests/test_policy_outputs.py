"""Every way a result can leave the system goes through `apply_policy`, and strict output never names a withheld image.

The output paths, enumerated: CLI table, CLI JSON, `retrieve evaluate` sheet (HTML + metrics), demo HTML page, web API
search, web API image/thumbnail fetch. Each is run with a spy on `apply_policy` and its strict output is searched for
the names and paths of the images the probe flags.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

import retrieval.policy.apply as policy_apply
from retrieval.config import DISCLAIMER
from retrieval.search import Retriever

from tests.conftest import TINY, run_cli


@pytest.fixture()
def spy(monkeypatch):
    calls: list[str] = []
    real = policy_apply.apply_policy

    def wrapped(result: Any, policy: str = "strict") -> dict:
        calls.append(policy)
        return real(result, policy)

    monkeypatch.setattr(policy_apply, "apply_policy", wrapped)
    import retrieval.reports.evaluate as evaluate_mod
    import retrieval.server.images as img_mod

    for mod in (img_mod, evaluate_mod):  # modules that import apply_policy by name
        monkeypatch.setattr(mod, "apply_policy", wrapped)
    return calls


@pytest.fixture()
def withheld(fake_env) -> list[tuple[int, str, str]]:
    """(image_id, name, path) of every indexed image the strict policy withholds."""
    retriever = Retriever.open(fake_env / "idx", fake_env / "model")
    out = []
    for image_id in range(retriever.store.count):
        hit = retriever.hit(image_id)
        if policy_apply.hit_is_restricted(hit, retriever.model.config.child_image_threshold):
            out.append((image_id, hit.image, hit.path))
    assert out, "the fixture has child images; the fake probe must flag at least one"
    return out


def _cli_table(env: Path, tmp: Path) -> str:
    return run_cli("query", "a person outdoors", "-k", "6", "--index", env / "idx", "--model", env / "model").stdout


def _cli_json(env: Path, tmp: Path) -> str:
    return run_cli("query", "a person outdoors", "-k", "6", "--json", "--index", env / "idx",
                   "--model", env / "model").stdout


def _evaluate(env: Path, tmp: Path) -> str:
    res = run_cli("evaluate", "--data", TINY, "--model", env / "model", "--out", tmp / "ev")
    assert res.exit_code == 0, res.output
    return (tmp / "ev" / "sheet.html").read_text(encoding="utf-8") + res.stdout


def _demo_page(env: Path, tmp: Path) -> str:
    from retrieval.reports.html import results_page

    retriever = Retriever.open(env / "idx", env / "model")
    results = [policy_apply.apply_policy(r, "strict") for r in retriever.search_many(["a person outdoors"], k=6)]
    return results_page("demo", results, tmp / "index.html").read_text(encoding="utf-8")


def _web_search(env: Path, tmp: Path) -> str:
    from fastapi.testclient import TestClient

    from retrieval.server.app import create_app

    app = create_app(Retriever.open(env / "idx", env / "model"), "strict", thumb_dir=tmp / "thumbs")
    with TestClient(app) as client:
        return client.get("/api/search", params={"q": "a person outdoors", "k": 6}).text


OUTPUT_PATHS: dict[str, Callable[[Path, Path], str]] = {
    "cli table": _cli_table, "cli json": _cli_json, "evaluate sheet": _evaluate,
    "demo page": _demo_page, "web search": _web_search,
}


@pytest.mark.parametrize("name", sorted(OUTPUT_PATHS))
def test_output_path_goes_through_policy_and_hides_withheld(name, fake_env, withheld, spy, tmp_path):
    text = OUTPUT_PATHS[name](fake_env, tmp_path)
    assert spy, f"{name} produced output without calling apply_policy"
    assert DISCLAIMER in text
    for _, image, path in withheld:
        assert image not in text and path not in text, f"{name} leaked {image}"


def test_web_image_fetch_of_withheld_image_is_refused(fake_env, withheld, spy, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.server.app import create_app

    app = create_app(Retriever.open(fake_env / "idx", fake_env / "model"), "strict", thumb_dir=tmp_path / "t")
    with TestClient(app) as client:
        for image_id, _, _ in withheld:
            for kind in ("image", "thumb"):
                res = client.get(f"/api/{kind}/{image_id}")
                assert res.status_code == 451 and res.headers["content-type"].startswith("application/json")
    assert spy


def test_every_result_emitting_module_imports_the_choke_point():
    """A new output path must be added above: modules that format results all call apply_policy."""
    root = Path(__file__).resolve().parents[1] / "retrieval"
    emitting = {"cli.py", "demo.py", "reports/evaluate.py", "server/images.py"}
    for rel in emitting:
        assert "apply_policy" in (root / rel).read_text(encoding="utf-8"), rel
    for rel in ("server/app.py", "server/review.py", "server/examples.py"):  # web routes answer via public_result
        assert "public_result(" in (root / rel).read_text(encoding="utf-8"), rel
    for path in root.rglob("*.py"):
        src = path.read_text(encoding="utf-8")
        if "search_many(" in src and path.relative_to(root).as_posix() not in emitting | {"search.py", "server/batcher.py", "server/fake.py"}:
            pytest.fail(f"{path} calls search_many but is not an enumerated output path")
