"""Pure decision logic: thresholds to outcomes, and per-transaction reasons from feature contributions."""

from __future__ import annotations

import math

import numpy as np

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"


def outcomes(scores: np.ndarray, review_threshold: float, decline_threshold: float) -> list[str]:
    return [DECLINE if s >= decline_threshold else REVIEW if s >= review_threshold else APPROVE
            for s in scores.tolist()]


def top_reasons(contributions: np.ndarray, values: np.ndarray, names: tuple[str, ...], k: int) -> list[dict]:
    """The k features that pushed the score up the most (LightGBM's exact TreeSHAP, log-odds units)."""
    order = np.argsort(-contributions[: len(names)])[:k]
    return [
        {"feature": names[j], "value": None if math.isnan(values[j]) else float(values[j]),
         "contribution": round(float(contributions[j]), 4)}
        for j in order
        if contributions[j] > 0
    ]
