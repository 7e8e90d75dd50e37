"""Outcomes as an issuer receives them (the closed loop): what comes back depends on what the scorer decided.

The open loop (`simulate.labels_of`) labels every fraud whatever was decided: an oracle, kept for measuring. At an
issuer, only an approved fraud is charged back, days later; a declined transaction is never charged back, though
the cardholder sometimes calls within hours (it was fraud, or "it was me"); a reviewed transaction gets a verdict
only if an analyst works its case before it expires. Pure functions over frames; the caller supplies the decisions
(the scorer's, read from its store, or a model's in a benchmark) and the randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from fraudloop.models.thresholds import Targets
from fraudloop.models.units import HOUR
from fraudloop.pipelines.data.simulate import label_times
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.decide import APPROVE, DECLINE

LABEL_COLUMNS = ["transaction_id", "is_fraud", "known_at", "source", "analyst"]
SIMULATED_ANALYST = "simulated-analyst"


@dataclass(frozen=True)
class IssuerConfig:
    # An approved fraud's chargeback: log-normal delay (median days, shape), as the open loop's labels
    chargeback_delay_days: float = 2.0
    chargeback_delay_sigma: float = 0.5
    # Declined transactions whose cardholder answers (fraud, or "it was me"), within up to this many hours
    cardholder_share: float = 0.2
    cardholder_hours: float = 12.0
    # The review queue: cases an analyst team works a day (highest score first), the share of verdicts they get
    # wrong, and how long a case waits before it expires unworked
    review_capacity_per_day: float = Targets.review_capacity_per_day  # what validation sets the thresholds for
    analyst_error_rate: float = 0.05
    review_expiry_hours: float = ScorerConfig.model_fields["review_expiry_hours"].default  # what the page applies

    def __post_init__(self) -> None:
        for name in ("chargeback_delay_days", "chargeback_delay_sigma", "cardholder_hours", "review_capacity_per_day",
                     "review_expiry_hours"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("cardholder_share", "analyst_error_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")


def issuer_labels(decided: pd.DataFrame, config: IssuerConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The labels that come back without an analyst, for `decided` (transaction_id, time, decision, is_fraud):
    chargebacks of approved frauds, and the cardholder's answers on a share of the declines. Reviews get theirs
    from the queue (`work_queue`). LABEL_COLUMNS, by known_at."""
    time_ = decided["time"].to_numpy(np.int64)
    fraud = decided["is_fraud"].to_numpy(bool)
    decision = decided["decision"].to_numpy(object)
    charged = (decision == APPROVE) & fraud
    answered = (decision == DECLINE) & (rng.random(len(decided)) < config.cardholder_share)
    chargeback_at = label_times(time_, config.chargeback_delay_days, config.chargeback_delay_sigma, rng)
    answer_at = time_ + np.round(rng.uniform(0, config.cardholder_hours * HOUR, len(decided))).astype(np.int64)
    ids = decided["transaction_id"].to_numpy(object)
    labels = pd.concat([
        _labels(ids[charged], fraud[charged], chargeback_at[charged], "chargeback"),
        _labels(ids[answered], fraud[answered], answer_at[answered], "cardholder"),
    ], ignore_index=True)
    return labels.sort_values(["known_at", "transaction_id"], kind="stable", ignore_index=True)


def work_queue(cases: pd.DataFrame, start: float, end: float, config: IssuerConfig, rng: np.random.Generator,
               analyst: str = SIMULATED_ANALYST) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A simulated analyst team works the review queue from `start` to `end`, hour by hour: each hour, the open
    cases (queued by then, not worked, younger than the expiry) by score, highest first, as many as the hour's share
    of the daily capacity; each verdict is the truth, flipped at the error rate, known at the end of its hour.

    `cases`: the open cases at `start` and those queued before `end` (transaction_id, time, score, is_fraud).
    Returns (verdicts: LABEL_COLUMNS, the cases still open at `end`: those not worked and not expired)."""
    open_ = cases.sort_values(["score", "time"], ascending=[False, True], kind="stable")
    per_hour, carry = config.review_capacity_per_day / 24, 0.0
    worked = []
    hour = start
    while hour < end:
        until = min(hour + HOUR, end)
        carry += per_hour * (until - hour) / HOUR
        budget = int(carry)
        waiting = open_[(open_["time"] < until) & (open_["time"] > until - config.review_expiry_hours * HOUR)]
        taken = waiting.head(budget)
        carry = min(carry - len(taken), 1.0)  # an hour's unused capacity is lost, not banked for a busier one
        if len(taken):
            worked.append(taken.assign(known_at=until))
            open_ = open_.drop(taken.index)
        hour = until
    open_ = open_[open_["time"] > end - config.review_expiry_hours * HOUR]
    if not worked:
        return pd.DataFrame(columns=LABEL_COLUMNS), open_
    done = pd.concat(worked)
    wrong = rng.random(len(done)) < config.analyst_error_rate
    verdicts = _labels(done["transaction_id"].to_numpy(object), done["is_fraud"].to_numpy(bool) ^ wrong,
                       done["known_at"].to_numpy(float), "review", analyst)
    return verdicts, open_


def _labels(ids: np.ndarray, is_fraud: np.ndarray, known_at: np.ndarray, source: str,
            analyst: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({"transaction_id": ids, "is_fraud": np.asarray(is_fraud, bool),
                         "known_at": np.asarray(known_at, float), "source": source, "analyst": analyst},
                        columns=LABEL_COLUMNS)
