"""Review and decline thresholds set from stated targets, not picked by hand.

A fraud team states its appetite and its capacity: decline only where the holdout shows a precision of at least
P (a declined genuine customer is the costliest error), and send analysts no more reviews a day than they can
work. Each version's thresholds are derived on its own holdout, logged with a threshold table, and tagged on the
version; the scorer applies the served version's own thresholds, so a promotion keeps the alert volume where it
was asked to be rather than wherever a new model's score scale puts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from fraudloop.models.units import DAY
from scipy.stats import norm

REVIEW_TAG, DECLINE_TAG, TARGETS_TAG = "review_threshold", "decline_threshold", "threshold_targets"


@dataclass(frozen=True)
class Targets:
    decline_precision: float = 0.8  # decline where the holdout's precision is at least this (lower bound below)
    review_capacity_per_day: float = 100.0  # reviews a day the analysts can work
    confidence: float = 0.9  # one-sided, for the precision's lower bound (Wilson)
    min_declines: int = 10  # fewer declines than this on the holdout are too little evidence of precision
    # The reviews' precision must be at least this: a queue filled to capacity with near-zero scores wastes the
    # analysts' time (the review threshold is raised until it holds; with none that holds, the model reviews nothing)
    review_precision: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.decline_precision <= 1:
            raise ValueError(f"decline_precision must be in (0, 1], got {self.decline_precision}")
        if not 0 <= self.review_precision <= 1 or not 0 < self.confidence < 1:
            raise ValueError("review_precision must be in [0, 1] and confidence in (0, 1)")
        if self.review_capacity_per_day < 0:
            raise ValueError(f"review_capacity_per_day must not be negative, got {self.review_capacity_per_day}")

    def describe(self) -> str:
        return (f"decline where precision >= {self.decline_precision:g} ({self.confidence:.0%} lower bound, >= "
                f"{self.min_declines} declines); reviews <= {self.review_capacity_per_day:g} a day at precision >= "
                f"{self.review_precision:g}")


def wilson_lower(hits: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Wilson lower bound of a proportion, elementwise (0 where n is 0)."""
    z = float(norm.ppf(confidence))
    n = np.asarray(n, dtype=float)
    safe = np.maximum(n, 1)
    p = np.asarray(hits, dtype=float) / safe
    centre = p + z * z / (2 * safe)
    spread = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, (centre - spread) / (1 + z * z / safe), 0.0)


def choose(time: np.ndarray, is_fraud: np.ndarray, score: np.ndarray, targets: Targets,
           weight: np.ndarray | None = None) -> tuple[float, float]:
    """(review, decline) for these scores: the lowest decline threshold whose declines' precision (lower bound) is
    at least the target, with enough declines to show it (else 1.0: nothing declined on the model's say); then
    the lowest review threshold that keeps the reviews (score between the two) within the capacity a day at the
    reviews' precision floor (else the decline threshold: nothing reviewed on the model's say). A threshold takes
    a run of tied scores whole. Rows without a finite score are left out. `weight`: a downsampled set's, so counts
    are of all the traffic (the precision bound then takes the weighted counts as counts: slightly optimistic where
    sampled rows score high, which blocked rows, always kept, mostly do not leave room for)."""
    score = np.asarray(score, dtype=float)
    keep = np.isfinite(score)
    y, score, time = np.asarray(is_fraud, dtype=bool)[keep], score[keep], np.asarray(time)[keep]
    w = np.ones(len(score)) if weight is None else np.asarray(weight, dtype=float)[keep]
    if not len(score):
        return 1.0, 1.0
    order = np.argsort(-score, kind="stable")
    ranked, caught, w = score[order], y[order], w[order]
    n, hits, cuts = _cuts(ranked, caught, w)
    good = (wilson_lower(hits, n, targets.confidence) >= targets.decline_precision) & (n >= targets.min_declines)
    decline = float(cuts[np.flatnonzero(good)[-1]]) if good.any() else 1.0
    below = ranked < decline
    capacity = math.floor(targets.review_capacity_per_day * _days(time))
    if capacity <= 0 or not below.any():
        return decline, decline
    n, hits, cuts = _cuts(ranked[below], caught[below], w[below])  # the review band: from just under the decline
    fits = (n <= capacity) & (hits >= targets.review_precision * n)
    return (float(cuts[np.flatnonzero(fits)[-1]]) if fits.any() else decline), decline


def _cuts(ranked: np.ndarray, caught: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score of a descending ranking: how many rows score at least it (weighted), how many of
    them are frauds, and the score."""
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
    return np.cumsum(weight)[last_of_tie], np.cumsum(caught * weight)[last_of_tie], ranked[last_of_tie]


def table(time: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
          thresholds: np.ndarray | None = None, weight: np.ndarray | None = None) -> list[dict[str, float]]:
    """At each threshold, what flagging `score >= threshold` means: alerts a day, precision, recall, false-positive
    rate (what a reviewer reads beside the chosen thresholds)."""
    y = np.asarray(is_fraud, dtype=bool)
    score = np.asarray(score, dtype=float)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    days = _days(time)
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2) if thresholds is None else np.asarray(thresholds)
    frauds, genuine = max(float(w[y].sum()), 1.0), max(float(w[~y].sum()), 1.0)
    rows = []
    for t in sorted(set(float(v) for v in grid)):
        flagged = score >= t
        caught, alerts = float(w[flagged & y].sum()), float(w[flagged].sum())
        rows.append({"threshold": round(t, 6), "alerts_per_day": round(alerts / days, 2),
                     "precision": round(caught / max(alerts, 1.0), 4), "recall": round(caught / frauds, 4),
                     "false_positive_rate": round(float(w[flagged & ~y].sum()) / genuine, 6)})
    return rows


def _days(time: np.ndarray) -> int:
    """Calendar days the rows cover (as the validation's policy figures count them)."""
    return max(len(np.unique(np.asarray(time) // DAY)), 1)


def tags(review: float, decline: float, targets: Targets) -> dict[str, str]:
    return {REVIEW_TAG: repr(review), DECLINE_TAG: repr(decline), TARGETS_TAG: targets.describe()}


def from_tags(version_tags: dict[str, str]) -> tuple[float, float] | None:
    """A version's own (review, decline) thresholds, or None when it has none (or they make no sense)."""
    try:
        review, decline = float(version_tags[REVIEW_TAG]), float(version_tags[DECLINE_TAG])
    except (KeyError, ValueError):
        return None
    return (review, decline) if 0 <= review <= decline <= 1 else None
