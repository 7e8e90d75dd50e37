"""Learning from feedback and exploration: the weighting, the aggregation, the split and the gates, by hand."""

import math

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.metrics import Difference, effective_sample_size, weighted_ap, weighted_precision_recall
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.store import DecisionRow, Store
from fraudloop.models.training import TrainParams, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks.feedback import Aggregate, FeedbackConfig, fit_with_feedback
from fraudloop.pipelines.retraining.gates import FAILED, INSUFFICIENT, PASSED, Check, Evidence, Verdict, with_feedback
from fraudloop.pipelines.retraining.train import BuildConfig, training_split
from fraudloop.pipelines.retraining.training_set import (
    decode_decisions,
    explorable,
    observation_weights,
    training_set_as_of,
)
from fraudloop.streaming.decide import APPROVE, DECLINE, REVIEW, Exploration, draw, explore

T = 1_800_000_000.0


def test_weighted_average_precision_by_hand():
    y, score = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])
    cards = np.array(["a", "b", "c", "d"])
    # unweighted: precision 1 at the first fraud, 2/3 at the second: (1 + 2/3) / 2
    assert weighted_ap(y, score, np.ones(4), cards).estimate == pytest.approx(5 / 6)
    # the first fraud stands for two: recall steps 2/3 (precision 1) and 1/3 (precision 3/4)
    estimate = weighted_ap(y, score, np.array([2.0, 1, 1, 1]), cards)
    assert estimate.estimate == pytest.approx(2 / 3 + 1 / 3 * 3 / 4)
    assert estimate.effective_rows == pytest.approx(25 / 7)  # (2+1+1+1)^2 / (4+1+1+1)
    assert estimate.effective_frauds == pytest.approx(9 / 5)  # (2+1)^2 / (4+1)
    assert estimate.low <= estimate.estimate <= estimate.high
    # a weight of 0 is a row left out
    assert weighted_ap(y, score, np.array([1.0, 0, 1, 1]), cards).estimate == pytest.approx(1.0)
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_weighted_precision_and_recall_by_hand():
    y, score = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])
    # flag >= 0.5: the weighted fraud (3) and the genuine (1) are flagged; the other fraud (1) is missed
    precision, recall = weighted_precision_recall(y, score, np.array([3.0, 1, 1, 1]), 0.5)
    assert (precision, recall) == (pytest.approx(3 / 4), pytest.approx(3 / 4))


def test_exploration_approves_a_share_of_the_blocks_within_the_caps():
    decisions = [APPROVE, REVIEW, DECLINE, DECLINE, REVIEW]
    scores = np.array([0.1, 0.5, 0.9, 0.95, 0.99])
    amounts = np.array([10.0, 10, 10, 500, 10])
    draws = np.array([0.0, 0.01, 0.5, 0.01, 0.01])
    taken, probability = explore(decisions, scores, amounts, draws, Exploration(0.05, 200.0, 0.98))
    # explored; a block not drawn (it had 1 - share); over the amount cap; over the score cap
    assert taken == [APPROVE, APPROVE, DECLINE, DECLINE, REVIEW]
    assert probability.tolist() == pytest.approx([1.0, 0.05, 0.95, 1.0, 1.0])
    # a block by a rule or a list is never explored
    taken, probability = explore(decisions, scores, amounts, draws, Exploration(0.05, 200.0, 0.98),
                                 open_=np.array([True, False, True, True, True]))
    assert taken[1] == REVIEW and probability[1] == 1.0
    with pytest.raises(ValueError, match="share"):
        Exploration(1.0)


def test_a_draw_is_fixed_by_the_transaction_id():
    assert draw("tx-1") == draw("tx-1") != draw("tx-2")
    assert draw("tx-1", b"secret") == draw("tx-1", b"secret") != draw("tx-1")  # keyed: not guessable from the id
    values = np.array([draw(f"tx-{i}") for i in range(20_000)])
    assert values.min() >= 0 and values.max() < 1
    assert abs((values < 0.05).mean() - 0.05) < 0.005  # uniform enough for the share to hold


def test_observation_weights():
    decision = pd.Series([APPROVE, APPROVE, DECLINE, REVIEW])
    weights = observation_weights(decision, pd.Series([1.0, 0.05, 0.95, 0.95]))
    assert weights.tolist() == pytest.approx([1.0, 20.0, 0.0, 0.0])
    assert observation_weights(decision, pd.Series([1.0, 1.0, 0.95, 0.95])) is None  # nothing explored
    assert observation_weights(None, None) is None


def _booster(rows: int, seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURE_NAMES)))
    y = (x[:, 0] + rng.normal(scale=0.5, size=rows) > 1).astype(float)
    return lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 4},
                     lgb.Dataset(x, label=y, feature_name=list(FEATURE_NAMES)), num_boost_round=10)


def test_the_aggregate_averages_the_probabilities():
    delayed, feedback = _booster(500, 0), _booster(300, 1)
    x = np.random.default_rng(2).normal(size=(7, len(FEATURE_NAMES)))
    expected = 0.75 * delayed.predict(x) + 0.25 * feedback.predict(x)
    assert predict(Aggregate(delayed, feedback, alpha=0.25), x) == pytest.approx(expected)


def _frame(days: int = 30, per_day: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * per_day
    frame = pd.DataFrame(rng.normal(size=(n, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    frame["event_time"] = T + np.sort(rng.uniform(0, days * DAY, n))
    frame["card_id"] = [f"C{i}" for i in range(n)]
    frame["transaction_id"] = [f"t{i}" for i in range(n)]
    frame["is_fraud"] = frame["amount"].to_numpy() > 1.0
    frame["label_source"] = "no_chargeback"
    frame.loc[frame["is_fraud"], "label_source"] = "chargeback"
    return frame


def test_the_feedback_model_joins_only_with_enough_feedback():
    frame = _frame()
    train = np.ones(len(frame), dtype=bool)
    until = T + 30 * DAY
    params = TrainParams(num_boost_round=20)
    config = FeedbackConfig(days=7, num_boost_round=10)
    assert isinstance(fit_with_feedback(frame, train, until, params, config), lgb.Booster)  # no feedback at all
    frame.loc[frame.index[-400:], "label_source"] = "review"  # the last days' verdicts
    model = fit_with_feedback(frame, train, until, params, config)
    assert isinstance(model, Aggregate) and model.alpha == 0.5
    assert isinstance(fit_with_feedback(frame, train, until, params, FeedbackConfig(days=0)), lgb.Booster)
    # the feedback model learnt only the verdicts of the last 7 days before `until`
    frame.loc[frame.index[-400:], "label_source"] = "chargeback"
    frame.loc[frame["event_time"] < until - 8 * DAY, "label_source"] = "review"
    assert isinstance(fit_with_feedback(frame, train, until, params, config), lgb.Booster)


def test_young_feedback_trains_and_its_newest_days_judge():
    """Young rows (not matured) enter a training set only with a verdict or a cardholder's answer; the mature rows
    split as always, the young ones train but for the newest days, less the cards already known compromised."""
    rows = _frame(days=40).drop(columns=["is_fraud", "label_source"])
    rows["decision"] = APPROVE
    as_of, maturity = T + 40 * DAY, 4 * DAY
    young = rows["event_time"] > as_of - maturity
    reviewed = rows.index[young][::5]
    rows.loc[reviewed, "decision"] = REVIEW
    labels = pd.DataFrame({"transaction_id": rows.loc[reviewed, "transaction_id"], "is_fraud": [True, False] *
                           (len(reviewed) // 2) + [True] * (len(reviewed) % 2), "known_at": as_of - 1.0,
                           "source": "review"})
    known_card = rows.loc[reviewed[-1], "card_id"]  # its fraud known before the feedback holdout: it leaves it
    labels = pd.concat([labels, pd.DataFrame({"transaction_id": ["t0"], "is_fraud": [True], "known_at": [T + DAY],
                                              "source": ["chargeback"]})])
    rows.loc[0, "card_id"] = known_card
    frame = training_set_as_of(rows, labels, as_of, maturity, maturity)
    assert (~frame["mature"]).sum() == len(reviewed)  # the young approved ones wait for their maturity
    assert set(frame.loc[~frame["mature"], "label_source"]) == {"review"}
    assert len(training_set_as_of(rows, labels, as_of, maturity)) == (~young).sum()  # without feedback: as before
    split, start, train, test, feedback_test = training_split(frame, BuildConfig(21, 0, 3, 4.0, feedback_test_days=2))
    assert start == (int(as_of - 1) // DAY - 1) * DAY
    assert not (test & ~frame["mature"]).any() and not (train & test).any() and not (feedback_test & train).any()
    assert (feedback_test == (~frame["mature"] & (frame["event_time"] >= start)
                              & (frame["card_id"] != known_card))).all()
    # the young rows train from the day after the holdout's last (as_of is not midnight: that day is partly young)
    holdout_end = (split.start_day + split.span_days) * DAY
    young = ~frame["mature"] & (frame["event_time"] < start)
    assert (young & (frame["event_time"] < holdout_end)).any()
    assert (train & ~frame["mature"]).sum() == (young & (frame["event_time"] >= holdout_end)).sum() > 0
    learnt = set(frame.loc[train & ~frame["mature"] & frame["is_fraud"], "card_id"])
    assert learnt and not learnt & set(frame.loc[test, "card_id"])  # a card whose later fraud trains: not judged


def _verdict(status_checks: list[tuple[bool, str]], high: float = 0.05) -> Verdict:
    checks = tuple(Check(ok, kind, kind=kind) for ok, kind in status_checks)
    return Verdict(Evidence(50, 30, 500, 3), checks, Difference(0.0, -0.02, high, 0.95, 100, 500))


def test_the_feedback_holdout_promotes_only_what_all_traffic_does_not_refute():
    passed = _verdict([(True, "evidence"), (True, "gate")])
    not_better = _verdict([(True, "evidence"), (True, "floor"), (False, "gate")])
    assert with_feedback(not_better, passed) == PASSED
    assert with_feedback(not_better, None) == FAILED
    assert with_feedback(not_better, _verdict([(False, "evidence"), (True, "gate")])) == FAILED
    assert with_feedback(_verdict([(True, "evidence"), (False, "floor"), (False, "gate")]), passed) == FAILED
    assert with_feedback(_verdict([(True, "evidence"), (True, "floor"), (False, "gate")], high=-0.01),
                         passed) == FAILED  # shown worse on all traffic
    assert with_feedback(_verdict([(False, "evidence"), (True, "floor")]), passed) == INSUFFICIENT
    assert with_feedback(passed, None) == PASSED


def test_the_store_keeps_each_decisions_probability(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'scoring.db'}")
    try:
        tx = Transaction("x1", "C1", "T1", T, 1_000)
        features = [1.0] * (len(FEATURE_NAMES) - 1) + [math.nan]
        store.write([DecisionRow(tx, 0.9, APPROVE, "1", features, T, rule="exploration", propensity=0.05),
                     DecisionRow(Transaction("x2", "C1", "T1", T + 1, 1_000), 0.1, APPROVE, "1", features, T)],
                    [Label("x1", True, T + DAY)])
        assert store.decisions_for(["x1"])["x1"].propensity == 0.05
        decisions, _ = store.frames(T - 1, T + 2)
        decoded = decode_decisions(decisions)
        assert decoded["propensity"].tolist() == [0.05, 1.0]
        assert observation_weights(decoded["decision"], decoded["propensity"]).tolist() == pytest.approx([20.0, 1.0])
    finally:
        store.close()


def test_a_block_no_draw_could_turn_is_out_of_the_weighted_estimates_scope():
    decision = pd.Series([APPROVE, DECLINE, REVIEW, DECLINE, APPROVE]).astype("category")
    # a model block that could be explored; a rule's review; one over the caps; explored
    propensity = pd.Series([1.0, 0.95, 1.0, 1.0, 0.05])
    assert explorable(decision, propensity).tolist() == [True, True, False, False, True]
