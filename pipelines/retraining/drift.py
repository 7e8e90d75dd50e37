"""Drift statistics: pure functions comparing recent values with a reference, and their calibration (no I/O).

Per feature: PSI on reference-quantile bins (missing values get a bin of their own), the two-sample
Kolmogorov-Smirnov statistic, and the Jensen-Shannon distance on the same bins. Fixed PSI cut-offs (the
conventional 0.1 / 0.25) ignore that PSI's own sampling noise grows as the window shrinks: at a few hundred
rows, stable traffic crosses them. So thresholds are calibrated for the window's size to a stated
false-alarm rate (`calibrate`), and the smallest window worth judging follows from them (`min_window`).
KS and Jensen-Shannon are reported beside PSI; the verdict rests on the calibrated PSI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
# Values this close (relative) to a bin edge count as on it. Scores come in tie blocks (every row a tree
# ensemble routes alike gets one value), a block can sit on a quantile edge, and the scorer's compiled model
# reproduces LightGBM's value only to the last digits: without it, noise splits the block across two bins.
EDGE_TOLERANCE = 1e-9


def _edges(present: np.ndarray, bins: int) -> np.ndarray:
    """The reference's inner quantile edges (repeats merged), each widened by EDGE_TOLERANCE."""
    if not len(present):
        return np.array([])
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges + EDGE_TOLERANCE * np.abs(edges)


def bin_shares(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Shares of each sample in the reference's quantile bins, plus a last bin for missing values."""
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    edges = _edges(reference[~np.isnan(reference)], bins)

    def shares(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        counts = np.bincount(np.searchsorted(edges, values[~missing], side="left"), minlength=len(edges) + 1)
        counts = np.append(counts, missing.sum()).astype(float)
        return counts / max(len(values), 1)

    return shares(reference), shares(current)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    expected, actual = (np.maximum(s, EPSILON) for s in bin_shares(reference, current, bins))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def jensen_shannon(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    expected, actual = bin_shares(reference, current, bins)
    return float(jensenshannon(expected, actual, base=2))


def ks(reference: np.ndarray, current: np.ndarray) -> float:
    a, b = (np.asarray(x, dtype=float) for x in (reference, current))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    return float(ks_2samp(a, b).statistic) if len(a) and len(b) else 0.0


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """One row per calibrated column: PSI, Jensen-Shannon, KS, its calibrated PSI threshold and whether it drifted."""
    rows = []
    for name, threshold in thresholds.items():
        ref, cur = reference[name].to_numpy(float), current[name].to_numpy(float)
        value = psi(ref, cur)
        rows.append({"feature": name, "psi": value, "psi_threshold": threshold,
                     "jensen_shannon": jensen_shannon(ref, cur), "ks": ks(ref, cur), "drifted": value > threshold})
    return pd.DataFrame(rows).sort_values("psi", ascending=False, ignore_index=True)


@dataclass(frozen=True)
class Calibration:
    """PSI thresholds a window of `rows` stable transactions exceeds with probability `false_alarm_rate`."""

    rows: int
    false_alarm_rate: float
    mean_psi: float  # over the features: the data-drift verdict
    feature_psi: dict[str, float]  # each feature's own, to say which moved
    score_psi: float | None


def _bins(reference: pd.DataFrame, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each reference value's bin (the reference's own quantile bins, plus one for missing), as one flat index
    per (row, column), and where each column's bins start."""
    index, starts, offset = [], [], 0
    for name in reference.columns:
        values = reference[name].to_numpy(float)
        present = values[~np.isnan(values)]
        edges = _edges(present, bins)
        column = np.where(np.isnan(values), len(edges) + 1, np.searchsorted(edges, values, side="left"))
        index.append(column + offset)
        starts.append(offset)
        offset += len(edges) + 2
    return np.column_stack(index), np.array(starts)


def calibrate(reference: pd.DataFrame, clusters: np.ndarray, rows: int, false_alarm_rate: float = 0.01,
              resamples: int = 500, score_column: str | None = "score", bins: int = 10,
              seed: int = 0) -> Calibration:
    """Thresholds from the statistics' own sampling noise at this window size: a bootstrap of stable traffic.

    Each resample draws a stand-in reference and a stand-in window of `rows` transactions from the reference,
    both by card (`clusters`: a card's transactions share its history, so its rows are not independent), and
    measures their PSI; the threshold is the (1 - false_alarm_rate) quantile. Both sides are resampled because
    the live check also compares two finite samples.
    """
    score = score_column
    columns = [c for c in reference.columns if c != score] + ([score] if score else [])
    flat, starts = _bins(reference[columns], bins)
    _, cluster_of = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters, n_rows = int(cluster_of.max()) + 1, len(cluster_of)
    window_clusters = max(1, round(rows * n_clusters / n_rows))
    rng = np.random.default_rng(seed)
    bins_total = int(flat.max()) + 1
    raveled = flat.ravel()

    def shares(counts: np.ndarray) -> np.ndarray:
        weights = np.repeat(counts[cluster_of].astype(float), len(columns))
        found = np.bincount(raveled, weights=weights, minlength=bins_total)
        return np.maximum(found / counts[cluster_of].sum(), EPSILON)

    uniform = np.full(n_clusters, 1 / n_clusters)
    values = np.empty((resamples, len(columns)))
    for i in range(resamples):
        expected = shares(rng.multinomial(n_clusters, uniform))
        actual = shares(rng.multinomial(window_clusters, uniform))
        values[i] = np.add.reduceat((actual - expected) * np.log(actual / expected), starts)
    quantile = 1 - false_alarm_rate
    features = values[:, :len(columns) - (1 if score else 0)]
    mean_psi = float(np.quantile(features.mean(axis=1), quantile)) if features.shape[1] else float("nan")
    return Calibration(rows, false_alarm_rate, mean_psi,
                       dict(zip(columns, np.quantile(features, quantile, axis=0).tolist(), strict=False)),
                       float(np.quantile(values[:, -1], quantile)) if score else None)


def min_window(reference: pd.DataFrame, clusters: np.ndarray, detectable_psi: float,
               false_alarm_rate: float = 0.01, resamples: int = 200) -> int:
    """The fewest rows whose calibrated mean-PSI threshold is at most `detectable_psi`: below it, a drift of that
    size hides in the noise, so a smaller window gets no verdict at all."""
    low, high = 50, max(100, len(reference))
    if calibrate(reference, clusters, high, false_alarm_rate, resamples, score_column=None).mean_psi > detectable_psi:
        return high  # even a window as large as the reference cannot tell: insist on that much
    while high - low > max(10, low // 10):
        middle = (low + high) // 2
        if calibrate(reference, clusters, middle, false_alarm_rate, resamples,
                     score_column=None).mean_psi <= detectable_psi:
            high = middle
        else:
            low = middle
    return high


class Calibrator:
    """One reference's calibrations, cached by window size, so repeated checks against one champion cost
    little. Sizes are rounded down to a 5 % grid: a slightly smaller window has a slightly higher threshold,
    so the rounding only ever errs towards fewer alarms."""

    def __init__(self, reference: pd.DataFrame, clusters: np.ndarray, columns: list[str], false_alarm_rate: float,
                 detectable_psi: float, resamples: int = 500, score_column: str = "score") -> None:
        self.reference, self.clusters, self.columns = reference, clusters, columns
        self.false_alarm_rate, self.detectable_psi, self.resamples = false_alarm_rate, detectable_psi, resamples
        self.score_column = score_column
        self._cache: dict[tuple[str, int], Calibration] = {}
        self._min_rows: int | None = None

    @property
    def min_rows(self) -> int:
        if self._min_rows is None:
            self._min_rows = min_window(self.reference[self.columns], self.clusters, self.detectable_psi,
                                        self.false_alarm_rate)
        return self._min_rows

    @min_rows.setter
    def min_rows(self, rows: int) -> None:  # computed before for this reference and these settings
        self._min_rows = rows

    def _at(self, kind: str, rows: int) -> Calibration:
        size = max(1, int(1.05 ** np.floor(np.log(max(rows, 1)) / np.log(1.05))))
        if (kind, size) not in self._cache:
            frame = self.reference[self.columns] if kind == "features" else self.reference[[self.score_column]]
            self._cache[kind, size] = calibrate(frame, self.clusters, size, self.false_alarm_rate, self.resamples,
                                                score_column=None if kind == "features" else self.score_column)
        return self._cache[kind, size]

    def for_features(self, rows: int) -> Calibration:
        return self._at("features", rows)

    def for_scores(self, rows: int) -> Calibration:
        return self._at("score", rows)
