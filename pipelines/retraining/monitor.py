"""Drift monitor: recent scored traffic against the champion's reference, and performance once labels arrive.

Three signals:
- data drift: the mean PSI over the features of the last `window_days` of decisions against the champion's
  holdout (logged with the version at training), above its threshold: calibrated for the window's size to
  `false_alarm_rate` (pipelines/retraining/drift.py), and at least `material_mean_psi`; windows too small to detect a
  mean PSI of `detectable_psi` get no verdict;
- score drift: PSI of the champion's recent scores against its scores on that holdout, threshold calibrated
  the same way and at least `material_score_psi`;
- performance decay: Average Precision of the champion's own decisions that are old enough to be labelled,
  against its holdout AP, once at least `min_frauds` labelled frauds say so.
A drift episode signals one retrain per `cooldown_days` (the signal is a tag on the champion; a new champion
starts afresh), not one per hourly check. The report (table, plots, verdict) is one MLflow run in
`<experiment>-monitoring`; the verdict is also a tag on the champion version.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from fraudloop.models import registry, report
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.metrics import Estimate, weighted_ap
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.drift import Calibrator, feature_drift, psi
from fraudloop.pipelines.retraining.train import REFERENCE_ARTIFACT
from fraudloop.pipelines.retraining.training_set import (
    UNKNOWN,
    decode_decisions,
    explorable,
    known_outcomes,
    observation_weights,
)
from sklearn.metrics import average_precision_score

# Set by the clock, not by the data: a one-day window is all weekend or all weekday.
CALENDAR_FEATURES = ("is_weekend", "is_night")
MONITORED = tuple(name for name in FEATURE_NAMES if name not in CALENDAR_FEATURES)
SIGNAL_TAG = "drift_signalled_at"
MIN_ROWS_TAG = "drift_min_rows"  # the minimum window per (detectable_psi, false_alarm_rate), computed once


@dataclass(frozen=True)
class MonitorConfig:
    """The one source of the monitor's defaults: the DAG's params and the CLI's flags default to these."""

    window_days: float = 1.0
    false_alarm_rate: float = 0.01  # per check, for data drift and for score drift
    detectable_psi: float = 0.1  # mean PSI a window must be able to tell from noise; sets the minimum window
    # Material shifts: below these a shift is not worth a retrain however significant (a stable world still
    # moves a little, slowly: measured on the benchmark's stable days, the score PSI reached 0.014 and the
    # mean feature PSI 0.005, above their noise thresholds on 2 % of hourly checks).
    material_mean_psi: float = 0.02
    material_score_psi: float = 0.1
    maturity_days: float = 7.0
    performance_window_days: float = 7.0
    max_relative_ap_drop: float = 0.3  # decay when recent AP < holdout AP x (1 - this)
    min_frauds: int = 30  # fewer labelled frauds than this: no performance verdict
    cooldown_days: float = 1.0  # a drift episode signals at most one retrain per this long
    resamples: int = 500
    # From the offline store, each of the two windows is read as a uniform sample by card of at most about this
    # many rows: the check's memory and time do not grow with the volume. The drift thresholds' calibration costs
    # in proportion to the window's rows (resamples of its size); PSI needs far fewer (`min_rows`).
    sample_rows: int = 50_000


@dataclass(frozen=True)
class DriftReport:
    as_of: float
    champion_version: str
    rows: int
    min_rows: int
    data_drift: bool
    mean_psi: float
    mean_psi_threshold: float
    drifted_share: float
    score_psi: float
    score_psi_threshold: float
    score_drift: bool
    recent_average_precision: float | None
    reference_average_precision: float
    performance_decay: bool
    table: pd.DataFrame
    last_signal: float | None = None
    cooldown_days: float = MonitorConfig.cooldown_days
    # The same AP weighted by 1 / probability (exploration; None without it), over the traffic exploration reaches
    # (training_set.explorable), beside the naive one on labelled rows that the decay check compares with the holdout's
    weighted_average_precision: Estimate | None = None

    @property
    def retrain(self) -> bool:
        return self.data_drift or self.score_drift or self.performance_decay

    @property
    def signal(self) -> bool:
        """Retrain, unless this episode already asked for one less than a cooldown ago."""
        return self.retrain and (self.last_signal is None
                                 or self.as_of - self.last_signal >= self.cooldown_days * DAY)

    @property
    def summary(self) -> str:
        ap = "n/a" if self.recent_average_precision is None else f"{self.recent_average_precision:.3f}"
        if self.signal:
            head = "RETRAIN"
        elif self.retrain:
            head = (f"drift, retrain already signalled at {pd.Timestamp(self.last_signal, unit='s'):%Y-%m-%d %H:%M}"
                    f" (cooldown {self.cooldown_days:g} d)")
        else:
            head = "stable"
        if self.rows < self.min_rows:
            data = f"{self.rows:,} rows, too few to judge drift (min {self.min_rows:,})"
        else:
            data = (f"mean feature PSI {self.mean_psi:.3f} vs {self.mean_psi_threshold:.3f}"
                    f"{' (data drift)' if self.data_drift else ''}, {self.drifted_share:.0%} of features above "
                    f"their own; score PSI {self.score_psi:.3f} vs {self.score_psi_threshold:.3f}"
                    f"{' (score drift)' if self.score_drift else ''}")
        weighted = "" if self.weighted_average_precision is None else \
            f" (weighted by 1 / probability {self.weighted_average_precision})"
        return (f"{head}: {data}; labelled AP {ap}{weighted} vs holdout {self.reference_average_precision:.3f}"
                f"{' (decay)' if self.performance_decay else ''}")


def reference_average_precision(reference: pd.DataFrame, holdout_ap: float) -> float:
    """The champion's AP on its reference, all traffic of its holdout days, as live traffic is; a version logged
    before the reference carried labels falls back on its evaluation holdout's AP."""
    if "is_fraud" in reference and reference["is_fraud"].any():
        return float(average_precision_score(reference["is_fraud"], reference["score"]))
    return holdout_ap


def calibrator(reference: pd.DataFrame, config: MonitorConfig) -> Calibrator:
    """The champion's reference calibrated for this monitor (reusable across checks of one champion)."""
    clusters = reference["card_id"].to_numpy() if "card_id" in reference else np.arange(len(reference))
    return Calibrator(reference, clusters, list(MONITORED), config.false_alarm_rate, config.detectable_psi,
                      config.resamples)


def assess(reference: pd.DataFrame, recent: pd.DataFrame, recent_scores: np.ndarray, labelled: pd.DataFrame,
           reference_ap: float, as_of: float, version: str, config: MonitorConfig = MonitorConfig(),
           last_signal: float | None = None, calibrated: Calibrator | None = None) -> DriftReport:
    """Pure: the three signals from frames. `reference` holds MONITORED, `score` and (ideally) `card_id`;
    `labelled` holds mature decisions with `score` and `is_fraud`."""
    calibrated = calibrated or calibrator(reference, config)
    features = reference[list(MONITORED)]
    min_rows = calibrated.min_rows
    enough, enough_scores = len(recent) >= min_rows, len(recent_scores) >= min_rows
    data, scores = calibrated.for_features(len(recent)), calibrated.for_scores(len(recent_scores))
    data_threshold = max(data.mean_psi, config.material_mean_psi)
    score_threshold = max(float(scores.score_psi), config.material_score_psi)
    table = feature_drift(features, recent[list(MONITORED)], data.feature_psi)
    mean_psi = float(table["psi"].mean()) if len(recent) else 0.0
    score_psi = psi(reference["score"].to_numpy(), recent_scores) if len(recent_scores) else 0.0
    recent_ap = weighted = None
    if int(labelled["is_fraud"].sum()) >= config.min_frauds:
        recent_ap = float(average_precision_score(labelled["is_fraud"], labelled["score"]))
        if "weight" in labelled:
            reach = labelled[labelled["weight"].notna()]
            weighted = weighted_ap(reach["is_fraud"].to_numpy(), reach["score"].to_numpy(), reach["weight"].to_numpy(),
                                   reach["card_id"].to_numpy(), resamples=200)
    return DriftReport(
        as_of=as_of, champion_version=version, rows=len(recent), min_rows=min_rows,
        data_drift=bool(enough and mean_psi > data_threshold), mean_psi=mean_psi, mean_psi_threshold=data_threshold,
        drifted_share=float(table["drifted"].mean()) if len(recent) else 0.0,
        score_psi=score_psi, score_psi_threshold=score_threshold,
        score_drift=bool(enough_scores and score_psi > score_threshold),
        recent_average_precision=recent_ap, reference_average_precision=reference_ap,
        performance_decay=bool(recent_ap is not None
                               and recent_ap < reference_ap * (1 - config.max_relative_ap_drop)),
        table=table, last_signal=last_signal, cooldown_days=config.cooldown_days, weighted_average_precision=weighted,
    )


def read_window(store, as_of: float, config: MonitorConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What one check reads: the recent window with its features; the matured window's scores only, with the
    labels known at `as_of`. Two indexed time ranges."""
    maturity = config.maturity_days * DAY
    recent, _ = store.frames(as_of - config.window_days * DAY, as_of)
    matured, labels = store.frames(as_of - maturity - config.performance_window_days * DAY, as_of - maturity,
                                   known_by=as_of, features=False)
    return recent, matured, labels


def read_offline(offline, as_of: float, config: MonitorConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`read_window`'s three frames from the offline store (the recent one with a column a feature, as
    `decode_decisions` gives), each window a sample of at most about `config.sample_rows` rows."""
    from fraudloop.pipelines.offline.build import read_sample

    maturity = config.maturity_days * DAY
    policy = ["transaction_id", "card_id", "event_time", "score", "model_version", "decision", "propensity"]
    recent, _ = read_sample(offline, as_of - config.window_days * DAY, as_of, [*policy, *FEATURE_NAMES],
                            config.sample_rows)
    matured, labels = read_sample(offline, as_of - maturity - config.performance_window_days * DAY, as_of - maturity,
                                  policy, config.sample_rows, known_by=as_of)
    return recent, matured, labels


def check_and_record(store_url: str, reg: registry.RegistryConfig, as_of: float,
                config: MonitorConfig = MonitorConfig(), log: bool = True, offline=None) -> DriftReport:
    """Read the store (`offline`: the offline store, pipelines/offline/) and the champion's reference, assess, and
    log the report to MLflow."""
    from fraudloop.models.store import Store

    version = registry.alias_version(reg, registry.CHAMPION)
    if version is None:
        raise ValueError(f"no '{registry.CHAMPION}' version of {reg.model_name} to monitor")
    info = registry.version_info(reg, version)
    reference = registry.load_run_frame(reg, info.run_id, REFERENCE_ARTIFACT)
    reference_ap = reference_average_precision(
        reference, registry.client(reg).get_run(info.run_id).data.metrics["average_precision"])
    calibrated = calibrator(reference, config)
    key = f"{config.detectable_psi:g}/{config.false_alarm_rate:g}"
    cached = json.loads(info.tags.get(MIN_ROWS_TAG, "{}"))
    if key in cached:  # the costly part of the calibration depends only on the champion and these settings
        calibrated.min_rows = int(cached[key])

    if offline is not None:
        recent_decisions, own, labels = read_offline(offline, as_of, config)
        recent = recent_decisions
    else:
        store = Store(store_url)
        try:
            recent_decisions, own, labels = read_window(store, as_of, config)
        finally:
            store.close()
        recent = decode_decisions(recent_decisions)
    recent_scores = recent_decisions.loc[recent_decisions["model_version"] == version, "score"].to_numpy(float)
    own = own[own["model_version"] == version]
    # the unknown ones (blocked, no outcome) are left out, as in training sets (training_set.py says why)
    known = known_outcomes(own["transaction_id"], own["decision"], labels, as_of)
    labelled = pd.DataFrame({"score": own["score"].to_numpy(float), "is_fraud": known["is_fraud"].to_numpy(),
                             "card_id": own["card_id"].to_numpy()})
    propensity = own["propensity"].fillna(1.0)  # null: stored before exploration
    weights = observation_weights(own["decision"], propensity)
    if weights is not None:  # a block no draw could turn is out of the estimate's scope (training_set.explorable)
        labelled["weight"] = np.where(explorable(own["decision"], propensity), weights, np.nan)
    labelled = labelled[(known["label_source"] != UNKNOWN).to_numpy()]
    last_signal = info.tags.get(SIGNAL_TAG)
    result = assess(reference, recent, recent_scores, labelled, reference_ap, as_of, version, config,
                    float(last_signal) if last_signal else None, calibrated)
    if key not in cached:
        registry.tag_version(reg, version, {MIN_ROWS_TAG: json.dumps({**cached, key: result.min_rows})})
    if log:
        _log(reg, result, reference["score"].to_numpy(), recent_scores, config)
    if result.signal:
        registry.tag_version(reg, version, {SIGNAL_TAG: repr(as_of)})
    return result


def _log(reg: registry.RegistryConfig, result: DriftReport, reference_scores: np.ndarray, recent_scores: np.ndarray,
         config: MonitorConfig) -> None:
    client = registry.client(reg)
    experiment_id = registry.side_experiment(reg, "monitoring")
    when = pd.Timestamp(result.as_of, unit="s").strftime("%Y-%m-%d %H:%M")
    run = client.create_run(experiment_id, run_name=f"drift {when}", tags={
        "champion_version": result.champion_version,
        "verdict": "retrain" if result.signal else "drift (cooldown)" if result.retrain else "stable",
        "summary": result.summary, "as_of": when})
    run_id = run.info.run_id
    metrics = {"rows": result.rows, "min_rows": result.min_rows, "mean_psi": result.mean_psi,
               "mean_psi_threshold": result.mean_psi_threshold, "drifted_share": result.drifted_share,
               "score_psi": result.score_psi, "score_psi_threshold": result.score_psi_threshold,
               "reference_average_precision": result.reference_average_precision}
    if result.recent_average_precision is not None:
        metrics["recent_average_precision"] = result.recent_average_precision
    if result.weighted_average_precision is not None:
        metrics.update({f"weighted_average_precision_{k}": v
                        for k, v in asdict(result.weighted_average_precision).items()})
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for key, value in asdict(config).items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, f"# Drift report, {when} (champion v{result.champion_version})\n\n{result.summary}\n\n"
                    + result.table.to_markdown(index=False, floatfmt=".4f"), "drift/report.md")
    figures = {"drift/feature_psi.png": report.drift_bars(result.table["feature"].tolist(),
                                                          result.table["psi"].to_numpy(),
                                                          result.table["psi_threshold"].to_numpy())}
    if len(recent_scores):
        figures["drift/scores.png"] = report.score_shift(reference_scores, recent_scores)
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)
    client.set_terminated(run_id)
    registry.tag_version(reg, result.champion_version, {
        "last_drift_check": when, "drift_verdict": result.summary[:4900],
        "drift_checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
