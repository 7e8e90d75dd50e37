"""Several scorer instances, one consumer group: the feature state shared through a real Redis server."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from fraudloop.models.features import FEATURE_NAMES, FeatureState, compute_features, labels_in_order, transactions_of
from fraudloop.models.units import HOUR
from fraudloop.streaming.shared_state import SharedEvents

CARD_FEATURES = [i for i, name in enumerate(FEATURE_NAMES) if name.startswith("card_")]


def owner(key: str) -> int:
    return zlib.crc32(key.encode()) % 2  # two instances; the producer keys cards and labels like this


def run_two_instances(history: pd.DataFrame, labels: pd.DataFrame, url: str | None, stream: str) -> dict[str, list]:
    """Two scorer instances in lockstep, an hour of traffic per step, each with the partitions it owns."""
    states = [FeatureState(), FeatureState()]
    shared = [SharedEvents(url, stream=stream) if url else None for _ in range(2)]
    events = sorted([(tx.time, 1, owner(tx.card_id), tx) for tx in transactions_of(history)]
                    + [(lb.known_at, 0, owner(lb.transaction_id), lb) for lb in labels_in_order(labels)],
                    key=lambda e: (e[0], e[1]))
    features: dict[str, list] = {}
    start = events[0][0]
    steps: dict[int, list] = {}
    for event in events:
        steps.setdefault(int((event[0] - start) // HOUR), []).append(event)
    for step in sorted(steps):
        for instance in (0, 1):
            if shared[instance]:
                shared[instance].apply_others(states[instance])
            mine = [e for e in steps[step] if e[2] == instance]
            txs, lbs = [], []
            for _, is_tx, _, item in mine:
                if is_tx:
                    features[item.transaction_id] = states[instance].transform(item)
                    txs.append(item)
                else:
                    states[instance].add_label(item)
                    lbs.append(item)
            if shared[instance]:
                shared[instance].publish(txs, lbs)
    return features


def test_two_instances_sharing_state_compute_the_features_of_one(redis_url, small_history, small_labels):
    history = small_history[small_history["time"] < small_history["time"].min() + 25 * 86_400]
    labels = small_labels[small_labels["known_at"] <= history["time"].max()]
    late = (history["time"] >= history["time"].min() + 10 * 86_400).to_numpy()  # terminal windows are filled
    offline = compute_features(history, labels).to_numpy()[late]
    ids = history["transaction_id"][late].tolist()

    def agreement(features: dict[str, list]) -> tuple[float, float]:
        online = np.array([features[t] for t in ids], dtype=float)
        same = (online == offline) | (np.isnan(online) & np.isnan(offline))
        return float(same.all(axis=1).mean()), float(same[:, CARD_FEATURES].all(axis=1).mean())

    alone_rows, alone_cards = agreement(run_two_instances(history, labels, None, "unused"))
    shared_rows, shared_cards = agreement(run_two_instances(history, labels, redis_url, "test:lockstep"))
    print(f"\nrows identical to the single-state build: alone {alone_rows:.1%}, shared {shared_rows:.1%}")
    assert alone_cards == 1.0 and shared_cards == 1.0  # a card stays with its instance
    assert alone_rows < 0.5  # without sharing, terminal features miss the other instance's traffic
    assert shared_rows > 0.995  # the rest: a label seen by the other instance within the same hour


def test_an_instance_taking_over_cards_has_their_history(redis_url, small_history, small_labels):
    """A rebalance: instance B starts owning instance A's cards and already knows their past."""
    history = small_history[small_history["time"] < small_history["time"].min() + 10 * 86_400]
    txs = list(transactions_of(history))
    half = len(txs) // 2
    a, b = SharedEvents(redis_url, stream="test:handover"), SharedEvents(redis_url, stream="test:handover")
    state_a, state_b = FeatureState(), FeatureState()
    for tx in txs[:half]:  # A owns everything for a while
        state_a.transform(tx)
    a.publish(txs[:half], [])
    assert b.apply_others(state_b) == half
    reference = FeatureState()
    for tx in txs[:half]:
        reference.transform(tx)
    for tx in txs[half:half + 2_000]:  # then B owns everything
        assert state_b.transform(tx) == pytest.approx(reference.transform(tx), nan_ok=True)
    assert b.apply_others(state_b) == 0  # its own events are not applied twice
