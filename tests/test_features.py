"""One feature implementation: hand-checked values, and online (stream) == offline (batch) exactly."""

import heapq
import json
import math

import numpy as np
import pandas as pd
import pytest
from fraudloop.models import features as F
from fraudloop.models.features import FEATURE_NAMES, FeatureState, compute_features
from fraudloop.models.schema import Label, Transaction, label_record, parse_label, parse_transaction, transaction_record
from fraudloop.models.terminals import EPISODE_REACH
from fraudloop.models.units import DAY

T0 = 1_522_540_800  # 2018-04-01T00:00:00Z, a Sunday


def tx(n: int, card: str, terminal: str, seconds: float, cents: int) -> Transaction:
    return Transaction(f"TX{n}", card, terminal, float(T0 + seconds), cents)


def named(values: list[float]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, values, strict=True))


def test_card_windows_include_the_current_transaction():
    state = FeatureState()
    state.transform(tx(1, "C", "T1", 10 * 3600, 1000))
    state.transform(tx(2, "C", "T2", 2 * DAY + 10 * 3600, 3000))
    f = named(state.transform(tx(3, "C", "T1", 2 * DAY + 10 * 3600 + 600, 2000)))
    assert f["amount"] == 20.0
    assert f["card_tx_count_1d"] == 2 and f["card_mean_amount_1d"] == 25.0
    assert f["card_tx_count_7d"] == 3 and f["card_mean_amount_7d"] == 20.0
    assert f["card_tx_count_1h"] == 2
    assert f["card_seconds_since_prev"] == 600
    assert f["card_amount_ratio_30d"] == 2000 / 2000  # prior mean (10 + 30) / 2
    assert f["card_amount_to_median_30d"] == 1.0
    assert f["card_new_terminal_30d"] == 0.0  # T1 seen 2 days ago
    assert f["is_weekend"] == 0.0 and f["is_night"] == 0.0  # Tuesday 10:10 UTC


def test_first_transaction_of_a_card():
    f = named(FeatureState().transform(tx(1, "C", "T", 3 * 3600, 500)))
    assert f["card_tx_count_30d"] == 1 and f["card_new_terminal_30d"] == 1.0
    assert math.isnan(f["card_seconds_since_prev"]) and math.isnan(f["card_amount_ratio_30d"])
    assert f["is_weekend"] == 1.0 and f["is_night"] == 1.0  # Sunday 03:00 UTC
    assert f["terminal_tx_count_30d_delayed"] == 0 and f["terminal_risk_30d_delayed"] == 0


def test_terminal_risk_uses_only_labels_known_at_scoring_time():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))
    state.transform(tx(2, "B", "T", 3600, 100))
    probe = tx(3, "C", "T", 8 * DAY, 100)  # delayed windows end at day 1: both earlier transactions inside
    before = named(state.transform(probe))
    assert before["terminal_tx_count_7d_delayed"] == 2 and before["terminal_risk_7d_delayed"] == 0
    state.add_label(Label("TX1", True, T0 + 8 * DAY + 1))  # the chargeback arrives: now it counts
    after = named(state.transform(tx(4, "D", "T", 8 * DAY + 2, 100)))
    assert after["terminal_risk_7d_delayed"] == 0.5 and after["terminal_tx_count_7d_delayed"] == 2
    assert after["terminal_known_frauds_7d"] == 0  # the fraud happened 8 days ago
    assert named(state.transform(probe))["terminal_risk_7d_delayed"] == 0.5  # a re-score sees current knowledge


def test_the_cards_large_amounts_count_those_over_three_times_its_month_median():
    state = FeatureState()
    for n, cents in enumerate([1000, 1100, 900, 1000]):
        assert named(state.transform(tx(n, "C", "T", n * 3600, cents)))["card_large_amounts_30d"] == 0
    first = named(state.transform(tx(4, "C", "T", 5 * 3600, 5000)))  # median 10.00: 50.00 is large
    second = named(state.transform(tx(5, "C", "T", 6 * 3600, 4500)))
    assert first["card_large_amounts_30d"] == 1 and second["card_large_amounts_30d"] == 2
    assert named(state.transform(tx(6, "C", "T", 31 * DAY, 1000)))["card_large_amounts_30d"] == 0  # a month on


def test_the_terminal_fraud_episode_is_what_the_delayed_windows_know():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))  # genuine
    state.transform(tx(2, "B", "T", DAY, 100))  # the episode's first fraud
    state.transform(tx(3, "C", "T", 2 * DAY, 100))  # a fraud too
    assert math.isnan(named(state.transform(tx(4, "D", "T", 8 * DAY, 100)))["terminal_fraud_episode_days"])
    for n, day in ((2, 1), (3, 2)):
        state.add_label(Label(f"TX{n}", True, T0 + (day + 7) * DAY))
    f = named(state.transform(tx(5, "E", "T", 9.5 * DAY, 100)))  # the delayed windows end at day 2.5
    assert f["terminal_fraud_episode_days"] == 8.5  # since the fraud of day 1
    assert f["terminal_fraud_episode_risk"] == 1.0  # both transactions since then are frauds
    later = named(state.transform(tx(6, "F", "T", 15.5 * DAY, 100)))  # ends at day 8.5: TX4 (genuine) inside
    assert later["terminal_fraud_episode_days"] == 14.5 and later["terminal_fraud_episode_risk"] == 2 / 3
    gone = named(state.transform(tx(7, "G", "T", 39 * DAY, 100)))  # past the delayed windows' 37-day reach
    assert math.isnan(gone["terminal_fraud_episode_days"]) and math.isnan(gone["terminal_fraud_episode_risk"])


def test_genuine_and_repeated_labels_change_nothing():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))
    state.add_label(Label("TX1", False, T0 + 10))
    state.add_label(Label("TX1", True, T0 + 20))
    state.add_label(Label("TX1", True, T0 + 30))
    state.transform(tx(2, "B", "T", 40, 100))  # the stream reaches the labels' time
    assert state.terminals.get("T").fraud_times == [T0]


def test_a_label_read_ahead_of_the_transactions_counts_from_its_time_on():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))
    state.add_label(Label("TX1", True, T0 + 2 * DAY))  # read early, as from a backlog
    before = named(state.transform(tx(2, "B", "T", DAY, 100)))
    at = named(state.transform(tx(3, "C", "T", 2 * DAY, 100)))
    assert before["terminal_known_frauds_7d"] == 0 and at["terminal_known_frauds_7d"] == 1


def test_a_replayed_transaction_is_not_counted_twice():
    state = FeatureState()
    first = state.transform(tx(1, "C", "T", 0, 100))
    again = state.transform(tx(1, "C", "T", 0, 100))
    assert first == again
    assert named(state.transform(tx(2, "C", "T", 60, 100)))["card_tx_count_1d"] == 2


def test_a_late_transaction_is_inserted_in_time_order():
    state = FeatureState()
    state.transform(tx(1, "C", "T", 3600, 100))
    state.transform(tx(2, "C", "T", 60, 300))  # arrives late
    f = named(state.transform(tx(3, "C", "T", 7200, 200)))
    assert f["card_tx_count_1d"] == 3 and f["card_seconds_since_prev"] == 3600
    assert state.cards["C"].times == sorted(state.cards["C"].times)


def test_new_terminal_counts_the_card_s_month_at_that_terminal_only():
    state = FeatureState()
    assert named(state.transform(tx(1, "C", "T1", 0, 100)))["card_new_terminal_30d"] == 1
    assert named(state.transform(tx(2, "C", "T2", DAY, 100)))["card_new_terminal_30d"] == 1
    assert named(state.transform(tx(3, "C", "T1", 2 * DAY, 100)))["card_new_terminal_30d"] == 0
    assert named(state.transform(tx(4, "C", "T2", 40 * DAY, 100)))["card_new_terminal_30d"] == 1  # T2 left the window
    # a late transaction sees only what was before it at that terminal
    assert named(state.transform(tx(5, "C", "T3", 39 * DAY, 100)))["card_new_terminal_30d"] == 1
    assert named(state.transform(tx(6, "C", "T3", 41 * DAY, 100)))["card_new_terminal_30d"] == 0


def _wire_stream(history: pd.DataFrame, labels: pd.DataFrame):
    """The history as a scorer receives it: JSON messages, labels interleaved at the moment they are known."""
    tx_events = (
        (float(r.time), 1, json.dumps(transaction_record(Transaction(r.transaction_id, r.card_id, r.terminal_id,
                                                                     float(r.time), round(r.amount * 100)))))
        for r in history.itertuples()
    )
    label_events = (
        (float(r.known_at), 0, json.dumps(label_record(Label(r.transaction_id, bool(r.is_fraud), float(r.known_at)))))
        for r in labels.sort_values(["known_at", "transaction_id"]).itertuples()
    )
    return heapq.merge(label_events, tx_events, key=lambda e: (e[0], e[1]))


def _score_stream(history, labels, batch_size=250):
    state, rows, batch = FeatureState(), [], []

    def flush():
        for kind, payload in batch:
            if kind == 0:
                state.add_label(parse_label(payload))
            else:
                rows.append(state.transform(parse_transaction(payload)))
        batch.clear()

    for _, kind, message in _wire_stream(history, labels):
        batch.append((kind, json.loads(message)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return np.array(rows), state


def test_stream_and_batch_give_identical_features(small_history, small_labels):
    offline = compute_features(small_history, small_labels).to_numpy()
    online, _ = _score_stream(small_history, small_labels)
    assert online.shape == offline.shape == (len(small_history), len(FEATURE_NAMES))
    assert np.array_equal(online, offline, equal_nan=True)
    # the history exercises every feature: none is constant
    assert all(np.nanstd(offline[:, j]) > 0 for j in range(len(FEATURE_NAMES)))


def test_pruning_changes_no_value_and_bounds_memory(small_history, small_labels, monkeypatch):
    pruned = compute_features(small_history, small_labels).to_numpy()
    monkeypatch.setattr(F.FeatureState, "_cutoffs", lambda self: (-math.inf, -math.inf))  # never forget
    unpruned = compute_features(small_history, small_labels).to_numpy()
    assert np.array_equal(pruned, unpruned, equal_nan=True)
    monkeypatch.undo()
    _, state = _score_stream(small_history, small_labels)
    # what is kept: the transactions the terminal windows can still reach, plus the allowed lateness
    horizon = EPISODE_REACH + F.LATENESS
    assert len(state.seen) <= (small_history["time"] > state.watermark - horizon).sum() < len(small_history)
    # quiet cards are swept out at least every SWEEP_EVERY of event time
    oldest_card_event = min(card.times[0] for card in state.cards.values())
    assert oldest_card_event > state.watermark - max(F.CARD_WINDOWS_DAYS) * DAY - F.LATENESS - F.SWEEP_EVERY
    # each card's per-terminal index holds exactly its kept transactions
    for card in state.cards.values():
        by_terminal: dict[str, list[float]] = {}
        for time, terminal in zip(card.times, card.terminals, strict=True):
            by_terminal.setdefault(terminal, []).append(time)
        assert card.terminal_times == by_terminal


def test_batch_needs_a_time_ordered_history(small_history, small_labels):
    with pytest.raises(ValueError, match="sorted by time"):
        compute_features(small_history.iloc[::-1], small_labels)


def test_terminal_windows_are_whole_hours_ending_with_the_hour_of_t_minus_7_days():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 30 * 60, 100))  # 00:30 on day 0
    state.transform(tx(2, "B", "T", -30 * 60, 100))  # 23:30 the day before
    # At 7 days and 00:10, the 1-day window is the 24 hours ending with the hour of 00:10 (00:00-01:00) on day 0:
    # it counts 00:30 (20 minutes after t - 7 days) and 23:30 the day before, not the exact (t - 8d, t - 7d].
    f = named(state.transform(tx(3, "C", "T", 7 * DAY + 10 * 60, 100)))
    assert f["terminal_tx_count_1d_delayed"] == 2
    g = named(state.transform(tx(4, "D", "T", 8 * DAY - 45 * 60, 100)))  # ends with 23:00-24:00 on day 0
    assert g["terminal_tx_count_1d_delayed"] == 1  # 23:30 the day before is out: its hour is 24 hours back


def test_the_same_label_held_twice_is_applied_once():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))
    state.add_label(Label("TX1", True, T0 + DAY), ("T", float(T0)))  # read from the store's row
    state.add_label(Label("TX1", True, T0 + DAY))  # and again (a redelivery): both held, no comparison of the two
    state.transform(tx(2, "B", "T", DAY, 100))
    assert state.terminals.get("T").fraud_times == [T0] and not state.held


def test_a_card_of_no_known_partition_takes_the_partition_it_is_read_from():
    state = FeatureState()
    state.add_card_history(tx(1, "C", "T", 0, 100), -1)  # stored before partitions were
    state.transform(tx(2, "C", "T", 60, 100), 2)
    assert state.cards["C"].partition == 2
    assert state.drop_partitions({2}) == 1 and "C" not in state.cards


def test_a_count_withdrawn_comes_off_its_hour():
    state = FeatureState()
    state.transform(tx(1, "A", "T", 0, 100))
    state.transform(tx(2, "B", "T", 60, 100))
    state.terminals.withdraw("T", T0 + 60)  # decided before by another writer
    assert state.terminals.get("T").counts == [1]
