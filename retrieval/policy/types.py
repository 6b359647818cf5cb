"""Input types of the policy choke point. `retrieval.search` builds them; `apply.apply_policy` turns them into JSON.

Kept free of heavy imports so every output path (CLI, server, evaluate sheets, demo) can import them cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from retrieval.policy.review import Decision

Policy = Literal["strict", "audit", "off"]
POLICIES: tuple[str, ...] = ("strict", "audit", "off")
DEFAULT_POLICY: Policy = "strict"
#: Used only when a RawResult does not carry the model's own image threshold.
DEFAULT_IMAGE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Hit:
    """One retrieved image, before the legal policy.

    Attributes:
        rank: 1-based position in the result list (kept even when the image is withheld).
        image: file name (e.g. "1056338697_4f7d7ce270.jpg").
        path: full path or URL of the image.
        score: calibrated relevance in [0, 1].
        child_prob: image-probe probability that the image shows a child; None when no probe scored it
            (then only `flagged` can restrict it).
        image_id: row id in the index.
        flagged: set True to force-restrict an image regardless of `child_prob` (e.g. its known captions
            mention a child); None/False leaves the decision to `child_prob >= RawResult.image_threshold`.
        detection: the child detector's JSON stored in the index (`policy.detector.Detection`); the audit view
            turns it into the reason and the face boxes.
        review: an operator's decision about this image (`policy.review`); it outranks `flagged` and the detector.
        similarity: searches by example: the raw cosine to the example photo(s) (-1..1), beside `score` (the
            calibrated image-to-image relevance; None for models trained without that calibration).
    """

    rank: int
    image: str
    path: str
    score: float | None
    child_prob: float | None
    image_id: int
    flagged: bool | None = None
    detection: str | None = None
    review: "Decision | None" = None
    similarity: float | None = None


@dataclass(frozen=True)
class RawResult:
    """One query's hits before the legal policy.

    Attributes:
        query: the user's text.
        query_child: True when the query describes a child (use `apply.query_is_child`: lexicon OR text probe).
        hits: sorted by score, best first.
        image_threshold: the image probe's operating threshold (RetrievalModel's child image threshold).
    """

    query: str
    query_child: bool
    hits: list[Hit] = field(default_factory=list)
    image_threshold: float = DEFAULT_IMAGE_THRESHOLD
