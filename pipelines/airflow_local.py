"""Run the project's DAGs for real on one machine: Airflow's own `dag.test()` runner, SQLite metadata DB.

`prepare()` must run before Airflow is first imported (Airflow reads its settings at import).
"""

from __future__ import annotations

import os
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"


def prepare(home: Path) -> None:
    """A private AIRFLOW_HOME with a SQLite metadata DB and this project's DAG folder."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
    })


def migrate() -> None:
    from airflow.utils.db import initdb

    initdb()


def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def run(dag_id: str, conf: dict | None = None) -> dict[str, str]:
    """One DAG run through Airflow's own runner; the state of each task (success, skipped, failed...)."""
    bag = dag_bag()
    if dag_id not in bag.dags:
        raise ValueError(f"no DAG {dag_id!r} in {DAGS_FOLDER} (found: {', '.join(sorted(bag.dags))})")
    dag_run = bag.dags[dag_id].test(run_conf=conf or {})
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
