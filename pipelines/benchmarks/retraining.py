"""Retraining benchmark: do the gates promote only on evidence, and does the monitor flag drift without false alarms?

Runs the same pure code the DAGs run (`pipelines.retraining.gates.judge`, `pipelines.retraining.monitor.assess`,
the training split) on simulated worlds whose truth is known, without MLflow or Airflow in the loop (they only
move the results):
- promotions: per seed, a world with drift; a challenger no better than the champion (same data and recipe,
  another training seed; both bagged, as unbagged training ignores the seed) must not be promoted; a
  challenger trained after the drift against the pre-drift champion must be;
- drift: a stable stretch checked every `check_hours` with a one-day window (false alarms, counted as
  episodes: the cooldown turns an alarm into one retrain a day at most), then injected drift (delay to flag).

Closed loop (`closed_loop`, the issuer's settings): the same worlds again, labelled as an issuer receives labels
(pipelines/data/outcomes.py). Until the champion's day no model decides, so every fraud is charged back (the
worlds agree there, and so do their champions, the same-data and the realistic-margin trials); from it, the
champion decides every transaction at the thresholds validation derives from its holdout, and only what its
decisions let back comes back: chargebacks of approved frauds, cardholders' answers on a share of declines, and
the verdicts of analysts who work the review queue at its capacity. The after-drift challenger and the monitor
then run on those labels, as today's loop would. One approximation: the decisions are taken on features
computed with the open loop's labels (the label-delayed terminal risk sees every fraud); the rows everything
trains and is judged on are recomputed with the closed loop's labels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fraudloop.models.training import BAGGED, TrainParams, fit, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.data.outcomes import IssuerConfig
from fraudloop.pipelines.retraining.gates import Gates, judge
from fraudloop.pipelines.retraining.monitor import MonitorConfig, assess, calibrator, reference_average_precision
from fraudloop.pipelines.retraining.train import (
    BuildConfig,
    drift_reference,
    frauds_by_source,
    holdout_masks,
    latest_split,
)
from fraudloop.pipelines.retraining.training_set import UNKNOWN, known_outcomes
from fraudloop.streaming.decide import Exploration


@dataclass(frozen=True)
class Scenario:
    customers: int = 2_000
    terminals: int = 4_000
    # The champion is trained as of this day, before the drift. Not earlier: the simulated world starts empty,
    # and its 30-day windows (37 days for the label-delayed terminal risk) fill up until about day 40, a
    # drift of its own that the monitor rightly flags.
    champion_day: int = 50
    drift_day: int = 84  # stable from the champion's day to here: the false-alarm stretch
    after_drift_day: int = 98  # the challenger that should win is trained as of this day
    days: int = 108  # the post-drift models are compared on [after_drift_day, days) with the simulator's truth
    train_days: int = 21
    test_days: int = 3
    maturity_days: float = 4.0
    num_boost_round: int = 300
    weak_rounds: int = 40  # a champion this much smaller, on the same data: a modestly better challenger's bar


@dataclass
class World:
    history: pd.DataFrame
    labels: pd.DataFrame
    rows: pd.DataFrame  # features as the scorer computes them (the shared code); `decision` in a closed loop
    start: float

    def at(self, day: float) -> float:
        return self.start + day * DAY


def make_world(scenario: Scenario, seed: int) -> World:
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
    from fraudloop.pipelines.retraining.training_set import history_rows

    history = simulate(SimulationConfig(customers=scenario.customers, terminals=scenario.terminals,
                                        days=scenario.days, seed=seed, drift_day=scenario.drift_day,
                                        label_delay_days=2.0, label_delay_sigma=0.5), progress=False)
    labels = labels_of(history)
    return World(history, labels, history_rows(history, labels), float(history["time"].min()) // DAY * DAY)


def closed_loop_world(world: World, scenario: Scenario, champion: Model, issuer: IssuerConfig, seed: int,
                      exploration: Exploration | None = None, from_day: float | None = None,
                      earlier: World | None = None) -> World:
    """`world`'s transactions labelled as an issuer receives labels once `champion` decides (from its day, or
    `from_day`; before it, as in `earlier`, or the oracle's), with `exploration` (the rows' `propensity`: each
    decision's probability; `explored`: approved by exploration)."""
    from fraudloop.models.thresholds import Targets, choose
    from fraudloop.pipelines.data.outcomes import issuer_labels, work_queue
    from fraudloop.pipelines.retraining.training_set import history_rows
    from fraudloop.streaming.decide import APPROVE, explore, outcomes

    rng = np.random.default_rng(10_000 + seed)
    holdout = champion.holdout
    targets = Targets(review_capacity_per_day=issuer.review_capacity_per_day)  # as validation derives them
    review, decline = choose(holdout["event_time"].to_numpy(), holdout["is_fraud"].to_numpy(),
                             holdout["score"].to_numpy(), targets)
    from_day = world.at(scenario.champion_day if from_day is None else from_day)
    time_ = world.history["time"].to_numpy(float)
    scored = time_ >= from_day
    score = predict(champion.booster, world.rows)
    decision = np.where(scored, np.asarray(outcomes(score, review, decline), dtype=object), APPROVE)
    policy = decision
    propensity = np.ones(len(decision))
    if exploration is not None:
        taken, probability = explore(decision.tolist(), score, world.rows["amount"].to_numpy(),
                                     rng.random(len(decision)), exploration)
        decision = np.asarray(taken, dtype=object)
        propensity = np.where(scored, probability, 1.0)
    explored = (decision == APPROVE) & (policy != APPROVE)
    if earlier is not None:
        decision = np.where(scored, decision, earlier.rows["decision"].to_numpy(object))
        for column in ("propensity", "explored"):
            if column in earlier.rows:
                mine = propensity if column == "propensity" else explored
                mine[~scored] = earlier.rows[column].to_numpy()[~scored]
    decided = pd.DataFrame({"transaction_id": world.history["transaction_id"].to_numpy(), "time": time_,
                            "decision": decision, "score": score, "is_fraud": world.history["is_fraud"].to_numpy()})
    past = world.labels.assign(source="chargeback") if earlier is None else earlier.labels
    before = past[past["transaction_id"].isin(decided.loc[~scored, "transaction_id"])]
    after = decided[scored]
    reviews = after.loc[after["decision"] == "review", ["transaction_id", "time", "score", "is_fraud"]]
    verdicts, _ = work_queue(reviews, from_day, world.at(scenario.days), issuer, rng)
    labels = pd.concat([before, issuer_labels(after, issuer, rng), verdicts],
                       ignore_index=True).sort_values(["known_at", "transaction_id"], kind="stable", ignore_index=True)
    rows = history_rows(world.history, labels).assign(decision=decision, propensity=propensity, explored=explored)
    return World(world.history, labels, rows, world.start)


@dataclass
class Model:
    booster: object
    holdout: pd.DataFrame  # the model's own holdout, with its scores
    reference: pd.DataFrame  # the monitor's reference
    frauds_by_source: dict  # the training period's frauds, by their label's source

    @property
    def holdout_ap(self) -> float:
        from sklearn.metrics import average_precision_score

        return float(average_precision_score(self.holdout["is_fraud"], self.holdout["score"]))


# Training is deterministic without bagging: two seeds give one model. The no-better trial bags rows and
# features instead (BAGGED), so champion and challenger are two draws of one recipe (exchangeable: the exact null).


def retrain_as_of(world: World, scenario: Scenario, as_of_day: float, seed: int, rounds: int | None = None,
                  bagged: bool = False) -> Model:
    """What `retrain` trains as of a day: the latest split of the point-in-time training set."""
    from fraudloop.pipelines.retraining.training_set import training_set_as_of

    as_of = world.at(as_of_day)
    rows = world.rows[world.rows["event_time"] <= as_of]
    frame = training_set_as_of(rows, world.labels, as_of, scenario.maturity_days * DAY)
    config = BuildConfig(scenario.train_days, 0, scenario.test_days, scenario.maturity_days,
                         TrainParams(num_boost_round=rounds or scenario.num_boost_round, seed=seed,
                                     **(BAGGED if bagged else {})))
    split = latest_split(frame["event_time"].to_numpy(), config)
    train_rows, test_rows = holdout_masks(frame, split)
    booster = fit(frame[train_rows], frame["is_fraud"].to_numpy()[train_rows], config.params)
    holdout = frame[test_rows]
    return Model(booster, holdout.assign(score=predict(booster, holdout)), drift_reference(frame, split, booster),
                 frauds_by_source(frame[train_rows]))


def verdict(challenger: Model, champion: Model, gates: Gates):
    """Validation as `validate` does it: both models on the challenger's holdout."""
    holdout = challenger.holdout
    return judge(holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(), holdout["is_fraud"].to_numpy(),
                 holdout["score"].to_numpy(), predict(champion.booster, holdout), gates)


def average_precision_on(world: World, model: Model, first_day: float, last_day: float) -> float:
    """AP on every transaction of the days, with the simulator's ground truth (no label delay)."""
    from sklearn.metrics import average_precision_score

    time_ = world.rows["event_time"].to_numpy()
    days = (time_ >= world.at(first_day)) & (time_ < world.at(last_day))
    truth = world.history["is_fraud"].to_numpy()[days]
    return float(average_precision_score(truth, predict(model.booster, world.rows[days])))


def promotions(world: World, scenario: Scenario, seed: int, gates: Gates) -> tuple[dict, Model]:
    champion = retrain_as_of(world, scenario, scenario.champion_day, seed=0)
    # no better: the same data and recipe, another seed (bagged: see BAGGED)
    bagged_champion = retrain_as_of(world, scenario, scenario.champion_day, seed=0, bagged=True)
    same = retrain_as_of(world, scenario, scenario.champion_day, seed=1_000 + seed, bagged=True)
    weak = retrain_as_of(world, scenario, scenario.champion_day, seed=0, rounds=scenario.weak_rounds)
    null = verdict(same, bagged_champion, gates)
    modest = verdict(champion, weak, gates)  # the full model challenging a smaller one
    before = average_precision_on(world, champion, scenario.champion_day, scenario.drift_day)
    weak_before = average_precision_on(world, weak, scenario.champion_day, scenario.drift_day)
    return {"seed": seed, "null_status": null.status, "null_difference": asdict(null.difference),
            "modest_status": modest.status, "modest_difference": asdict(modest.difference),
            "modest_true_difference": before - weak_before,
            **after_drift(world, scenario, champion, gates)}, champion


def after_drift(world: World, scenario: Scenario, champion: Model, gates: Gates) -> dict:
    """The challenger trained after the drift (on `world`'s labels) against the pre-drift champion."""
    better = retrain_as_of(world, scenario, scenario.after_drift_day, seed=0)
    real = verdict(better, champion, gates)
    before = average_precision_on(world, champion, scenario.champion_day, scenario.drift_day)
    old_after = average_precision_on(world, champion, scenario.after_drift_day, scenario.days)
    new_after = average_precision_on(world, better, scenario.after_drift_day, scenario.days)
    return {"drift_status": real.status, "drift_difference": asdict(real.difference),
            "ap_before_drift": before, "ap_after_drift_champion": old_after, "ap_after_drift_retrained": new_after,
            "recovered_share": (new_after - old_after) / (before - old_after) if before > old_after else None,
            "retrained_frauds_by_source": better.frauds_by_source}


def monitor(world: World, champion: Model, first_day: float, last_day: float, check_hours: float,
            config: MonitorConfig) -> list[dict]:
    """The monitor's verdicts every `check_hours` from `first_day` to `last_day`, with the cooldown applied."""
    rows, labels = world.rows, world.labels
    time_ = rows["event_time"].to_numpy()
    scores = predict(champion.booster, rows)
    decision = rows.get("decision")
    reference = champion.reference
    calibrated = calibrator(reference, config)
    reference_ap = reference_average_precision(reference, champion.holdout_ap)
    checks, last_signal = [], None
    for as_of in np.arange(world.at(first_day), world.at(last_day) + 1, check_hours * 3_600):
        recent = (time_ > as_of - config.window_days * DAY) & (time_ <= as_of)
        matured = ((time_ <= as_of - config.maturity_days * DAY)
                   & (time_ > as_of - (config.maturity_days + config.performance_window_days) * DAY))
        known = known_outcomes(rows["transaction_id"][matured], None if decision is None else decision[matured],
                               labels, float(as_of))
        labelled = pd.DataFrame({"score": scores[matured], "is_fraud": known["is_fraud"].to_numpy()}
                                )[(known["label_source"] != UNKNOWN).to_numpy()]  # as the monitor (training_set.py)
        report = assess(reference, rows[recent], scores[recent], labelled,
                        reference_ap, float(as_of), "champion", config, last_signal, calibrated)
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
    modest_promotion_rate: float  # power at a realistic difference: the full model over a 40-tree one
    stable_days: float
    false_alarms: int
    detection_delay_days: float | None
    recovered_share: float | None
    seconds: float
    scenario: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    closed_loop: dict | None = None  # the same keys, measured in the closed loop (and its `issuer` settings)


def run(seeds: int = 20, drift_seeds: int = 3, check_hours: float = 1.0, scenario: Scenario | None = None,
        gates: Gates | None = None, monitor_config: MonitorConfig | None = None, progress: bool = True,
        closed_loop: IssuerConfig | None = None) -> Result:
    """Every seed: a world, the promotion trials; the first `drift_seeds` worlds: the monitor, stable then drifted.
    `closed_loop`: each world again with the labels an issuer would receive (the module's docstring), measured with
    the same keys in `Result.closed_loop`."""
    scenario, gates = scenario or Scenario(), gates or Gates()
    config = monitor_config or MonitorConfig(maturity_days=scenario.maturity_days)
    trials, checks, closed_trials, closed_checks = [], [], [], []
    spent = {"open": 0.0, "closed": 0.0}
    for seed in range(seeds):
        started = time.perf_counter()
        world = make_world(scenario, seed)
        trial, champion = promotions(world, scenario, seed, gates)
        trials.append(trial)
        if seed < drift_seeds:
            checks += [{"seed": seed, **c} for c in monitor(world, champion, scenario.champion_day,
                                                             scenario.after_drift_day, check_hours, config)]
        spent["open"] += time.perf_counter() - started
        if progress:
            print(f"seed {seed}: realistic-margin challenger {trial['modest_status']} "
                  f"({trial['modest_difference']['estimate']:+.4f}); same-data challenger {trial['null_status']} "
                  f"({_interval(trial['null_difference'])}); after-drift challenger {trial['drift_status']} "
                  f"({_interval(trial['drift_difference'])})", flush=True)
        if closed_loop is None:
            continue
        started = time.perf_counter()
        closed = closed_loop_world(world, scenario, champion, closed_loop, seed)
        # before the champion's day the worlds agree: the same champion, same-data and realistic-margin trials
        shared = ("seed", "null_status", "null_difference", "modest_status", "modest_difference",
                  "modest_true_difference")
        closed_trials.append({**{k: trial[k] for k in shared}, **after_drift(closed, scenario, champion, gates)})
        if seed < drift_seeds:
            closed_checks += [{"seed": seed, **c} for c in monitor(closed, champion, scenario.champion_day,
                                                                    scenario.after_drift_day, check_hours, config)]
        spent["closed"] += time.perf_counter() - started
        if progress:
            last = closed_trials[-1]
            print(f"seed {seed}, closed loop: after-drift challenger {last['drift_status']} "
                  f"({_interval(last['drift_difference'])}), learnt from frauds by "
                  f"{last['retrained_frauds_by_source']}", flush=True)
    result = summarise(trials, checks, seeds, drift_seeds, spent["open"], scenario, gates, config)
    if closed_loop is not None:
        result.closed_loop = {**asdict(summarise(closed_trials, closed_checks, seeds, drift_seeds, spent["closed"],
                                                 scenario, gates, config)), "issuer": asdict(closed_loop)}
        result.closed_loop.pop("closed_loop")
    return result


def _interval(difference: dict) -> str:
    return f"{difference['estimate']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"


def summarise(trials: list[dict], checks: list[dict], seeds: int, drift_seeds: int, seconds: float,
              scenario: Scenario, gates: Gates, config: MonitorConfig) -> Result:
    stable = [c for c in checks if c["day"] <= scenario.drift_day]
    delays = []
    for seed in range(min(seeds, drift_seeds)):
        flagged = [c["day"] for c in checks if c["seed"] == seed and c["signal"] and c["day"] > scenario.drift_day]
        delays.append(flagged[0] - scenario.drift_day if flagged else float("inf"))
    recovered = [t["recovered_share"] for t in trials if t["recovered_share"] is not None]
    return Result(
        seeds=seeds,
        false_promotion_rate=float(np.mean([t["null_status"] == "passed" for t in trials])),
        true_promotion_rate=float(np.mean([t["drift_status"] == "passed" for t in trials])),
        modest_promotion_rate=float(np.mean([t["modest_status"] == "passed" for t in trials])),
        stable_days=float(min(seeds, drift_seeds) * (scenario.drift_day - scenario.champion_day)),
        false_alarms=int(sum(c["signal"] for c in stable)),
        detection_delay_days=float(max(delays)) if delays else None,
        recovered_share=float(np.median(recovered)) if recovered else None,
        seconds=seconds,
        scenario=asdict(scenario), gates=asdict(gates), monitor=asdict(config), trials=trials,
        checks=[{k: c[k] for k in ("seed", "day", "signal", "retrain", "rows", "min_rows")} for c in checks],
    )


def to_markdown(result: Result, command: str) -> str:
    s, g, m = result.scenario, result.gates, result.monitor
    t = result.trials
    nulls = [x["null_difference"] for x in t]
    real = [x["drift_difference"] for x in t]
    recovered = [x["recovered_share"] for x in t if x["recovered_share"] is not None]
    stable = [c for c in result.checks if c["day"] <= s["drift_day"]]
    raw_alarms = sum(c["retrain"] for c in stable)
    judged = [c for c in stable if c["rows"] >= c["min_rows"]]
    lines = [
        "# Retraining: promotions on evidence, drift without false alarms (measured)",
        "",
        f"Command: `{command}` ({result.seconds / 60:.0f} min on this machine). It runs the gates "
        "(`pipelines/retraining/gates.py`) and the monitor (`pipelines/retraining/monitor.py`) exactly as "
        "`validate` and `drift_monitor` do, on simulated worlds whose truth is known; MLflow and Airflow are left "
        "out because they only carry the results.",
        "",
        f"Worlds: simulator, {s['customers']:,} cards, {s['terminals']:,} terminals, {s['days']} days, seeds 0 to "
        f"{result.seeds - 1}; labels after a log-normal delay (median 2 days, sigma 0.5), maturity "
        f"{s['maturity_days']:g} days. From day {s['drift_day']}: card-testing bursts and genuine spending x 1.3. "
        f"Models: LightGBM, {s['num_boost_round']} trees, {s['train_days']} training days, {s['test_days']} holdout "
        "days right after them, as `retrain` trains when drift schedules it (no gap before the holdout).",
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        f"| challenger no better than the champion (same data as of day {s['champion_day']}, another training seed, "
        f"both bagged) promoted | <= 5 % | **{result.false_promotion_rate:.0%}** of {result.seeds} seeds |",
        f"| challenger trained after the drift (as of day {s['after_drift_day']}) promoted over the pre-drift "
        f"champion | >= 90 % | **{result.true_promotion_rate:.0%}** of {result.seeds} seeds |",
        f"| challenger better by a realistic margin (the {s['num_boost_round']}-tree model over a "
        f"{s['weak_rounds']}-tree champion, same data) promoted | (power; no target) | "
        f"**{result.modest_promotion_rate:.0%}** of {result.seeds} seeds |",
        f"| drift signals (retrains asked for) over {result.stable_days:.0f} stable days, checked every "
        f"{_hours(result)} h | <= 1 | **{result.false_alarms}** |",
        f"| delay from the injected drift to its signal (worst seed) | <= 1 day | "
        f"**{_days(result.detection_delay_days)}** |",
        f"| share of the AP lost to the drift recovered by the promoted model (median over seeds) | >= 80 % | "
        f"**{_share(result.recovered_share)}** |",
        "",
        "Spread over the seeds (min / median / max):",
        "",
        "| | min | median | max |",
        "|---|---|---|---|",
        _spread("AP difference, same-data challenger", [x["estimate"] for x in nulls], "+.4f"),
        _spread("its interval's lower bound", [x["low"] for x in nulls], "+.4f"),
        _spread("AP difference, after-drift challenger", [x["estimate"] for x in real], "+.4f"),
        _spread("its interval's lower bound", [x["low"] for x in real], "+.4f"),
        _spread("AP difference, realistic margin, on the holdout", [x["modest_difference"]["estimate"] for x in t],
                "+.4f"),
        _spread("its interval's lower bound", [x["modest_difference"]["low"] for x in t], "+.4f"),
        _spread(f"the same difference on days {s['champion_day']}-{s['drift_day'] - 1} (ground truth)",
                [x["modest_true_difference"] for x in t], "+.4f"),
        _spread("AP before the drift (champion)", [x["ap_before_drift"] for x in t], ".3f"),
        _spread("AP after the drift, champion", [x["ap_after_drift_champion"] for x in t], ".3f"),
        _spread("AP after the drift, retrained", [x["ap_after_drift_retrained"] for x in t], ".3f"),
        _spread("share of the loss recovered", recovered, ".0%"),
        "",
        f"Verdicts of the same-data challengers: {_counts([x['null_status'] for x in t])}; of the after-drift "
        f"challengers: {_counts([x['drift_status'] for x in t])}; of the realistic-margin challengers: "
        f"{_counts([x['modest_status'] for x in t])}.",
        "",
        f"Drift checks on stable days: {len(stable):,}; judged (window at least the derived minimum of "
        f"{_range([c['min_rows'] for c in stable])} rows): {len(judged):,}; checks over a threshold: {raw_alarms} "
        f"(the cooldown of {m['cooldown_days']:g} day turns an episode into one signal).",
        "",
        f"Gates: bootstrap by card, {g['resamples']:,} resamples, {g['confidence']:.0%} interval, margin "
        f"{g['average_precision_margin']:+g}; evidence minimums {g['min_frauds']} frauds, {g['min_fraud_cards']} "
        f"compromised cards, {g['min_cards']} cards. Monitor: false-alarm rate {m['false_alarm_rate']:g} per check, "
        f"detectable mean PSI {m['detectable_psi']:g}, window {m['window_days']:g} day.",
    ]
    if result.closed_loop:
        lines += ["", *closed_loop_markdown(result)]
    return "\n".join(lines) + "\n"


def closed_loop_markdown(result: Result) -> list[str]:
    """The open and the closed loop side by side: what the oracle's labels were worth to today's learning."""
    c, s = result.closed_loop, result.scenario
    i = c["issuer"]
    closed_trials = c["trials"]

    def sources(trials: list[dict]) -> str:
        names = sorted({k for t in trials for k in t["retrained_frauds_by_source"]})
        return ", ".join(f"{k} {float(np.median([t['retrained_frauds_by_source'].get(k, 0) for t in trials])):,.0f}"
                         for k in names)

    def ap(trials: list[dict], key: str) -> str:
        return f"{float(np.median([t[key] for t in trials])):.3f}"

    return [
        "## Closed loop: the labels an issuer receives",
        "",
        f"The same worlds, labelled from day {s['champion_day']} from the champion's decisions (thresholds as "
        f"validation derives them for {i['review_capacity_per_day']:g} reviews a day): chargebacks of approved "
        f"frauds (log-normal delay, median {i['chargeback_delay_days']:g} days, sigma {i['chargeback_delay_sigma']:g}),"
        f" cardholders' answers on {i['cardholder_share']:.0%} of declines (within {i['cardholder_hours']:g} h), "
        f"and analysts working the review queue at {i['review_capacity_per_day']:g} cases a day, highest score "
        f"first, {i['analyst_error_rate']:.0%} of verdicts wrong, cases expiring after {i['review_expiry_hours']:g} h. "
        "A declined or reviewed transaction with no outcome is unknown, left out of training, holdout and monitor "
        "(docs/retraining.md). Before the champion's day the two worlds agree, so the same-data and "
        "realistic-margin trials are shared; the after-drift challenger and the monitor are measured again. "
        f"({c['seconds'] / 60:.0f} min more.)",
        "",
        "| measure | open loop (oracle) | closed loop |",
        "|---|---|---|",
        f"| after-drift challenger promoted (target >= 90 %) | {result.true_promotion_rate:.0%} | "
        f"**{c['true_promotion_rate']:.0%}** |",
        f"| share of the AP lost to the drift recovered (median; target >= 80 %) | {_share(result.recovered_share)} | "
        f"**{_share(c['recovered_share'])}** |",
        f"| drift signals over {result.stable_days:.0f} stable days (target <= 1) | {result.false_alarms} | "
        f"**{c['false_alarms']}** |",
        f"| delay from the drift to its signal, worst seed (target <= 1 day) | {_days(result.detection_delay_days)} "
        f"| **{_days(c['detection_delay_days'])}** |",
        f"| AP after the drift, retrained (median, ground truth) | {ap(result.trials, 'ap_after_drift_retrained')} | "
        f"**{ap(closed_trials, 'ap_after_drift_retrained')}** |",
        f"| AP after the drift, champion (median; its features recomputed from the loop's labels) | "
        f"{ap(result.trials, 'ap_after_drift_champion')} | **{ap(closed_trials, 'ap_after_drift_champion')}** |",
        f"| frauds the after-drift challenger learns from, by source (median) | {sources(result.trials)} | "
        f"**{sources(closed_trials)}** |",
        "",
        f"Verdicts of the after-drift challengers, closed loop: {_counts([x['drift_status'] for x in closed_trials])}.",
    ]


def _hours(result: Result) -> str:
    days = sorted({round(c["day"], 6) for c in result.checks if c["seed"] == 0})
    return f"{(days[1] - days[0]) * 24:.3g}" if len(days) > 1 else "?"


def _days(value: float | None) -> str:
    return "not flagged" if value is None or not np.isfinite(value) else f"{value:.2f} days"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _spread(label: str, values: list[float], fmt: str) -> str:
    if not values:
        return f"| {label} | - | - | - |"
    return f"| {label} | {min(values):{fmt}} | {float(np.median(values)):{fmt}} | {max(values):{fmt}} |"


def _range(values: list[int]) -> str:
    return f"{min(values):,}-{max(values):,}" if values else "-"


def _counts(values: list[str]) -> str:
    return ", ".join(f"{v} {values.count(v)}" for v in sorted(set(values)))


def record(result: Result, path: Path, command: str) -> None:
    """The Markdown for people at `path`, and beside it the JSON (the issue's keys first) for comparison."""
    write_record(path, to_markdown(result, command), asdict(result))
