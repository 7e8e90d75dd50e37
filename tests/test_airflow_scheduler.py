"""The DAGs under a real Airflow: `airflow standalone` (api-server, scheduler, dag-processor, triggerer,
LocalExecutor) over this project's dags/ folder. drift_monitor flags drift, its asset event schedules retrain
through the scheduler (not dag.test()), and retrain promotes the challenger with the DAG's default settings. On an
empty home, the three DAGs triggered at once end skipped, and the stores their tasks created at once stay usable.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from fraudloop.models.registry import CHAMPION, RegistryConfig, alias_version, load_version, version_info
from fraudloop.models.store import Store
from fraudloop.models.units import DAY
from fraudloop.pipelines import airflow_local, jobs
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining.training_set import history_rows
from fraudloop.streaming.broker import free_port

pytestmark = pytest.mark.integration

WORLD = SimulationConfig(customers=800, terminals=1_600, days=100, seed=3, drift_day=60, label_delay_days=2,
                         label_delay_sigma=0.5)


class Api:
    """Airflow's REST API (v2) as the admin."""

    def __init__(self, port: int, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        answer = self._call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)
        self.token = answer["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if auth else {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body)

    def patch(self, path: str, body: dict) -> dict:
        return self._call("PATCH", path, body)


def wait_for(what: str, check, timeout: float, log_path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"{what} within {timeout:.0f} s; Airflow's log ends:\n{log_path.read_text()[-4000:]}")


@pytest.fixture
def world(registry: RegistryConfig):
    """A champion trained before the drift, and the store as the scorer would have filled it until day 100."""
    history = simulate(WORLD, progress=False)
    start = float(history["time"].min()) // DAY * DAY
    day = (history["time"].to_numpy() - start) // DAY
    labels = labels_of(history)
    rows = history_rows(history, labels)
    before = day < 55
    store = Store("")
    backfill(store, history[before], rows[before], labels[labels["known_at"] <= start + 55 * DAY])
    store.close()
    first = jobs.build_training_set(as_of=start + 55 * DAY)  # the DAG's default split and maturity
    champion = jobs.train_challenger(first["uri"])
    assert jobs.validate_version(first["uri"], champion["version"])["passed"]
    jobs.promote_version(champion["version"], reason="first model")
    store = Store("")
    backfill(store, history[~before], rows[~before], labels, load_version(registry, champion["version"]),
             champion["version"])
    store.close()
    return start, champion["version"]


@contextmanager
def airflow(tmp_path, dag_ids: tuple[str, ...]) -> Iterator[tuple[Api, Callable, Path]]:
    """A running `airflow standalone` with `dag_ids` parsed and unpaused: its API, a `finished(dag_id, run_id)`
    check (the run's final state, or None) and its log's path."""
    port = free_port()
    home = tmp_path / "airflow"
    _, password = airflow_local.standalone_env(home, port)
    log_path = tmp_path / "standalone.log"
    with open(log_path, "ab") as log, airflow_local.standalone(home, port, log):
        api = wait_for("Airflow answers", lambda: Api(port, password), 300, log_path)
        wait_for("the DAGs are parsed", lambda: {d["dag_id"] for d in api.get("/api/v2/dags")["dags"]}
                 >= set(dag_ids), 180, log_path)
        for dag_id in dag_ids:
            api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})

        def finished(dag_id: str, run_id: str) -> str | None:
            state = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        yield api, finished, log_path


def test_on_an_empty_home_the_three_dags_end_skipped_with_their_reason(registry, tmp_path):
    dag_ids = ("drift_monitor", "retrain", "store_retention")
    with airflow(tmp_path, dag_ids) as (api, finished, log_path):
        runs = {dag_id: api.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
                for dag_id in dag_ids}  # at once: their first tasks create the stores together
        for dag_id, run_id in runs.items():
            assert wait_for(f"{dag_id} finishes", lambda d=dag_id, r=run_id: finished(d, r), 600, log_path) == "success"
            tasks = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
            assert {t["state"] for t in tasks} == {"skipped"}, (dag_id, tasks)
            assert all(t["try_number"] <= 1 for t in tasks), tasks  # skipped, never retried
    assert alias_version(registry, CHAMPION) is None  # the MLflow store the tasks created at once is usable
    assert Store("").newest_event_time() is None


def test_drift_monitor_schedules_retrain_through_the_scheduler_and_it_promotes(world, registry, tmp_path):
    start, champion = world
    with airflow(tmp_path, ("drift_monitor", "retrain")) as (api, finished, log_path):
        as_of = pd.Timestamp(start + WORLD.days * DAY, unit="s", tz="UTC").isoformat()
        run = api.post("/api/v2/dags/drift_monitor/dagRuns", {"logical_date": None, "conf": {"as_of": as_of}})

        assert wait_for("drift_monitor finishes", lambda: finished("drift_monitor", run["dag_run_id"]), 600,
                        log_path) == "success"
        tasks = {t["task_id"]: t["state"] for t in api.get(
            f"/api/v2/dags/drift_monitor/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]}
        assert tasks["signal_retrain"] == "success", tasks

        def asset_run() -> dict | None:
            runs = api.get("/api/v2/dags/retrain/dagRuns")["dag_runs"]
            return next((r for r in runs if r["run_type"] == "asset_triggered"), None)

        retrain = wait_for("the drift asset schedules retrain", asset_run, 180, log_path)
        assert wait_for("retrain finishes", lambda: finished("retrain", retrain["dag_run_id"]), 900,
                        log_path) == "success"

    promoted = alias_version(registry, CHAMPION)
    assert promoted != champion
    tags = version_info(registry, promoted).tags
    assert tags["validation_status"] == "passed" and tags["promoted_by"].startswith("airflow retrain")
    assert tags["validated_against"] == champion and float(tags["validation_ap_difference"].split()[0]) > 0
    assert tags["training_set"].startswith("file://")  # tasks passed a URI, not a path
