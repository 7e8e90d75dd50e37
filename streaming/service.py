"""The scorer process: an explicit kafka-python consume -> score -> produce loop with manual commits.

Three stages run at once: this loop polls and hands each batch to the worker process (worker.py), which
scores it (validation, features, model, store); a thread of this process takes the scored batches in
order, produces their decisions and waits for the acks; the loop then commits their offsets. Delivery is
at-least-once with no loss: a batch's decisions and labels are written to the store, its decisions and
dead letters are acknowledged by the broker (acks=all), and only then are its offsets committed, in
order. After a crash the uncommitted batches are delivered again; the feature state, rebuilt from the
store on start, already holds those transactions, so they are neither counted twice nor lost, and each
gets the decision already made (from the store), produced again.

Broker faults (a restart, a leader change, a producer the broker no longer knows) do not stop it: the
batches on their way are produced again through a new producer, with backoff, until acknowledged; their
offsets wait for that. The consumer reconnects and rejoins the group by itself. A record batch the client
cannot read stops its own partition only: it waits there, retried, or is skipped whole into the dead-letter
topic (`unreadable_batches`; streaming/unreadable.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from fraudloop.models.registry import RegistryConfig
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.metrics import BATCH_STAGES, ScorerMetrics
from fraudloop.streaming.unreadable import RawBatch, Stuck, raw_batch, readable, stuck_partition
from fraudloop.streaming.unreadable import dead_letter as unreadable_dead_letter
from fraudloop.streaming.worker import Scored, ScoringProcess
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0005
MAX_IN_FLIGHT = 4  # batches polled and not yet acknowledged: enough to keep the worker busy on a backlog
# Producer settings: a broker fault surfaces within seconds (then a new producer is made), not after
# kafka-python's 60 s blocking and 120 s delivery defaults. Settings in `kafka` override them.
PRODUCER_DEFAULTS = {"acks": "all", "linger_ms": 2, "batch_size": 256 * 1024, "max_block_ms": 10_000,
                     "request_timeout_ms": 10_000, "delivery_timeout_ms": 30_000}


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
    seq: int = 0  # polled batches so far: one polled before a partition was rewound is not committed for it
    log_ids: dict[str, str] = field(default_factory=dict)  # topic -> id of the log it was read from
    polled_at: float = field(default_factory=time.monotonic)  # the worker's clock too: polled and handed to it
    polled_ms: float = field(default_factory=lambda: time.time() * 1000)  # wall clock, as the records' timestamps
    taken: float = 0.0  # its result taken by the acking thread
    scored: Scored | None = None
    acked_ms: float = 0.0  # wall clock when its decisions were acknowledged
    acked: float = 0.0  # the same, time.monotonic()
    error: BaseException | None = None


def stage_waits(batch: Batch, transactions_topic: str) -> tuple[float, list[float]] | None:
    """Where an acknowledged batch's oldest transaction waited: (its Kafka timestamp in ms, seconds in each of
    BATCH_STAGES), or None for a batch without timestamped transactions."""
    stamps = [r.timestamp for r in batch.records if r.topic == transactions_topic and r.timestamp > 0]
    scored = batch.scored
    if not stamps or scored is None or not scored.finished:
        return None
    oldest = min(stamps)
    waits = ((batch.polled_ms - oldest) / 1000, scored.started - batch.polled_at, scored.finished - scored.started,
             batch.taken - scored.finished, batch.acked - batch.taken)
    return oldest, [max(seconds, 0.0) for seconds in waits]


def new_producer(config: ScorerConfig) -> KafkaProducer:
    client = {k: v for k, v in config.client_settings().items() if k not in CONSUMER_ONLY}
    return KafkaProducer(**{**PRODUCER_DEFAULTS, "compression_type": config.compression_type(), **client})


def dead_letter(record, reason: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a consumed record's dead letter: the message as it came, with the reason and
    where it came from. A tombstone (no value) goes with an empty value and a marker header."""
    headers = [*(record.headers or []), ("error.reason", reason.encode()),
               ("error.kind", reason.split(":", 1)[0].encode()), ("source.topic", record.topic.encode()),
               ("source.partition", str(record.partition).encode()), ("source.offset", str(record.offset).encode())]
    if record.value is None:
        return record.key, b"", [*headers, ("error.tombstone", b"true")]
    return record.key, record.value, headers


class ScorerService:
    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        self.config = config
        self.metrics = ScorerMetrics(config.dead_letter_topic_for, (config.transactions_topic, config.labels_topic))
        if config.metrics_port:  # from the start: a scorer rebuilding its state or waiting for a model is seen
            self.metrics.serve(config.metrics_port, config.metrics_host)
        self.model_name = registry.model_name
        self.model_version = ""
        self.refused: dict[str, str] = {}  # model versions the worker would not serve, and why
        self.rules_version = ""  # the rules file in force
        self.rules_refused = ""  # why the last rules file was refused (the set in force kept deciding)
        self.worker = ScoringProcess(config, registry)  # rebuilds the feature state; raises if no model serves
        self._take(self.worker.ready)
        client = config.client_settings()
        self.consumer = KafkaConsumer(group_id=config.group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", max_poll_records=config.batch_size, **client)
        self.consumer.subscribe([config.transactions_topic, config.labels_topic], listener=_Rebalance(self))
        self.producer = self._new_producer()
        self._stopping = threading.Event()  # ends the acking thread's retries
        self._seq = 0  # batches polled
        self._topic_ids: dict[str, str] = {}  # input topic -> the id of the log being read (see _check_topics)
        self._topics_checked = self._metadata_requested = 0.0
        self._void_before: dict[TopicPartition, int] = {}  # rewound: batches polled before this seq are void
        self._to_verify: set[TopicPartition] = set()  # assigned: is the group's offset one in the current log?
        self.in_flight = 0  # batches handed to the worker and not yet taken back from `self._acked`
        self._to_ack: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()  # for the acking thread, in order
        self._acked: queue.SimpleQueue[Batch] = queue.SimpleQueue()  # back from it, in order
        self._acker = threading.Thread(target=self._ack_batches, name="scorer-acks", daemon=True)
        self._acker.start()
        self._lag_checked = 0.0
        self._not_keyed_logged = -math.inf  # when transactions not keyed by card were last reported
        self._decision_partitions = 0  # known at the first send
        self._processed: dict[TopicPartition, OffsetAndMetadata] = {}  # next offset to read, per partition
        self._stuck: dict[TopicPartition, Stuck] = {}  # partitions paused on a batch the client cannot read
        self._retried: dict[TopicPartition, float] = {}  # when each was last resumed to try again
        # skipped unreadable batches: (batches polled by then, partition, offset after the batch, id of the log),
        # committed once every batch polled before the skip is (the offset must not pass a batch still on its way)
        self._skips: list[tuple[int, TopicPartition, int, str]] = []
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

    def _new_producer(self) -> KafkaProducer:
        return new_producer(self.config)

    def run(self, stop: threading.Event) -> None:
        log.info("consuming %s and %s as group %s; scoring with %s version %s", self.config.transactions_topic,
                 self.config.labels_topic, self.config.group_id, self.model_name, self.model_version)
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
        self._check_topics()
        if self._to_verify:
            self._verify_offsets()
        if self.in_flight < MAX_IN_FLIGHT:
            polled = self._poll()
            records = [r for rs in polled.values() for r in rs]
            polled_at = time.monotonic()
            if records or not self.in_flight:
                topic = self.config.transactions_topic
                assigned = tuple(tp.partition for tp in self.consumer.assignment() if tp.topic == topic)
                count = len(self.consumer.partitions_for_topic(topic) or ())
                if records:
                    self.worker.submit([(r.topic, r.partition, r.offset, r.timestamp, r.value, r.key) for r in records],
                                       self._kafka_cpu, assigned, self._behind(polled), count)
                    self._kafka_cpu = 0.0
                else:  # idle: model events, and the cards of partitions just assigned
                    self.worker.request_status(assigned, count)
                self._seq += 1
                self._to_ack.put(Batch(records, self._seq, dict(self._topic_ids), polled_at=polled_at))
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

    def _poll(self) -> dict:
        """consumer.poll(); a batch the client cannot read stops its partition only (waited on or skipped)."""
        self._forget_unassigned()
        self._retry_stuck()
        try:
            polled = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
        except Exception as error:
            stuck = stuck_partition(self.consumer, error)
            if stuck is None or not self._unreadable(stuck):  # not a batch's: the client's or the group's fault
                raise
            return {}
        for tp in self._stuck.keys() & polled.keys():  # read again: fixed, or skipped by an operator
            log.warning("%s-%d reads again from offset %d", tp.topic, tp.partition, polled[tp][0].offset)
            self._unstick(tp)
        return polled

    def _unreadable(self, stuck: Stuck) -> bool:
        """Pause the partition; skip the batch into the dead-letter topic if so configured, else wait, retried.
        False if the batch reads after all (the poll failed for another reason)."""
        tp, known = stuck.tp, self._stuck.get(stuck.tp)
        if known is not None and known.offset == stuck.offset and self.config.unreadable_batches == "wait":
            self._pause(tp, True)  # a retry that failed again: quietly
            return True
        batch = None
        try:  # its extent and bytes, once (a read of up to the broker's largest batch, on this loop)
            batch = raw_batch(self.consumer, tp, stuck.offset)
        except Exception as error:  # noqa: BLE001 - without its extent the batch is waited on, not skipped
            log.warning("the unreadable batch of %s at %d was not fetched raw: %r", stuck.name, stuck.offset, error)
        if batch is not None and readable(batch):
            return False
        if not self._pause(tp, True):  # revoked meanwhile: the new owner meets the batch
            return True
        if self.config.unreadable_batches == "skip" and batch is not None and self._skip(stuck, batch):
            return True
        self._stuck[tp] = stuck
        self.metrics.unreadable.labels(tp.topic, str(tp.partition)).set(stuck.offset)
        self.metrics.unreadable_batches.labels("waited").inc()
        end = batch.next_offset if batch else stuck.offset + 1
        log.error(
            "%s cannot be read at offset %d (%s, codec %s): that partition waits, the others are scored. Fix the "
            "producer or the scorer's environment and it is read again within %.0f s; or skip the batch (offsets %d "
            "to %d) into %s: set unreadable_batches = \"skip\", or stop the scorers and run `fraudloop group skip "
            "--topic %s --partition %d --to-offset %d`", stuck.name, stuck.offset, stuck.error,
            batch.codec if batch else "unknown", self.config.unreadable_retry_seconds, stuck.offset, end - 1,
            self.config.dead_letter_topic_for(tp.topic), tp.topic, tp.partition, end)
        return True

    def _skip(self, stuck: Stuck, batch: RawBatch) -> bool:
        """The batch, as stored, to the dead-letter topic (acknowledged), then the partition read on after it."""
        tp, topic = stuck.tp, self.config.dead_letter_topic_for(stuck.tp.topic)
        key, value, headers = unreadable_dead_letter(stuck, batch)
        try:
            self.producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)
        except KafkaError as error:  # the broker away, or a batch too large to produce again (max_request_size)
            log.error("%s: the unreadable batch at %d was not copied to %s (%r); the partition waits", stuck.name,
                      stuck.offset, topic, error)
            return False
        if tp not in self.consumer.assignment():  # revoked meanwhile: the new owner skips it (a second copy)
            return True
        log.error("%s: the batch at offsets %d to %d could not be read (%s) and was copied whole to %s; the partition "
                  "reads on from %d (unreadable_batches = skip)", stuck.name, batch.base_offset, batch.next_offset - 1,
                  stuck.error, topic, batch.next_offset)
        self.metrics.unreadable_batches.labels("skipped").inc()
        self.metrics.dead_letters.labels(topic, "unreadable").inc()
        self._skips.append((self._seq, tp, batch.next_offset, self._topic_ids.get(tp.topic, "")))
        if not self.in_flight:
            self._commit_skips(self._seq)
        with contextlib.suppress(KeyError, ValueError):  # revoked since: the new owner reads from the committed offset
            self.consumer.seek(tp, batch.next_offset)
        self._unstick(tp)
        return True

    def _retry_stuck(self) -> None:
        now = time.monotonic()
        for tp, stuck in self._stuck.items():
            if now - self._retried.get(tp, stuck.since) >= self.config.unreadable_retry_seconds:
                self._retried[tp] = now
                self._pause(tp, False)  # fails again: paused again, quietly

    def _pause(self, tp: TopicPartition, pause: bool) -> bool:
        """Pause or resume a partition if it is still assigned (a rebalance may have taken it since the poll)."""
        with contextlib.suppress(KeyError, ValueError):
            if tp in self.consumer.assignment():
                (self.consumer.pause if pause else self.consumer.resume)(tp)
                return True
        return False

    def _unstick(self, tp: TopicPartition) -> None:
        self._pause(tp, False)
        if self._stuck.pop(tp, None) is not None:
            self.metrics.unreadable.remove(tp.topic, str(tp.partition))
        self._retried.pop(tp, None)

    def _forget_unassigned(self) -> None:
        """Stuck partitions and skips of partitions revoked since (the rebalance listener runs on the client's thread,
        and leaves them to this one)."""
        assigned = self.consumer.assignment()
        for tp in [tp for tp in self._stuck if tp not in assigned]:
            self._stuck.pop(tp)
            self._retried.pop(tp, None)
            self.metrics.unreadable.remove(tp.topic, str(tp.partition))
        self._skips = [skip for skip in self._skips if skip[1] in assigned]

    def _behind(self, polled: dict) -> int:
        """Transactions behind the end of the partitions just read, by the high watermarks the fetches brought (no
        request): the overload governor's view of what is coming. Labels do not count: a bulk load of chargebacks
        is no reason to shed the reasons of transactions that are on time."""
        behind = 0
        for tp, records in polled.items():
            if tp.topic != self.config.transactions_topic:
                continue
            with contextlib.suppress(KafkaError):  # revoked since the poll: not ours to count
                highwater = self.consumer.highwater(tp)
                if highwater is not None:
                    behind += max(highwater - records[-1].offset - 1, 0)
        return behind

    def _ack_batches(self) -> None:
        """The acking thread: takes the scored batches from the worker in order, produces their decisions and
        dead letters and waits for the broker's acks, while the loop above goes on polling."""
        while (batch := self._to_ack.get()) is not None:
            group = [batch]
            try:
                batch.scored, batch.taken = self.worker.result(), time.monotonic()
                # Every further batch the worker has already scored goes out with it, under one flush: the
                # acks keep pace however small the polled batches are. (Its request was sent before its
                # Batch was queued, so the queue holds it or is about to.)
                while self.worker.has_result():
                    group.append(self._to_ack.get())
                    group[-1].scored, group[-1].taken = self.worker.result(), time.monotonic()
                self._deliver(group)
            except BaseException as error:  # the loop raises it; nothing from here on is acknowledged
                for batch in group:
                    batch.error = error
                    self._acked.put(batch)
                return
            acked_ms, acked = time.time() * 1000, time.monotonic()
            for batch in group:
                batch.acked_ms, batch.acked = acked_ms, acked
                self._acked.put(batch)

    def _deliver(self, group: list[Batch]) -> None:
        """Produce the group's decisions and dead letters and wait for every acknowledgement. A Kafka error (a
        broker restarted or unreachable, a leader moved, a producer id the broker forgot) gets a new producer
        and the whole group sent again, with backoff, until acknowledged or the scorer stops; offsets are
        committed only after, so nothing is lost (a decision may be produced twice)."""
        retrying = Retrying(retry=retry_if_exception_type(KafkaError), wait=wait_exponential(0.5, max=15),
                            stop=stop_when_event_set(self._stopping), before_sleep=self._renew_producer, reraise=True)
        for attempt in retrying:
            with attempt:
                pending = [future for batch in group if batch.records for future in self._send(batch)]
                self.producer.flush()
                for future in pending:
                    future.get(timeout=0)  # raises if the broker refused

    def _check_topics(self) -> None:
        """Read a topic from its start again when the broker replaced it (a new topic id: the in-memory
        development broker recreates every topic when it restarts). Positions and offsets in the old log mean
        nothing in the new one: read on from them, the consumer would skip the new log's first messages.
        What was read from the old log and is still on its way is produced but never committed."""
        now = time.monotonic()
        if now - self._topics_checked < 1.0:
            return
        self._topics_checked = now
        cluster = self.consumer._client.cluster  # kafka-python keeps topic ids there (no public accessor)
        if now - self._metadata_requested > 5.0:  # not only after an error: a replaced topic raises none
            self._metadata_requested = now
            cluster.request_update()
        for topic in (self.config.transactions_topic, self.config.labels_topic):
            current, known = cluster.topic_id(topic), self._topic_ids.get(topic)
            if current is None or str(current) == known:
                continue
            self._topic_ids[topic] = str(current)
            if known is None:
                continue
            partitions = [tp for tp in self.consumer.assignment() if tp.topic == topic]
            self._rewind(partitions)
            self.metrics.topics_replaced.inc()
            log.warning("topic %s was replaced by the broker (id %s, was %s): reading its %d partitions from the "
                        "start", topic, current, known, len(partitions))

    def _verify_offsets(self) -> None:
        """Newly assigned partitions: the group's committed offset names the log it was made in (its metadata);
        one made in a log since replaced is not followed, the partition is read from the start."""
        for tp in list(self._to_verify):
            current = self._topic_ids.get(tp.topic)
            if current is None:
                continue  # not known yet: the next step
            self._to_verify.discard(tp)
            try:
                committed = self.consumer.committed(tp, metadata=True, timeout_ms=5_000)
            except KafkaError as error:
                log.warning("committed offset of %s-%d not checked (%r)", tp.topic, tp.partition, error)
                self._to_verify.add(tp)
                return
            if committed is not None and committed.metadata and committed.metadata != current:
                log.warning("the committed offset %d of %s-%d was made in a log the broker replaced: reading it "
                            "from the start", committed.offset, tp.topic, tp.partition)
                self._rewind([tp])

    def _rewind(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # a new log starts at 0 (if retention took that, the consumer's reset policy)
            self.consumer.seek(tp, 0)
            self._processed.pop(tp, None)
            self._void_before[tp] = self._seq + 1

    def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._to_verify |= assigned
        self.metrics.partitions.set(sum(tp.topic == self.config.transactions_topic for tp in assigned))

    def _renew_producer(self, retry: RetryCallState) -> None:
        error = retry.outcome.exception() if retry.outcome else None
        log.warning("producing failed (%r); sending again through a new producer in %.1f s (attempt %d)", error,
                    retry.upcoming_sleep, retry.attempt_number)
        self.metrics.producer_renewals.inc()
        with contextlib.suppress(Exception):
            self.producer.close(timeout=1)
        self.producer = self._new_producer()
        self._decision_partitions = 0  # the topic may have come back with another count

    def _send(self, batch: Batch) -> list:
        """Decisions are co-partitioned with their transactions (partition p to p modulo the decisions topic's
        count): a card's decisions keep the order of its transactions, and no key is hashed per message."""
        scored, topic = batch.scored, self.config.decisions_topic
        if not self._decision_partitions:
            self._decision_partitions = len(self.producer.partitions_for(topic) or ())
            if not self._decision_partitions:
                raise KafkaError(f"topic {topic} has no partitions (does it exist?)")
        count = self._decision_partitions
        pending = [self.producer.send(topic, key=key, value=value, partition=partition % count)
                   for partition, key, value in scored.decisions]
        if scored.dead_letters:
            source = {(r.topic, r.partition, r.offset): r for r in batch.records}
            pending += [self._dead_letter(source[(topic, partition, offset)], reason)
                        for topic, partition, offset, reason in scored.dead_letters]
        return pending

    def _dead_letter(self, record, reason: str):
        topic = self.config.dead_letter_topic_for(record.topic)
        key, value, headers = dead_letter(record, reason)
        try:
            return self.producer.send(topic, key=key, value=value, headers=headers)
        except MessageSizeTooLargeError as error:  # the original stays in its topic, at the offset named
            log.error("dead letter of %s-%d@%d sent without its value: %s", record.topic, record.partition,
                      record.offset, error)
            return self.producer.send(topic, key=key, value=b"", headers=[
                *headers, ("error.value_dropped", f"{len(value)} bytes, too large to produce again".encode())])

    def _commit(self, batch: Batch) -> Batch:
        """A batch whose decisions were acknowledged: its offsets are now safe to commit (step() commits them)."""
        self.in_flight -= 1
        if batch.error is not None:
            raise RuntimeError(f"a batch could not be scored or acknowledged: {batch.error}") from batch.error
        self._take(batch.scored)
        if batch.records:
            assigned = self.consumer.assignment()  # a partition revoked meanwhile is the new owner's to commit
            for r in batch.records:  # in offset order per partition
                tp = TopicPartition(r.topic, r.partition)
                log_id = batch.log_ids.get(r.topic, "")
                if tp in assigned and batch.seq >= self._void_before.get(tp, 0) and log_id == self._topic_ids.get(
                        r.topic, ""):  # read from the log the partition is read from now
                    self._processed[tp] = OffsetAndMetadata(r.offset + 1, log_id, -1)
                    self._uncommitted = True
            self._observe(batch)
        self._commit_skips(batch.seq)
        return batch

    def _commit_skips(self, acknowledged: int) -> None:
        """Skipped batches become committable once every batch polled before the skip is acknowledged (up to the
        batch numbered `acknowledged`): a committed offset never passes a batch still on its way."""
        assigned = self.consumer.assignment()
        while self._skips and self._skips[0][0] <= acknowledged:
            seq, tp, offset, log_id = self._skips.pop(0)
            if (tp in assigned and seq >= self._void_before.get(tp, 0) and log_id == self._topic_ids.get(tp.topic, "")
                    and (tp not in self._processed or self._processed[tp].offset < offset)):
                self._processed[tp] = OffsetAndMetadata(offset, log_id, -1)
                self._uncommitted = True

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
        """Model and rules events reported by the worker."""
        for event, version, detail in scored.model_events:
            self.metrics.model_events.labels(event).inc()
            if event == "refused":
                self.refused[version] = detail
        for event, _, detail in scored.rules_events:
            self.metrics.rules_events.labels(event).inc()
            if event == "refused":
                self.rules_refused = detail
            elif event == "loaded":
                self.rules_refused = ""
        self.rules_version = scored.rules_version or self.rules_version
        self.metrics.model_behind_alias.set(scored.model_behind_seconds)
        self.metrics.set_mode(scored.mode)
        self.metrics.state_cards.set(scored.state_cards)
        self.metrics.state_transactions.set(scored.state_transactions)
        self.metrics.rebuilt.inc(scored.rebuilt)
        self.metrics.rebuild_seconds.inc(scored.rebuild_seconds)
        if scored.state_bytes:
            self.metrics.state_bytes.set(scored.state_bytes)
        self.metrics.shared_commands.inc(scored.shared_ops)
        self.metrics.shared_failures.inc(scored.shared_failures)
        for seconds in scored.shared_seconds:
            self.metrics.shared_round_trip.observe(seconds)
        self.metrics.shadow_scored.inc(scored.shadow_scored)
        self.metrics.shadow_shed.inc(scored.shadow_shed)
        self.metrics.shadow_cpu.inc(scored.shadow_cpu_seconds)
        self.metrics.scoring_cpu.inc(scored.shadow_cpu_seconds)
        if scored.shadow_version:
            self.metrics.shadow_version.set(float(scored.shadow_version))
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
        m.unknown_labels.inc(scored.unknown_labels)
        m.replayed.inc(scored.replayed)
        if scored.not_keyed:
            m.not_keyed.inc(scored.not_keyed)
            if time.monotonic() - self._not_keyed_logged >= 60:
                self._not_keyed_logged = time.monotonic()
                log.error("%d of %d transactions of a batch were not keyed by their card (%s): the producer of %s "
                          "keys by account or terminal, or not at all, so a card's history is split across "
                          "partitions and instances and its features are wrong. Key the producer by card_id, or set "
                          "repartition_from (docs/scorer.md). Counted in fraud_transactions_not_keyed_by_card; said "
                          "at most once a minute", scored.not_keyed, len(transactions), scored.not_keyed_example,
                          self.config.transactions_topic)
        for outcome, count in scored.outcomes.items():
            m.decisions.labels(outcome).inc(count)
        for rule, count in scored.rule_hits.items():
            m.rule_hits.labels(rule).inc(count)
        for r in transactions:
            m.end_to_end.observe(max(acked_ms - r.timestamp, 0) / 1000)
        for topic, _, _, reason in scored.dead_letters:
            m.dead_letters.labels(self.config.dead_letter_topic_for(topic), reason.split(":", 1)[0]).inc()
        if scored.decisions:
            m.model_seconds.observe(scored.model_seconds)
        m.scoring_cpu.inc(scored.cpu_seconds)
        for stage, seconds in scored.stage_seconds.items():
            m.stage_cpu.labels(stage).inc(seconds)
        m.batch_seconds.observe(time.monotonic() - batch.polled_at)
        waited = stage_waits(batch, self.config.transactions_topic)
        if waited is not None:
            for stage, seconds in zip(BATCH_STAGES, waited[1], strict=True):
                m.batch_stages.labels(stage).observe(seconds)

    def _update_lag(self) -> None:
        if time.monotonic() - self._lag_checked < 5:
            return
        self._lag_checked = time.monotonic()
        lag = 0
        try:
            for tp in self.consumer.assignment():
                highwater = self.consumer.highwater(tp)
                position = self.consumer.position(tp, timeout_ms=100) if highwater is not None else None
                if position is not None:
                    lag += max(highwater - position, 0)
        except KafkaError as error:  # a metric is not worth a stopped loop
            log.debug("lag not measured: %r", error)
            return
        self.metrics.lag.set(lag)

    def close(self) -> None:
        self._stopping.set()  # a broker that cannot be reached no longer holds the acking thread
        self._to_ack.put(None)  # the acking thread finishes what the worker has, then stops
        self._acker.join()
        try:
            while not self._acked.empty():
                self._commit(self._acked.get())
        except Exception as error:  # a failed worker or broker leaves them uncommitted
            log.warning("batches left uncommitted (%s); they will be delivered again", error)
        with contextlib.suppress(KafkaError):
            self.producer.flush(timeout=5)
        if self._processed:
            try:
                self.consumer.commit(dict(self._processed))  # synchronous: the last batch is committed on exit
            except Exception as error:  # the group may be gone; the batch will be delivered again
                log.warning("final offset commit failed: %s", error)
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=5)
        self.worker.close()
        log.info("scorer stopped")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ScorerService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.service.hand_over(set(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.service.partitions_assigned(set(assigned))
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


CONSUMER_ONLY = {"session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms", "max_poll_records",
                  "max_partition_fetch_bytes", "fetch_max_wait_ms", "fetch_min_bytes", "auto_offset_reset",
                  "isolation_level"}

