"""apply_policy semantics for strict / audit / off, and no withheld name or path anywhere in strict JSON."""
from __future__ import annotations

import json

import pytest

from retrieval.config import DISCLAIMER
from retrieval.errors import InvalidQueryError
from retrieval.policy.apply import apply_policy, apply_policy_many, query_is_child, validate_policy
from retrieval.policy.types import Hit, RawResult

CHILD_IMG = "1111_childimage.jpg"
FLAGGED_IMG = "2222_flaggedcaption.jpg"
ADULT_IMG = "3333_adultimage.jpg"


def _hits() -> list[Hit]:
    return [
        Hit(1, ADULT_IMG, f"/data/imgs/{ADULT_IMG}", 0.91, 0.05, 7),
        Hit(2, CHILD_IMG, f"/data/imgs/{CHILD_IMG}", 0.80, 0.93, 3),
        Hit(3, FLAGGED_IMG, f"/secret/{FLAGGED_IMG}", 0.42, None, 9, flagged=True),
    ]


def _result(query: str = "a man riding a bike", child: bool = False) -> RawResult:
    return RawResult(query, child, _hits(), image_threshold=0.5)


def test_strict_withholds_flagged_images_but_keeps_rank_and_score() -> None:
    out = apply_policy(_result(), "strict")
    assert out["restricted"] is False and out["disclaimer"] is None
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3]
    assert [h["score"] for h in out["hits"]] == [0.91, 0.80, 0.42]
    assert [h["restricted"] for h in out["hits"]] == [False, True, True]
    adult, child, flagged = out["hits"]
    assert adult["image"] == ADULT_IMG and adult["path"].endswith(ADULT_IMG) and adult["disclaimer"] is None
    for h in (child, flagged):
        assert h["image"] is None and h["path"] is None and h["disclaimer"] == DISCLAIMER


def test_strict_json_never_contains_a_withheld_name_or_path() -> None:
    text = json.dumps(apply_policy(_result(), "strict"))
    for needle in (CHILD_IMG, FLAGGED_IMG, "1111", "2222", "childimage", "/secret/"):
        assert needle not in text
    assert ADULT_IMG in text


def test_strict_child_query_returns_no_hits_and_the_disclaimer() -> None:
    out = apply_policy(_result("two kids on a slide", child=True), "strict")
    assert out == {"query": "two kids on a slide", "restricted": True, "disclaimer": DISCLAIMER, "hits": []}
    text = json.dumps(out)
    assert ADULT_IMG not in text and CHILD_IMG not in text


def test_strict_is_the_default() -> None:
    assert apply_policy(_result()) == apply_policy(_result(), "strict")


def test_audit_shows_everything_with_flags() -> None:
    out = apply_policy(_result("two kids", child=True), "audit")
    assert out["restricted"] is True and out["disclaimer"] is None
    assert [h["image"] for h in out["hits"]] == [ADULT_IMG, CHILD_IMG, FLAGGED_IMG]
    assert [h["restricted"] for h in out["hits"]] == [False, True, True]
    assert all(h["disclaimer"] is None and h["path"] for h in out["hits"])


def test_off_does_no_legal_processing() -> None:
    out = apply_policy(_result("two kids", child=True), "off")
    assert out["restricted"] is False and out["disclaimer"] is None
    assert [h["image"] for h in out["hits"]] == [ADULT_IMG, CHILD_IMG, FLAGGED_IMG]
    assert not any(h["restricted"] for h in out["hits"])


def test_threshold_comes_from_the_result() -> None:
    strict_low = apply_policy(RawResult("q", False, _hits(), image_threshold=0.01), "strict")
    assert [h["restricted"] for h in strict_low["hits"]] == [True, True, True]
    strict_high = apply_policy(RawResult("q", False, _hits(), image_threshold=0.99), "strict")
    assert [h["restricted"] for h in strict_high["hits"]] == [False, False, True]


def test_output_keys_are_the_contract() -> None:
    for policy in ("strict", "audit", "off"):
        out = apply_policy(_result(), policy)
        assert set(out) == {"query", "restricted", "disclaimer", "hits"}
        extra = {"why"} if policy == "audit" else set()  # only operators see the detector's reasons
        for h in out["hits"]:
            assert set(h) == {"rank", "image", "path", "score", "restricted", "disclaimer"} | extra
        json.dumps(out)


@pytest.mark.parametrize("bad", ["STRICT", "none", "", "lenient"])
def test_unknown_policy_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(InvalidQueryError) as err:
        validate_policy(bad)
    assert repr(bad) in str(err.value) and "\n" not in str(err.value) and "strict" in str(err.value)
    with pytest.raises(InvalidQueryError):
        apply_policy(_result(), bad)
    with pytest.raises(InvalidQueryError):
        apply_policy_many([], bad)


def test_query_is_child_combines_lexicon_and_probe() -> None:
    assert query_is_child("a girl's bike")
    assert not query_is_child("students on a school bus", text_prob=None)
    assert query_is_child("students on a school bus", text_prob=0.9, threshold=0.5)
    assert not query_is_child("a man on a bike", text_prob=0.2, threshold=0.5)
