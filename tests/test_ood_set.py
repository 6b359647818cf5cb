"""The out-of-domain set (tests/fixtures/ood, issue #15): every query names a shipped photo, every photo has a query,
a source and a licence, the photos stay small, and the product indexes every one of them."""
from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

OOD = Path(__file__).parent / "fixtures" / "ood"


def _rows(name: str) -> list[dict[str, str]]:
    with open(OOD / name, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_queries_sources_and_photos_agree() -> None:
    photos = {p.name for p in (OOD / "images").iterdir()}
    queries = _rows("queries.tsv")
    sources = {r["image"]: r for r in _rows("SOURCES.tsv")}
    assert len(queries) >= 50 and len({q["query"].lower() for q in queries}) == len(queries)
    assert {q["image"] for q in queries} == photos == set(sources)
    assert all(r["package"] and r["version"] and r["licence"] for r in sources.values())
    assert all(3 <= len(q["query"].split()) <= 8 for q in queries)
    total = 0
    for name in photos:
        with Image.open(OOD / "images" / name) as im:
            im.verify()
        with Image.open(OOD / "images" / name) as im:
            assert max(im.size) <= 384 and im.format == "JPEG"
        total += (OOD / "images" / name).stat().st_size
    assert total < 4 * 2**20


def test_every_photo_of_the_set_is_indexed(tmp_path: Path, fake_env: Path) -> None:
    from tests.conftest import run_cli
    from index_store import IndexStore

    res = run_cli("build-index", OOD / "images", "--index", tmp_path / "idx", "--model", fake_env / "model", "--quiet")
    assert res.exit_code == 0, res.output
    indexed = {Path(p).name for p in IndexStore.load(tmp_path / "idx").meta["rel_path"]}
    assert indexed == {p.name for p in (OOD / "images").iterdir()}
