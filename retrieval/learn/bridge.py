"""Semantic bridge (ConSE, Norouzi et al. 2014): words the course data never saw, through the ImageNet head.

At index time each image keeps its top-k ImageNet classes and their probabilities (`retrieval.encoders.imagenet`,
stored as the `classes` column of the index). The class names were embedded once with the model's own text encoder
("a photo of a {name}.", L2-normalised, stored in the model as `bridge.class_text`). An image's semantic vector is
the probability-weighted mix of its classes' text vectors; the bridge cosine of (query, image) is the query's raw
text feature against that mix, in the text encoder's own space. So "kitty" finds a tabby cat although no course
caption mentions a cat: mpnet knows kitty ~ tabby cat, the CNN knows the tabby.

The ranking key adds `weight` x bridge cosine (RetrievalModel.rank_key); the weight is chosen on in-domain
validation (retrieval.learn.bridge_train.fit_bridge). Search also takes candidates from `ClassLists`, so an image the
projected space misses can still be ranked. numpy only: nothing here loads torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: What the text encoder reads for class c (CLIP's and ConSE's habit: a short sentence beats the bare noun).
CLASS_TEMPLATE = "a photo of a {}."
TOP_K = 5
#: The query's nearest classes whose most probable images join the ANN candidates.
CANDIDATE_CLASSES = 3


def class_prompts(names: Sequence[str]) -> list[str]:
    return [CLASS_TEMPLATE.format(n) for n in names]


@dataclass(frozen=True)
class SemanticBridge:
    """class_text (C, D) unit rows; `part`: the image-encoder part whose head gives the classes; `scale`: the
    feature norm the head is applied at; `weight`: the bridge cosine's weight in the ranking key."""

    class_text: FloatArray
    part: str
    scale: float
    weight: float = 0.0
    top_k: int = TOP_K

    def config(self) -> dict[str, Any]:
        return {"part": self.part, "scale": float(self.scale), "weight": float(self.weight), "top_k": int(self.top_k)}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], class_text: np.ndarray) -> "SemanticBridge":
        return cls(np.asarray(class_text, np.float32), str(cfg["part"]), float(cfg["scale"]), float(cfg["weight"]),
                   int(cfg.get("top_k", TOP_K)))

    @cached_property
    def gram(self) -> FloatArray:
        """(C, C) cosines between class names."""
        return (self.class_text @ self.class_text.T).astype(np.float32)

    def norms(self, ids: np.ndarray, p: np.ndarray) -> FloatArray:
        """|sum_k p_k t_k| per image, from the class Gram matrix (no D-dim vector per image is ever stored)."""
        g = self.gram[ids[:, :, None], ids[:, None, :]]  # (n, k, k)
        return np.sqrt(np.maximum(np.einsum("nk,nkl,nl->n", p, g, p), 0.0)).astype(np.float32)

    def query_classes(self, txt_raw: np.ndarray) -> FloatArray:
        """(n_q, C): cosine of each query's raw text feature with each class name."""
        return (l2n(np.atleast_2d(np.asarray(txt_raw, np.float32))) @ self.class_text.T).astype(np.float32)

    @staticmethod
    def pair_cos(qc: np.ndarray, ids: np.ndarray, p: np.ndarray, norms: np.ndarray) -> FloatArray:
        """Bridge cosines from `query_classes` rows: `qc` one query's row (C,) against every image, or (n, C)
        aligned with the n images (ids, p, norms)."""
        picked = qc[ids] if qc.ndim == 1 else np.take_along_axis(qc, ids, 1)
        return (np.sum(p * picked, axis=1) / np.maximum(norms, 1e-6)).astype(np.float32)

    @staticmethod
    def grid_cos(qc: np.ndarray, ids: np.ndarray, p: np.ndarray, norms: np.ndarray) -> FloatArray:
        """(n_q, n_img) bridge cosines of every `query_classes` row with every image."""
        return (np.einsum("qnk,nk->qn", qc[:, ids], p) / np.maximum(norms, 1e-6)).astype(np.float32)

    def rows_cos(self, txt_raw: np.ndarray, ids: np.ndarray, p: np.ndarray) -> FloatArray:
        """Bridge cosine of aligned (text, image) rows."""
        return self.pair_cos(self.query_classes(txt_raw), ids, p, self.norms(ids, p))

    def grid(self, txt_raw: np.ndarray, ids: np.ndarray, p: np.ndarray) -> FloatArray:
        """(n_txt, n_img) bridge cosines of every pair (validation ranks whole galleries with it)."""
        return self.grid_cos(self.query_classes(txt_raw), ids, p, self.norms(ids, p))


# ------------------------------------------------------------------------------------------- the index column
def encode_classes(ids: np.ndarray, p: np.ndarray) -> list[str]:
    """Top classes as the index's `classes` column: "285:0.6120 281:0.2031 …" per image."""
    return [" ".join(f"{int(c)}:{float(q):.4f}" for c, q in zip(r, s)) for r, s in zip(ids, p)]


def decode_classes(column: Sequence[Any], k: int = TOP_K) -> tuple[IntArray, FloatArray]:
    """The `classes` column back to (ids (n, k), probs (n, k)); empty or missing cells give probability 0.
    One split of the joined column when every cell has k classes (1M rows in about a second), else cell by cell."""
    cells = [c if isinstance(c, str) else "" for c in column]
    tokens = " ".join(cells).replace(":", " ").split()
    if len(tokens) == 2 * k * len(cells):
        flat = np.asarray(tokens, np.float64).reshape(len(cells), k, 2)
        return flat[:, :, 0].astype(np.int64), flat[:, :, 1].astype(np.float32)
    ids = np.zeros((len(cells), k), np.int64)
    p = np.zeros((len(cells), k), np.float32)
    for i, cell in enumerate(cells):
        for j, item in enumerate(cell.split()[:k]):
            c, _, q = item.partition(":")
            ids[i, j], p[i, j] = int(c), float(q)
    return ids, p


class BridgedImages:
    """The bridge's view of a set of images (an index's rows): their top classes, mixture norms and, built on first
    use, the inverted class lists that give the bridge's own candidates."""

    def __init__(self, bridge: SemanticBridge, ids: np.ndarray, p: np.ndarray) -> None:
        self.bridge, self.ids, self.p = bridge, np.asarray(ids, np.int64), np.asarray(p, np.float32)
        self.norms = bridge.norms(self.ids, self.p)
        self._lists: ClassLists | None = None

    @classmethod
    def from_column(cls, bridge: SemanticBridge, column: Sequence[Any]) -> "BridgedImages":
        return cls(bridge, *decode_classes(column, bridge.top_k))

    def cos(self, qc: np.ndarray, rows: np.ndarray) -> FloatArray:
        """Bridge cosines of one query (`qc`: its `SemanticBridge.query_classes` row) with image `rows`."""
        return SemanticBridge.pair_cos(qc, self.ids[rows], self.p[rows], self.norms[rows])

    def aligned(self, txt_raw: np.ndarray, rows: np.ndarray) -> FloatArray:
        """Bridge cosines of aligned (text, image row) pairs."""
        return self.bridge.rows_cos(txt_raw, self.ids[rows], self.p[rows])

    def grid(self, txt_raw: np.ndarray) -> FloatArray:
        """(n_txt, n_images) bridge cosines of every text with every image."""
        return self.bridge.grid(txt_raw, self.ids, self.p)

    def candidates(self, qc: np.ndarray, per_class: int, allowed: np.ndarray | None = None,
                   n_classes: int = CANDIDATE_CLASSES) -> IntArray:
        if self._lists is None:
            self._lists = ClassLists(self.ids, self.p, len(self.bridge.class_text))
        return self._lists.candidates(qc, n_classes, per_class, allowed)


class ClassLists:
    """Inverted lists class -> images by falling probability: the bridge's own candidates for a query."""

    def __init__(self, ids: np.ndarray, p: np.ndarray, n_classes: int) -> None:
        rows = np.repeat(np.arange(len(ids), dtype=np.int64), ids.shape[1])
        cls, prob = ids.reshape(-1), p.reshape(-1)
        keep = prob > 0
        rows, cls, prob = rows[keep], cls[keep], prob[keep]
        order = np.lexsort((-prob, cls))
        self.rows, self.prob = rows[order], prob[order]
        self.start = np.searchsorted(cls[order], np.arange(n_classes + 1))

    def candidates(self, qc: np.ndarray, n_classes: int, per_class: int, allowed: np.ndarray | None = None
                   ) -> IntArray:
        """Images most probable for the query's `n_classes` nearest classes (`per_class` each; `allowed`: a
        boolean row mask, e.g. a folder filter)."""
        out = []
        for c in np.argsort(-qc)[:n_classes]:
            rows = self.rows[self.start[c] : self.start[c + 1]]
            if allowed is not None:
                rows = rows[allowed[rows]]
            out.append(rows[:per_class])
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def image_classifier(bridge: SemanticBridge | None, image_encoder_id: str) -> Callable[[np.ndarray], list[str]] | None:
    """`classify(feats) -> ["285:0.6120 …"]`: each image's top ImageNet classes (the index's `classes` column),
    from the encoder features already computed (no extra CNN pass). None without a bridge. Index and scoring time
    only: loads torch."""
    if bridge is None:
        return None
    from retrieval.encoders.imagenet import lite_head, part_columns

    head = lite_head(bridge.part)
    cols = part_columns(image_encoder_id, bridge.part)

    def classify(feats: np.ndarray) -> list[str]:
        return encode_classes(*head.top(np.asarray(feats)[:, cols], bridge.scale, bridge.top_k))

    return classify
