"""The feature state from the store: on start, and for the partitions an instance takes over.

The store holds every decided transaction with the partition it was read from, so it is the state's
changelog: a scorer that starts, or is assigned a partition in a rebalance, reads the stored history its
windows reach before it scores. Every stored row passes through the event-time policy first, so no row (one
written before the policy, or by another writer) can poison the state: one too far ahead is not taken as the
newest, one too late is left out.
"""

from __future__ import annotations

import logging
import math
import time

from fraudloop.models.features import FeatureState, replay
from fraudloop.models.schema import Transaction
from fraudloop.models.store import Store
from fraudloop.models.terminals import Terminals
from fraudloop.streaming.event_time import WALL, EventTimePolicy
from fraudloop.streaming.terminal_store import RedisTerminals
from kafka.partitioner.default import murmur2

log = logging.getLogger(__name__)


def rebuild_state(store: Store, policy: EventTimePolicy, now: float | None = None,
                  terminals: Terminals | None = None) -> FeatureState:
    """The feature state as of the last stored decision. With terminal aggregates in this process, every stored
    transaction of the state's reach and their labels are replayed. With shared ones (Redis has them) the cards
    come with the partitions assigned (`rebuild_cards`); here the stream time is taken, and the fraud labels of the
    allowed lateness before it and after are applied again: one held or pending when the instance stopped would
    otherwise be lost (a fraud applied twice changes nothing)."""
    state = FeatureState(policy.allowed_lateness, terminals)
    if state.terminals.shared:
        newest = _trusted_newest(store, policy, time.time() if now is None else now)
        if newest is not None:
            state.watermark = newest
            frauds = [label for label in store.all_labels(since=newest - policy.allowed_lateness) if label.is_fraud]
            where = store.where_decided([label.transaction_id for label in frauds])
            for label in frauds:
                state.add_label(label, where.get(label.transaction_id))
        return state
    stored = _stored(store, policy, max(state.card_retention, state.terminal_retention), None, now)
    if stored:
        transactions, partitions = zip(*stored, strict=True)
        for _ in replay(state, transactions, store.all_labels(since=transactions[0].time), partitions):
            pass
    return state


def rebuild_cards(state: FeatureState, store: Store, policy: EventTimePolicy, partitions: set[int],
                  partition_count: int = 0, now: float | None = None) -> int:
    """Partitions this instance takes over (of `partition_count`): their cards' stored history into the state,
    before their first transaction is scored (their terminal aggregates are shared, counted when they were
    scored). How many.

    A row stored with no partition (imported history, or written before partitions were stored) belongs to the
    partition the default partitioner (murmur2, as Kafka's Java and Python clients) gives its card; with the
    count unknown (0), to every instance (and its cards are then never dropped)."""
    stored = _stored(store, policy, state.card_retention, partitions, now)
    if partition_count:
        stored = [(tx, p if p >= 0 else key_partition(tx.card_id, partition_count)) for tx, p in stored]
        stored = [(tx, p) for tx, p in stored if p in partitions]
    for tx, partition in stored:
        state.add_card_history(tx, partition)
    return len(stored)


def seed_shared_terminals(store: Store, terminals: RedisTerminals, policy: EventTimePolicy) -> int:
    """The terminal aggregates of the store's history into the shared store, replacing what it holds for those
    terminals: before the first start with shared aggregates, or after Redis lost them. How many terminals."""
    entries = rebuild_state(store, policy).terminals.entries
    terminals.seed(entries)
    return len(entries)


def key_partition(key: str, count: int) -> int:
    """The partition Kafka's default partitioner gives a message keyed `key`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % count


def _stored(store: Store, policy: EventTimePolicy, horizon: float, partitions: set[int] | None,
            now: float | None) -> list[tuple[Transaction, int]]:
    """The stored transactions (with their partitions) within `horizon` of the newest, through the event-time
    policy, so no stored row (one written before the policy, or by another writer) can poison the state: one
    too far ahead is not taken as the newest, one too late is left out."""
    now = time.time() if now is None else now
    newest = _trusted_newest(store, policy, now)
    if newest is None:
        return []
    accepted, watermark, skipped = [], -math.inf, 0
    for tx, partition in store.recent_transactions(horizon, newest, partitions):
        if policy.transaction(tx.time, watermark, watermark, now):  # one stream, in time order
            skipped += 1
        else:
            watermark = max(watermark, tx.time)
            accepted.append((tx, partition))
    log.info("%d stored transactions%s read into the feature state (%d left out by the event-time policy)",
             len(accepted), "" if partitions is None else f" of partitions {sorted(partitions)}", skipped)
    return accepted


def _trusted_newest(store: Store, policy: EventTimePolicy, now: float) -> float | None:
    """The newest stored transaction time the policy would have accepted: with the wall clock, none ahead of
    it; with the stream's own clock, none further ahead of the one before it than the largest skew."""
    if policy.clock == WALL:
        return store.newest_event_time(at_most=now + policy.max_ahead)
    times = store.newest_event_times(64)
    for newer, older in zip(times, times[1:], strict=False):
        if newer - older <= policy.max_ahead:
            return newer
    return times[-1] if times else None


