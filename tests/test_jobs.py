"""What the DAG tasks read from their Airflow context: the time a run works as of, and what scheduled it."""

from datetime import UTC, datetime
from types import SimpleNamespace

from pipelines.jobs import run_as_of, triggered_by_drift

RUN_AFTER = datetime(2026, 12, 1, 5, tzinfo=UTC)


def context(as_of: str = "", events: dict | None = None) -> dict:
    return {"params": {"as_of": as_of}, "triggering_asset_events": events or {},
            "dag_run": SimpleNamespace(run_after=RUN_AFTER)}


def test_a_run_works_as_of_its_param_in_utc_else_the_drift_event_else_its_time():
    assert run_as_of(context("2018-09-01")) == datetime(2018, 9, 1, tzinfo=UTC).timestamp()  # no zone: UTC
    assert run_as_of(context("2018-09-01T02:00:00+02:00")) == datetime(2018, 9, 1, tzinfo=UTC).timestamp()
    drift = {"asset": [SimpleNamespace(extra={"as_of": 1_500_000_000.0})]}
    assert run_as_of(context(events=drift)) == 1_500_000_000.0 and triggered_by_drift(context(events=drift))
    assert run_as_of(context()) == RUN_AFTER.timestamp() and not triggered_by_drift(context())
