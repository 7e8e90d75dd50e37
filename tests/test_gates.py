"""Promotion gates and their statistics: pure rules on arrays, no I/O."""

import numpy as np
import pytest
from fraudloop.models.metrics import (
    _ranked,
    achievable_card_precision,
    paired_ap_difference,
    policy_effect,
    weighted_average_precision,
)
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.gates import FAILED, INSUFFICIENT, PASSED, Gates, judge
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score


def holdout(cards: int = 2_000, frauds_per_card: int = 3, compromised: int = 60, days: int = 7, seed: int = 0):
    """Transactions of `cards` cards over `days` days; `compromised` cards have `frauds_per_card` frauds each."""
    rng = np.random.default_rng(seed)
    card = np.repeat(np.arange(cards), 5)
    time = rng.uniform(0, days * DAY, len(card))
    fraud = np.zeros(len(card), bool)
    for c in rng.choice(cards, compromised, replace=False):
        fraud[np.flatnonzero(card == c)[:frauds_per_card]] = True
    return time, card.astype(str), fraud, rng


def scores(fraud: np.ndarray, rng, skill: float) -> np.ndarray:
    """A model whose frauds score `skill` higher on average."""
    return 1 / (1 + np.exp(-(rng.normal(-3, 1, len(fraud)) + skill * fraud)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 3)), min_size=2, max_size=60))
def test_weighted_average_precision_is_sklearns(rows):
    y = np.array([r[0] for r in rows])
    score = np.array([r[1] / 5 for r in rows])  # coarse: many ties
    weights = np.array([[float(r[2]) for r in rows], [float((r[2] + 1) % 3) for r in rows]])
    if not (weights * y).sum(axis=1).all():
        return
    found = weighted_average_precision(_ranked(y, score), weights)  # both resamples in one pass
    for row, value in zip(weights, found, strict=True):
        assert value == pytest.approx(average_precision_score(y, score, sample_weight=row))


def test_the_same_model_is_not_promoted_and_a_clearly_better_one_is():
    time, card, fraud, rng = holdout()
    champion = scores(fraud, rng, 3.0)
    same = judge(time, card, fraud, champion, champion)
    assert same.status == FAILED and same.difference.estimate == 0 and same.difference.low == 0
    assert "lower bound <= margin" in same.summary
    better = judge(time, card, fraud, scores(fraud, rng, 5.0), champion)
    assert better.status == PASSED and better.difference.low > 0, better.summary


def test_a_challenger_better_only_by_noise_is_not_promoted():
    time, card, fraud, rng = holdout()
    champion = scores(fraud, rng, 3.0)
    noise = champion + rng.normal(0, 0.002, len(champion))  # same model, other seed
    verdict = judge(time, card, fraud, noise, champion)
    assert verdict.difference.low < 0 < verdict.difference.high and verdict.status == FAILED


def test_a_small_holdout_is_insufficient_evidence_not_a_failure():
    time, card, fraud, rng = holdout(compromised=8)
    champion = scores(fraud, rng, 3.0)
    verdict = judge(time, card, fraud, scores(fraud, rng, 8.0), champion)
    assert verdict.status == INSUFFICIENT and verdict.summary.startswith("insufficient evidence: evidence: 24 frauds")
    assert not verdict.passed
    first = judge(time, card, fraud, champion, None)  # a first model needs the evidence too
    assert first.status == INSUFFICIENT


def test_a_first_model_needs_only_the_floors_and_the_evidence():
    time, card, fraud, rng = holdout()
    good = judge(time, card, fraud, scores(fraud, rng, 5.0), None)
    assert good.passed and "no champion to compare with" in good.summary and good.difference is None
    poor = judge(time, card, fraud, scores(fraud, rng, 0.5), None)
    assert poor.status == FAILED and "AP" in poor.summary.split(";")[0]


def test_the_card_precision_floor_is_a_share_of_what_this_holdout_allows():
    time, card, fraud, rng = holdout(frauds_per_card=1, compromised=140)  # 20 compromised cards a day: CP@100 <= 0.2
    best = achievable_card_precision(time, card, fraud)
    assert best == pytest.approx(0.2, abs=0.03)
    perfect = judge(time, card, fraud, fraud + rng.uniform(0, 0.01, len(fraud)), None)
    cp_check = next(c for c in perfect.checks if c.text.startswith("CP@100"))
    assert cp_check.ok and perfect.challenger["card_precision_at_100"] == pytest.approx(best)
    blind = judge(time, card, fraud, rng.uniform(0, 1, len(fraud)), None, Gates(min_average_precision=0,
                                                                                min_recall_at_1pct_fpr=0))
    assert blind.status == FAILED and blind.summary.startswith("failed: CP@100")


def test_resampling_by_card_widens_the_interval_when_a_cards_frauds_go_together():
    time, card, fraud, rng = holdout(frauds_per_card=5, compromised=60)
    index = card.astype(int)
    # Each card's frauds share how hard they are for each model: the models' difference varies by card.
    champion = scores(fraud, rng, 3.0 + rng.normal(0, 1.5, 2_000)[index])
    challenger = scores(fraud, rng, 3.0 + rng.normal(0, 1.5, 2_000)[index])
    by_card = paired_ap_difference(fraud, challenger, champion, card)
    by_row = paired_ap_difference(fraud, challenger, champion, np.arange(len(card)))
    assert by_card.estimate == by_row.estimate
    assert (by_card.high - by_card.low) > 1.3 * (by_row.high - by_row.low)


def test_the_served_thresholds_give_recall_and_alerts_per_day():
    time, card, fraud, _ = holdout(days=7)
    effect = policy_effect(time, fraud, fraud * 0.8 + 0.1, 0.3, 0.7)  # every fraud at 0.9, every genuine at 0.1
    assert effect["recall_at_review"] == 1 and effect["recall_at_decline"] == 1
    assert effect["alerts_per_day"] == pytest.approx(fraud.sum() / 7) == effect["declines_per_day"]


def test_card_precision_may_trail_the_champions_only_within_its_tolerance():
    time, card, fraud, rng = holdout(frauds_per_card=1, compromised=700)  # 100 compromised cards a day
    champion = scores(fraud, rng, 6.0)
    worse_at_the_top = champion.copy()
    genuine = np.flatnonzero(~fraud)
    worse_at_the_top[rng.choice(genuine, 300, replace=False)] = 0.999  # 300 false alarms above every fraud
    verdict = judge(time, card, fraud, worse_at_the_top, champion, Gates(min_average_precision=0,
                                                                          min_card_precision_share=0))
    cp = next(c for c in verdict.checks if "tolerance" in c.text)
    assert not cp.ok and verdict.status == FAILED


def test_a_holdout_without_fraud_is_insufficient_evidence_whatever_the_minimums():
    time, card, fraud, rng = holdout()
    verdict = judge(time, card, np.zeros_like(fraud), rng.uniform(0, 1, len(fraud)), None,
                    Gates(min_frauds=0, min_fraud_cards=0, min_cards=0))
    assert verdict.status == INSUFFICIENT and len(verdict.checks) == 1


def test_the_live_gate_fails_a_holdout_pass_only_with_evidence_of_its_own():
    from fraudloop.pipelines.retraining.validate import Validation

    time, card, fraud, rng = holdout()
    champion = scores(fraud, rng, 3.0)
    passed = judge(time, card, fraud, scores(fraud, rng, 5.0), champion)
    failed = judge(time, card, fraud, champion, scores(fraud, rng, 5.0))
    too_little = judge(time[:50], card[:50], fraud[:50], champion[:50], champion[:50])
    assert (passed.status, failed.status, too_little.status) == (PASSED, FAILED, INSUFFICIENT)

    def status(live):
        return Validation("2", "1", passed, {"challenger": (0.3, 0.7)}, {}, live).status

    assert status(None) == PASSED and status(too_little) == PASSED  # no live evidence yet: the holdout decides
    assert status(passed) == PASSED and status(failed) == FAILED
    live_fails = Validation("2", "1", failed, {"challenger": (0.3, 0.7)}, {}, passed)
    assert live_fails.status == FAILED  # live never rescues a failure
