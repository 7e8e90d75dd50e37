"""Backfill the scorer's store from a history: past transactions as if scored, and their labels.

A new deployment starts with the history its first model trained on: the scorer then rebuilds a warm
feature state from the store, and later training sets and drift references read one place. With a
booster the rows carry its scores and decisions (as the scorer would have written them); without one
the score is empty and the model version says `history`.
"""

from __future__ import annotations

import time

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES, labels_in_order
from fraudloop.models.store import Store
from fraudloop.models.training import predict
from fraudloop.streaming.decide import outcomes


def backfill(store: Store, history: pd.DataFrame, rows: pd.DataFrame, labels: pd.DataFrame,
             booster: lgb.Booster | None = None, version: str = "history",
             thresholds: tuple[float, float] = (0.3, 0.7), chunk: int = 20_000) -> int:
    """Write `rows` (history_rows of `history`) as decisions and `labels` as labels; returns rows written."""
    values = rows[list(FEATURE_NAMES)].to_numpy(np.float64)
    scores = predict(booster, values) if booster is not None else np.full(len(rows), np.nan)
    decided = outcomes(scores, *thresholds) if booster is not None else ["none"] * len(rows)
    cents = np.round(history["amount"].to_numpy() * 100).astype(np.int64)
    now = time.time()
    for start in range(0, len(rows), chunk):
        part = slice(start, start + chunk)
        records = [
            {"transaction_id": tx, "card_id": card, "terminal_id": terminal, "event_time": float(when),
             "amount_cents": int(amount), "score": None if np.isnan(score) else float(score), "decision": decision,
             "model_version": version, "features": orjson.dumps(row.tolist()).decode(),  # NaN -> null
             "decided_at": now}
            for tx, card, terminal, when, amount, score, decision, row in zip(
                history["transaction_id"].iloc[part], history["card_id"].iloc[part], history["terminal_id"].iloc[part],
                history["time"].iloc[part], cents[part], scores[part], decided[part], values[part], strict=True)
        ]
        with store.engine.begin() as db:
            store.insert(db, records, [])
    label_records = [{"transaction_id": lb.transaction_id, "is_fraud": lb.is_fraud, "known_at": lb.known_at,
                      "source": lb.source, "analyst": lb.analyst} for lb in labels_in_order(labels)]
    with store.engine.begin() as db:
        store.insert(db, [], label_records)
    return len(rows)
