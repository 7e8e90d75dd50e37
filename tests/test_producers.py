"""Integration: producers no one here wrote (librdkafka, through confluent-kafka) in every codec and with transactions,
and record batches the scorer's client cannot read, against the real development broker.

The interoperability table in docs/scorer.md is what `test_any_producer` measures: it fails, printing the table
measured, when the two differ."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from pathlib import Path

import kafka.codec
import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition, libversion
from fraudloop.models.features import compute_features, transactions_of
from fraudloop.models.schema import transaction_record
from fraudloop.streaming import operate
from fraudloop.streaming.broker import create_topics
from fraudloop.streaming.repartition import Repartitioner
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.record import default_records
from kafka.record.memory_records import MemoryRecords

from tests.streaming_helpers import RunningScorer, read_topic, scorer_config
from tests.test_streaming import stored_rows

pytestmark = pytest.mark.integration
DOCS = Path(__file__).resolve().parent.parent / "docs" / "scorer.md"
PER_CASE = 200


def messages(history, start: int, count: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` transactions of the history from row `start`, keyed by card."""
    return [(tx.card_id.encode(), orjson.dumps(transaction_record(tx)))
            for tx in transactions_of(history.iloc[start:start + count])]


def produce(bootstrap: str, topic: str, batch: list[tuple[bytes, bytes]], partition: int | None = None,
            transaction: str = "", **settings: str) -> None:
    """librdkafka produces the batch (acks=all), in a transaction committed ("commit") or aborted ("abort") if named."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                         **({"transactional.id": f"bank-{time.monotonic_ns()}"} if transaction else {}), **settings})
    if transaction:
        producer.init_transactions(30)
        producer.begin_transaction()
    for key, value in batch:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, headers=[("trace-id", key)], **extra)
    if transaction == "commit":
        producer.commit_transaction(30)
    elif transaction == "abort":
        producer.flush(30)
        producer.abort_transaction(30)
    assert producer.flush(30) == 0


def read_with_librdkafka(bootstrap: str, topic: str, until, timeout: float = 90.0) -> list[dict]:
    """Every decision on `topic`, read by librdkafka from the start until `until(decisions)` holds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    decided: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(decided) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                decided.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    return decided


CASES = [  # (setting shown in the table, librdkafka settings, transaction)
    ("compression.type=none", {"compression.type": "none"}, ""),
    ("compression.type=gzip", {"compression.type": "gzip"}, ""),
    ("compression.type=snappy", {"compression.type": "snappy"}, ""),
    ("compression.type=lz4", {"compression.type": "lz4"}, ""),
    ("compression.type=zstd", {"compression.type": "zstd"}, ""),
    ("enable.idempotence=true, zstd", {"enable.idempotence": "true", "compression.type": "zstd"}, ""),
    ("transactional, aborted", {}, "abort"),
    ("transactional, committed (lz4)", {"compression.type": "lz4"}, "commit"),
]
OPEN = "transactional, open for 3 s, then committed"


def test_any_producer(broker, served, small_history, tmp_path):  # noqa: F811
    """Each case's 200 transactions: decided exactly once (an aborted transaction's: never), the scorer alive."""
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}")
    rows, client = [], f"librdkafka {libversion()[0]}"
    runner = RunningScorer(config, registry)
    with runner:
        expected: set[str] = set()
        cases = [(name, settings, transaction, messages(small_history, i * PER_CASE, PER_CASE))
                 for i, (name, settings, transaction) in enumerate(CASES)]
        for _, settings, transaction, batch in cases:
            produce(broker.bootstrap, config.transactions_topic, batch, transaction=transaction, **settings)
            if transaction != "abort":
                expected |= {orjson.loads(value)["transaction_id"] for _, value in batch}
        decided = read_with_librdkafka(broker.bootstrap, config.decisions_topic,
                                       lambda d: expected <= {x["transaction_id"] for x in d})
        # a transaction left open: its records are behind the last stable offset, not read until it commits
        pending = messages(small_history, len(CASES) * PER_CASE, PER_CASE)
        open_producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "bank-open",
                                  "linger.ms": 20})
        open_producer.init_transactions(30)
        open_producer.begin_transaction()
        for key, value in pending:
            open_producer.produce(config.transactions_topic, key=key, value=value)
        assert open_producer.flush(30) == 0
        time.sleep(3.0)  # also what a redelivery or the aborted transaction would make arrives meanwhile
        seen = len(decided)
        decided = read_with_librdkafka(broker.bootstrap, config.decisions_topic, lambda d: len(d) >= seen)
        while_open = ids(pending) & {d["transaction_id"] for d in decided}
        open_producer.commit_transaction(30)
        del open_producer
        decided = read_with_librdkafka(broker.bootstrap, config.decisions_topic,
                                       lambda d: ids(pending) <= {x["transaction_id"] for x in d})
        alive = runner.thread.is_alive() and runner.error is None
        # keyed by card through librdkafka's own partitioner (CRC32, not murmur2): nothing reported
        assert runner.service.metrics.registry.get_sample_value("fraud_transactions_not_keyed_by_card_total") == 0
    times = Counter(decision["transaction_id"] for decision in decided)
    for name, _, transaction, batch in cases:
        counts = {times.get(i, 0) for i in ids(batch)}
        if transaction == "abort":
            result = {frozenset({0}): "never decided", frozenset({1}): "decided once (the broker reported no aborted "
                      "transaction)"}.get(frozenset(counts), f"decided {sorted(counts)} times")
        else:
            result = "decided once" if counts == {1} else f"decided {sorted(counts)} times"
        rows.append(f"| {client} | {name} | {result}, scorer {'alive' if alive else 'stopped'} |")
    counts = {times.get(i, 0) for i in ids(pending)}
    result = ("not decided while open; decided once after the commit" if not while_open and counts == {1}
              else f"{len(while_open)} decided while open; decided {sorted(counts)} times")
    rows.append(f"| {client} | {OPEN} | {result}, scorer {'alive' if alive else 'stopped'} |")
    table = "\n".join(["| client | producer setting | result (200 transactions) |", "|---|---|---|", *rows])
    print(table)
    # every row decided once, the scorer alive; an aborted transaction never decided, or, on a broker that reports no
    # aborted transactions in its fetch responses (the development broker: docs/scorer.md), decided once
    assert all(("decided once" in row or "never decided" in row) and "alive" in row for row in rows), table
    assert table in DOCS.read_text(), f"docs/scorer.md's interoperability table is not what was measured:\n{table}"


@pytest.fixture
def no_snappy(monkeypatch):
    """This process's Kafka client without snappy, as a scorer without the codec library would be (the first one a
    bank's producer used here stopped all scoring)."""
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    return monkeypatch


def unreadable_stream(bootstrap: str, topic: str, history) -> tuple[list, list, list, list]:
    """Partition 0: 50 plain, 30 snappy (one batch), 50 plain; partition 1: 50 plain, then 10 in a batch whose CRC is
    wrong (a corruption the development broker stores as it came); partition 2: 50 plain. Returns the (before,
    unreadable, after) transactions of partition 0 and the corrupt ones of partition 1."""
    before, bad, after, corrupt = (messages(history, start, n) for start, n in ((0, 50), (50, 30), (80, 50),
                                                                                 (230, 10)))
    produce(bootstrap, topic, before, partition=0)
    produce(bootstrap, topic, bad, partition=0, **{"compression.type": "snappy", "linger.ms": "200"})
    produce(bootstrap, topic, after, partition=0)
    produce(bootstrap, topic, messages(history, 130, 50), partition=1)
    produce(bootstrap, topic, messages(history, 180, 50), partition=2)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=200)
    crc = default_records.calc_crc32c
    default_records.calc_crc32c = lambda data: crc(data) ^ 1
    try:
        for key, value in corrupt:
            producer.send(topic, key=key, value=value, partition=1)
        producer.flush()
    finally:
        default_records.calc_crc32c = crc
        producer.close()
    return before, bad, after, corrupt


def ids(batch) -> set[str]:
    return {orjson.loads(value)["transaction_id"] for _, value in batch}


def decided_ids(bootstrap: str, topic: str, until, timeout: float = 60.0) -> set[str]:
    return {orjson.loads(r.value)["transaction_id"]
            for r in read_topic(bootstrap, topic, lambda rs: until({orjson.loads(r.value)["transaction_id"]
                                                                      for r in rs}), timeout)}


def test_unreadable_batch_waits_alone_then_reads_when_fixed(broker, served, small_history, tmp_path, no_snappy):  # noqa: F811
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", unreadable_retry_seconds=1.0)
    before, bad, after, corrupt = unreadable_stream(broker.bootstrap, config.transactions_topic, small_history)
    others = ids(messages(small_history, 130, 100))
    with RunningScorer(config, registry) as service:
        decided = decided_ids(broker.bootstrap, config.decisions_topic, lambda d: (ids(before) | others) <= d)
        time.sleep(2.0)  # retried meanwhile, and still unreadable
        decided = decided_ids(broker.bootstrap, config.decisions_topic, lambda d: True)
        assert not decided & (ids(bad) | ids(after) | ids(corrupt)), "nothing unreadable is scored, nor what follows"
        sample = service.metrics.registry.get_sample_value
        labels = {"topic": config.transactions_topic, "partition": "0"}
        assert sample("fraud_partition_unreadable_offset", labels) == 50
        assert sample("fraud_partition_unreadable_offset", {**labels, "partition": "1"}) == 50  # the CRC mismatch
        assert sample("fraud_unreadable_batches_total", {"action": "waited"}) == 2  # once each, not per retry
        no_snappy.undo()  # the fix deployed: the codec is there
        decided = decided_ids(broker.bootstrap, config.decisions_topic,
                              lambda d: (ids(bad) | ids(after)) <= d)
        deadline = time.monotonic() + 5
        while sample("fraud_partition_unreadable_offset", labels) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sample("fraud_partition_unreadable_offset", labels) is None
        assert sample("fraud_partition_unreadable_offset", {**labels, "partition": "1"}) == 50  # still corrupt
    assert ids(before) | ids(bad) | ids(after) | others <= decided
    assert not decided & ids(corrupt)


def test_unreadable_batch_skipped_whole_into_the_dead_letter_topic(broker, served, small_history, tmp_path,  # noqa: F811
                                                                   no_snappy):
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", unreadable_batches="skip")
    before, bad, after, corrupt = unreadable_stream(broker.bootstrap, config.transactions_topic, small_history)
    others = ids(messages(small_history, 130, 100))
    with RunningScorer(config, registry) as service:
        decided = decided_ids(broker.bootstrap, config.decisions_topic,
                              lambda d: (ids(before) | ids(after) | others) <= d)
        letters = read_topic(broker.bootstrap, config.dead_letter_topic, lambda r: len(r) >= 2)
        sample = service.metrics.registry.get_sample_value
        assert sample("fraud_unreadable_batches_total", {"action": "skipped"}) == 2
    assert not decided & (ids(bad) | ids(corrupt))
    letter, crc_letter = sorted(letters, key=lambda r: dict(r.headers)["source.partition"])
    assert b"CorruptRecordError" in dict(crc_letter.headers)["error.reason"]
    assert dict(crc_letter.headers)["source.next_offset"] == b"60"
    headers = dict(letter.headers)
    assert headers["error.kind"] == b"unreadable" and b"snappy" in headers["error.reason"]
    assert (headers["source.offset"], headers["source.next_offset"], headers["source.codec"]) == (b"50", b"80",
                                                                                                  b"snappy")
    no_snappy.undo()  # the dead letter is the batch as stored: a client with the codec reads the transactions back
    batch = MemoryRecords(letter.value).next_batch()
    assert {orjson.loads(record.value)["transaction_id"] for record in batch} == ids(bad)
    # the skip is committed: the group's offset of partition 0 is past every record
    reader = KafkaConsumer(bootstrap_servers=[broker.bootstrap], group_id=config.group_id, enable_auto_commit=False)
    try:
        assert reader.committed(KafkaTopicPartition(config.transactions_topic, 0)) == 130
        assert reader.committed(KafkaTopicPartition(config.transactions_topic, 1)) == 60
    finally:
        reader.close(autocommit=False)


def test_group_skip_copies_an_unreadable_batch_whole(broker, small_history, tmp_path, no_snappy):
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}")
    unreadable_stream(broker.bootstrap, config.transactions_topic, small_history)
    assert operate.skip(config, config.transactions_topic, 0, 80) == 80
    letters = read_topic(broker.bootstrap, config.dead_letter_topic, lambda r: len(r) >= 51)
    kinds = [dict(r.headers)["error.kind"] for r in letters]
    assert kinds.count(b"unreadable") == 1 and len(kinds) == 51


def produce_unkeyed(bootstrap: str, topic: str, batch: list[tuple[bytes, bytes]], chunk: int = 50) -> None:
    """As a bank's producer that keys by nothing: librdkafka picks the partitions; sent as live traffic would be,
    a chunk every 50 ms."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for start in range(0, len(batch), chunk):
        for _, value in batch[start:start + chunk]:
            producer.produce(topic, value=value)
        producer.poll(0)
        time.sleep(0.05)
    assert producer.flush(30) == 0


def test_an_unkeyed_producer_is_detected_then_repartitioned_by_card_for_three_instances(
        broker, served, small_history, tmp_path, redis_url):  # noqa: F811
    registry, _, _ = served
    stream = small_history.head(3_000)
    batch = messages(small_history, 0, len(stream))
    # Read as it comes: the scorer says the topic is not keyed by card
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'unkeyed.db'}")
    with RunningScorer(config, registry) as service:
        produce_unkeyed(broker.bootstrap, config.transactions_topic, batch)
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(batch))
        # a batch's decisions are on the topic before its acknowledgement is counted: wait for the last one's
        deadline = time.monotonic() + 30
        while (not_keyed := service.metrics.registry.get_sample_value(
                "fraud_transactions_not_keyed_by_card_total")) < len(batch) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not_keyed == len(batch)

    # Re-keyed by card first: three instances compute the features of one state
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'rekeyed.db'}", shared_state_url=redis_url,
                           repartition_from=f"bank-{time.monotonic_ns()}")
    create_topics(broker.bootstrap, [config.repartition_from], partitions=3)
    stop = threading.Event()
    repartitioner = Repartitioner(config)
    thread = threading.Thread(target=repartitioner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with contextlib.ExitStack() as scorers:
            services = [scorers.enter_context(RunningScorer(config, registry)) for _ in range(3)]
            deadline = time.monotonic() + 60
            while not all(s.consumer.assignment() for s in services):
                assert time.monotonic() < deadline, "the three instances did not share the partitions"
                time.sleep(0.2)
            produce_unkeyed(broker.bootstrap, config.repartition_from, batch)
            records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(batch), 90)
            sample = [s.metrics.registry.get_sample_value for s in services]
            assert all(get("fraud_transactions_total") > 0 for get in sample)
            assert sum(get("fraud_transactions_not_keyed_by_card_total") for get in sample) == 0
    finally:
        stop.set()
        thread.join(10)
    assert len({orjson.loads(r.value)["transaction_id"] for r in records}) == len(batch)
    offline = compute_features(stream, small_history.iloc[:0][["transaction_id"]].assign(is_fraud=True, known_at=0.0))
    stored = stored_rows(config.store_url)
    online = np.array([orjson.loads(stored[t].features) for t in stream["transaction_id"]], dtype=float)
    same = ((online == offline.to_numpy()) | (np.isnan(online) & np.isnan(offline.to_numpy()))).all(axis=1)
    print(f"\nrepartitioned, 3 instances: {same.mean():.3%} of {len(same)} transactions with one state's features")
    assert same.mean() >= 0.999
