"""Training set as of a time T from what the scorer persisted: point-in-time correct.

Rows are the stored decisions, with the feature values used at scoring time. Only what was known at T
counts: decisions made by T, labels known by T. A transaction younger than the label maturity at T may
still be charged back, so it is held out rather than counted as genuine.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from models.features import FEATURE_NAMES


def training_set_as_of(decisions: pd.DataFrame, labels: pd.DataFrame, as_of: float,
                       maturity_seconds: float) -> pd.DataFrame:
    """Decisions (transaction_id, card_id, event_time, decided_at, features JSON) labelled as known at `as_of`.

    Returns one row per mature transaction: its features (FEATURE_NAMES), is_fraud, card_id, event_time.
    The latest label known by `as_of` wins (a fraud later confirmed genuine counts as genuine).
    """
    known = labels[labels["known_at"] <= as_of].sort_values("known_at", kind="stable")
    outcome = known.drop_duplicates("transaction_id", keep="last").set_index("transaction_id")["is_fraud"]
    rows = decisions[(decisions["decided_at"] <= as_of) & (decisions["event_time"] <= as_of - maturity_seconds)]
    rows = rows.sort_values(["event_time", "transaction_id"], kind="stable")
    values = np.array([orjson.loads(f) for f in rows["features"]], dtype=float).reshape(len(rows), len(FEATURE_NAMES))
    frame = pd.DataFrame(values, columns=list(FEATURE_NAMES))
    frame["is_fraud"] = rows["transaction_id"].map(outcome).fillna(False).astype(bool).to_numpy()
    frame["transaction_id"] = rows["transaction_id"].to_numpy()
    frame["card_id"] = rows["card_id"].to_numpy()
    frame["event_time"] = rows["event_time"].to_numpy()
    return frame
