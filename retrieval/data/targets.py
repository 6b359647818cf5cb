"""One 0-1 relevance target per (image, query_id) from expert grades, crowd votes and own captions.

Experts (ExpertAnnotations.tsv: three grades 1-4 per pair) -> `expert` in [0, 1], grade g maps to (g-1)/3:

- ``median`` (DEFAULT): the middle of the three grades. Whenever two experts agree this *is* the seed's
  majority vote; when all three disagree it is the middle grade instead of dropping the pair.
- ``majority``: the seed's rule (grade given by >= 2 of 3 experts; all-disagree pairs -> NaN, dropped).
- ``mean``: mean grade. Treats the ordinal 1-4 scale as an interval scale.
- ``dawid_skene``: latent-class EM (Dawid & Skene 1979) with ONE confusion matrix shared by the three
  experts; target = posterior expected (g-1)/3. Shared because the file stores each row's grades sorted
  ascending (e1 <= e2 <= e3 on all 5,822 rows), so the columns do not identify annotators and a
  per-column confusion matrix would model "lowest/highest grade", not a person.

Why median is the default (measured on the real course data with `compare_expert_methods(load_course(DIR))`;
Kendall tau-b of the expert score against the crowd on the pairs rated by both sources):

    method        shared pairs   tau vs smoothed crowd   tau vs raw share_yes
    median        2,329          0.636                   0.653
    majority      2,258          0.640                   0.658
    mean          2,329          0.605                   0.620
    dawid_skene   2,329          0.603                   0.617

Majority drops 126 of the 5,822 expert pairs (all three experts disagree), 71 of them shared with the crowd.
On the 2,258 pairs majority keeps, median gives exactly the same values (tau 0.640), so majority's tiny
lead is entirely from discarding the 71 hardest, disputed pairs; median keeps full coverage. It beats the
mean and Dawid-Skene by ~0.03 tau, needs no fitting, and is the standard statistic for ordinal grades.

Crowd (CrowdAnnotations.tsv: n_yes, n_no per pair) -> `crowd` = (n_yes + a) / (n + a + b), the posterior
mean of a Beta(a, b) prior. Most pairs have only 3 votes, so a raw 3/3 share of 1.0 overstates certainty.
By default (a, b) is the beta-binomial maximum-likelihood fit to all crowd rows (`fit_beta_prior`; on the
course data a = 0.068, b = 0.912, prior mean 0.069: almost all random pairs are irrelevant, so 3/3 yes
-> 0.77, 0/3 -> 0.017). Pass `crowd_prior=(a, b)` to fix it.

Combination: target = (w_e * expert + w_c * crowd) / (w_e + w_c) over the sources present for the pair,
so a pair rated by one source takes that source's value. Defaults w_e = w_c = 1.

Own captions: when query_id's image equals the image (the caption was written for it) target = 1.0,
whatever the sources say (on the course data experts gave grade 4 to 458 of 474 own-caption grades and
the crowd's mean share on 721 own pairs is 0.91: the disagreements are rating noise). `expert` / `crowd`
keep the raw source values and `own_caption` is True.

Keys: each source is de-duplicated on (image, query_id) (first row kept) before an outer merge with
`validate="one_to_one"`, so the output has exactly one row per unique pair in expert U crowd. (The seed's
many-to-many merge on non-unique keys turned 5,822 rows into 223,538.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln
from scipy.stats import kendalltau

from retrieval.data.course import GRADE_COLUMNS, CourseData

ExpertMethod = Literal["median", "majority", "mean", "dawid_skene"]
EXPERT_METHODS: tuple[ExpertMethod, ...] = ("median", "majority", "mean", "dawid_skene")
DEFAULT_EXPERT_METHOD: ExpertMethod = "median"
TARGET_COLUMNS = ("image", "query_id", "query_text", "target", "expert", "crowd", "n_expert", "n_crowd",
                  "source", "own_caption")
N_GRADES = 4
KEYS = ["image", "query_id"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Agreement:
    """Kendall tau-b between expert and crowd scores on the pairs both rated."""

    tau: float
    p_value: float
    n_pairs: int


def _grade_counts(grades: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """(n, 3) grades 1-4 -> (n, 4) number of experts who gave each grade."""
    return (grades[:, :, None] == np.arange(1, N_GRADES + 1)).sum(axis=1)


def majority_vote(grades: npt.NDArray[np.integer]) -> FloatArray:
    """(g-1)/3 for the grade >= 2 experts gave; NaN where all disagree (the seed's rule)."""
    counts = _grade_counts(grades)
    top = counts.argmax(axis=1)
    return np.where(counts.max(axis=1) >= 2, top / (N_GRADES - 1), np.nan)


def median_grade(grades: npt.NDArray[np.integer]) -> FloatArray:
    return (np.median(grades, axis=1) - 1.0) / (N_GRADES - 1)


def mean_grade(grades: npt.NDArray[np.integer]) -> FloatArray:
    return (grades.mean(axis=1) - 1.0) / (N_GRADES - 1)


def dawid_skene(grades: npt.NDArray[np.integer], n_iter: int = 100, tol: float = 1e-6) -> FloatArray:
    """Posterior expected (g-1)/3 under a latent-class model with one confusion matrix shared by all raters."""
    counts = _grade_counts(grades).astype(np.float64)
    post = counts / counts.sum(axis=1, keepdims=True)  # init: soft vote
    eps = 1e-6
    for _ in range(n_iter):
        prior = post.mean(axis=0) + eps
        confusion = post.T @ counts + eps  # (true k, observed l)
        confusion /= confusion.sum(axis=1, keepdims=True)
        log_post = np.log(prior) + counts @ np.log(confusion).T
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        done = np.abs(new - post).max() < tol
        post = new
        if done:
            break
    return post @ (np.arange(N_GRADES) / (N_GRADES - 1))


_EXPERT_FUNCS = {"median": median_grade, "majority": majority_vote, "mean": mean_grade,
                 "dawid_skene": dawid_skene}


def expert_scores(grades: npt.NDArray[np.integer], method: ExpertMethod = DEFAULT_EXPERT_METHOD) -> FloatArray:
    """(n, 3) grades -> (n,) scores in [0, 1] (NaN = no consensus, only for `majority`)."""
    if method not in _EXPERT_FUNCS:
        raise ValueError(f"expert method {method!r} is not one of {EXPERT_METHODS}")
    return _EXPERT_FUNCS[method](np.asarray(grades))


def _betabinom_nll(log_ab: FloatArray, k: FloatArray, n: FloatArray) -> float:
    a, b = np.exp(log_ab)
    # log C(n, k) is constant in (a, b) and left out.
    ll = (gammaln(k + a) + gammaln(n - k + b) - gammaln(n + a + b)
          - gammaln(a) - gammaln(b) + gammaln(a + b))
    return float(-ll.sum())


def fit_beta_prior(n_yes: npt.ArrayLike, n_no: npt.ArrayLike) -> tuple[float, float]:
    """Beta-binomial maximum-likelihood (a, b) for the crowd's yes-probability across pairs."""
    k = np.asarray(n_yes, dtype=np.float64)
    n = k + np.asarray(n_no, dtype=np.float64)
    keep = n > 0
    k, n = k[keep], n[keep]
    if len(k) == 0:
        return 1.0, 1.0
    mean = float(np.clip(k.sum() / n.sum(), 0.02, 0.98))
    start = np.log([mean * 2.0, (1.0 - mean) * 2.0])
    res = minimize(_betabinom_nll, start, args=(k, n), method="L-BFGS-B", bounds=[(-7.0, 7.0)] * 2)
    a, b = np.exp(res.x)
    return float(a), float(b)


def crowd_scores(n_yes: npt.ArrayLike, n_no: npt.ArrayLike, prior: tuple[float, float]) -> FloatArray:
    """Posterior mean share of yes: (n_yes + a) / (n_yes + n_no + a + b)."""
    a, b = prior
    if a <= 0 or b <= 0:
        raise ValueError(f"crowd prior {prior!r} must have a > 0 and b > 0")
    yes = np.asarray(n_yes, dtype=np.float64)
    total = yes + np.asarray(n_no, dtype=np.float64)
    return (yes + a) / (total + a + b)


def is_own_caption(images: pd.Series, query_ids: pd.Series) -> npt.NDArray[np.bool_]:
    """True where the query was written for this image (query_id = `<image>#<n>`)."""
    return (query_ids.str.split("#", n=1).str[0] == images).to_numpy(dtype=bool)


def build_targets(
    course: CourseData,
    *,
    expert_method: ExpertMethod = DEFAULT_EXPERT_METHOD,
    crowd_prior: tuple[float, float] | None = None,
    w_expert: float = 1.0,
    w_crowd: float = 1.0,
    include_extra_captions: bool = False,
) -> pd.DataFrame:
    """One row per unique (image, query_id) in expert U crowd with columns `TARGET_COLUMNS`.

    Args:
        expert_method: how three expert grades become one score (see module docstring).
        crowd_prior: Beta(a, b) prior for the crowd share; None = fit to this data (`fit_beta_prior`).
        w_expert, w_crowd: weights of the two sources where both rated the pair.
        include_extra_captions: also add every extra caption as an (image, own caption) pair with target 1.0
            and source "own" (pairs already rated keep their row).

    Rows whose only source gives no value (majority without consensus, not an own caption) are dropped.
    `query_text` comes from `course.captions` (NaN if the query_id has no known text).
    """
    if w_expert < 0 or w_crowd < 0 or w_expert + w_crowd == 0:
        raise ValueError(f"weights w_expert={w_expert}, w_crowd={w_crowd} must be >= 0 and not both 0")
    expert = course.expert.drop_duplicates(KEYS, keep="first")
    grades = expert[list(GRADE_COLUMNS)].to_numpy()
    expert = pd.DataFrame({"image": expert["image"].to_numpy(), "query_id": expert["query_id"].to_numpy(),
                           "expert": expert_scores(grades, expert_method),
                           "n_expert": np.full(len(expert), grades.shape[1], dtype=np.int64)})

    crowd = course.crowd.drop_duplicates(KEYS, keep="first")
    prior = crowd_prior if crowd_prior is not None else fit_beta_prior(crowd["n_yes"], crowd["n_no"])
    crowd = pd.DataFrame({"image": crowd["image"].to_numpy(), "query_id": crowd["query_id"].to_numpy(),
                          "crowd": crowd_scores(crowd["n_yes"], crowd["n_no"], prior),
                          "n_crowd": (crowd["n_yes"] + crowd["n_no"]).to_numpy(dtype=np.int64)})

    pairs = expert.merge(crowd, on=KEYS, how="outer", validate="one_to_one")
    if include_extra_captions and course.extra_captions is not None:
        own = course.extra_captions[["image", "query_id"]].drop_duplicates(KEYS)
        pairs = pairs.merge(own, on=KEYS, how="outer", validate="one_to_one")
    pairs["n_expert"] = pairs["n_expert"].fillna(0).astype(np.int64)
    pairs["n_crowd"] = pairs["n_crowd"].fillna(0).astype(np.int64)

    e, c = pairs["expert"].to_numpy(dtype=np.float64), pairs["crowd"].to_numpy(dtype=np.float64)
    has_e, has_c = ~np.isnan(e), ~np.isnan(c)
    we, wc = np.where(has_e, w_expert, 0.0), np.where(has_c, w_crowd, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        target = (we * np.nan_to_num(e) + wc * np.nan_to_num(c)) / (we + wc)
    own = is_own_caption(pairs["image"], pairs["query_id"])
    target = np.where(own, 1.0, target)
    pairs["target"] = target
    pairs["own_caption"] = own
    source = np.select([has_e & has_c, has_e, has_c], ["expert+crowd", "expert", "crowd"], default="own")
    pairs["source"] = source
    pairs = pairs[~np.isnan(target)]

    texts = course.captions
    pairs = pairs.merge(texts, on="query_id", how="left", validate="many_to_one")
    return pairs[list(TARGET_COLUMNS)].sort_values(KEYS, ignore_index=True)


def agreement(targets: pd.DataFrame) -> Agreement:
    """Kendall tau-b (scipy) between the `expert` and `crowd` columns on the rows that have both."""
    both = targets[targets["expert"].notna() & targets["crowd"].notna()]
    if len(both) < 2:
        return Agreement(tau=float("nan"), p_value=float("nan"), n_pairs=len(both))
    res = kendalltau(both["expert"].to_numpy(), both["crowd"].to_numpy())
    return Agreement(tau=float(res.statistic), p_value=float(res.pvalue), n_pairs=len(both))


def compare_expert_methods(course: CourseData, crowd_prior: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per expert method: expert pairs kept, shared pairs, Kendall tau vs smoothed crowd and vs raw share_yes.

    This is the evidence for `DEFAULT_EXPERT_METHOD` (numbers in the module docstring).
    """
    if crowd_prior is None:
        crowd_prior = fit_beta_prior(course.crowd["n_yes"], course.crowd["n_no"])
    share = course.crowd.drop_duplicates(KEYS)[KEYS + ["share_yes"]]
    rows = []
    for method in EXPERT_METHODS:
        frame = build_targets(course, expert_method=method, crowd_prior=crowd_prior)
        agree = agreement(frame)
        raw = agreement(frame.drop(columns="crowd").merge(share, on=KEYS, how="left", validate="one_to_one")
                        .rename(columns={"share_yes": "crowd"}))
        rows.append({"method": method, "expert_pairs": int(frame["expert"].notna().sum()),
                     "shared_pairs": agree.n_pairs, "tau": agree.tau, "tau_raw_share": raw.tau})
    return pd.DataFrame(rows)
