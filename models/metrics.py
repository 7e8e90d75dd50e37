"""Evaluation metrics of the reference protocol: ROC AUC, Average Precision, Card Precision@k."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

DAY = 86_400


def card_precision_at_k(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
                        k: int = 100) -> float:
    """Each day: each card's highest score; the k top cards; share of them compromised that day. Mean over days.

    A card counts as compromised on a day when any of its transactions that day is a fraud.
    """
    frame = pd.DataFrame({"day": np.asarray(time) // DAY, "card": card_id, "fraud": is_fraud, "score": score})
    per_card = frame.groupby(["day", "card"], sort=False).agg(score=("score", "max"), fraud=("fraud", "max"))
    per_card = per_card.sort_values("score", ascending=False, kind="stable")
    top = per_card.groupby(level="day", sort=False).head(k)
    return float((top.groupby(level="day")["fraud"].sum() / k).mean())


def recall_at_fpr(is_fraud: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """Share of frauds caught at the threshold whose false-positive rate stays within max_fpr."""
    fpr, tpr, _ = roc_curve(is_fraud, score)
    return float(tpr[fpr <= max_fpr].max())


def evaluate(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray) -> dict[str, float]:
    y = np.asarray(is_fraud, dtype=int)
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "average_precision": float(average_precision_score(y, score)),
        "card_precision_at_100": card_precision_at_k(time, card_id, y, score, 100),
        "recall_at_1pct_fpr": recall_at_fpr(y, score, 0.01),
        "fraud_rate": float(y.mean()),
        "rows": int(len(y)),
    }
