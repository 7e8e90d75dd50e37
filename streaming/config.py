"""Scorer configuration: typed settings (pydantic-settings) from a TOML file and FRAUDLOOP_* environment variables.

Precedence: explicit overrides, then the environment, then the file, then the defaults. Every value is checked
against its type at load, and a bad one is reported in one line naming the setting (`FRAUDLOOP_BATCH_SIZE='many'`
or `batch_size` in the file). Kafka client settings (security protocol, SASL, SSL, tuning) pass through to
kafka-python, so the same scorer runs against the development broker and a secured production cluster; those
that are secrets (`*password*`) are held as SecretStr and never printed.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

from fraudloop.streaming.decide import Exploration
from fraudloop.streaming.event_time import WALL, EventTimePolicy
from fraudloop.streaming.overload import Budget, Governor
from kafka import KafkaConsumer, KafkaProducer
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

# Consumer settings: group joins in seconds rather than kafka-python's ~45 s session default, a short fetch wait
# so an idle partition does not hold a poll for the default 500 ms (latency), and only committed transactions of a
# transactional producer (an aborted one is never scored; a producer without transactions is read as before).
CONSUMER_DEFAULTS = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000, "max_poll_interval_ms": 60_000,
                     "fetch_max_wait_ms": 10, "isolation_level": "read_committed"}
PREFIX, KAFKA_PREFIX = "FRAUDLOOP_", "FRAUDLOOP_KAFKA_"
Codec = Literal["none", "gzip", "snappy", "lz4", "zstd"]  # what a Kafka producer may compress with
CODECS: tuple[str, ...] = get_args(Codec)
_FILE: ContextVar[Path | None] = ContextVar("scorer_config_file", default=None)  # the file `load` reads


class ScorerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid", frozen=True, validate_default=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    decisions_topic: str = "decisions"
    dead_letter_topic: str = "transactions-dlq"
    labels_dead_letter_topic: str = "labels-dlq"
    group_id: str = "fraud-scorer"
    batch_size: int = Field(500, gt=0)
    poll_timeout_ms: int = 100
    # Offsets of acknowledged batches are committed at most this often (0: each batch)
    commit_interval_ms: int = Field(100, ge=0)
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
    # redis://...: the terminal aggregates shared by several instances of one group (streaming/terminal_store.py);
    # each instance then holds the cards of its own partitions only. Empty: one instance holds everything.
    shared_state_url: str = ""
    state_footprint_seconds: float = Field(60.0, gt=0)  # how often the feature state's memory is measured (metrics)
    # Graceful overload (streaming/overload.py): shed optional work (shadow scoring, reviews' reasons; never a
    # transaction) once, for 0.5 s on end, a batch's oldest transaction waited longer than overload_wait_ms or more
    # than overload_lag transactions were behind the partitions just read (not fraud_consumer_lag: that one is every
    # assigned partition, both topics); full service after overload_recover_seconds under half of both.
    overload_shedding: bool = True
    overload_wait_ms: float = Field(100.0, gt=0)
    overload_lag: int = Field(2_000, gt=0)
    overload_recover_seconds: float = Field(2.0, ge=0)
    # A record batch the Kafka client cannot read (a codec it lacks, a corrupt batch, a CRC mismatch:
    # streaming/unreadable.py) stops its partition only. `wait`: the partition is retried every
    # unreadable_retry_seconds until it reads (a fix deployed, or `fraudloop group skip`); `skip`: the batch goes to
    # the dead-letter topic as it is stored, with the reason, and the partition reads on after it.
    unreadable_batches: Literal["wait", "skip"] = "wait"
    unreadable_retry_seconds: float = Field(30.0, gt=0)
    # A producer that does not key transactions by card (by account, terminal, or round-robin): the topic it writes.
    # Its messages are re-keyed by card into transactions_topic (streaming/repartition.py), by `fraudloop score` in a
    # process of its own, or by `fraudloop repartition`. Empty: transactions_topic is keyed by card.
    repartition_from: str = ""
    # The codec of what the scorer produces (decisions, dead letters): chosen by benchmarks/codecs.md
    producer_codec: Codec = "zstd"
    # The review queue (`fraudloop review`): a case no analyst worked this long after its transaction expires (its
    # outcome stays unknown)
    review_expiry_hours: float = Field(72.0, gt=0)
    # Take the analyst's name from X-Forwarded-User / X-Remote-User: only behind a proxy that authenticates users
    # and sets it (anyone can send the header to the page directly)
    review_trust_proxy_user: bool = False
    # Counterfactual exploration (streaming/decide.py): approve this share of what the model's thresholds would
    # decline or review (never what a rule or a list decided), at or below the amount (reference currency) and
    # score caps; each decision carries its probability, so validation and the monitor can estimate the policy's
    # precision and recall over all traffic (docs/retraining.md). Off by default: it lets fraud through.
    exploration_share: float = Field(0.0, ge=0, lt=1)
    exploration_max_amount: float = Field(1_000.0, ge=0)
    exploration_max_score: float = Field(1.0, ge=0, le=1)
    exploration_key: SecretStr = SecretStr("")  # keys the draws: set it, and keep it secret, in production
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus server on another host scrape it
    # Extra kafka-python settings over CONSUMER_DEFAULTS: `[kafka]` in the file, FRAUDLOOP_KAFKA_<SETTING> in the
    # environment (typed as kafka-python's own default for that setting; a password stays text, and secret)
    kafka: dict[str, Any] = Field(default_factory=lambda: dict(CONSUMER_DEFAULTS))

    @property
    def exploration(self) -> Exploration:
        return Exploration(self.exploration_share, self.exploration_max_amount, self.exploration_max_score)

    @field_validator("kafka", mode="before")
    @classmethod
    def _kafka(cls, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError("must be a table of kafka-python settings")
        typed = {key: _kafka_value(key, raw) for key, raw in value.items()}
        return {**CONSUMER_DEFAULTS, **typed}

    @model_validator(mode="after")
    def _consistent(self) -> ScorerConfig:
        if not 0 <= self.review_threshold <= self.decline_threshold <= 1:
            raise ValueError("thresholds must satisfy 0 <= review_threshold <= decline_threshold <= 1")
        self.event_time_policy()  # refuses a bad policy at load
        if self.repartition_from and self.repartition_from in self.topics:
            raise ValueError(f"repartition_from = {self.repartition_from!r} is a topic the scorer reads or writes: "
                             "it must be the producer's own topic (the scorer reads transactions_topic)")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, **_: PydanticBaseSettingsSource) -> tuple:
        file = _FILE.get()
        return (init_settings, _KafkaEnvironment(settings_cls), env_settings,
                *([TomlConfigSettingsSource(settings_cls, toml_file=file)] if file else []))

    def event_time_policy(self) -> EventTimePolicy:
        return EventTimePolicy(self.allowed_lateness_seconds, self.max_ahead_seconds, self.event_clock,
                               self.partition_skew_seconds)

    def overload_governor(self) -> Governor:
        return Governor(Budget(self.overload_wait_ms, self.overload_lag, self.overload_recover_seconds),
                        enabled=self.overload_shedding)

    def dead_letter_topic_for(self, source_topic: str) -> str:
        return self.labels_dead_letter_topic if source_topic == self.labels_topic else self.dead_letter_topic

    @property
    def topics(self) -> list[str]:
        """Every topic the scorer reads or writes."""
        return [self.transactions_topic, self.labels_topic, self.decisions_topic, self.dead_letter_topic,
                self.labels_dead_letter_topic]

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> ScorerConfig:
        """Overrides (None: not given), then FRAUDLOOP_<SETTING> environment variables, then the file's values."""
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        token = _FILE.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as error:
            raise ValueError(_one_line(error, path)) from None
        except ValueError as error:  # the file is not TOML
            raise ValueError(f"config file {path}: {error}") from None
        finally:
            _FILE.reset(token)

    def compression_type(self) -> str | None:
        """kafka-python's `compression_type` for `producer_codec`."""
        return None if self.producer_codec == "none" else self.producer_codec

    def client_settings(self) -> dict[str, Any]:
        """What kafka-python is given (secrets revealed only here)."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","),
                **{k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in self.kafka.items()}}


def _one_line(error: ValidationError, path: Path | None) -> str:
    """The first problem, naming the setting as the user wrote it (environment variable or file key)."""
    problem = error.errors()[0]
    message = problem["msg"].removeprefix("Value error, ")
    if not problem["loc"] or problem["loc"] == ("kafka",):  # a check across settings, or our own kafka message
        return message
    name = str(problem["loc"][0])
    if problem["type"] == "extra_forbidden":
        return f"unknown setting {name!r}" + (f" in {path}" if path else "")
    variable = f"{PREFIX}{name.upper()}"
    where = variable if variable in os.environ else name + (f" in {path.name}" if path else "")
    given = problem.get("input")
    return f"{where}: {message}" if isinstance(given, dict | list) else f"{where}={given!r}: {message}"


def _kafka_value(key: str, raw: Any) -> Any:
    """A kafka-python setting typed as kafka-python's default for it (text from the environment included)."""
    variable = f"{KAFKA_PREFIX}{key.upper()}"
    shown = variable if variable in os.environ else f"kafka.{key}"
    if "password" in key:
        return raw if isinstance(raw, SecretStr) else SecretStr(str(raw))
    default = {**KafkaProducer.DEFAULT_CONFIG, **KafkaConsumer.DEFAULT_CONFIG}.get(key)
    if not isinstance(raw, str) or default is None or isinstance(default, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{shown}={raw!r} is not true or false")
        return raw.lower() in ("true", "1", "yes")
    if isinstance(default, int | float):
        try:
            return type(default)(raw)
        except ValueError:
            raise ValueError(f"{shown}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


class _KafkaEnvironment(PydanticBaseSettingsSource):
    """FRAUDLOOP_KAFKA_SECURITY_PROTOCOL=SASL_SSL -> kafka["security_protocol"], over the file's [kafka]."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {key.removeprefix(KAFKA_PREFIX).lower(): value for key, value in os.environ.items()
                 if key.startswith(KAFKA_PREFIX)}
        return {"kafka": found} if found else {}  # merged key by key over the file's [kafka] by pydantic-settings
