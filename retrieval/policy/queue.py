"""Which images an operator should look at first: expected gain, spread across the library.

Expected gain of one answer = the chance the current decision about the image is wrong: P(no child | score) for a
withheld image, `MISS_WEIGHT` x P(child | score) for a shown one (a missed child costs more than a hidden adult).
P(child | score) is the detector's calibration on its own training rows (isotonic, out-of-fold scores). Images
near the threshold therefore come first. Diversity: each pick discounts the images most like it (and like images
already reviewed), cosine in the index's own vector space, so twenty answers cover twenty kinds of photo instead
of one burst of near-duplicates.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: A child shown by mistake weighs this many adults withheld by mistake.
MISS_WEIGHT = 3.0
#: How much similarity to an already chosen/reviewed image lowers a candidate's gain (gain * (1 - DIVERSITY * sim^2)).
DIVERSITY = 0.9
#: Only this many top-gain candidates enter the diversity pass (bounds the cost on a million rows).
POOL = 2000


def calibration(train_scores: npt.ArrayLike, train_positive: npt.ArrayLike) -> Any:
    """P(child | detector score) fitted on the training rows (isotonic, so monotone in the score)."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        np.asarray(train_scores, np.float64), np.asarray(train_positive, np.float64))


def expected_gain(prob: npt.ArrayLike, threshold: float, p_child: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per row: P(the current decision is wrong), misses weighted by MISS_WEIGHT."""
    prob = np.asarray(prob, np.float64)
    pc = np.asarray(p_child, np.float64)
    return np.where(prob >= threshold, 1.0 - pc, MISS_WEIGHT * pc)


def review_queue(gain: npt.ArrayLike, vectors: npt.ArrayLike, reviewed: npt.ArrayLike, n: int) -> list[int]:
    """Up to `n` unreviewed row ids, greedy by gain discounted for similarity to earlier picks and reviewed rows."""
    gain = np.asarray(gain, np.float64).copy()
    reviewed = np.asarray(reviewed, bool)
    gain[reviewed] = -np.inf
    open_rows = np.flatnonzero(np.isfinite(gain))
    if n <= 0 or not len(open_rows):
        return []
    pool = open_rows[np.argsort(-gain[open_rows], kind="stable")[:max(POOL, n)]]
    V = np.asarray(vectors[pool], np.float32)
    sim = np.zeros(len(pool), np.float32)
    done = np.flatnonzero(reviewed)
    for start in range(0, len(done), 4096):
        R = np.asarray(vectors[done[start:start + 4096]], np.float32)
        sim = np.maximum(sim, (V @ R.T).max(1))
    g = gain[pool]
    picked: list[int] = []
    taken = np.zeros(len(pool), bool)
    for _ in range(min(n, len(pool))):
        score = np.where(taken, -np.inf, g * (1.0 - DIVERSITY * np.clip(sim, 0, 1) ** 2))
        j = int(np.argmax(score))
        picked.append(int(pool[j]))
        taken[j] = True
        sim = np.maximum(sim, V @ V[j])
    return picked
