"""Reproduce the reference protocol on the simulator's reference run and compare with the published table.

Hyper-parameters are chosen on prequential validation folds (each train 7 / delay 7 / assess 7 days,
shifted back a week), then the chosen configuration is scored on the prequential test folds.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from models.features import compute_features
from models.metrics import evaluate
from models.training import TrainParams, predict, train
from pipelines.cost import measure
from pipelines.protocol import Split, prequential, split_masks
from pipelines.simulate import SimulationConfig, labels_of, simulate, summary

PUBLISHED = pd.DataFrame(
    [
        ("decision tree", 0.797, 0.579, 0.284),
        ("logistic regression", 0.868, 0.623, 0.297),
        ("random forest", 0.870, 0.678, 0.299),
        ("XGBoost", 0.869, 0.687, 0.303),
    ],
    columns=["model", "roc_auc", "average_precision", "card_precision_at_100"],
)
METRICS = ["roc_auc", "average_precision", "card_precision_at_100"]
TEST_START, VALIDATION_START = Split("2018-07-25"), Split("2018-07-11")
GRID: tuple[dict, ...] = (
    {},
    {"num_leaves": 31, "num_boost_round": 300, "learning_rate": 0.05, "min_data_in_leaf": 20},
    {"num_leaves": 15, "num_boost_round": 400, "learning_rate": 0.03, "min_data_in_leaf": 10},
    {"num_leaves": 7, "num_boost_round": 300, "learning_rate": 0.05},
    {"max_bin": 255, "min_data_in_bin": 3},
)


@dataclass
class Folds:
    time: np.ndarray
    card: np.ndarray
    fraud: np.ndarray
    features: pd.DataFrame

    def predict_cost(self, params: TrainParams, split: Split, rows: int = 500, repeats: int = 20) -> float:
        """Microseconds a row for Booster.predict on one thread, batches of `rows` (the scorer's setting)."""
        train_rows, test_rows = split_masks(self.time, self.card, self.fraud, split)
        booster = train(self.features[train_rows], self.fraud[train_rows], params)
        batch = self.features[test_rows].head(rows).to_numpy()
        started = time.perf_counter()
        for _ in range(repeats):
            booster.predict(batch, num_threads=1)
        return (time.perf_counter() - started) / (repeats * len(batch)) * 1e6

    def score(self, params: TrainParams, splits: list[Split]) -> pd.DataFrame:
        rows = []
        for split in splits:
            train_rows, test_rows = split_masks(self.time, self.card, self.fraud, split)
            booster = train(self.features[train_rows], self.fraud[train_rows], params)
            scores = predict(booster, self.features[test_rows])
            rows.append(evaluate(self.time[test_rows], self.card[test_rows], self.fraud[test_rows], scores))
        return pd.DataFrame(rows)[METRICS]


def run(seed: int = 0, progress: bool = True) -> dict:
    started = time.perf_counter()
    sim_config = SimulationConfig(seed=seed)
    with measure() as sim_cost:
        history = simulate(sim_config, progress=progress)
    with measure() as feature_cost:
        features = compute_features(history, labels_of(history), progress=progress)
    folds = Folds(history["time"].to_numpy(), history["card_id"].to_numpy(), history["is_fraud"].to_numpy(),
                  features)

    validation = []
    for overrides in GRID:
        params = replace(TrainParams(), **overrides)
        scores = folds.score(params, prequential(VALIDATION_START))
        validation.append({"params": overrides or "defaults", **scores.mean().to_dict(),
                           "predict_us_per_row": folds.predict_cost(params, VALIDATION_START)})
    validation = pd.DataFrame(validation)
    best = int(validation["average_precision"].idxmax())
    chosen = replace(TrainParams(), **GRID[best])
    test = folds.score(chosen, prequential(TEST_START))
    single = folds.score(TrainParams(), [TEST_START])
    return {
        "simulation": {**summary(history), "seconds": sim_cost.wall_seconds},
        "feature_seconds": feature_cost.wall_seconds,
        "feature_us_per_tx": feature_cost.wall_seconds / len(history) * 1e6,
        "validation": validation,
        "chosen": asdict(chosen),
        "test_mean": test.mean(),
        "test_std": test.std(),
        "single_split": single.iloc[0],
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }


def margins(result: dict) -> str:
    """Our mean minus the best published value, in absolute terms and in our fold standard deviations."""
    best = PUBLISHED[METRICS].max()
    parts = []
    for m in METRICS:
        diff = result["test_mean"][m] - best[m]
        sigmas = diff / result["test_std"][m]
        verdict = "better" if sigmas >= 1 else "a tie within one standard deviation" if diff > -1e-9 else "worse"
        parts.append(f"{m} {diff:+.4f} ({sigmas:+.1f} σ: {verdict})")
    return "; ".join(parts)


def to_markdown(result: dict, command: str) -> str:
    mean, std = result["test_mean"], result["test_std"]
    sim = result["simulation"]
    lines = [
        "# Model quality on the reference protocol",
        "",
        f"Command: `{command}` ({result['seconds']:.0f} s in all on {result['machine']}).",
        "",
        f"Reference run: {sim['transactions']:,} transactions, {sim['frauds']:,} frauds "
        f"(fraud rate {sim['fraud_rate']:.3%}), simulated in {sim['seconds']:.1f} s; published: about 1.75 M "
        "transactions, 14,700 frauds (0.84 %). Features (one implementation, replayed in time order): "
        f"{result['feature_seconds']:.0f} s ({result['feature_us_per_tx']:.0f} µs per transaction).",
        "",
        "Test set, prequential (4 folds: train 7 / delay 7 / test 7 days, latest test week 2018-08-08..14), "
        "mean ± std; hyper-parameters chosen on the validation folds by Average Precision.",
        "",
        "| model | ROC AUC | AP | CP@100 |",
        "|---|---|---|---|",
        *(f"| {r.model} (published) | {r.roc_auc:.3f} | {r.average_precision:.3f} | {r.card_precision_at_100:.3f} |"
          for r in PUBLISHED.itertuples()),
        f"| **LightGBM (ours)** | **{mean.roc_auc:.4f} ± {std.roc_auc:.3f}** | "
        f"**{mean.average_precision:.3f} ± {std.average_precision:.3f}** | "
        f"**{mean.card_precision_at_100:.3f} ± {std.card_precision_at_100:.3f}** |",
        "",
        f"Margin over the best published value: {margins(result)}.",
        "",
        f"Single split with our default hyper-parameters (train 2018-07-25..31, test 2018-08-08..14): "
        f"ROC AUC {result['single_split'].roc_auc:.3f}, AP {result['single_split'].average_precision:.3f}, "
        f"CP@100 {result['single_split'].card_precision_at_100:.3f}.",
        "",
        "Validation folds (mean over 4 folds) per candidate configuration, with the serving cost of each "
        "(`Booster.predict`, one thread, batches of 500, µs a row):",
        "",
        result["validation"].to_markdown(index=False, floatfmt=".4f"),
        "",
        f"Chosen: `{result['chosen']}`",
        "",
    ]
    return "\n".join(lines)
