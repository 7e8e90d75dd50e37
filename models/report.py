"""Figures a reviewer wants for one model version. Pure: arrays in, matplotlib figures out."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402


def _figure(title: str) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def precision_recall(y: np.ndarray, score: np.ndarray) -> Figure:
    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = _figure(f"Precision-recall (AP {average_precision_score(y, score):.3f})")
    ax.plot(recall, precision)
    ax.axhline(y.mean(), ls="--", c="grey", label=f"random ({y.mean():.4f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    return fig


def roc(y: np.ndarray, score: np.ndarray) -> Figure:
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = _figure(f"ROC (AUC {roc_auc_score(y, score):.3f})")
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate")
    return fig


def calibration(y: np.ndarray, score: np.ndarray) -> Figure:
    observed, predicted = calibration_curve(y, score, n_bins=10, strategy="quantile")
    fig, ax = _figure("Calibration (quantile bins)")
    ax.plot(predicted, observed, marker="o")
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraud rate", xscale="log", yscale="log")
    return fig


def score_distribution(y: np.ndarray, score: np.ndarray) -> Figure:
    fig, ax = _figure("Score distribution by class")
    bins = np.linspace(0, 1, 51)
    ax.hist(score[y == 0], bins=bins, alpha=0.6, density=True, label="genuine", log=True)
    ax.hist(score[y == 1], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
    ax.set(xlabel="score", ylabel="density (log)")
    ax.legend()
    return fig


def feature_importance(names: list[str], gain: np.ndarray) -> Figure:
    order = np.argsort(gain)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1), dpi=100)
    ax.barh(np.array(names)[order], gain[order])
    ax.set(title="Feature importance (total gain)", xlabel="gain")
    fig.tight_layout()
    return fig


def all_figures(y: np.ndarray, score: np.ndarray, names: list[str], gain: np.ndarray) -> dict[str, Figure]:
    y = np.asarray(y, dtype=int)
    return {
        "precision_recall.png": precision_recall(y, score),
        "roc.png": roc(y, score),
        "calibration.png": calibration(y, score),
        "score_distribution.png": score_distribution(y, score),
        "feature_importance.png": feature_importance(names, gain),
    }


def comparison(y: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    """Precision-recall curves of several models on the same rows (champion vs challenger)."""
    y = np.asarray(y, dtype=int)
    fig, ax = _figure("Same holdout, both models: precision-recall")
    for name, score in scores.items():
        precision, recall, _ = precision_recall_curve(y, score)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, score):.3f})")
    ax.axhline(y.mean(), ls="--", c="grey", label=f"random ({y.mean():.4f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    return fig


def drift_bars(features: list[str], psi: np.ndarray, thresholds: np.ndarray) -> Figure:
    """Each feature's PSI beside its own calibrated threshold (red: above it)."""
    psi, thresholds = np.asarray(psi), np.asarray(thresholds)
    order = np.argsort(psi)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(features) + 1), dpi=100)
    names = np.array(features)[order]
    ax.barh(names, psi[order], color=np.where(psi[order] > thresholds[order], "C3", "C0"))
    ax.scatter(thresholds[order], names, marker="|", s=120, c="grey", label="threshold for this window")
    ax.set(title="Feature drift: PSI, recent traffic vs the champion's reference", xlabel="PSI")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def score_shift(reference: np.ndarray, recent: np.ndarray) -> Figure:
    fig, ax = _figure("Score distribution: champion's reference vs recent traffic")
    bins = np.linspace(0, 1, 51)
    ax.hist(reference, bins=bins, alpha=0.6, density=True, label="reference (holdout)", log=True)
    ax.hist(recent, bins=bins, alpha=0.6, density=True, label="recent", log=True)
    ax.set(xlabel="score", ylabel="density (log)")
    ax.legend()
    return fig
