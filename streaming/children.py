"""Child processes (broker, scorer, MLflow server, Airflow, load generators) that never outlive their command.

Every long command starts its children with `start` and runs inside `interruptible()`:

- A child runs in a session of its own. A terminal's Ctrl-C then reaches only the command, and the command
  stops its children in order (a scorer before the broker it drains to), not all at once.
- `Child.stop` ends the child's whole process group: SIGTERM, a grace period, then SIGKILL. Airflow's and the
  MLflow server's own workers are in that group.
- Inside `interruptible()`, SIGTERM is a KeyboardInterrupt, as SIGINT is, so the command's `finally` blocks run.
  On the way out, and at exit, every child still running is stopped, with both signals ignored meanwhile:
  a second Ctrl-C cannot cut the clean-up short.

What it cannot cover: a command killed with SIGKILL runs no code. Its children are then left to whoever killed
it, as with any process.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

_RUNNING: list[Child] = []  # started and not yet stopped, oldest first
_LOCK = threading.Lock()


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> int:
        """SIGTERM to the child's process group, up to `grace` seconds for the child, then SIGKILL to whatever
        of the group is left. Returns the child's exit status; safe to call twice."""
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(self.grace)
        _signal_group(self.pid, signal.SIGKILL)  # the leader gone, members of its group may not be
        status = self.process.wait()
        with _LOCK:
            if self in _RUNNING:
                _RUNNING.remove(self)
        return status

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start(command: Sequence[str], *, name: str, grace: float = 10.0, **popen: object) -> Child:
    """`subprocess.Popen(command, **popen)` in a session of its own, stopped by `stop_all` if nothing else stops it."""
    process = subprocess.Popen(list(command), start_new_session=True, **popen)  # type: ignore[call-overload]
    child = Child(name, process, grace)
    with _LOCK:
        _RUNNING.append(child)
    return child


def running() -> list[Child]:
    with _LOCK:
        return list(_RUNNING)


def stop_all() -> None:
    """Stop every child still running, newest first, with SIGINT and SIGTERM ignored until done."""
    masked = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if masked else {}
    try:
        for child in reversed(running()):
            child.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, as a KeyboardInterrupt that knows which (`exit_status`: 128 + the signal's number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the block; every child left is stopped on the way out."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


atexit.register(stop_all)
