"""Offline model build: features of a history, a time-ordered split, LightGBM, evaluation, MLflow version."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from models import registry, report
from models.features import FEATURE_NAMES, compute_features
from models.metrics import evaluate
from models.training import TrainParams, predict, train
from pipelines.cost import measure
from pipelines.protocol import DAY, Split, split_masks


@dataclass(frozen=True)
class BuildConfig:
    train_days: int = 28
    delay_days: int = 7
    test_days: int = 7
    params: TrainParams = field(default_factory=TrainParams)


@dataclass(frozen=True)
class BuildResult:
    model: registry.RegisteredModel
    booster: lgb.Booster
    metrics: dict[str, float]
    split: dict[str, str]


def latest_split(time: np.ndarray, config: BuildConfig) -> Split:
    """Test on the newest `test_days` whole days, after a label-delay gap, train on the days before it."""
    first_day, last_day = int(time.min()) // DAY, int(time.max()) // DAY
    needed = config.train_days + config.delay_days + config.test_days
    if last_day - first_day + 1 < needed:
        raise ValueError(f"history spans {last_day - first_day + 1} days; the split needs {needed}")
    start = pd.Timestamp((last_day + 1 - needed) * DAY, unit="s").date().isoformat()
    return Split(start, config.train_days, config.delay_days, config.test_days)


def fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def _describe(metrics: dict[str, float], split: dict[str, str], rows: dict[str, int]) -> str:
    return "\n".join([
        "LightGBM card-fraud model, trained offline on a time-ordered split (train / label-delay gap / test).",
        "",
        f"- train: {split['train']} ({rows['train']:,} rows, {rows['train_frauds']:,} frauds)",
        f"- test: {split['test']} ({rows['test']:,} rows, {rows['test_frauds']:,} frauds; cards already known "
        "compromised removed)",
        "",
        "| metric (test) | value |",
        "|---|---|",
        *(f"| {k} | {metrics[k]:.4f} |" for k in ("roc_auc", "average_precision", "card_precision_at_100",
                                                   "recall_at_1pct_fpr")),
        f"| training CPU seconds | {metrics['training_cpu_seconds']:.1f} |",
        f"| training peak RSS (MB) | {metrics['training_peak_rss_mb']:.0f} |",
        "",
        "Plots: run artifacts under evaluation/. Native LightGBM model file: model.lgb.",
    ])


def build_model(history: pd.DataFrame, labels: pd.DataFrame, reg: registry.RegistryConfig,
                config: BuildConfig = BuildConfig(), features: pd.DataFrame | None = None,
                progress: bool = True) -> BuildResult:
    """Train on the latest split of `history`, evaluate on its test period, register a new version."""
    if features is None:
        features = compute_features(history, labels, progress=progress)
    time, cards, is_fraud = (history[c].to_numpy() for c in ("time", "card_id", "is_fraud"))
    split = latest_split(time, config)
    train_rows, test_rows = split_masks(time, cards, is_fraud, split)
    with measure() as cost:
        booster = train(features[train_rows], is_fraud[train_rows], config.params)
    scores = predict(booster, features[test_rows])
    metrics = evaluate(time[test_rows], cards[test_rows], is_fraud[test_rows], scores)
    metrics.update(cost.as_metrics("training"))
    rows = {"train": int(train_rows.sum()), "train_frauds": int(is_fraud[train_rows].sum()),
            "test": int(test_rows.sum()), "test_frauds": int(is_fraud[test_rows].sum())}
    span = split.describe()
    tags = {
        "train_period": span["train"],
        "test_period": span["test"],
        "train_rows": str(rows["train"]),
        "test_rows": str(rows["test"]),
        "train_data_fingerprint": fingerprint(history.loc[train_rows, ["transaction_id", "is_fraud"]]),
        "feature_count": str(len(FEATURE_NAMES)),
        "trained_by": "fraudloop build",
    }
    figures = report.all_figures(is_fraud[test_rows], scores, list(FEATURE_NAMES),
                                 booster.feature_importance("gain"))
    model = registry.log_and_register(
        reg, booster,
        params={**asdict(config.params), **{k: v for k, v in asdict(config).items() if k != "params"}},
        metrics={k: float(v) for k, v in metrics.items()},
        tags=tags,
        figures=figures,
        input_example=features[train_rows].head(5),
        description=_describe(metrics, span, rows),
        run_name=f"build {span['train']}",
    )
    return BuildResult(model, booster, metrics, span)
