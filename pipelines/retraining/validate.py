"""Validate a challenger: both models on the challenger's holdout, the gates, and a verdict a reviewer can read.

Everything lands on the challenger's MLflow run and version: metrics of both models, the paired interval of
their AP difference, the comparison plot, a Markdown report (also appended to the version's description) and
tags (`validation_status`, `validated_against`, ...). `promote` reads those tags. The challenger's review and
decline thresholds are derived here from the stated targets (models/thresholds.py), logged with a threshold table
and tagged on the version, which the scorer applies when it serves it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import matplotlib.pyplot as plt
import pandas as pd
from fraudloop.models import registry, report
from fraudloop.models import thresholds as policy_thresholds
from fraudloop.models.metrics import Estimate, policy_effect, weighted_ap, weighted_precision_recall
from fraudloop.models.training import predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.gates import (
    FAILED,
    PASSED,
    Gates,
    Verdict,
    judge,
    judge_feedback,
    with_feedback,
)
from fraudloop.pipelines.retraining.protocol import test_period
from fraudloop.pipelines.retraining.train import FEEDBACK_TAG, split_of_version, split_rows
from fraudloop.pipelines.retraining.training_set import (
    UNKNOWN,
    explorable,
    known_outcomes,
    mature_rows,
    observation_weights,
    sample_weights,
)

METRICS = ("average_precision", "card_precision_at_100", "recall_at_1pct_fpr", "roc_auc")
VERDICT_ARTIFACT = "validation/verdict.json"
POLICY = ("recall_at_review", "recall_at_decline", "alerts_per_day", "declines_per_day")


@dataclass(frozen=True)
class Validation:
    version: str
    champion_version: str | None
    verdict: Verdict  # on the holdout
    thresholds: dict[str, tuple[float, float]]  # (review, decline) per model: the challenger's derived from targets
    # What the decision policy would feel at each model's own thresholds, on all the holdout days' traffic (the
    # cards already known compromised included, as the scorer sees them)
    policy: dict[str, dict[str, float]]
    live: Verdict | None = None  # on shadow traffic whose labels have matured, when there is a champion
    # on the newest verdicts and cardholders' answers (train.feedback_masks), when the training set has them
    feedback: Verdict | None = field(default=None, kw_only=True)
    # AP over all the holdout's traffic weighted by 1 / probability (exploration), beside the naive one on labelled
    # rows; and the challenger's precision and recall at its review threshold, weighted alike. Empty: no exploration
    weighted: dict[str, Estimate] = field(default_factory=dict, kw_only=True)
    weighted_policy: dict[str, float] = field(default_factory=dict, kw_only=True)
    targets: policy_thresholds.Targets = field(default=policy_thresholds.Targets(), kw_only=True)
    threshold_table: tuple[dict[str, float], ...] = field(default=(), kw_only=True)  # the challenger's, holdout days

    @property
    def status(self) -> str:
        """The holdout's verdict, or a pass on the feedback holdout with the holdout's floors held
        (`gates.with_feedback`); unless the live gate has the evidence to fail it (too little live evidence is
        reported, and does not block: right after training there is none)."""
        status = with_feedback(self.verdict, self.feedback)
        if self.live is not None and self.live.status == FAILED and status == PASSED:
            return FAILED
        return status

    @property
    def summary(self) -> str:
        text = f"{self.status}: holdout {self.verdict.summary}"
        text += f" | feedback {self.feedback.summary}" if self.feedback else ""
        return text + (f" | live (shadow) {self.live.summary}" if self.live else "")

    def as_dict(self) -> dict:
        """What a task passes on and a terminal prints: the verdict, its metrics, interval and reason."""
        return {
            "version": self.version, "status": self.status, "passed": self.status == PASSED,
            "summary": self.summary, "champion_version": self.champion_version,
            **_verdict_dict(self.verdict),
            "live": _verdict_dict(self.live) if self.live else None,
            "feedback": _verdict_dict(self.feedback) if self.feedback else None,
            "weighted": {who: asdict(estimate) for who, estimate in self.weighted.items()},
            "weighted_policy": self.weighted_policy,
            "thresholds": {who: {"review": review, "decline": decline}
                           for who, (review, decline) in self.thresholds.items()},
            "targets": asdict(self.targets),
            "policy": {who: {k: round(v, 4) for k, v in values.items()} for who, values in self.policy.items()},
        }


def _verdict_dict(verdict: Verdict) -> dict:
    difference = verdict.difference
    return {"gate_status": verdict.status, "evidence": asdict(verdict.evidence),
            "challenger": {k: round(v, 4) for k, v in verdict.challenger.items()},
            "champion": {k: round(v, 4) for k, v in verdict.champion.items()} if verdict.champion else None,
            "ap_difference": asdict(difference) if difference else None}


def live_verdict(store_url: str, version: str, champion_version: str, maturity_seconds: float,
                 gates: Gates) -> Verdict:
    """The live gate: the challenger's shadow scores against the champion's served scores on the same
    transactions, those old enough that their labels have matured, paired, by the holdout's rules."""
    from fraudloop.models.store import Store

    store = Store(store_url)
    try:
        newest = store.newest_event_time() or 0.0
        pairs = store.shadow_pairs(version, until=newest - maturity_seconds)
        pairs = pairs[pairs["model_version"] == champion_version]
        labels = store.labels_for(pairs["transaction_id"].tolist(), known_by=newest)
    finally:
        store.close()
    known = known_outcomes(pairs["transaction_id"], pairs["decision"], labels, newest)
    pairs, known = pairs[(known["label_source"] != UNKNOWN).to_numpy()], known[known["label_source"] != UNKNOWN]
    return judge(pairs["event_time"].to_numpy(), pairs["card_id"].to_numpy(), known["is_fraud"].to_numpy(),
                 pairs["shadow_score"].to_numpy(float), pairs["score"].to_numpy(float), gates)


def _cell(metrics: dict[str, float] | None, key: str) -> str:
    return f"{metrics[key]:.4f}" if metrics and key in metrics else "-"


def _gate_row(name: str, verdict: Verdict | None) -> str:
    if verdict is None:
        return f"| {name} | - | - | - | not run |"
    e, d = verdict.evidence, verdict.difference
    interval = f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d else "-"
    return (f"| {name} | {e.frauds:,} frauds, {e.fraud_cards:,} compromised of {e.cards:,} cards | "
            f"{_cell(verdict.challenger, 'average_precision')} vs {_cell(verdict.champion, 'average_precision')} | "
            f"{interval} | **{verdict.status}** |")


def _weighted_line(result: Validation) -> str:
    if not result.weighted:
        return ("Weighted estimate: none (no explored decision in the holdout: the blocked "
                "transactions' outcomes are unknown, and the AP above is on the labelled rows only).")
    text = "; ".join(f"{who} {estimate}" for who, estimate in result.weighted.items())
    p = result.weighted_policy
    return (f"AP weighted by 1 / probability (exploration), over the holdout's traffic but for the blocks no draw "
            f"could turn (a rule's, one over the caps); the AP above is on the labelled rows only: {text}. The "
            f"challenger at its review threshold: precision {p['precision_at_review']:.3f}, "
            f"recall {p['recall_at_review']:.3f}, weighted alike.")


def _report(result: Validation, holdout: pd.DataFrame, gates: Gates) -> str:
    verdict = result.verdict
    champion = f"version {result.champion_version}" if result.champion_version else "none"
    review, decline = result.thresholds["challenger"]
    theirs = result.thresholds.get("champion")
    lines = [
        f"## Validation of version {result.version}: **{result.status.upper()}**",
        "",
        f"Holdout: {pd.Timestamp(holdout['event_time'].min(), unit='s'):%Y-%m-%d} to "
        f"{pd.Timestamp(holdout['event_time'].max(), unit='s'):%Y-%m-%d}, {len(holdout):,} transactions; neither "
        f"model trained on it. Live: the challenger's shadow scores beside the champion's decisions on the same "
        f"transactions, once their labels have matured. Champion: {champion}.",
        "",
        f"| gate | evidence | AP challenger vs champion | AP difference [{gates.confidence:.0%} interval, by card] | "
        "verdict |",
        "|---|---|---|---|---|",
        _gate_row("holdout", verdict),
        _gate_row("feedback (newest verdicts)", result.feedback),
        _gate_row("live (shadow)", result.live),
        "",
        _weighted_line(result),
        "",
        "| metric (holdout) | challenger | champion |",
        "|---|---|---|",
        *(f"| {m} | {_cell(verdict.challenger, m)} | {_cell(verdict.champion, m)} |" for m in METRICS),
        "",
        f"Thresholds from the targets ({result.targets.describe()}): review >= {review:.4f}, decline >= "
        f"{decline:.4f}" + (f"; the champion serves review >= {theirs[0]:.4f}, decline >= {theirs[1]:.4f}." if theirs
                            else "."),
        "",
        "| decision policy (holdout days, all traffic, each at its own thresholds) | challenger | champion |",
        "|---|---|---|",
        *(f"| {m} | {_cell(result.policy.get('challenger'), m)} | {_cell(result.policy.get('champion'), m)} |"
          for m in POLICY),
        "",
        "Threshold table (challenger, holdout days, all traffic; flag = score >= threshold):",
        "",
        "| threshold | alerts a day | precision | recall | false-positive rate |",
        "|---|---|---|---|---|",
        *(f"| {row['threshold']:.4f} | {row['alerts_per_day']:,.1f} | {row['precision']:.3f} | {row['recall']:.3f} | "
          f"{row['false_positive_rate']:.5f} |" for row in result.threshold_table),
        "",
        "Checks (holdout):",
        *(f"- {'ok' if check.ok else '**FAILED**'}: {check.text}" for check in verdict.checks),
    ]
    if result.feedback:
        lines += ["", "Checks (feedback: the newest analysts' verdicts and cardholders' answers, before maturity; "
                  "it can promote a challenger the holdout did not show better when the holdout's floors hold and "
                  "the holdout does not show it worse):",
                  *(f"- {'ok' if check.ok else '**FAILED**'}: {check.text}" for check in result.feedback.checks)]
    if result.live:
        lines += ["", "Checks (live):",
                  *(f"- {'ok' if check.ok else '**FAILED**'}: {check.text}" for check in result.live.checks)]
    lines += ["", "Gates: " + ", ".join(f"{k}={v}" for k, v in asdict(gates).items())]
    return "\n".join(lines)


def validate_challenger(frame: pd.DataFrame, reg: registry.RegistryConfig, version: str,
                        gates: Gates | None = None, targets: policy_thresholds.Targets | None = None,
                        store_url: str | None = None) -> Validation:
    """Score the challenger and the current champion on the challenger's holdout, and (with the scorer's
    store) compare them on shadow traffic; judge; derive the challenger's thresholds from `targets`; record
    everything."""
    from fraudloop.streaming.config import ScorerConfig

    gates, targets = gates or Gates(), targets or policy_thresholds.Targets()
    info = registry.version_info(reg, version)
    split = split_of_version(info.tags)
    start = info.tags.get(FEEDBACK_TAG, "none")
    _, holdout_rows, feedback_rows = split_rows(frame, split, None if start == "none" else float(start))
    holdout = frame[holdout_rows]
    if holdout.empty:
        raise ValueError(f"the training set holds no rows of the holdout {split.describe()['test']} of version "
                         f"{version}")
    y, when, cards = holdout["is_fraud"].to_numpy(), holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy()
    weight = sample_weights(frame)  # a downsampled set: every figure below estimates all the traffic
    holdout_weight = None if weight is None else weight[holdout_rows]

    champion_version = registry.alias_version(reg, registry.CHAMPION)
    if champion_version == version:
        champion_version = None
    boosters = {"challenger": registry.load_version(reg, version)}
    if champion_version is not None:
        boosters["champion"] = registry.load_version(reg, champion_version)
    challenger_scores = predict(boosters["challenger"], holdout)
    champion_scores = predict(boosters["champion"], holdout) if champion_version else None
    verdict = judge(when, cards, y, challenger_scores, champion_scores, gates, weight=holdout_weight)
    feedback = None
    if champion_version is not None and feedback_rows.any():
        rows = frame[feedback_rows]
        feedback = judge_feedback(rows["event_time"].to_numpy(), rows["card_id"].to_numpy(),
                                  rows["is_fraud"].to_numpy(), predict(boosters["challenger"], rows),
                                  predict(boosters["champion"], rows), gates)
    in_traffic = test_period(frame["event_time"].to_numpy(), split) & mature_rows(frame)
    traffic = frame[in_traffic]
    traffic_time, traffic_fraud = traffic["event_time"].to_numpy(), traffic["is_fraud"].to_numpy()
    traffic_weight = None if weight is None else weight[in_traffic]
    traffic_scores = {who: predict(booster, traffic) for who, booster in boosters.items()}
    thresholds = {"challenger": policy_thresholds.choose(traffic_time, traffic_fraud, traffic_scores["challenger"],
                                                         targets, traffic_weight)}
    if champion_version is not None:
        served = ScorerConfig.load()  # a champion without thresholds of its own serves at the scorer's settings
        thresholds["champion"] = registry.version_thresholds(reg, (served.review_threshold,
                                                                   served.decline_threshold))(champion_version)
    policy = {who: policy_effect(traffic_time, traffic_fraud, traffic_scores[who], *thresholds[who], traffic_weight)
              for who in boosters}
    grid = policy_thresholds.table(traffic_time, traffic_fraud, traffic_scores["challenger"],
                                   [*(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9), *thresholds["challenger"]],
                                   traffic_weight)
    live = None
    if champion_version is not None and store_url is not None:
        maturity = float(registry.client(reg).get_run(info.run_id).data.params.get("maturity_days", 7.0)) * DAY
        live = live_verdict(store_url, version, champion_version, maturity, gates)
    weighted, weighted_policy = {}, {}
    weights = observation_weights(holdout.get("decision"), holdout.get("propensity"))
    if weights is not None:
        weights = weights if holdout_weight is None else weights * holdout_weight
        reach = explorable(holdout["decision"], holdout["propensity"])
        w, yr, cr = weights[reach], y[reach], cards[reach]
        weighted = {"challenger": weighted_ap(yr, challenger_scores[reach], w, cr)}
        if champion_scores is not None:
            weighted["champion"] = weighted_ap(yr, champion_scores[reach], w, cr)
        precision, recall = weighted_precision_recall(yr, challenger_scores[reach], w, thresholds["challenger"][0])
        weighted_policy = {"precision_at_review": precision, "recall_at_review": recall}
    result = Validation(version, champion_version, verdict, thresholds, policy, live, targets=targets,
                        threshold_table=tuple(grid), feedback=feedback, weighted=weighted,
                        weighted_policy=weighted_policy)

    text = _report(result, holdout, gates)
    client = registry.client(reg)
    run_id = info.run_id
    for m, value in verdict.challenger.items():
        client.log_metric(run_id, f"validation_{m}", value)
    for m, value in (verdict.champion or {}).items():
        client.log_metric(run_id, f"validation_champion_{m}", value)
    if verdict.difference:
        for key in ("estimate", "low", "high"):
            client.log_metric(run_id, f"validation_ap_difference_{key}", getattr(verdict.difference, key))
    for who, estimate in weighted.items():
        prefix = "validation_weighted" if who == "challenger" else "validation_champion_weighted"
        for key, value in asdict(estimate).items():
            client.log_metric(run_id, f"{prefix}_ap_{key}", value)
    for key, value in weighted_policy.items():
        client.log_metric(run_id, f"validation_weighted_{key}", value)
    client.log_text(run_id, text, "validation/report.md")
    client.log_dict(run_id, result.as_dict(), VERDICT_ARTIFACT)
    client.log_dict(run_id, {"targets": asdict(targets), "review": thresholds["challenger"][0],
                             "decline": thresholds["challenger"][1], "table": grid}, "validation/thresholds.json")
    if y.any():
        scores = {f"challenger v{version}": challenger_scores}
        if champion_scores is not None:
            scores[f"champion v{champion_version}"] = champion_scores
        figure = report.comparison(y, scores)
        client.log_figure(run_id, figure, "validation/comparison.png")
        plt.close(figure)
    client.update_model_version(reg.model_name, version, description=f"{info.description or ''}\n\n{text}")
    difference = verdict.difference
    live_difference = live.difference if live else None
    registry.tag_version(reg, version, {
        **policy_thresholds.tags(*thresholds["challenger"], targets),
        "validation_status": result.status,
        "validation_summary": result.summary[:4900],
        "shadow_status": live.status if live else "none",
        "feedback_status": feedback.status if feedback else "none",
        "shadow_ap_difference": (f"{live_difference.estimate:+.4f} [{live_difference.low:+.4f}, "
                                 f"{live_difference.high:+.4f}]" if live_difference else "none"),
        "validated_against": champion_version or "none",
        "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validation_average_precision": _cell(verdict.challenger, "average_precision"),
        "champion_average_precision": _cell(verdict.champion, "average_precision"),
        "validation_ap_difference": (f"{difference.estimate:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"
                                     if difference else "none"),
    })
    return result


def describe(result: dict) -> str:
    """A verdict (`Validation.as_dict()`) for a terminal: the status, the evidence, the metrics side by side,
    the interval and the reason."""
    mine, theirs = result["challenger"], result["champion"] or {}
    against = f"champion v{result['champion_version']}" if result["champion_version"] else "no champion"
    e = result["evidence"]
    lines = [f"version {result['version']} vs {against}: {result['status'].upper()}",
             f"  holdout: {e['frauds']:,} frauds on {e['fraud_cards']:,} of {e['cards']:,} cards over {e['days']} days"]

    def pair(key: str, label: str, fmt: str = ".4f") -> str:
        if key not in mine:
            return f"{label} -"
        return f"{label} {mine[key]:{fmt}}" + (f" vs {theirs[key]:{fmt}}" if key in theirs else "")

    if mine:
        lines.append("  " + ", ".join(pair(k, label) for k, label in (
            ("average_precision", "AP"), ("card_precision_at_100", "CP@100"), ("recall_at_1pct_fpr", "recall@1%FPR"),
            ("roc_auc", "AUC"))))
    if result["ap_difference"]:
        d = result["ap_difference"]
        lines.append(f"  AP difference {d['estimate']:+.4f}, {d['confidence']:.0%} interval [{d['low']:+.4f}, "
                     f"{d['high']:+.4f}] (paired, {d['resamples']:,} resamples by card)")
    if result.get("policy"):
        t, mine, theirs = result["thresholds"], result["policy"]["challenger"], result["policy"].get("champion", {})
        own = t.get("challenger", t)  # a verdict recorded before thresholds were derived: one pair, served
        champion = t.get("champion")
        served = f" (champion: {champion['review']:.4f} / {champion['decline']:.4f})" if champion else ""
        lines.append(f"  thresholds from the targets: review >= {own['review']:.4f}, decline >= {own['decline']:.4f}"
                     f"{served}; each model at its own: {pair('recall_at_review', 'recall', '.3f')}, "
                     f"{pair('alerts_per_day', 'alerts/day', ',.1f')}; declines: "
                     f"{pair('recall_at_decline', 'recall', '.3f')}, "
                     f"{pair('declines_per_day', 'declines/day', ',.1f')} (all traffic of the holdout days)")
    for name, gate in (("feedback (newest verdicts)", result.get("feedback")), ("live (shadow)", result.get("live"))):
        if gate:
            d, e = gate["ap_difference"], gate["evidence"]
            interval = f", AP difference {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else ""
            lines.append(f"  {name} gate: {gate['gate_status']} on {e['frauds']:,} frauds of {e['cards']:,} cards"
                         f"{interval}")
    lines.append(f"  reason: {result['summary']}")
    return "\n".join(lines)


def challenger_verdict(reg: registry.RegistryConfig) -> dict | None:
    """The verdict recorded on the version the `challenger` alias names (what a retrain run just judged)."""
    version = registry.alias_version(reg, registry.CHALLENGER)
    return recorded_verdict(reg, version) if version else None


def one_line(verdict: dict) -> str:
    """v7 passed: AP 0.612 vs 0.480, difference +0.132 [+0.081, +0.177]"""
    mine, theirs, d = verdict["challenger"], verdict["champion"] or {}, verdict["ap_difference"]
    text = f"v{verdict['version']} {verdict['status']}"
    if "average_precision" in mine:
        text += f": AP {mine['average_precision']:.3f}"
        if "average_precision" in theirs:
            text += f" vs {theirs['average_precision']:.3f}"
    if d:
        text += f", difference {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    return text


def recorded_verdict(reg: registry.RegistryConfig, version: str) -> dict | None:
    """The verdict validation recorded on a version (`Validation.as_dict()`), or None if it was not validated."""
    import mlflow

    reg.point_mlflow()
    try:
        return mlflow.artifacts.load_dict(f"runs:/{registry.version_info(reg, version).run_id}/{VERDICT_ARTIFACT}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None
