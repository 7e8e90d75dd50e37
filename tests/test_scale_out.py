"""Scale-out: N scorer instances, each holding the cards of its own partitions, the terminal aggregates in a real
Redis, compute the features of one instance, and of the offline build.

The instances run the real scoring core (Scorer: event-time policy, features, model, store) in lockstep, an hour
of traffic per step, each on the partitions it owns, over one store, as a consumer group spreads them.
"""

from __future__ import annotations

import zlib

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
import pytest
import redis
from fraudloop.models.features import (
    FEATURE_NAMES,
    N_FEATURES,
    FeatureState,
    compute_features,
    labels_in_order,
    replay,
    transactions_of,
)
from fraudloop.models.schema import Label, Transaction, label_record, transaction_record
from fraudloop.models.store import Store
from fraudloop.models.units import DAY, HOUR
from fraudloop.pipelines.cli import main
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.event_time import EventTimePolicy
from fraudloop.streaming.model import ServingModel
from fraudloop.streaming.rebuild import key_partition, rebuild_cards, rebuild_state
from fraudloop.streaming.scorer import Message, Scorer
from fraudloop.streaming.terminal_store import RedisTerminals

PARTITIONS = 6
CARD_FEATURES = [j for j, name in enumerate(FEATURE_NAMES) if name.startswith("card_")]
LABEL_FEATURES = {j for j, name in enumerate(FEATURE_NAMES) if "risk" in name or "frauds" in name or "episode" in name}


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS  # a producer keys transactions by card, labels by transaction


@pytest.fixture(scope="module")
def model() -> ServingModel:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, N_FEATURES))
    data = lgb.Dataset(x, label=(x[:, 0] > 0.8).astype(float), feature_name=list(FEATURE_NAMES))
    return ServingModel("card-fraud", "1", lgb.train({"objective": "binary", "verbosity": -1}, data, 5))


@pytest.fixture(scope="module")
def stream(small_history, small_labels) -> tuple[pd.DataFrame, pd.DataFrame]:
    history = small_history[small_history["time"] < small_history["time"].min() + 45 * DAY]
    return history, small_labels[small_labels["known_at"] <= history["time"].max()]


def run(history: pd.DataFrame, labels: pd.DataFrame, instances: int, store_url: str, redis_url: str | None,
        model: ServingModel) -> tuple[dict[str, list[float]], list[Scorer]]:
    """Each instance owns the partitions p with p % instances == its number; returns the stored features."""
    config = ScorerConfig()
    now = float(history["time"].max()) + DAY
    scorers = [Scorer(config, FeatureState(config.allowed_lateness_seconds,
                                           RedisTerminals(redis_url, f"test:{store_url}:{instances}")
                                           if redis_url else None), Store(store_url)) for _ in range(instances)]
    events = sorted([(tx.time, 1, tx.transaction_id, config.transactions_topic, partition_of(tx.card_id),
                      orjson.dumps(transaction_record(tx))) for tx in transactions_of(history)]
                    + [(lb.known_at, 0, lb.transaction_id, config.labels_topic, partition_of(lb.transaction_id),
                        orjson.dumps(label_record(lb)))
                       for lb in (Label(r.transaction_id, bool(r.is_fraud), float(r.known_at))
                                  for r in labels.itertuples())])
    steps: dict[int, list] = {}
    for offset, (when, _, _, topic, partition, value) in enumerate(events):
        steps.setdefault(int(when // HOUR), []).append(Message(topic, partition, offset, 0, value))
    features: dict[str, list[float]] = {}
    for step in sorted(steps):
        for number, scorer in enumerate(scorers):
            owned = [p for p in range(PARTITIONS) if p % instances == number]
            mine = [m for m in steps[step] if m.partition in owned]
            if mine:
                result = scorer.process(mine, model, now=now, partitions=owned)
                assert not result.dead_letters
                features.update((row.tx.transaction_id, list(row.features)) for row in result.rows)
    return features, scorers


def agreement(a: dict[str, list[float]], b: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per transaction and feature: whether the two runs computed the same value."""
    ids = sorted(a)
    assert sorted(b) == ids
    x, y = (np.array([run[t] for t in ids], dtype=float) for run in (a, b))
    return (x == y) | (np.isnan(x) & np.isnan(y)), np.array(ids)


def test_three_instances_compute_the_features_of_one_and_of_the_offline_build(stream, model, redis_url, tmp_path):
    history, labels = stream
    offline = compute_features(history, labels)
    offline_rows = dict(zip(history["transaction_id"], offline.to_numpy().tolist(), strict=True))
    one, _ = run(history, labels, 1, f"sqlite:///{tmp_path / 'one.db'}", None, model)
    one_shared, _ = run(history, labels, 1, f"sqlite:///{tmp_path / 'one-shared.db'}", redis_url, model)
    three, scorers = run(history, labels, 3, f"sqlite:///{tmp_path / 'three.db'}", redis_url, model)
    alone, _ = run(history, labels, 3, f"sqlite:///{tmp_path / 'alone.db'}", None, model)

    assert agreement(one, offline_rows)[0].all()  # the scorer computes the offline build's values
    assert agreement(one_shared, one)[0].all()  # with its terminal aggregates in Redis too
    same, ids = agreement(three, one)
    rows_same = same.all(axis=1)
    share = rows_same.mean()
    alone_share = agreement(alone, one)[0].all(axis=1).mean()
    print(f"\n3 instances: {share:.4%} of {len(ids)} transactions identical to one instance "
          f"({alone_share:.1%} without the shared terminal aggregates)")
    assert same[:, CARD_FEATURES].all()  # each card's history is whole on the instance that owns it
    # What differs is label-driven only: a fraud label applied by another instance within the same hour.
    assert {int(j) for j in np.flatnonzero(~same.all(axis=0))} <= LABEL_FEATURES
    assert share >= 0.995
    assert alone_share < 0.5  # without sharing, terminal counts miss the other instances' traffic

    # No instance holds another's cards: each holds exactly the cards of its partitions.
    held = [set(scorer.state.cards) for scorer in scorers]
    for number, cards in enumerate(held):
        assert cards and all(partition_of(card) % 3 == number for card in cards)
    assert sum(map(len, held)) == len(set().union(*held))


def test_a_partition_taken_over_brings_its_cards_history_and_the_one_given_up_is_forgotten(
        stream, model, redis_url, tmp_path):
    history, labels = stream
    history = history[history["time"] < history["time"].min() + 20 * DAY]
    store_url = f"sqlite:///{tmp_path / 'handover.db'}"
    _, (a, b) = run(history, labels.iloc[:0], 2, store_url, redis_url, model)
    cards_of_b = set(b.state.cards)
    config = a.config
    later = history["time"].max() + HOUR
    moved = [next(t for t in transactions_of(history) if t.card_id == card) for card in sorted(cards_of_b)]
    probes = [tx.__class__(f"PROBE-{tx.card_id}", tx.card_id, tx.terminal_id, later, tx.amount_cents) for tx in moved]
    messages = [Message(config.transactions_topic, partition_of(tx.card_id), i, 0,
                        orjson.dumps(transaction_record(tx))) for i, tx in enumerate(probes)]
    # B leaves: A is assigned every partition, takes B's cards' history from the store, then scores.
    result = a.process(messages, model, now=later + DAY, partitions=range(PARTITIONS))
    whole = FeatureState()
    for tx in transactions_of(history):
        whole.transform(tx)
    assert len(result.rows) == len(probes)
    for row in result.rows:  # each card's history was known, as to one instance that held every card
        expected = whole.transform(row.tx)
        assert [row.features[j] for j in CARD_FEATURES] == pytest.approx([expected[j] for j in CARD_FEATURES],
                                                                          nan_ok=True)
    assert set(a.state.cards) >= cards_of_b
    # Then A gives B's partitions back: their cards are forgotten.
    mine = [p for p in range(PARTITIONS) if p % 2 == 0]
    a.process([], model, now=later + DAY, partitions=mine)
    assert a.state.cards and all(partition_of(card) % 2 == 0 for card in a.state.cards)
    assert not any(seen[2] % 2 for seen in a.state.seen.values())


def test_history_stored_without_partitions_goes_to_the_partition_its_card_key_hashes_to(stream, tmp_path, redis_url):
    """Imported history (no partition stored): the instance taking a partition gets the cards Kafka's default
    partitioner sends there, and only those; the terminal aggregates seeded from the store match the offline ones."""
    history, labels = stream
    history = history[history["time"] < history["time"].min() + 20 * DAY]
    store = Store(f"sqlite:///{tmp_path / 'imported.db'}")
    known = labels[labels["known_at"] <= history["time"].max()]
    backfill(store, history, compute_features(history, known), known)
    terminals = RedisTerminals(redis_url, "test:seeded")
    terminals.seed(rebuild_state(store, EventTimePolicy()).terminals.entries)
    state = FeatureState(terminals=terminals)
    rebuild_cards(state, store, EventTimePolicy(), {1}, partition_count=3)
    expected = {card for card in history["card_id"] if key_partition(card, 3) == 1}
    assert set(state.cards) == expected and {card.partition for card in state.cards.values()} == {1}
    # The next transaction of one of them: the same features as one state that saw the whole history.
    whole = FeatureState()
    for _ in replay(whole, transactions_of(history), labels_in_order(known)):
        pass
    card = sorted(expected)[0]
    last = history[history["card_id"] == card].iloc[-1]
    probe = Transaction("NEXT", card, last["terminal_id"], float(history["time"].max()) + 60, 1_234)
    terminals.load([probe.terminal_id], state.terminal_cutoff())
    assert state.transform(probe, 1) == pytest.approx(whole.transform(probe), nan_ok=True)


def test_redis_down_scores_on_without_terminal_aggregates_and_keeps_the_increments(redis_url):
    terminals = RedisTerminals(redis_url, "test:outage", retry_seconds=0.1)
    state = FeatureState(terminals=terminals)
    t0 = 1_522_540_800.0
    terminals.load(["T"], state.terminal_cutoff())
    state.transform(Transaction("A", "C", "T", t0, 100))
    terminals.commit(state.terminal_cutoff())
    working = terminals.redis
    terminals.redis = redis.Redis.from_url("unix:///nonexistent/redis.sock")  # Redis gone
    terminals.load(["T"], state.terminal_cutoff())
    assert terminals.degraded and terminals.failures == 1
    features = state.transform(Transaction("B", "C", "T", t0 + 8 * DAY, 100))  # still scored
    assert features[FEATURE_NAMES.index("terminal_tx_count_7d_delayed")] == 0  # without the aggregates
    terminals.commit(state.terminal_cutoff())  # Redis is left alone for a while: no batch waits for a timeout
    assert terminals.failures == 1 and terminals.counts  # the increment waits
    terminals.redis, terminals._down_until = working, 0.0  # back, and the while is over
    terminals.load(["T"], state.terminal_cutoff())
    terminals.commit(state.terminal_cutoff())
    assert not terminals.counts
    terminals.load(["T"], state.terminal_cutoff())
    assert sum(terminals.get("T").counts) == 2  # both transactions counted, once each


def test_seed_terminals_writes_the_store_s_aggregates_for_the_group(stream, tmp_path, redis_url, monkeypatch, capsys):
    history, labels = stream
    history = history[history["time"] < history["time"].min() + 10 * DAY]
    store_url = f"sqlite:///{tmp_path / 'seed.db'}"
    store = Store(store_url)
    backfill(store, history, compute_features(history, labels.iloc[:0]), labels.iloc[:0])
    store.close()
    monkeypatch.setenv("FRAUDLOOP_STORE_URL", store_url)
    assert main(["seed-terminals", "--group-id", "seeded"]) == 2  # no Redis configured: one line says so
    assert "no shared_state_url" in capsys.readouterr().err
    monkeypatch.setenv("FRAUDLOOP_SHARED_STATE_URL", redis_url)
    assert main(["seed-terminals", "--group-id", "seeded"]) == 0
    terminals = RedisTerminals(redis_url, "fraudloop:seeded:terminal")
    some = history["terminal_id"].iloc[0]
    terminals.load([some], float("-inf"))
    assert sum(terminals.get(some).counts) == (history["terminal_id"] == some).sum()
