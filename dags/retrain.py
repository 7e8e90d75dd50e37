"""Retrain: build a point-in-time training set, train a challenger, validate it, promote or reject it."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from fraudloop.pipelines.jobs import DRIFT_ASSET, run_as_of

DOC = """
### Retrain the card-fraud model

Daily, and whenever `drift_monitor` confirms drift (the `card_fraud_drift_confirmed` asset):

1. **build_training_set**: the scorer's store exported into the offline store (day-partitioned Parquet at
   `FRAUDLOOP_OFFLINE_URI`: the new days and the newest two), then the decisions (feature values used at scoring
   time) joined with the labels known at `as_of`, out of core by DuckDB; transactions younger than the label
   maturity are held out, but for those with an analyst's verdict or a cardholder's answer (feedback: known at
   once). Past the row budget (2,000,000) genuine traffic is sampled by card and weighed back.
2. **train_challenger**: LightGBM on a time-ordered split; a new MLflow version with alias `challenger`. When
   drift scheduled the run, the split has no gap before the holdout: the newest mature days, the drifted
   ones, are trained on as early as labels allow. The young feedback trains too, but for the newest two days'
   (the feedback holdout).
3. **validate**: challenger and champion on the same holdout; evidence minimums, floors, and a paired
   bootstrap interval of their AP difference whose lower bound must clear the margin (`pipelines/retraining/gates.py`);
   a challenger the holdout does not show better may still pass on the feedback holdout, with the holdout's
   floors held.
   The verdict is `passed`, `failed` or `insufficient evidence`; the report, plot and verdict go to the
   version in the MLflow UI.
4. **decide** → **promote** (move `champion`, keep `previous_champion`) or **reject** (champion stays; a
   holdout too small to tell the models apart is rejected as `insufficient evidence`, not failed or retried).

On a home whose store holds no decisions yet the run ends **skipped**, with the reason in the first task's log,
never a failure to retry.

Every task is a function in `pipelines/jobs.py`; `fraudloop <command>` runs the same step by hand.
Settings: `FRAUDLOOP_*` environment variables (store, MLflow) and the params below.
"""
DRIFT_CONFIRMED = Asset(**DRIFT_ASSET)


@dag(
    dag_id="retrain",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"), assets=[DRIFT_CONFIRMED]),
    catchup=False,
    max_active_runs=1,
    tags=["fraudloop", "training"],
    doc_md=DOC,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "as_of": Param("", type="string", description="ISO time the training set is as of; empty: the run's time"),
        "train_days": Param(28, type="integer", minimum=1, description="days of mature labels trained on"),
        "delay_days": Param(7, type="integer", minimum=0, description="gap between training and holdout"),
        "test_days": Param(7, type="integer", minimum=1, description="holdout days"),
        "maturity_days": Param(7.0, type="number", minimum=0, description="label delay to wait for"),
        "num_boost_round": Param(600, type="integer", minimum=1, description="LightGBM boosting rounds"),
        "average_precision_margin": Param(None, type=["null", "number"],
                                          description="the AP difference's lower bound must exceed this; "
                                                      "empty: the gates' default (pipelines/retraining/gates.py)"),
        "decline_precision": Param(0.8, type="number", exclusiveMinimum=0, maximum=1,
                                   description="decline where the holdout's precision is at least this"),
        "review_capacity_per_day": Param(100.0, type="number", minimum=0,
                                         description="reviews a day the analysts can work"),
        "shuffle_labels": Param(False, type="boolean", description="sabotage: train on shuffled labels (tests)"),
    },
)
def retrain() -> None:
    @task(doc_md="Training set as of `as_of`, point-in-time correct, written as Parquet to "
                 "`FRAUDLOOP_TRAINING_SETS_URI`; returns its URI (never a local path: workers may not share a disk).")
    def build_training_set(**context) -> str:
        from fraudloop.pipelines import jobs

        p = context["params"]
        lookback = jobs.days_needed(p["train_days"], p["delay_days"], p["test_days"], p["maturity_days"])
        return jobs.as_task(jobs.build_training_set, as_of=run_as_of(context), maturity_days=p["maturity_days"],
                            name=context["run_id"], lookback_days=lookback)["uri"]

    @task(doc_md="Train and register a challenger (alias `challenger`); returns its version. A run scheduled by "
                 "drift trains without the gap before the holdout, so the newest mature (drifted) days are learnt.")
    def train_challenger(training_set: str, **context) -> str:
        from fraudloop.pipelines import jobs

        p = context["params"]
        delay = 0 if jobs.triggered_by_drift(context) else p["delay_days"]
        return jobs.train_challenger(training_set, train_days=p["train_days"], delay_days=delay,
                          test_days=p["test_days"], maturity_days=p["maturity_days"],
                          num_boost_round=p["num_boost_round"], shuffle_labels=p["shuffle_labels"],
                          trained_by=f"airflow retrain {context['run_id']}")["version"]

    @task(doc_md="Challenger vs champion on the challenger's holdout; the verdict is recorded in MLflow.")
    def validate(training_set: str, version: str, **context) -> dict:
        from fraudloop.pipelines import jobs

        p = context["params"]
        return jobs.validate_version(training_set, version, average_precision_margin=p["average_precision_margin"],
                             decline_precision=p["decline_precision"],
                             review_capacity_per_day=p["review_capacity_per_day"])

    @task.branch(doc_md="Promote only a challenger that passed validation.")
    def decide(verdict: dict) -> str:
        return "promote" if verdict["status"] == "passed" else "reject"

    @task(doc_md="Move `champion` to the challenger; the old champion becomes `previous_champion`.")
    def promote(verdict: dict, **context) -> dict:
        from fraudloop.pipelines import jobs

        return jobs.promote_version(verdict["version"], reason=verdict["summary"],
                                    actor=f"airflow retrain {context['run_id']}")

    @task(doc_md="Record why the challenger was not promoted; the champion stays.")
    def reject(verdict: dict) -> None:
        from fraudloop.pipelines import jobs

        jobs.reject(verdict["version"], reason=verdict["summary"])

    training_set = build_training_set()
    verdict = validate(training_set, train_challenger(training_set))
    decide(verdict) >> [promote(verdict), reject(verdict)]


retrain()
