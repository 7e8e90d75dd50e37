"""The repartition step: transactions from a producer that does not key them by card, re-keyed by card.

State is held by partition (docs/scaling.md) on the promise that the transactions topic is keyed by card. A bank's
producer may key by account or terminal, or not at all (round-robin): a card's history would then be split across
instances without any error (the scorer counts such transactions: fraud_transactions_not_keyed_by_card). As Kafka
Streams does before a stateful step, this loop reads the producer's topic (`repartition_from`) and produces each
message again to the topic the scorer reads (`transactions_topic`), keyed by its card id: Kafka's default
partitioner then puts every transaction of a card on one partition. Value, headers and timestamp are kept; the
producer's key goes in a header. A message with no card id to read (not JSON, no `card_id`) keeps its key, and the
scorer dead-letters it with the reason.

Delivery: the messages of a poll are produced and acknowledged (acks=all) before the poll's offsets are committed,
so a crash produces some again; the scorer gives a transaction id it has decided the same decision again.
The order of a card's transactions is the order this loop reads them: kept within a producer's partition, not
across them (the event-time policy absorbs that disorder up to the allowed lateness).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import msgspec
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.service import new_producer, stop_on_signals
from fraudloop.streaming.unreadable import raw_batch, readable, stuck_partition
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)
ORIGINAL_KEY = "repartition.original_key"


class _Card(msgspec.Struct):
    card_id: str = ""
    time: float = 0.0


_decode = msgspec.json.Decoder(_Card).decode


def card_of(value: bytes | None) -> tuple[bytes | None, float]:
    """(the card id of a transaction message as a key, its event time), or (None, 0) if it has none to read."""
    try:
        card = _decode(value) if value else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, 0.0
    return (card.card_id.encode(), card.time) if card is not None and card.card_id else (None, 0.0)


def rekeyed(records: list) -> list[tuple[bytes | None, bytes | None, list, int | None]]:
    """(key, value, headers, timestamp) to produce for consumed records: keyed by card (the producer's own key kept
    in a header), in event-time order. A poll holds several partitions of a producer that spread a card's
    transactions over them; ordering the poll by event time gives the card's partition them in the order they
    happened (what comes in a later poll is the event-time policy's to absorb)."""
    out = []
    for r in records:
        card, when = card_of(r.value)
        headers = list(r.headers or [])
        if card is not None and card != r.key:
            headers.append((ORIGINAL_KEY, r.key or b""))
        out.append((when, card if card is not None else r.key, r.value, headers,
                    r.timestamp if r.timestamp > 0 else None))
    out.sort(key=lambda item: item[0])  # stable: messages with no time to read (time 0) first, as read
    return [item[1:] for item in out]


class Repartitioner:
    """consume `repartition_from` -> produce to `transactions_topic` keyed by card -> commit, as one consumer group
    (`<group_id>-repartition`) however many run."""

    rekey = staticmethod(rekeyed)

    def __init__(self, config: ScorerConfig) -> None:
        if not config.repartition_from:
            raise ValueError("repartition_from is not set: the transactions topic is read as keyed by card")
        self.config = config
        self.consumer = KafkaConsumer(config.repartition_from, group_id=f"{config.group_id}-repartition",
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      max_poll_records=config.batch_size, **config.client_settings())
        self.producer = new_producer(config)
        self.moved = 0  # messages produced to the scorer's topic
        self._stuck: dict[TopicPartition, float] = {}  # paused on a batch the client cannot read: when to retry

    def step(self) -> int:
        """One poll, produced and acknowledged, then committed. How many messages."""
        assigned = self.consumer.assignment()
        for tp, retry_at in list(self._stuck.items()):
            if tp not in assigned:  # revoked since: the new owner meets the batch
                del self._stuck[tp]
            elif time.monotonic() >= retry_at:
                with contextlib.suppress(KeyError, ValueError):  # revoked this instant
                    self.consumer.resume(tp)  # unreadable still: paused again
        try:
            polled = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
        except Exception as error:
            stuck = stuck_partition(self.consumer, error)
            batch = stuck and raw_batch(self.consumer, stuck.tp, stuck.offset)
            if stuck is None or (batch is not None and readable(batch)):  # not a batch's fault
                raise
            if stuck.tp not in self._stuck:
                log.error("%s cannot be read at offset %d (%s): that partition waits, retried every %.0f s, the "
                          "others are re-keyed; fix the producer or this process's environment", stuck.name,
                          stuck.offset, stuck.error, self.config.unreadable_retry_seconds)
            self._stuck[stuck.tp] = time.monotonic() + self.config.unreadable_retry_seconds
            self.consumer.pause(stuck.tp)
            return 0
        if not polled:
            return 0
        topic = self.config.transactions_topic
        pending = [self.producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=timestamp)
                   for key, value, headers, timestamp in self.rekey([r for rs in polled.values() for r in rs])]
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in polled.items()}
        for tp in polled:
            self._stuck.pop(tp, None)
        self.producer.flush()
        for future in pending:
            future.get(timeout=0)  # raises if the broker refused: nothing committed, all read again
        self.consumer.commit(offsets)
        self.moved += len(pending)
        return len(pending)

    def run(self, stop: threading.Event) -> None:
        log.info("repartitioning %s into %s by card, as group %s-repartition", self.config.repartition_from,
                 self.config.transactions_topic, self.config.group_id)
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=5)


def run(config: ScorerConfig) -> None:
    """The repartition loop until SIGTERM / SIGINT (`fraudloop repartition`, or a child of `fraudloop score`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = stop_on_signals()
    while True:
        try:
            Repartitioner(config).run(stop)
            return
        except KafkaError as error:  # a broker fault: new clients after a pause (anything else ends the process)
            if stop.is_set():
                return
            log.warning("repartitioning failed (%r); starting again in 5 s", error)
            time.sleep(5)

