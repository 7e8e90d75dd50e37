"""The Airflow DAGs, run for real: Airflow's own dag.test() on a SQLite metadata DB, a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from fraudloop.models.metrics import evaluate
from fraudloop.models.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryConfig,
    alias_version,
    client,
    load_version,
    tag_version,
    version_info,
)
from fraudloop.models.store import Store
from fraudloop.models.thresholds import from_tags
from fraudloop.models.training import predict
from fraudloop.models.units import DAY
from fraudloop.pipelines import airflow_local, jobs
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining import promote
from fraudloop.pipelines.retraining.training_set import history_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    airflow_local.prepare(tmp_path_factory.mktemp("airflow"))
    airflow_local.migrate()
    return airflow_local


@pytest.fixture
def reg(registry: RegistryConfig, monkeypatch) -> RegistryConfig:
    """The private MLflow store; FRAUDLOOP_HOME also holds the scorer's store the jobs read."""
    monkeypatch.setenv("FRAUDLOOP_ACTOR", "test")
    return registry


def iso(epoch: float) -> str:
    return pd.Timestamp(epoch, unit="s", tz="UTC").isoformat()


def fill_store(history: pd.DataFrame, booster=None, version: str = "history") -> pd.DataFrame:
    """What the scorer would have persisted for this history (features by the shared code)."""
    labels = labels_of(history)
    rows = history_rows(history, labels)
    store = Store("")
    backfill(store, history, rows, labels, booster, version)
    store.close()
    return rows


def test_dags_import_without_errors_and_parse_without_heavy_imports(airflow, tmp_path):
    bag = airflow.dag_bag()
    assert bag.import_errors == {}
    assert set(bag.dags) == {"retrain", "drift_monitor", "store_retention"}
    for dag in bag.dags.values():
        assert dag.doc_md and "fraudloop" in dag.tags
        assert all(t.doc_md for t in dag.tasks)
    assert bag.dags["retrain"].default_args["retries"] >= 1
    drift_asset = bag.dags["drift_monitor"].get_task("signal_retrain").outlets[0]
    assert drift_asset.name == jobs.DRIFT_ASSET["name"]
    assert drift_asset in bag.dags["retrain"].timetable.asset_condition.objects  # retrain is scheduled on it
    # Parsing (what the scheduler repeats) loads no data or ML library: they are imported inside the tasks.
    probe = ("import sys, pathlib; from fraudloop.pipelines import airflow_local as a; "
             "a.prepare(pathlib.Path(sys.argv[1])); "
             "bag = a.dag_bag(); print(sorted(bag.dags), [m for m in ('pandas', 'numpy', 'lightgbm', 'mlflow', "
             "'sklearn') if m in sys.modules])")
    parsed = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "airflow")], capture_output=True, text=True,
                            timeout=300)
    expected = "['drift_monitor', 'retrain', 'store_retention'] []"
    assert parsed.stdout.strip().splitlines()[-1] == expected, parsed.stderr[-2000:]


def test_retrain_promotes_a_better_challenger_and_keeps_the_champion_against_a_worse_one(airflow, reg):
    history = simulate(SimulationConfig(customers=400, terminals=800, days=56, seed=11, label_delay_days=2,
                                        label_delay_sigma=0.5), progress=False)
    fill_store(history)
    as_of = iso(float(history["time"].max()))
    conf = {"as_of": as_of, "train_days": 21, "delay_days": 0, "test_days": 7, "maturity_days": 4.0}
    # A weak first champion: two days of data, a handful of trees.
    first = jobs.build_training_set(as_of=float(history["time"].max()), maturity_days=4.0)
    weak = jobs.train_challenger(first["uri"], train_days=2, delay_days=0, test_days=7, maturity_days=4.0,
                                 num_boost_round=5)
    assert jobs.validate_version(first["uri"], weak["version"])["passed"]
    jobs.promote_version(weak["version"], reason="first model")

    states = airflow.run("retrain", {**conf, "num_boost_round": 200})
    assert states["promote"] == "success" and states["reject"] == "skipped"
    better = alias_version(reg, CHAMPION)
    assert better != weak["version"]
    tags = version_info(reg, better).tags
    assert tags["validation_status"] == "passed" and tags["promoted_by"].startswith("airflow retrain")
    assert float(tags["validation_average_precision"]) > float(tags["champion_average_precision"])
    assert alias_version(reg, promote.PREVIOUS_CHAMPION) == weak["version"]

    states = airflow.run("retrain", {**conf, "num_boost_round": 200, "shuffle_labels": True})
    assert states["reject"] == "success" and states["promote"] == "skipped"
    assert alias_version(reg, CHAMPION) == better  # the champion stays
    worse = alias_version(reg, CHALLENGER)
    tags = version_info(reg, worse).tags
    assert tags["validation_status"] == "failed" and "AP" in tags["rejection_reason"]
    assert "FAILED" in version_info(reg, worse).description
    with pytest.raises(ValueError, match="validation status is 'failed'"):
        jobs.promote_version(worse, reason="by hand")

    mlflow_client = client(reg)
    run_id = version_info(reg, worse).run_id
    assert {a.path for a in mlflow_client.list_artifacts(run_id, "validation")} == {
        "validation/report.md", "validation/comparison.png", "validation/verdict.json", "validation/thresholds.json"}
    # the promoted version carries the thresholds its validation derived from the DAG's targets; the scorer reads them
    derived = mlflow.artifacts.load_dict(f"runs:/{version_info(reg, better).run_id}/validation/thresholds.json")
    assert from_tags(version_info(reg, better).tags) == (derived["review"], derived["decline"])
    assert derived["targets"]["review_capacity_per_day"] == 100 and derived["table"]
    jobs.rollback(reason="test rollback")
    assert alias_version(reg, CHAMPION) == weak["version"]
    # A pass is evidence against the champion it was measured against, not against whoever is champion now.
    tag_version(reg, worse, {"validation_status": "passed", "validated_against": better})
    with pytest.raises(ValueError, match=f"validated against version {better}, and the champion is now version "
                                         f"{weak['version']}; validate it again"):
        jobs.promote_version(worse, reason="stale pass")
    moves = promote.history(reg)
    assert [m["action"] for m in moves] == ["rollback", "promote", "promote"]


DRIFT = SimulationConfig(customers=2_000, terminals=4_000, days=80, seed=3, drift_day=60, label_delay_days=2,
                         label_delay_sigma=0.5)


def test_drift_is_flagged_within_two_days_and_retraining_recovers_the_average_precision(airflow, reg):
    history = simulate(DRIFT, progress=False)
    start = float(history["time"].min()) // DAY * DAY
    day = (history["time"].to_numpy() - start) // DAY
    labels = labels_of(history)
    rows = history_rows(history, labels)
    # The champion as of day 55, scoring every day after (as the scorer would have, and stored).
    pre = pd.DataFrame(rows[day < 55])
    pre_store = Store("")
    backfill(pre_store, history[day < 55], pre, labels[labels["known_at"] <= start + 55 * DAY])
    pre_store.close()
    first = jobs.build_training_set(as_of=start + 55 * DAY, maturity_days=4.0)
    champion = jobs.train_challenger(first["uri"], train_days=21, delay_days=0, test_days=3, maturity_days=4.0,
                          num_boost_round=300)
    assert jobs.validate_version(first["uri"], champion["version"])["passed"]
    jobs.promote_version(champion["version"], reason="first model")
    booster = load_version(reg, champion["version"])
    later = day >= 55
    store = Store("")
    backfill(store, history[later], rows[later], labels, booster, champion["version"])
    store.close()

    flagged = {}
    for d in range(57, 63):
        states = airflow.run("drift_monitor", {"as_of": iso(start + d * DAY), "window_days": 1.0,
                                               "maturity_days": 4.0})
        flagged[d] = states["signal_retrain"] == "success"
        assert states["check_drift"] == "success"
    assert not any(flagged[d] for d in range(57, 61))  # no false alarm before the drift
    first_flag = min(d for d, hit in flagged.items() if hit)
    assert first_flag - DRIFT.drift_day <= 2, flagged  # flagged within two days of the injected drift
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:  # what schedules retrain: the asset event, carrying the time it is as of
        extras = [event.extra for event in session.query(AssetEvent).all()]
    assert any(extra.get("as_of") == start + first_flag * DAY for extra in extras)

    retrain_day = 70
    started = time.perf_counter()
    states = airflow.run("retrain", {"as_of": iso(start + retrain_day * DAY), "train_days": 21, "delay_days": 0,
                                     "test_days": 3, "maturity_days": 4.0, "num_boost_round": 300})
    assert states["promote"] == "success", states
    retrain_seconds = time.perf_counter() - started
    new_version = alias_version(reg, CHAMPION)
    new = load_version(reg, new_version)
    cost = version_info(reg, new_version).tags

    def ap(model, lo: int, hi: int) -> float:
        m = (day >= lo) & (day < hi)
        return evaluate(history["time"].to_numpy()[m], history["card_id"].to_numpy()[m],
                        history["is_fraud"].to_numpy()[m], predict(model, rows[m]))["average_precision"]

    before, old_after, new_after = ap(booster, 50, 60), ap(booster, retrain_day, 80), ap(new, retrain_day, 80)
    recovered = (new_after - old_after) / (before - old_after)
    print(f"\nAP before drift {before:.3f}; after drift, old model {old_after:.3f}, retrained {new_after:.3f}; "
          f"recovered {recovered:.0%} of the loss; drift flagged on day {first_flag} (drift day {DRIFT.drift_day}); "
          f"retrain DAG run {retrain_seconds:.0f} s, training {cost['training_cpu_seconds']} CPU s, "
          f"{cost['training_peak_rss_mb']} MB peak RSS, {cost['train_rows']} training rows")
    assert before - old_after > 0.2  # the drift really hurt
    assert recovered > 0.5  # most of the loss is recovered
    assert np.isfinite(recovered)
