"""Child processes (broker, scorer, MLflow server, Airflow, load generators) that never outlive their command.

Every long command starts its children with `start` and runs inside `interruptible()`:

- A child runs in a session of its own. A terminal's Ctrl-C then reaches only the command, and the command
  stops its children in order (a scorer before the broker it drains to), not all at once.
- `Child.stop` ends the child's whole process group: SIGTERM, a grace period, then SIGKILL; and then every
  descendant seen at the start of the stop that is still running, wherever it went (Airflow runs each task in a
  process group of its own).
- Inside `interruptible()`, SIGTERM is a KeyboardInterrupt, as SIGINT is, so the command's `finally` blocks run.
  On the way out, and at exit, every child still running is stopped, and so are the command's multiprocessing
  children (load generators, process pools), with both signals ignored meanwhile: a second Ctrl-C cannot cut
  that short.

What it cannot cover: a command killed with SIGKILL runs no code. Its children are then left to whoever killed
it, as with any process.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psutil

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
        of the group and of its descendants is left. Returns the child's exit status; a second call only returns
        it (the group's id may belong to another process by then)."""
        with _LOCK:
            if self not in _RUNNING:
                return self.process.wait()
        descendants = _descendants(self.pid)
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(self.grace)
        _signal_group(self.pid, signal.SIGKILL)  # the leader gone, members of its group may not be
        with suppress(ProcessLookupError):
            self.process.kill()  # a leader that left its own group
        for process in descendants:
            with suppress(psutil.Error):
                process.kill()  # psutil checks it is the same process (its start time), never a recycled pid
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


def stop_all(kept: tuple[set[int], set[int]] = (set(), set())) -> None:
    """Stop every child still running, newest first, every multiprocessing child, and then any other process this
    one started and left (a scorer's worker started by a library's thread), with SIGINT and SIGTERM ignored until
    done; but those `kept` (`_started()` of an outer caller: ids of children, pids of processes)."""
    masked = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if masked else {}
    try:
        for child in reversed(running()):
            if id(child) not in kept[0]:
                child.stop()
        for process in multiprocessing.active_children():
            if process.pid in kept[1]:
                continue
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        left = [p for p in _descendants(os.getpid()) if p.pid not in kept[1]]
        for process in left:
            with suppress(psutil.Error):
                process.terminate()
        for process in psutil.wait_procs(left, timeout=3)[1]:
            with suppress(psutil.Error):
                process.kill()
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
    """SIGINT and SIGTERM raise `Interrupted` in the block; every child the block started and left running is
    stopped on the way out (those running before it are not: a test's broker outlives a command run in-process)."""
    kept = _started()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        stop_all(kept)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _started() -> tuple[set[int], set[int]]:
    return {id(child) for child in running()}, {p.pid for p in _descendants(os.getpid())}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


atexit.register(stop_all)
