"""Run the project's DAGs for real on one machine: Airflow's own `dag.test()` runner, or a whole Airflow
(`airflow standalone`: api-server, scheduler, dag-processor, triggerer, LocalExecutor) on loopback.

`prepare()` must run before Airflow is first imported (Airflow reads its settings at import).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fraudloop.models.home import first_use_lock
from fraudloop.pipelines import shipped
from fraudloop.streaming import children

DAGS_FOLDER = shipped("dags")


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
    """Create or upgrade the metadata DB of the AIRFLOW_HOME `prepare` set, one process at a time."""
    from airflow.utils.db import initdb

    with first_use_lock(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"):
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


RESULT_MARK = "@@dag-run "


def serve() -> None:
    """Run DAGs on request, one per stdin line `{"dag_id": ..., "conf": {...}}`, until stdin closes.

    Each result is one stdout line starting with RESULT_MARK (Airflow may print other lines). A process of
    its own, so the caller's Ctrl-C never lands inside a task (Airflow would record it as a task failure
    and retry), and the caller can stop it at any time.
    """
    import json
    import sys

    migrate()
    print(RESULT_MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            states = run(request["dag_id"], request.get("conf"))
            print(RESULT_MARK + json.dumps({"states": states}), flush=True)
        except Exception as error:  # reported to the caller, which decides
            print(RESULT_MARK + json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)


class Runner:
    """The caller's side of `serve()`: a child process that runs DAGs on request."""

    def __init__(self, home: Path, log, nice: int = 0) -> None:
        """`nice`: added to the runner's CPU niceness before it starts anything (its tasks' threads inherit it)."""
        import sys

        self.child = children.start(
            [sys.executable, "-c", f"import os; os.nice({int(nice)}); "
                                   "from fraudloop.pipelines import airflow_local as a; "
                                   f"a.prepare(__import__('pathlib').Path({str(home)!r})); a.serve()"],
            name="dag runner", grace=5.0, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ})
        self.process = self.child.process
        self._answer()

    def _answer(self) -> dict:
        import json

        for line in self.process.stdout:
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        raise RuntimeError(f"the DAG runner exited with code {self.process.wait()}")

    def run(self, dag_id: str, conf: dict) -> dict[str, str]:
        import json

        self.process.stdin.write(json.dumps({"dag_id": dag_id, "conf": conf}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise RuntimeError(f"DAG {dag_id}: {answer['error']}")
        return answer["states"]

    def stop(self) -> None:
        """Close its input (a runner between two runs ends by itself), then stop it: SIGTERM, SIGKILL after 5 s."""
        if self.process.poll() is None:
            self.process.stdin.close()
        self.child.stop()


def standalone_env(home: Path, port: int) -> tuple[dict[str, str], str]:
    """The environment of a loopback `airflow standalone` over this project's DAGs, and the admin's password.

    The password is generated once per AIRFLOW_HOME and kept in Airflow's simple-auth-manager file.
    """
    import json
    import secrets

    prepare(home)
    home = home.resolve()
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        passwords.chmod(0o600)
    env = {**os.environ,
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API__HOST": "127.0.0.1",
           "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}
    return env, json.loads(passwords.read_text())["admin"]


def standalone(home: Path, port: int, log) -> children.Child:
    """Start `airflow standalone` on loopback; `stop()` ends it and every component it started (its process group)."""
    import sys

    env, _ = standalone_env(home, port)
    airflow = Path(sys.executable).with_name("airflow")
    env["PATH"] = f"{airflow.parent}{os.pathsep}{env.get('PATH', '')}"  # it starts its components as `airflow ...`
    return children.start([str(airflow), "standalone"], name="airflow standalone", grace=30.0, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
