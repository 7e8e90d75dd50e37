"""Drift statistics: pure functions comparing recent values with a reference (no I/O).

Per feature: PSI on reference-quantile bins (missing values get a bin of their own), the two-sample
Kolmogorov-Smirnov statistic, and the Jensen-Shannon distance on the same bins. PSI's conventional
reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant. KS alone flags nearly everything on large
samples, so it is reported but the verdict rests on PSI and Jensen-Shannon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

EPSILON = 1e-4  # floor for empty bins, so PSI stays finite


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = 0.2
    jensen_shannon: float = 0.1
    share_of_features: float = 0.3  # the data drifts when at least this share of features drifts


def bin_shares(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Shares of each sample in the reference's quantile bins, plus a last bin for missing values."""
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    present = reference[~np.isnan(reference)]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])) if len(present) else np.array([])

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


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame,
                  thresholds: DriftThresholds = DriftThresholds()) -> pd.DataFrame:
    """One row per shared column: PSI, Jensen-Shannon, KS and whether it drifted."""
    rows = []
    for name in [c for c in reference.columns if c in current.columns]:
        ref, cur = reference[name].to_numpy(float), current[name].to_numpy(float)
        row = {"feature": name, "psi": psi(ref, cur), "jensen_shannon": jensen_shannon(ref, cur), "ks": ks(ref, cur)}
        row["drifted"] = row["psi"] > thresholds.psi or row["jensen_shannon"] > thresholds.jensen_shannon
        rows.append(row)
    return pd.DataFrame(rows).sort_values("psi", ascending=False, ignore_index=True)


def data_drifted(table: pd.DataFrame, thresholds: DriftThresholds = DriftThresholds()) -> bool:
    return bool(len(table)) and table["drifted"].mean() >= thresholds.share_of_features
