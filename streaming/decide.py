"""Pure decision logic: thresholds to outcomes, and per-transaction reasons from feature contributions."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
EXPLORATION = "exploration"  # what decided an approval exploration made (the `rule` of the decision)


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


@dataclass(frozen=True)
class Exploration:
    """Counterfactual exploration: approve instead a random `share` of what the policy would decline or review, up to
    `max_amount` (reference currency, as the `amount` feature) and up to `max_score`, so that outcomes are learnt
    where the model blocks, and estimates weighted by 1 / probability hold there (docs/retraining.md)."""

    share: float = 0.0
    max_amount: float = 1_000.0
    max_score: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1 or self.max_amount < 0 or not 0 <= self.max_score <= 1:
            raise ValueError(f"exploration share must be within [0, 1), max_amount not negative, max_score within "
                             f"0..1, got {self}")


def explore(decisions: list[str], scores: np.ndarray, amounts: np.ndarray, draws: np.ndarray,
            exploration: Exploration, open_: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """The decisions taken under `exploration`, and the probability each had. `draws`: uniform in [0, 1), one per
    transaction (`draw`: from its id, so a replay decides alike); `open_`: those that may be explored (in the
    scorer: decided by the model's thresholds, not by a rule or a list)."""
    taken = np.asarray(decisions, dtype=object)
    share = exploration.share
    eligible = ((taken != APPROVE) & (np.asarray(amounts) <= exploration.max_amount)
                & (np.asarray(scores) <= exploration.max_score))
    if open_ is not None:
        eligible &= open_
    explored = eligible & (np.asarray(draws) < share)
    probability = np.where(explored, share, np.where(eligible, 1.0 - share, 1.0))
    return np.where(explored, APPROVE, taken).tolist(), probability


def draw(transaction_id: str, key: bytes = b"") -> float:
    """A uniform draw in [0, 1) fixed by the transaction id: the same on every replay, scorer and partition. `key`
    (`exploration_key`, secret): without it, whoever knows an id knows whether it will be explored."""
    return int.from_bytes(hashlib.blake2b(transaction_id.encode(), digest_size=8, key=key[:64]).digest()) / 2.0 ** 64
