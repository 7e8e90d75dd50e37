"""Children never outlive their command: each long command, interrupted mid-run as a terminal's Ctrl-C (SIGINT to
its process group) or a supervisor's SIGTERM (to its process alone) would, exits non-zero within seconds, and none
of the processes it had started is left running (streaming/children.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from fraudloop.streaming.broker import free_port

pytestmark = pytest.mark.integration


def _command_lines(process: psutil.Process) -> list[str]:
    found = []
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie, meanwhile
            found.append(" ".join(child.cmdline()))
    return found


def _alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline())[:120])
        except psutil.Error:
            pass
    return left


def interrupt(args: list[str], ready: str, sig: signal.Signals, home, settle: float = 2.0,
              timeout: float = 300.0) -> tuple[int, float, list[str], int]:
    """Run `fraudloop ARGS` until one of its descendants' command lines contains `ready`, then `settle` seconds
    more; send `sig`. Returns the exit status, the seconds it took to exit, what was left running of the
    processes it had started, and how many those were."""
    env = {**os.environ, "FRAUDLOOP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = home / "command.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        command = subprocess.Popen([sys.executable, "-m", "fraudloop.pipelines.cli", *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        root = psutil.Process(command.pid)
        deadline = time.monotonic() + timeout
        while not any(ready in line for line in _command_lines(root)):
            assert command.poll() is None, f"exited early ({command.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{ready!r} never started: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(settle)
        started = root.children(recursive=True)
        if sig == signal.SIGINT:
            os.killpg(command.pid, sig)  # a terminal's Ctrl-C reaches its foreground process group
        else:
            os.kill(command.pid, sig)  # a supervisor signals the process it started
        sent = time.monotonic()
        status = command.wait(timeout=90)
        took = time.monotonic() - sent
        time.sleep(1.0)
        return status, took, _alive(started), len(started)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()


def _ports() -> list[str]:
    return [str(free_port()) for _ in range(2)]


CASES = {
    "broker": (lambda: ["broker", "--port", _ports()[0]], "broker --listener-url", signal.SIGTERM),
    "airflow": (lambda: ["airflow", "--port", _ports()[0]], "airflow scheduler", signal.SIGINT),
    "demo": (lambda: ["demo", "--ui-port", (p := _ports())[0], "--review-port", p[1], "--customers", "600",
                      "--terminals", "1200", "--history-days", "30", "--stream-days", "5", "--drift-after-days", "2"],
             "fraudloop.pipelines.cli score", signal.SIGTERM),
    "benchmark streaming": (lambda: ["benchmark", "streaming", "--messages", "3000", "--repetitions", "1",
                                     "--sweeps", "1", "--point-seconds", "2"], "fraudloop.streaming.worker",
                            signal.SIGINT),
    "benchmark scale-out": (lambda: ["benchmark", "scale-out", "--transactions", "20000", "--paced", "2000",
                                     "--repetitions", "2"], "fraudloop.streaming.worker", signal.SIGTERM),
    "benchmark overload": (lambda: ["benchmark", "overload", "--repetitions", "1", "--slo-rate", "1000"],
                           "fraudloop.streaming.worker", signal.SIGTERM),  # its load generator gets no signal
    "benchmark volume": (lambda: ["benchmark", "volume", "--volumes", "100000"], "fraudloop.pipelines.benchmarks",
                         signal.SIGTERM),
    "soak": (lambda: ["soak", "--minutes", "5"], "fraudloop.pipelines.cli score", signal.SIGTERM),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_interrupted_command_stops_every_child_it_started(name, tmp_path):
    args, ready, sig = CASES[name]
    status, took, left, started = interrupt(args(), ready, sig, tmp_path / "home")
    print(f"{name}: {sig.name} stopped it and its {started} processes in {took:.1f} s (exit status {status})")
    assert started >= 1
    assert left == [], f"{name}: still running after it exited: {left}"
    assert status == 128 + sig, f"{name}: exit status {status}"
    assert took < 45, f"{name}: took {took:.1f} s to stop"  # within the slowest child's grace (Airflow: 30 s)
