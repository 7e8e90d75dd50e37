"""The scoring worker: a child process that owns the feature state, the served model and the store.

Why a process of its own: on a 2-core machine kafka-python's consume/produce path needs about a core, and
validation, features, model and store need about as much; in one CPython process they take turns on the
GIL. So the Kafka loop (service.py) hands each polled batch to this process and, while it is scored,
produces the previous batch's decisions and waits for their acks. A batch comes back with its decisions
already serialized; the Kafka side commits its offsets only after the decisions are acknowledged.

Protocol over two pipes, one reply per request: ("score", messages, kafka_cpu_seconds, partitions, lag,
partition_count) -> Scored, ("status", partitions, partition_count) -> Scored without decisions (model events while
idle; cards of partitions newly assigned read from the store), ("stop",). If the
Kafka side dies, the pipe closes and this process exits after the batch in hand.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import orjson
from fraudloop.models.registry import RegistryConfig
from fraudloop.models.store import Store
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.model import ModelHolder
from fraudloop.streaming.overload import FULL
from fraudloop.streaming.rebuild import rebuild_state
from fraudloop.streaming.rules_file import RulesFile
from fraudloop.streaming.scorer import Message, Scorer
from fraudloop.streaming.terminal_store import RedisTerminals

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """What the Kafka side needs of a scored batch: messages to produce and what the metrics count."""

    # (source partition, key, value), one per transaction
    decisions: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    # (topic, partition, offset, reason): the Kafka side holds the message itself, key and headers included
    dead_letters: list[tuple[str, int, int, str]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # decisions by outcome
    labels: int = 0
    unknown_labels: int = 0  # labels of transactions this scorer has not seen (yet)
    replayed: int = 0  # decisions given again to redelivered transactions
    not_keyed: int = 0  # transactions not keyed by their card (Scorer._not_keyed_by_card)
    not_keyed_example: str = ""
    model_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the worker's, for this batch
    stage_seconds: dict[str, float] = field(default_factory=dict)  # the scoring thread's CPU by stage (STAGES)
    model_events: list[tuple[str, str, str]] = field(default_factory=list)  # (event, version, detail)
    model_version: str = ""
    model_behind_seconds: float = 0.0  # how long the alias has named a version that is not served
    rule_hits: dict[str, int] = field(default_factory=dict)  # decisions by what decided them (a rule or `model`)
    rules_events: list[tuple[str, str, str]] = field(default_factory=list)  # (loaded | refused, version, detail)
    rules_version: str = ""
    # Shadow scoring since the last reply. It runs after a batch's reply, so it never delays that batch's
    # decisions; under a backlog the next batch waits for it (its CPU is metered for that reason), until the
    # scorer goes lean and sheds it.
    shadow_scored: int = 0
    shadow_shed: int = 0  # decisions not scored by the shadow: shed under load (streaming/overload.py)
    shadow_cpu_seconds: float = 0.0
    shadow_version: str = ""
    mode: str = FULL  # the service mode the batch was scored in (streaming/overload.py)
    state_cards: int = 0  # cards held in the feature state
    state_transactions: int = 0  # transactions it remembers (the cards' windows; ids for the labels' reach)
    rebuilt: int = 0  # stored transactions read for partitions taken over since the last reply
    rebuild_seconds: float = 0.0  # and the time that took
    state_bytes: int = 0  # the state's footprint (FeatureState.footprint), when measured with this batch
    shared_ops: int = 0  # commands sent to the shared terminal store for this batch
    shared_seconds: list[float] = field(default_factory=list)  # its round trips
    shared_failures: int = 0  # round trips given up on (scored without the shared aggregates)
    started: float = 0.0  # time.monotonic() (one clock for every process of the machine) as scoring began
    finished: float = 0.0  # and as it ended, before the reply was sent


class ScoringCore:
    """Validation, features, model, store and shared state for one batch at a time; no Kafka."""

    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        self.config = config
        self.rules = RulesFile(config.rules_file, config.rules_check_seconds)  # a bad file stops the start
        self.store = Store(config.store_url)
        self.events: deque[tuple[str, str, str]] = deque()  # appended by the model watcher's thread too
        self.model = ModelHolder.from_registry(registry, config.model_alias, config.model_check_seconds,
                                               on_event=self._model_event, compile_models=config.compile_models)
        self.shadow = None
        if config.shadow_alias and config.shadow_alias != config.model_alias:
            self.shadow = ModelHolder.from_registry(registry, config.shadow_alias, config.model_check_seconds,
                                                    optional=True, compile_models=False)
        self._pending: list = []  # the last batch's new decisions, for the shadow
        self._shadow_work = Scored()  # shadow scoring not reported yet
        # Several instances in one group share the terminal aggregates in Redis (see terminal_store.py); each
        # holds the cards of its own partitions.
        terminals = RedisTerminals.of(config) if config.shared_state_url else None
        self.scorer = Scorer(config, rebuild_state(self.store, config.event_time_policy(), terminals=terminals),
                             self.store)
        self._measured = -math.inf  # when the state's footprint was last measured
        # The state's long-lived objects are moved out of the cyclic GC's reach: a full collection walking
        # hundreds of thousands of them shows up as a latency spike.
        gc.collect()
        gc.freeze()
        self.governor = config.overload_governor()
        self._costs: dict[str, tuple[int, float]] = {}  # per model version, not yet in the store
        self._costs_written = time.monotonic()

    def _model_event(self, event: str, version: str) -> None:
        self.events.append((event, version, self.model.refused.get(version, "")))

    def status(self, partitions: tuple[int, ...] | None = None, partition_count: int = 0) -> Scored:
        """While idle: nothing waits and nothing is behind. A partition assigned meanwhile gets its cards' history
        now, not on its first batch's time."""
        if partitions is not None:
            self.scorer.follow(set(partitions), partition_count)
        self.model.refresh()
        self.rules.refresh()
        scored = self._report()
        scored.mode = self._observe(0.0, 0)
        self._measure(scored, footprint=True)
        return scored

    def _observe(self, waited_ms: float, lag: int) -> str:
        before = self.governor.mode
        mode = self.governor.observe(waited_ms, lag, time.monotonic())
        if mode != before:
            log.log(logging.INFO if mode == FULL else logging.WARNING, "service mode %s (was %s): the oldest "
                    "transaction waited %.0f ms, %d transactions behind", mode, before, waited_ms, lag)
        return mode

    def _report(self) -> Scored:
        """Model events since the last reply, and the version in use."""
        events = [self.events.popleft() for _ in range(len(self.events))]
        version = self.model.current.version if self.model.current else ""
        shadow, self._shadow_work = self._shadow_work, Scored()
        return Scored(model_events=events, model_version=version, rules_events=self.rules.take_events(),
                      rules_version=self.rules.current.version,
                      model_behind_seconds=self.model.behind_alias(self.config.model_grace_seconds),
                      shadow_scored=shadow.shadow_scored, shadow_shed=shadow.shadow_shed,
                      shadow_cpu_seconds=shadow.shadow_cpu_seconds,
                      shadow_version=shadow.shadow_version)

    def score_shadow(self) -> None:
        """The last batch's new decisions scored again by the shadow model, on the very features the champion
        used, and stored under its version; never produced. A shadow that fails costs a log line, nothing more."""
        rows, self._pending = self._pending, []
        if self.shadow is None or not rows:
            return
        if self.governor.mode != FULL:  # shed under load: the live gate then sees fewer rows of peak periods
            self._shadow_work.shadow_shed += len(rows)
            return
        self.shadow.refresh()
        model = self.shadow.current
        if model is None or model.version == rows[0].model_version:  # no challenger, or it serves already
            return
        cpu = time.process_time()
        try:
            scores = model.predict(np.array([row.features for row in rows], dtype=float))
            self.store.write_shadow(model.version, [(row.tx.transaction_id, float(score), row.tx.time)
                                                    for row, score in zip(rows, scores, strict=True)
                                                    if 0 <= score <= 1])
            self._shadow_work.shadow_scored += len(rows)
            self._shadow_work.shadow_version = model.version
        except Exception as error:  # noqa: BLE001 - the shadow never touches serving
            log.warning("shadow version %s could not score a batch of %d: %r", model.version, len(rows), error)
        finally:
            self._shadow_work.shadow_cpu_seconds += time.process_time() - cpu

    def score(self, batch: list[tuple], kafka_cpu_seconds: float, partitions: tuple[int, ...] | None = None,
              lag: int = 0, partition_count: int = 0) -> Scored:
        """`lag`: transactions behind the end of the partitions this batch was read from, when it was polled."""
        started, cpu = time.monotonic(), time.process_time()
        self.model.refresh()  # between batches: a swap never splits one
        model = self.model.current
        rules = self.rules.refresh()  # so is a new rules version
        messages = [Message(*fields) for fields in batch]
        mode = self._observe(_waited_ms(messages, self.config.transactions_topic), lag)
        result = self.scorer.process(messages, model, costs=self._take_costs(), partitions=partitions,
                                     partition_count=partition_count, rules=rules, mode=mode)
        self._pending = result.rows
        scored = self._report()  # the model was refreshed before this batch
        self._measure(scored)
        scored.mode = mode
        scored.decisions = [(source.partition, d["card_id"].encode(), orjson.dumps(d))
                            for source, d in zip(result.sources, result.decisions, strict=True)]
        self.scorer.clock.lap("serialize")
        scored.stage_seconds = self.scorer.clock.take()
        scored.dead_letters = [(d.message.topic, d.message.partition, d.message.offset, d.reason)
                               for d in result.dead_letters]
        scored.labels = len(result.labels)
        scored.unknown_labels = result.unknown_labels
        scored.replayed = result.replayed
        scored.not_keyed, scored.not_keyed_example = result.not_keyed, result.not_keyed_example
        scored.model_seconds = result.model_seconds
        if result.rules_error:
            scored.rules_events.append(("error", rules.version, result.rules_error))
        for decision in result.decisions:
            scored.outcomes[decision["decision"]] = scored.outcomes.get(decision["decision"], 0) + 1
            scored.rule_hits[decision["rule"]] = scored.rule_hits.get(decision["rule"], 0) + 1
        scored.cpu_seconds = time.process_time() - cpu
        count, seconds = self._costs.get(model.version, (0, 0.0))
        self._costs[model.version] = (count + len(result.decisions), seconds + kafka_cpu_seconds + scored.cpu_seconds)
        scored.started, scored.finished = started, time.monotonic()
        return scored

    def _measure(self, scored: Scored, footprint: bool = False) -> None:
        """The state's size and the shared store's traffic, for the metrics. The footprint walks the whole state
        (tens of milliseconds per 100k transactions held), so it is measured while idle, at most every
        `state_footprint_seconds`: never on a batch's time."""
        state = self.scorer.state
        scored.state_cards, scored.state_transactions = len(state.cards), len(state.seen)
        scored.rebuilt, scored.rebuild_seconds = self.scorer.rebuilt, self.scorer.rebuild_seconds
        self.scorer.rebuilt, self.scorer.rebuild_seconds = 0, 0.0
        if footprint and time.monotonic() - self._measured >= self.config.state_footprint_seconds:
            self._measured = time.monotonic()
            scored.state_bytes = state.footprint()
        terminals = state.terminals
        if isinstance(terminals, RedisTerminals):
            scored.shared_ops, terminals.ops = terminals.ops, 0
            scored.shared_failures, terminals.failures = terminals.failures, 0
            scored.shared_seconds = terminals.take_round_trips()

    def _take_costs(self, every_seconds: float = 10.0) -> dict[str, tuple[int, float]] | None:
        """Serving cost per model version, written with a batch every few seconds (no extra round trip)."""
        if not self._costs or time.monotonic() - self._costs_written < every_seconds:
            return None
        taken, self._costs, self._costs_written = self._costs, {}, time.monotonic()
        return taken

    def close(self) -> None:
        self.model.close()
        if self.shadow:
            self.shadow.close()
        self.store.write([], [], self._take_costs(every_seconds=0))
        self.store.close()
        if isinstance(self.scorer.state.terminals, RedisTerminals):
            self.scorer.state.terminals.close()


def _waited_ms(messages: list[Message], transactions_topic: str) -> float:
    """How long the oldest transaction of the batch has waited, by its Kafka timestamp (none: 0)."""
    stamps = [m.timestamp_ms for m in messages if m.topic == transactions_topic and m.timestamp_ms > 0]
    return max(time.time() * 1000 - min(stamps), 0.0) if stamps else 0.0


def _serve(connection: _Duplex) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the Kafka side decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config, registry, log_level = connection.recv()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        core = ScoringCore(config, registry)
        core.model.require()
        core.model.watch()  # the registry is checked off the scoring path from here on
        if core.shadow:
            core.shadow.watch()
    except Exception as error:
        connection.send(("error", str(error)))
        return
    connection.send(("ok", core.status()))
    # Requests are read on a thread of their own: the Kafka side sends the next batch while this process
    # sends the previous result, and with nobody reading, both would block on a full pipe.
    requests: queue.SimpleQueue[tuple] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(connection, requests), daemon=True).start()
    try:
        while True:
            request = requests.get()
            if request[0] == "stop":
                break
            reply = core.score(*request[1:]) if request[0] == "score" else core.status(*request[1:])
            connection.send(("ok", reply))
            if request[0] == "score":
                core.score_shadow()  # between batches: the decisions are on their way already
    except (BrokenPipeError, EOFError):
        pass
    except Exception:
        log.exception("the scoring process failed")
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc(limit=5)))
    finally:
        core.close()


def _read_requests(connection: _Duplex, requests: queue.SimpleQueue) -> None:
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):  # the Kafka side is gone
            requests.put(("stop",))
            return
        requests.put(request)
        if request[0] == "stop":
            return


class ScoringProcess:
    """The Kafka side's handle on the worker (`python -m fraudloop.streaming.worker`, talking over two pipes): send
    requests from one thread, take their results, in order, from one other (or the same) thread."""

    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-m", "fraudloop.streaming.worker", str(to_child),
                                         str(from_child)], pass_fds=(to_child, from_child))
        os.close(to_child)
        os.close(from_child)
        self._connection = _Duplex(Connection(to_parent, writable=False), Connection(from_parent, readable=False))
        self._connection.send((config, registry, logging.getLogger().getEffectiveLevel()))
        self._sent = self._received = 0  # each counted by one thread only
        self.ready = self._reply()

    def submit(self, batch: list[tuple], kafka_cpu_seconds: float, partitions: tuple[int, ...] | None = None,
               lag: int = 0, partition_count: int = 0) -> None:
        """`partitions`: the transactions partitions assigned now, of `partition_count` (see Scorer.process); `lag`:
        transactions behind the end of the partitions the batch was read from (see ScoringCore.score)."""
        self._connection.send(("score", batch, kafka_cpu_seconds, partitions, lag, partition_count))
        self._sent += 1

    def request_status(self, partitions: tuple[int, ...] | None = None, partition_count: int = 0) -> None:
        """Ask for the model events since the last reply; `result()` returns them (no decisions). `partitions`: as
        for `submit`."""
        self._connection.send(("status", partitions, partition_count))
        self._sent += 1

    def has_result(self) -> bool:
        """Whether the oldest request's reply is there to take now (on the thread that takes results)."""
        return self._connection.poll(0)

    def result(self) -> Scored:
        """The oldest request's reply, waiting for it."""
        scored = self._reply()
        self._received += 1
        return scored

    def _reply(self) -> Scored:
        while not self._connection.poll(1.0):
            if self.process.poll() is not None:
                raise RuntimeError(f"the scoring process exited (code {self.process.returncode})")
        try:
            kind, value = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"the scoring process exited (code {self.process.wait()})") from None
        if kind == "error":
            raise RuntimeError(value)
        return value

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch in hand; batches whose result was never taken are abandoned (uncommitted)."""
        if self._sent > self._received:
            self.process.kill()
        with contextlib.suppress(OSError):
            self._connection.send(("stop",))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._connection.close()


@dataclass
class _Duplex:
    """One end of a request/reply channel made of two one-way pipes (no sockets, no forking)."""

    reader: Connection
    writer: Connection

    def send(self, value: object) -> None:
        self.writer.send(value)

    def recv(self) -> object:
        return self.reader.recv()

    def poll(self, timeout: float) -> bool:
        return self.reader.poll(timeout)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


if __name__ == "__main__":
    from fraudloop.streaming import (
        worker,  # the module by its name, so what is pickled back is fraudloop.streaming.worker.Scored
    )

    worker._serve(worker._Duplex(Connection(int(sys.argv[1]), writable=False),
                                 Connection(int(sys.argv[2]), readable=False)))
