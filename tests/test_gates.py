"""Promotion gates: pure rules."""

from pipelines.gates import Gates, judge

GOOD = {"average_precision": 0.70, "card_precision_at_100": 0.30, "recall_at_1pct_fpr": 0.60}


def test_a_first_model_needs_only_the_floors():
    verdict = judge(GOOD, None)
    assert verdict.passed and "no champion to compare with" in verdict.summary
    low = judge({**GOOD, "average_precision": 0.10}, None)
    assert not low.passed and low.summary.startswith("failed: AP 0.1000 < floor 0.3000")


def test_the_challenger_must_match_the_champion_on_the_same_holdout():
    champion = {**GOOD, "average_precision": 0.72}
    assert not judge(GOOD, champion).passed
    assert judge(GOOD, champion, Gates(average_precision_margin=-0.03)).passed  # a tolerated small loss
    assert not judge(GOOD, {**GOOD, "average_precision": 0.69}, Gates(average_precision_margin=0.02)).passed


def test_card_precision_may_trail_only_within_its_tolerance():
    champion = {**GOOD, "average_precision": 0.5, "card_precision_at_100": 0.40}
    verdict = judge(GOOD, champion)
    assert not verdict.passed and "CP@100 0.3000 < champion 0.4000" in verdict.summary
    assert judge(GOOD, champion, Gates(card_precision_tolerance=0.11)).passed


def test_every_check_is_reported():
    verdict = judge(GOOD, {**GOOD, "average_precision": 0.5})
    assert len(verdict.checks) == 5 and all(check.ok for check in verdict.checks)
