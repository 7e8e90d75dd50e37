"""The scorer's pure parts, without Kafka: decisions, reasons, model swaps and refusals, config, the batch core."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import lightgbm as lgb
import numpy as np
import orjson
import pytest
from fraudloop.models.features import FEATURE_NAMES, N_FEATURES, FeatureState
from fraudloop.models.schema import Label, Transaction, label_record, transaction_record
from fraudloop.models.store import Store
from fraudloop.streaming import compiled
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.decide import outcomes, top_reasons
from fraudloop.streaming.model import ModelHolder, ServingModel
from fraudloop.streaming.scorer import Message, Scorer


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, N_FEATURES))
    x[:, 0] *= 1_000
    y = (x[:, 0] > 800).astype(float)  # "amount" over 800 is fraud
    data = lgb.Dataset(x, label=y, feature_name=list(FEATURE_NAMES))
    return lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1}, data, num_boost_round=20)


def test_outcomes_follow_the_thresholds():
    assert outcomes(np.array([0.0, 0.29, 0.3, 0.69, 0.7, 1.0]), 0.3, 0.7) == [
        "approve", "approve", "review", "review", "decline", "decline"]


def test_reasons_are_the_top_positive_contributions():
    contributions = np.array([0.5, -2.0, 1.5, 0.0, 0.1])  # the last column is LightGBM's bias term
    values = np.array([10.0, 1.0, np.nan, 3.0, 0.0])
    reasons = top_reasons(contributions, values, ("a", "b", "c", "d"), k=3)
    assert reasons == [{"feature": "c", "value": None, "contribution": 1.5},
                       {"feature": "a", "value": 10.0, "contribution": 0.5}]


class Registry:
    """A stand-in for the registry's two answers (which version the alias names; that version's booster)."""

    def __init__(self, boosters: dict[str, lgb.Booster]) -> None:
        self.boosters, self.alias, self.down = boosters, "1", False

    def resolve(self) -> str:
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.alias

    def load(self, version: str) -> lgb.Booster:
        return self.boosters[version]


def test_holder_retries_a_version_that_fails_to_load_and_survives_an_unreachable_registry(booster, monkeypatch):
    events = []
    registry = Registry({"1": booster, "2": booster})
    holder = ModelHolder("m", registry.resolve, registry.load, check_every=1.0,
                         on_event=lambda kind, version: events.append((kind, version)), compile_models=False)
    clock = [1000.0]
    monkeypatch.setattr("fraudloop.streaming.model.time.monotonic", lambda: clock[0])
    assert holder.require().version == "1"
    registry.alias = "3"  # its artifact cannot be fetched (yet): transient, never refused
    assert not holder.refresh(force=True) and holder.current.version == "1" and not holder.refused
    assert not holder.refresh(force=True) and events.count(("load_failed", "3")) == 1  # backing off: not tried
    clock[0] += 1.0
    assert not holder.refresh(force=True) and events.count(("load_failed", "3")) == 2  # tried again after 1 s
    clock[0] += 1.0
    assert not holder.refresh(force=True) and events.count(("load_failed", "3")) == 2  # now waits 2 s
    assert holder.behind_alias(grace=60) == 2.0  # seconds the alias has named a version not served
    registry.down = True
    assert not holder.refresh(force=True) and holder.current.version == "1" and ("registry_error", "") in events
    registry.down, registry.boosters["3"] = False, booster  # the artifact store is back
    clock[0] += 2.0
    assert holder.refresh(force=True) and holder.current.version == "3" and holder.behind_alias(grace=60) == 0.0
    assert events == [("swapped", "1"), ("load_failed", "3"), ("load_failed", "3"), ("registry_error", ""),
                      ("swapped", "3")]


def test_the_alias_naming_an_unserved_version_past_the_grace_period_is_logged_once(booster, monkeypatch, caplog):
    registry = Registry({"1": booster})
    holder = ModelHolder("m", registry.resolve, registry.load, check_every=0, compile_models=False)
    clock = [0.0]
    monkeypatch.setattr("fraudloop.streaming.model.time.monotonic", lambda: clock[0])
    holder.require()
    registry.alias = "2"
    holder.refresh(force=True)
    assert holder.behind_alias(grace=30) == 0.0
    clock[0] = 31.0
    assert holder.behind_alias(grace=30) == 31.0 and holder.behind_alias(grace=30) == 31.0
    assert [r.message for r in caplog.records if "has served for" in r.message] == [
        "the alias names m version 2 but version 1 has served for 31 s: not loaded yet"]


def test_a_watched_holder_never_waits_for_a_hung_registry(booster):
    events: list = []
    registry = Registry({"1": booster, "2": booster})
    hung = threading.Event()

    def resolve() -> str:
        if registry.down:
            hung.set()
            while registry.down:  # a registry that does not answer (an HTTP client retrying)
                time.sleep(0.01)
        return registry.resolve()

    holder = ModelHolder("m", resolve, registry.load, check_every=0.01,
                         on_event=lambda kind, version: events.append((kind, version)), compile_models=False)
    holder.require()
    holder.watch()
    registry.down, registry.alias = True, "2"
    assert hung.wait(5)
    started = time.perf_counter()
    assert not holder.refresh() and holder.current.version == "1"  # between batches: no wait, the model in hand
    assert time.perf_counter() - started < 0.05
    registry.down = False
    deadline = time.monotonic() + 5
    while not holder.refresh():
        assert time.monotonic() < deadline, f"version 2 never swapped in: {events}"
        time.sleep(0.01)
    assert holder.current.version == "2" and events == [("swapped", "1"), ("swapped", "2")]
    holder.close()


def test_holder_refuses_a_model_that_fails_the_smoke_prediction():
    data = lgb.Dataset(np.random.default_rng(1).random((200, N_FEATURES)), label=np.arange(200) % 3,
                       feature_name=list(FEATURE_NAMES))
    multiclass = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1}, data, num_boost_round=2)
    holder = ModelHolder("m", lambda: "7", lambda version: multiclass, check_every=0, compile_models=False)
    with pytest.raises(RuntimeError, match="no servable version"):
        holder.require()
    assert "smoke prediction" in holder.refused["7"]


def _refresh_until(holder: ModelHolder, events: list, event: tuple, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while event not in events:
        assert time.monotonic() < deadline, f"no {event} after {timeout:.0f} s: {events}"
        time.sleep(0.05)
        holder.refresh()


def test_holder_serves_lightgbm_at_once_then_the_compiled_model(booster, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDLOOP_HOME", str(tmp_path))
    events: list = []
    holder = ModelHolder("m", lambda: "1", lambda version: booster, check_every=60,
                         on_event=lambda kind, version: events.append((kind, version)))
    assert holder.require().compiled is None  # LightGBM serves while the compiler runs in a child process
    _refresh_until(holder, events, ("compiled", "1"))
    rows = np.random.default_rng(2).random((500, N_FEATURES)) * 1_000
    rows[::7, 3] = np.nan
    served = holder.current
    assert served.compiled is not None and served.version == "1"
    assert np.allclose(served.predict(rows), booster.predict(rows, num_threads=1), rtol=0, atol=1e-12)
    again = ModelHolder("m", lambda: "1", lambda version: booster)  # a restart finds it compiled
    assert again.require().compiled is not None


def test_a_failed_compilation_leaves_lightgbm_serving(booster, tmp_path, monkeypatch):
    def failing(model: lgb.Booster) -> compiled.Compilation:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit('no LLVM here')"], stderr=subprocess.PIPE)
        return compiled.Compilation(tmp_path / "m.txt", tmp_path / "m.so", process)

    monkeypatch.setattr(compiled, "start", failing)
    events: list = []
    holder = ModelHolder("m", lambda: "1", lambda version: booster, check_every=60,
                         on_event=lambda kind, version: events.append((kind, version)))
    holder.require()
    _refresh_until(holder, events, ("compile_failed", "1"))
    assert holder.current.compiled is None and holder.current.version == "1"
    rows = np.random.default_rng(3).random((5, N_FEATURES))
    assert np.array_equal(holder.current.predict(rows), booster.predict(rows, num_threads=1))


def test_config_from_file_environment_and_overrides(tmp_path, monkeypatch):
    path = tmp_path / "scorer.toml"
    path.write_text('group_id = "from-file"\nbatch_size = 100\n[kafka]\nsecurity_protocol = "SASL_SSL"\n'
                    'session_timeout_ms = 8000\n')
    for name, value in {"FRAUDLOOP_BATCH_SIZE": "250", "FRAUDLOOP_KAFKA_SASL_MECHANISM": "PLAIN",
                        "FRAUDLOOP_KAFKA_SASL_PLAIN_PASSWORD": "123456", "FRAUDLOOP_KAFKA_REQUEST_TIMEOUT_MS": "9000",
                        "FRAUDLOOP_DECLINE_THRESHOLD": "0.9", "FRAUDLOOP_COMPILE_MODELS": "false"}.items():
        monkeypatch.setenv(name, value)
    config = ScorerConfig.load(path, bootstrap_servers="kafka-1:9093,kafka-2:9093")
    assert (config.group_id, config.batch_size, config.decline_threshold) == ("from-file", 250, 0.9)
    assert config.compile_models is False
    assert "123456" not in repr(config)  # a secret is never printed
    settings = config.client_settings()
    assert settings["bootstrap_servers"] == ["kafka-1:9093", "kafka-2:9093"]
    assert settings["security_protocol"] == "SASL_SSL" and settings["sasl_mechanism"] == "PLAIN"
    assert settings["sasl_plain_password"] == "123456"  # text, not the int 123456
    assert settings["request_timeout_ms"] == 9000 and settings["session_timeout_ms"] == 8000  # typed as kafka-python's
    assert settings["heartbeat_interval_ms"] == 1_000  # the defaults under what was given


@pytest.mark.parametrize(("text", "env", "message"), [
    ("batchsize = 3\n", {}, "unknown setting 'batchsize' in"),
    ("", {"FRAUDLOOP_BATCH_SIZE": "many"}, "FRAUDLOOP_BATCH_SIZE='many': Input should be a valid integer"),
    ('batch_size = "x"\n', {}, "batch_size in scorer.toml='x': Input should be a valid integer"),
    ("review_threshold = 0.9\ndecline_threshold = 0.5\n", {}, "thresholds must satisfy"),
    ("batch_size = [", {}, "scorer.toml"),
    ("", {"FRAUDLOOP_COMPILE_MODELS": "maybe"}, "FRAUDLOOP_COMPILE_MODELS='maybe': Input should be a valid boolean"),
    ("commit_interval_ms = -1\n", {}, "commit_interval_ms in scorer.toml=-1: Input should be greater than or equal"),
    ("", {"FRAUDLOOP_KAFKA_SESSION_TIMEOUT_MS": "soon"},
     "FRAUDLOOP_KAFKA_SESSION_TIMEOUT_MS='soon' is not a valid int"),
])
def test_bad_config_says_what_is_wrong_in_one_line_naming_the_setting(tmp_path, monkeypatch, text, env, message):
    path = tmp_path / "scorer.toml"
    path.write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as error:
        ScorerConfig.load(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.toml not found"):
        ScorerConfig.load(tmp_path / "nowhere.toml")


def _message(topic: str, offset: int, record: object, partition: int = 0) -> Message:
    return Message(topic, partition, offset, 0, record if isinstance(record, bytes) else orjson.dumps(record))


def test_scorer_core_applies_a_batch_in_event_time_order(booster, tmp_path):
    config = ScorerConfig()
    scorer = Scorer(config, FeatureState(), Store(f"sqlite:///{tmp_path / 'store.db'}"))
    model = ServingModel("m", "1", booster)
    t0 = 1_530_000_000.0
    early = Transaction("A", "C1", "T1", t0, 1000)
    late = Transaction("B", "C2", "T1", t0 + 8 * 86_400, 95_000)
    batch = [
        _message(config.transactions_topic, 0, transaction_record(late)),
        _message(config.labels_topic, 0, label_record(Label("A", True, t0 + 3_600))),
        _message(config.transactions_topic, 1, b"\xff not json"),
        _message(config.transactions_topic, 2, transaction_record(early), partition=1),  # another card's partition
    ]
    result = scorer.process(batch, model)
    assert [d["transaction_id"] for d in result.decisions] == ["A", "B"]
    assert [dead.message.offset for dead in result.dead_letters] == [1]
    assert "not JSON" in result.dead_letters[0].reason
    # the label (known between the two transactions) counts for B's delayed terminal window, as offline
    features_b = dict(zip(FEATURE_NAMES, result.rows[1].features, strict=True))
    assert features_b["terminal_risk_7d_delayed"] == 1.0 and features_b["terminal_risk_1d_delayed"] == 0.0
    small, big = result.decisions
    assert small["decision"] == "approve" and small["reasons"] == []
    assert big["decision"] == "decline" and big["reasons"][0]["feature"] == "amount"
    assert result.labels == [Label("A", True, t0 + 3_600)]


def test_the_served_version_s_own_thresholds_and_the_rules_decide_and_each_decision_names_what_decided(
        booster, tmp_path):
    from fraudloop.streaming.rules import parse

    registry = Registry({"1": booster, "2": booster})
    tags = {"1": {"review_threshold": "0.0", "decline_threshold": "1.0"}, "2": {}}
    holder = ModelHolder("m", registry.resolve, registry.load, check_every=0, compile_models=False,
                         version_tags=lambda version: tags[version])
    assert holder.require().thresholds == (0.0, 1.0)  # validated: its tags
    config = ScorerConfig()  # 0.3 / 0.7 for a version without thresholds of its own
    scorer = Scorer(config, FeatureState(), Store(f"sqlite:///{tmp_path / 'store.db'}"))
    t0 = 1_530_000_000.0
    txs = [Transaction(f"t{i}", f"C{i}", "T1", t0 + i, cents) for i, cents in enumerate((1000, 95_000, 95_000))]
    rules = parse('version = "r1"\n[lists]\nblock_cards = ["C0"]\n[[rules]]\nname = "big"\naction = "review"\n'
                  'when = "amount >= 900 and score >= 0.5"')
    batch = [_message(config.transactions_topic, i, transaction_record(tx)) for i, tx in enumerate(txs[:2])]
    first = scorer.process(batch, holder.current, rules=rules)
    assert [(d["decision"], d["rule"], d["rules_version"]) for d in first.decisions] == [
        ("decline", "block_cards list", "r1"), ("review", "big", "r1")]
    registry.alias = "2"
    holder.refresh(force=True)
    assert holder.current.thresholds is None
    third = scorer.process([_message(config.transactions_topic, 2, transaction_record(txs[2]))], holder.current)
    assert [(d["decision"], d["rule"], d["rules_version"]) for d in third.decisions] == [("decline", "model", "none")]
    stored = scorer.store.decisions_for(["t0", "t1"])  # a redelivery gets what decided, too
    assert (stored["t0"].rule, stored["t0"].rules_version, stored["t1"].rule) == ("block_cards list", "r1", "big")


def test_an_unknown_currency_is_dead_lettered_with_its_reason_and_a_known_one_converted(booster, tmp_path):
    config = ScorerConfig()
    scorer = Scorer(config, FeatureState(), Store(f"sqlite:///{tmp_path / 'store.db'}"))
    record = transaction_record(Transaction("t1", "C1", "T1", 1_530_000_000.0, 10_000))
    batch = [_message(config.transactions_topic, 0, {**record, "currency": "USD"}),
             _message(config.transactions_topic, 1, {**record, "transaction_id": "t2", "currency": "XTS"})]
    result = scorer.process(batch, ServingModel("m", "1", booster))
    assert [d["transaction_id"] for d in result.decisions] == ["t1"]
    assert result.rows[0].tx.amount_cents == round(100 * scorer.rates.per_unit["USD"] * 100)
    assert [d.reason.split(":", 2)[:2] for d in result.dead_letters] == [["invalid", " currency"]]
    assert "'XTS' is not in the rates table" in result.dead_letters[0].reason


def test_rules_that_fail_on_a_batch_never_stop_it_the_model_s_thresholds_decide_and_say_so(booster, tmp_path):
    from fraudloop.streaming.rules import Rule, RuleSet

    def broken(cols):
        raise MemoryError("simulated")

    rules = RuleSet("r9", (Rule("broken", "review", "amount > 1", broken),))
    config = ScorerConfig()
    scorer = Scorer(config, FeatureState(), Store(f"sqlite:///{tmp_path / 'store.db'}"))
    tx = Transaction("t1", "C1", "T1", 1_530_000_000.0, 1_000)  # scored low: the review rule is reached
    result = scorer.process([_message(config.transactions_topic, 0, transaction_record(tx))],
                            ServingModel("m", "1", booster), rules=rules)
    assert [(d["decision"], d["rule"], d["rules_version"]) for d in result.decisions] == [("approve", "model", "none")]
    assert result.rules_error == "MemoryError: simulated" and not result.dead_letters


def test_a_batch_s_oldest_transaction_s_wait_is_split_into_stages_that_add_up():
    from types import SimpleNamespace

    from fraudloop.streaming.service import Batch, stage_waits
    from fraudloop.streaming.worker import Scored

    records = [SimpleNamespace(topic="tx", timestamp=1_000_000.0), SimpleNamespace(topic="tx", timestamp=1_000_004.0),
               SimpleNamespace(topic="labels", timestamp=999_000.0), SimpleNamespace(topic="tx", timestamp=-1)]
    batch = Batch(records, polled_ms=1_000_012.0, polled_at=50.000, taken=50.020, acked=50.026,
                  scored=Scored(started=50.003, finished=50.015))
    oldest, waits = stage_waits(batch, "tx")  # labels and transactions without a timestamp are not the oldest
    assert oldest == 1_000_000.0
    assert waits == pytest.approx([0.012, 0.003, 0.012, 0.005, 0.006])
    assert sum(waits) == pytest.approx((1_000_012.0 - oldest) / 1000 + (50.026 - 50.000))
    labels_only = Batch([SimpleNamespace(topic="labels", timestamp=5.0)], scored=Scored(finished=1.0))
    assert stage_waits(labels_only, "tx") is None
