"""Point-in-time correctness of the training set built from what the scorer stored."""

import math

import pytest
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.store import DecisionRow, Store
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.training_set import decode_decisions, training_set_as_of

T = 1_800_000_000.0
MATURITY = 7 * DAY


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'scoring.db'}")
    yield opened
    opened.close()


def decide(store: Store, tx_id: str, event_time: float, decided_at: float | None = None, marker: float = 1.0) -> None:
    tx = Transaction(tx_id, "C1", "T1", event_time, 1_000)
    features = [marker] * (len(FEATURE_NAMES) - 1) + [math.nan]
    store.write([DecisionRow(tx, 0.1, "approve", "1", features, decided_at or event_time + 0.05)], [])


def test_only_what_was_known_at_t_is_used(store):
    decide(store, "old-fraud", T - 20 * DAY)
    decide(store, "old-genuine", T - 20 * DAY + 1)
    decide(store, "late-label", T - 15 * DAY)  # a fraud whose chargeback arrives after T
    decide(store, "young", T - 2 * DAY)  # too recent: its label may still come
    decide(store, "after-t", T + 10)  # scored after T
    store.write([], [
        Label("old-fraud", True, T - 12 * DAY),
        Label("late-label", True, T + 3 * DAY),  # planted: known only after T
        Label("young", True, T - 1 * DAY),
    ])
    decisions, labels = store.frames(T - 60 * DAY, T + 30 * DAY)
    frame = training_set_as_of(decode_decisions(decisions), labels, T, MATURITY).set_index("transaction_id")
    assert set(frame.index) == {"old-fraud", "old-genuine", "late-label"}
    assert frame.loc["old-fraud", "is_fraud"] and not frame.loc["old-genuine", "is_fraud"]
    assert not frame.loc["late-label", "is_fraud"]  # the label from after T does not leak in
    assert frame.loc["old-fraud", "amount"] == 1.0 and math.isnan(frame.loc["old-fraud", FEATURE_NAMES[-1]])

    later = training_set_as_of(decode_decisions(decisions), labels, T + 5 * DAY, MATURITY).set_index("transaction_id")
    assert later.loc["late-label", "is_fraud"] and later.loc["young", "is_fraud"]


def test_feature_values_are_those_used_at_scoring_time_and_the_latest_label_wins(store):
    decide(store, "tx", T - 30 * DAY, marker=7.0)
    decide(store, "tx", T - 30 * DAY, marker=99.0)  # a replay after a crash does not overwrite
    store.write([], [Label("tx", True, T - 25 * DAY)])
    store.write([], [Label("tx", True, T - 25 * DAY)])
    decisions, labels = store.frames(T - 60 * DAY, T)
    assert training_set_as_of(decode_decisions(decisions), labels, T, MATURITY).loc[0, "amount"] == 7.0
    assert training_set_as_of(decode_decisions(decisions), labels, T, MATURITY).loc[0, "is_fraud"]
    store.write([], [Label("tx", False, T - 20 * DAY)])  # the chargeback is reversed: confirmed genuine
    decisions, labels = store.frames(T - 60 * DAY, T)
    assert len(labels) == 2
    assert not training_set_as_of(decode_decisions(decisions), labels, T, MATURITY).loc[0, "is_fraud"]


def test_the_store_is_read_by_time_range_and_bounded_by_retention(store):
    decide(store, "ancient", T - 400 * DAY)
    decide(store, "recent", T - 10 * DAY)
    store.write([], [Label("ancient", True, T - 390 * DAY), Label("recent", True, T - 5 * DAY)])
    decisions, labels = store.frames(T - 60 * DAY, T)
    assert list(decisions["transaction_id"]) == ["recent"] and list(labels["transaction_id"]) == ["recent"]
    assert store.prune(before=T - 365 * DAY) == (1, 1)
    assert store.frames(T - 1_000 * DAY, T)[0]["transaction_id"].tolist() == ["recent"]
    assert store.prune(before=T - 365 * DAY) == (0, 0)


def test_the_live_gate_pairs_shadow_and_served_scores_on_matured_transactions_only(store, tmp_path):
    import numpy as np
    from fraudloop.pipelines.retraining.gates import Gates, judge
    from fraudloop.pipelines.retraining.validate import live_verdict

    rng = np.random.default_rng(0)
    rows, shadow, labels, expected = [], [], [], []
    for i in range(3_000):
        when = T - 30 * DAY + i * 600  # ~20 days, the newest 7 immature
        fraud = rng.random() < 0.05
        served, challenger = float(rng.beta(1, 9) + 0.3 * fraud), float(rng.beta(1, 9) + 0.6 * fraud)
        tx = Transaction(f"t{i}", f"C{i % 700}", "T1", when, 1_000)
        rows.append(DecisionRow(tx, min(served, 1.0), "approve", "3", [0.0] * len(FEATURE_NAMES), when))
        shadow.append((tx.transaction_id, min(challenger, 1.0), when))
        if fraud:
            labels.append(Label(tx.transaction_id, True, when + DAY))
        if when <= rows[0].tx.time + 3_000 * 600 - MATURITY - 600:
            expected.append((when, tx.card_id, fraud, min(challenger, 1.0), min(served, 1.0)))
    store.write(rows, labels)
    store.write_shadow("4", shadow)
    store.write_shadow("4", shadow[:10])  # a redelivered batch changes nothing
    verdict = live_verdict(str(store.engine.url), "4", "3", MATURITY, Gates())
    time_, card, fraud, mine, theirs = (np.array(c) for c in zip(*expected, strict=True))
    same = judge(time_, card, fraud, mine, theirs, Gates())
    assert verdict.evidence == same.evidence and verdict.difference == same.difference
    assert verdict.passed and verdict.difference.low > 0  # the shadow is clearly better here
    assert live_verdict(str(store.engine.url), "4", "2", MATURITY, Gates()).evidence.frauds == 0  # other champion


def test_decisions_scored_by_another_feature_set_are_refused_with_a_clear_error(store):
    decide(store, "now", T - 3 * DAY)
    tx = Transaction("before-upgrade", "C1", "T1", T - 2 * DAY, 1_000)
    store.write([DecisionRow(tx, 0.1, "approve", "1", [1.0] * 21, T - 2 * DAY)], [])
    decisions, _ = store.frames(T - 60 * DAY, T)
    with pytest.raises(ValueError, match=rf"carry \[21\] features where this version computes {len(FEATURE_NAMES)}"):
        decode_decisions(decisions)
