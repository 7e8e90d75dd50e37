"""The retraining steps as plain functions of plain values: what each Airflow task and `fraudloop` command calls.

Each returns a small JSON-able dict (Airflow passes it on as an XCom; the CLI prints it). Settings not
given come from the environment: FRAUDLOOP_HOME, FRAUDLOOP_STORE_URL, MLFLOW_TRACKING_URI, ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraudloop.models.settings import settings
from fraudloop.models.units import DAY


class NothingToDo(Exception):  # noqa: N818 (not an error: the step's outcome)
    """A step with nothing to work on yet: a fresh home, a store with no decisions, no champion to monitor.

    Not a failure to retry: an Airflow task ends skipped with this reason (`as_task`), the CLI prints it and
    exits 0.
    """


def as_task(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a step as an Airflow task: NothingToDo becomes a skip that shows its reason, never a retry loop."""
    try:
        return step(*args, **kwargs)
    except NothingToDo as reason:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(str(reason)) from None


def _require_champion():
    from fraudloop.models import registry

    reg = _registry()
    version = registry.alias_version(reg, registry.CHAMPION)
    if version is None:
        raise NothingToDo(f"no '{registry.CHAMPION}' version of {reg.model_name} yet: nothing is served to "
                          "monitor (train and promote one first: the retrain DAG, or fraudloop train)")
    return reg, version


def _store_url(store_url: str | None) -> str:
    from fraudloop.models.store import default_url

    return store_url or settings().store_url or default_url()


def _registry():
    from fraudloop.models.registry import RegistryConfig

    return RegistryConfig.from_env()


def training_sets_uri() -> str:
    """Where training sets are written: FRAUDLOOP_TRAINING_SETS_URI (e.g. s3://bucket/training-sets, shared by
    every Airflow worker), else a folder under FRAUDLOOP_HOME."""
    return settings().training_sets


def offline_store():
    from fraudloop.pipelines.offline.store import OfflineStore, default_uri

    return OfflineStore(default_uri())


def export_offline(until: float | None = None, store_url: str | None = None, every_day: bool = False) -> dict:
    """Export the scorer's store into the offline store up to `until` (default: its newest decision): the days that
    are new or may have received rows (`every_day`: checking all; pipelines/offline/export.py)."""
    from fraudloop.models.store import Store
    from fraudloop.pipelines.offline.export import export

    store = Store(_store_url(store_url))
    try:
        newest = store.newest_event_time()
        if newest is None:
            raise NothingToDo(f"the scorer's store ({store.engine.url.render_as_string(hide_password=True)}) holds no "
                              "decisions yet: nothing to export or learn from")
        return export(store, offline_store(), newest if until is None else until, every_day)
    finally:
        store.close()


def build_training_set(as_of: float | None, maturity_days: float = 7.0, store_url: str | None = None,
                       history: str | None = None, out: str | None = None, name: str = "latest",
                       lookback_days: float | None = None, budget_rows: int | None = -1,
                       source: str = "offline") -> dict:
    """From the offline store (default: exported from the scorer's store first, then built out of core by DuckDB
    within `budget_rows`, -1: the default budget, None: every row), from the scorer's store read into memory
    (`source="store"`, the path before the offline store), or from a simulator history folder; `as_of` None means
    the newest data.

    Only the `lookback_days` before `as_of` are read (default: what the default split needs, plus the label
    maturity and a day). Returns the training set's URI, which tasks pass on.
    """
    from fraudloop.pipelines.offline.build import BUDGET_ROWS, build
    from fraudloop.pipelines.retraining import training_set
    from fraudloop.pipelines.retraining.train import BuildConfig, frauds_by_source

    maturity = maturity_days * DAY
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    target = out or f"{training_sets_uri()}/{safe}.parquet"
    if lookback_days is None:
        default = BuildConfig()
        lookback_days = days_needed(default.train_days, default.delay_days, default.test_days, maturity_days)
    if history is None and source == "offline":
        exported = export_offline(as_of, store_url)
        as_of = exported["until"]
        result = build(offline_store(), as_of, maturity, lookback_days * DAY, target,
                       BUDGET_ROWS if budget_rows == -1 else budget_rows)
        return {**result, "exported_days": exported["decision_days"]}
    if history:
        frame = training_set.from_history(Path(history), as_of, maturity)
    elif source == "store":
        frame = training_set.from_store(_store_url(store_url), as_of, maturity, lookback_days * DAY)
    else:
        raise ValueError(f"source must be 'offline' or 'store', got {source!r}")
    uri = training_set.write(frame, target)
    return {"uri": uri, "rows": len(frame), "frauds": int(frame["is_fraud"].sum()),
            "frauds_by_source": frauds_by_source(frame),
            "unknown_rows": int(frame.attrs.get("unknown_rows", 0)),  # blocked, no outcome: left out
            "as_of": as_of, "newest_event": float(frame["event_time"].max())}


def train_challenger(training_set: str, *, train_days: int = 28, delay_days: int = 7, test_days: int = 7,
          maturity_days: float = 7.0, num_boost_round: int = 600, shuffle_labels: bool = False,
          trained_by: str = "fraudloop train", alias: str | None = "challenger", scheduler: str | None = None) -> dict:
    """`scheduler`: a Dask scheduler's address to train on (default FRAUDLOOP_DASK_SCHEDULER; neither: here)."""
    import numpy as np
    from fraudloop.models.training import TrainParams
    from fraudloop.pipelines.retraining import training_set as sets
    from fraudloop.pipelines.retraining.train import BuildConfig, train_challenger

    frame = sets.read(training_set)
    scheduler = scheduler or settings().dask_scheduler or None
    if shuffle_labels and scheduler:
        raise ValueError("shuffle_labels trains on this machine only (the cluster reads the set as written)")
    if shuffle_labels:  # a deliberately worse model, to show the gates hold
        frame = frame.assign(is_fraud=np.random.default_rng(0).permutation(frame["is_fraud"].to_numpy()))
        trained_by += " (shuffled labels)"
    config = BuildConfig(train_days, delay_days, test_days, maturity_days, TrainParams(num_boost_round=num_boost_round))
    result = train_challenger(frame, _registry(), config, alias=alias, trained_by=trained_by,
                              source=sets.location(training_set), scheduler=scheduler)
    return {"version": result.model.version, "run_id": result.model.run_id, **result.split,
            **{k: round(v, 4) for k, v in result.metrics.items()}}


def validate_version(training_set: str, version: str, average_precision_margin: float | None = None,
             decline_precision: float | None = None, review_capacity_per_day: float | None = None) -> dict:
    """The verdict (`passed`, `failed` or `insufficient evidence`) with its metrics, interval and reason; the
    version's thresholds derived from the targets (None: the defaults of models/thresholds.Targets)."""
    from fraudloop.models.thresholds import Targets
    from fraudloop.pipelines.retraining import training_set as sets
    from fraudloop.pipelines.retraining.gates import Gates
    from fraudloop.pipelines.retraining.validate import validate_challenger

    gates = Gates() if average_precision_margin is None else Gates(average_precision_margin=average_precision_margin)
    stated = {"decline_precision": decline_precision, "review_capacity_per_day": review_capacity_per_day}
    targets = Targets(**{k: v for k, v in stated.items() if v is not None})
    return validate_challenger(sets.read(training_set), _registry(), version, gates, targets,
                               store_url=_store_url(None)).as_dict()


def promote_version(version: str, reason: str, actor: str | None = None) -> dict:
    from dataclasses import asdict

    from fraudloop.pipelines.retraining.promote import promote as move

    return asdict(move(_registry(), version, reason, actor))


def reject(version: str, reason: str) -> dict:
    from fraudloop.pipelines.retraining.promote import reject as refuse

    refuse(_registry(), version, reason)
    return {"version": version, "rejected": True, "reason": reason}


def rollback(reason: str, actor: str | None = None) -> dict:
    from dataclasses import asdict

    from fraudloop.pipelines.retraining.promote import rollback as back

    return asdict(back(_registry(), reason, actor))


def check_drift(as_of: float, store_url: str | None = None, source: str = "offline", **settings: float | None) -> dict:
    """Drift and decay of the champion as of `as_of`, from the offline store (exported up to `as_of` first) or,
    `source="store"`, the scorer's store. `settings` are MonitorConfig fields; None or absent means the
    MonitorConfig default, so the DAG, the CLI and the tests share one set of defaults."""
    from dataclasses import replace

    from fraudloop.pipelines.retraining.monitor import MonitorConfig
    from fraudloop.pipelines.retraining.monitor import check_and_record as check

    if source not in ("offline", "store"):
        raise ValueError(f"source must be 'offline' or 'store', got {source!r}")
    config = replace(MonitorConfig(), **{k: v for k, v in settings.items() if v is not None})
    _require_champion()
    offline = None
    if source == "offline":
        export_offline(as_of, store_url)
        offline = offline_store()
    report = check(_store_url(store_url), _registry(), as_of, config, offline=offline)
    return {"as_of": as_of, "retrain": report.retrain, "signal": report.signal, "summary": report.summary,
            "rows": report.rows, "min_rows": report.min_rows, "champion_version": report.champion_version,
            "data_drift": report.data_drift, "score_drift": report.score_drift,
            "performance_decay": report.performance_decay,
            "drifted_features": report.table.loc[report.table["drifted"], "feature"].tolist()}


def days_needed(train_days: float, delay_days: float, test_days: float, maturity_days: float) -> float:
    """Days before `as_of` a training set needs from the store: the split, the label maturity, and a day."""
    return train_days + delay_days + test_days + maturity_days + 1


# The scorer's store keeps what the scorer reads back: its feature state's reach (rebuilt from the store on a start
# or a rebalance: 38 days, the terminals' risk windows and their delay) and a day. Retraining and the monitor read
# the offline store, which keeps everything.
MIN_RETENTION_DAYS = 39.0
RETENTION_DAYS = 45.0


def prune_store(as_of: float, keep_days: float = RETENTION_DAYS, store_url: str | None = None) -> dict:
    """Retention: export into the offline store (so nothing is deleted that it does not hold), then delete decisions
    (and their labels and shadow scores) on transactions more than `keep_days` older than `as_of` or than the
    newest stored transaction, whichever is earlier: a store that runs on a clock of its own (a replayed or
    simulated stream) is measured by its own newest data, never emptied by the wall clock."""
    from fraudloop.models.store import Store

    if keep_days < MIN_RETENTION_DAYS:
        raise ValueError(f"keep_days must be at least {MIN_RETENTION_DAYS:g} (what the scorer's feature state "
                         f"reaches back, rebuilt from the store), got {keep_days:g}")
    exported = export_offline(store_url=store_url)  # NothingToDo on an empty store
    store = Store(_store_url(store_url))
    try:
        newest = store.newest_event_time()
        before = min(as_of, newest if newest is not None else as_of) - keep_days * DAY
        decisions, labels = store.prune(before=before)
    finally:
        store.close()
    return {"as_of": as_of, "keep_days": keep_days, "deleted_before": before, "deleted_decisions": decisions,
            "deleted_labels": labels, "exported_days": exported["decision_days"]}


def record_serving_cost(store_url: str | None = None) -> dict:
    """What the scorer spent serving the champion: CPU milliseconds per 1,000 transactions, as version tags."""
    from fraudloop.models import registry
    from fraudloop.models.store import Store

    reg, version = _require_champion()
    store = Store(_store_url(store_url))
    try:
        served, cpu = store.serving_cost(version)
    finally:
        store.close()
    result = {"version": version, "transactions_served": served,
              "serving_cpu_ms_per_1k": round(cpu / served * 1e6, 2) if served else None}
    if served:
        registry.tag_version(reg, version, {"transactions_served": str(served),
                                            "serving_cpu_ms_per_1k": f"{result['serving_cpu_ms_per_1k']:.2f}"})
    return result


# The Airflow asset drift_monitor updates when drift is confirmed, and retrain is scheduled on.
DRIFT_ASSET = {"name": "card_fraud_drift_confirmed", "uri": "fraudloop://card-fraud/drift-confirmed"}


def utc_seconds(text: str) -> float:
    """An ISO date or time as epoch seconds; one that names no zone is UTC (everywhere in this project)."""
    from datetime import UTC, datetime

    when = datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def run_as_of(context) -> float:
    """Epoch seconds a DAG run works as of: its `as_of` param (UTC when it names no zone), else the triggering
    drift event's, else its time.

    Simulated or replayed data runs on its own clock, so a run can be told the time it works as of.
    """
    if context["params"].get("as_of"):
        return utc_seconds(context["params"]["as_of"])
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            if "as_of" in (event.extra or {}):
                return float(event.extra["as_of"])
    return context["dag_run"].run_after.timestamp()


def triggered_by_drift(context) -> bool:
    """Whether the drift asset scheduled this run (the daily schedule and manual runs did not)."""
    return any((context.get("triggering_asset_events") or {}).values())
