"""Volume benchmark: the batch half at an issuer's volume, from the offline store.

Fills an offline store with `days` days at each daily volume, written directly as the export writes it (the SQL
store's insert rate is not what is measured here): a simulated base world (its card structure, fraud rate,
label delays, and decisions of a model trained on it) tiled day by day into as many copies as the volume needs,
each copy with its own card and transaction ids. Then, each in a fresh process so its peak RSS is its own:
- build: the point-in-time training set of a 30-day window within the default row budget (DuckDB);
- train: `fraudloop train` on it (LightGBM, MLflow version, figures, drift reference);
- validate: `fraudloop validate` on it (gates, thresholds, report);
- monitor: two drift checks an hour apart of the trained version as champion (the last day's sample, the matured
  week's): the first calibrates the drift thresholds for the new champion (kept in a tag), the next reuses them;
and once, at the smallest volume, the same training on a Dask LocalCluster (2 workers) against the single machine.
Downsampling's cost in quality is measured on the reference protocol (the folds of `fraudloop benchmark model`):
each training week sampled by card at the rate the budget takes at the largest volume, weighed back, against the
whole week, on the same test weeks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record

VOLUMES = (250_000, 500_000, 1_000_000)
DAYS, WINDOW_DAYS, MATURITY_DAYS = 35, 30, 7.0
SPLIT = {"train_days": 13, "delay_days": 3, "test_days": 6}  # the mature 23 days of a 30-day window
START_DAY = 20_000  # 2024-10-04: any day will do
CURVE_RATES = (0.15, 0.3, 0.5)  # downsampling's cost at these rates too: what it depends on
RESULT = "volume-step-result: "  # the line a step's figures are on (libraries print to stdout too)


def base_world(customers: int = 2_000, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A simulated world of DAYS days as scored rows (features, decisions of a model trained on it) and labels."""
    from fraudloop.models.training import TrainParams, fit, predict
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
    from fraudloop.pipelines.retraining.training_set import history_rows
    from fraudloop.streaming.decide import outcomes

    history = simulate(SimulationConfig(customers=customers, terminals=2 * customers, days=DAYS, seed=seed),
                       progress=False)
    labels = labels_of(history)
    rows = history_rows(history, labels)
    booster = fit(rows, history["is_fraud"].to_numpy(), TrainParams(num_boost_round=100))
    rows["decision"] = outcomes(predict(booster, rows), 0.3, 0.7)
    rows["score"] = predict(booster, rows)
    rows["terminal_id"] = history["terminal_id"].to_numpy()
    rows["amount_cents"] = np.round(history["amount"].to_numpy() * 100).astype(np.int64)
    return rows, labels


def fill(root: str, rows: pd.DataFrame, labels: pd.DataFrame, per_day: int) -> dict:
    """Write DAYS days of about `per_day` decisions, and their labels, into the offline store at `root`."""
    from fraudloop.pipelines.offline.store import DECISIONS, LABELS, OfflineStore

    offline = OfflineStore(root)
    offline.check_schema()
    started = time.perf_counter()
    base_day = (rows["event_time"].to_numpy() // DAY).astype(int)
    first = int(base_day.min())
    label_of = labels.set_index("transaction_id")
    rng = np.random.default_rng(0)
    by_known_day: dict[int, list[pa.Table]] = {}
    written = 0
    for i in range(DAYS):
        day = rows[base_day == first + i]
        copies = max(1, round(per_day / max(len(day), 1)))
        shift = (START_DAY + i - (first + i)) * DAY
        n = len(day) * copies
        replica = pa.array(np.repeat([f"-{r}" for r in range(copies)], len(day)))
        tiled = {c: np.tile(day[c].to_numpy(), copies) for c in (*FEATURE_NAMES, "score", "amount_cents")}
        for name in FEATURE_NAMES:  # copies' values differ (as real traffic's do), or Parquet would store one copy
            tiled[name] = tiled[name] * (1 + 1e-6 * rng.standard_normal(n))
        table = pa.table({
            "transaction_id": pc.binary_join_element_wise(pa.array(np.tile(day["transaction_id"].to_numpy(), copies)),
                                                          replica, ""),
            "card_id": pc.binary_join_element_wise(pa.array(np.tile(day["card_id"].to_numpy(), copies)), replica, ""),
            "terminal_id": pa.array(np.tile(day["terminal_id"].to_numpy(), copies)),
            "event_time": np.tile(day["event_time"].to_numpy() + shift, copies) + np.repeat(np.arange(copies), len(day))
            * 1e-3,
            "amount_cents": tiled["amount_cents"], "score": tiled["score"],
            "decision": pa.array(np.tile(day["decision"].to_numpy(), copies)),
            "rule": pa.array(["model"] * n), "propensity": np.ones(n), "model_version": pa.array(["1"] * n),
            "mode": pa.array(["full"] * n), "decided_at": np.zeros(n),
            **{name: tiled[name] for name in FEATURE_NAMES},
        }).sort_by("event_time")
        table = table.set_column(table.schema.get_field_index("decided_at"), "decided_at",
                                 pc.add(table["event_time"], 0.05))
        written += offline.write_day(DECISIONS, START_DAY + i, [table])
        frauds = day[day["transaction_id"].isin(label_of.index)]
        if len(frauds):
            known = label_of.loc[frauds["transaction_id"], "known_at"].to_numpy() + shift
            ids = np.tile(frauds["transaction_id"].to_numpy(), copies)
            suffix = np.repeat([f"-{r}" for r in range(copies)], len(frauds))
            known_all = np.tile(known, copies) + np.repeat(np.arange(copies), len(frauds)) * 1e-3
            for known_day in np.unique(np.ceil(known_all / DAY).astype(int) - 1):
                mask = (np.ceil(known_all / DAY).astype(int) - 1) == known_day
                by_known_day.setdefault(int(known_day), []).append(pa.table({
                    "transaction_id": pc.binary_join_element_wise(pa.array(ids[mask]), pa.array(suffix[mask]), ""),
                    "known_at": known_all[mask], "is_fraud": np.ones(int(mask.sum()), dtype=bool),
                    "source": pa.array(["chargeback"] * int(mask.sum()))}))
    for known_day, tables in sorted(by_known_day.items()):
        offline.write_day(LABELS, known_day, [pa.concat_tables(tables).sort_by("known_at")])
    return {"decisions": written, "seconds": time.perf_counter() - started,
            "bytes_per_decision": offline.bytes_on_disk(DECISIONS) / written,
            "label_bytes": offline.bytes_on_disk(LABELS)}


def _stage(kind: str, work: str) -> None:
    """One measured step, in this (fresh) process; prints its figures as JSON."""
    import resource

    from fraudloop.pipelines import jobs

    started = time.perf_counter()
    out = (Path(work) / "training-set.parquet").as_uri()
    state = Path(work) / "state.json"
    result: dict = {}
    if kind == "build":
        from fraudloop.pipelines.offline.build import BUDGET_ROWS, build

        as_of = float((START_DAY + DAYS) * DAY)
        built = build(jobs.offline_store(), as_of, MATURITY_DAYS * DAY, WINDOW_DAYS * DAY, out, BUDGET_ROWS)
        result = {k: built[k] for k in ("rows", "frauds", "labelled_rows", "kept_rows", "sample_rate")}
    elif kind == "train":
        trained = jobs.train_challenger(out, maturity_days=MATURITY_DAYS, **SPLIT)
        state.write_text(json.dumps(trained))
        result = {"version": trained["version"], "average_precision": trained["average_precision"]}
    elif kind == "validate":
        verdict = jobs.validate_version(out, json.loads(state.read_text())["version"])
        result = {"status": verdict["status"]}
    elif kind == "monitor":
        from fraudloop.models import registry
        from fraudloop.pipelines.retraining.monitor import MonitorConfig, check_and_record

        reg = registry.RegistryConfig.from_env()
        registry.set_alias(reg, registry.CHAMPION, json.loads(state.read_text())["version"])
        as_of = float((START_DAY + DAYS) * DAY)
        report = check_and_record("", reg, as_of, MonitorConfig(), offline=jobs.offline_store())
        first = time.perf_counter() - started  # with the one-off calibration of a new champion (then a tag)
        check_and_record("", reg, as_of + 3600, MonitorConfig(), offline=jobs.offline_store())
        result = {"rows": report.rows, "data_drift": report.data_drift, "first_seconds": first,
                  "next_seconds": time.perf_counter() - started - first,
                  "recent_average_precision": report.recent_average_precision}
    elif kind == "dask":
        from distributed import Client, LocalCluster
        from fraudloop.models.metrics import evaluate
        from fraudloop.models.training import TrainParams, predict
        from fraudloop.pipelines.retraining import training_set
        from fraudloop.pipelines.retraining.distributed import fit_on_cluster
        from fraudloop.pipelines.retraining.train import BuildConfig, training_split

        frame = training_set.read(out)
        split, feedback_from, _, test, _ = training_split(frame, BuildConfig(**SPLIT, maturity_days=MATURITY_DAYS))
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            booster = fit_on_cluster(out, split, feedback_from, TrainParams(), client)
        holdout = frame[test]
        result = {"average_precision": evaluate(
            holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(), holdout["is_fraud"].to_numpy(),
            predict(booster, holdout), holdout["weight"].to_numpy())["average_precision"]}
    result.update(seconds=time.perf_counter() - started,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("\n" + RESULT + json.dumps(result), flush=True)  # on a line of its own: a library may leave one open


def measure(kind: str, work: Path) -> dict:
    env = {**os.environ, "FRAUDLOOP_HOME": str(work / "home"), "FRAUDLOOP_OFFLINE_URI": (work / "offline").as_uri()}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", f"from fraudloop.pipelines.benchmarks.volume import _stage; "
                                                 f"_stage({kind!r}, {str(work)!r})"],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"the {kind} step failed:\n{done.stderr[-3000:]}")
    marked = [line.split(RESULT, 1)[1] for line in done.stdout.splitlines() if RESULT in line]
    if not marked:
        raise RuntimeError(f"the {kind} step printed no figures:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(marked[-1])


def downsampled_quality(rates: tuple[float, ...], seed: int = 0) -> list[dict]:
    """The reference protocol's test weeks, trained on each whole training week and on the week sampled by card at
    each rate (every fraud kept, the rest weighed 1 / rate), as the build samples (the protocol's history has no
    blocks or feedback, which the build keeps too): mean test AP and CP@100."""
    from fraudloop.models.metrics import evaluate
    from fraudloop.models.training import TrainParams, fit, predict
    from fraudloop.pipelines.benchmarks.model import published_test_folds
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
    from fraudloop.pipelines.offline.build import card_fraction
    from fraudloop.pipelines.retraining.protocol import split_masks
    from fraudloop.pipelines.retraining.training_set import history_rows

    history = simulate(SimulationConfig(seed=seed), progress=False)
    rows = history_rows(history, labels_of(history))
    time_, cards, fraud = rows["event_time"].to_numpy(), rows["card_id"].to_numpy(), history["is_fraud"].to_numpy()
    unique, index = np.unique(cards, return_inverse=True)
    place = card_fraction(unique)[index]
    folds = [split_masks(time_, cards, fraud, split) for split in published_test_folds()]

    def quality(rate: float) -> dict:
        found = []
        for train, test in folds:
            keep = train & (fraud | (place < rate))
            weight = np.where(fraud, 1.0, 1 / rate)[keep] if rate < 1 else None
            booster = fit(rows[keep], fraud[keep], TrainParams(), weight)
            found.append(evaluate(time_[test], cards[test], fraud[test], predict(booster, rows[test])))
        return {k: float(np.mean([m[k] for m in found])) for k in ("average_precision", "card_precision_at_100")}

    full = quality(1.0)
    results = []
    for rate in rates:
        sampled = quality(rate)
        genuine = np.mean([(train & ~fraud & (place < rate)).sum() for train, _ in folds])
        results.append({"rate": rate, "folds": len(folds), "genuine_rows_a_week": float(genuine), "full": full,
                        "sampled": sampled,
                        "ap_delta": sampled["average_precision"] - full["average_precision"],
                        "cp_delta": sampled["card_precision_at_100"] - full["card_precision_at_100"]})
    return results


@dataclass
class Result:
    volumes: dict = field(default_factory=dict)  # decisions a day -> fill, build, train, validate
    peak_rss_mb: dict = field(default_factory=dict)
    retrain_seconds: dict = field(default_factory=dict)
    downsampled_ap_delta: float = float("nan")
    dask_parity_ap_delta: float = float("nan")
    downsampling: list = field(default_factory=list)  # the budget's rate at the largest volume first, then others
    dask: dict = field(default_factory=dict)
    seconds: float = 0.0


def run(work: Path, volumes: tuple[int, ...] = VOLUMES, progress: bool = True) -> Result:
    result = Result()
    started = time.perf_counter()
    rows, labels = base_world()
    for volume in volumes:
        folder = work / f"v{volume}"
        shutil.rmtree(folder, ignore_errors=True)
        entry = {"fill": fill((folder / "offline").as_uri(), rows, labels, volume)}
        if progress:
            print(f"{volume:,} a day: {entry['fill']['decisions']:,} decisions written in "
                  f"{entry['fill']['seconds']:.0f} s", flush=True)
        for kind in ("build", "train", "validate", "monitor"):
            entry[kind] = measure(kind, folder)
            if progress:
                print(f"  {kind}: {entry[kind]}", flush=True)
        if volume == min(volumes):
            result.dask = measure("dask", folder)
            result.dask_parity_ap_delta = result.dask["average_precision"] - entry["train"]["average_precision"]
            if progress:
                print(f"  dask: {result.dask}", flush=True)
        result.volumes[str(volume)] = entry
        result.peak_rss_mb[str(volume)] = max(entry[k]["peak_rss_mb"] for k in ("build", "train", "validate",
                                                                               "monitor"))
        result.retrain_seconds[str(volume)] = sum(entry[k]["seconds"] for k in ("build", "train", "validate"))
        shutil.rmtree(folder / "offline", ignore_errors=True)
    rate = result.volumes[str(max(volumes))]["build"]["sample_rate"]
    result.downsampling = downsampled_quality((rate, *(r for r in CURVE_RATES if r > rate)))
    result.downsampled_ap_delta = result.downsampling[0]["ap_delta"]
    result.seconds = time.perf_counter() - started
    return result


def to_markdown(result: Result, command: str) -> str:
    volumes = list(result.volumes)
    first, last = volumes[0], volumes[-1]
    growth = result.peak_rss_mb[last] / result.peak_rss_mb[first] - 1
    d = result.downsampling[0]
    lines = [
        "# Volume: the batch half at an issuer's volume (measured)",
        "",
        f"Command: `{command}`. Offline stores of {DAYS} days at each daily volume (a simulated world of 2,000 "
        "cards tiled into copies with their own ids: its fraud rate, card structure, label delays and a model's "
        f"decisions), a {WINDOW_DAYS:g}-day window as of the end (split {SPLIT['train_days']} + "
        f"{SPLIT['delay_days']} + {SPLIT['test_days']} mature days, {MATURITY_DAYS:g} days of maturity), the default "
        "row budget (2,000,000); the monitor's sample of at most 50,000 rows a window. Each step in a fresh "
        "process: its peak RSS is its own. Retrain seconds: build + train + validate.",
        "",
        "| decisions a day | stored | bytes on disk a decision | fill s | build: rows (rate), s, MB | "
        "train: s, MB | validate: s, MB | monitor: rows, first s, next s, MB | retrain s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, e in result.volumes.items():
        b, t, val, m = e["build"], e["train"], e["validate"], e["monitor"]
        lines.append(f"| {int(v):,} | {e['fill']['decisions']:,} | {e['fill']['bytes_per_decision']:.0f} | "
                     f"{e['fill']['seconds']:.0f} | {b['rows']:,} ({b['sample_rate']:.3f}), {b['seconds']:.0f}, "
                     f"{b['peak_rss_mb']:,.0f} | {t['seconds']:.0f}, {t['peak_rss_mb']:,.0f} | {val['seconds']:.0f}, "
                     f"{val['peak_rss_mb']:,.0f} | {m['rows']:,}, {m['first_seconds']:.0f}, {m['next_seconds']:.0f}, "
                     f"{m['peak_rss_mb']:,.0f} | "
                     f"{result.retrain_seconds[v]:.0f} | {result.peak_rss_mb[v]:,.0f} |")
    lines += [
        "",
        "| key | target | measured |",
        "|---|---|---|",
        f"| peak_rss_mb at {int(last):,} a day | <= 4,000 | {result.peak_rss_mb[last]:,.0f} |",
        f"| peak RSS growth {int(first):,} -> {int(last):,} a day | <= 10 % | {growth:+.1%} |",
        f"| retrain_seconds at {int(last):,} a day | <= 900 | {result.retrain_seconds[last]:.0f} |",
        f"| downsampled_ap_delta (reference protocol, rate {d['rate']:.4f}) | >= -0.005 | "
        f"{result.downsampled_ap_delta:+.4f} |",
        f"| dask_parity_ap_delta (2 workers, at {int(first):,} a day) | abs <= 0.005 | "
        f"{result.dask_parity_ap_delta:+.4f} |",
        "",
        f"Downsampling on the reference protocol (`fraudloop benchmark model`'s {d['folds']} test weeks, AP "
        f"{d['full']['average_precision']:.4f} and CP@100 {d['full']['card_precision_at_100']:.4f} trained on the "
        "whole weeks): each training week sampled by card, every fraud kept, the rest weighed back. The first rate is "
        f"the one the budget takes at {int(last):,} a day; the loss follows the genuine rows left, not the rate "
        "(at the default budget the protocol's weeks, about 67,000 rows, are not sampled at all).",
        "",
        "| rate | genuine rows a week kept | AP | AP delta | CP@100 | CP@100 delta |",
        "|---|---|---|---|---|---|",
        *(f"| {e['rate']:.3f} | {e['genuine_rows_a_week']:,.0f} | {e['sampled']['average_precision']:.4f} | "
          f"{e['ap_delta']:+.4f} | {e['sampled']['card_precision_at_100']:.4f} | {e['cp_delta']:+.4f} |"
          for e in result.downsampling),
        "",
        f"At {int(last):,} a day the budget keeps {result.volumes[last]['build']['rows']:,} rows of which "
        f"{result.volumes[last]['build']['rows'] - result.volumes[last]['build']['kept_rows']:,} sampled genuine "
        "ones.",
        "",
        f"Dask: the {int(first):,}-a-day set trained by 2 LocalCluster workers in {result.dask['seconds']:.0f} s "
        f"(peak {result.dask['peak_rss_mb']:,.0f} MB in the client process), AP {result.dask['average_precision']:.4f} "
        f"against {result.volumes[first]['train']['average_precision']:.4f} on one machine.",
        "",
        f"Whole run: {result.seconds / 60:.0f} min on this machine (2 cores).",
    ]
    return "\n".join(lines) + "\n"


def record(result: Result, path: Path, command: str) -> None:
    write_record(path, to_markdown(result, command), asdict(result))
