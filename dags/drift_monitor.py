"""Drift monitor: recent traffic vs the champion's reference; confirmed drift triggers `retrain`."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, CronTriggerTimetable, Param, dag, task
from fraudloop.pipelines.jobs import DRIFT_ASSET, run_as_of

DOC = """
### Watch the champion for drift and decay

Hourly:

1. **check_drift**: mean feature PSI of the last `window_days` of scored traffic against the champion's
   reference (its holdout), and PSI of its scores, each against a threshold calibrated for the window's size
   to `false_alarm_rate` and no lower than a material shift (`material_mean_psi`, `material_score_psi`); a
   window too small to detect `detectable_psi` gets no verdict; and its Average
   Precision on transactions whose labels have matured. Both windows are read from the offline store (the
   scorer's store exported into it first), as a uniform sample by card of at most 50,000 rows each, whatever the
   volume. A report (table, plots, verdict) is logged to MLflow (`card-fraud-monitoring`).
2. **record_serving_cost**: CPU time per 1,000 transactions the scorer spent on the champion, as version tags.
3. **drift_confirmed** → **signal_retrain**: only when the verdict says so, and at most once per
   `cooldown_days` for one champion, the `card_fraud_drift_confirmed` asset is updated, which schedules
   `retrain` with this run's `as_of`.

Before any champion exists (a fresh home), or while the scorer's store holds no decisions, the run ends
**skipped**, with the reason in the tasks' log.
"""
DRIFT_CONFIRMED = Asset(**DRIFT_ASSET)


@dag(
    dag_id="drift_monitor",
    schedule=CronTriggerTimetable("@hourly", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fraudloop", "monitoring"],
    doc_md=DOC,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "as_of": Param("", type="string", description="ISO time to check as of; empty: the run's time"),
        # Empty (null): the default of pipelines/retraining/monitor.py MonitorConfig, the one source of defaults.
        "window_days": Param(None, type=["null", "number"], minimum=0.01, description="recent traffic compared"),
        "maturity_days": Param(None, type=["null", "number"], minimum=0, description="label delay to wait for"),
        "false_alarm_rate": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                  description="per check: drift thresholds are calibrated to this"),
        "detectable_psi": Param(None, type=["null", "number"], minimum=0,
                                description="mean PSI a window must be able to detect (sets the minimum window)"),
        "material_mean_psi": Param(None, type=["null", "number"], minimum=0,
                                   description="mean feature PSI below this is never drift"),
        "material_score_psi": Param(None, type=["null", "number"], minimum=0,
                                    description="score PSI below this is never drift"),
        "max_relative_ap_drop": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                      description="decay: labelled AP below holdout AP x (1 - this)"),
        "cooldown_days": Param(None, type=["null", "number"], minimum=0,
                               description="a drift episode signals at most one retrain per this long"),
    },
)
def drift_monitor() -> None:
    @task(doc_md="Data, score and performance drift of the champion; the report goes to MLflow.")
    def check_drift(**context) -> dict:
        from fraudloop.pipelines import jobs

        settings = {k: v for k, v in context["params"].items() if k != "as_of"}
        return jobs.as_task(jobs.check_drift, as_of=run_as_of(context), **settings)

    @task(doc_md="Serving CPU per 1,000 transactions, from the scorer's store, onto the champion's version.")
    def record_serving_cost() -> dict:
        from fraudloop.pipelines import jobs

        return jobs.as_task(jobs.record_serving_cost)

    @task.short_circuit(doc_md="Go on only when drift is confirmed and this episode has not signalled a retrain "
                               "within the cooldown.")
    def drift_confirmed(report: dict) -> bool:
        return report["signal"]

    @task(outlets=[DRIFT_CONFIRMED], doc_md="Update the drift asset: this schedules `retrain`.")
    def signal_retrain(report: dict, **context) -> None:
        context["outlet_events"][DRIFT_CONFIRMED].extra = {"as_of": report["as_of"], "summary": report["summary"]}

    report = check_drift()
    record_serving_cost()
    drift_confirmed(report) >> signal_retrain(report)


drift_monitor()
