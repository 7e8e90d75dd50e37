"""Overload benchmark: a burst through the real broker and the real scorer, with shedding (streaming/overload.py) and
without, interleaved with the pass-through (kafka-python and the broker alone, as in the streaming benchmark) under
the same load: what the machine does after a burst, the scorer aside.

Two shapes of burst, each between a calm before and a calm after at half the scorer's SLO rate (recorded by
`fraudloop benchmark streaming` in benchmarks/streaming.json, or given):
- burst: `burst_seconds` at twice the SLO rate (the streaming issue's test);
- surge: the same messages all at once (an upstream outage releasing its queue), far above what the scorer can
  take, so that shedding has something to do.

For each run: p99 end-to-end of the messages sent during the burst, and the seconds from the burst's last message
sent until the scorer is back under the SLO (the first whole second after it from which the p99 of every message
sent later is under 50 ms). A run's phases are told apart by send order (the broker's timestamps), not by the clock.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import platform
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.benchmarks.streaming import PASS, SCORER, SLO_MS, Bench, Run, _range, _say, prepare, spread
from fraudloop.streaming.broker import start_broker

SHAPES = ("burst", "surge")
SHEDDING, FULL_ONLY = "shedding", "no shedding"
CONSUMERS = (PASS, SHEDDING, FULL_ONLY)
RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "streaming.json"


def recorded_slo_rate(path: Path = RECORDED) -> float:
    try:
        return float(json.loads(path.read_text())["slo_rate_scorer"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"no scorer SLO rate recorded in {path.name} ({error}); give one with --slo-rate") from None


def schedule(shape: str, slo_rate: float, burst_seconds: float, calm_seconds: tuple[float, float]) -> list:
    """(count, seconds) segments: calm at half the SLO rate, the burst (2x for its seconds, or all at once), calm."""
    before, after = calm_seconds
    calm, burst = slo_rate / 2, 2 * slo_rate
    return [(int(calm * before), before), (int(burst * burst_seconds), burst_seconds if shape == "burst" else 0.0),
            (int(calm * after), after)]


def phases(run: Run, segments: Sequence[tuple[int, float]]) -> np.ndarray:
    """Each message's segment (0 before, 1 burst, 2 after), by its rank in send order."""
    ranks = np.empty(len(run.sent_ms), dtype=int)
    ranks[np.argsort(run.sent_ms, kind="stable")] = np.arange(len(run.sent_ms))
    return np.searchsorted(np.cumsum([count for count, _ in segments]), ranks, side="right")


def recovery_seconds(sent_ms: np.ndarray, latencies_ms: np.ndarray, end_ms: float, limit_ms: float = SLO_MS,
                     step_seconds: float = 1.0, least_seconds: float = 5.0) -> float | None:
    """The first whole `step_seconds` after `end_ms` (send time) from which the p99 of every message sent later is
    under `limit_ms`: 0 if it already is from `end_ms`; None if it is not before the run's last `least_seconds`. The
    p99 of the rest of the run, not of short bins: at half the SLO rate a 1-second bin misses 50 ms now and then
    without any burst (a stall of the broker or the client), and would call that not recovered."""
    last_ms = float(sent_ms.max())
    step = 0
    while end_ms + step * step_seconds * 1000 <= last_ms - least_seconds * 1000:
        later = sent_ms >= end_ms + step * step_seconds * 1000
        if np.percentile(latencies_ms[later], 99) < limit_ms:
            return float(step * step_seconds)
        step += 1
    return None


def measure(run: Run, segments: Sequence[tuple[int, float]]) -> dict:
    phase = phases(run, segments)
    burst = phase == 1
    end_ms = float(run.sent_ms[burst].max())
    before = (phase == 0) & (run.sent_ms >= run.sent_ms.min() + 2_000)  # the first 2 s warm the consumer up
    modes = Counter(mode for mode, in_burst in zip(run.service_modes or ["none"] * len(burst), burst, strict=True)
                    if in_burst)
    calm_p99 = float(np.percentile(run.latencies_ms[before], 99))
    return {
        "before_p99_ms": calm_p99,
        "burst_p99_ms": float(np.percentile(run.latencies_ms[burst], 99)),
        "burst_max_ms": float(run.latencies_ms[burst].max()),
        "recover_seconds": recovery_seconds(run.sent_ms, run.latencies_ms, end_ms),
        # back to where it was before the burst (when the calm itself misses the SLO, the first figure cannot say)
        "recover_to_calm_seconds": recovery_seconds(run.sent_ms, run.latencies_ms, end_ms, max(SLO_MS, calm_p99)),
        "burst_sent_seconds": (end_ms - float(run.sent_ms[burst].min())) / 1000,
        "burst_modes": {mode: count / int(burst.sum()) for mode, count in sorted(modes.items())},
        "messages": run.messages,
    }


def run(repetitions: int = 3, slo_rate: float | None = None, burst_seconds: float = 30.0,
        calm_seconds: tuple[float, float] = (10.0, 20.0), seed: int = 0) -> dict:
    started = time.perf_counter()
    slo_rate = slo_rate or recorded_slo_rate()
    shapes = {shape: schedule(shape, slo_rate, burst_seconds, calm_seconds) for shape in SHAPES}
    setup = prepare(max(sum(c for c, _ in segments) for segments in shapes.values()), seed)
    results: dict[str, dict[str, list[dict]]] = {shape: {variant: [] for variant in CONSUMERS} for shape in SHAPES}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, setup.work, ignore_errors=True)
        broker = cleanup.enter_context(start_broker())
        bench = Bench(setup.work, broker.bootstrap, broker.process.pid, setup.registry, setup.warm_store,
                      setup.messages)
        for rep in range(repetitions):
            for shape, segments in shapes.items():
                for variant in CONSUMERS[rep % 3:] + CONSUMERS[:rep % 3]:  # each first in turn
                    settings = {} if variant == PASS else {"overload_shedding": variant == SHEDDING}
                    result = measure(bench.scheduled(PASS if variant == PASS else SCORER, segments, **settings),
                                     segments)
                    results[shape][variant].append(result)
                    _say(f"{rep + 1}/{repetitions} {shape}, {variant}: p99 {result['burst_p99_ms']:,.0f} ms in the "
                         f"burst, back under {SLO_MS:.0f} ms after {result['recover_seconds']} s; modes "
                         f"{result['burst_modes']}")
    return {"slo_rate": slo_rate, "burst_seconds": burst_seconds, "calm_seconds": list(calm_seconds),
            "schedules": shapes, "results": results, "repetitions": repetitions,
            "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"}


def _recovered(values: Sequence[float | None]) -> list[float]:
    """Recovery seconds with a run that never recovered counted as infinitely slow (so it shows in a median)."""
    return [np.inf if v is None else v for v in values]


def _recovery_spread(values: Sequence[float | None]) -> dict:
    """Median and range; None for a run that did not recover (JSON has no infinity)."""
    recovered = _recovered(values)
    median, low, high = float(np.median(recovered)), float(min(recovered)), float(max(recovered))
    return {"median": None if median == np.inf else median,
            "range": [None if v == np.inf else v for v in (low, high)]}


def to_json(outcome: dict, command: str) -> dict:
    figures = {}
    for shape, variants in outcome["results"].items():
        figures[shape] = {}
        for variant, runs in variants.items():
            figures[shape][variant] = {
                **spread([r["burst_p99_ms"] for r in runs], "burst_p99_ms"),
                **{f"{key}_{part}": value for key in ("recover_seconds", "recover_to_calm_seconds")
                   for part, value in _recovery_spread([r[key] for r in runs]).items()},
                **spread([r["before_p99_ms"] for r in runs], "before_p99_ms"),
                "runs": runs,
            }
    return {"command": command, "slo_ms": SLO_MS, "slo_rate_scorer": outcome["slo_rate"],
            "burst_msg_per_s": 2 * outcome["slo_rate"], "calm_msg_per_s": outcome["slo_rate"] / 2,
            "burst_seconds": outcome["burst_seconds"], "calm_seconds": outcome["calm_seconds"],
            "repetitions": outcome["repetitions"], **figures, "seconds": outcome["seconds"],
            "machine": outcome["machine"]}


def to_markdown(outcome: dict, command: str) -> str:
    data = to_json(outcome, command)
    rows = ["| burst | consumer | p99 before, ms | p99 in the burst, ms | worst in the burst, ms | seconds to p99 < "
            "50 ms after it | seconds to the p99 before | burst scored lean |", "|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        for variant in CONSUMERS:
            runs = outcome["results"][shape][variant]
            recovered = _recovered([r["recover_seconds"] for r in runs])
            to_calm = _recovered([r["recover_to_calm_seconds"] for r in runs])
            lean = [r["burst_modes"].get("lean", 0.0) for r in runs]
            scorer = f"scorer, {variant}" if variant != PASS else PASS
            rows.append(f"| {shape} | {scorer} | {_range([r['before_p99_ms'] for r in runs], ',.1f')} | "
                        f"{_range([r['burst_p99_ms'] for r in runs], ',.1f')} | "
                        f"{_range([r['burst_max_ms'] for r in runs], ',.0f')} | {_range(recovered, '.0f')} | "
                        f"{_range(to_calm, '.0f')} | {_range(lean, '.0%') if variant != PASS else '–'} |")
    slo, burst, baseline = outcome["slo_rate"], data["burst"][SHEDDING], data["burst"][PASS]
    return "\n".join([
        "# Overload: a burst with and without shedding (real broker, interleaved)",
        "",
        f"Command: `{command}` ({outcome['seconds']:.0f} s in all; {outcome['machine']}; development broker on "
        "loopback, 3 partitions). Figures are medians over the repetitions, with the range in brackets; a run that "
        "was not back under the SLO by its end counts as never (inf).",
        "",
        f"The load: {outcome['calm_seconds'][0]:.0f} s at {slo / 2:,.0f} msg/s (half the scorer's SLO rate, "
        f"{slo:,.0f} msg/s: benchmarks/streaming.json's when this ran, unless given; `--slo-rate {slo:g}` repeats it), "
        f"the burst, then {outcome['calm_seconds'][1]:.0f} s at {slo / 2:,.0f} msg/s again. *burst*: "
        f"{outcome['burst_seconds']:.0f} s at {2 * slo:,.0f} msg/s (twice "
        f"the SLO rate); *surge*: the same {int(2 * slo * outcome['burst_seconds']):,} messages sent at once. "
        f"{outcome['repetitions']} repetitions, the pass-through and the two scorers each first in turn. *Seconds to "
        "p99 < 50 ms*: from "
        "the burst's last message sent to the first whole second after it from which the p99 of every message sent "
        "later is under 50 ms (inf: not within the run's last 5 s); *to the p99 before*: the same, under the larger "
        "of 50 ms and the run's p99 before the burst (where the calm itself misses the SLO, the first cannot tell a "
        "queue from the machine's stalls). *Scored lean*: the share of the burst's messages scored in lean mode "
        "(streaming/overload.py).",
        "",
        *rows,
        "",
        "Target: after a 2x burst, p99 back under 50 ms within 10 s of its end, with shedding. Measured (median): "
        + _seconds(burst["recover_seconds_median"]) + " to under 50 ms, " + _seconds(
            burst["recover_to_calm_seconds_median"]) + " to the p99 before the burst; the pass-through, under the same "
        "load: " + _seconds(baseline["recover_seconds_median"]) + " and " + _seconds(
            baseline["recover_to_calm_seconds_median"]) + ".",
        "",
    ])


def _seconds(value: float | None) -> str:
    return "not within the run" if value is None else f"{value:.0f} s"


def record(outcome: dict, path: Path, command: str) -> None:
    write_record(path, to_markdown(outcome, command), to_json(outcome, command))
