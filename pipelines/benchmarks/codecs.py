"""The codec of what the scorer produces: bytes a decision on the decisions topic, and the producer's CPU a decision,
for each codec Kafka defines; the default (`producer_codec`, streaming/config.py) is chosen from this record.

The decisions are the ones a real scorer made (a backlog through the development broker, as the streaming benchmark
runs it); each codec then produces them again through the scorer's own producer settings (`new_producer`), with
its partitions, in groups as the scorer flushes them: a polled batch of 500 on a backlog, a few at a time live.
Codecs are interleaved within each repetition; the bytes are the record batches the broker stores, read back raw.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import platform
import shutil
import time
from collections.abc import Sequence

import numpy as np
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.benchmarks.streaming import SCORER, Bench, prepare
from fraudloop.streaming.broker import create_topics, start_broker
from fraudloop.streaming.config import CODECS, ScorerConfig
from fraudloop.streaming.service import new_producer
from fraudloop.streaming.unreadable import raw_batches
from kafka import KafkaConsumer, TopicPartition

GROUPS = {"backlog": 500, "live": 5}  # decisions flushed together: a polled batch on a backlog; a few, paced
CPU_BUDGET = 0.05  # a codec may add this share of the scoring worker's CPU a message (measured in the same run)


def decisions_made(bench: Bench, n: int) -> tuple[list[tuple[int, bytes | None, bytes]], float]:
    """(partition, key, value) of the decisions a real scorer made for the first `n` transactions, and its scoring
    worker's CPU µs a transaction meanwhile."""
    worker_us = bench.backlog(SCORER, n).cpu_us["worker"]
    topic = f"{SCORER}-{bench.runs}-out"
    consumer = KafkaConsumer(bootstrap_servers=[bench.boot], enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    made: list[tuple[int, bytes | None, bytes]] = []
    deadline = time.monotonic() + 60
    try:
        while len(made) < n and time.monotonic() < deadline:
            made += [(r.partition, r.key, r.value) for rs in consumer.poll(timeout_ms=200).values() for r in rs]
    finally:
        consumer.close()
    if len(made) < n:
        raise RuntimeError(f"the scorer made {len(made)} decisions of {n}")
    return made, worker_us


def stored_bytes(bootstrap: str, topic: str) -> int:
    """Bytes of the record batches the broker stores for `topic` (every partition, read raw from offset 0)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    total = 0
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            offset = 0
            while offset < ends[tp]:
                batches = raw_batches(consumer, tp, offset)
                if not batches:
                    break
                total += sum(len(b.data) for b in batches)
                offset = batches[-1].next_offset
    finally:
        consumer.close()
    return total


def produce(bootstrap: str, topic: str, codec: str, decisions: Sequence[tuple[int, bytes | None, bytes]],
            group: int) -> float:
    """Produce the decisions with the scorer's producer and `codec`, flushed every `group`: CPU µs a message of this
    process (kafka-python sends from a thread of its own, counted too)."""
    producer = new_producer(ScorerConfig(bootstrap_servers=bootstrap, producer_codec=codec))
    try:
        producer.partitions_for(topic)  # metadata fetched before the clock starts
        cpu = time.process_time()
        for start in range(0, len(decisions), group):
            for partition, key, value in decisions[start:start + group]:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush()
        return (time.process_time() - cpu) / len(decisions) * 1e6
    finally:
        producer.close()


def choose(bytes_per_message: dict[str, float], cpu_us: dict[str, float], worker_us: float) -> str:
    """The codec with the fewest bytes a decision among those adding at most CPU_BUDGET of the worker's CPU a
    message over no compression; `none` if no codec does. CPU is compared on the backlog, where the producer's cost
    bounds throughput (live, a flush every few messages costs far more than any codec, and the codecs' CPU is lost
    in its noise); bytes live, where a scorer spends most of its time."""
    allowed = [c for c in CODECS if cpu_us[c] - cpu_us["none"] <= CPU_BUDGET * worker_us]
    return min(allowed, key=lambda c: bytes_per_message[c]) if allowed else "none"


def run(n: int = 20_000, repetitions: int = 5) -> dict:
    started = time.perf_counter()
    setup = prepare(n)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, setup.work, ignore_errors=True)
        broker = cleanup.enter_context(start_broker())
        bench = Bench(setup.work, broker.bootstrap, broker.process.pid, setup.registry, setup.warm_store,
                      setup.messages)
        decisions, worker_us = decisions_made(bench, n)
        cpu: dict[str, dict[str, list[float]]] = {regime: {c: [] for c in CODECS} for regime in GROUPS}
        size: dict[str, dict[str, list[float]]] = {regime: {c: [] for c in CODECS} for regime in GROUPS}
        for rep in range(repetitions):
            for regime, group in GROUPS.items():
                for codec in CODECS[rep % len(CODECS):] + CODECS[:rep % len(CODECS)]:  # a new order each time
                    topic = f"codec-{codec}-{regime}-{rep}"
                    create_topics(broker.bootstrap, [topic], partitions=3)
                    cpu[regime][codec].append(produce(broker.bootstrap, topic, codec, decisions, group))
                    size[regime][codec].append(stored_bytes(broker.bootstrap, topic) / len(decisions))
            print(f"repetition {rep + 1}/{repetitions}: " + ", ".join(
                f"{c} {cpu['backlog'][c][-1]:.1f} µs {size['backlog'][c][-1]:.0f} B" for c in CODECS), flush=True)
    regimes = {regime: {"cpu_us": {c: _spread(cpu[regime][c]) for c in CODECS},
                        "bytes": {c: float(np.median(size[regime][c])) for c in CODECS}} for regime in GROUPS}
    chosen = choose(regimes["live"]["bytes"], {c: regimes["backlog"]["cpu_us"][c]["median"] for c in CODECS},
                    worker_us)
    return {"regimes": regimes, "chosen": chosen, "n": n, "repetitions": repetitions, "worker_us": worker_us,
            "value_bytes": float(np.mean([len(v) for _, _, v in decisions])),
            "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"}


def to_json(outcome: dict, command: str) -> dict:
    regimes = outcome["regimes"]
    return {"command": command, "chosen": outcome["chosen"], "n": outcome["n"],
            "repetitions": outcome["repetitions"], "seconds": round(outcome["seconds"]),
            "decisions_bytes_per_message": {c: round(regimes["live"]["bytes"][c], 1) for c in CODECS},
            "producer_cpu_us_per_message": {c: regimes["live"]["cpu_us"][c] for c in CODECS},
            "backlog": {"decisions_bytes_per_message": {c: round(regimes["backlog"]["bytes"][c], 1) for c in CODECS},
                        "producer_cpu_us_per_message": regimes["backlog"]["cpu_us"]},
            "value_bytes": round(outcome["value_bytes"], 1), "worker_us": outcome["worker_us"],
            "cpu_budget_share": CPU_BUDGET, "machine": outcome["machine"]}


def to_markdown(outcome: dict, command: str) -> str:
    regimes, n = outcome["regimes"], outcome["n"]
    lines = [
        "# Codecs: what the scorer's producer writes", "",
        f"Command: `{command}` ({outcome['seconds']:.0f} s; {outcome['machine']}). {n:,} decisions made by the real "
        f"scorer (a JSON value of {outcome['value_bytes']:.0f} bytes on average) produced again by its producer "
        f"(`new_producer`: acks=all, linger 2 ms) with each codec, through the development broker; "
        f"{outcome['repetitions']} repetitions, codecs interleaved in a new order each time. CPU: this process's "
        "(kafka-python's sender thread included) per decision, median and range; bytes: the record batches the "
        "broker stores, per decision (median).", "",
        "| codec | live: bytes a decision | live: producer CPU µs | backlog: bytes a decision | backlog: producer "
        "CPU µs |", "|---|---|---|---|---|"]
    for c in CODECS:
        live, back = regimes["live"], regimes["backlog"]
        lines.append(f"| {c} | {live['bytes'][c]:.0f} | {_range(live['cpu_us'][c])} | {back['bytes'][c]:.0f} | "
                     f"{_range(back['cpu_us'][c])} |")
    lines += ["", f"Live: flushed {GROUPS['live']} at a time (a paced scorer's batches); backlog: "
              f"{GROUPS['backlog']} (a polled batch). The default, `producer_codec = \"{outcome['chosen']}\"`, is the "
              f"codec with the fewest bytes live among those whose producer CPU on the backlog is at most "
              f"{CPU_BUDGET:.0%} of the scoring worker's CPU a message ({outcome['worker_us']:.0f} µs, measured on the "
              "backlog that made the decisions) above no compression's.", ""]
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def _range(cell: dict) -> str:
    return f"{cell['median']:.1f} ({cell['min']:.1f}–{cell['max']:.1f})"


def record(outcome: dict, path, command: str) -> None:
    write_record(path, to_markdown(outcome, command), to_json(outcome, command))
