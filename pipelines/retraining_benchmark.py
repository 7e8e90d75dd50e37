"""Retraining benchmark: do the gates promote only on evidence, and does the monitor flag drift without false alarms?

Runs the same pure code the DAGs run (`pipelines.gates.judge`, `pipelines.monitor.assess`, the training split)
on simulated worlds whose truth is known, without MLflow or Airflow in the loop (they only move the results):
- promotions: per seed, a world with drift; a challenger no better than the champion (same data, another
  training seed) must not be promoted; a challenger trained after the drift against the pre-drift champion
  must be;
- drift: a stable stretch checked every `check_hours` with a one-day window (false alarms, counted as
  episodes: the cooldown turns an alarm into one retrain a day at most), then injected drift (delay to flag).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from models.training import TrainParams, predict, train
from pipelines.gates import Gates, judge
from pipelines.monitor import DAY, MonitorConfig, assess, calibrator
from pipelines.train import BuildConfig, drift_reference, holdout_masks, latest_split


@dataclass(frozen=True)
class Scenario:
    customers: int = 2_000
    terminals: int = 4_000
    drift_day: int = 50
    days: int = 66  # the drifted world ends here
    train_days: int = 21
    test_days: int = 3
    maturity_days: float = 4.0
    num_boost_round: int = 300
    champion_day: int = 36  # the champion is trained as of this day (before the drift)
    after_drift_day: int = 66  # the challenger that should win is trained as of this day


@dataclass
class World:
    history: pd.DataFrame
    labels: pd.DataFrame
    rows: pd.DataFrame  # features as the scorer computes them (the shared code)
    start: float

    def at(self, day: float) -> float:
        return self.start + day * DAY


def make_world(scenario: Scenario, seed: int) -> World:
    from pipelines.simulate import SimulationConfig, labels_of, simulate
    from pipelines.training_set import history_rows

    history = simulate(SimulationConfig(customers=scenario.customers, terminals=scenario.terminals,
                                        days=scenario.days, seed=seed, drift_day=scenario.drift_day,
                                        label_delay_days=2.0, label_delay_sigma=0.5), progress=False)
    labels = labels_of(history)
    return World(history, labels, history_rows(history, labels), float(history["time"].min()) // DAY * DAY)


@dataclass
class Model:
    booster: object
    holdout: pd.DataFrame  # the model's own holdout, with its scores
    reference: pd.DataFrame  # the monitor's reference

    @property
    def holdout_ap(self) -> float:
        from sklearn.metrics import average_precision_score

        return float(average_precision_score(self.holdout["is_fraud"], self.holdout["score"]))


def fit(world: World, scenario: Scenario, as_of_day: float, seed: int) -> Model:
    """What `retrain` trains as of a day: the latest split of the point-in-time training set."""
    from pipelines.training_set import training_set_as_of

    as_of = world.at(as_of_day)
    rows = world.rows[world.rows["event_time"] <= as_of]
    frame = training_set_as_of(rows, world.labels, as_of, scenario.maturity_days * DAY)
    config = BuildConfig(scenario.train_days, 0, scenario.test_days, scenario.maturity_days,
                         TrainParams(num_boost_round=scenario.num_boost_round, seed=seed))
    split = latest_split(frame["event_time"].to_numpy(), config)
    train_rows, test_rows = holdout_masks(frame, split)
    booster = train(frame[train_rows], frame["is_fraud"].to_numpy()[train_rows], config.params)
    holdout = frame[test_rows]
    return Model(booster, holdout.assign(score=predict(booster, holdout)), drift_reference(frame, split, booster))


def verdict(challenger: Model, champion: Model, gates: Gates):
    """Validation as `validate` does it: both models on the challenger's holdout."""
    holdout = challenger.holdout
    return judge(holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(), holdout["is_fraud"].to_numpy(),
                 holdout["score"].to_numpy(), predict(champion.booster, holdout), gates)


def promotions(world: World, scenario: Scenario, seed: int, gates: Gates) -> dict:
    champion = fit(world, scenario, scenario.champion_day, seed=0)
    same = fit(world, scenario, scenario.champion_day, seed=1_000 + seed)  # no better: same data, another seed
    better = fit(world, scenario, scenario.after_drift_day, seed=0)
    null, real = verdict(same, champion, gates), verdict(better, champion, gates)
    return {"seed": seed, "null_status": null.status, "null_difference": asdict(null.difference),
            "drift_status": real.status, "drift_difference": asdict(real.difference),
            "drift_summary": real.summary}


def monitor(world: World, champion: Model, first_day: float, last_day: float, check_hours: float,
            config: MonitorConfig) -> list[dict]:
    """The monitor's verdicts every `check_hours` from `first_day` to `last_day`, with the cooldown applied."""
    rows, labels = world.rows, world.labels
    time_ = rows["event_time"].to_numpy()
    scores = predict(champion.booster, rows)
    outcome = labels.drop_duplicates("transaction_id", keep="last").set_index("transaction_id")
    reference = champion.reference
    calibrated = calibrator(reference, config)
    checks, last_signal = [], None
    for as_of in np.arange(world.at(first_day), world.at(last_day) + 1, check_hours * 3_600):
        recent = (time_ > as_of - config.window_days * DAY) & (time_ <= as_of)
        matured = ((time_ <= as_of - config.maturity_days * DAY)
                   & (time_ > as_of - (config.maturity_days + config.performance_window_days) * DAY))
        known = outcome.reindex(rows["transaction_id"][matured])
        is_fraud = (known["known_at"] <= as_of).fillna(False).to_numpy(bool)
        labelled = pd.DataFrame({"score": scores[matured], "is_fraud": is_fraud})
        report = assess(reference, rows[recent], scores[recent], labelled,
                        champion.holdout_ap, float(as_of), "champion", config, last_signal, calibrated)
        if report.signal:
            last_signal = float(as_of)
        checks.append({"day": (as_of - world.start) / DAY, "signal": report.signal, "retrain": report.retrain,
                       "rows": report.rows, "min_rows": report.min_rows, "summary": report.summary})
    return checks


@dataclass
class Result:
    seeds: int
    false_promotion_rate: float
    true_promotion_rate: float
    stable_days: float
    false_alarms: int
    detection_delay_days: float | None
    seconds: float
    scenario: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)
    checks: list = field(default_factory=list)
