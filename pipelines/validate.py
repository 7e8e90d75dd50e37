"""Validate a challenger: both models on the challenger's holdout, the gates, and a verdict a reviewer can read.

Everything lands on the challenger's MLflow run and version: metrics of both models, the comparison plot,
a Markdown report (also appended to the version's description) and tags (`validation_status`, ...).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import pandas as pd

from models import registry, report
from models.metrics import evaluate
from models.training import predict
from pipelines.gates import Gates, Verdict, judge
from pipelines.train import holdout_masks, split_of_version

METRICS = ("average_precision", "card_precision_at_100", "recall_at_1pct_fpr", "roc_auc")


@dataclass(frozen=True)
class Validation:
    version: str
    champion_version: str | None
    verdict: Verdict
    challenger: dict[str, float]
    champion: dict[str, float] | None


def _report(result: Validation, holdout: pd.DataFrame, gates: Gates) -> str:
    champion = f"version {result.champion_version}" if result.champion else "none"
    lines = [
        f"## Validation of version {result.version}: **{'PASSED' if result.verdict.passed else 'FAILED'}**",
        "",
        f"Holdout: {pd.Timestamp(holdout['event_time'].min(), unit='s'):%Y-%m-%d} to "
        f"{pd.Timestamp(holdout['event_time'].max(), unit='s'):%Y-%m-%d}, {len(holdout):,} transactions, "
        f"{int(holdout['is_fraud'].sum()):,} frauds; neither model trained on it. Champion: {champion}.",
        "",
        "| metric (holdout) | challenger | champion |",
        "|---|---|---|",
        *(f"| {m} | {result.challenger[m]:.4f} | "
          f"{result.champion[m] if result.champion else float('nan'):.4f} |" for m in METRICS),
        "",
        "Checks:",
        *(f"- {'ok' if check.ok else '**FAILED**'}: {check.text}" for check in result.verdict.checks),
        "",
        "Gates: " + ", ".join(f"{k}={v}" for k, v in asdict(gates).items()),
    ]
    return "\n".join(lines)


def validate_challenger(frame: pd.DataFrame, reg: registry.RegistryConfig, version: str,
                        gates: Gates | None = None) -> Validation:
    """Score the challenger and the current champion on the challenger's holdout; judge; record everything."""
    gates = gates or Gates()
    info = registry.version_info(reg, version)
    split = split_of_version(info.tags)
    _, holdout_rows = holdout_masks(frame, split)
    holdout = frame[holdout_rows]
    if not holdout["is_fraud"].any():
        raise ValueError(f"the holdout {split.describe()['test']} of version {version} has no labelled fraud")
    y, when, cards = holdout["is_fraud"].to_numpy(), holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy()

    challenger_scores = predict(registry.load_version(reg, version), holdout)
    champion_version = registry.alias_version(reg, registry.CHAMPION)
    if champion_version == version:
        champion_version = None
    scores = {f"challenger v{version}": challenger_scores}
    champion_metrics = None
    if champion_version is not None:
        scores[f"champion v{champion_version}"] = predict(registry.load_version(reg, champion_version), holdout)
        champion_metrics = evaluate(when, cards, y, scores[f"champion v{champion_version}"])
    challenger_metrics = evaluate(when, cards, y, challenger_scores)
    verdict = judge(challenger_metrics, champion_metrics, gates)
    result = Validation(version, champion_version, verdict, challenger_metrics, champion_metrics)

    text = _report(result, holdout, gates)
    client = registry.client(reg)
    run_id = info.run_id
    for m in METRICS:
        client.log_metric(run_id, f"validation_{m}", challenger_metrics[m])
        if champion_metrics:
            client.log_metric(run_id, f"validation_champion_{m}", champion_metrics[m])
    client.log_text(run_id, text, "validation/report.md")
    figure = report.comparison(y, scores)
    client.log_figure(run_id, figure, "validation/comparison.png")
    plt.close(figure)
    client.update_model_version(reg.model_name, version, description=f"{info.description or ''}\n\n{text}")
    registry.tag_version(reg, version, {
        "validation_status": "passed" if verdict.passed else "failed",
        "validation_summary": verdict.summary[:4900],
        "validated_against": champion_version or "none",
        "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validation_average_precision": f"{challenger_metrics['average_precision']:.4f}",
        "champion_average_precision": f"{champion_metrics['average_precision']:.4f}" if champion_metrics else "none",
    })
    return result
