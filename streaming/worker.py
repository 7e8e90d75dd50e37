"""The scoring worker: a child process that owns the feature state, the served model and the store.

Why a process of its own: on a 2-core machine kafka-python's consume/produce path needs about a core, and
validation, features, model and store need about as much; in one CPython process they take turns on the
GIL. So the Kafka loop (service.py) hands each polled batch to this process and, while it is scored,
produces the previous batch's decisions and waits for their acks. A batch comes back with its decisions
already serialized; the Kafka side commits its offsets only after the decisions are acknowledged.

Protocol over a pipe, one reply per request: ("score", messages, kafka_cpu_seconds) -> Scored,
("status",) -> Scored without decisions (model events while idle), ("stop",). If the Kafka side dies,
the pipe closes and this process exits after the batch in hand.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import signal
import time
import traceback
from dataclasses import dataclass, field

import orjson

from models.features import CARD_RETENTION, TERMINAL_RETENTION, FeatureState, replay
from models.registry import RegistryConfig
from streaming.config import ScorerConfig
from streaming.model import ModelHolder
from streaming.scorer import DeadLetter, Message, Scorer
from streaming.shared_state import SharedEvents
from streaming.store import Store

log = logging.getLogger(__name__)
STATE_HORIZON = max(CARD_RETENTION, TERMINAL_RETENTION)


@dataclass
class Scored:
    """What the Kafka side needs of a scored batch: messages to produce and what the metrics count."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value), one per transaction
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # decisions by outcome
    labels: int = 0
    model_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the worker's, for this batch
    model_events: list[tuple[str, str, str]] = field(default_factory=list)  # (event, version, detail)
    model_version: str = ""


def rebuild_state(store: Store) -> FeatureState:
    """The feature state as of the last stored decision: the stored window of transactions and labels replayed."""
    state = FeatureState()
    transactions = list(store.recent_transactions(STATE_HORIZON))
    if transactions:
        for _ in replay(state, transactions, store.all_labels(since=transactions[0].time)):
            pass
    log.info("feature state rebuilt from %d stored transactions", len(transactions))
    return state


class ScoringCore:
    """Validation, features, model, store and shared state for one batch at a time; no Kafka."""

    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        self.config = config
        self.store = Store(config.store_url)
        self.events: list[tuple[str, str, str]] = []
        self.model = ModelHolder.from_registry(registry, config.model_alias, config.model_check_seconds,
                                               on_event=self._model_event, compile_models=config.compile_models)
        # Several instances in one group share their events through Redis (see shared_state.py).
        self.shared = (SharedEvents(config.shared_state_url, stream=f"fraudloop:{config.group_id}:feature-events")
                       if config.shared_state_url else None)
        if self.shared:
            self.shared.mark_start()  # before the rebuild: what is published meanwhile is applied after it
        self.scorer = Scorer(config, rebuild_state(self.store))
        if self.shared:
            log.info("applied %d events shared by other instances", self.shared.apply_others(self.scorer.state))
        # The state's long-lived objects are moved out of the cyclic GC's reach: a full collection walking
        # hundreds of thousands of them shows up as a latency spike.
        gc.collect()
        gc.freeze()
        self._costs: dict[str, tuple[int, float]] = {}  # per model version, not yet in the store
        self._costs_written = time.monotonic()

    def _model_event(self, event: str, version: str) -> None:
        self.events.append((event, version, self.model.refused.get(version, "")))

    def status(self) -> Scored:
        self.model.refresh()
        events, self.events = self.events, []
        version = self.model.current.version if self.model.current else ""
        return Scored(model_events=events, model_version=version)

    def score(self, batch: list[tuple], kafka_cpu_seconds: float) -> Scored:
        cpu = time.process_time()
        self.model.refresh()  # between batches: a swap never splits one
        model = self.model.current
        messages = [Message(*fields) for fields in batch]
        if self.shared:
            self.shared.apply_others(self.scorer.state)
        result = self.scorer.process(messages, model)
        self.store.write(result.rows, result.labels, self._take_costs())
        if self.shared:  # after the store: a restarted instance rebuilds from the store, then reads from here
            self.shared.publish([row.tx for row in result.rows], result.labels)
        scored = self.status()
        scored.decisions = [(d["card_id"].encode(), orjson.dumps(d)) for d in result.decisions]
        scored.dead_letters = result.dead_letters
        scored.labels = len(result.labels)
        scored.model_seconds = result.model_seconds
        for decision in result.decisions:
            scored.outcomes[decision["decision"]] = scored.outcomes.get(decision["decision"], 0) + 1
        scored.cpu_seconds = time.process_time() - cpu
        count, seconds = self._costs.get(model.version, (0, 0.0))
        self._costs[model.version] = (count + len(result.decisions), seconds + kafka_cpu_seconds + scored.cpu_seconds)
        return scored

    def _take_costs(self, every_seconds: float = 10.0) -> dict[str, tuple[int, float]] | None:
        """Serving cost per model version, written with a batch every few seconds (no extra round trip)."""
        if not self._costs or time.monotonic() - self._costs_written < every_seconds:
            return None
        taken, self._costs, self._costs_written = self._costs, {}, time.monotonic()
        return taken

    def close(self) -> None:
        self.model.cancel_compiling()
        self.store.write([], [], self._take_costs(every_seconds=0))
        self.store.close()
        if self.shared:
            self.shared.close()


def _serve(connection, config: ScorerConfig, registry: RegistryConfig, log_level: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the Kafka side decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        core = ScoringCore(config, registry)
        core.model.require()
    except Exception as error:
        connection.send(("error", str(error)))
        return
    connection.send(("ok", core.status()))
    try:
        while True:
            try:
                request = connection.recv()
            except EOFError:  # the Kafka side is gone
                break
            if request[0] == "stop":
                break
            reply = core.score(*request[1:]) if request[0] == "score" else core.status()
            connection.send(("ok", reply))
    except (BrokenPipeError, EOFError):
        pass
    except Exception:
        log.exception("the scoring process failed")
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc(limit=5)))
    finally:
        core.close()


class ScoringProcess:
    """The Kafka side's handle on the worker: submit a batch, then take its result (in submission order)."""

    def __init__(self, config: ScorerConfig, registry: RegistryConfig) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process with Kafka client threads
        self._connection, child = context.Pipe()
        self.process = context.Process(target=_serve, name="fraudloop-scoring", daemon=True,
                                       args=(child, config, registry, logging.getLogger().getEffectiveLevel()))
        self.process.start()
        child.close()
        self.pending = 0  # batches submitted whose result has not been taken
        self.ready = self._reply()

    def submit(self, batch: list[tuple], kafka_cpu_seconds: float) -> None:
        self._connection.send(("score", batch, kafka_cpu_seconds))
        self.pending += 1

    def result(self) -> Scored:
        scored = self._reply()
        self.pending -= 1
        return scored

    def status(self) -> Scored:
        self._connection.send(("status",))
        return self._reply()

    def _reply(self) -> Scored:
        while not self._connection.poll(1.0):
            if not self.process.is_alive():
                raise RuntimeError(f"the scoring process exited (code {self.process.exitcode})")
        try:
            kind, value = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"the scoring process exited (code {self.process.exitcode})") from None
        if kind == "error":
            raise RuntimeError(value)
        return value

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch in hand; batches whose result was never taken are abandoned (uncommitted)."""
        if self.pending:
            self.process.kill()
        with contextlib.suppress(OSError):
            self._connection.send(("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()
