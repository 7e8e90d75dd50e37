"""The command line as a user meets it: help everywhere, one-line errors for bad input, a real run."""

import argparse
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from fraudloop.pipelines.cli import parser


def _commands(command: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every subcommand path of the parser, found in the parser itself."""
    found = [list(prefix)] if prefix else []
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


COMMANDS = _commands(parser())


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fraudloop.pipelines.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command, capsys):
    assert len(COMMANDS) >= 10
    with pytest.raises(SystemExit) as done:
        parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    assert "usage: fraudloop" in capsys.readouterr().out


def test_a_missing_history_is_one_clear_line(tmp_path):
    result = run("train", "--history", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "error:" in result.stderr and "transactions.parquet not found" in result.stderr


def test_a_bad_simulation_option_is_one_clear_line(tmp_path):
    result = run("simulate", "--out", str(tmp_path), "--customers", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "fraudloop simulate: error: customers must be positive, got 0"


def test_simulate_then_train_registers_a_version(tmp_path):
    env = {**os.environ, "FRAUDLOOP_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = tmp_path / "history"
    made = run("simulate", "--out", str(out), "--customers", "300", "--terminals", "600", "--days", "50", "--quiet")
    assert made.returncode == 0, made.stderr
    assert len(pd.read_parquet(out / "transactions.parquet")) > 20_000
    trained = run("train", "--history", str(out), "--train-days", "14", "--num-boost-round", "100", "--promote",
                  env=env)
    assert trained.returncode == 0, trained.stderr
    assert '"version": "1"' in trained.stdout and '"to_version": "1"' in trained.stdout
    verdict = re.search(r"version 1 vs no champion: PASSED\n  holdout: ([\d,]+) frauds on ([\d,]+) of ([\d,]+) cards",
                        trained.stdout)
    assert verdict and int(verdict.group(1).replace(",", "")) >= 30, trained.stdout  # the evidence, printed
    assert re.search(r"  AP 0\.\d{4}, CP@100 0\.\d{4}", trained.stdout) and "  reason: passed: holdout passed" in \
        trained.stdout
    again = run("train", "--history", str(out), "--train-days", "14", "--num-boost-round", "100", "--promote",
                env=env)  # the same data and settings: no evidence that it is better
    assert again.returncode == 2 and "version 2 vs champion v1: FAILED" in again.stdout
    assert "AP difference +0.0000, 95% interval [+0.0000, +0.0000]" in again.stdout
    assert again.stderr.strip().splitlines()[-1] == ("fraudloop train: error: version 2 was not promoted (failed); "
                                                     "the champion stays")
    rollback = run("rollback", "--reason", "nothing before it", env=env)
    assert rollback.returncode == 2 and rollback.stderr.strip() == (
        "fraudloop rollback: error: no 'previous_champion' alias on card-fraud: nothing to roll back to")


def test_a_bad_time_is_one_clear_line():
    result = run("training-set", "--as-of", "yesterday")
    assert result.returncode == 2 and result.stderr.strip().startswith("fraudloop training-set: error: --as-of")


def test_a_bad_budget_and_an_empty_store_are_one_clear_line(tmp_path):
    result = run("training-set", "--budget-rows", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "fraudloop training-set: error: --budget-rows must be at least 1, got 0"
    env = {**os.environ, "FRAUDLOOP_HOME": str(tmp_path / "home")}
    result = run("export", env=env)
    assert result.returncode == 0  # nothing to do is not a failure (a fresh home)
    said = result.stderr.strip()
    assert said.startswith("fraudloop export: nothing to do: the scorer's store (sqlite:///") and "\n" not in said
    assert said.endswith("holds no decisions yet: nothing to export or learn from")
