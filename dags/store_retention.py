"""Store retention: the scorer's store keeps only the days the scorer reads back; the offline store keeps the rest."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, task
from fraudloop.pipelines.jobs import run_as_of

DOC = """
### Bound the scorer's store

Daily: **prune** exports the scorer's store into the offline store (day-partitioned Parquet at
`FRAUDLOOP_OFFLINE_URI`, which keeps everything: what `retrain` and `drift_monitor` read), then deletes decisions on
transactions more than `keep_days` older than the run's `as_of` or the newest stored transaction, whichever is
earlier (a replayed or simulated stream keeps its own clock: the wall clock never empties its store), with their
labels and shadow scores. The default (`pipelines/jobs.py` RETENTION_DAYS, 45) outlasts what the scorer reads back
(its feature state's 38 days, rebuilt from the store on a start or a rebalance), so the scorer's store stays
bounded in size whatever the history kept.

On a store with no decisions yet the task ends **skipped**, with the reason in its log.
"""


@dag(
    dag_id="store_retention",
    schedule=CronTriggerTimetable("@daily", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fraudloop", "maintenance"],
    doc_md=DOC,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "as_of": Param("", type="string", description="ISO time to prune as of; empty: the run's time"),
        "keep_days": Param(None, type=["null", "number"], minimum=0,
                           description="days of decisions kept; empty: RETENTION_DAYS (at least MIN_RETENTION_DAYS)"),
    },
)
def store_retention() -> None:
    @task(doc_md="Delete decisions older than `keep_days`, and their labels; returns the counts.")
    def prune(**context) -> dict:
        from fraudloop.pipelines import jobs

        keep = context["params"]["keep_days"]
        return jobs.as_task(jobs.prune_store, run_as_of(context), **({"keep_days": keep} if keep is not None else {}))

    prune()


store_retention()
