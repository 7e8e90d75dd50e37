"""Streaming benchmark through the real broker: the scorer against what kafka-python alone can do, measured so that
a change can be told from this machine's noise.

Three consumers of the same transactions:
1. pass-through: consume, decode, add a field, encode, produce, wait for the acks, commit asynchronously every
   `commit_interval_ms` (exactly as the scorer commits): the ceiling of kafka-python and the broker here;
2. our scorer: the real ScorerService batch path (validation, features, LightGBM compiled, the decision rules of
   examples/rules.toml, reasons, store, produce, commit after the acks);
3. naive: what a user writes first; one message at a time, features, an MLflow pyfunc `predict` on a one-row
   DataFrame, a produce per message, auto-commit.

The method:
- Backlog throughput (first record polled to last output acknowledged) in interleaved repetitions (pass-through,
  scorer, naive, pass-through, scorer, naive, ...): every figure is the median with its range, and each ratio is
  taken within a repetition, so a slow hour slows both sides of it.
- A latency-versus-offered-load curve: input paced by a separate producer process at fractions of the
  pass-through's median backlog throughput, the pass-through and the scorer interleaved at each rate, the whole
  sweep repeated. End-to-end latency is a transaction's broker timestamp (stamped at send) to its output
  acknowledged; the first seconds of each point are warm-up, not counted. The SLO rate of each is the highest offered
  rate at which its p99 is under 50 ms (interpolated towards the next rate up, per sweep); the scorer's added
  latency is measured again, in interleaved pairs, at half its SLO rate.
- The load generator serializes every message before its clock starts and sends what is due every 10 ms in one
  flush; its CPU per message is reported.
- The decision rules' own cost is measured apart, in interleaved passes against the model's thresholds alone.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import orjson
import pandas as pd
import psutil
from fraudloop.models.features import (
    FEATURE_NAMES,
    FeatureState,
    compute_features,
    labels_in_order,
    replay,
    transactions_of,
)
from fraudloop.models.registry import CHAMPION, RegistryConfig, set_alias
from fraudloop.models.schema import parse_transaction, transaction_record
from fraudloop.models.store import Store
from fraudloop.pipelines import shipped
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining.train import BuildConfig, BuildResult, build_model
from fraudloop.streaming import compiled
from fraudloop.streaming.broker import create_topics, start_broker
from fraudloop.streaming.config import CONSUMER_DEFAULTS, ScorerConfig
from fraudloop.streaming.metrics import BATCH_STAGES
from fraudloop.streaming.rules import NO_RULES, RuleSet, parse
from fraudloop.streaming.scorer import STAGES
from fraudloop.streaming.service import SWITCH_INTERVAL, ScorerService, stage_waits
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

RULES = shipped("examples") / "rules.toml"
SLO_MS = 50.0
BATCH = 500
PASS, SCORER, NAIVE = "pass-through", "scorer", "naive"
# The first seconds of each paced run warm the consumer (first fetches and produces, metadata, caches) and are not
# counted: measured, they held most of a short run's slowest messages, which a scorer running for days never sees.
WARMUP_SECONDS = 2.0
DEFAULT_SWITCH_INTERVAL = 0.005  # CPython's
# Offered rates, as fractions of the pass-through's median backlog throughput.
FRACTIONS = (0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65)


@dataclass
class Run:
    """One consumer over one topic: a backlog (offered is None) or input paced at `offered` msg/s."""

    mode: str
    messages: int
    seconds: float
    latencies_ms: np.ndarray
    sent_ms: np.ndarray  # each message's broker timestamp (stamped at send), in the order of latencies_ms
    offered: float | None = None
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU microseconds a message, by process
    stages_us: dict[str, float] = field(default_factory=dict)  # the worker's scoring thread, by stage (scorer)
    service_modes: list[str] = field(default_factory=list)  # the mode each message was scored in (the scorer)
    # The scorer's batches: each one's oldest transaction's send time (ms) and its seconds in each of BATCH_STAGES
    batch_sent_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    batch_waits: np.ndarray = field(default_factory=lambda: np.empty((0, len(BATCH_STAGES))))

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    def percentile(self, q: float) -> float:
        """nan with nothing counted (a run shorter than its warm-up)."""
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def without_warmup(self, seconds: float) -> Run:
        """Latencies of the messages (and batches) sent after the first `seconds` of the run only."""
        cutoff = self.sent_ms.min() + seconds * 1000
        kept = self.sent_ms >= cutoff
        self.latencies_ms, self.sent_ms = self.latencies_ms[kept], self.sent_ms[kept]
        batches = self.batch_sent_ms >= cutoff
        self.batch_sent_ms, self.batch_waits = self.batch_sent_ms[batches], self.batch_waits[batches]
        return self

    def stage_ms(self) -> dict[str, float]:
        """The mean milliseconds a batch's oldest transaction spent in each of BATCH_STAGES (the scorer)."""
        if not len(self.batch_waits):
            return {}
        return dict(zip(BATCH_STAGES, (self.batch_waits.mean(axis=0) * 1000).tolist(), strict=True))

    @property
    def counted_seconds(self) -> float:
        """The span of send times counted: shorter than asked when the stream ran out, at the highest rates."""
        return float(self.sent_ms.max() - self.sent_ms.min()) / 1000

    @property
    def achieved(self) -> float:
        """Messages a second the generator actually sent over the counted span."""
        return len(self.sent_ms) / max(self.counted_seconds, 1e-9)


class CpuMeter:
    """CPU seconds spent by named processes from its creation to `per_message`: where a run's cores went."""

    def __init__(self, **pids: int) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.started = self._now()

    def _now(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.processes.items()}

    def per_message(self, messages: int) -> dict[str, float]:
        return {name: (spent - self.started[name]) / messages * 1e6 for name, spent in self._now().items()}


def due(elapsed: float, schedule: Sequence[tuple[int, float]]) -> int:
    """Messages due `elapsed` seconds in: each (count, seconds) segment of the schedule sends its count evenly over
    its seconds, the first at its start (0 seconds: all at once)."""
    total, start = 0, 0.0
    for count, seconds in schedule:
        if elapsed < start:
            break
        total += count if seconds <= 0 else min(count, int((elapsed - start) * count / seconds) + 1)
        start += seconds
    return total


def steady(n: int, rate: float) -> list[tuple[int, float]]:
    return [(n, n / rate)]


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
             schedule: Sequence[tuple[int, float]] | None = None, cpu_us=None, tick: float = 0.01) -> None:
    """Send `messages` (serialized already), on `schedule` if given (see `due`; else at once): every `tick` seconds,
    whatever is due, in one flush. Each message is stamped when sent. `cpu_us`: a shared value receiving this
    process's CPU µs a message.

    Why ticks: kafka-python's sender thread costs ~300 µs of CPU per loop and loops about five times per request,
    so one request per message would cost the generator ~1.5 ms a message at low rates (measured), taking the
    cores from the consumer under test; one request per tick costs a fraction of that."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2, batch_size=256 * 1024)
    producer.partitions_for(topic)  # metadata before the clock starts, or the first sends go out as a burst
    cpu, started, sent = time.process_time(), time.monotonic(), 0
    while sent < len(messages):
        now = min(len(messages), due(time.monotonic() - started, schedule)) if schedule else len(messages)
        if now > sent:
            for key, value in messages[sent:now]:
                producer.send(topic, key=key, value=value)
            sent = now
            producer.flush()
        if sent < len(messages):
            time.sleep(tick)
    producer.flush()
    if cpu_us is not None:
        cpu_us.value = (time.process_time() - cpu) / len(messages) * 1e6
    producer.close()


def _paced(*args) -> None:
    """The paced generator's process. It must not pause: a full GC over what it imported stalls sending ~150 ms,
    and the messages, stamped at send(), would show that as the consumer's latency."""
    gc.collect()
    gc.freeze()
    _produce(*args)


class PacedProducer:
    """The load generator in a process of its own (spawned: it inherits nothing of this one's heap)."""

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
                 schedule: Sequence[tuple[int, float]]) -> None:
        context = multiprocessing.get_context("spawn")
        self.cpu_us = context.Value("d", math.nan)
        self.process = context.Process(target=_paced, args=(bootstrap, topic, messages, schedule, self.cpu_us))

    def start(self) -> None:
        self.process.start()

    def join(self) -> float:
        """Wait for it; its CPU µs a message."""
        self.process.join(120)
        if self.process.exitcode != 0:
            raise RuntimeError(f"the paced producer process failed (exit code {self.process.exitcode})")
        return self.cpu_us.value


def _consumer(bootstrap: str, topic: str, group: str, **extra) -> KafkaConsumer:
    settings = {"enable_auto_commit": False, **CONSUMER_DEFAULTS, **extra}
    return KafkaConsumer(topic, bootstrap_servers=[bootstrap], group_id=group, auto_offset_reset="earliest",
                         **settings)


def _join(consumer: KafkaConsumer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no partitions assigned after {timeout:.0f} s")
        consumer.poll(timeout_ms=100)


def pass_through(bootstrap: str, topic: str, out: str, n: int, commit_interval_ms: int,
                 start: Callable[[], None] | None = None, patience: float = 60.0) -> Run:
    """Consume, touch, produce, wait for the acks, commit as the scorer does: kafka-python's ceiling here.
    `start`: called once the group is joined (the paced producer)."""
    consumer = _consumer(bootstrap, topic, f"{topic}-pass")
    if start:  # joined before the input starts (joining polls: on a backlog it would take records)
        _join(consumer)
        start()
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2, batch_size=256 * 1024)
    latencies, sent, done, first = [], [], 0, None
    processed: dict[TopicPartition, OffsetAndMetadata] = {}
    committed_at = 0.0
    last_progress = time.monotonic()
    while done < n:
        polled = consumer.poll(timeout_ms=100, max_records=BATCH)
        records = [r for rs in polled.values() for r in rs]
        if not records:
            if time.monotonic() - last_progress > patience:
                raise TimeoutError(f"pass-through: {done} of {n} messages after {patience:.0f} s without progress")
            continue
        last_progress = time.monotonic()
        first = first or time.perf_counter()
        for r in records:
            message = orjson.loads(r.value)
            message["passed"] = True
            producer.send(out, key=r.key, value=orjson.dumps(message))
        producer.flush()
        now_ms = time.time() * 1000
        latencies.extend(now_ms - r.timestamp for r in records)
        sent.extend(r.timestamp for r in records)
        for r in records:
            processed[TopicPartition(r.topic, r.partition)] = OffsetAndMetadata(r.offset + 1, "", -1)
        now = time.monotonic()
        if (now - committed_at) * 1000 >= commit_interval_ms:
            consumer.commit_async(dict(processed))
            committed_at = now
        done += len(records)
    seconds = time.perf_counter() - first
    consumer.commit(dict(processed))
    consumer.close()
    producer.close()
    return Run(PASS, done, seconds, np.array(latencies), np.array(sent))


def scorer(service: ScorerService, n: int, patience: float = 60.0) -> Run:
    """The real loop of ScorerService.run(), timed: from the first record polled to the last batch committed."""
    latencies, sent, service_modes, done, first = [], [], [], 0, None
    batch_sent, batch_waits = [], []
    last_progress = time.monotonic()
    while done < n:
        finished = service.step()
        if not finished:
            if time.monotonic() - last_progress > patience:
                raise TimeoutError(f"scorer: {done} of {n} messages after {patience:.0f} s without progress")
            continue
        last_progress = time.monotonic()
        for batch in finished:
            first = batch.polled_at if first is None else min(first, batch.polled_at)
            latencies.extend(batch.acked_ms - r.timestamp for r in batch.records)
            sent.extend(r.timestamp for r in batch.records)
            service_modes.extend([batch.scored.mode] * len(batch.records))
            waited = stage_waits(batch, service.config.transactions_topic)
            if waited is not None:
                batch_sent.append(waited[0])
                batch_waits.append(waited[1])
            done += len(batch.records)
    return Run(SCORER, done, time.monotonic() - first, np.array(latencies), np.array(sent),
               service_modes=service_modes, batch_sent_ms=np.array(batch_sent),
               batch_waits=np.array(batch_waits).reshape(-1, len(BATCH_STAGES)))


def naive(bootstrap: str, topic: str, out: str, n: int, model, state: FeatureState) -> Run:
    consumer = _consumer(bootstrap, topic, f"{topic}-naive", enable_auto_commit=True)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    latencies, sent, done, first = [], [], 0, None
    for record in consumer:
        first = first or time.perf_counter()
        tx = parse_transaction(orjson.loads(record.value))
        row = pd.DataFrame([state.transform(tx)], columns=list(FEATURE_NAMES))
        score = float(model.predict(row)[0])
        producer.send(out, value=orjson.dumps({"transaction_id": tx.transaction_id, "score": score}))
        latencies.append(time.time() * 1000 - record.timestamp)
        sent.append(record.timestamp)
        done += 1
        if done >= n:
            break
    producer.flush()
    seconds = time.perf_counter() - first
    consumer.close()
    producer.close()
    return Run(NAIVE, done, seconds, np.array(latencies), np.array(sent))


def policy_cost(features: np.ndarray, scores: np.ndarray, cards: list[str], terminals: list[str], rules: RuleSet,
                repetitions: int = 7) -> dict:
    """µs a transaction the decision policy costs over the thresholds alone, batch by batch as the scorer runs it:
    `repetitions` interleaved passes of each over the same batches; the median and range of the difference."""
    batches = []
    for start in range(0, len(scores), BATCH):
        part = slice(start, start + BATCH)
        columns = {name: features[part, j] for j, name in enumerate(FEATURE_NAMES)}
        columns["score"] = scores[part]
        batches.append((columns, cards[part], terminals[part]))

    def seconds(policy: RuleSet) -> float:
        started = time.perf_counter()
        for columns, card_ids, terminal_ids in batches:
            policy.decide(columns, card_ids, terminal_ids, 0.3, 0.7)
        return time.perf_counter() - started

    added, alone = [], []
    for _ in range(repetitions):
        alone.append(seconds(NO_RULES))
        added.append((seconds(rules) - alone[-1]) / len(scores) * 1e6)
    return {"rules_version": rules.version, "rules": len(rules.rules), "transactions": len(scores),
            "repetitions": repetitions, **spread(added, "added_us"),
            "thresholds_alone_us": float(np.median(alone)) / len(scores) * 1e6}


def spread(values: Sequence[float], name: str) -> dict:
    """`name_median` and `name_range` of the values."""
    return {f"{name}_median": float(np.median(values)), f"{name}_range": [float(min(values)), float(max(values))]}


def slo_rate(points: Sequence[tuple[float, float]], slo_ms: float = SLO_MS) -> float:
    """The highest offered rate keeping p99 under `slo_ms`, from (rate, p99 ms) points: the highest rate under it,
    interpolated linearly towards the next rate up (over it, or it would be the highest). 0 when no rate is under
    it; the highest rate (a lower bound) when all are. A slow point below the highest good one (a stall the
    pass-through sees too at a few hundred messages a second here) does not count against the curve."""
    points = sorted(points)
    good = [k for k, (_, p99) in enumerate(points) if p99 < slo_ms]
    if not good:
        return 0.0
    k = good[-1]
    if k == len(points) - 1:
        return points[k][0]
    (low_rate, low_p99), (high_rate, high_p99) = points[k], points[k + 1]
    return low_rate + (high_rate - low_rate) * (slo_ms - low_p99) / (high_p99 - low_p99)


def _say(text: str) -> None:
    print(f"[benchmark] {text}", flush=True)


class Bench:
    """The broker, the warm store, the model and the serialized stream; each run on topics of its own (the
    development broker slows down as a topic grows)."""

    def __init__(self, work: Path, bootstrap: str, broker_pid: int, registry: RegistryConfig, warm_store: Path,
                 messages: list[tuple[bytes, bytes]]) -> None:
        self.work, self.boot, self.broker_pid, self.registry = work, bootstrap, broker_pid, registry
        self.warm_store, self.messages = warm_store, messages
        self.commit_interval_ms = ScorerConfig.model_fields["commit_interval_ms"].default
        self.runs = 0

    def _topic(self, mode: str) -> str:
        self.runs += 1
        name = f"{mode}-{self.runs}"
        create_topics(self.boot, [f"{name}-in", f"{name}-out"], partitions=3)
        return name

    def _service(self, name: str, **settings) -> ScorerService:
        """The scorer on `name`'s topics, in full service unless `settings` say otherwise: a figure of this
        benchmark measures all the work (shedding would lighten a backlog, streaming/overload.py)."""
        settings = {"overload_shedding": False, **settings}
        shutil.copyfile(self.warm_store, self.work / f"{name}.db")
        config = ScorerConfig(bootstrap_servers=self.boot, transactions_topic=f"{name}-in", group_id=name,
                              labels_topic=f"{name}-labels", decisions_topic=f"{name}-out",
                              dead_letter_topic=f"{name}-dlq", labels_dead_letter_topic=f"{name}-labels-dlq",
                              store_url=f"sqlite:///{self.work / name}.db", batch_size=BATCH, rules_file=str(RULES),
                              **settings)
        create_topics(self.boot, config.topics, partitions=3)
        service = ScorerService(config, self.registry)
        _join(service.consumer)  # the group is joined and partitions assigned before the clock starts
        return service

    def backlog(self, mode: str, n: int) -> Run:
        name = self._topic(mode)
        if mode == PASS:
            _produce(self.boot, f"{name}-in", self.messages[:n])
            meter = CpuMeter(broker=self.broker_pid, kafka=os.getpid())
            with _switch_interval(DEFAULT_SWITCH_INTERVAL):
                run = pass_through(self.boot, f"{name}-in", f"{name}-out", n, self.commit_interval_ms)
        else:
            service = self._service(name)
            _produce(self.boot, f"{name}-in", self.messages[:n])
            meter = CpuMeter(broker=self.broker_pid, kafka=os.getpid(), worker=service.worker.process.pid)
            try:
                run = scorer(service, n)
                run.cpu_us = meter.per_message(n)  # while the worker lives
            finally:
                service.close()
            metrics = service.metrics.registry
            run.stages_us = {stage: metrics.get_sample_value("fraud_worker_stage_cpu_seconds_total",
                                                             {"stage": stage}) / n * 1e6 for stage in STAGES}
            return run
        run.cpu_us = meter.per_message(n)
        return run

    def scheduled(self, mode: str, schedule: Sequence[tuple[int, float]], **settings) -> Run:
        """`mode` (the scorer with `settings`, or the pass-through) on input sent on `schedule` (see `due`); nothing
        left out as warm-up."""
        name = self._topic(mode)
        n = sum(count for count, _ in schedule)
        producer = PacedProducer(self.boot, f"{name}-in", self.messages[:n], schedule)
        if mode == PASS:
            with _switch_interval(SWITCH_INTERVAL):
                run = pass_through(self.boot, f"{name}-in", f"{name}-out", n, self.commit_interval_ms,
                                   start=producer.start)
        else:
            service = self._service(name, **settings)
            producer.start()
            try:
                run = scorer(service, n)
            finally:
                service.close()
        run.cpu_us["generator"] = producer.join()
        return run

    def paced(self, mode: str, rate: float, seconds: float) -> Run:
        """`seconds` of input at `rate`, after WARMUP_SECONDS whose latencies are not counted."""
        name = self._topic(mode)
        n = min(len(self.messages), max(200, int(rate * (seconds + WARMUP_SECONDS))))
        producer = PacedProducer(self.boot, f"{name}-in", self.messages[:n], steady(n, rate))
        if mode == PASS:
            meter = CpuMeter(broker=self.broker_pid, kafka=os.getpid())
            with _switch_interval(SWITCH_INTERVAL):
                run = pass_through(self.boot, f"{name}-in", f"{name}-out", n, self.commit_interval_ms,
                                   start=producer.start)
            run.cpu_us = meter.per_message(n)
        else:
            service = self._service(name)
            meter = CpuMeter(broker=self.broker_pid, kafka=os.getpid(), worker=service.worker.process.pid)
            producer.start()
            try:
                run = scorer(service, n)
                run.cpu_us = meter.per_message(n)  # while the worker lives
            finally:
                service.close()
        run.cpu_us["generator"] = producer.join()
        run.offered = rate
        # the stream runs out at the highest rates of a fast machine: the warm-up is at most a third of what was sent
        return run.without_warmup(min(WARMUP_SECONDS, n / rate / 3))


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """The GIL switch interval of this process, for a while. A ScorerService sets SWITCH_INTERVAL for its whole
    process (its Kafka loop's latency); left set, it halves the single-process pass-through's backlog throughput
    here. So the pass-through gets its best of each: the interpreter's default on a backlog, the scorer's when
    paced."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@dataclass
class Setup:
    """A compiled champion and a store warmed by a simulated history up to its last transactions, which are the
    stream (serialized), in files under `work`."""

    work: Path
    registry: RegistryConfig
    history: pd.DataFrame
    known: pd.DataFrame  # the labels known when the stream starts
    warm_end: int  # the stream's first row in `history`
    built: BuildResult
    warm_store: Path
    messages: list[tuple[bytes, bytes]]


WARM_DAYS = 42  # the champion's split (21 days to train, 7 of gap, 7 of holdout) and the label maturity


def prepare(n: int, seed: int = 0) -> Setup:
    """The champion trained on all but the last `n` transactions, compiled (served so from the first batch, as after
    a restart), and the scorer's store backfilled with them (its worker rebuilds its state from it)."""
    work = Path(tempfile.mkdtemp(prefix="fraudloop-bench-"))
    try:
        registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                  artifact_root=(work / "artifacts").as_uri())
        world = SimulationConfig(customers=2_000, terminals=4_000, days=56, seed=seed)
        history = simulate(world, progress=False)
        # The champion's split needs WARM_DAYS before the stream: a stream longer than the rest of 56 days (the
        # overload benchmark's bursts at a fast machine's SLO rate) gets a longer history, the same world's.
        days = math.ceil(WARM_DAYS + n / (len(history) / world.days)) + 1
        if days > world.days:
            history = simulate(replace(world, days=days), progress=False)
        labels = labels_of(history)
        warm_end = len(history) - n  # everything before the benchmarked stream warms the feature state
        built = build_model(history.iloc[:warm_end], labels[labels["known_at"] <= history["time"].iloc[warm_end - 1]],
                            registry, BuildConfig(train_days=21), progress=False)
        set_alias(registry, CHAMPION, built.model.version)
        past = history.iloc[:warm_end]
        known = labels[labels["known_at"] <= past["time"].max()]
        warm_store = work / "warm.db"
        store = Store(f"sqlite:///{warm_store}")
        backfill(store, past, compute_features(past, known), known)
        store.close()
        compiling = compiled.start(built.booster)
        while not compiling.done():
            time.sleep(0.1)
        compiling.result(built.booster)
        messages = [(tx.card_id.encode(), orjson.dumps(transaction_record(tx)))
                    for tx in transactions_of(history.iloc[warm_end:])]
        return Setup(work, registry, history, known, warm_end, built, warm_store, messages)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def run(n: int = 30_000, naive_n: int = 1_500, repetitions: int = 5, sweeps: int = 3, point_seconds: float = 8.0,
        fractions: Sequence[float] = FRACTIONS, seed: int = 0) -> dict:
    started = time.perf_counter()
    setup = prepare(n + naive_n, seed)
    work, registry, history, known, warm_end, built, messages = (
        setup.work, setup.registry, setup.history, setup.known, setup.warm_end, setup.built, setup.messages)
    warm = FeatureState()  # the naive consumer's, warmed the same way; each repetition gets a copy
    for _ in replay(warm, transactions_of(history.iloc[:warm_end]), labels_in_order(known)):
        pass
    naive_state = pickle.dumps(warm)
    del warm
    naive_model = mlflow.pyfunc.load_model(f"models:/{registry.model_name}@{CHAMPION}")

    stream = history.iloc[warm_end:]
    streamed = compute_features(history.iloc[:warm_end + n], known, progress=False).to_numpy()[warm_end:]
    policy = policy_cost(streamed, built.booster.predict(streamed, num_threads=1), stream["card_id"].tolist()[:n],
                         stream["terminal_id"].tolist()[:n], parse(RULES.read_text(), str(RULES)))
    _say(f"decision rules: +{policy['added_us_median']:.2f} µs a transaction")

    backlog: dict[str, list[Run]] = {PASS: [], SCORER: [], NAIVE: []}
    curve: list[list[tuple[Run, Run]]] = []  # per sweep, per rate: (pass-through, scorer)
    at_half: list[tuple[Run, Run]] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        broker = cleanup.enter_context(start_broker())
        bench = Bench(work, broker.bootstrap, broker.process.pid, registry, setup.warm_store, messages)
        for rep in range(repetitions):
            backlog[PASS].append(bench.backlog(PASS, n))
            backlog[SCORER].append(bench.backlog(SCORER, n))
            name = bench._topic(NAIVE)
            _produce(bench.boot, f"{name}-in", messages[n:n + naive_n])
            with _switch_interval(DEFAULT_SWITCH_INTERVAL):  # as a user's program runs, and a state of its own
                backlog[NAIVE].append(naive(bench.boot, f"{name}-in", f"{name}-out", naive_n, naive_model,
                                            pickle.loads(naive_state)))
            _say(f"backlog {rep + 1}/{repetitions}: " + ", ".join(
                f"{mode} {runs[-1].throughput:,.0f} msg/s" for mode, runs in backlog.items()))
        base = float(np.median([r.throughput for r in backlog[PASS]]))
        rates = [base * f for f in fractions]
        for sweep in range(sweeps):
            points = []
            for rate in rates:
                points.append((bench.paced(PASS, rate, point_seconds), bench.paced(SCORER, rate, point_seconds)))
                _say(f"sweep {sweep + 1}/{sweeps} at {rate:,.0f} msg/s: p99 pass-through "
                     f"{points[-1][0].percentile(99):.1f} ms, scorer {points[-1][1].percentile(99):.1f} ms")
            curve.append(points)
        scorer_slo = float(np.median([slo_rate([(p[1].offered, p[1].percentile(99)) for p in points])
                                      for points in curve]))
        half = scorer_slo / 2
        if half > 0:
            for _ in range(repetitions):
                at_half.append((bench.paced(PASS, half, point_seconds), bench.paced(SCORER, half, point_seconds)))
            _say(f"at {half:,.0f} msg/s the scorer adds " + ", ".join(
                f"{s.percentile(99) - p.percentile(99):+.1f}" for p, s in at_half) + " ms to the p99")
    return {"backlog": backlog, "rates": rates, "fractions": list(fractions), "curve": curve, "at_half": at_half,
            "half_rate": half, "base": base, "policy": policy, "n": n, "naive_n": naive_n,
            "point_seconds": point_seconds, "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"}


def summary(outcome: dict) -> dict:
    """The figures under the keys of the streaming issue, each over the repetitions (median and range)."""
    backlog, curve = outcome["backlog"], outcome["curve"]
    ratios = [s.throughput / p.throughput for p, s in zip(backlog[PASS], backlog[SCORER], strict=True)]
    naive_ratios = [s.throughput / v.throughput for s, v in zip(backlog[SCORER], backlog[NAIVE], strict=True)]
    slo = {mode: [slo_rate([(pair[i].offered, pair[i].percentile(99)) for pair in points]) for points in curve]
           for i, mode in enumerate((PASS, SCORER))}
    slo_ratios = [s / p for p, s in zip(slo[PASS], slo[SCORER], strict=True) if p]  # a sweep without a floor: none
    added = [s.percentile(99) - p.percentile(99) for p, s in outcome["at_half"]]
    worker = [r.cpu_us["worker"] for r in backlog[SCORER]]
    return {
        "throughput_ratio_median": float(np.median(ratios)),
        "throughput_ratio_range": [min(ratios), max(ratios)],
        "slo_rate_passthrough": float(np.median(slo[PASS])),
        "slo_rate_scorer": float(np.median(slo[SCORER])),
        "slo_rate_ratio": float(np.median(slo_ratios)) if slo_ratios else None,
        "added_p99_ms_at_half_slo_rate": float(np.median(added)) if added else None,
        "worker_cpu_us_per_message": float(np.median(worker)),
        "naive_ratio_median": float(np.median(naive_ratios)),
        "ranges": {
            "slo_rate_passthrough": [min(slo[PASS]), max(slo[PASS])],
            "slo_rate_scorer": [min(slo[SCORER]), max(slo[SCORER])],
            "slo_rate_ratio": [min(slo_ratios), max(slo_ratios)] if slo_ratios else None,
            "added_p99_ms_at_half_slo_rate": [min(added), max(added)] if added else None,
            "worker_cpu_us_per_message": [min(worker), max(worker)],
            "naive_ratio": [min(naive_ratios), max(naive_ratios)],
        },
    }


def _cpu(runs: Sequence[Run]) -> dict[str, float]:
    keys = runs[0].cpu_us.keys()
    return {k: float(np.median([r.cpu_us[k] for r in runs])) for k in keys}


def _stages(runs: Sequence[Run]) -> dict[str, float]:
    """The worker's CPU µs a message by stage (medians), and the rest: its pipe, batch handling, other threads."""
    stages = {stage: float(np.median([r.stages_us[stage] for r in runs])) for stage in STAGES}
    stages["rest"] = float(np.median([r.cpu_us["worker"] - sum(r.stages_us.values()) for r in runs]))
    return stages


def to_json(outcome: dict, command: str) -> dict:
    backlog = outcome["backlog"]
    return {
        "command": command, "repetitions": len(backlog[PASS]), "sweeps": len(outcome["curve"]),
        **summary(outcome),
        "throughput_msg_per_s": {mode: spread([r.throughput for r in runs], "msg_per_s")
                                 for mode, runs in backlog.items()},
        "cpu_us_per_message_backlog": {mode: _cpu(runs) for mode, runs in backlog.items()},
        "worker_stage_cpu_us": _stages(backlog[SCORER]),
        "curve": [{"fraction": f, "offered_msg_per_s": rate,
                   **{mode: {"p50_ms": float(np.median([points[k][i].percentile(50) for points in outcome["curve"]])),
                             "p99_ms": float(np.median([points[k][i].percentile(99) for points in outcome["curve"]])),
                             "p99_ms_range": [min(points[k][i].percentile(99) for points in outcome["curve"]),
                                              max(points[k][i].percentile(99) for points in outcome["curve"])],
                             "achieved_msg_per_s": float(np.median([points[k][i].achieved
                                                                    for points in outcome["curve"]])),
                             "counted_seconds": float(np.median([points[k][i].counted_seconds
                                                                 for points in outcome["curve"]])),
                             **({"batch_stage_ms": _stage_ms([points[k][i] for points in outcome["curve"]])}
                                if mode == SCORER else {})}
                      for i, mode in enumerate((PASS, SCORER))}}
                  for k, (f, rate) in enumerate(zip(outcome["fractions"], outcome["rates"], strict=True))],
        "half_slo_rate_msg_per_s": outcome["half_rate"],
        "at_half_slo_rate": [{"passthrough_p99_ms": p.percentile(99), "scorer_p99_ms": s.percentile(99)}
                             for p, s in outcome["at_half"]],
        "generator_cpu_us_per_message": _generator_cpu(outcome),
        "rules_us_per_tx": outcome["policy"],
        "seconds": outcome["seconds"], "machine": outcome["machine"],
    }


def plot(outcome: dict, path: Path) -> None:
    """p99 end-to-end against the offered rate, both consumers (median over the sweeps, bars: their range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    rates = np.array(outcome["rates"])
    for i, (mode, colour) in enumerate(((PASS, "tab:grey"), (SCORER, "tab:blue"))):
        p99 = np.array([[points[k][i].percentile(99) for points in outcome["curve"]] for k in range(len(rates))])
        median = np.median(p99, axis=1)
        axes.errorbar(rates, median, yerr=[median - p99.min(axis=1), p99.max(axis=1) - median], marker="o",
                      capsize=3, color=colour, label=mode)
    axes.axhline(SLO_MS, color="tab:red", linestyle="--", linewidth=1, label=f"SLO: p99 < {SLO_MS:.0f} ms")
    axes.set_yscale("log")
    axes.set_xlabel("offered load (transactions a second)")
    axes.set_ylabel("p99 end-to-end (ms)")
    axes.set_title(f"Latency against offered load ({len(outcome['curve'])} sweeps, median and range)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def record(outcome: dict, path: Path, command: str) -> None:
    write_record(path, to_markdown(outcome, command, path.with_suffix(".png").name), to_json(outcome, command))
    plot(outcome, path.with_suffix(".png"))


def _range(values: Sequence[float], fmt: str = ",.0f") -> str:
    return f"{np.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def _span(bounds: Sequence[float], fmt: str) -> str:
    return f"{bounds[0]:{fmt}}–{bounds[1]:{fmt}}"


def _stage_rows(outcome: dict) -> list[str]:
    rows = ["| offered msg/s | pass-through p50 | scorer p50 | " + " | ".join(BATCH_STAGES) + " |",
            "|---|---|---|" + "---|" * len(BATCH_STAGES)]
    for k, rate in enumerate(outcome["rates"]):
        runs = [points[k] for points in outcome["curve"]]
        stages = _stage_ms([scorer_run for _, scorer_run in runs])
        if not stages:
            continue
        rows.append(f"| {rate:,.0f} | {np.median([p.percentile(50) for p, _ in runs]):.1f} | "
                    f"{np.median([s.percentile(50) for _, s in runs]):.1f} | "
                    + " | ".join(f"{stages[stage]:.1f}" for stage in BATCH_STAGES) + " |")
    return rows


def _stage_ms(runs: Sequence[Run]) -> dict[str, float]:
    """Per stage, the median over the runs of its mean ms a batch."""
    per_run = [run.stage_ms() for run in runs if run.stage_ms()]
    return {stage: float(np.median([r[stage] for r in per_run])) for stage in BATCH_STAGES} if per_run else {}


def _generator_cpu(outcome: dict) -> float:
    return float(np.median([r.cpu_us["generator"] for points in outcome["curve"] for pair in points for r in pair]))


def to_markdown(outcome: dict, command: str, picture: str | None = None) -> str:
    """`picture`: the plot's file name, beside the Markdown."""
    backlog, policy, s = outcome["backlog"], outcome["policy"], summary(outcome)
    stages = _stages(backlog[SCORER])
    reps = len(backlog[PASS])
    rows = ["| consumer | messages a run | throughput, msg/s: median (range) | CPU µs a message: broker / Kafka "
            "process / worker (medians) |", "|---|---|---|---|"]
    for mode, runs in backlog.items():
        cpu = _cpu(runs)
        rows.append(f"| {mode} | {runs[0].messages:,} | {_range([r.throughput for r in runs])} | "
                    + " / ".join(f"{cpu[k]:.0f}" if k in cpu else "–" for k in ("broker", "kafka", "worker")) + " |")
    curve_rows = ["| offered msg/s (of the pass-through's backlog) | seconds counted | pass-through p50 / p99 ms | "
                  "scorer p50 / p99 ms | scorer p99 range ms |", "|---|---|---|---|---|"]
    for k, (f, rate) in enumerate(zip(outcome["fractions"], outcome["rates"], strict=True)):
        cells = []
        for i in (0, 1):
            runs = [points[k][i] for points in outcome["curve"]]
            cells.append(f"{np.median([r.percentile(50) for r in runs]):.1f} / "
                         f"{np.median([r.percentile(99) for r in runs]):.1f}")
        scorer_p99 = [points[k][1].percentile(99) for points in outcome["curve"]]
        counted = np.median([run.counted_seconds for points in outcome["curve"] for run in points[k]])
        curve_rows.append(f"| {rate:,.0f} ({f:.0%}) | {counted:.1f} | {cells[0]} | {cells[1]} | "
                          f"{min(scorer_p99):.1f}–{max(scorer_p99):.1f} |")
    r = s["ranges"]
    added = s["added_p99_ms_at_half_slo_rate"]
    half = (f"- the scorer's added p99 at half its SLO rate ({outcome['half_rate']:,.0f} msg/s, {reps} interleaved "
            f"pairs): **{added:+.1f} ms** (range {r['added_p99_ms_at_half_slo_rate'][0]:+.1f} to "
            f"{r['added_p99_ms_at_half_slo_rate'][1]:+.1f}; target ≤ 20 ms)" if added is not None
            else "- the scorer's added p99 at half its SLO rate: not measured (the scorer met the SLO at no rate)")
    return "\n".join([
        "# Streaming throughput and latency (real broker, interleaved repetitions)",
        "",
        f"Command: `{command}` ({outcome['seconds']:.0f} s in all; {outcome['machine']}; development broker on "
        f"loopback, 3 partitions, batches of {BATCH}). Every figure is the median over the repetitions, with the "
        "range; ratios are taken within each repetition.",
        "",
        f"## Backlog throughput ({reps} interleaved repetitions)",
        "",
        *rows,
        "",
        f"- scorer / pass-through: **{s['throughput_ratio_median']:.0%}** (range "
        f"{_span(s['throughput_ratio_range'], '.0%')}; target ≥ 70 %)",
        f"- scorer / naive: **{s['naive_ratio_median']:.0f}×** (range {_span(r['naive_ratio'], '.0f')}; target "
        "≥ 10×)",
        f"- the worker's CPU: **{s['worker_cpu_us_per_message']:.0f} µs a message** (range "
        f"{_span(r['worker_cpu_us_per_message'], '.0f')}; target ≤ 30), by stage (medians; the scoring thread's "
        "CPU, read from the scorer's `fraud_worker_stage_cpu_seconds`; the rest is the pipe, batch handling and "
        "the worker's other threads):",
        "",
        "| " + " | ".join(stages) + " |",
        "|" + "---|" * len(stages),
        "| " + " | ".join(f"{v:.1f}" for v in stages.values()) + " |",
        "",
        f"## Latency against offered load ({len(outcome['curve'])} sweeps, pass-through and scorer interleaved at "
        "each rate)",
        "",
        f"Offered rates are fractions of the pass-through's median backlog throughput ({outcome['base']:,.0f} "
        f"msg/s); each point is {outcome['point_seconds']:.0f} s of paced input after {WARMUP_SECONDS:.0f} s of "
        "warm-up (not counted), or less where the stream runs out at the highest rates (the seconds counted are in "
        "the table). p50 and p99 are medians over the "
        "sweeps. The load generator spent a median "
        f"{_generator_cpu(outcome):.0f} µs of CPU a message (its own process).",
        "",
        *curve_rows,
        "",
        f"![p99 against offered load]({picture})" if picture else "",
        "",
        "Where the scorer's latency goes: for each batch, its oldest transaction's milliseconds in each stage "
        "(`fraud_batch_stage_seconds`; means over the batches after warm-up, medians over the sweeps): *fetched* "
        "(broker and fetch, to the poll), *to worker* (queued behind earlier batches, the pipe), *scoring*, *from "
        "worker* (the pipe back, the acking thread), *acked* (produce and acks); beside the p50s.",
        "",
        *_stage_rows(outcome),
        "",
        f"- SLO rate (p99 < {SLO_MS:.0f} ms): pass-through **{s['slo_rate_passthrough']:,.0f} msg/s** (range "
        f"{_span(r['slo_rate_passthrough'], ',.0f')}), scorer **{s['slo_rate_scorer']:,.0f} msg/s** (range "
        f"{_span(r['slo_rate_scorer'], ',.0f')})",
        f"- their ratio: **{s['slo_rate_ratio']:.2f}** (range {_span(r['slo_rate_ratio'], '.2f')} over the sweeps; "
        "target ≥ 0.6)" if s["slo_rate_ratio"] is not None
        else "- their ratio: undefined (the pass-through met the SLO at no rate in any sweep)",
        half,
        "",
        "## The decision rules",
        "",
        f"The {policy['rules']} rules of `examples/rules.toml` (version {policy['rules_version']}) over the "
        f"thresholds alone: **+{policy['added_us_median']:.2f} µs a transaction** (median of "
        f"{policy['repetitions']} interleaved passes over {policy['transactions']:,} transactions in batches of "
        f"{BATCH}; range {policy['added_us_range'][0]:.2f} to {policy['added_us_range'][1]:.2f}; the thresholds "
        f"alone: {policy['thresholds_alone_us']:.2f} µs).",
        "",
        "## What the scorer's figures include",
        "",
        "Validation (msgspec; JSON Schema for what it refuses), the online features on a warm state (rebuilt from the"
        " store), one prediction per batch by the model compiled with lleaves, exact contributions (LightGBM) for the"
        " transactions not approved, the SQLite write of each decision with its feature values, producing with "
        "acks=all and committing after the acks. Scoring runs in the scorer's worker process while its Kafka process "
        "polls, and a thread of the latter produces and waits for the acks. The pass-through commits as the scorer "
        "does (asynchronously, at most every `commit_interval_ms`), with the interpreter's default GIL switch "
        "interval on a backlog and the scorer's (0.5 ms) when paced: its best on each. The naive consumer runs at the"
        " default too. The CPU column is each process's user + system time over the run divided by its messages. The "
        "broker, the consumer under test and the paced load generator share the machine's cores.",
        "",
    ])
