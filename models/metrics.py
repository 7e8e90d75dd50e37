"""Evaluation metrics of the reference protocol (ROC AUC, Average Precision, Card Precision@k) and the
paired comparison the promotion gates use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from fraudloop.models.units import DAY
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _top_cards(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each card's highest score, whether it was compromised (any fraud) and how many cards it stands for (a card
    drawn in a sample: 1 / the rate, its lowest row weight), the highest cards first, as many as make k cards; the
    last one counts only for what is left of k (`taken`)."""
    per_card = frame.groupby("card", sort=False).agg(score=("score", "max"), fraud=("fraud", "max"),
                                                     weight=("weight", "min"))
    ranked = per_card.sort_values("score", ascending=False, kind="stable")
    before = ranked["weight"].cumsum() - ranked["weight"]
    top = ranked[before < k]
    return top.assign(taken=np.minimum(top["weight"], k - before[before < k]))


def _found(top: pd.DataFrame, k: int) -> float:
    """The share of k that the compromised cards among `top` make."""
    return float(top.loc[top["fraud"] > 0, "taken"].sum()) / k


def _card_frame(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
                weight: np.ndarray | None) -> pd.DataFrame:
    return pd.DataFrame({"day": np.asarray(time) // DAY, "card": card_id, "fraud": np.asarray(is_fraud, int),
                         "score": score, "weight": 1.0 if weight is None else np.asarray(weight, dtype=float)})


def card_precision_at_k(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
                        k: int = 100, weight: np.ndarray | None = None) -> float:
    """The reference handbook's Card Precision@k: the share of compromised cards among each day's k top cards.

    Day by day, in time order: each card's highest score that day; the k top cards; precision = the
    compromised ones among them / k. A compromised card found on one day is blocked for the rest of the
    period, so it leaves the following days' rankings (the handbook's definition: an investigator does not
    find the same card twice). Mean over days. A card is compromised on a day when any of its
    transactions that day is a fraud. `weight`: rows of a downsampled set (pipelines/offline/build.py), a card
    standing for 1 / the rate cards like it.
    """
    frame = _card_frame(time, card_id, is_fraud, score, weight)
    detected: set = set()
    precision = []
    for _, day in frame.groupby("day", sort=True):
        top = _top_cards(day[~day["card"].isin(detected)], k)
        precision.append(_found(top, k))
        detected.update(top.index[top["fraud"] > 0])
    return float(np.mean(precision)) if precision else float("nan")


def daily_card_precision_at_k(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
                              k: int = 100, weight: np.ndarray | None = None) -> float:
    """Card Precision@k with each day ranked on its own: a compromised card counts again on every day it is
    flagged (our earlier definition, shown beside the handbook's; it reads higher)."""
    frame = _card_frame(time, card_id, is_fraud, score, weight)
    return float(np.mean([_found(_top_cards(day, k), k) for _, day in frame.groupby("day", sort=True)]))


def recall_at_fpr(is_fraud: np.ndarray, score: np.ndarray, max_fpr: float, weight: np.ndarray | None = None) -> float:
    """Share of frauds caught at the threshold whose false-positive rate stays within max_fpr."""
    fpr, tpr, _ = roc_curve(is_fraud, score, sample_weight=weight)
    return float(tpr[fpr <= max_fpr].max())


def evaluate(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, score: np.ndarray,
             weight: np.ndarray | None = None) -> dict[str, float]:
    """The protocol's metrics; `weight` (a downsampled set's) makes each an estimate over all the traffic."""
    y = np.asarray(is_fraud, dtype=int)
    return {
        "roc_auc": float(roc_auc_score(y, score, sample_weight=weight)),
        "average_precision": float(average_precision_score(y, score, sample_weight=weight)),
        "card_precision_at_100": card_precision_at_k(time, card_id, y, score, 100, weight),
        "daily_card_precision_at_100": daily_card_precision_at_k(time, card_id, y, score, 100, weight),
        "recall_at_1pct_fpr": recall_at_fpr(y, score, 0.01, weight),
        "fraud_rate": float(np.average(y, weights=weight)),
        "rows": int(len(y)),
    }


def policy_effect(time: np.ndarray, is_fraud: np.ndarray, score: np.ndarray, review_threshold: float,
                  decline_threshold: float, weight: np.ndarray | None = None) -> dict[str, float]:
    """What the decision policy would feel with these scores: recall and alerts per day at the served thresholds."""
    y = np.asarray(is_fraud, dtype=bool)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    days = max(len(np.unique(np.asarray(time) // DAY)), 1)
    review, decline = score >= review_threshold, score >= decline_threshold
    frauds = max(float(w[y].sum()), 1.0)
    return {"recall_at_review": float(w[review & y].sum() / frauds),
            "recall_at_decline": float(w[decline & y].sum() / frauds),
            "alerts_per_day": float(w[review].sum() / days), "declines_per_day": float(w[decline].sum() / days)}


def achievable_card_precision(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, k: int = 100,
                              weight: np.ndarray | None = None) -> float:
    """The CP@k of a perfect ranking here (every fraud scored 1, the rest 0): what this holdout allows. Not
    strictly the maximum when more than k cards are compromised on a day and some again later (which of them
    a ranking finds first changes the later days), but the reference the gates' floor is a share of."""
    y = np.asarray(is_fraud, dtype=float)
    return card_precision_at_k(time, card_id, y, y, k, weight)


def _ranked(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows by descending score, their labels, and where each run of tied scores ends (sklearn's thresholds)."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
    return order, y[order].astype(float), last_of_tie


def weighted_average_precision(ranked: tuple[np.ndarray, np.ndarray, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step definition) for each row of `weights`, in one vectorised pass.

    `weights` is (resamples, rows): a bootstrap resample is a weighting of the rows, so the costly sort is
    done once per model, not once per resample.
    """
    order, y, last_of_tie = ranked
    w = weights[:, order]
    tp = np.cumsum(w * y, axis=1)[:, last_of_tie]
    fp = np.cumsum(w * (1 - y), axis=1)[:, last_of_tie]
    total = tp[:, -1:]
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall_step = np.diff(np.c_[np.zeros(len(tp)), tp], axis=1)
    return np.divide((recall_step * precision).sum(axis=1, keepdims=True), total, out=np.zeros_like(total),
                     where=total > 0)[:, 0]


@dataclass(frozen=True)
class Difference:
    """A paired difference of Average Precision (challenger - champion) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    clusters: int

    def __str__(self) -> str:
        return (f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%} interval, "
                f"{self.resamples:,} resamples of {self.clusters:,} cards)")


def card_bootstrap(card_id: np.ndarray, resamples: int, seed: int):
    """Bootstrap resamples by card as row weights, (chunk x rows) at a time to bound memory."""
    _, card_index = np.unique(np.asarray(card_id), return_inverse=True)
    clusters = int(card_index.max()) + 1 if len(card_index) else 0
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // max(len(card_index), 1))
    for start in range(0, resamples if clusters else 0, chunk):
        counts = rng.multinomial(clusters, np.full(clusters, 1 / clusters), size=min(chunk, resamples - start))
        yield counts[:, card_index].astype(float)


def paired_ap_difference(is_fraud: np.ndarray, challenger: np.ndarray, champion: np.ndarray, card_id: np.ndarray,
                         resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                         weight: np.ndarray | None = None) -> Difference:
    """Challenger AP minus champion AP on the same rows, with a percentile interval from a bootstrap by card.

    Paired: each resample weights the same rows for both models, so what they share (an easy or a hard
    week) cancels and only their difference varies. By card, not by row: one compromised card brings
    several frauds that rise and fall together, and resampling rows would count them as independent and
    give intervals too narrow. (By day would keep weekly patterns whole, but a holdout has 3-7 days: too
    few clusters for a bootstrap.) `weight`: a downsampled set's row weights, applied in every resample.
    """
    y = np.asarray(is_fraud, dtype=bool)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    ranked = [_ranked(y, np.asarray(s, dtype=float)) for s in (champion, challenger)]
    estimate = float(np.diff([weighted_average_precision(r, w[None, :])[0] for r in ranked])[0])
    differences = []
    for resampled in card_bootstrap(card_id, resamples, seed):
        resampled *= w
        champion_ap, challenger_ap = (weighted_average_precision(r, resampled) for r in ranked)
        differences.append(challenger_ap - champion_ap)
    spread = np.concatenate(differences) if differences else np.array([estimate])
    tail = (1 - confidence) / 2
    return Difference(estimate, float(np.quantile(spread, tail)), float(np.quantile(spread, 1 - tail)), confidence,
                      resamples, len(np.unique(np.asarray(card_id))))


@dataclass(frozen=True)
class Estimate:
    """A metric estimated with inverse-probability weights, its bootstrap interval (by card) and how much evidence
    the weights leave: the effective sample size (sum w)^2 / sum w^2 (Kish), and of it the frauds'."""

    estimate: float
    low: float
    high: float
    effective_rows: float
    effective_frauds: float

    def __str__(self) -> str:
        return (f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}] (effective sample {self.effective_rows:,.0f} "
                f"rows, {self.effective_frauds:,.0f} frauds)")


def effective_sample_size(weights: np.ndarray) -> float:
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0


def weighted_ap(is_fraud: np.ndarray, score: np.ndarray, weights: np.ndarray, card_id: np.ndarray,
                resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Average precision over all traffic estimated from the rows whose outcome was observed, each weighted by
    1 / the probability it had of being observed (0: not observed). With every weight 1 it is the plain AP."""
    y = np.asarray(is_fraud, dtype=bool)
    w = np.asarray(weights, dtype=float)
    ranked = _ranked(y, np.asarray(score, dtype=float))
    estimate = float(weighted_average_precision(ranked, w[None, :])[0])
    values = [weighted_average_precision(ranked, each * w) for each in card_bootstrap(card_id, resamples, seed)]
    spread = np.concatenate(values) if values else np.array([estimate])
    tail = (1 - confidence) / 2
    return Estimate(estimate, float(np.quantile(spread, tail)), float(np.quantile(spread, 1 - tail)),
                    effective_sample_size(w), effective_sample_size(w[y]))


def weighted_precision_recall(is_fraud: np.ndarray, score: np.ndarray, weights: np.ndarray,
                              threshold: float) -> tuple[float, float]:
    """Precision and recall of flagging at `threshold`, each row weighted by 1 / its probability of being observed."""
    y = np.asarray(is_fraud, dtype=bool)
    w = np.asarray(weights, dtype=float)
    flagged = np.asarray(score) >= threshold
    caught = float(w[flagged & y].sum())
    return (caught / w[flagged].sum() if w[flagged].sum() > 0 else float("nan"),
            caught / w[y].sum() if w[y].sum() > 0 else float("nan"))
