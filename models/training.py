"""LightGBM training and scoring: the estimator-shaped core, no I/O.

Serving calls `Booster.predict` directly on a float array with an explicit thread count (the
scikit-learn wrapper re-validates input on every call since LightGBM 4.6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES

# Bagging: 0.8 of the rows and of the features for each tree (off by default; it changes the model with the seed).
BAGGED = {"bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.8}


@dataclass(frozen=True)
class TrainParams:
    """LightGBM settings. The defaults are the choice of `fraudloop benchmark model` on its validation folds
    (disjoint from its test folds); `benchmarks/model-quality.md` records every alternative tried."""

    num_boost_round: int = 600
    learning_rate: float = 0.02
    num_leaves: int = 7
    min_data_in_leaf: int = 5
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 10.0  # chosen by the record of the hour-aligned terminal windows (it was 1.0 before)
    max_bin: int = 1023
    # The amount gets finer bins than the rest: LightGBM bins by quantiles, so the rare large amounts share
    # a few wide bins, and an exact cut-off among them (a card network's limit) would not be separable.
    amount_max_bin: int = 32767
    min_data_in_bin: int = 1
    scale_pos_weight: float = 1.0
    increasing: tuple[str, ...] = ()  # features the score may only rise with (monotone constraints)
    num_threads: int = 2
    seed: int = 0

    def lightgbm(self) -> dict:
        params = asdict(self)
        params.pop("num_boost_round")
        amount_bins, increasing = params.pop("amount_max_bin"), set(params.pop("increasing"))
        unknown = increasing - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"monotone constraints on unknown features: {sorted(unknown)}")
        params["max_bin_by_feature"] = [amount_bins if f == "amount" else self.max_bin for f in FEATURE_NAMES]
        if increasing:
            params["monotone_constraints"] = [int(f in increasing) for f in FEATURE_NAMES]
        return {"objective": "binary", "verbosity": -1, "deterministic": True, "force_col_wise": True, **params}


def fit(features: pd.DataFrame, is_fraud: np.ndarray, params: TrainParams = TrainParams(),
        weight: np.ndarray | None = None) -> lgb.Booster:
    """`weight`: a downsampled set's (1 / the rate a row was sampled at), so the model learns all the traffic's odds."""
    missing = [name for name in FEATURE_NAMES if name not in features.columns]
    if missing:
        raise ValueError(f"training frame lacks features: {missing}")
    data = lgb.Dataset(features[list(FEATURE_NAMES)].to_numpy(np.float64), label=np.asarray(is_fraud, dtype=float),
                       weight=weight, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    return lgb.train(params.lightgbm(), data, num_boost_round=params.num_boost_round)


def predict(booster: lgb.Booster, features: np.ndarray | pd.DataFrame, num_threads: int = 1) -> np.ndarray:
    """Fraud probability per row; `features` columns in FEATURE_NAMES order."""
    if isinstance(features, pd.DataFrame):
        features = features[list(FEATURE_NAMES)].to_numpy(np.float64)
    return booster.predict(features, num_threads=num_threads)
