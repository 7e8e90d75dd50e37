import numpy as np
import pandas as pd
import pytest
from fraudloop.models.metrics import (
    achievable_card_precision,
    card_precision_at_k,
    daily_card_precision_at_k,
    evaluate,
    recall_at_fpr,
)
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.protocol import Split, disjoint_validation, prequential, split_masks

T0 = 1_532_476_800  # 2018-07-25T00:00:00Z


def test_card_precision_takes_each_cards_best_score_per_day():
    time = np.array([0, 10, 20, 30, DAY, DAY + 5])
    card = np.array(["a", "a", "b", "c", "a", "b"])
    fraud = np.array([0, 1, 0, 0, 0, 1])
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7])
    # day 0: cards ranked a (0.9, compromised that day), b (0.8), c; top 2 -> 1 of 2
    # day 1: b (0.7, fraud), a -> top 2 -> 1 of 2
    assert card_precision_at_k(time, card, fraud, score, k=2) == pytest.approx(0.5)
    # k=1: day 0 a (compromised) -> 1; day 1 b (fraud) -> 1
    assert card_precision_at_k(time, card, fraud, score, k=1) == pytest.approx(1.0)


def test_card_precision_does_not_count_a_card_found_on_an_earlier_day_again():
    # Card a is compromised on both days and tops both rankings; b is compromised on day 1 only.
    time = np.array([0, 10, DAY, DAY + 5, DAY + 9])
    card = np.array(["a", "b", "a", "b", "c"])
    fraud = np.array([1, 0, 1, 1, 0])
    score = np.array([0.9, 0.1, 0.9, 0.5, 0.6])
    # handbook: day 0 top-1 is a (found, 1.0); day 1 a is blocked, top-1 is c (0.6, genuine): 0.0
    assert card_precision_at_k(time, card, fraud, score, k=1) == pytest.approx(0.5)
    # each day on its own: a tops both days -> 1.0
    assert daily_card_precision_at_k(time, card, fraud, score, k=1) == pytest.approx(1.0)
    # a perfect model finds a on day 0 and b on day 1
    assert achievable_card_precision(time, card, fraud, k=1) == pytest.approx(1.0)
    assert achievable_card_precision(time, card, fraud, k=2) == pytest.approx(0.5)

def test_evaluate_reports_the_protocol_metrics():
    rng = np.random.default_rng(0)
    y = rng.random(5_000) < 0.05
    score = y * 0.5 + rng.random(5_000)
    result = evaluate(np.arange(5_000) * 60, np.arange(5_000) % 300, y, score)
    assert 0.5 < result["roc_auc"] <= 1 and 0.05 < result["average_precision"] <= 1
    assert result["rows"] == 5_000 and 0 <= result["recall_at_1pct_fpr"] <= 1
    assert recall_at_fpr(y, y.astype(float), 0.0) == 1.0


def test_split_has_a_gap_and_drops_cards_already_known_compromised():
    split = Split("2018-07-25", train_days=7, delay_days=7, test_days=7)
    days = np.arange(25)
    time = T0 + days * DAY
    card = np.array(["x"] * 25)
    card[18:] = "y"
    fraud = np.zeros(25, dtype=bool)
    fraud[2] = True  # card x is defrauded in training: removed from the test days
    fraud[15] = True  # card x again; and y below
    fraud[18] = True  # y defrauded on day 18: known from day 26, so stays in test
    train, test = split_masks(time, card, fraud, split)
    assert np.flatnonzero(train).tolist() == list(range(7))
    assert np.flatnonzero(test).tolist() == [18, 19, 20]


def test_prequential_folds_step_back_a_week():
    folds = prequential(Split("2018-07-25"))
    assert [f.train_start for f in folds] == ["2018-07-25", "2018-07-18", "2018-07-11", "2018-07-04"]
    assert folds[0].describe() == {"train": "2018-07-25..2018-07-31", "test": "2018-08-08..2018-08-14"}


def test_the_published_test_folds_and_validation_folds_that_share_no_day_with_them():
    test = prequential(Split("2018-08-15"))
    assert sorted(f.train_start for f in test) == ["2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"]
    assert [test[-1].describe()["test"][:10], test[0].describe()["test"][-10:]] == ["2018-08-08", "2018-09-04"]
    validation = disjoint_validation(test)
    assert [f.train_start for f in validation] == ["2018-07-04", "2018-06-27", "2018-06-20", "2018-06-13"]
    assert validation[0].describe()["test"] == "2018-07-18..2018-07-24"  # the day before the first test fold starts
    used = {d for f in test for d in f.days()}
    assert not used & {d for f in validation for d in f.days()}


def test_an_idea_replaces_the_defaults_only_on_a_clear_validation_gain():
    from fraudloop.pipelines.benchmarks.model import choose

    def tried(*gains: tuple[float, float]) -> pd.DataFrame:
        return pd.DataFrame({"ap_gain": [0.0, *(g for g, _ in gains)],
                             "ap_gain_se": [np.nan, *(se for _, se in gains)]})

    assert choose(tried((0.0003, 0.002), (-0.01, 0.003))) == 0  # a noise-sized gain keeps the defaults
    assert choose(tried((0.0003, 0.002), (0.02, 0.004), (0.01, 0.001))) == 2  # the best clear gain
