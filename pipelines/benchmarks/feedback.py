"""Feedback benchmark: does learning from verdicts close the week of blindness after a drift, and are the loop's own
estimates of its champion honest once labels depend on its decisions?

Per seed, a simulated world with drift (the retraining benchmark's `Scenario`), closed from the champion's day on: the
champion decides with exploration (`streaming.decide.explore`), and only the outcomes its decisions let back come
back (`pipelines/data/outcomes.py`: chargebacks, cardholders' answers, analysts working the queue at capacity). Then:
- each day after the drift, a retrain as `retrain` does it (the young feedback trains, a feedback holdout beside the
  mature one) is judged by the gates against the champion; the first pass is the promotion. Three designs on the
  same training sets and holdouts: one model on all known labels pooled (shipped), the delayed-only model of before
  (judged on the mature holdout alone, as before), and Dal Pozzolo's aggregation;
- Pk: the precision of each day's top-k scores (ground truth) of every design;
- the champion's AP on its stable weeks, as the loop estimates it (naive: on labelled rows; weighted by 1 /
  probability: on what was approved, the explored rows standing for what was blocked) beside the truth;
- a null trial: two bagged models of the shipped recipe, the same data, judged against each other.
Up to the first promotion the champion decides, so the world is exact until then (later decisions do not matter for
what is measured).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from fraudloop.models.metrics import weighted_ap
from fraudloop.models.training import BAGGED, TrainParams, fit, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import write_record
from fraudloop.pipelines.benchmarks.retraining import (
    Model,
    Scenario,
    World,
    _counts,
    closed_loop_world,
    make_world,
    retrain_as_of,
)
from fraudloop.pipelines.data.outcomes import IssuerConfig
from fraudloop.pipelines.retraining.gates import PASSED, Gates, Verdict, judge, judge_feedback, with_feedback
from fraudloop.pipelines.retraining.train import BuildConfig, training_split
from fraudloop.pipelines.retraining.training_set import (
    FEEDBACK_SOURCES,
    UNKNOWN,
    known_outcomes,
    mature_rows,
    observation_weights,
    training_set_as_of,
)
from fraudloop.streaming.decide import Exploration

# The alternative measured against the shipped design: Dal Pozzolo et al.'s aggregation (IEEE TNNLS 2018). A feedback
# model on the last days' verdicts, a delayed model on the mature rows, their probabilities averaged (alpha 0.5, as
# published). Not shipped (docs/retraining.md says why): it is here, measured on the same worlds.


@dataclass(frozen=True)
class FeedbackConfig:
    days: float = 7.0  # delta: the feedback model learns the verdicts of this many days
    alpha: float = 0.5  # the feedback model's weight in the average
    num_boost_round: int = 100  # a few hundred verdicts a day: a small model
    min_frauds: int = 5  # and as many genuine: below, a feedback model would learn noise, so the delayed one serves


@dataclass(frozen=True)
class Aggregate:
    """`predict` = (1 - alpha) * delayed + alpha * feedback: the call of a `lightgbm.Booster` (so
    `models.training.predict` takes either)."""

    delayed: lgb.Booster
    feedback: lgb.Booster
    alpha: float = 0.5

    def predict(self, features: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return ((1 - self.alpha) * self.delayed.predict(features, num_threads=num_threads)
                + self.alpha * self.feedback.predict(features, num_threads=num_threads))


@dataclass(frozen=True)
class Settings:
    scenario: Scenario = field(default_factory=Scenario)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    exploration: Exploration = field(default_factory=lambda: Exploration(share=0.05))
    issuer: IssuerConfig = field(default_factory=IssuerConfig)
    test_days: int = 2  # a feedback-era retrain's holdout: the newest days, their verdicts the evidence
    attempts: int = 10  # daily retrains from the day after the drift
    served_day: int = 3  # recovered share: the served model this many days after the drift began
    k: int = 100  # Pk: the day's top-k alerts, the analysts' capacity
    design: str = "pooled"  # the design the product ships (one of DESIGNS): its numbers are the record's keys


def fit_with_feedback(frame: pd.DataFrame, train: np.ndarray, until: float, params: TrainParams,
                      feedback: FeedbackConfig, delayed: lgb.Booster | None = None) -> lgb.Booster | Aggregate:
    """The delayed model on the mature `train` rows, averaged with a feedback model on the feedback of the
    `feedback.days` before `until` (the end of the training period) when there is enough of it. `delayed`: the
    delayed model, already trained on these rows."""
    is_fraud = frame["is_fraud"].to_numpy(bool)
    mature = train & mature_rows(frame)
    booster = delayed if delayed is not None else fit(frame[mature], is_fraud[mature], params)
    time_ = frame["event_time"].to_numpy(float)
    recent = (train & frame["label_source"].isin(FEEDBACK_SOURCES).to_numpy() & (time_ < until)
              & (time_ >= until - feedback.days * DAY))
    frauds = int(is_fraud[recent].sum())
    if feedback.days <= 0 or min(frauds, int(recent.sum()) - frauds) < feedback.min_frauds:
        return booster
    feedback_booster = fit(frame[recent], is_fraud[recent], replace(params, num_boost_round=feedback.num_boost_round))
    return Aggregate(booster, feedback_booster, feedback.alpha)


DESIGNS = ("delayed", "pooled", "aggregate")  # today's; one model on all known labels; Dal Pozzolo's average


@dataclass
class Retrain:
    models: dict  # design -> model
    frame: pd.DataFrame
    mature_test: np.ndarray
    feedback_test: np.ndarray

    def verdict(self, design: str, champion, gates: Gates) -> tuple[str, Verdict, Verdict | None]:
        """As `validate` judges: the mature holdout, and (but for today's delayed design) the feedback holdout."""
        model = self.models[design]
        verdicts = []
        for rows, how in ((self.mature_test, judge), (self.feedback_test, judge_feedback)):
            holdout = self.frame[rows]
            verdicts.append(how(holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(),
                                holdout["is_fraud"].to_numpy(), predict(model, holdout), predict(champion, holdout),
                                gates))
        mature, feedback = verdicts[0], None if design == "delayed" else verdicts[1]
        return with_feedback(mature, feedback), mature, feedback


def retrain(world: World, settings: Settings, as_of_day: float, seed: int = 0, bagged: bool = False) -> Retrain:
    """Every design trained as `retrain` trains as of a day, on the same training set and split."""
    s = settings.scenario
    as_of = world.at(as_of_day)
    rows = world.rows[world.rows["event_time"] <= as_of]
    frame = training_set_as_of(rows, world.labels, as_of, s.maturity_days * DAY, s.train_days * DAY)
    config = BuildConfig(s.train_days, 0, s.test_days, s.maturity_days, feedback_test_days=settings.test_days)
    split, start, train, mature_test, feedback_test = training_split(frame, config)
    params = TrainParams(num_boost_round=s.num_boost_round, seed=seed, **(BAGGED if bagged else {}))
    y = frame["is_fraud"].to_numpy(bool)
    mature_train = train & mature_rows(frame)
    delayed = fit(frame[mature_train], y[mature_train], params)
    until = start if start is not None else (split.start_day + split.span_days) * DAY
    aggregate = fit_with_feedback(frame, train, until, params, settings.feedback, delayed=delayed)
    return Retrain({"delayed": delayed, "pooled": fit(frame[train], y[train], params), "aggregate": aggregate},
                   frame, mature_test, feedback_test)


def as_champion(candidate: Retrain, design: str) -> Model:
    """A retrained model as the world's champion: thresholds (closed_loop_world) from its mature holdout."""
    holdout = candidate.frame[candidate.mature_test]
    model = candidate.models[design]
    return Model(model, holdout.assign(score=predict(model, holdout)), holdout, {})


def precision_at_k(truth: np.ndarray, score: np.ndarray, k: int) -> float:
    return float(truth[np.argsort(-score, kind="stable")[:k]].mean())


def seed_trial(settings: Settings, seed: int, gates: Gates) -> dict:
    """One world: the champion of the champion's day decides until the day before the drift, then one retrained
    then with the shipped design (a loop that retrains; a champion a month old would lose to any fresh model); then
    the retrains after the drift."""
    from sklearn.metrics import average_precision_score

    s = settings.scenario
    world = make_world(s, seed)
    first = retrain_as_of(world, s, s.champion_day, seed=0)
    closed = closed_loop_world(world, s, first, settings.issuer, seed, settings.exploration)
    bias = evaluation(closed, first.booster, world.history["is_fraud"].to_numpy(bool), settings)
    fresh_day = s.drift_day - 1
    champion = as_champion(retrain(closed, settings, fresh_day), settings.design)
    closed = closed_loop_world(world, s, champion, settings.issuer, seed + 1, settings.exploration,
                               from_day=fresh_day, earlier=closed)
    truth = world.history["is_fraud"].to_numpy(bool)
    time_ = closed.rows["event_time"].to_numpy()

    def day_rows(first_day: float, last_day: float) -> np.ndarray:
        return (time_ >= closed.at(first_day)) & (time_ < closed.at(last_day))

    days = []
    for k in range(1, settings.attempts + 1):
        as_of_day = s.drift_day + k
        candidate = retrain(closed, settings, as_of_day)
        today = day_rows(as_of_day, as_of_day + 1)
        entry = {"day": as_of_day}
        for design in DESIGNS:
            status, mature, feedback = candidate.verdict(design, champion.booster, gates)
            score = predict(candidate.models[design], closed.rows[today])
            entry[design] = {"status": status, "mature_status": mature.status,
                             "feedback_status": feedback.status if feedback else None,
                             "feedback_frauds": feedback.evidence.frauds if feedback else None,
                             "feedback_difference": asdict(feedback.difference) if feedback and feedback.difference
                             else None,
                             "pk": precision_at_k(truth[today], score, settings.k),
                             "ap": float(average_precision_score(truth[today], score))}
        score = predict(champion.booster, closed.rows[today])
        entry["champion"] = {"pk": precision_at_k(truth[today], score, settings.k),
                             "ap": float(average_precision_score(truth[today], score))}
        entry["models"] = candidate.models
        days.append(entry)
    served_day = s.drift_day + settings.served_day
    on_day = day_rows(served_day, served_day + 1)
    before = float(average_precision_score(truth[day_rows(s.champion_day, s.drift_day)],
                                           predict(first.booster, closed.rows[day_rows(s.champion_day, s.drift_day)])))
    champion_after = float(average_precision_score(truth[on_day], predict(champion.booster, closed.rows[on_day])))
    trial = {"seed": seed, "ap_before_drift": before, "ap_champion_served_day": champion_after}
    for design in DESIGNS:
        promoted = next((d for d in days if d[design]["status"] == PASSED), None)
        served = (promoted["models"][design] if promoted and promoted["day"] <= served_day else champion.booster)
        after = float(average_precision_score(truth[on_day], predict(served, closed.rows[on_day])))
        trial[design] = {"days_to_first_promotion": None if promoted is None else promoted["day"] - s.drift_day,
                         "ap_served_day": after,
                         "recovered_share": (after - champion_after) / (before - champion_after)
                         if before > champion_after else None}
    for d in days:
        d.pop("models")
    return {**trial, "days": days, "null": null_trial(closed, settings, gates, seed), **bias,
            **exploration_cost(closed, world, settings)}


def null_trial(world: World, settings: Settings, gates: Gates, seed: int) -> dict:
    """Two bagged retrains of the shipped design on the same closed-loop data (the drift's eve), one judged against
    the other as `validate` judges: exchangeable, so a pass is a false promotion."""
    day = settings.scenario.drift_day
    a, b = (retrain(world, settings, day, seed=value, bagged=True) for value in (0, 1_000 + seed))
    status, mature, feedback = b.verdict(settings.design, a.models[settings.design], gates)
    return {"status": status, "mature_status": mature.status, "feedback_status": feedback and feedback.status}


def evaluation(world: World, champion, truth: np.ndarray, settings: Settings) -> dict:
    """The champion's AP on its stable weeks (mature at the drift) as the loop estimates it, against the truth.
    Naive: the labelled rows (a blocked row without an outcome left out). Weighted: the approved rows with an outcome
    by then, each weighted 1 / its probability of approval (the explored ones stand for what was blocked)."""
    s = settings.scenario
    as_of = world.at(s.drift_day)
    time_ = world.rows["event_time"].to_numpy()
    rows = (time_ >= world.at(s.champion_day)) & (time_ <= as_of - s.maturity_days * DAY)
    frame = world.rows[rows]
    known = known_outcomes(frame["transaction_id"], frame["decision"], world.labels, as_of)
    scores = predict(champion, frame)
    labelled = (known["label_source"] != UNKNOWN).to_numpy()
    weights = observation_weights(frame["decision"], frame["propensity"])
    y, cards = known["is_fraud"].to_numpy(bool), frame["card_id"].to_numpy()
    naive = weighted_ap(y, scores, labelled.astype(float), cards, resamples=200)
    ips = weighted_ap(y, scores, weights, cards, resamples=200)
    from sklearn.metrics import average_precision_score

    true = float(average_precision_score(truth[rows], scores))
    return {"ap_true": true, "ap_naive": naive.estimate, "ap_ips": ips.estimate, "ap_ips_low": ips.low,
            "ap_ips_high": ips.high, "ips_effective_rows": ips.effective_rows,
            "ips_effective_frauds": ips.effective_frauds}


def exploration_cost(world: World, history_world: World, settings: Settings) -> dict:
    s = settings.scenario
    explored = world.rows["explored"].to_numpy(bool)
    fraud = history_world.history["is_fraud"].to_numpy(bool)
    amount = world.rows["amount"].to_numpy(float)
    span = s.days - s.champion_day
    return {"explored_per_day": float(explored.sum() / span),
            "explored_frauds_per_day": float((explored & fraud).sum() / span),
            "explored_fraud_amount_per_day": float(amount[explored & fraud].sum() / span)}


@dataclass
class Result:
    seeds: int
    design: str
    days_to_first_promotion_after_drift: float | None
    recovered_share_day3: float | None
    pk_feedback: float
    pk_pooled: float
    evaluation_bias_naive: float
    evaluation_bias_ips: float
    exploration_cost_per_day: dict
    false_promotion_rate: float
    seconds: float
    designs: dict = field(default_factory=dict)  # every design's numbers, the shipped one's as above
    settings: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)


def run(seeds: int = 10, settings: Settings | None = None, gates: Gates | None = None,
        progress: bool = True) -> Result:
    settings, gates = settings or Settings(), gates or Gates()
    trials, started = [], time.perf_counter()
    for seed in range(seeds):
        trial = seed_trial(settings, seed, gates)
        trials.append(trial)
        if progress:
            print(f"seed {seed}: " + "; ".join(
                f"{d}: first promotion {_days(trial[d]['days_to_first_promotion'])}, recovered "
                f"{_share(trial[d]['recovered_share'])}, Pk {np.mean([x[d]['pk'] for x in trial['days']]):.3f}"
                for d in DESIGNS) + f"; champion AP true {trial['ap_true']:.3f} naive {trial['ap_naive']:.3f} "
                f"weighted {trial['ap_ips']:.3f}; null {trial['null']}", flush=True)
    return summarise(trials, settings, time.perf_counter() - started)


def _median_days(values: list) -> float | None:
    """Median with 'never promoted' counted as later than any attempt (inf); None if most never were."""
    days = [np.inf if v is None else v for v in values]
    median = float(np.median(days)) if days else np.inf
    return median if np.isfinite(median) else None


def summarise(trials: list[dict], settings: Settings, seconds: float) -> Result:
    designs = {}
    for design in DESIGNS:
        recovered = [t[design]["recovered_share"] or 0.0 for t in trials]
        designs[design] = {
            "days_to_first_promotion_after_drift": _median_days([t[design]["days_to_first_promotion"] for t in trials]),
            "recovered_share_day3": float(np.median(recovered)) if recovered else None,
            "pk": float(np.mean([d[design]["pk"] for t in trials for d in t["days"]])),
            "ap_after_drift": float(np.mean([d[design]["ap"] for t in trials for d in t["days"]])),
        }
    shipped = designs[settings.design]
    cost = {key: float(np.mean([t[key] for t in trials]))
            for key in ("explored_per_day", "explored_frauds_per_day", "explored_fraud_amount_per_day")}
    return Result(
        seeds=len(trials), design=settings.design,
        days_to_first_promotion_after_drift=shipped["days_to_first_promotion_after_drift"],
        recovered_share_day3=shipped["recovered_share_day3"],
        pk_feedback=shipped["pk"], pk_pooled=designs["pooled"]["pk"],
        evaluation_bias_naive=float(np.mean([t["ap_naive"] - t["ap_true"] for t in trials])),
        evaluation_bias_ips=float(np.mean([t["ap_ips"] - t["ap_true"] for t in trials])),
        exploration_cost_per_day=cost,
        false_promotion_rate=float(np.mean([t["null"]["status"] == PASSED for t in trials])),
        seconds=seconds, designs=designs, settings=asdict(settings), trials=trials)


def _days(value: float | None) -> str:
    return "never within the attempts" if value is None else f"{value:g} days"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def to_markdown(result: Result, command: str) -> str:
    s = result.settings
    sc, e, i, f = s["scenario"], s["exploration"], s["issuer"], s["feedback"]
    t = result.trials
    cost = result.exploration_cost_per_day
    names = {"delayed": "delayed only (before this change)", "pooled": "all known labels pooled, verdicts at once",
             "aggregate": f"aggregate: delayed + feedback model (last {f['days']:g} days), alpha {f['alpha']:g}"}

    def spread(values: list[float], fmt: str) -> str:
        return f"{min(values):{fmt}} / {float(np.median(values)):{fmt}} / {max(values):{fmt}}"

    feedback_frauds = [d[result.design]["feedback_frauds"] for x in t for d in x["days"]
                       if d[result.design]["feedback_frauds"] is not None]
    lines = [
        "# Feedback: verdicts used at once, and the loop's estimates of its champion (measured)",
        "",
        f"Command: `{command}` ({result.seconds / 60:.0f} min on this machine). Pure code as the DAGs run it "
        "(training set, split, gates, the exploration of `streaming/decide.py`), on closed-loop simulated worlds "
        "(pipelines/benchmarks/feedback.py says how).",
        "",
        f"Worlds: {result.seeds} seeds, {sc['customers']:,} cards, {sc['terminals']:,} terminals; drift from day "
        f"{sc['drift_day']}; champion of day {sc['champion_day']} deciding with exploration, retrained on the drift's "
        f"eve (day {sc['drift_day'] - 1}) with the shipped design; retrains every day after the drift "
        f"({s['attempts']} attempts), maturity {sc['maturity_days']:g} days, mature holdout {sc['test_days']} days, "
        f"feedback holdout {s['test_days']} days. Issuer: analysts work {i['review_capacity_per_day']:g} cases a "
        f"day, {i['cardholder_share']:.0%} of declines answered by the cardholder, chargebacks after a median "
        f"{i['chargeback_delay_days']:g} days. Exploration: {e['share']:.0%} of declines and reviews up to amount "
        f"{e['max_amount']:g} and score {e['max_score']:g}. Shipped design: **{result.design}**.",
        "",
        "| key | target | measured |",
        "|---|---|---|",
        f"| days_to_first_promotion_after_drift (median) | <= 2 | **{_days(result.days_to_first_promotion_after_drift)}"
        "** |",
        f"| recovered_share_day3 (median, ground truth) | >= 0.6 | **{_share(result.recovered_share_day3)}** |",
        f"| pk_feedback vs pk_pooled (mean daily precision of the top {s['k']}, days after the drift) | not worse | "
        f"**{result.pk_feedback:.3f}** vs {result.pk_pooled:.3f} |",
        f"| evaluation_bias_naive (champion's estimated AP - true AP, mean over seeds) | (as measured) | "
        f"**{result.evaluation_bias_naive:+.3f}** |",
        f"| evaluation_bias_ips | abs <= 0.02 | **{result.evaluation_bias_ips:+.3f}** |",
        f"| exploration_cost_per_day | (reported) | **{cost['explored_frauds_per_day']:.1f} frauds, amount "
        f"{cost['explored_fraud_amount_per_day']:,.0f}** ({cost['explored_per_day']:.1f} transactions explored) |",
        f"| false_promotion_rate (two bagged retrains of the shipped design, closed loop) | <= 0.05 | "
        f"**{result.false_promotion_rate:.0%}** |",
        "",
        "Every design on the same worlds and training sets (mean over seeds and days after the drift; days to the "
        "first promotion: median over seeds, 'never' when most seeds were not promoted within the attempts):",
        "",
        "| design | days to first promotion | recovered share, day 3 | Pk | AP, all traffic |",
        "|---|---|---|---|---|",
        *(f"| {names[d]} | {_days(v['days_to_first_promotion_after_drift'])} | {_share(v['recovered_share_day3'])} "
          f"| {v['pk']:.3f} | {v['ap_after_drift']:.3f} |" for d, v in result.designs.items()),
        f"| the champion (not retrained) | - | - | {np.mean([d['champion']['pk'] for x in t for d in x['days']]):.3f}"
        f" | {np.mean([d['champion']['ap'] for x in t for d in x['days']]):.3f} |",
        "",
        f"The feedback holdout's frauds (cards already known compromised removed), min / median / max over seeds and "
        f"days: {spread(feedback_frauds, '.0f') if feedback_frauds else '-'}; the gates need "
        f"{Gates().min_frauds}.",
        "",
        "The champion's AP on its stable weeks (min / median / max over seeds): true "
        f"{spread([x['ap_true'] for x in t], '.3f')}; "
        f"naive, on labelled rows {spread([x['ap_naive'] for x in t], '.3f')}; weighted by 1 / probability "
        f"{spread([x['ap_ips'] for x in t], '.3f')}, its 95 % interval covering the truth in "
        f"{sum(x['ap_ips_low'] <= x['ap_true'] <= x['ap_ips_high'] for x in t)} of {len(t)} seeds; effective sample "
        f"{spread([x['ips_effective_rows'] for x in t], ',.0f')} rows, "
        f"{spread([x['ips_effective_frauds'] for x in t], ',.0f')} frauds.",
        "",
        f"Null trials: {_counts([x['null']['status'] for x in t])} (on the holdout: "
        f"{_counts([x['null']['mature_status'] for x in t])}; on the feedback holdout: "
        f"{_counts([str(x['null']['feedback_status']) for x in t])}).",
    ]
    return "\n".join(lines) + "\n"


def record(result: Result, path: Path, command: str) -> None:
    write_record(path, to_markdown(result, command), asdict(result))
