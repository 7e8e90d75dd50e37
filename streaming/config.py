"""Scorer configuration: a TOML file and/or FRAUDLOOP_* environment variables over safe defaults.

Kafka client settings (security protocol, SASL, SSL, tuning) pass through unchanged to kafka-python, so
the same scorer runs against the development broker and a secured production cluster.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streaming.event_time import WALL, EventTimePolicy

# Consumer settings: group joins in seconds rather than kafka-python's ~45 s session default, and a short
# fetch wait so an idle partition does not hold a poll for the default 500 ms (latency).
CONSUMER_DEFAULTS = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000, "max_poll_interval_ms": 60_000,
                     "fetch_max_wait_ms": 10}


@dataclass(frozen=True)
class ScorerConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    decisions_topic: str = "decisions"
    dead_letter_topic: str = "transactions-dlq"
    labels_dead_letter_topic: str = "labels-dlq"
    group_id: str = "fraud-scorer"
    batch_size: int = 500
    poll_timeout_ms: int = 100
    commit_interval_ms: int = 100  # offsets of acknowledged batches are committed at most this often (0: each batch)
    # For a version that carries no thresholds of its own (tags set at validation from capacity and appetite,
    # models/thresholds.py): every validated version does.
    review_threshold: float = 0.3
    decline_threshold: float = 0.7
    rules_file: str = ""  # the decision rules (streaming/rules.py); empty: the model's thresholds alone
    rules_check_seconds: float = 2.0  # how often the rules file is checked for a new version, between batches
    rates_file: str = ""  # exchange rates to the reference currency (models/currency.py); empty: the packaged table
    reasons: int = 3
    compile_models: bool = True  # serve each version compiled (lleaves) once built; LightGBM until then
    # The event-time policy (streaming/event_time.py): `wall` for live traffic, `stream` for replays of
    # historical or simulated streams, which run on a clock of their own.
    allowed_lateness_seconds: float = 86_400.0
    max_ahead_seconds: float = 300.0
    event_clock: str = WALL
    partition_skew_seconds: float = 30 * 86_400.0
    model_alias: str = "champion"
    # Also scored between batches, on the same features, stored with its version, never produced as a decision
    # (validation's live gate compares it with the champion once labels mature). Empty: no shadow scoring.
    shadow_alias: str = "challenger"
    model_check_seconds: float = 5.0
    model_grace_seconds: float = 120.0  # the alias may name a version not served this long before it is reported
    store_url: str = ""  # empty: SQLite under FRAUDLOOP_HOME
    shared_state_url: str = ""  # redis://...: feature state shared by several instances of one group
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus server on another host scrape it
    kafka: dict[str, Any] = field(default_factory=lambda: dict(CONSUMER_DEFAULTS))  # extra kafka-python settings

    def __post_init__(self) -> None:
        if not 0 <= self.review_threshold <= self.decline_threshold <= 1:
            raise ValueError("thresholds must satisfy 0 <= review_threshold <= decline_threshold <= 1")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.commit_interval_ms < 0:
            raise ValueError(f"commit_interval_ms must not be negative, got {self.commit_interval_ms}")
        self.event_time_policy()  # refuses a bad policy at load

    def event_time_policy(self) -> EventTimePolicy:
        return EventTimePolicy(self.allowed_lateness_seconds, self.max_ahead_seconds, self.event_clock,
                               self.partition_skew_seconds)

    def dead_letter_topic_for(self, source_topic: str) -> str:
        return self.labels_dead_letter_topic if source_topic == self.labels_topic else self.dead_letter_topic

    @property
    def topics(self) -> list[str]:
        """Every topic the scorer reads or writes."""
        return [self.transactions_topic, self.labels_topic, self.decisions_topic, self.dead_letter_topic,
                self.labels_dead_letter_topic]

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> ScorerConfig:
        """File values, then FRAUDLOOP_<FIELD> environment variables, then explicit overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} not found")
            try:
                values.update(tomllib.loads(path.read_text()))
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"config file {path}: {error}") from None
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        for name, spec in known.items():
            raw = env.get(f"FRAUDLOOP_{name.upper()}")
            if raw is not None and name != "kafka":
                values[name] = _convert(name, spec.type, raw)
        kafka = {**CONSUMER_DEFAULTS, **values.pop("kafka", {})}
        for key, raw in env.items():  # FRAUDLOOP_KAFKA_SECURITY_PROTOCOL=SASL_SSL -> security_protocol
            if key.startswith("FRAUDLOOP_KAFKA_"):
                kafka[key.removeprefix("FRAUDLOOP_KAFKA_").lower()] = _number_or_text(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{**values, "kafka": {**kafka, **values.get("kafka", {})}})

    def client_settings(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.kafka}


def _convert(name: str, kind: Any, raw: str) -> Any:
    if str(kind) == "bool":
        if raw.lower() not in _BOOLEANS:
            raise ValueError(f"FRAUDLOOP_{name.upper()}={raw!r} is not true or false")
        return _BOOLEANS[raw.lower()]
    kind = {"int": int, "float": float, "str": str}.get(str(kind), str)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"FRAUDLOOP_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _number_or_text(raw: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
