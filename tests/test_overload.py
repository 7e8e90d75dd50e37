"""Graceful overload: the governor's modes (pure), and what a batch scored while shedding gives up and keeps."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from fraudloop.models.features import FEATURE_NAMES, N_FEATURES
from fraudloop.models.schema import Transaction
from fraudloop.streaming.model import ServingModel
from fraudloop.streaming.overload import FULL, LEAN, Budget, Governor

from tests.test_scoring_core import NOW, T0, Feed, make_scorer

BUDGET = Budget(wait_ms=100, lag=1_000, recover_seconds=2.0, escalate_seconds=0.5)


def run(governor: Governor, observations: list[tuple[float, float, int]]) -> list[str]:
    return [governor.observe(wait, lag, at) for at, wait, lag in observations]


def test_one_stall_does_not_shed_anything():
    modes = run(Governor(BUDGET), [(0.0, 10, 0), (0.1, 400, 0), (0.2, 10, 0), (0.3, 10, 0)])
    assert modes == [FULL] * 4


def test_a_sustained_overload_sheds_and_the_backlog_cleared_restores_full_service():
    governor = Governor(BUDGET)
    modes = run(governor, [(t / 10, 150, 0) for t in range(0, 12)])  # 1.1 s over the wait budget
    assert modes[:5] == [FULL] * 5 and modes[5:] == [LEAN] * 7
    # between half the budget and the budget: the mode holds, however long
    assert set(run(governor, [(1.2 + t / 10, 70, 600) for t in range(40)])) == {LEAN}
    calm = run(governor, [(5.2 + t / 10, 10, 100) for t in range(25)])
    assert calm[:20] == [LEAN] * 20 and calm[20:] == [FULL] * 5  # 2 s under half of both budgets
    assert run(governor, [(8.0, 120, 0), (8.4, 120, 0), (8.5, 120, 0)]) == [FULL, FULL, LEAN]  # and again


def test_lag_alone_counts():
    assert run(Governor(BUDGET), [(t / 10, 0, 5_000) for t in range(10)])[-1] == LEAN


def test_shedding_switched_off_is_full_service_always():
    assert set(run(Governor(BUDGET, enabled=False), [(t / 10, 10_000, 10**6) for t in range(50)])) == {FULL}


def test_a_lean_batch_keeps_every_decision_and_the_declines_reasons_and_sheds_the_reviews_reasons():
    """The same batch in full and lean mode: the same decisions and scores; declines keep their exact reasons."""
    rng = np.random.default_rng(0)
    x = rng.random((4_000, N_FEATURES))
    x[:, 0] *= 1_000  # the amount: the fraud probability rises with it
    data = lgb.Dataset(x, label=(rng.random(4_000) < x[:, 0] / 1_000).astype(float), feature_name=list(FEATURE_NAMES))
    model = ServingModel("card-fraud", "1", lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                                                      data, num_boost_round=30))
    amounts = [units * 100 for units in range(0, 1_000, 25)]
    batch = [Transaction(f"T{i}", f"C{i % 5}", f"M{i % 3}", T0 + i * 60, a) for i, a in enumerate(amounts)]
    results = {}
    for mode in (FULL, LEAN):
        scorer = make_scorer(review_threshold=0.6, decline_threshold=0.8)
        feed = Feed(scorer.config)
        messages = [feed.tx(tx) for tx in batch]
        results[mode] = scorer.process(messages, model, now=NOW, mode=mode).decisions
    full, lean = results[FULL], results[LEAN]
    # delivered again once the scorer is back in full service: the decisions made lean, as they were made
    again = scorer.process(messages, model, now=NOW + 60, mode=FULL).decisions
    assert [(d["mode"], d["reasons"], d["score"]) for d in again] == [
        (d["mode"], d["reasons"], d["score"]) for d in lean]
    assert {d["decision"] for d in full} == {"approve", "review", "decline"}
    assert [(d["decision"], d["score"]) for d in full] == [(d["decision"], d["score"]) for d in lean]
    for f, s in zip(full, lean, strict=True):
        assert (f["mode"], s["mode"]) == (FULL, LEAN)
        if f["decision"] == "decline":
            assert s["reasons"] == f["reasons"] != []
        elif f["decision"] == "review":
            assert f["reasons"] != [] and s["reasons"] == []
