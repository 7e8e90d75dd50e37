"""The scorer's core, free of Kafka: a batch of raw messages in, decisions / labels / dead letters out.

Per message: decode and validate (bad input becomes a dead letter with its reason, never an exception);
per batch: features from the shared FeatureState, one Booster.predict call, reasons only for the
transactions that are not approved (exact contributions cost ~100x a prediction).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from models.features import FEATURE_NAMES, FeatureState
from models.schema import InvalidRecord, Label, Transaction, parse_label, parse_transaction
from streaming.config import ScorerConfig
from streaming.decide import APPROVE, outcomes, top_reasons
from streaming.model import ServingModel
from streaming.store import DecisionRow


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    reason: str


@dataclass
class BatchResult:
    decisions: list[dict] = field(default_factory=list)  # the decision messages, in event-time order
    partitions: list[int] = field(default_factory=list)  # each decision's transaction's partition
    rows: list[DecisionRow] = field(default_factory=list)  # what the store keeps
    labels: list[Label] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    model_seconds: float = 0.0


def _decode(message: Message) -> object:
    if message.value is None:
        raise InvalidRecord(["record: empty message (tombstone)"])
    try:
        return orjson.loads(message.value)
    except orjson.JSONDecodeError as error:
        raise InvalidRecord([f"record: not JSON ({error})"]) from None


class Scorer:
    def __init__(self, config: ScorerConfig, state: FeatureState) -> None:
        self.config, self.state = config, state

    def process(self, messages: list[Message], model: ServingModel) -> BatchResult:
        """Apply the batch in event-time order (a label at its known_at, before a transaction of the same
        second), as the offline build does; partitions are interleaved by the consumer, not by time."""
        result = BatchResult()
        events: list[tuple[float, int, Message, Transaction | Label]] = []
        for message in messages:
            try:
                record = _decode(message)
                if message.topic == self.config.labels_topic:
                    label = parse_label(record)
                    events.append((label.known_at, 0, message, label))
                else:
                    tx = parse_transaction(record)
                    events.append((tx.time, 1, message, tx))
            except InvalidRecord as error:
                result.dead_letters.append(DeadLetter(message, str(error)))
        events.sort(key=lambda e: (e[0], e[1]))

        transactions: list[tuple[Message, Transaction]] = []
        rows: list[list[float]] = []
        for _, _, message, item in events:
            if isinstance(item, Label):
                self.state.add_label(item)
                result.labels.append(item)
            else:
                transactions.append((message, item))
                rows.append(self.state.transform(item))
        if not transactions:
            return result
        features = np.array(rows)
        started = time.perf_counter()
        scores = model.predict(features)
        result.model_seconds = time.perf_counter() - started
        decided = outcomes(scores, self.config.review_threshold, self.config.decline_threshold)
        flagged = [i for i, d in enumerate(decided) if d != APPROVE]
        reasons: dict[int, list[dict]] = {}
        if flagged and self.config.reasons:
            contributions = model.booster.predict(features[flagged], pred_contrib=True, num_threads=1)
            reasons = {i: top_reasons(c, features[i], FEATURE_NAMES, self.config.reasons)
                       for i, c in zip(flagged, contributions, strict=True)}

        now = time.time()
        for i, (message, tx) in enumerate(transactions):
            score = float(scores[i])
            result.decisions.append({
                "schema_version": 1,
                "transaction_id": tx.transaction_id,
                "card_id": tx.card_id,
                "decision": decided[i],
                "score": round(score, 6),
                "model": model.name,
                "model_version": model.version,
                "reasons": reasons.get(i, []),
                "latency_ms": round(now * 1000 - message.timestamp_ms, 2),
                "decided_at": now,
            })
            result.partitions.append(message.partition)
            result.rows.append(DecisionRow(tx, score, decided[i], model.version, rows[i], now))
        return result
