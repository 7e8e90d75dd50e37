"""Helpers for the streaming integration tests: unique topics, producing, reading a topic to the end."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import orjson
from fraudloop.models.features import transactions_of
from fraudloop.models.schema import transaction_record
from fraudloop.streaming.broker import create_topics
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.service import ScorerService
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def scorer_config(bootstrap: str, store_url: str, **overrides) -> ScorerConfig:
    """A config with topics and a group of its own, the topics created."""
    tag = uuid.uuid4().hex[:8]
    config = ScorerConfig(
        bootstrap_servers=bootstrap, transactions_topic=f"tx-{tag}", labels_topic=f"labels-{tag}",
        decisions_topic=f"decisions-{tag}", dead_letter_topic=f"dlq-{tag}",
        labels_dead_letter_topic=f"labels-dlq-{tag}", group_id=f"scorer-{tag}", store_url=store_url, **overrides)
    create_topics(bootstrap, config.topics, partitions=3)
    return config


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=5)


def send_transactions(bootstrap: str, topic: str, history) -> None:
    out = producer(bootstrap)
    for tx in transactions_of(history):
        out.send(topic, key=tx.card_id.encode(), value=orjson.dumps(transaction_record(tx)))
    out.flush()
    out.close()


def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool], timeout: float = 60.0) -> list:
    """All records of `topic` from the start, polled until `until(records)` holds; fails after `timeout`."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while not until(records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: condition not met after {timeout:.0f} s with {len(records)} records")
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def decisions_by_id(records: list) -> dict[str, dict]:
    return {d["transaction_id"]: d for d in (orjson.loads(r.value) for r in records)}


class RunningScorer:
    """A ScorerService on a thread, stopped (finish batch, commit, close) on exit."""

    def __init__(self, config: ScorerConfig, registry) -> None:
        self.service = ScorerService(config, registry)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run(self.stop)
        except BaseException as error:  # surfaced by __exit__
            self.error = error

    def __enter__(self) -> ScorerService:
        self.thread.start()
        return self.service

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the scorer did not stop within 30 s"
        if self.error:
            raise self.error
