"""Validate a challenger: both models on the challenger's holdout, the gates, and a verdict a reviewer can read.

Everything lands on the challenger's MLflow run and version: metrics of both models, the paired interval of
their AP difference, the comparison plot, a Markdown report (also appended to the version's description) and
tags (`validation_status`, `validated_against`, ...). `promote` reads those tags.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import pandas as pd

from models import registry, report
from models.training import predict
from pipelines.gates import Gates, Verdict, judge
from pipelines.train import holdout_masks, split_of_version

METRICS = ("average_precision", "card_precision_at_100", "recall_at_1pct_fpr", "roc_auc")
VERDICT_ARTIFACT = "validation/verdict.json"
POLICY = ("recall_at_review", "recall_at_decline", "alerts_per_day", "declines_per_day")


@dataclass(frozen=True)
class Validation:
    version: str
    champion_version: str | None
    verdict: Verdict
    thresholds: tuple[float, float]

    def as_dict(self) -> dict:
        """What a task passes on and a terminal prints: the verdict, its metrics, interval and reason."""
        verdict = self.verdict
        difference = verdict.difference
        return {
            "version": self.version, "status": verdict.status, "passed": verdict.passed,
            "summary": verdict.summary, "champion_version": self.champion_version,
            "evidence": asdict(verdict.evidence),
            "challenger": {k: round(v, 4) for k, v in verdict.challenger.items()},
            "champion": {k: round(v, 4) for k, v in verdict.champion.items()} if verdict.champion else None,
            "ap_difference": asdict(difference) if difference else None,
            "thresholds": {"review": self.thresholds[0], "decline": self.thresholds[1]},
        }


def _cell(metrics: dict[str, float] | None, key: str) -> str:
    return f"{metrics[key]:.4f}" if metrics and key in metrics else "-"


def _report(result: Validation, holdout: pd.DataFrame, gates: Gates) -> str:
    verdict = result.verdict
    champion = f"version {result.champion_version}" if result.champion_version else "none"
    review, decline = result.thresholds
    lines = [
        f"## Validation of version {result.version}: **{verdict.status.upper()}**",
        "",
        f"Holdout: {pd.Timestamp(holdout['event_time'].min(), unit='s'):%Y-%m-%d} to "
        f"{pd.Timestamp(holdout['event_time'].max(), unit='s'):%Y-%m-%d}, {len(holdout):,} transactions, "
        f"{verdict.evidence.frauds:,} frauds on {verdict.evidence.fraud_cards:,} of {verdict.evidence.cards:,} cards; "
        f"neither model trained on it. Champion: {champion}.",
        "",
        "| metric (holdout) | challenger | champion |",
        "|---|---|---|",
        *(f"| {m} | {_cell(verdict.challenger, m)} | {_cell(verdict.champion, m)} |" for m in METRICS),
        "",
        f"At the served thresholds (review >= {review}, decline >= {decline}):",
        "",
        "| decision policy (holdout) | challenger | champion |",
        "|---|---|---|",
        *(f"| {m} | {_cell(verdict.challenger, m)} | {_cell(verdict.champion, m)} |" for m in POLICY),
        "",
    ]
    if verdict.difference:
        lines += [f"AP difference, challenger - champion, paired on the holdout and resampled by card: "
                  f"{verdict.difference}.", ""]
    lines += [
        "Checks:",
        *(f"- {'ok' if check.ok else '**FAILED**'}: {check.text}" for check in verdict.checks),
        "",
        "Gates: " + ", ".join(f"{k}={v}" for k, v in asdict(gates).items()),
    ]
    return "\n".join(lines)


def validate_challenger(frame: pd.DataFrame, reg: registry.RegistryConfig, version: str,
                        gates: Gates | None = None, thresholds: tuple[float, float] | None = None) -> Validation:
    """Score the challenger and the current champion on the challenger's holdout; judge; record everything."""
    from streaming.config import ScorerConfig

    gates = gates or Gates()
    if thresholds is None:
        served = ScorerConfig.load()
        thresholds = (served.review_threshold, served.decline_threshold)
    info = registry.version_info(reg, version)
    split = split_of_version(info.tags)
    _, holdout_rows = holdout_masks(frame, split)
    holdout = frame[holdout_rows]
    if holdout.empty:
        raise ValueError(f"the training set holds no rows of the holdout {split.describe()['test']} of version "
                         f"{version}")
    y, when, cards = holdout["is_fraud"].to_numpy(), holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy()

    challenger_scores = predict(registry.load_version(reg, version), holdout)
    champion_version = registry.alias_version(reg, registry.CHAMPION)
    if champion_version == version:
        champion_version = None
    champion_scores = None
    if champion_version is not None:
        champion_scores = predict(registry.load_version(reg, champion_version), holdout)
    verdict = judge(when, cards, y, challenger_scores, champion_scores, gates, thresholds)
    result = Validation(version, champion_version, verdict, thresholds)

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
    client.log_text(run_id, text, "validation/report.md")
    client.log_dict(run_id, result.as_dict(), VERDICT_ARTIFACT)
    if y.any():
        scores = {f"challenger v{version}": challenger_scores}
        if champion_scores is not None:
            scores[f"champion v{champion_version}"] = champion_scores
        figure = report.comparison(y, scores)
        client.log_figure(run_id, figure, "validation/comparison.png")
        plt.close(figure)
    client.update_model_version(reg.model_name, version, description=f"{info.description or ''}\n\n{text}")
    difference = verdict.difference
    registry.tag_version(reg, version, {
        "validation_status": verdict.status,
        "validation_summary": verdict.summary[:4900],
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
    if "alerts_per_day" in mine:
        t = result["thresholds"]
        lines.append(f"  at review >= {t['review']}: {pair('recall_at_review', 'recall', '.3f')}, "
                     f"{pair('alerts_per_day', 'alerts/day', ',.1f')}; at decline >= {t['decline']}: "
                     f"{pair('recall_at_decline', 'recall', '.3f')}, "
                     f"{pair('declines_per_day', 'declines/day', ',.1f')}")
    lines.append(f"  reason: {result['summary']}")
    return "\n".join(lines)


def recorded_verdict(reg: registry.RegistryConfig, version: str) -> dict | None:
    """The verdict validation recorded on a version (`Validation.as_dict()`), or None if it was not validated."""
    import mlflow

    reg.point_mlflow()
    try:
        return mlflow.artifacts.load_dict(f"runs:/{registry.version_info(reg, version).run_id}/{VERDICT_ARTIFACT}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None
