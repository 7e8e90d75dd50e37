"""The scorer process: an explicit kafka-python consume -> score -> produce loop with manual commits.

Delivery is at-least-once with no loss: a batch's decisions and labels are written to the store, its
decisions and dead letters are acknowledged by the broker (acks=all), and only then are its offsets
committed. After a crash the uncommitted batch is delivered again; the feature state, rebuilt from the
store on start, already holds those transactions, so they are neither counted twice nor lost, and their
decisions (same transaction ids) are produced again.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections import defaultdict

import orjson
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from models.features import CARD_RETENTION, TERMINAL_RETENTION, FeatureState, replay
from models.registry import RegistryConfig
from streaming.config import ScorerConfig
from streaming.metrics import ScorerMetrics
from streaming.model import ModelHolder
from streaming.scorer import BatchResult, Message, Scorer
from streaming.shared_state import SharedEvents
from streaming.store import Store

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0005
STATE_HORIZON = max(CARD_RETENTION, TERMINAL_RETENTION)


def rebuild_state(store: Store) -> FeatureState:
    """The feature state as of the last stored decision: the stored window of transactions and labels replayed."""
    state = FeatureState()
    transactions = list(store.recent_transactions(STATE_HORIZON))
    if transactions:
        for _ in replay(state, transactions, store.all_labels(since=transactions[0].time)):
            pass
    log.info("feature state rebuilt from %d stored transactions", len(transactions))
    return state


def stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT ask the loop to finish its batch, commit and close."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


class ScorerService:
    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        self.config = config
        self.metrics = ScorerMetrics()
        self.store = Store(config.store_url)
        self.model = ModelHolder.from_registry(registry, config.model_alias, config.model_check_seconds,
                                               on_event=self._model_event)
        self.scorer = Scorer(config, FeatureState())
        # Several instances in one group share their events through Redis (see shared_state.py).
        self.shared = (SharedEvents(config.shared_state_url, stream=f"fraudloop:{config.group_id}:feature-events")
                       if config.shared_state_url else None)
        if self.shared:
            self.shared.mark_start()  # before the rebuild: what is published meanwhile is applied after it
        self.adopt_state(rebuild_state(self.store))
        if self.shared:
            log.info("applied %d events shared by other instances", self.shared.apply_others(self.scorer.state))
        client = config.client_settings()
        self.consumer = KafkaConsumer(group_id=config.group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=config.batch_size, **client)
        self.consumer.subscribe([config.transactions_topic, config.labels_topic], listener=_Rebalance(self))
        self.producer = KafkaProducer(acks="all", linger_ms=2, batch_size=256 * 1024,
                                      **{k: v for k, v in client.items() if k not in _CONSUMER_ONLY})
        self._lag_checked = 0.0
        self._processed: dict[TopicPartition, OffsetAndMetadata] = {}  # next offset to read, per partition
        self._costs: dict[str, tuple[int, float]] = {}  # per model version, not yet in the store
        self._costs_written = time.monotonic()
        # kafka-python 3 does its network I/O on a background thread; with the default 5 ms GIL switch
        # interval the CPU-bound batch work starves it and fetch responses wait (latency).
        sys.setswitchinterval(SWITCH_INTERVAL)

    def adopt_state(self, state: FeatureState) -> None:
        """Serve from `state`. Its (long-lived) objects are moved out of the cyclic GC's reach: a full
        collection walking hundreds of thousands of them shows up as a p99 latency spike."""
        self.scorer.state = state
        gc.collect()
        gc.freeze()

    def _model_event(self, event: str, version: str) -> None:
        self.metrics.model_events.labels(event).inc()
        if event == "swapped":
            self.metrics.model_version.labels(self.model.name).set(float(version))

    def run(self, stop: threading.Event) -> None:
        self.model.require()
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        log.info("scoring %s with %s version %s", self.config.transactions_topic, self.model.name,
                 self.model.current.version)
        try:
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
                self.model.refresh()  # between batches: a swap never splits one
                if polled:
                    self.handle(polled)
                self._update_lag()
        finally:
            self.close()

    def handle(self, polled: dict) -> BatchResult:
        started, cpu = time.perf_counter(), time.process_time()
        messages = [Message(r.topic, r.partition, r.offset, r.timestamp, r.value)
                    for records in polled.values() for r in records]
        if self.shared:
            self.shared.apply_others(self.scorer.state)
        result = self.scorer.process(messages, self.model.current)
        self.store.write(result.rows, result.labels, self._take_costs())
        if self.shared:  # after the store: a restarted instance rebuilds from the store, then reads from here
            self.shared.publish([row.tx for row in result.rows], result.labels)
        pending = [self.producer.send(self.config.decisions_topic, key=d["card_id"].encode(), value=orjson.dumps(d))
                   for d in result.decisions]
        pending += [self.producer.send(self.config.dead_letter_topic, value=dead.message.value, headers=[
            ("error.reason", dead.reason.encode()), ("source.topic", dead.message.topic.encode()),
            ("source.partition", str(dead.message.partition).encode()),
            ("source.offset", str(dead.message.offset).encode())]) for dead in result.dead_letters]
        self.producer.flush()
        for future in pending:
            future.get(timeout=0)  # raises if the broker refused: offsets stay uncommitted
        next_offsets: dict[TopicPartition, int] = defaultdict(int)
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            next_offsets[tp] = max(next_offsets[tp], m.offset + 1)
        # Only after the acks; asynchronous, so the next batch does not wait a round trip. A failed commit
        # means a redelivery, which the idempotent state and store absorb.
        self._processed.update({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in next_offsets.items()})
        self.consumer.commit_async(dict(self._processed), callback=self._committed)
        self._observe(result, messages, started, cpu)
        if result.decisions:
            count, seconds = self._costs.get(self.model.current.version, (0, 0.0))
            self._costs[self.model.current.version] = (count + len(result.decisions),
                                                       seconds + time.process_time() - cpu)
        return result

    def _take_costs(self, every_seconds: float = 10.0) -> dict[str, tuple[int, float]] | None:
        """Serving cost per model version, written with a batch every few seconds (no extra round trip)."""
        if not self._costs or time.monotonic() - self._costs_written < every_seconds:
            return None
        taken, self._costs, self._costs_written = self._costs, {}, time.monotonic()
        return taken

    def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Partitions leave this instance: commit what it processed of them, and forget them.

        kafka-python 3 calls rebalance listeners on its IO thread, where a blocking commit is refused: the
        commit is sent asynchronously, ahead of the group's rejoin. Were it lost, the new owner would get
        the batch again, which the idempotent state and store absorb."""
        offsets = {tp: offset for tp, offset in self._processed.items() if tp in revoked}
        if offsets:
            self.consumer.commit_async(offsets, callback=self._committed)
        for tp in revoked:
            self._processed.pop(tp, None)

    def _committed(self, offsets: dict, response: object) -> None:
        if isinstance(response, Exception):
            log.warning("offset commit failed (%s); the batch will be delivered again", response)

    def _observe(self, result: BatchResult, messages: list[Message], started: float, cpu: float) -> None:
        m = self.metrics
        acked_ms = time.time() * 1000
        m.transactions.inc(len(result.decisions) + sum(d.message.topic != self.config.labels_topic
                                                       for d in result.dead_letters))
        m.labels.inc(len(result.labels))
        for decision in result.decisions:
            m.decisions.labels(decision["decision"]).inc()
        for message in messages:
            if message.topic == self.config.transactions_topic:
                m.end_to_end.observe(max(acked_ms - message.timestamp_ms, 0) / 1000)
        for dead in result.dead_letters:
            m.dead_letters.labels(dead.message.topic).inc()
        if result.decisions:
            m.model_seconds.observe(result.model_seconds)
        m.batch_seconds.observe(time.perf_counter() - started)
        m.scoring_cpu.inc(time.process_time() - cpu)

    def _update_lag(self) -> None:
        if time.monotonic() - self._lag_checked < 5:
            return
        self._lag_checked = time.monotonic()
        lag = 0
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag += max(highwater - self.consumer.position(tp), 0)
        self.metrics.lag.set(lag)

    def close(self) -> None:
        self.producer.flush()
        self.store.write([], [], self._take_costs(every_seconds=0))
        if self._processed:
            try:
                self.consumer.commit(dict(self._processed))  # synchronous: the last batch is committed on exit
            except Exception as error:  # the group may be gone; the batch will be delivered again
                log.warning("final offset commit failed: %s", error)
        self.consumer.close(autocommit=False)
        self.producer.close()
        self.store.close()
        if self.shared:
            self.shared.close()
        log.info("scorer stopped")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ScorerService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.service.hand_over(set(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


_CONSUMER_ONLY = {"session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms", "max_poll_records",
                  "fetch_max_wait_ms", "fetch_min_bytes", "auto_offset_reset", "isolation_level"}
