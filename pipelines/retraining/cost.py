"""Measure what a piece of work costs: wall seconds, CPU seconds (all threads), peak resident memory; and what a
model will cost to serve."""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psutil

log = logging.getLogger(__name__)


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


def predict_cost(booster, rows: np.ndarray, repetitions: int = 5, batch: int = 500) -> dict[str, float]:
    """What a version will cost to serve, measured where it is trained, for the review UI to show beside its
    quality: CPU µs of this thread a row in batches of `batch` through LightGBM (`predict_us_per_row_lightgbm`) and
    compiled as the scorer serves it (`predict_us_per_row_compiled`; the compiled object lands in the cache the
    scorer reads, so on the same machine it serves compiled at once), medians of interleaved repetitions; the
    model's size (`model_kb`). Thread CPU rather than wall time: other work on the machine does not count, but a
    process that just trained reads higher than a fresh one (benchmarks/compression.md times in a fresh one), so
    the figures compare versions trained alike. A model that cannot be compiled gets no compiled figure (and a
    log line): the scorer would serve it through LightGBM."""
    from fraudloop.streaming import compiled

    figures = {"model_kb": len(booster.model_to_string()) / 1024}
    chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)][:20]
    if not chunks:
        return figures
    predictors = {"lightgbm": lambda chunk: booster.predict(chunk, num_threads=1)}
    job = None
    try:
        job = compiled.start(booster)
        if job.process is not None:
            job.process.wait(timeout=600)
        model = job.result(booster)
        predictors["compiled"] = lambda chunk: model.predict(chunk, n_jobs=1)
    except Exception as error:  # noqa: BLE001 - a cost figure is not worth a failed training
        if job is not None:
            job.cancel()
        log.warning("serving cost measured through LightGBM only: the model could not be compiled (%s)", error)
    timings: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repetitions):
        for name, call in predictors.items():
            started = time.thread_time()
            for chunk in chunks:
                call(chunk)
            timings[name].append((time.thread_time() - started) / sum(len(c) for c in chunks) * 1e6)
    figures.update({f"predict_us_per_row_{name}": float(np.median(values)) for name, values in timings.items()})
    return figures
