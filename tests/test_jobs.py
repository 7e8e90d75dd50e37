"""What the DAG tasks read from their Airflow context: the time a run works as of, and what scheduled it."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pandas as pd
from fraudloop.pipelines.jobs import run_as_of, triggered_by_drift

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


def test_retention_exports_first_measures_a_store_by_its_own_newest_data_and_refuses_to_cut_what_the_scorer_reads(
        tmp_path, monkeypatch):
    import pytest
    from fraudloop.models.features import FEATURE_NAMES
    from fraudloop.models.schema import Transaction
    from fraudloop.models.store import DecisionRow, Store
    from fraudloop.pipelines.jobs import MIN_RETENTION_DAYS, prune_store

    url = f"sqlite:///{tmp_path / 'scoring.db'}"
    store = Store(url)
    newest = datetime(2018, 9, 1, tzinfo=UTC).timestamp()  # a simulated stream, years before the wall clock
    store.write([DecisionRow(Transaction(f"t{d}", "C1", "T1", newest - d * 86_400, 100), 0.1, "approve", "1",
                             [0.0] * len(FEATURE_NAMES), newest) for d in range(0, 200, 10)], [])
    store.close()
    monkeypatch.setenv("FRAUDLOOP_OFFLINE_URI", (tmp_path / "offline").as_uri())
    done = prune_store(as_of=RUN_AFTER.timestamp(), keep_days=90, store_url=url)
    assert done["deleted_decisions"] == 10 and done["deleted_before"] == newest - 90 * 86_400  # days 100..190
    from fraudloop.pipelines.jobs import offline_store
    from fraudloop.pipelines.offline.store import DECISIONS

    offline = offline_store()
    exported = pd.concat([pd.read_parquet(offline.path(DECISIONS, d)) for d in offline.days(DECISIONS)])
    assert len(exported) == 20  # every decision the store held, exported before any was deleted
    with pytest.raises(ValueError, match=f"at least {MIN_RETENTION_DAYS:g}"):
        prune_store(as_of=newest, keep_days=7, store_url=url)
