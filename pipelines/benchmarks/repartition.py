"""What the repartition step costs (streaming/repartition.py): CPU a message and messages a second of the loop that
re-keys an unkeyed topic by card, beside a copy loop that moves the same messages unchanged (the same consumer,
producer and commits: what any consume-produce hop costs on this machine), interleaved, on a backlog through the
development broker. The scorer's own cost a transaction is in benchmarks/streaming.md.
"""

from __future__ import annotations

import multiprocessing
import platform
import time
from collections.abc import Sequence

import numpy as np
import orjson
from fraudloop.models.features import transactions_of
from fraudloop.models.schema import transaction_record
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.data.simulate import SimulationConfig, simulate
from fraudloop.streaming.broker import create_topics, start_broker
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.repartition import Repartitioner
from kafka import KafkaProducer

MODES = ("repartition", "copy")


class _Copy(Repartitioner):
    """The same loop with the messages left as they are: the baseline."""

    @staticmethod
    def rekey(records: list) -> list:
        return [(r.key, r.value, list(r.headers or []), r.timestamp) for r in records]


def _backlog(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=5, batch_size=256 * 1024)
    for value in values:
        producer.send(topic, value=value)  # no key: the producer spreads them over the partitions
    producer.flush()
    producer.close()


def _drain(mode: str, bootstrap: str, tag: str, values: Sequence[bytes]) -> tuple[float, float]:
    """Move a backlog of `values` with `mode`'s loop: (CPU µs a message of this process, messages a second)."""
    config = ScorerConfig(bootstrap_servers=bootstrap, repartition_from=f"{tag}-in", transactions_topic=f"{tag}-out",
                          group_id=tag)
    loop = (Repartitioner if mode == "repartition" else _Copy)(config)
    n = len(values)
    try:
        deadline = time.monotonic() + 60
        while not loop.consumer.assignment() and time.monotonic() < deadline:  # joined before the backlog comes
            loop.consumer.poll(timeout_ms=100)
        _backlog(bootstrap, f"{tag}-in", values)
        cpu, wall = time.process_time(), time.perf_counter()
        deadline = time.monotonic() + 300
        while loop.moved < n and time.monotonic() < deadline:
            loop.step()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        loop.close()
    if loop.moved < n:
        raise RuntimeError(f"{mode}: {loop.moved} of {n} messages moved")
    return cpu / n * 1e6, n / wall


def run(n: int = 30_000, repetitions: int = 5) -> dict:
    started = time.perf_counter()
    history = simulate(SimulationConfig(customers=2_000, terminals=4_000, days=20, seed=0), progress=False)
    values = [orjson.dumps(transaction_record(tx)) for tx in transactions_of(history.iloc[:n])]
    n = len(values)
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    rate: dict[str, list[float]] = {mode: [] for mode in MODES}
    with start_broker() as broker:
        for rep in range(repetitions):
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                tag = f"{mode}-{rep}"
                create_topics(broker.bootstrap, [f"{tag}-in", f"{tag}-out"], partitions=3)
                us, per_second = _drain(mode, broker.bootstrap, tag, values)
                cpu[mode].append(us)
                rate[mode].append(per_second)
            print(f"repetition {rep + 1}/{repetitions}: " + ", ".join(
                f"{mode} {cpu[mode][-1]:.1f} µs, {rate[mode][-1]:,.0f} msg/s" for mode in MODES), flush=True)
    added = [r - c for r, c in zip(cpu["repartition"], cpu["copy"], strict=True)]
    return {"n": n, "repetitions": repetitions, "cpu_us": {m: _spread(cpu[m]) for m in MODES},
            "msg_per_second": {m: _spread(rate[m]) for m in MODES}, "added_cpu_us": _spread(added),
            "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def _cell(spread: dict, digits: int = 1) -> str:
    return f"{spread['median']:,.{digits}f} ({spread['min']:,.{digits}f}–{spread['max']:,.{digits}f})"


def to_json(outcome: dict, command: str) -> dict:
    return {"command": command, "n": outcome["n"], "repetitions": outcome["repetitions"],
            "repartition_cpu_us_per_message": outcome["cpu_us"]["repartition"],
            "copy_cpu_us_per_message": outcome["cpu_us"]["copy"],
            "added_cpu_us_per_message": outcome["added_cpu_us"],
            "repartition_msg_per_second": outcome["msg_per_second"]["repartition"],
            "copy_msg_per_second": outcome["msg_per_second"]["copy"],
            "seconds": round(outcome["seconds"]), "machine": outcome["machine"]}


def to_markdown(outcome: dict, command: str) -> str:
    return "\n".join([
        "# The repartition step's cost", "",
        f"Command: `{command}` ({outcome['seconds']:.0f} s; {outcome['machine']}). A backlog of {outcome['n']:,} "
        "simulated transactions produced with no key (spread over 3 partitions) is re-keyed by card into another "
        "topic by the repartition loop (`fraudloop repartition`), and, interleaved, moved unchanged by the same "
        f"loop without re-keying (the copy: the cost of any consume-produce hop); {outcome['repetitions']} "
        "repetitions, median and range. CPU: this process's, kafka-python's threads included.", "",
        "| loop | CPU µs a message | messages a second |", "|---|---|---|",
        f"| repartition (decode the card id and time, order the poll, key by card) | "
        f"{_cell(outcome['cpu_us']['repartition'])} | {_cell(outcome['msg_per_second']['repartition'], 0)} |",
        f"| copy (the same loop, messages unchanged) | {_cell(outcome['cpu_us']['copy'])} | "
        f"{_cell(outcome['msg_per_second']['copy'], 0)} |", "",
        f"Re-keying adds {_cell(outcome['added_cpu_us'])} µs a message over the copy. The hop itself (consume, "
        "produce with acks=all, commit) is what a repartition costs: a producer that keys by card needs none of it.",
        ""])


def record(outcome: dict, path, command: str) -> None:
    write_record(path, to_markdown(outcome, command), to_json(outcome, command))

