"""THE single choke point of the legal rule: every output (CLI, JSON, evaluate sheets, demo, web API) goes through
`apply_policy`, so a withheld image's name or path can never reach a user by another route.

Policies:
    strict (default): a child query -> restricted, no hits, disclaimer. A flagged image keeps its rank and score
        but its image and path become null and the hit carries the disclaimer.
An operator's review outranks everything about an image (not the query): a human "child" always withholds, a human
"none" shows; otherwise a forced flag, then the detector's probability against the threshold, decide.

    audit: nothing withheld (for reviewers); the restricted flags show what strict would withhold and each hit's
        `why` says why (the detector's probability, threshold, reason and face boxes); disclaimers are null
        because nothing is replaced.
    off: no legal processing: restricted false and disclaimer null everywhere.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from retrieval.config import DISCLAIMER
from retrieval.errors import InvalidQueryError
from retrieval.policy.detector import Detection
from retrieval.policy.lexicon import is_child_text
from retrieval.policy.types import DEFAULT_IMAGE_THRESHOLD, DEFAULT_POLICY, POLICIES, Hit, Policy, RawResult

__all__ = ["apply_policy", "apply_policy_many", "explain_hit", "validate_policy", "query_is_child", "hit_is_restricted",
           "Hit", "RawResult", "Policy", "POLICIES", "DEFAULT_POLICY"]


def validate_policy(name: str) -> Policy:
    """Return `name` as a Policy, or raise InvalidQueryError naming the bad value and the choices."""
    if name not in POLICIES:
        raise InvalidQueryError(f"unknown policy {name!r}; use --policy with one of: {', '.join(POLICIES)}")
    return name  # type: ignore[return-value]


def query_is_child(query: str, text_prob: float | None = None, threshold: float = 0.5) -> bool:
    """A query is restricted when the lexicon fires OR the text probe's probability reaches its threshold."""
    return is_child_text(query) or (text_prob is not None and float(text_prob) >= threshold)


def hit_is_restricted(hit: Any, image_threshold: float = DEFAULT_IMAGE_THRESHOLD) -> bool:
    """An operator's decision if there is one; else True when force-flagged or the probability reaches the threshold."""
    review = getattr(hit, "review", None)
    if review is not None:
        return review.decision == "child"
    if getattr(hit, "flagged", None):
        return True
    prob = getattr(hit, "child_prob", None)
    return prob is not None and float(prob) >= image_threshold


def _image_name(hit: Any) -> str:
    name = getattr(hit, "image", None)
    return str(name) if name else Path(str(hit.path)).name


def _hit_json(hit: Any, rank: int, restricted: bool, withhold: bool) -> dict[str, Any]:
    out = {
        "rank": rank,
        "image": None if withhold else _image_name(hit),
        "path": None if withhold else str(hit.path),
        "score": None if hit.score is None else float(hit.score),
        "restricted": restricted,
        "disclaimer": DISCLAIMER if withhold else None,
    }
    similarity = getattr(hit, "similarity", None)
    if similarity is not None:  # searches by example: the raw cosine to the example, beside its score
        out["similarity"] = round(float(similarity), 6)
    return out


def explain_hit(hit: Any, image_threshold: float = DEFAULT_IMAGE_THRESHOLD) -> dict[str, Any]:
    """Why a hit is (or is not) restricted: the operator's decision (which outranks the rest), else the detector's
    verdict, else the probability alone for rows without one."""
    out = _detector_reason(hit, float(image_threshold))
    review = getattr(hit, "review", None)
    if review is not None:
        said = "shows a child" if review.decision == "child" else "no child here"
        out = {**out, "reason": f"operator {review.operator} decided {review.time[:10]}: {said} "
                                f"(detector: {out['reason']})", "review": review.to_dict()}
    return out


def _detector_reason(hit: Any, threshold: float) -> dict[str, Any]:
    if getattr(hit, "flagged", None):
        return {"reason": "flagged (forced restricted)", "child_prob": getattr(hit, "child_prob", None),
                "threshold": round(threshold, 4), "boxes": []}
    text = getattr(hit, "detection", None)
    if text:
        found = Detection.from_json(text)
        prob = getattr(hit, "child_prob", None)
        if prob is not None and abs(float(prob) - found.prob) > 1e-6:  # re-scored by an operator refit
            found = dataclasses.replace(found, prob=float(prob))
        return found.explain(threshold)
    prob = getattr(hit, "child_prob", None)
    reason = ("not scored by a child detector" if prob is None else
              f"child probability {float(prob):.2f} {'>=' if float(prob) >= threshold else '<'} "
              f"threshold {threshold:.2f}")
    return {"reason": reason, "child_prob": prob, "threshold": round(threshold, 4), "boxes": []}


def apply_policy(result: RawResult | Any, policy: str = DEFAULT_POLICY) -> dict[str, Any]:
    """Turn one query's raw hits into the public JSON object under `policy`.

    Args:
        result: a RawResult, or any object with `query`, `query_child`, `hits` (objects with rank, image, path,
            score, child_prob, optionally flagged) and optionally `image_threshold`.
        policy: "strict", "audit" or "off".

    Returns:
        {"query", "restricted", "disclaimer", "hits": [{"rank", "image", "path", "score", "restricted",
        "disclaimer"}]} -- json.dumps-able (plain str/float/bool/None); under audit each hit also has "why"
        (`explain_hit`).
    """
    policy = validate_policy(policy)
    hits = list(result.hits)
    ranks = [int(getattr(h, "rank", i + 1)) for i, h in enumerate(hits)]
    if policy == "off":
        return {"query": result.query, "restricted": False, "disclaimer": None,
                "hits": [_hit_json(h, r, False, False) for h, r in zip(hits, ranks)]}

    threshold = float(getattr(result, "image_threshold", DEFAULT_IMAGE_THRESHOLD))
    query_restricted = bool(result.query_child)
    flags = [hit_is_restricted(h, threshold) for h in hits]
    if policy == "audit":
        return {"query": result.query, "restricted": query_restricted, "disclaimer": None,
                "hits": [{**_hit_json(h, r, f, False), "why": explain_hit(h, threshold)}
                         for h, r, f in zip(hits, ranks, flags)]}

    if query_restricted:
        return {"query": result.query, "restricted": True, "disclaimer": DISCLAIMER, "hits": []}
    return {"query": result.query, "restricted": False, "disclaimer": None,
            "hits": [_hit_json(h, r, f, f) for h, r, f in zip(hits, ranks, flags)]}


def apply_policy_many(results: Iterable[RawResult | Any], policy: str = DEFAULT_POLICY) -> list[dict[str, Any]]:
    """`apply_policy` over several queries (validates the policy once even when `results` is empty)."""
    policy = validate_policy(policy)
    return [apply_policy(r, policy) for r in results]
