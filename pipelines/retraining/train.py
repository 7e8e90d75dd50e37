"""Train a challenger: a time-ordered split of a training set, LightGBM, evaluation, a registered MLflow version.

The newest mature days are the holdout (after a gap as long as the label delay, as in deployment);
the days before train. The holdout's rows and the new model's scores on them are logged with the version
as its drift reference, and the split itself as tags, so validation reuses the very same holdout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from fraudloop.models import registry, report
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.metrics import evaluate
from fraudloop.models.training import TrainParams, fit, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.cost import measure, predict_cost
from fraudloop.pipelines.retraining.protocol import Split, split_masks, test_period
from fraudloop.pipelines.retraining.training_set import mature_rows, sample_weights, uniform_rows

REFERENCE_ARTIFACT = "reference/holdout.parquet"
SPLIT_TAG = "holdout_split"
FEEDBACK_TAG = "feedback_holdout_from"


@dataclass(frozen=True)
class BuildConfig:
    train_days: int = 28
    delay_days: int = 7
    test_days: int = 7
    maturity_days: float = 7.0  # a transaction younger than this may still be charged back
    params: TrainParams = field(default_factory=TrainParams)
    # Feedback: verdicts and cardholders' answers younger than the maturity train at once, and those of the newest
    # `feedback_test_days` days are a second holdout (gates.with_feedback); 0: no second holdout
    feedback_test_days: int = 2


@dataclass(frozen=True)
class BuildResult:
    model: registry.RegisteredModel
    booster: lgb.Booster
    metrics: dict[str, float]
    split: dict[str, str]


def latest_split(time: np.ndarray, config: BuildConfig) -> Split:
    """Test on the newest `test_days` whole days, after a label-delay gap, train on the days before it. `time`: the
    mature rows' (`training_split`)."""
    first_day, last_day = int(time.min()) // DAY, int(time.max()) // DAY
    needed = config.train_days + config.delay_days + config.test_days
    if last_day - first_day + 1 < needed:
        raise ValueError(f"the training set spans {last_day - first_day + 1} days; the split needs {needed}")
    start = pd.Timestamp((last_day + 1 - needed) * DAY, unit="s").date().isoformat()
    return Split(start, config.train_days, config.delay_days, config.test_days)


def holdout_masks(frame: pd.DataFrame, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) of the mature rows (the young ones: `feedback_masks`)."""
    time, cards, is_fraud = (frame[c].to_numpy() for c in ("event_time", "card_id", "is_fraud"))
    train, test = split_masks(time, cards, is_fraud, split)
    mature = mature_rows(frame)
    return train & mature, test & mature


def feedback_start(frame: pd.DataFrame, days: int) -> float | None:
    """Where the feedback holdout starts: `days` whole days before the newest young row (None: no young rows)."""
    young = ~mature_rows(frame)
    if days <= 0 or not young.any():
        return None
    return float((int(frame["event_time"].to_numpy()[young].max()) // DAY + 1 - days) * DAY)


def feedback_masks(frame: pd.DataFrame, start: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(young rows that train, the feedback holdout). Young rows are those whose label has not matured: in a
    training set, feedback only (an analyst's verdict, a cardholder's answer: `training_set_as_of`). From `start`
    they are the feedback holdout, less the cards whose fraud was known before it (as `split_masks` does)."""
    young = ~mature_rows(frame)
    if start is None:
        return young, np.zeros(len(frame), dtype=bool)
    time, cards = frame["event_time"].to_numpy(), frame["card_id"]
    known = cards[frame["is_fraud"].to_numpy(bool) & (time < start)]
    return young & (time < start), young & (time >= start) & ~cards.isin(known).to_numpy()


def training_split(frame: pd.DataFrame, config: BuildConfig) -> tuple[Split, float | None, np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """The split of a training set: (the mature holdout's split, where the feedback holdout starts, the rows that
    train, the mature holdout, the feedback holdout). The mature rows split as always; the young ones (feedback
    labels, newer than the mature holdout) train, but for the newest days, which judge."""
    split = latest_split(frame["event_time"].to_numpy()[mature_rows(frame)], config)
    start = feedback_start(frame, config.feedback_test_days)
    return split, start, *split_rows(frame, split, start)


def split_rows(frame: pd.DataFrame, split: Split, feedback_from: float | None) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """(the rows that train, the holdout, the feedback holdout) of a split. The young rows that train are newer than
    the holdout's last day: a card whose fraud they teach leaves the holdout, as a card known compromised does. (What
    they teach of a pattern, not of a card, the holdout's days may show too: the holdout then favours a challenger
    that learnt the newest pattern, which is the one that will serve.)"""
    train = training_rows(frame, split, feedback_from)
    _, test = holdout_masks(frame, split)
    _, young_test = feedback_masks(frame, feedback_from)
    learnt = frame["card_id"][train & ~mature_rows(frame) & frame["is_fraud"].to_numpy(bool)]
    return train, test & ~frame["card_id"].isin(learnt).to_numpy(), young_test


def training_rows(frame: pd.DataFrame, split: Split, feedback_from: float | None) -> np.ndarray:
    """The rows that train: the mature ones of the training period, and the young ones newer than the holdout's
    last day (its last is partly young when `as_of` is not midnight) and older than the feedback holdout. Row by
    row, no card looked at: each partition of a set decides alone (pipelines/retraining/distributed.py)."""
    time = frame["event_time"].to_numpy()
    day, mature = time // DAY, mature_rows(frame)
    train = mature & (day >= split.start_day) & (day < split.start_day + split.train_days)
    young = ~mature & (time >= (split.start_day + split.span_days) * DAY)
    if feedback_from is not None:
        young &= time < feedback_from
    return train | young


def split_of_version(tags: dict[str, str]) -> Split:
    return Split(**json.loads(tags[SPLIT_TAG]))


def drift_reference(frame: pd.DataFrame, split: Split, booster: lgb.Booster) -> pd.DataFrame:
    """What the monitor compares live traffic with: every row of the holdout days (the evaluation's holdout drops
    cards already known compromised, live traffic does not) with the model's scores and the labels known then
    (so the monitor's decay check compares the champion's live AP with its AP on the same kind of traffic)."""
    rows = frame[test_period(frame["event_time"].to_numpy(), split) & mature_rows(frame) & uniform_rows(frame)]
    return rows[[*FEATURE_NAMES, "event_time", "card_id", "is_fraud"]].assign(score=predict(booster, rows))


def fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def _describe(metrics: dict[str, float], split: dict[str, str], rows: dict[str, int], trained_by: str) -> str:
    return "\n".join([
        f"LightGBM card-fraud model trained by {trained_by} on a time-ordered split "
        "(train / label-delay gap / holdout).",
        "",
        f"- train: {split['train']} ({rows['train']:,} rows, {rows['train_frauds']:,} frauds), and "
        f"{rows['train_feedback']:,} younger rows with an analyst's verdict or a cardholder's answer",
        f"- holdout: {split['test']} ({rows['test']:,} rows, {rows['test_frauds']:,} frauds; cards already known "
        "compromised removed)",
        f"- feedback holdout: the newest verdicts and answers ({rows['feedback_test']:,} rows, "
        f"{rows['feedback_test_frauds']:,} frauds), judged by validation beside the holdout",
        "",
        "| metric (holdout) | value |",
        "|---|---|",
        *(f"| {k} | {metrics[k]:.4f} |" for k in ("roc_auc", "average_precision", "card_precision_at_100",
                                                   "recall_at_1pct_fpr")),
        f"| training CPU seconds | {metrics['training_cpu_seconds']:.1f} |",
        f"| training peak RSS (MB) | {metrics['training_peak_rss_mb']:.0f} |",
        *(f"| predict µs a row, {kind} (one thread's CPU, batches of 500) | {metrics[key]:.2f} |"
          for kind, key in (("compiled", "predict_us_per_row_compiled"), ("LightGBM", "predict_us_per_row_lightgbm"))
          if key in metrics),
        f"| model size (KB) | {metrics['model_kb']:.0f} |",
        "",
        "Validation against the champion is appended below when it runs. Plots: run artifacts under "
        "evaluation/. Native LightGBM model file: model.lgb.",
    ])


def frauds_by_source(frame: pd.DataFrame) -> dict[str, int]:
    """The frauds of a training set by their label's source (a set built before sources were: `chargeback`)."""
    sources = frame.get("label_source", pd.Series("chargeback", index=frame.index))
    return {str(k): int(v) for k, v in sources[frame["is_fraud"].to_numpy(bool)].value_counts().items()}


def train_challenger(frame: pd.DataFrame, reg: registry.RegistryConfig, config: BuildConfig = BuildConfig(),
                     alias: str | None = registry.CHALLENGER, trained_by: str = "fraudloop train",
                     source: str = "", scheduler: str | None = None) -> BuildResult:
    """Train on the training set's latest split, evaluate on its holdout, register a new version under `alias`.
    `scheduler`: a Dask scheduler's address; the training set at `source` is then trained on there
    (pipelines/retraining/distributed.py), the evaluation stays here."""
    if scheduler and not source:
        raise ValueError("training on a Dask cluster reads the training set from its URI: give `source`")
    split, feedback_from, train_rows, test_rows, feedback_test = training_split(frame, config)
    is_fraud = frame["is_fraud"].to_numpy()
    if not is_fraud[train_rows].any() or not is_fraud[test_rows].any():
        raise ValueError(f"no labelled fraud in the training or holdout period of {split.describe()}")
    weight = sample_weights(frame)
    with measure() as cost:
        if scheduler:
            from fraudloop.pipelines.retraining.distributed import fit_on_cluster

            booster = fit_on_cluster(source, split, feedback_from, config.params, scheduler)
        else:
            booster = fit(frame[train_rows], is_fraud[train_rows], config.params,
                          None if weight is None else weight[train_rows])
    holdout = frame[test_rows]
    scores = predict(booster, holdout)
    metrics = evaluate(holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(), is_fraud[test_rows], scores,
                       None if weight is None else weight[test_rows])
    metrics.update(cost.as_metrics("training"))
    metrics.update(predict_cost(booster, holdout[list(FEATURE_NAMES)].to_numpy(np.float64)))
    young = ~mature_rows(frame)
    rows = {"train": int(train_rows.sum()), "train_frauds": int(is_fraud[train_rows].sum()),
            "test": int(test_rows.sum()), "test_frauds": int(is_fraud[test_rows].sum()),
            "train_feedback": int((train_rows & young).sum()), "feedback_test": int(feedback_test.sum()),
            "feedback_test_frauds": int(is_fraud[feedback_test].sum())}
    span = split.describe()
    tags = {
        "train_period": span["train"],
        "test_period": span["test"],
        SPLIT_TAG: json.dumps(asdict(split)),
        # the feedback holdout: young verdicts and cardholders' answers from here on (validate judges them too)
        FEEDBACK_TAG: "none" if feedback_from is None else f"{feedback_from:.0f}",
        "train_feedback_rows": str(rows["train_feedback"]),
        "train_rows": str(rows["train"]),
        # genuine traffic sampled by card at this rate, weighed back (pipelines/offline/build.py); 1: every row
        "sample_rate": f"{1 / weight.max():.6g}" if weight is not None else "1",
        "test_rows": str(rows["test"]),
        "train_data_fingerprint": fingerprint(frame.loc[train_rows, ["transaction_id", "is_fraud"]]),
        "feature_count": str(len(FEATURE_NAMES)),
        # where the training period's frauds came from (chargeback, review, cardholder; simulation: the oracle)
        "train_frauds_by_source": json.dumps(frauds_by_source(frame[train_rows]), sort_keys=True),
        "trained_by": trained_by,
        "training_set": source,
        "validation_status": "pending",
        "training_cpu_seconds": f"{metrics['training_cpu_seconds']:.2f}",
        "training_peak_rss_mb": f"{metrics['training_peak_rss_mb']:.0f}",
        **{key: f"{metrics[key]:.2f}" for key in ("predict_us_per_row_compiled", "predict_us_per_row_lightgbm",
                                                  "model_kb") if key in metrics},
    }
    figures = report.all_figures(is_fraud[test_rows], scores, list(FEATURE_NAMES),
                                 booster.feature_importance("gain"))
    reference = drift_reference(frame, split, booster)
    model = registry.log_and_register(
        reg, booster,
        params={**asdict(config.params), **{k: v for k, v in asdict(config).items() if k != "params"}},
        metrics={k: float(v) for k, v in metrics.items()},
        tags=tags,
        figures=figures,
        input_example=frame[train_rows].head(5),
        description=_describe(metrics, span, rows, trained_by),
        run_name=f"train {span['train']}",
        frames={REFERENCE_ARTIFACT: reference},
    )
    if alias:
        registry.set_alias(reg, alias, model.version)
    return BuildResult(model, booster, metrics, span)


def build_model(history: pd.DataFrame, labels: pd.DataFrame, reg: registry.RegistryConfig,
                config: BuildConfig = BuildConfig(), features: pd.DataFrame | None = None,
                progress: bool = True, alias: str | None = registry.CHALLENGER) -> BuildResult:
    """A version trained on a simulated history, with the labels known at its end."""
    from fraudloop.pipelines.retraining.training_set import history_rows, training_set_as_of

    rows = history_rows(history, labels, features, progress=progress)
    frame = training_set_as_of(rows, labels, float(history["time"].max()), config.maturity_days * DAY)
    return train_challenger(frame, reg, config, alias=alias, trained_by="fraudloop train (history)")
