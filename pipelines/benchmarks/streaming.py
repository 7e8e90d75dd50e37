"""Streaming benchmark through the real broker, three consumers of the same transactions in one run:

1. pass-through: consume, decode, add a field, encode, produce, commit per poll; the kafka-python ceiling;
2. our scorer: the real ScorerService batch path (validation, features, LightGBM, the decision rules of
   examples/rules.toml, reasons, store, produce, commit after acks);
3. naive: what a user writes first; one message at a time, features, an MLflow pyfunc `predict` on a
   one-row DataFrame, a produce per message, auto-commit.

Throughput is measured on a backlog (first record polled to last output acknowledged); end-to-end latency
(a transaction's broker timestamp to its decision acknowledged) with input paced at half the scorer's
maximum throughput by a separate producer process. The decision rules' own cost per transaction is measured
apart, in interleaved repetitions against the model's thresholds alone, on the stream's features and scores.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
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
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining.train import BuildConfig, build_model
from fraudloop.streaming import compiled
from fraudloop.streaming.broker import create_topics, start_broker
from fraudloop.streaming.config import CONSUMER_DEFAULTS, ScorerConfig
from fraudloop.streaming.rules import NO_RULES, RuleSet, parse
from fraudloop.streaming.service import ScorerService
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"


@dataclass
class ModeResult:
    name: str
    messages: int
    seconds: float
    latencies_ms: np.ndarray
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU microseconds a message, by process

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


class CpuMeter:
    """CPU seconds spent by named processes from its creation to `per_message`: where a run's cores went."""

    def __init__(self, **pids: int) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.started = self._now()

    def _now(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.processes.items()}

    def per_message(self, messages: int) -> dict[str, float]:
        return {name: (spent - self.started[name]) / messages * 1e6 for name, spent in self._now().items()}


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: float | None = None) -> None:
    # The load generator must not pause: a full GC over what this process imported stalls sending ~150 ms,
    # and the paced messages, stamped at send(), would show that as the consumer's latency.
    gc.collect()
    gc.freeze()
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2, batch_size=256 * 1024)
    producer.partitions_for(topic)  # metadata before the clock starts, or the first sends go out as a burst
    started = time.monotonic()
    for i, (key, value) in enumerate(messages):
        if rate:
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


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


def _offsets(records) -> dict:
    last: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset + 1)
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in last.items()}


def pass_through(bootstrap: str, topic: str, out: str, n: int, batch: int,
                 name: str = "pass-through (no features, no model)", start=None) -> ModeResult:
    """Consume, touch, produce, commit: kafka-python's ceiling here. `start`: called once the group is joined."""
    consumer = _consumer(bootstrap, topic, f"{topic}-pass")
    if start:
        _join(consumer)
        start()
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2, batch_size=256 * 1024)
    latencies, done, first = [], 0, None
    while done < n:
        polled = consumer.poll(timeout_ms=100, max_records=batch)
        records = [r for rs in polled.values() for r in rs]
        if not records:
            continue
        first = first or time.perf_counter()
        for r in records:
            message = orjson.loads(r.value)
            message["passed"] = True
            producer.send(out, key=r.key, value=orjson.dumps(message))
        producer.flush()
        consumer.commit(_offsets(records))
        now_ms = time.time() * 1000
        latencies.extend(now_ms - r.timestamp for r in records)
        done += len(records)
    seconds = time.perf_counter() - first
    consumer.close()
    producer.close()
    return ModeResult(name, done, seconds, np.array(latencies))


def scorer(service: ScorerService, n: int, name: str = "our scorer", patience: float = 60.0) -> ModeResult:
    """The real loop of ScorerService.run(), timed: from the first record polled to the last batch committed."""
    latencies, done, first = [], 0, None
    last_progress = time.monotonic()
    while done < n:
        finished = service.step()
        if not finished:
            if time.monotonic() - last_progress > patience:
                raise TimeoutError(f"{name}: {done} of {n} messages after {patience:.0f} s without progress")
            continue
        last_progress = time.monotonic()
        for batch in finished:
            first = batch.polled_at if first is None else min(first, batch.polled_at)
            latencies.extend(batch.acked_ms - r.timestamp for r in batch.records)
            done += len(batch.records)
    return ModeResult(name, done, time.perf_counter() - first, np.array(latencies))


def naive(bootstrap: str, topic: str, out: str, n: int, model_uri: str, state: FeatureState) -> ModeResult:
    model = mlflow.pyfunc.load_model(model_uri)
    consumer = _consumer(bootstrap, topic, f"{topic}-naive", enable_auto_commit=True)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    latencies, done, first = [], 0, None
    for record in consumer:
        first = first or time.perf_counter()
        tx = parse_transaction(orjson.loads(record.value))
        row = pd.DataFrame([state.transform(tx)], columns=list(FEATURE_NAMES))
        score = float(model.predict(row)[0])
        producer.send(out, value=orjson.dumps({"transaction_id": tx.transaction_id, "score": score}))
        latencies.append(time.time() * 1000 - record.timestamp)
        done += 1
        if done >= n:
            break
    producer.flush()
    seconds = time.perf_counter() - first
    consumer.close()
    producer.close()
    return ModeResult("naive (per message, pyfunc predict)", done, seconds, np.array(latencies))


def policy_cost(features: np.ndarray, scores: np.ndarray, cards: list[str], terminals: list[str], rules: RuleSet,
                batch: int = 500, repetitions: int = 7) -> dict:
    """µs a transaction the decision policy costs over the thresholds alone, batch by batch as the scorer runs it:
    `repetitions` interleaved passes of each over the same batches; the median and range of the difference."""
    batches = []
    for start in range(0, len(scores), batch):
        part = slice(start, start + batch)
        columns = {name: features[part, j] for j, name in enumerate(FEATURE_NAMES)}
        columns["score"] = scores[part]
        batches.append((columns, cards[part], terminals[part]))

    def seconds(policy: RuleSet) -> float:
        started = time.perf_counter()
        for columns, card_ids, terminal_ids in batches:
            policy.decide(columns, card_ids, terminal_ids, 0.3, 0.7)
        return time.perf_counter() - started

    added = []
    for _ in range(repetitions):
        alone, with_rules = seconds(NO_RULES), seconds(rules)
        added.append((with_rules - alone) / len(scores) * 1e6)
    return {"rules_version": rules.version, "rules": len(rules.rules), "transactions": len(scores),
            "repetitions": repetitions,
            "added_us_median": float(np.median(added)), "added_us_range": [float(min(added)), float(max(added))],
            "thresholds_alone_us": alone / len(scores) * 1e6}


def _say(text: str) -> None:
    print(f"[benchmark] {text}", flush=True)


def run(n: int = 30_000, naive_n: int = 3_000, latency_seconds: float = 20.0, seed: int = 0) -> dict:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fraudloop-bench-"))
    registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                              artifact_root=(work / "artifacts").as_uri())
    history = simulate(SimulationConfig(customers=2_000, terminals=4_000, days=56, seed=seed), progress=False)
    labels = labels_of(history)
    warm_end = len(history) - n - naive_n  # everything before the benchmarked stream warms the feature state
    built = build_model(history.iloc[:warm_end], labels[labels["known_at"] <= history["time"].iloc[warm_end - 1]],
                        registry, BuildConfig(train_days=21), progress=False)
    set_alias(registry, CHAMPION, built.model.version)

    past = history.iloc[:warm_end]
    known = labels[labels["known_at"] <= past["time"].max()]

    def warm_state() -> FeatureState:
        state = FeatureState()
        for _ in replay(state, transactions_of(past), labels_in_order(known)):
            pass
        return state

    # The scorer's worker rebuilds its feature state from the store, as after any restart: backfill it.
    warm_store = work / "warm.db"
    store = Store(f"sqlite:///{warm_store}")
    backfill(store, past, compute_features(past, known), known)
    store.close()

    def scorer_config(**settings) -> ScorerConfig:
        # Every run writes to topics of its own: the development broker slows down as a topic grows.
        name = settings["group_id"]
        shutil.copyfile(warm_store, work / f"{name}.db")
        config = ScorerConfig(bootstrap_servers=boot, labels_topic=f"{name}-labels",
                              decisions_topic=f"{name}-decisions", dead_letter_topic=f"{name}-dlq",
                              labels_dead_letter_topic=f"{name}-labels-dlq", store_url=f"sqlite:///{work / name}.db",
                              batch_size=500, rules_file=str(RULES), **settings)
        create_topics(boot, config.topics, partitions=3)
        return config

    compiling = compiled.start(built.booster)  # served compiled from the first batch, as after a restart
    while not compiling.done():
        time.sleep(0.1)
    compiling.result(built.booster)

    stream = history.iloc[warm_end:]
    messages = [(tx.card_id.encode(), orjson.dumps(transaction_record(tx))) for tx in transactions_of(stream)]
    streamed = compute_features(history.iloc[:warm_end + n], known, progress=False).to_numpy()[warm_end:]
    policy = policy_cost(streamed, built.booster.predict(streamed, num_threads=1), stream["card_id"].tolist()[:n],
                         stream["terminal_id"].tolist()[:n], parse(RULES.read_text(), str(RULES)))
    _say(f"decision rules: +{policy['added_us_median']:.2f} µs a transaction")
    results: dict[str, ModeResult] = {}
    with start_broker() as broker:
        boot = broker.bootstrap
        create_topics(boot, ["pass-in", "pass-out", "naive-in", "naive-out", "pass-paced-in", "pass-paced-out"],
                      partitions=3)
        _produce(boot, "pass-in", messages[:n])
        meter = CpuMeter(broker=broker.process.pid, kafka=os.getpid())
        results["pass"] = pass_through(boot, "pass-in", "pass-out", n, batch=500)
        results["pass"].cpu_us = meter.per_message(n)
        _say(f"pass-through: {results['pass'].throughput:,.0f} msg/s")

        service = ScorerService(scorer_config(transactions_topic="score-in", group_id="bench-scorer"), registry)
        _join(service.consumer)
        _produce(boot, "score-in", messages[:n])
        meter = CpuMeter(broker=broker.process.pid, kafka=os.getpid(), worker=service.worker.process.pid)
        results["scorer"] = scorer(service, n)
        results["scorer"].cpu_us = meter.per_message(n)
        service.close()
        _say(f"scorer: {results['scorer'].throughput:,.0f} msg/s")

        _produce(boot, "naive-in", messages[n:n + naive_n])
        results["naive"] = naive(boot, "naive-in", "naive-out", naive_n,
                                 f"models:/{registry.model_name}@{CHAMPION}", warm_state())
        _say(f"naive: {results['naive'].throughput:,.0f} msg/s")

        rate = results["scorer"].throughput / 2
        paced_n = min(int(rate * latency_seconds), n)
        paced = messages[:paced_n]
        # At half the maximum (the target), and at a quarter to show how latency falls with the load.
        for key, fraction in (("paced", 0.5), ("paced_quarter", 0.25)):
            topic, at = f"{key}-in", results["scorer"].throughput * fraction
            service = ScorerService(scorer_config(transactions_topic=topic, group_id=f"bench-{key}"), registry)
            _join(service.consumer)  # the group is joined and partitions assigned before the clock starts
            count = min(int(at * latency_seconds), n)
            producer = multiprocessing.get_context("spawn").Process(target=_produce,
                                                                    args=(boot, topic, messages[:count], at))
            meter = CpuMeter(broker=broker.process.pid, kafka=os.getpid(), worker=service.worker.process.pid)
            producer.start()
            try:
                results[key] = scorer(service, count, name=f"our scorer, paced at {at:,.0f} msg/s")
                results[key].cpu_us = meter.per_message(count)
            finally:
                producer.join(60)
            if producer.exitcode != 0:
                raise RuntimeError(f"the paced producer process failed (exit code {producer.exitcode})")
            service.close()

        # The floor: the same paced traffic through the pass-through (kafka-python and the broker alone).
        producer = multiprocessing.get_context("spawn").Process(target=_produce,
                                                                args=(boot, "pass-paced-in", paced, rate))
        meter = CpuMeter(broker=broker.process.pid, kafka=os.getpid())
        try:
            results["paced_pass"] = pass_through(boot, "pass-paced-in", "pass-paced-out", paced_n, 500,
                                                 name=f"pass-through, paced at {rate:,.0f} msg/s",
                                                 start=producer.start)
            results["paced_pass"].cpu_us = meter.per_message(paced_n)
        finally:
            producer.join(60)
    return {"results": results, "rate": rate, "policy": policy, "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"}


def to_json(outcome: dict, command: str) -> dict:
    """The figures as JSON under the keys of the streaming issue. This method runs each mode once and paces at
    fixed fractions of one backlog run: the ratios are single values (a range of one) and the SLO-rate keys,
    which need the latency-versus-load curve, are null until that method exists."""
    r = outcome["results"]
    ratio = r["scorer"].throughput / r["pass"].throughput
    return {
        "command": command, "repetitions": 1,
        "throughput_ratio_median": ratio, "throughput_ratio_range": [ratio, ratio],
        "slo_rate_passthrough": None, "slo_rate_scorer": None, "slo_rate_ratio": None,
        "added_p99_ms_at_half_slo_rate": None,
        "worker_cpu_us_per_message": r["scorer"].cpu_us.get("worker"),
        "naive_ratio_median": r["scorer"].throughput / r["naive"].throughput,
        "throughput_msg_per_s": {k: r[k].throughput for k in ("pass", "scorer", "naive")},
        "paced_rate_msg_per_s": outcome["rate"],
        "p99_ms_paced_half": {"scorer": r["paced"].percentile(99), "passthrough": r["paced_pass"].percentile(99)},
        "rules_us_per_tx": outcome["policy"],
        "seconds": outcome["seconds"], "machine": outcome["machine"],
    }


def record(outcome: dict, path: Path, command: str) -> None:
    write_record(path, to_markdown(outcome, command), to_json(outcome, command))


def to_markdown(outcome: dict, command: str) -> str:
    r, policy = outcome["results"], outcome["policy"]
    rows = [
        "| consumer | messages | throughput (msg/s) | p50 / p99 end-to-end (ms) | CPU µs a message: broker / Kafka "
        "process / worker |",
        "|---|---|---|---|---|",
    ]

    def cpu(m: ModeResult) -> str:
        return " / ".join(f"{m.cpu_us[k]:.0f}" if k in m.cpu_us else "–" for k in ("broker", "kafka", "worker"))

    for key in ("pass", "scorer", "naive"):
        m = r[key]
        rows.append(f"| {m.name} | {m.messages:,} | {m.throughput:,.0f} | backlog (queueing): not a latency | "
                    f"{cpu(m)} |")
    p, quarter, floor = r["paced"], r["paced_quarter"], r["paced_pass"]
    rows.append(f"| {p.name} (half its maximum) | {p.messages:,} | {p.throughput:,.0f} | **{p.percentile(50):.1f} / "
                f"{p.percentile(99):.1f}** | {cpu(p)} |")
    rows.append(f"| {floor.name} (the floor) | {floor.messages:,} | {floor.throughput:,.0f} | "
                f"{floor.percentile(50):.1f} / {floor.percentile(99):.1f} | {cpu(floor)} |")
    rows.append(f"| {quarter.name} (a quarter of its maximum) | {quarter.messages:,} | {quarter.throughput:,.0f} | "
                f"{quarter.percentile(50):.1f} / {quarter.percentile(99):.1f} | {cpu(quarter)} |")
    return "\n".join([
        "# Streaming throughput and latency (real broker, one run)",
        "",
        f"Command: `{command}` ({outcome['seconds']:.0f} s in all; {outcome['machine']}; development broker "
        "on loopback, 3 partitions, batches of 500).",
        "",
        *rows,
        "",
        f"- our scorer / pass-through: **{r['scorer'].throughput / r['pass'].throughput:.0%}** (target ≥ 70 %)",
        f"- our scorer / naive: **{r['scorer'].throughput / r['naive'].throughput:.1f}×** (target ≥ 10×)",
        f"- p99 end-to-end at half the scorer's maximum throughput: **{p.percentile(99):.1f} ms** (target < 50 ms); "
        f"the pass-through at the same rate: {floor.percentile(99):.1f} ms",
        f"- the decision rules ({policy['rules']} rules of `examples/rules.toml`, version {policy['rules_version']}) "
        f"over the thresholds alone: **+{policy['added_us_median']:.2f} µs a transaction** (median of "
        f"{policy['repetitions']} interleaved passes over {policy['transactions']:,} transactions in "
        f"batches of 500; range {policy['added_us_range'][0]:.2f} to {policy['added_us_range'][1]:.2f}; the "
        f"thresholds alone: {policy['thresholds_alone_us']:.2f} µs)",
        "",
        "The scorer's numbers include JSON Schema validation, the online features on a warm state (rebuilt "
        "from the store), one prediction per batch by the model compiled with lleaves, exact contributions "
        "(LightGBM) for the transactions not approved, the SQLite write of each decision with its feature "
        "values, producing with acks=all and committing after the acks. Scoring runs in the scorer's worker "
        "process while its Kafka process polls, and a thread of the latter produces and waits for the acks. "
        "Every paced run has its producer in a process of its own on the same 2 cores (its CPU is not in the "
        "table). The CPU column is each process's user + system time over the run divided by its messages: at "
        "a given rate, CPU µs a message × messages a second is the share of a core that process took.",
        "",
    ])
