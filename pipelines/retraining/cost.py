"""Measure what a piece of work costs: wall seconds, CPU seconds (all threads), peak resident memory."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class Cost:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_wall_seconds": self.wall_seconds, f"{prefix}_cpu_seconds": self.cpu_seconds,
                f"{prefix}_peak_rss_mb": self.peak_rss_mb}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def measure(sample_every: float = 0.02) -> Iterator[Cost]:
    """Fill a Cost for the block; peak memory is sampled, as ru_maxrss only ever reports the process peak."""
    cost = Cost()
    process = psutil.Process()
    peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(sample_every):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    wall, cpu = time.perf_counter(), _cpu()
    sampler.start()
    try:
        yield cost
    finally:
        done.set()
        sampler.join()
        cost.wall_seconds = time.perf_counter() - wall
        cost.cpu_seconds = _cpu() - cpu
        cost.peak_rss_mb = max(peak, process.memory_info().rss) / 2**20
