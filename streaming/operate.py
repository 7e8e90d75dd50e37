"""What an operator does to a stuck scorer group, through Kafka: see its lag, and, as a last resort, skip a
partition past an offset, the skipped messages copied to the dead-letter topic first (nothing is thrown away; a
record batch the client cannot read is copied whole, as stored: streaming/unreadable.py).

Skipping commits the group's offset from outside the group: stop the scorer first (Kafka refuses a commit
for a group that has live members).
"""

from __future__ import annotations

from dataclasses import dataclass

from fraudloop.streaming import unreadable
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.service import dead_letter, new_producer
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

SKIPPED = "skipped: by an operator (fraudloop group skip)"


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing for it
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def _consumer(config: ScorerConfig) -> KafkaConsumer:
    return KafkaConsumer(group_id=config.group_id, enable_auto_commit=False, **config.client_settings())


def group_lag(config: ScorerConfig) -> list[PartitionLag]:
    consumer = _consumer(config)
    try:
        partitions = [TopicPartition(topic, p) for topic in (config.transactions_topic, config.labels_topic)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(partitions)
        return [PartitionLag(tp.topic, tp.partition, consumer.committed(tp), ends[tp]) for tp in partitions]
    finally:
        consumer.close(autocommit=False)


def skip(config: ScorerConfig, topic: str, partition: int, to_offset: int) -> int:
    """Move the group's offset of `topic`-`partition` forward to `to_offset`, after copying the messages
    skipped to the dead-letter topic (acknowledged). Returns how many were copied. A batch the client cannot read is
    copied whole, and the offset moved past it even if `to_offset` falls inside it."""
    if topic not in (config.transactions_topic, config.labels_topic):
        raise ValueError(f"{topic!r} is not a topic the scorer reads ({config.transactions_topic}, "
                         f"{config.labels_topic})")
    tp = TopicPartition(topic, partition)
    consumer = _consumer(config)
    try:
        if partition not in (consumer.partitions_for_topic(topic) or ()):
            raise ValueError(f"{topic} has no partition {partition}")
        start = consumer.committed(tp)
        consumer.assign([tp])
        if start is None:
            start = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        if not start < to_offset <= end:
            raise ValueError(f"--to-offset must be after the committed offset {start} and at most the end {end}")
        consumer.seek(tp, start)
        producer = new_producer(config)
        copied, pending = 0, []
        while consumer.position(tp) < to_offset:
            try:
                polled = consumer.poll(timeout_ms=1_000)
            except Exception as error:
                stuck = unreadable.stuck_partition(consumer, error)
                batch = stuck and unreadable.raw_batch(consumer, tp, stuck.offset)
                if not batch:
                    raise
                key, value, headers = unreadable.dead_letter(stuck, batch)
                pending.append(producer.send(config.dead_letter_topic_for(topic), key=key, value=value,
                                             headers=headers))
                copied += batch.next_offset - stuck.offset
                to_offset = max(to_offset, batch.next_offset)  # never into a batch copied whole: past it
                consumer.seek(tp, batch.next_offset)
                continue
            for record in polled.get(tp, []):
                if record.offset < to_offset:
                    key, value, headers = dead_letter(record, SKIPPED)
                    pending.append(producer.send(config.dead_letter_topic_for(topic), key=key, value=value,
                                                 headers=headers))
                    copied += 1
        producer.flush()
        for future in pending:
            future.get(timeout=0)  # every copy acknowledged before the offset moves
        producer.close()
        consumer.commit({tp: OffsetAndMetadata(to_offset, "", -1)})
        return copied
    finally:
        consumer.close(autocommit=False)
