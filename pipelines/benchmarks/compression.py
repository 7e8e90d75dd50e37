"""Compressed models on the reference protocol: what smaller models give up in quality and buy in serving cost.

Each variant is trained on the same four validation folds and four test folds as `fraudloop benchmark model`
(pipelines/benchmarks/model.py: the handbook's protocol, folds disjoint), and measured for what serving pays:
µs a row compiled with lleaves (as the scorer serves it) in batches of 500 (a backlog) and of 20 (a quiet
stream), µs a row through LightGBM, the model text's size and the compiled object's. Timings are interleaved
across the variants, medians of the repetitions.

The default is chosen on the validation folds only: among the variants on the Pareto front of validation AP
against compiled µs a row, the cheapest whose AP is not clearly below the best's (the paired per-fold difference
within two standard errors, the same rule `fraudloop benchmark model` uses for ideas). The test folds report.
"""

from __future__ import annotations

import multiprocessing
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES, compute_features
from fraudloop.models.metrics import evaluate
from fraudloop.models.training import TrainParams, fit, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.benchmarks.model import published_test_folds
from fraudloop.pipelines.retraining.protocol import Split, disjoint_validation, split_masks

METRICS = ("average_precision", "card_precision_at_100")
BATCHES = (500, 20)


@dataclass(frozen=True)
class Variant:
    """A model to serve: hyper-parameters over the defaults; optionally early-stopped on the training week's last
    two days, or distilled (trained on the default model's probabilities instead of the labels)."""

    name: str
    params: dict = field(default_factory=dict)
    early_stopping: int = 0  # rounds without a better validation AP before stopping (0: none)
    distilled: bool = False

    def train_params(self) -> TrainParams:
        return replace(TrainParams(), **self.params)


DEFAULT = Variant("defaults: 600 trees of 7 leaves at 0.02")
VARIANTS: tuple[Variant, ...] = (
    DEFAULT,
    Variant("300 trees at 0.04", {"num_boost_round": 300, "learning_rate": 0.04}),
    Variant("150 trees at 0.08", {"num_boost_round": 150, "learning_rate": 0.08}),
    Variant("75 trees at 0.16", {"num_boost_round": 75, "learning_rate": 0.16}),
    Variant("600 trees of 3 leaves", {"num_leaves": 3}),
    Variant("63 bins (255 for the amount)", {"max_bin": 63, "amount_max_bin": 255}),
    Variant("early stopping at 0.08 (patience 30)", {"learning_rate": 0.08}, early_stopping=30),
    Variant("150 trees at 0.08 distilled from the defaults", {"num_boost_round": 150, "learning_rate": 0.08},
            distilled=True),
)


def train(variant: Variant, features: pd.DataFrame, is_fraud: np.ndarray, time_: np.ndarray,
          teacher: lgb.Booster | None) -> lgb.Booster:
    params = variant.train_params()
    if variant.distilled:  # the teacher's probabilities as soft labels (cross-entropy takes labels in [0, 1])
        soft = predict(teacher, features)
        data = lgb.Dataset(features[list(FEATURE_NAMES)].to_numpy(np.float64), label=soft,
                           feature_name=list(FEATURE_NAMES))
        return lgb.train({**params.lightgbm(), "objective": "cross_entropy"}, data, params.num_boost_round)
    if not variant.early_stopping:
        return fit(features, is_fraud, params)
    held = time_ >= (time_.max() // DAY - 1) * DAY  # the training week's last two days
    x = features[list(FEATURE_NAMES)].to_numpy(np.float64)
    train_set = lgb.Dataset(x[~held], label=is_fraud[~held].astype(float), feature_name=list(FEATURE_NAMES))
    valid = lgb.Dataset(x[held], label=is_fraud[held].astype(float), reference=train_set)
    booster = lgb.train({**params.lightgbm(), "metric": "average_precision"}, train_set, params.num_boost_round,
                        valid_sets=[valid], callbacks=[lgb.early_stopping(variant.early_stopping, verbose=False)])
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


@dataclass
class Data:
    time: np.ndarray
    card: np.ndarray
    fraud: np.ndarray
    features: pd.DataFrame

    def folds(self, splits: list[Split]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [split_masks(self.time, self.card, self.fraud, split) for split in splits]


def quality(data: Data, folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Per variant, per fold: AP and CP@100 on the fold's test days; and each variant's booster of the last fold."""
    scores: dict[str, list[dict]] = {v.name: [] for v in VARIANTS}
    last: dict[str, lgb.Booster] = {}
    for train_rows, test_rows in folds:
        teacher = None
        for variant in VARIANTS:
            booster = train(variant, data.features[train_rows], data.fraud[train_rows], data.time[train_rows],
                            teacher)
            teacher = teacher or booster  # DEFAULT comes first
            metrics = evaluate(data.time[test_rows], data.card[test_rows], data.fraud[test_rows],
                               predict(booster, data.features[test_rows]))
            scores[variant.name].append({m: metrics[m] for m in METRICS})
            last[variant.name] = booster
    return {name: pd.DataFrame(rows) for name, rows in scores.items()}, last


def variant_costs(boosters: dict[str, lgb.Booster], rows: np.ndarray, repetitions: int = 7) -> dict[str, dict]:
    """µs a row compiled (lleaves) and through LightGBM, by batch size, and sizes. The timing runs in a fresh
    process (spawned), interleaved over the variants: in the process that built the features and trained 64
    models, the same predictions measured 3-5x slower, and unevenly across variants of equal size."""
    import lleaves

    if len(rows) < max(BATCHES):
        raise ValueError(f"{len(rows)} rows: timing needs at least {max(BATCHES)}")
    work = Path(tempfile.mkdtemp(prefix="fraudloop-compression-"))
    try:
        cost = {}
        for k, (name, booster) in enumerate(boosters.items()):
            booster.save_model(work / f"{k}.txt")
            started = time.process_time()
            lleaves.Model(model_file=str(work / f"{k}.txt")).compile(cache=str(work / f"{k}.so"))
            cost[name] = {"trees": booster.num_trees(), "model_kb": (work / f"{k}.txt").stat().st_size / 1024,
                          "compiled_kb": (work / f"{k}.so").stat().st_size / 1024,
                          "compile_cpu_seconds": time.process_time() - started}
        np.save(work / "rows.npy", np.ascontiguousarray(rows))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            timings = pool.submit(_time, str(work), len(boosters), repetitions).result(timeout=1_800)
        for k, name in enumerate(boosters):
            cost[name].update(timings[k])
        return cost
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _time(work: str, count: int, repetitions: int) -> list[dict[str, float]]:
    """In the spawned process: µs a row of each model in `work`, interleaved, medians."""
    import lleaves

    rows = np.load(Path(work, "rows.npy"))
    files = [str(Path(work, f"{k}.txt")) for k in range(count)]
    models = [(lgb.Booster(model_file=file), lleaves.Model(model_file=file)) for file in files]
    for k, (_, model) in enumerate(models):
        model.compile(cache=str(Path(work, f"{k}.so")))
    timings: dict[tuple[int, str, int], list[float]] = {}
    for _ in range(repetitions):
        for k, (booster, model) in enumerate(models):
            for batch in BATCHES:
                chunks = [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]
                for kind in ("compiled", "lightgbm"):
                    started = time.perf_counter()
                    for chunk in chunks:
                        if kind == "compiled":
                            model.predict(chunk, n_jobs=1)
                        else:
                            booster.predict(chunk, num_threads=1)
                    timings.setdefault((k, kind, batch), []).append(
                        (time.perf_counter() - started) / (len(chunks) * batch) * 1e6)
    result: list[dict[str, float]] = [{} for _ in range(count)]
    for (k, kind, batch), values in timings.items():
        result[k][f"{kind}_us_per_row_batch_{batch}"] = float(np.median(values))
    return result


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated: no other is at least as good in quality (higher) and cost (lower), and better in one."""
    return [name for name, (q, c) in points.items()
            if not any(q2 >= q and c2 <= c and (q2, c2) != (q, c) for q2, c2 in points.values())]


def choose(validation: dict[str, pd.DataFrame], cost: dict[str, dict]) -> str:
    """The cheapest Pareto variant whose validation AP is not clearly below the best's (paired per-fold difference
    within two standard errors)."""
    ap = {name: frame["average_precision"] for name, frame in validation.items()}
    front = pareto({name: (ap[name].mean(), cost[name]["compiled_us_per_row_batch_500"]) for name in ap})
    best = max(front, key=lambda name: ap[name].mean())
    close = []
    for name in front:
        gain = (ap[name] - ap[best]).to_numpy()
        if gain.mean() >= -2 * gain.std(ddof=1) / np.sqrt(len(gain)):
            close.append(name)
    return min(close, key=lambda name: cost[name]["compiled_us_per_row_batch_500"])


def run(history: pd.DataFrame, labels: pd.DataFrame, source: str, progress: bool = True) -> dict:
    started = time.perf_counter()
    tests = published_test_folds()
    validation_splits = sorted(disjoint_validation(tests), key=lambda s: s.start_day)
    features = compute_features(history, labels, progress=progress)
    data = Data(history["time"].to_numpy(), history["card_id"].to_numpy(), history["is_fraud"].to_numpy(bool),
                features)
    validation, _ = quality(data, data.folds(validation_splits))
    if progress:
        print("validation folds done", flush=True)
    test, boosters = quality(data, data.folds(tests))
    _, test_rows = data.folds(tests)[-1]
    rows = features[test_rows][list(FEATURE_NAMES)].to_numpy(np.float64)[:20_000]
    cost = variant_costs(boosters, rows)
    chosen = choose(validation, cost)
    return {"source": source, "transactions": len(history), "validation": validation, "test": test, "cost": cost,
            "chosen": chosen, "front": pareto({n: (f["average_precision"].mean(),
                                                   cost[n]["compiled_us_per_row_batch_500"])
                                               for n, f in validation.items()}),
            "test_folds": [s.describe()["test"] for s in tests],
            "validation_folds": [s.describe()["test"] for s in validation_splits],
            "seconds": time.perf_counter() - started, "machine": f"{platform.machine()}, {platform.python_version()}"}


def _mean_std(frame: pd.DataFrame, metric: str) -> dict[str, float]:
    return {"mean": float(frame[metric].mean()), "std": float(frame[metric].std())}


def to_json(result: dict, command: str) -> dict:
    return {
        "command": command, "protocol": "handbook", "test_weeks": result["test_folds"],
        "validation_weeks": result["validation_folds"], "chosen": result["chosen"], "pareto_front": result["front"],
        "variants": [{"variant": v.name, "params": v.params, "early_stopping": v.early_stopping,
                      "distilled": v.distilled,
                      "test": {m: _mean_std(result["test"][v.name], m) for m in METRICS},
                      "validation": {m: _mean_std(result["validation"][v.name], m) for m in METRICS},
                      **result["cost"][v.name]} for v in VARIANTS],
        "transactions": result["transactions"], "seconds": result["seconds"], "machine": result["machine"],
    }


def to_markdown(result: dict, command: str) -> str:
    data = to_json(result, command)
    default = next(v for v in data["variants"] if v["variant"] == DEFAULT.name)
    rows = ["| variant | trees | test AP | test CP@100 | validation AP | µs a row compiled, batch 500 / 20 | µs a row "
            "LightGBM, batch 500 | model KB / compiled KB | Pareto |", "|---|---|---|---|---|---|---|---|---|"]
    for v in data["variants"]:
        t, val = v["test"], v["validation"]
        mark = ("**chosen**" if v["variant"] == data["chosen"] else "front") if v["variant"] in data["pareto_front"] \
            else ""
        rows.append(f"| {v['variant']} | {v['trees']} | {t['average_precision']['mean']:.3f} ± "
                    f"{t['average_precision']['std']:.3f} | {t['card_precision_at_100']['mean']:.3f} ± "
                    f"{t['card_precision_at_100']['std']:.3f} | {val['average_precision']['mean']:.4f} | "
                    f"{v['compiled_us_per_row_batch_500']:.2f} / {v['compiled_us_per_row_batch_20']:.2f} | "
                    f"{v['lightgbm_us_per_row_batch_500']:.1f} | {v['model_kb']:.0f} / {v['compiled_kb']:.0f} | "
                    f"{mark} |")
    chosen = next(v for v in data["variants"] if v["variant"] == data["chosen"])
    return "\n".join([
        "# Compressed models: quality against serving cost (reference protocol)",
        "",
        f"Command: `{command}` ({result['seconds']:.0f} s in all on {result['machine']}); the JSON beside this file "
        f"holds the same figures. Data: {result['source']}, {result['transactions']:,} transactions.",
        "",
        f"Quality: mean ± standard deviation over the 4 test folds of `fraudloop benchmark model` (test weeks "
        f"{', '.join(result['test_folds'])}); *validation AP* is the mean over its 4 validation folds (weeks "
        f"{', '.join(result['validation_folds'])}), on which the choice is made. Cost: µs of one thread a row, the "
        "model compiled with lleaves as the scorer serves it and through `Booster.predict`, medians of 7 interleaved "
        "repetitions over 20,000 test rows in a fresh process; sizes of the model text and of the compiled object.",
        "",
        *rows,
        "",
        f"Chosen: **{data['chosen']}**: the cheapest variant on the Pareto front of validation AP against compiled "
        "µs a row whose validation AP is not clearly below the front's best (paired per-fold difference within two "
        "standard errors).",
        "",
        f"What it buys: {chosen['compiled_us_per_row_batch_500']:.2f} µs a row compiled against the defaults' "
        f"{default['compiled_us_per_row_batch_500']:.2f} (batches of 500), "
        f"{chosen['compiled_us_per_row_batch_20']:.2f} against {default['compiled_us_per_row_batch_20']:.2f} "
        "(batches of 20); the scorer's worker spends about 100 µs a transaction in all "
        "(benchmarks/streaming.md), so the model is a small part of a transaction's cost either way.",
        "",
    ])


def record(result: dict, path: Path, command: str) -> None:
    write_record(path, to_markdown(result, command), to_json(result, command))
