"""Visual child labels of the 1,000 course training images (`visual_labels.tsv`, method in `visual_labels.md`).

child = someone clearly under 16 is visible; none = no person, or only clear adults; unsure = age cannot be told
(possible 16+ teenagers, figures too small, dark, helmeted or seen from behind).
"""
from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from typing import Mapping, Sequence

LABELS = ("child", "none", "unsure")
FILENAME = "visual_labels.tsv"


@lru_cache(maxsize=1)
def visual_labels() -> Mapping[str, str]:
    """image file name -> child / none / unsure."""
    text = resources.files("retrieval.policy").joinpath(FILENAME).read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    out = {r["image"]: r["label"] for r in rows}
    bad = sorted({v for v in out.values()} - set(LABELS))
    if bad:
        raise ValueError(f"{FILENAME} has labels {bad}; expected {LABELS}")
    return out


def labels_for(image_names: Sequence[str]) -> list[str | None]:
    """The visual label of each name (None where the image was not labelled)."""
    known = visual_labels()
    return [known.get(n) for n in image_names]
