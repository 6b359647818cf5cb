"""Aggregated targets: expert/crowd formulas, combination, own captions, key integrity (no row blow-up)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from retrieval.data import agreement, build_targets, compare_expert_methods, load_course
from retrieval.data.targets import (
    TARGET_COLUMNS,
    crowd_scores,
    dawid_skene,
    expert_scores,
    fit_beta_prior,
    majority_vote,
    mean_grade,
    median_grade,
)
from tests.conftest import require_course_data

FIXTURE = Path(__file__).parent / "fixtures" / "course_tiny"
PRIOR = (0.5, 1.5)


@pytest.fixture(scope="module")
def course():
    return load_course(FIXTURE)


def _row(frame: pd.DataFrame, image: str, query_id: str) -> pd.Series:
    hit = frame[(frame["image"] == image) & (frame["query_id"] == query_id)]
    assert len(hit) == 1
    return hit.iloc[0]


GRADES = np.array([[1, 1, 1], [1, 1, 2], [2, 3, 3], [1, 2, 4], [4, 4, 4], [3, 4, 4]])


def test_majority_vote_maps_grade_and_drops_disagreement() -> None:
    got = majority_vote(GRADES)
    np.testing.assert_allclose(got, [0.0, 0.0, 2 / 3, np.nan, 1.0, 1.0])


def test_median_equals_majority_where_defined_and_covers_all() -> None:
    med, maj = median_grade(GRADES), majority_vote(GRADES)
    defined = ~np.isnan(maj)
    np.testing.assert_allclose(med[defined], maj[defined])
    assert med[3] == pytest.approx(1 / 3)  # 1,2,4 -> middle grade 2


def test_mean_grade_formula() -> None:
    np.testing.assert_allclose(mean_grade(GRADES), (GRADES.mean(axis=1) - 1) / 3)


def test_dawid_skene_is_pooled_and_sane() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(1, 5, size=400)
    noisy = np.clip(true[:, None] + rng.choice([-1, 0, 0, 0, 1], size=(400, 3)), 1, 4)
    got = dawid_skene(noisy)
    assert got.shape == (400,) and np.all((got >= 0) & (got <= 1))
    # One shared confusion matrix: column order does not matter (the real file stores grades sorted).
    np.testing.assert_allclose(dawid_skene(noisy[:, ::-1]), got, atol=1e-9)
    unanimous = (noisy == noisy[:, :1]).all(axis=1)
    np.testing.assert_allclose(got[unanimous], (noisy[unanimous, 0] - 1) / 3, atol=0.15)
    assert kendalltau(got, true).statistic > 0.8


def test_unknown_expert_method_is_refused() -> None:
    with pytest.raises(ValueError, match="'vote'"):
        expert_scores(GRADES, "vote")  # type: ignore[arg-type]


def test_crowd_smoothing_formula_and_shrinkage() -> None:
    got = crowd_scores([3, 0, 1, 6], [0, 3, 2, 0], prior=(1.0, 3.0))
    np.testing.assert_allclose(got, [4 / 7, 1 / 7, 2 / 7, 7 / 10])
    # More unanimous votes -> closer to 1; few votes are shrunk towards the prior mean 0.25.
    assert got[3] > got[0] > 0.25
    with pytest.raises(ValueError):
        crowd_scores([1], [1], prior=(0.0, 1.0))


def test_fit_beta_prior_recovers_simulated_prior() -> None:
    rng = np.random.default_rng(1)
    p = rng.beta(2.0, 6.0, size=4000)
    n = rng.integers(3, 8, size=4000)
    yes = rng.binomial(n, p)
    a, b = fit_beta_prior(yes, n - yes)
    assert a / (a + b) == pytest.approx(0.25, abs=0.02)
    assert 1.2 < a < 3.2 and 3.5 < b < 9.5


def test_columns_sources_and_text(course) -> None:
    t = build_targets(course, crowd_prior=PRIOR)
    assert tuple(t.columns) == TARGET_COLUMNS
    assert t["target"].between(0, 1).all() and t["query_text"].notna().all()
    assert set(t["source"]) == {"expert", "crowd", "expert+crowd"}
    row = _row(t, "1005_ee.jpg", "1002_bb.jpg#1")  # crowd only, text only in extra_captions.tsv
    assert row["source"] == "crowd" and row["n_expert"] == 0 and row["n_crowd"] == 3
    assert row["query_text"] == "A brown dog runs along the sand ."


def test_combination_formula_with_weights(course) -> None:
    t = build_targets(course, crowd_prior=PRIOR, w_expert=3.0, w_crowd=1.0)
    both = _row(t, "1004_dd.jpg", "1001_aa.jpg#2")  # grades 2,3,3; crowd 2 yes 1 no
    expert, crowd = 2 / 3, (2 + 0.5) / (3 + 2.0)
    assert both["expert"] == pytest.approx(expert) and both["crowd"] == pytest.approx(crowd)
    assert both["target"] == pytest.approx((3 * expert + crowd) / 4)
    only_expert = _row(t, "1006_ff.jpg", "1003_cc.jpg#2")  # grades 2,2,3
    assert only_expert["target"] == pytest.approx(1 / 3) and only_expert["source"] == "expert"
    only_crowd = _row(t, "1006_ff.jpg", "1005_ee.jpg#3")  # 0 yes / 6 no
    assert only_crowd["target"] == pytest.approx(0.5 / 8) and only_crowd["n_crowd"] == 6


def test_own_caption_is_strong_positive(course) -> None:
    crowd = course.crowd.copy()
    own = (crowd["image"] == "1006_ff.jpg") & (crowd["query_id"] == "1006_ff.jpg#2")
    crowd.loc[own, ["share_yes", "n_yes", "n_no"]] = [0.0, 0, 6]  # the crowd says no: still the image's caption
    t = build_targets(dataclasses.replace(course, crowd=crowd), crowd_prior=PRIOR)
    row = _row(t, "1006_ff.jpg", "1006_ff.jpg#2")
    assert row["own_caption"] and row["target"] == 1.0 and row["crowd"] == pytest.approx(0.5 / 8)
    assert set(t.loc[t["own_caption"], "query_id"].str.split("#").str[0]) <= set(t.loc[t["own_caption"], "image"])
    assert (t.loc[t["own_caption"], "target"] == 1.0).all()
    assert t["own_caption"].sum() == 4


def test_row_count_is_unique_pairs_and_duplicates_cannot_multiply(course) -> None:
    keys = ["image", "query_id"]
    unique_pairs = len(pd.concat([course.expert[keys], course.crowd[keys]]).drop_duplicates())
    t = build_targets(course, crowd_prior=PRIOR)
    assert len(t) == unique_pairs == 14
    assert not t.duplicated(keys).any()
    # Many-to-many bait: every key repeated (expert x3, crowd x4, conflicting values included).
    noisy_crowd = pd.concat([course.crowd, course.crowd.assign(n_yes=0, n_no=9), course.crowd, course.crowd])
    dup = dataclasses.replace(course, expert=pd.concat([course.expert] * 3, ignore_index=True),
                              crowd=noisy_crowd.reset_index(drop=True))
    t_dup = build_targets(dup, crowd_prior=PRIOR)
    assert len(t_dup) == unique_pairs
    pd.testing.assert_frame_equal(t_dup, t)  # first row per key wins


def test_majority_method_drops_only_pairs_without_other_source(course) -> None:
    t = build_targets(course, expert_method="majority", crowd_prior=PRIOR)
    row = _row(t, "1003_cc.jpg", "1006_ff.jpg#2")  # experts 1,2,4 -> no majority; crowd 2/4 remains
    assert np.isnan(row["expert"]) and row["source"] == "crowd"
    assert row["target"] == pytest.approx((2 + 0.5) / (4 + 2.0))
    assert len(t) == 14


def test_extra_captions_as_positives(course) -> None:
    t = build_targets(course, crowd_prior=PRIOR, include_extra_captions=True)
    extra = t[t["source"] == "own"]
    assert len(t) == 14 + 30 - 4  # the 4 rated own-caption pairs keep their row (and their sources)
    assert len(extra) == 26
    assert (extra["target"] == 1.0).all() and extra["own_caption"].all()


def test_agreement_matches_scipy_on_shared_pairs(course) -> None:
    t = build_targets(course, crowd_prior=PRIOR)
    agree = agreement(t)
    both = t[t["source"] == "expert+crowd"]
    assert agree.n_pairs == len(both) == 5
    assert agree.tau == pytest.approx(kendalltau(both["expert"], both["crowd"]).statistic)


def test_compare_expert_methods_table(course) -> None:
    table = compare_expert_methods(course, crowd_prior=PRIOR)
    assert list(table["method"]) == ["median", "majority", "mean", "dawid_skene"]
    assert table.set_index("method").loc["majority", "shared_pairs"] == 4
    assert table.set_index("method").loc["median", "shared_pairs"] == 5


@pytest.mark.slow
def test_real_data_targets_numbers() -> None:
    root = require_course_data()
    data = load_course(root)
    t = build_targets(data)
    assert len(t) == 51323 and not t.duplicated(["image", "query_id"]).any()
    assert t["query_text"].notna().all()
    agree = agreement(t)
    assert agree.n_pairs == 2329 and agree.tau > 0.5
    majority = build_targets(data, expert_method="majority")
    assert majority["expert"].notna().sum() == 5822 - 126
