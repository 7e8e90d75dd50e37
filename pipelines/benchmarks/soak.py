"""`fraudloop soak`: a stream at a fixed rate while the scorer is killed, the broker restarted and poison sent.

Everything real on loopback: the development broker (restarted on the same port), the scorer as its own
process (`fraudloop score`, killed with SIGKILL and started again), an MLflow store with a trained
champion, the SQLite scorer store. A producer replays a simulated stream (transactions and labels) at a
fixed rate and keeps every transaction the broker acknowledged, switching its compression codec every
SWITCH_EVERY messages through every codec Kafka defines (as producers of several teams would); a collector
reads the decisions and dead-letter topics as they come. At random moments (seeded) one of: kill the scorer,
restart the broker, send the hostile messages that once stopped the scorer. At the end it counts:

- transactions in (acknowledged by the broker), decisions out, and **missing**: acknowledged transactions
  with no decision, which must be 0. The development broker keeps everything in memory, so a restart loses
  what it held: transactions produced before a restart that the scorer had not consumed (not in its store)
  and decisions produced before a restart that the collector had not read yet are counted apart;
- duplicates (a decision seen again: redeliveries after a kill) and conflicting ones (another decision for
  the same transaction, which must be 0); dead letters by kind; the scorer's memory at start and end.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import psutil
from fraudloop.models.features import labels_in_order, transactions_of
from fraudloop.models.home import fraudloop_home
from fraudloop.models.schema import Label, Transaction, label_record, transaction_record
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.streaming import children
from fraudloop.streaming.broker import Broker, create_topics, free_port, start_broker
from fraudloop.streaming.config import CODECS, ScorerConfig
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

KINDS = ("kill", "broker", "poison")
SWITCH_EVERY = 1_000  # messages produced with one codec before the next


@dataclass
class SoakResult:
    minutes: float
    rate: float
    seed: int
    transactions: int = 0  # ordinary transactions acknowledged by the broker
    decided: int = 0  # of those, with a decision read
    missing: int = 0
    lost_transactions: int = 0  # produced before a broker restart, never consumed by the scorer
    lost_decisions: int = 0  # decided (in the store) before a broker restart, decision lost with it
    duplicates: int = 0
    conflicting_duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    scorer_kills: int = 0
    broker_restarts: int = 0
    poison_bursts: int = 0
    codec_switches: int = 0  # the producer's codec changed mid-run
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    seconds: float = 0.0
    missing_sample: list[str] = field(default_factory=list)  # a few missing transaction ids, to look into


class Collector(threading.Thread):
    """Reads the decisions and dead-letter topics from the start, again from the start after a broker restart."""

    def __init__(self, config: ScorerConfig, broker: list[Broker]) -> None:
        super().__init__(daemon=True)
        self.config, self.broker = config, broker
        self.decisions: dict[str, tuple] = {}
        self.duplicates = self.conflicting = 0
        self.dead: Counter[str] = Counter()
        self.stop, self.restart = threading.Event(), threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            self.restart.clear()
            with contextlib.suppress(Exception):
                self._read()
            self.stop.wait(0.5)

    def _read(self) -> None:
        topics = (self.config.decisions_topic, self.config.dead_letter_topic, self.config.labels_dead_letter_topic)
        consumer = KafkaConsumer(bootstrap_servers=[self.broker[0].bootstrap], enable_auto_commit=False,
                                 auto_offset_reset="earliest")
        try:
            partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            while not self.stop.is_set() and not self.restart.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    with self.lock:
                        for r in records:
                            self._take(tp.topic, r)
        finally:
            consumer.close()

    def _take(self, topic: str, record) -> None:
        if topic == self.config.decisions_topic:
            d = orjson.loads(record.value)
            seen = (d["decision"], d["score"], d["decided_at"])
            first = self.decisions.setdefault(d["transaction_id"], seen)
            if first is not seen:
                self.duplicates += 1
                self.conflicting += first != seen
        else:
            self.dead[dict(record.headers).get("error.kind", b"?").decode()] += 1


class Stream(threading.Thread):
    """Produces the stream at a fixed rate; keeps each transaction the broker acknowledged, with the broker
    epoch it was acknowledged in."""

    def __init__(self, config: ScorerConfig, broker: list[Broker], events, rate: float) -> None:
        super().__init__(daemon=True)
        self.config, self.broker, self.events, self.rate = config, broker, events, rate
        self.epoch = 0  # incremented by the chaos once the broker has stopped
        self.acked: dict[str, int] = {}  # transaction id -> epoch acknowledged in
        self.sent: list[Transaction] = []  # acknowledged transactions, for the poison to refer to
        self.stop = threading.Event()
        self.codec_switches, self.codec = 0, CODECS[0]

    def run(self) -> None:
        producer, group = None, []
        started, n = time.monotonic(), 0
        for kind, tx_or_label in self.events:
            if self.stop.is_set():
                break
            group.append((kind, tx_or_label))
            n += 1
            if len(group) < 20:
                continue
            wait = started + n / self.rate - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
            producer = self._deliver(producer, group)
            group = []
            if n % SWITCH_EVERY == 0 and producer is not None:  # the next codec: a new producer
                producer.close(timeout=5)
                producer, self.codec_switches = None, self.codec_switches + 1
                self.codec = CODECS[self.codec_switches % len(CODECS)]
        if group and not self.stop.is_set():
            self._deliver(producer, group)

    def _deliver(self, producer: KafkaProducer | None, group: list) -> KafkaProducer | None:
        """Send the group until the broker acknowledges all of it (a new producer after a failure)."""
        while not self.stop.is_set():
            epoch = self.epoch
            try:
                producer = producer or KafkaProducer(
                    bootstrap_servers=[self.broker[0].bootstrap], acks="all", linger_ms=5, max_block_ms=2_000,
                    request_timeout_ms=2_000, delivery_timeout_ms=4_000,
                    compression_type=self.codec if self.codec != "none" else None)
                futures = [self._send(producer, kind, item) for kind, item in group]
                producer.flush(timeout=5)
                for future in futures:
                    future.get(timeout=0)
            except Exception:  # noqa: BLE001 - the broker is away: a new producer, and again
                with contextlib.suppress(Exception):
                    producer.close(timeout=0)
                producer = None
                self.stop.wait(0.5)
                continue
            for kind, item in group:
                if kind == "transaction":
                    self.acked[item.transaction_id] = epoch
                    self.sent.append(item)
            return producer
        return producer

    def _send(self, producer: KafkaProducer, kind: str, item):
        if kind == "transaction":
            return producer.send(self.config.transactions_topic, key=item.card_id.encode(),
                                 value=orjson.dumps(transaction_record(item)))
        return producer.send(self.config.labels_topic, key=item.transaction_id.encode(),
                             value=orjson.dumps(label_record(item)))


def poison(config: ScorerConfig, bootstrap: str, sent: list[Transaction], burst: int) -> None:
    """The messages that once stopped the scorer: tombstones, far too old, far ahead, a conflicting and a
    redelivered identical transaction, a label of a transaction never seen, a label with a string flag."""
    last = sent[-1]
    tag = f"POISON{burst}"
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", max_block_ms=2_000)
    try:
        tx = config.transactions_topic
        producer.send(tx, key=b"tombstone", value=None)
        producer.send(config.labels_topic, key=b"tombstone", value=None)
        old = Transaction(f"{tag}-OLD", last.card_id, last.terminal_id, last.time - 44 * DAY, 2_500)
        ahead = Transaction(f"{tag}-AHEAD", last.card_id, last.terminal_id, time.time() + 30 * 365 * DAY, 2_500)
        conflicting = Transaction(last.transaction_id, last.card_id, last.terminal_id, last.time,
                                  last.amount_cents + 499_999)
        for item in (old, ahead, conflicting, last):
            producer.send(tx, key=item.card_id.encode(), value=orjson.dumps(transaction_record(item)))
        producer.send(config.labels_topic, value=orjson.dumps(label_record(Label(f"{tag}-NEVER", True, last.time))))
        producer.send(config.labels_topic, value=orjson.dumps(
            {**label_record(Label(last.transaction_id, True, last.time)), "is_fraud": "true"}))
        producer.flush(timeout=5)
    finally:
        producer.close(timeout=1)


def _where(config: ScorerConfig, bootstrap: str) -> dict[str, str]:
    """transaction id -> partition@offset in the transactions topic as the broker holds it now."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    found: dict[str, str] = {}
    try:
        topic = config.transactions_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        quiet = 0
        while quiet < 5:
            polled = consumer.poll(timeout_ms=200)
            quiet = 0 if polled else quiet + 1
            for tp, records in polled.items():
                for r in records:
                    with contextlib.suppress(Exception):
                        found[orjson.loads(r.value)["transaction_id"]] = f"{tp.partition}@{r.offset}"
    finally:
        consumer.close()
    return found


def rss_mb(process: children.Child) -> float:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    return 0.0


def run(minutes: float, rate: float = 100.0, seed: int = 0, work: Path | None = None,
        say=print) -> SoakResult:
    from fraudloop.models.registry import CHAMPION, RegistryConfig, set_alias
    from fraudloop.models.store import Store
    from fraudloop.models.training import TrainParams
    from fraudloop.pipelines.data.backfill import backfill
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
    from fraudloop.pipelines.retraining.train import BuildConfig, build_model
    from fraudloop.pipelines.retraining.training_set import history_rows

    rng = random.Random(seed)
    result = SoakResult(minutes=minutes, rate=rate, seed=seed)
    work = (work or fraudloop_home() / "soak").resolve()
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.monotonic()
    needed = int(rate * minutes * 60 * 1.2) + 1_000
    customers = 1_000
    stream_days = max(2, int(needed / (customers * 1.9)) + 1)
    sim = SimulationConfig(customers=customers, terminals=2 * customers, days=28 + stream_days, seed=seed)
    history = simulate(sim, progress=False)
    labels = labels_of(history)
    cut = float(history["time"].min()) // DAY * DAY + 28 * DAY
    past, stream = history[history["time"] < cut], history[history["time"] >= cut]
    known = labels[labels["known_at"] <= cut]

    registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=(work / "art").as_uri())
    built = build_model(past, known, registry, BuildConfig(train_days=10, delay_days=4, test_days=7,
                                                          params=TrainParams(num_boost_round=100)), progress=False)
    set_alias(registry, CHAMPION, built.model.version)
    store_url = f"sqlite:///{work / 'scoring.db'}"
    store = Store(store_url)
    backfill(store, past, history_rows(past, labels), known)
    store.close()
    say(f"soak: {len(stream):,} transactions to stream at {rate:g} msg/s for {minutes:g} min; champion "
        f"version {built.model.version}")

    port, metrics_port = free_port(), free_port()
    broker = [start_broker(port, log=work / "broker.log")]
    config = ScorerConfig(bootstrap_servers=broker[0].bootstrap, group_id="soak", store_url=store_url)
    create_topics(broker[0].bootstrap, config.topics, partitions=3)
    env = {**os.environ, "FRAUDLOOP_HOME": str(work), "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "FRAUDLOOP_ARTIFACT_ROOT": registry.artifact_root, "FRAUDLOOP_STORE_URL": store_url,
           "FRAUDLOOP_MODEL_CHECK_SECONDS": "2"}
    command = [sys.executable, "-m", "fraudloop.pipelines.cli", "score", "--bootstrap", broker[0].bootstrap,
               "--group-id", "soak", "--metrics-port", str(metrics_port)]
    scorer_log = open(work / "scorer.log", "ab")  # noqa: SIM115 - closed at the end

    def start_scorer() -> children.Child:
        return children.start(command, name="scorer", grace=30.0, env=env, stdout=scorer_log,
                              stderr=subprocess.STDOUT)

    def stream_events():  # in event time; a label before a transaction of the same second, as the replay sends
        txs = ((tx.time, 1, "transaction", tx) for tx in transactions_of(stream))
        outcomes = ((lb.known_at, 0, "label", lb) for lb in labels_in_order(labels[labels["known_at"] > cut]))
        for _, _, kind, item in heapq.merge(outcomes, txs, key=lambda e: (e[0], e[1])):
            yield kind, item

    scorer = start_scorer()
    collector = Collector(config, broker)
    producer = Stream(config, broker, stream_events(), rate)
    collector.start()
    producer.start()
    try:
        while len(collector.decisions) < 100:
            if scorer.poll() is not None:
                raise RuntimeError(f"the scorer exited at start (code {scorer.poll()}); see {work / 'scorer.log'}")
            time.sleep(0.2)
        result.rss_start_mb = rss_mb(scorer)
        end = time.monotonic() + minutes * 60
        kinds = list(KINDS)
        while time.monotonic() < end:
            time.sleep(min(rng.uniform(6, 12), max(end - time.monotonic(), 0)))
            if time.monotonic() >= end - 5:
                break
            if not kinds:
                kinds = list(KINDS)
            kind = kinds.pop(rng.randrange(len(kinds)))  # each kind once in every three events
            if kind == "kill":
                scorer.process.send_signal(signal.SIGKILL)  # a crash: nothing graceful
                scorer.stop()
                result.scorer_kills += 1
                time.sleep(rng.uniform(0.5, 3))
                scorer = start_scorer()
                say(f"soak: scorer killed and started again ({result.scorer_kills})")
            elif kind == "broker":
                broker[0].stop()
                # Only now: a send the old broker acknowledged while it was stopping belongs to it (and is lost
                # with it); one that fails is sent again, and acknowledged by the next broker.
                producer.epoch += 1
                time.sleep(rng.uniform(2, 8))
                broker[0] = start_broker(port, log=work / "broker.log")
                create_topics(broker[0].bootstrap, config.topics, partitions=3)
                collector.restart.set()
                result.broker_restarts += 1
                say(f"soak: broker restarted ({result.broker_restarts})")
            elif producer.sent:
                poison(config, broker[0].bootstrap, producer.sent, result.poison_bursts)
                result.poison_bursts += 1
                say(f"soak: poison sent ({result.poison_bursts})")
            if scorer.poll() is not None:
                raise RuntimeError(f"the scorer exited (code {scorer.poll()}); see {work / 'scorer.log'}")
        producer.stop.set()
        producer.join(30)
        result.codec_switches = producer.codec_switches
        final_epoch = producer.epoch
        due = {t for t, e in producer.acked.items() if e == final_epoch}  # produced since the last restart
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not due <= set(collector.decisions):
            time.sleep(0.5)
        time.sleep(2)  # a last look for duplicates
        where = _where(config, broker[0].bootstrap)  # the last broker's log: where each transaction is
        result.rss_end_mb = rss_mb(scorer)
        if scorer.poll() is not None:
            raise RuntimeError(f"the scorer exited (code {scorer.poll()}); see {work / 'scorer.log'}")
    finally:
        scorer.stop()
        collector.stop.set()
        producer.stop.set()
        broker[0].stop()
        scorer_log.close()

    store = Store(store_url)
    acked = producer.acked
    with collector.lock:
        decided = set(collector.decisions)
        result.duplicates, result.conflicting_duplicates = collector.duplicates, collector.conflicting
        result.dead_letters = dict(sorted(collector.dead.items()))
    undecided = [t for t in acked if t not in decided]
    in_store = set(store.decisions_for(undecided))
    store.close()
    for tx_id in undecided:
        if acked[tx_id] == final_epoch:
            result.missing += 1
            if len(result.missing_sample) < 5:
                stored = "stored" if tx_id in in_store else "not stored"
                result.missing_sample.append(f"{tx_id} ({stored}; in the last log at {where.get(tx_id, 'none')})")
        elif tx_id in in_store:
            result.lost_decisions += 1
        else:
            result.lost_transactions += 1
    result.transactions, result.decided = len(acked), len(decided & set(acked))
    result.seconds = round(time.monotonic() - started, 1)
    return result


def to_markdown(result: SoakResult, command: str) -> str:
    r = result
    dead = ", ".join(f"{kind} {count}" for kind, count in r.dead_letters.items()) or "none"
    return "\n".join([
        "# Reliability: the soak",
        "",
        f"Produced by `{command}` (seed {r.seed}); {r.seconds:,.0f} s in all. A simulated stream at {r.rate:g} "
        "messages a second (transactions and labels) through the development broker while, at random moments, "
        "the scorer is killed with SIGKILL and started again, the broker is restarted, and the hostile messages "
        "that once stopped the scorer are sent (tombstones on both topics, a transaction 44 days old, one 30 "
        "years ahead, a conflicting and an identical copy of a decided transaction, a label of a transaction "
        "never seen, a label with `is_fraud: \"true\"`).",
        "",
        "| | |",
        "|---|---|",
        f"| minutes | {r.minutes:g} |",
        f"| transactions in (acknowledged by the broker) | {r.transactions:,} |",
        f"| decisions out (distinct transactions) | {r.decided:,} |",
        f"| **missing** | **{r.missing}** |",
        f"| lost with a broker restart: transactions never consumed | {r.lost_transactions} |",
        f"| lost with a broker restart: decisions not yet read | {r.lost_decisions} |",
        f"| duplicates (a decision seen again) / conflicting | {r.duplicates} / {r.conflicting_duplicates} |",
        f"| dead letters by kind | {dead} |",
        f"| scorer kills / broker restarts / poison bursts | {r.scorer_kills} / {r.broker_restarts} / "
        f"{r.poison_bursts} |",
        f"| the producer's codec switched (none, gzip, snappy, lz4, zstd in turn, every {SWITCH_EVERY:,} messages) | "
        f"{r.codec_switches} |",
        f"| scorer memory (Kafka process + worker) at start / end | {r.rss_start_mb:.0f} MB / {r.rss_end_mb:.0f} MB |",
        "",
        "The development broker keeps everything in memory, so a restart loses what it held: transactions "
        "produced before it that the scorer had not consumed, and decisions produced before it that the "
        "reader had not read, are counted apart (a durable broker keeps them). Missing counts every "
        "transaction acknowledged after the last broker restart that never got a decision. Duplicates are "
        "decisions given again after a kill (the transaction's decision from the store); conflicting ones "
        "would be a different decision for the same transaction. JSON: `benchmarks/reliability.json`.",
        "",
    ])


def record(result: SoakResult, markdown: Path, command: str) -> None:
    keys = ("minutes", "transactions", "missing", "duplicates", "dead_letters", "scorer_kills", "broker_restarts",
            "rss_start_mb", "rss_end_mb")
    data = asdict(result)
    payload = {**{k: data[k] for k in keys}, "dead_letters": sum(result.dead_letters.values()),
               "dead_letters_by_kind": result.dead_letters, **{k: v for k, v in data.items() if k not in keys}}
    write_record(markdown, to_markdown(result, command), payload)
