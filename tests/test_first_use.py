"""A fresh home touched by several processes at the same instant: every one of them succeeds, and the stores they
made stay usable. MLflow creates its SQLite tables unguarded on first use; two processes doing it at once used to
leave a half-migrated file that failed every later command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# drift creates the MLflow store, export the scorer's: two of each at once
COMMANDS = {"drift": "no 'champion' version of card-fraud yet", "export": "the scorer's store ("}
REPETITIONS = 3


def at_once(home) -> list[tuple[str, subprocess.CompletedProcess]]:
    env = {**os.environ, "FRAUDLOOP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = [(name, subprocess.Popen([sys.executable, "-m", "fraudloop.pipelines.cli", name], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for name in [*COMMANDS, *COMMANDS]]
    finished = [(name, p, p.communicate(timeout=300)) for name, p in started]  # never a full pipe
    return [(name, subprocess.CompletedProcess(p.args, p.returncode, *output)) for name, p, output in finished]


def test_processes_starting_together_on_a_fresh_home_all_succeed_and_say_there_is_nothing_to_do(tmp_path):
    for repetition in range(REPETITIONS):
        home = tmp_path / f"home{repetition}"
        for name, result in [*at_once(home), *at_once(home)]:  # the second round finds the stores made
            last = result.stderr.strip().splitlines()[-1]
            assert result.returncode == 0, result.stderr[-3000:]
            assert last.startswith(f"fraudloop {name}: nothing to do: {COMMANDS[name]}"), last
        assert (home / "mlflow.db").exists() and (home / "scoring.db").exists()
