"""Record batches the Kafka client cannot read: a codec it lacks, a corrupt batch, a CRC mismatch.

kafka-python decodes a whole record batch (decompression, CRC checks) inside `poll()`, below any per-message
handling: an error there is raised from every poll that reaches the batch, and the client's fetcher, left holding
the failed batch, spins on it if polled again as it is. This adapter finds which partition failed and at which
offset, drops what the fetcher holds of it, and reads the batch's raw bytes and extent (a Fetch request, no
decoding) so that it can be copied to the dead-letter topic whole and skipped. What to do with it (wait or skip)
is the caller's policy (streaming/service.py, streaming/operate.py).

It reaches into kafka-python's fetcher (`_fetcher._next_partition_records`) and network manager: both are pinned
by the lock, and tests/test_producers.py fails if an upgrade moves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.protocol.consumer import FetchRequest
from kafka.record.memory_records import MemoryRecords

UNREADABLE = "unreadable"  # the dead letter's error.kind
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_FETCH_BYTES = 16 * 1024 * 1024  # a batch is at most the broker's message.max.bytes (1 MiB by default)


@dataclass(frozen=True)
class Stuck:
    """A partition whose next batch the client cannot read."""

    tp: TopicPartition
    offset: int  # the consumer's position there: the first offset it cannot read
    error: str  # what the client raised, in one line
    since: float = 0.0  # time.monotonic() when first seen

    @property
    def reason(self) -> str:
        return f"{UNREADABLE}: {self.error}"

    @property
    def name(self) -> str:
        return f"{self.tp.topic}-{self.tp.partition}"


@dataclass(frozen=True)
class RawBatch:
    """A record batch as the broker stores it: offsets [base_offset, next_offset), bytes undecoded."""

    base_offset: int
    next_offset: int
    codec: str
    data: bytes


def stuck_partition(consumer: KafkaConsumer, error: BaseException) -> Stuck | None:
    """The partition whose batch may have raised `error` from `consumer.poll()`, or None if the error cannot be a
    batch's (a Kafka error other than a corrupt record or a missing codec: the coordinator's, a fetch response's).

    The fetcher keeps the partition records it was reading when decoding failed as its next in line, not drained
    (whether the error surfaced at once or, after other records were returned, at the next poll). It is dropped
    here: polled again as it is, kafka-python would loop on it. That slot may also hold a healthy partition whose
    last poll stopped part way: `readable` on its raw batch tells the two apart."""
    if isinstance(error, KafkaError) and not isinstance(error, CorruptRecordError | UnsupportedCodecError):
        return None
    fetcher = getattr(consumer, "_fetcher", None)
    records = getattr(fetcher, "_next_partition_records", None)
    if not records:  # none, or drained: the error came from elsewhere (a fetch response, the coordinator)
        return None
    tp = records.topic_partition
    records.drain()
    fetcher._next_partition_records = None
    if tp not in consumer.assignment():
        return None
    offset = consumer.position(tp, timeout_ms=5_000)
    if offset is None:
        return None
    return Stuck(tp, offset, " ".join(f"{type(error).__name__}: {error}".split())[:500], time.monotonic())


def raw_batches(consumer: KafkaConsumer, tp: TopicPartition, offset: int,
                timeout_ms: int = 10_000) -> list[RawBatch]:
    """The record batches the partition's leader returns for a fetch from `offset` (the one holding it first), read
    through `consumer`'s own connections (its network thread owns them), undecoded."""
    manager = consumer._client._manager
    leader = manager.cluster.leader_for_partition(tp)
    if leader is None or leader < 0:
        return []
    topic = FetchRequest.FetchTopic
    request = FetchRequest(
        # max_wait_ms > 0: the development broker answers a Fetch with max_wait_ms=0 with no data at all
        max_wait_ms=500, min_bytes=1, max_bytes=_FETCH_BYTES, isolation_level=0, session_id=0, session_epoch=-1,
        topics=[topic(topic=tp.topic, partitions=[topic.FetchPartition(
            partition=tp.partition, current_leader_epoch=-1, fetch_offset=offset, last_fetched_epoch=-1,
            partition_max_bytes=_FETCH_BYTES)])],
        forgotten_topics_data=[], rack_id="", max_version=12)

    async def fetch():
        return await manager.send(request, node_id=leader, request_timeout_ms=timeout_ms)

    response = manager.run(fetch)
    data = next((p.records for t in response.responses for p in t.partitions
                 if t.topic == tp.topic and p.partition_index == tp.partition), None)
    batches: list[RawBatch] = []
    if not data:
        return batches
    data = bytes(data)
    records, start = MemoryRecords(data), 0
    while (batch := records.next_batch()) is not None:
        end = start + batch.size_in_bytes
        if batch.next_offset > offset:
            batches.append(RawBatch(batch.base_offset, batch.next_offset,
                                    CODECS.get(batch.compression_type, "unknown"), data[start:end]))
        start = end
    return batches


def raw_batch(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> RawBatch | None:
    """The raw batch holding `offset`, or None if the broker returned none holding it."""
    return next((b for b in raw_batches(consumer, tp, offset) if b.base_offset <= offset < b.next_offset), None)


def readable(batch: RawBatch) -> bool:
    """Whether this process's client decodes the batch (CRCs, codec, every record): a batch that does is not what
    made the poll fail."""
    try:
        decoded = MemoryRecords(batch.data).next_batch()
        if decoded is None or not decoded.validate_crc():
            return False
        return all(record.validate_crc() for record in decoded)
    except Exception:  # noqa: BLE001 - whatever the client raises decoding it
        return False


def dead_letter(stuck: Stuck, batch: RawBatch) -> tuple[None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of an unreadable batch's dead letter: the batch's bytes as the broker stored them
    (Kafka's record batch format v2: a tool with the codec reads it), where it came from and why it was skipped."""
    headers = [("error.reason", stuck.reason.encode()), ("error.kind", UNREADABLE.encode()),
               ("source.topic", stuck.tp.topic.encode()), ("source.partition", str(stuck.tp.partition).encode()),
               ("source.offset", str(batch.base_offset).encode()), ("source.unread_from", str(stuck.offset).encode()),
               ("source.next_offset", str(batch.next_offset).encode()),
               ("source.codec", batch.codec.encode()), ("value.format", b"kafka-record-batch-v2")]
    return None, batch.data, headers
