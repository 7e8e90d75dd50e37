"""The scorer process: an explicit kafka-python consume -> score -> produce loop with manual commits.

Three stages run at once: this loop polls and hands each batch to the worker process (worker.py), which
scores it (validation, features, model, store); a thread of this process takes the scored batches in
order, produces their decisions and waits for the acks; the loop then commits their offsets. Delivery is
at-least-once with no loss: a batch's decisions and labels are written to the store, its decisions and
dead letters are acknowledged by the broker (acks=all), and only then are its offsets committed, in
order. After a crash the uncommitted batches are delivered again; the feature state, rebuilt from the
store on start, already holds those transactions, so they are neither counted twice nor lost, and their
decisions (same transaction ids) are produced again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from models.registry import RegistryConfig
from streaming.config import ScorerConfig
from streaming.metrics import ScorerMetrics
from streaming.worker import Scored, ScoringProcess

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0005
MAX_IN_FLIGHT = 4  # batches polled and not yet acknowledged: enough to keep the worker busy on a backlog


def stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT ask the loop to finish its batches, commit and close."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@dataclass
class Batch:
    """A polled batch on its way: handed to the worker, then produced, acknowledged and committed."""

    records: list  # kafka-python ConsumerRecords; empty for a status request while idle
    polled_at: float = field(default_factory=time.perf_counter)
    scored: Scored | None = None
    acked_ms: float = 0.0  # wall clock when its decisions were acknowledged
    error: BaseException | None = None


class ScorerService:
    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        self.config = config
        self.metrics = ScorerMetrics()
        self.model_name = registry.model_name
        self.model_version = ""
        self.refused: dict[str, str] = {}  # model versions the worker would not serve, and why
        self.worker = ScoringProcess(config, registry)  # rebuilds the feature state; raises if no model serves
        self._take(self.worker.ready)
        client = config.client_settings()
        self.consumer = KafkaConsumer(group_id=config.group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=config.batch_size, **client)
        self.consumer.subscribe([config.transactions_topic, config.labels_topic], listener=_Rebalance(self))
        self.producer = KafkaProducer(acks="all", linger_ms=2, batch_size=256 * 1024,
                                      **{k: v for k, v in client.items() if k not in _CONSUMER_ONLY})
        self.in_flight = 0  # batches handed to the worker and not yet taken back from `self._acked`
        self._to_ack: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()  # for the acking thread, in order
        self._acked: queue.SimpleQueue[Batch] = queue.SimpleQueue()  # back from it, in order
        self._acker = threading.Thread(target=self._ack_batches, name="scorer-acks", daemon=True)
        self._acker.start()
        self._lag_checked = 0.0
        self._decision_partitions = 0  # known at the first send
        self._processed: dict[TopicPartition, OffsetAndMetadata] = {}  # next offset to read, per partition
        self._uncommitted = False  # whether `_processed` moved since the last commit
        self._committed_at = 0.0
        self._kafka_cpu = 0.0  # this process's CPU seconds not yet reported to the worker's cost account
        # kafka-python 3 does its network I/O on a background thread; with the default 5 ms GIL switch
        # interval the main thread's work starves it and fetch responses wait (latency).
        sys.setswitchinterval(SWITCH_INTERVAL)
        # What this process holds by now (kafka-python, MLflow and their imports: ~300k objects) lives as
        # long as it does: out of the cyclic GC's reach, or each full collection stalls the loop ~150 ms.
        gc.collect()
        gc.freeze()

    def run(self, stop: threading.Event) -> None:
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        log.info("scoring %s with %s version %s", self.config.transactions_topic, self.model_name, self.model_version)
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def step(self) -> list[Batch]:
        """Poll once and hand the batch to the worker (or, with MAX_IN_FLIGHT batches on their way, wait for
        the oldest); commit the batches whose decisions were acknowledged meanwhile. Returns those batches."""
        cpu = time.process_time()
        finished = []
        if self.in_flight < MAX_IN_FLIGHT:
            polled = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
            records = [r for rs in polled.values() for r in rs]
            if records:
                self.worker.submit([(r.topic, r.partition, r.offset, r.timestamp, r.value) for r in records],
                                   self._kafka_cpu)
                self._kafka_cpu = 0.0
            elif not self.in_flight:
                self.worker.request_status()  # model events while idle
            if records or not self.in_flight:
                self._to_ack.put(Batch(records))
                self.in_flight += 1
        else:  # a backlog: what is read from Kafka waits there, not in this process's memory
            with contextlib.suppress(queue.Empty):
                finished.append(self._commit(self._acked.get(timeout=self.config.poll_timeout_ms / 1000)))
        while not self._acked.empty():
            finished.append(self._commit(self._acked.get()))
        self._commit_offsets()
        self._update_lag()
        spent = time.process_time() - cpu
        self._kafka_cpu += spent
        self.metrics.scoring_cpu.inc(spent)
        return [batch for batch in finished if batch.records]

    def _ack_batches(self) -> None:
        """The acking thread: takes the scored batches from the worker in order, produces their decisions and
        dead letters and waits for the broker's acks, while the loop above goes on polling."""
        while (batch := self._to_ack.get()) is not None:
            group = [batch]
            try:
                batch.scored = self.worker.result()
                # Every further batch the worker has already scored goes out with it, under one flush: the
                # acks keep pace however small the polled batches are. (Its request was sent before its
                # Batch was queued, so the queue holds it or is about to.)
                while self.worker.has_result():
                    group.append(self._to_ack.get())
                    group[-1].scored = self.worker.result()
                pending = [future for batch in group if batch.records for future in self._send(batch.scored)]
                self.producer.flush()
                for future in pending:
                    future.get(timeout=0)  # raises if the broker refused: offsets stay uncommitted
            except BaseException as error:  # the loop raises it; nothing from here on is acknowledged
                for batch in group:
                    batch.error = error
                    self._acked.put(batch)
                return
            acked_ms = time.time() * 1000
            for batch in group:
                batch.acked_ms = acked_ms
                self._acked.put(batch)

    def _send(self, scored: Scored) -> list:
        """Decisions are co-partitioned with their transactions (partition p to p modulo the decisions topic's
        count): a card's decisions keep the order of its transactions, and no key is hashed per message."""
        topic = self.config.decisions_topic
        if not self._decision_partitions:
            self._decision_partitions = len(self.producer.partitions_for(topic))
        count = self._decision_partitions
        pending = [self.producer.send(topic, key=key, value=value, partition=partition % count)
                   for partition, key, value in scored.decisions]
        pending += [self.producer.send(self.config.dead_letter_topic, value=dead.message.value, headers=[
            ("error.reason", dead.reason.encode()), ("source.topic", dead.message.topic.encode()),
            ("source.partition", str(dead.message.partition).encode()),
            ("source.offset", str(dead.message.offset).encode())]) for dead in scored.dead_letters]
        return pending

    def _commit(self, batch: Batch) -> Batch:
        """A batch whose decisions were acknowledged: its offsets are now safe to commit (step() commits them)."""
        self.in_flight -= 1
        if batch.error is not None:
            raise RuntimeError(f"a batch could not be scored or acknowledged: {batch.error}") from batch.error
        self._take(batch.scored)
        if not batch.records:
            return batch
        assigned = self.consumer.assignment()  # a partition revoked meanwhile is the new owner's to commit
        for r in batch.records:
            tp = TopicPartition(r.topic, r.partition)
            if tp in assigned:
                self._processed[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
                self._uncommitted = True
        self._observe(batch)
        return batch

    def _commit_offsets(self) -> None:
        """Commit what was acknowledged, at most every `commit_interval_ms`: a commit per small batch would
        be a request per batch for the client and the broker alike. Asynchronous, so the loop does not wait
        a round trip. A commit that fails or comes late means a redelivery, which the idempotent state and
        store absorb."""
        now = time.monotonic()
        if self._uncommitted and (now - self._committed_at) * 1000 >= self.config.commit_interval_ms:
            self.consumer.commit_async(dict(self._processed), callback=self._committed)
            self._uncommitted, self._committed_at = False, now

    def _take(self, scored: Scored) -> None:
        """Model events reported by the worker."""
        for event, version, detail in scored.model_events:
            self.metrics.model_events.labels(event).inc()
            if event == "refused":
                self.refused[version] = detail
        if scored.model_version and scored.model_version != self.model_version:
            self.model_version = scored.model_version
            self.metrics.model_version.labels(self.model_name).set(float(scored.model_version))

    def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Partitions leave this instance: commit what it processed of them, and forget them.

        kafka-python 3 calls rebalance listeners on its IO thread, where a blocking commit is refused: the
        commit is sent asynchronously, ahead of the group's rejoin. Were it lost, or a batch of them still
        in flight, the new owner would get those messages again, which the idempotent state and store absorb."""
        offsets = {tp: offset for tp, offset in self._processed.items() if tp in revoked}
        if offsets:
            self.consumer.commit_async(offsets, callback=self._committed)
        for tp in revoked:
            self._processed.pop(tp, None)

    def _committed(self, offsets: dict, response: object) -> None:
        if isinstance(response, Exception):
            log.warning("offset commit failed (%s); the batch will be delivered again", response)

    def _observe(self, batch: Batch) -> None:
        m, scored = self.metrics, batch.scored
        acked_ms = batch.acked_ms
        transactions = [r for r in batch.records if r.topic == self.config.transactions_topic]
        m.transactions.inc(len(transactions))
        m.labels.inc(scored.labels)
        for outcome, count in scored.outcomes.items():
            m.decisions.labels(outcome).inc(count)
        for r in transactions:
            m.end_to_end.observe(max(acked_ms - r.timestamp, 0) / 1000)
        for dead in scored.dead_letters:
            m.dead_letters.labels(dead.message.topic).inc()
        if scored.decisions:
            m.model_seconds.observe(scored.model_seconds)
        m.scoring_cpu.inc(scored.cpu_seconds)
        m.batch_seconds.observe(time.perf_counter() - batch.polled_at)

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
        self._to_ack.put(None)  # the acking thread finishes what the worker has, then stops
        self._acker.join()
        try:
            while not self._acked.empty():
                self._commit(self._acked.get())
        except Exception as error:  # a failed worker or broker leaves them uncommitted
            log.warning("batches left uncommitted (%s); they will be delivered again", error)
        self.producer.flush()
        if self._processed:
            try:
                self.consumer.commit(dict(self._processed))  # synchronous: the last batch is committed on exit
            except Exception as error:  # the group may be gone; the batch will be delivered again
                log.warning("final offset commit failed: %s", error)
        self.consumer.close(autocommit=False)
        self.producer.close()
        self.worker.close()
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
