"""The closed loop's outcome model, the review queue's numbers and what an unlabelled transaction means: pure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fraudloop.models.units import DAY, HOUR
from fraudloop.pipelines.data.outcomes import SIMULATED_ANALYST, IssuerConfig, issuer_labels, work_queue
from fraudloop.pipelines.retraining.training_set import NO_CHARGEBACK, UNKNOWN, known_outcomes
from fraudloop.streaming.review_queue import queue_summary

T0 = 1_600_000_000.0


def decided(n: int = 4_000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"transaction_id": [f"t{i}" for i in range(n)],
                         "time": T0 + np.sort(rng.integers(0, 10 * DAY, n)),
                         "decision": rng.choice(["approve", "review", "decline"], n),
                         "is_fraud": rng.random(n) < 0.3})


def test_only_approved_frauds_are_charged_back_and_a_share_of_declines_answered_both_ways():
    frame = decided()
    config = IssuerConfig(cardholder_share=0.25, cardholder_hours=12, chargeback_delay_days=2,
                          chargeback_delay_sigma=0.0)
    labels = issuer_labels(frame, config, np.random.default_rng(0)).merge(frame, on="transaction_id")
    charged = labels[labels["source"] == "chargeback"]
    expected = frame[(frame["decision"] == "approve") & frame["is_fraud"]]
    assert set(charged["transaction_id"]) == set(expected["transaction_id"])
    assert charged["is_fraud_x"].all() and np.allclose(charged["known_at"] - charged["time"], 2 * DAY)
    answers = labels[labels["source"] == "cardholder"]
    assert (answers["decision"] == "decline").all()
    assert (answers["is_fraud_x"] == answers["is_fraud_y"]).all()  # the cardholder tells the truth, both ways
    assert answers["is_fraud_x"].any() and not answers["is_fraud_x"].all()
    declines = (frame["decision"] == "decline").sum()
    assert len(answers) == pytest.approx(0.25 * declines, rel=0.15)
    assert ((answers["known_at"] - answers["time"]) <= 12 * HOUR).all()
    assert set(labels["source"]) == {"chargeback", "cardholder"}  # reviews get theirs from the queue only
    assert labels["known_at"].is_monotonic_increasing


def test_the_analyst_works_the_capacity_highest_score_first_and_cases_expire_unworked():
    rng = np.random.default_rng(2)
    n = 600  # 300 a day for two days against a capacity of 100 a day
    cases = pd.DataFrame({"transaction_id": [f"r{i}" for i in range(n)],
                          "time": T0 + np.sort(rng.uniform(0, 2 * DAY, n)), "score": rng.random(n),
                          "is_fraud": rng.random(n) < 0.5})
    config = IssuerConfig(review_capacity_per_day=100, analyst_error_rate=0.0, review_expiry_hours=24)
    verdicts, still_open = work_queue(cases, T0, T0 + 2 * DAY, config, np.random.default_rng(0))
    assert len(verdicts) == 200 and (verdicts["source"] == "review").all()
    assert (verdicts["analyst"] == SIMULATED_ANALYST).all()
    worked = verdicts.merge(cases, on="transaction_id", suffixes=("", "_truth"))
    assert (worked["is_fraud"] == worked["is_fraud_truth"]).all()  # no errors asked for
    assert (worked["known_at"] > worked["time"]).all() and (worked["known_at"] <= T0 + 2 * DAY).all()
    assert ((worked["known_at"] - worked["time"]) <= 24 * HOUR + HOUR).all()  # never after the case expired
    # each hour takes the best open cases: none worked had a lower score than a case open and waiting then
    for row in worked.itertuples():
        waiting = cases[(cases["time"] < row.known_at) & (cases["time"] > row.known_at - 24 * HOUR)
                        & ~cases["transaction_id"].isin(worked.loc[worked["known_at"] < row.known_at,
                                                                   "transaction_id"])]
        assert row.score >= waiting["score"].nlargest(5).min()
    assert set(still_open["transaction_id"]).isdisjoint(verdicts["transaction_id"])
    assert (still_open["time"] > T0 + DAY).all()  # the first day's leftovers expired
    wrong = work_queue(cases, T0, T0 + 2 * DAY, IssuerConfig(review_capacity_per_day=100, analyst_error_rate=0.3),
                       np.random.default_rng(0))[0].merge(cases, on="transaction_id", suffixes=("", "_truth"))
    assert (wrong["is_fraud"] != wrong["is_fraud_truth"]).mean() == pytest.approx(0.3, abs=0.1)


def test_without_a_label_an_approved_transaction_is_genuine_and_a_blocked_one_unknown():
    ids = pd.Series(["a", "b", "c", "d", "e", "f"])
    decisions = pd.Series(["approve", "decline", "review", "decline", "approve", "review"])
    labels = pd.DataFrame({"transaction_id": ["d", "e", "e", "f", "f"], "is_fraud": [True, True, False, True, False],
                           "known_at": [5.0, 5.0, 6.0, 5.0, 99.0],
                           "source": ["cardholder", "chargeback", "cardholder", "review", "review"]})
    known = known_outcomes(ids, decisions, labels, as_of=10.0)
    assert known["label_source"].tolist() == [NO_CHARGEBACK, UNKNOWN, UNKNOWN, "cardholder", "cardholder", "review"]
    assert known["is_fraud"].tolist() == [False, False, False, True, False, True]  # the latest known by as_of wins
    history = known_outcomes(ids, None, labels, as_of=10.0)  # no decisions: a history without a scorer
    assert UNKNOWN not in set(history["label_source"])


def test_the_queue_summary_counts_cases_queued_worked_and_expired_in_the_window():
    reviews = pd.DataFrame({"transaction_id": ["old", "a", "b", "c"],
                            "time": [T0 - 3 * DAY + HOUR, T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]})
    verdicts = pd.DataFrame({"transaction_id": ["a", "b"], "known_at": [T0 + 5 * HOUR, T0 + 12 * HOUR]})
    day = queue_summary(reviews, verdicts, T0, T0 + DAY, expiry_hours=72)
    assert day == {"queued_per_day": 3.0, "worked_per_day": 2.0, "expired_per_day": 1.0,  # "old" expired at T0 + 1 h
                   "verdict_latency_hours_p50": 7.0}


def test_a_quiet_day_banks_no_capacity_for_a_busy_one():
    busy = pd.DataFrame({"transaction_id": [f"b{i}" for i in range(300)], "time": T0 + DAY + np.arange(300) * 60.0,
                         "score": 0.5, "is_fraud": False})
    verdicts, _ = work_queue(busy, T0, T0 + 2 * DAY, IssuerConfig(review_capacity_per_day=100),
                             np.random.default_rng(0))
    assert len(verdicts) <= 100 + 1  # the first, empty day's capacity is lost, not spent on the second
