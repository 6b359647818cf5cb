"""A deterministic stand-in for `Retriever` (same methods the server uses), for fast server and browser tests.

Scores are a real function of the query: the share of query words found in an image's tags, plus a small hash jitter
so that different queries give different orders. Queries go through the real `query_is_child` lexicon.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from retrieval.errors import InvalidQueryError
from retrieval.policy.apply import query_is_child
from retrieval.policy.types import Hit, RawResult

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the in on of with and at to is are".split())
#: Tiny generated test images: (file name, tags, child_prob). The last one stands for a photo of a child.
COLOURS = [("red", (220, 40, 40)), ("green", (40, 180, 60)), ("blue", (40, 80, 220)), ("yellow", (240, 220, 40)),
           ("purple", (140, 60, 170)), ("orange", (250, 140, 30)), ("black", (20, 20, 20)), ("white", (245, 245, 245))]


@dataclass(frozen=True)
class FakeItem:
    path: Path
    tags: frozenset[str]
    child_prob: float | None = None


@dataclass(frozen=True)
class FakeCheck:
    text: str
    n_tokens: int
    truncated: bool = False
    max_tokens: int = 64


@dataclass
class FakeStore:
    count: int


@dataclass(frozen=True)
class FakeModel:
    child_image_threshold: float = 0.5
    child_text_threshold: float = 0.5


@dataclass
class FakeRetriever:
    """search_many / check_query / store.count / model_id / _hit, like `retrieval.search.Retriever`."""

    items: list[FakeItem]
    model_id: str = "fake-image|fake-text"
    calls: list[int] = field(default_factory=list)  # batch size of every search_many call
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.store = FakeStore(len(self.items))
        self.model = FakeModel()

    def check_query(self, text: str) -> FakeCheck:
        if text is None or not str(text).strip():
            raise InvalidQueryError("empty query; type some words to search for")
        clean = " ".join(str(text).split())
        return FakeCheck(clean, len(_WORD.findall(clean.lower())))

    def score(self, text: str, image_id: int) -> float:
        words = set(_WORD.findall(text.lower())) - _STOP
        overlap = len(words & self.items[image_id].tags) / max(len(words), 1)
        jitter = int.from_bytes(hashlib.sha256(f"{text}\0{image_id}".encode()).digest()[:4], "little") / 2**32
        return round(0.05 + 0.85 * overlap + 0.1 * jitter, 6)

    def search_many(self, texts: Sequence[str], k: int = 10, min_score: float = 0.0,
                    under: str | None = None) -> list[RawResult]:
        """`under`: only items in a folder of that name (the real retriever: a folder of the indexed library)."""
        if not isinstance(k, int) or k <= 0:
            raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            self.calls.append(len(texts))
        out = []
        for text in texts:
            clean = self.check_query(text).text
            scores = [(self.score(clean, i), i) for i in range(len(self.items))
                      if under is None or under in self.items[i].path.parent.parts]
            scores.sort(key=lambda s: (-s[0], s[1]))
            hits = [self._hit(rank, i, s) for rank, (s, i) in enumerate(
                [x for x in scores if x[0] >= min_score][:k], start=1)]
            out.append(RawResult(clean, query_is_child(clean), hits, self.model.child_image_threshold))
        return out

    def _hit(self, rank: int, image_id: int, score: float) -> Hit:
        item = self.items[image_id]
        return Hit(rank=rank, image=item.path.name, path=str(item.path), score=score, child_prob=item.child_prob,
                   image_id=image_id)


def make_fake_images(folder: Path, size: int = 64) -> list[FakeItem]:
    """Write one PNG per colour plus a 'child' PNG (child_prob 0.9) into `folder`; returns the items."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for name, rgb in COLOURS:
        path = folder / f"{name}_square.png"
        im = Image.new("RGB", (size, size), rgb)
        ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(255 - rgb[0], 128, 255 - rgb[2]))
        im.save(path)
        items.append(FakeItem(path, frozenset({name, "square", "colour", "color"})))
    path = folder / "secret_child_photo.png"
    Image.new("RGB", (size, size), (200, 160, 140)).save(path)
    items.append(FakeItem(path, frozenset({"park", "playing", "people", "red"}), child_prob=0.9))
    return items
