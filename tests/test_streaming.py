"""Integration: the scorer against the real development broker and a real MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import lightgbm as lgb
import mlflow
import numpy as np
import orjson
import psutil
import pytest
from fraudloop.models.features import FEATURE_NAMES, compute_features, transactions_of
from fraudloop.models.registry import CHAMPION, RegistryConfig, set_alias
from fraudloop.models.schema import Label, Transaction, label_record, transaction_record
from fraudloop.models.store import Store, decisions
from fraudloop.models.training import TrainParams
from fraudloop.pipelines.retraining.train import BuildConfig, build_model
from fraudloop.streaming import operate
from fraudloop.streaming.broker import create_topics, free_port, start_broker
from fraudloop.streaming.metrics import BATCH_STAGES
from kafka import KafkaConsumer, TopicPartition

from tests.streaming_helpers import (
    RunningScorer,
    decisions_by_id,
    producer,
    read_topic,
    scorer_config,
    send_transactions,
)

pytestmark = pytest.mark.integration


def stored_rows(store_url: str) -> dict[str, tuple]:
    store = Store(store_url)
    with store.engine.connect() as db:
        rows = {r.transaction_id: r for r in db.execute(decisions.select())}
    store.close()
    return rows


def test_n_in_n_out_with_offline_identical_features_and_scores(broker, served, small_history, tmp_path):
    registry, booster, _ = served
    stream = small_history.head(4_000)
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}")
    send_transactions(broker.bootstrap, config.transactions_topic, stream)
    with RunningScorer(config, registry) as service:
        records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(stream))
    decided = decisions_by_id(records)
    assert len(records) == len(decided) == len(stream)
    assert service.metrics.transactions._value.get() == len(stream)
    # where each batch's oldest transaction waited: one reading of each stage a batch, and together no more than
    # the end-to-end latencies of all the transactions (each batch's oldest is one of them)
    sample = service.metrics.registry.get_sample_value
    counts = {stage: sample("fraud_batch_stage_seconds_count", {"stage": stage}) for stage in BATCH_STAGES}
    assert len(set(counts.values())) == 1 and counts["scoring"] >= 1
    staged = sum(sample("fraud_batch_stage_seconds_sum", {"stage": stage}) for stage in BATCH_STAGES)
    assert 0 < staged <= sample("fraud_end_to_end_seconds_sum", {}) * 1.01 + 0.05
    assert sample("fraud_batch_stage_seconds_sum", {"stage": "scoring"}) > 0
    # co-partitioned: each decision on its transaction's partition, a card's in the order of its transactions
    sources = read_topic(broker.bootstrap, config.transactions_topic, lambda r: len(r) >= len(stream))
    partition_of = {orjson.loads(r.value)["transaction_id"]: r.partition for r in sources}
    assert all(r.partition == partition_of[orjson.loads(r.value)["transaction_id"]] for r in records)
    time_of = dict(zip(stream["transaction_id"], stream["time"], strict=True))
    times_by_card: dict[str, list[float]] = {}
    for message in (orjson.loads(r.value) for r in records):
        times_by_card.setdefault(message["card_id"], []).append(time_of[message["transaction_id"]])
    assert all(times == sorted(times) for times in times_by_card.values())

    offline = compute_features(stream, small_history.iloc[:0][["transaction_id"]].assign(is_fraud=True, known_at=0.0))
    offline_scores = booster.predict(offline.to_numpy(), num_threads=1)
    stored = stored_rows(config.store_url)
    online = np.array([orjson.loads(stored[t].features) for t in stream["transaction_id"]], dtype=float)
    assert np.array_equal(online, offline.to_numpy(), equal_nan=True)
    # LightGBM serves until the compiled model is built and checked; the two differ in the last float bits
    online_scores = np.array([stored[t].score for t in stream["transaction_id"]])
    assert np.allclose(online_scores, offline_scores, rtol=0, atol=1e-12)
    served_store = Store(config.store_url)
    transactions_served, cpu_seconds = served_store.serving_cost("1")  # what the MLflow version tag is made of
    served_store.close()
    assert transactions_served == len(stream) and 0 < cpu_seconds < 60
    for tx_id, score in zip(stream["transaction_id"], offline_scores, strict=True):
        message = decided[tx_id]
        assert abs(message["score"] - float(score)) <= 5e-7 + 1e-12 and message["model_version"] == "1"
        assert message["decision"] in {"approve", "review", "decline"}
        if message["mode"] == "full" or message["decision"] == "decline":  # lean: a review's reasons are shed
            assert (message["decision"] == "approve") == (message["reasons"] == [])
        if message["reasons"]:
            assert message["reasons"][0]["feature"] in FEATURE_NAMES and message["reasons"][0]["contribution"] > 0


def test_a_backlog_is_scored_lean_and_in_full_once_it_is_cleared(broker, served, small_history, tmp_path):
    """A scorer started behind a backlog sheds optional work (streaming/overload.py) while it catches up, decides
    every transaction once all the same, and returns to full service once nothing waits."""
    registry, _, _ = served
    stream = small_history.head(20_000)  # a backlog that takes well over the governor's 0.5 s to drain (10,000 once
    # drained within it in a full run)
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", batch_size=100,
                           overload_lag=300, overload_recover_seconds=0.5)
    send_transactions(broker.bootstrap, config.transactions_topic, stream)
    with RunningScorer(config, registry) as service:
        records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(stream))
        mode = service.metrics.registry.get_sample_value
        deadline = time.monotonic() + 20
        while mode("fraud_scorer_mode", {"mode": "full"}) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mode("fraud_scorer_mode", {"mode": "full"}) == 1 and mode("fraud_scorer_mode", {"mode": "lean"}) == 0
    decided = decisions_by_id(records)
    assert len(records) == len(decided) == len(stream)
    by_mode = Counter(d["mode"] for d in decided.values())
    assert by_mode["lean"] > 0, by_mode
    for message in decided.values():
        assert message["model_version"] == "1"
        if message["decision"] == "decline" or message["mode"] == "full":
            assert (message["decision"] != "approve") == (message["reasons"] != [])
        else:
            assert message["reasons"] == []


def test_bad_messages_are_dead_lettered_with_reasons_and_counts_balance(broker, served, small_history, tmp_path):
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", metrics_port=free_port())
    good = [transaction_record(tx) for tx in transactions_of(small_history.head(50))]
    bad = {
        b"{not json": "not JSON",
        orjson.dumps({**good[0], "transaction_id": "B1", "amount": "12"}): "amount: '12' is not of type 'number'",
        orjson.dumps({k: v for k, v in good[1].items() if k != "card_id"}): "'card_id' is a required property",
        orjson.dumps({**good[2], "transaction_id": "B3", "amount": -5}): "amount: -5 is less than the minimum of 0",
        orjson.dumps({**good[3], "transaction_id": "B4", "timestamp": "soon"}): "timestamp: 'soon' is not an RFC 3339",
        orjson.dumps([1, 2, 3]): "is not of type 'object'",
    }
    out = producer(broker.bootstrap)
    for value in [orjson.dumps(r) for r in good[:25]] + list(bad) + [orjson.dumps(r) for r in good[25:]]:
        out.send(config.transactions_topic, value=value)
    out.send(config.labels_topic, value=b'{"transaction_id": 7}')
    out.flush()
    with RunningScorer(config, registry) as service:
        dead = read_topic(broker.bootstrap, config.dead_letter_topic, lambda r: len(r) >= len(bad))
        dead_labels = read_topic(broker.bootstrap, config.labels_dead_letter_topic, lambda r: len(r) >= 1)
        decided = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(good))
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/metrics", timeout=10).read().decode()
    assert len(decided) == len(good)
    assert f'fraud_dead_letters_total{{reason="invalid",topic="{config.dead_letter_topic}"}} {len(bad)}.0' in scraped
    assert f'fraud_dead_letters_total{{reason="invalid",topic="{config.labels_dead_letter_topic}"}} 1.0' in scraped
    assert f'fraud_dead_letters_total{{reason="late",topic="{config.dead_letter_topic}"}} 0.0' in scraped
    assert 'fraud_model_version{model="card-fraud"} 1.0' in scraped and "fraud_end_to_end_seconds_bucket" in scraped
    reasons = {r.value: dict(r.headers) for r in dead}
    for value, expected in bad.items():
        headers = reasons[value]  # the original bytes are kept
        assert expected in headers["error.reason"].decode()
        assert headers["source.topic"].decode() == config.transactions_topic
        assert int(headers["source.offset"]) >= 0 and int(headers["source.partition"]) >= 0
    (label,) = dead_labels  # a label's dead letter goes to the labels' dead-letter topic
    assert b"transaction_id: 7 is not of type 'string'" in dict(label.headers)["error.reason"]
    m = service.metrics
    consumed = m.transactions._value.get()
    decided_count = sum(m.decisions.labels(d)._value.get() for d in ("approve", "review", "decline"))
    dead_count = m.dead_letters.labels(config.dead_letter_topic, "invalid")._value.get()
    assert consumed == len(good) + len(bad) == decided_count + dead_count


def test_a_scorer_killed_mid_stream_loses_nothing_and_counts_nothing_twice(broker, served, small_history, tmp_path):
    registry, _, home = served
    stream = small_history.head(15_000)
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", batch_size=200)
    env = {**os.environ, "FRAUDLOOP_HOME": str(home), "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "FRAUDLOOP_ARTIFACT_ROOT": registry.artifact_root, "FRAUDLOOP_STORE_URL": config.store_url,
           **{f"FRAUDLOOP_{k.upper()}": str(getattr(config, k)) for k in
              ("transactions_topic", "labels_topic", "decisions_topic", "dead_letter_topic", "group_id")}}
    command = [sys.executable, "-m", "fraudloop.pipelines.cli", "score", "--bootstrap", broker.bootstrap]
    send_transactions(broker.bootstrap, config.transactions_topic, stream)

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 3_000, timeout=90)
        worker = [p for p in psutil.Process(first.pid).children()
                  if "fraudloop.streaming.worker" in " ".join(p.cmdline())]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(worker) == 1
    worker[0].wait(timeout=30)  # the scoring worker sees its pipe close and exits: nothing is left running
    killed_at = len(stored_rows(config.store_url))
    assert 0 < killed_at < len(stream)

    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        records = read_topic(broker.bootstrap, config.decisions_topic,
                             lambda r: len(decisions_by_id(r)) >= len(stream), timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=30)
    assert second.returncode == 0, stderr.decode()[-2000:]
    assert b"scorer stopped" in stderr  # graceful: finished the batch, committed, closed
    assert set(decisions_by_id(records)) == set(stream["transaction_id"])  # every transaction decided
    stored = stored_rows(config.store_url)
    assert len(stored) == len(stream)
    # features after the restart match a clean offline build: no replayed transaction was counted twice
    offline = compute_features(stream, stream.iloc[:0][["transaction_id"]].assign(is_fraud=True, known_at=0.0))
    online = np.array([orjson.loads(stored[t].features) for t in stream["transaction_id"]], dtype=float)
    offline = offline.to_numpy()
    # Card features see one partition, in order: they must match a clean offline build exactly, so no
    # transaction replayed after the kill was counted twice. Terminal windows also see other partitions,
    # which a backlog drains unevenly: they may miss late events, never count one twice.
    card = [j for j, name in enumerate(FEATURE_NAMES) if not name.startswith("terminal_")]
    terminal_counts = [j for j, name in enumerate(FEATURE_NAMES) if name.startswith("terminal_tx_count")]
    assert np.array_equal(online[:, card], offline[:, card], equal_nan=True)
    assert np.all(online[:, terminal_counts] <= offline[:, terminal_counts])


def _register_broken_version(registry: RegistryConfig, small_history) -> str:
    """A version trained on other features: it loads in MLflow but must not be served."""
    data = lgb.Dataset(np.random.default_rng(0).random((500, 3)), label=np.arange(500) % 2,
                       feature_name=["a", "b", "c"])
    odd = lgb.train({"objective": "binary", "verbosity": -1}, data, num_boost_round=2)
    registry.activate()
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(odd, name="model", registered_model_name=registry.model_name,
                                         pip_requirements=["lightgbm"])
    return str(info.registered_model_version)


def test_promotion_mid_stream_is_picked_up_and_a_broken_version_refused(
    broker, served, small_history, small_labels, tmp_path
):
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", model_check_seconds=0.2)
    first, second, third = small_history.iloc[:1_000], small_history.iloc[1_000:2_000], small_history.iloc[2_000:3_000]
    with RunningScorer(config, registry) as service:
        send_transactions(broker.bootstrap, config.transactions_topic, first)
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 1_000)

        broken = _register_broken_version(registry, small_history)
        set_alias(registry, CHAMPION, broken)
        send_transactions(broker.bootstrap, config.transactions_topic, second)
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 2_000)
        deadline = time.monotonic() + 30
        while broken not in service.refused and time.monotonic() < deadline:
            time.sleep(0.1)

        better = build_model(small_history, small_labels, registry,
                             BuildConfig(21, 7, 7, params=TrainParams(num_boost_round=90)), progress=False)
        set_alias(registry, CHAMPION, better.model.version)
        deadline = time.monotonic() + 30
        while service.model_version != better.model.version and time.monotonic() < deadline:
            time.sleep(0.1)
        send_transactions(broker.bootstrap, config.transactions_topic, third)
        records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 3_000)
    decided = decisions_by_id(records)
    assert len(records) == len(decided) == 3_000  # nothing dropped or scored twice across the swaps
    assert "features" in service.refused[broken]
    assert {decided[t]["model_version"] for t in first["transaction_id"]} == {"1"}
    assert {decided[t]["model_version"] for t in second["transaction_id"]} == {"1"}  # broken one never served
    assert {decided[t]["model_version"] for t in third["transaction_id"]} == {better.model.version}
    assert service.metrics.model_events.labels("refused")._value.get() == 1
    assert service.metrics.model_events.labels("swapped")._value.get() == 2


def test_two_instances_share_state_through_redis_and_a_rebalance_loses_nothing(
    broker, served, small_history, tmp_path, redis_url
):
    registry, booster, _ = served
    stream = small_history.head(6_000)
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", shared_state_url=redis_url)
    with RunningScorer(config, registry) as survivor:
        with RunningScorer(config, registry) as leaving:
            deadline = time.monotonic() + 60
            while not (survivor.consumer.assignment() and leaving.consumer.assignment()):
                assert time.monotonic() < deadline, "the two instances did not share the partitions"
                time.sleep(0.2)
            send_transactions(broker.bootstrap, config.transactions_topic, stream.iloc[:3_000])
            read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(decisions_by_id(r)) >= 3_000)
            assert leaving.metrics.transactions._value.get() > 0 and survivor.metrics.transactions._value.get() > 0
        # The second instance leaves: a rebalance gives the survivor its partitions, and their cards.
        send_transactions(broker.bootstrap, config.transactions_topic, stream.iloc[3_000:])
        records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(decisions_by_id(r)) >= 6_000)
    decided = decisions_by_id(records)
    assert set(decided) == set(stream["transaction_id"])  # nothing lost across the rebalance

    offline = compute_features(stream, small_history.iloc[:0][["transaction_id"]].assign(is_fraud=True, known_at=0.0))
    stored = stored_rows(config.store_url)
    online = np.array([orjson.loads(stored[t].features) for t in stream["transaction_id"]], dtype=float)
    # Every card's history was known to whichever instance scored it: the features of one state.
    assert np.array_equal(online, offline.to_numpy(), equal_nan=True)


def test_hostile_messages_are_dead_lettered_by_kind_and_scoring_goes_on(broker, served, small_history, tmp_path):
    """The messages that stopped the scorer when tried as a user would, each against the real broker and store."""
    registry, _, _ = served
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", metrics_port=free_port())
    history = list(transactions_of(small_history.head(300)))
    newest = history[-1]
    old = Transaction("OLD", newest.card_id, newest.terminal_id, newest.time - 44 * 86_400, 2_500)
    ahead = Transaction("AHEAD", newest.card_id, newest.terminal_id, time.time() + 30 * 365 * 86_400, 2_500)
    first = Transaction("DUP", newest.card_id, newest.terminal_id, newest.time + 60, 1_000)  # 10.00
    conflicting = Transaction("DUP", newest.card_id, newest.terminal_id, newest.time + 60, 499_999)  # 4,999.99
    after = [Transaction(f"AFTER{i}", tx.card_id, tx.terminal_id, newest.time + 120 + i, tx.amount_cents)
             for i, tx in enumerate(history[:50])]
    out = producer(broker.bootstrap)

    def send(tx: Transaction, headers=None) -> None:
        out.send(config.transactions_topic, key=tx.card_id.encode(), value=orjson.dumps(transaction_record(tx)),
                 headers=headers)

    for tx in history:
        send(tx)
    out.send(config.transactions_topic, key=b"card-x", value=None, headers=[("trace", b"t-1")])  # a tombstone
    out.send(config.labels_topic, key=b"label-x", value=None)
    send(old)
    send(ahead)
    send(first)
    out.flush()
    with RunningScorer(config, registry) as service:
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: "DUP" in decisions_by_id(r))
        send(conflicting)
        send(first)  # redelivered as it was
        out.send(config.labels_topic, value=orjson.dumps(label_record(Label("NEVER-SEEN", True, newest.time))))
        out.send(config.labels_topic, value=orjson.dumps({**label_record(Label(first.transaction_id, True,
                                                                                 newest.time)), "is_fraud": "true"}))
        for tx in after:
            send(tx)
        out.flush()
        records = read_topic(broker.bootstrap, config.decisions_topic,
                             lambda r: {t.transaction_id for t in after} <= set(decisions_by_id(r)))
        dead = read_topic(broker.bootstrap, config.dead_letter_topic, lambda r: len(r) >= 4)
        dead_labels = read_topic(broker.bootstrap, config.labels_dead_letter_topic, lambda r: len(r) >= 2)
        deadline = time.monotonic() + 30
        while service.metrics.unknown_labels._value.get() < 1:
            assert time.monotonic() < deadline, "the unknown label was not counted"
            time.sleep(0.1)
    out.close()
    kinds = {(r.value, dict(r.headers)["error.kind"]) for r in dead}
    assert (b"", b"invalid") in kinds and len(dead) == 4
    tombstone = next(r for r in dead if r.value == b"")
    assert dict(tombstone.headers)["error.tombstone"] == b"true" and dict(tombstone.headers)["trace"] == b"t-1"
    assert tombstone.key == b"card-x"  # the original key and headers travel with it
    by_id = {orjson.loads(r.value)["transaction_id"]: dict(r.headers)["error.kind"] for r in dead if r.value}
    assert by_id == {"OLD": b"late", "AHEAD": b"future", "DUP": b"conflicting duplicate"}
    assert sorted(dict(r.headers)["error.kind"] for r in dead_labels) == [b"invalid", b"invalid"]
    dup = [orjson.loads(r.value) for r in records if orjson.loads(r.value)["transaction_id"] == "DUP"]
    assert len(dup) == 2 and dup[0]["decided_at"] == dup[1]["decided_at"] and dup[0]["score"] == dup[1]["score"]
    stored = stored_rows(config.store_url)
    assert stored["DUP"].amount_cents == 1_000 and "AHEAD" not in stored and "OLD" not in stored
    assert stored["DUP"].decision == dup[0]["decision"]
    assert {t.transaction_id for t in after} <= set(stored)  # every ordinary transaction after them was scored


def test_the_scorer_survives_a_broker_restart(served, small_history, tmp_path):
    """The development broker forgets everything when it restarts (memory storage): the scorer must not
    exit, must make a new producer, see its topics replaced, rejoin, decide every transaction sent once it
    is back, and never commit an offset ahead of an acknowledged decision."""
    registry, _, _ = served
    port = free_port()
    stream = list(transactions_of(small_history.head(2_000)))
    before, after = stream[:1_000], stream[1_000:]
    broker = start_broker(port)
    try:
        config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}")
        with RunningScorer(config, registry) as service:
            out = producer(broker.bootstrap)
            for tx in before:
                out.send(config.transactions_topic, key=tx.card_id.encode(), value=orjson.dumps(transaction_record(tx)))
            out.flush()
            out.close()
            read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(decisions_by_id(r)) >= len(before))
            broker.stop()
            time.sleep(8)
            broker = start_broker(port)
            create_topics(broker.bootstrap, config.topics, partitions=3)
            deadline = time.monotonic() + 60  # back: the scorer sees its topics were replaced, and rejoins
            while service.metrics.topics_replaced._value.get() < 2 or not service.consumer.assignment():
                assert time.monotonic() < deadline, "the scorer did not come back to the restarted broker"
                time.sleep(0.2)
            out = producer(broker.bootstrap)
            for tx in after:
                out.send(config.transactions_topic, key=tx.card_id.encode(), value=orjson.dumps(transaction_record(tx)))
            out.flush()
            out.close()
            records = read_topic(broker.bootstrap, config.decisions_topic,
                                 lambda r: {t.transaction_id for t in after} <= set(decisions_by_id(r)), timeout=120)
            assert service.metrics.producer_renewals._value.get() >= 1
        group = KafkaConsumer(bootstrap_servers=[broker.bootstrap], group_id=config.group_id, enable_auto_commit=False)
        decided_per_partition = Counter(r.partition for r in records)
        for p in range(3):
            committed = group.committed(TopicPartition(config.transactions_topic, p)) or 0
            assert committed <= decided_per_partition[p], (p, committed, decided_per_partition)
        group.close()
    finally:
        broker.stop()


def test_an_operator_sees_the_lag_and_skips_a_partition_with_every_skipped_message_dead_lettered(broker, tmp_path):
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}")
    out = producer(broker.bootstrap)
    for i in range(10):  # one record batch each: the development broker reports a partition's end as the start
        out.send(config.transactions_topic, partition=0, key=f"k{i}".encode(), value=None if i == 2 else b"x%d" % i)
        out.flush()  # of its last batch, plus one
    out.close()
    lag = {(row.topic, row.partition): row for row in operate.group_lag(config)}
    assert lag[(config.transactions_topic, 0)].committed is None and lag[(config.transactions_topic, 0)].lag == 10
    with pytest.raises(ValueError, match="at most the end 10"):
        operate.skip(config, config.transactions_topic, 0, 11)
    assert operate.skip(config, config.transactions_topic, 0, 6) == 6
    dead = sorted(read_topic(broker.bootstrap, config.dead_letter_topic, lambda r: len(r) >= 6),
                  key=lambda r: int(dict(r.headers)["source.offset"]))
    assert [r.key for r in dead] == [b"k0", b"k1", b"k2", b"k3", b"k4", b"k5"]
    assert {dict(r.headers)["error.kind"] for r in dead} == {b"skipped"} and dead[2].value == b""
    row = next(r for r in operate.group_lag(config) if (r.topic, r.partition) == (config.transactions_topic, 0))
    assert (row.committed, row.end, row.lag) == (6, 10, 4)


def test_the_challenger_is_scored_in_the_shadow_on_the_same_features_and_never_decides(
    broker, served, small_history, small_labels, tmp_path
):
    from fraudloop.models.registry import CHALLENGER, alias_version, client

    registry, _, _ = served
    champion = alias_version(registry, CHAMPION)
    shadow = build_model(small_history, small_labels, registry,
                         BuildConfig(21, 7, 7, params=TrainParams(num_boost_round=40)), progress=False)
    assert shadow.model.version != champion  # build_model moved `challenger` to it; `champion` stays
    stream = small_history.iloc[5_000:6_000]
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", model_check_seconds=0.2)
    try:
        with RunningScorer(config, registry) as service:
            send_transactions(broker.bootstrap, config.transactions_topic, stream)
            records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(stream))
            deadline = time.monotonic() + 30
            while service.metrics.shadow_scored._value.get() < len(stream) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        client(registry).delete_registered_model_alias(registry.model_name, CHALLENGER)
    assert {orjson.loads(r.value)["model_version"] for r in records} == {champion}  # the shadow never decides
    assert len(records) == len(stream)
    assert service.metrics.shadow_scored._value.get() == len(stream)
    assert service.metrics.shadow_cpu._value.get() > 0
    assert service.metrics.shadow_version._value.get() == float(shadow.model.version)
    stored = stored_rows(config.store_url)
    store = Store(config.store_url)
    pairs = store.shadow_pairs(shadow.model.version, until=float("inf")).set_index("transaction_id")
    store.close()
    assert set(pairs.index) == set(stream["transaction_id"]) and set(pairs["model_version"]) == {champion}
    features = np.array([orjson.loads(stored[t].features) for t in pairs.index], dtype=float)
    assert np.allclose(pairs["shadow_score"], shadow.booster.predict(features, num_threads=1), rtol=0, atol=1e-12)


def _serve_rules(path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    staged.replace(path)  # whole, as a ConfigMap update or `fraudloop rules apply` writes it


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_rules_decide_a_bad_rules_file_is_refused_and_a_new_version_is_reloaded_mid_stream(
        broker, served, small_history, tmp_path):
    registry, _, _ = served
    stream = small_history.head(3_000)
    parts = [stream.iloc[:1_000], stream.iloc[1_000:2_000], stream.iloc[2_000:]]
    allowed, blocked = stream["card_id"].iloc[0], stream["card_id"].iloc[1]
    terminal = stream["terminal_id"].iloc[2_500]
    v1 = (f'version = "v1"\n[lists]\nallow_cards = ["{allowed}"]\nblock_cards = ["{blocked}"]\n'
          '[[rules]]\nname = "big amount"\naction = "review"\nwhen = "amount >= 150"\n')
    rules_path = tmp_path / "rules.toml"
    _serve_rules(rules_path, v1)
    config = scorer_config(broker.bootstrap, f"sqlite:///{tmp_path / 'scoring.db'}", rules_file=str(rules_path),
                           rules_check_seconds=0.1)
    amount = dict(zip(stream["transaction_id"], stream["amount"], strict=True))
    with RunningScorer(config, registry) as service:
        send_transactions(broker.bootstrap, config.transactions_topic, parts[0])
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 1_000)
        _serve_rules(rules_path, v1.replace('"v1"', '"v2"').replace("amount >= 150", "amount >= 150 and nope"))
        _wait_for(lambda: service.metrics.rules_events.labels("refused")._value.get() == 1)
        assert "unknown name 'nope'" in service.rules_refused and service.rules_version == "v1"
        send_transactions(broker.bootstrap, config.transactions_topic, parts[1])
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= 2_000)
        _serve_rules(rules_path, f'version = "v3"\n[lists]\nblock_terminals = ["{terminal}"]\n')
        _wait_for(lambda: service.rules_version == "v3")
        send_transactions(broker.bootstrap, config.transactions_topic, parts[2])
        records = read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(stream))
    hits = {rule: service.metrics.rule_hits.labels(rule)._value.get()  # every batch counted once stopped
            for rule in ("allow_cards list", "block_cards list", "big amount", "block_terminals list", "model")}
    decided = decisions_by_id(records)
    assert len(decided) == len(stream)
    version = {tx_id: "v1" if i < 2_000 else "v3" for i, tx_id in enumerate(stream["transaction_id"])}
    card = dict(zip(stream["transaction_id"], stream["card_id"], strict=True))
    at = dict(zip(stream["transaction_id"], stream["terminal_id"], strict=True))
    for tx_id, d in decided.items():
        assert d["rules_version"] == version[tx_id]  # the bad file never decided; v3 from the batch after its load
        if version[tx_id] == "v1" and card[tx_id] == allowed:
            expected = ("approve", "allow_cards list")
        elif version[tx_id] == "v1" and card[tx_id] == blocked:
            expected = ("decline", "block_cards list")
        elif version[tx_id] == "v1" and amount[tx_id] >= 150 and d["score"] < 0.7:  # declined by the model first
            expected = ("review", "big amount")
        elif version[tx_id] == "v3" and at[tx_id] == terminal:
            expected = ("decline", "block_terminals list")
        else:  # the model, at the scorer's thresholds (version 1 carries none of its own)
            expected = ("decline" if d["score"] >= 0.7 else "review" if d["score"] >= 0.3 else "approve", "model")
        assert (d["decision"], d["rule"]) == expected, (tx_id, d)
    counted = Counter(d["rule"] for d in decided.values())
    assert all(counted[rule] > 0 for rule in hits) and hits == {rule: counted[rule] for rule in hits}
