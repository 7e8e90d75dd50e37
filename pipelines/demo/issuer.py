"""The demo's issuer: which labels come back, and when, for the transactions the scorer decided.

Closed loop (the default): each simulated day, once the scorer has decided the day's transactions, the outcome
model (pipelines/data/outcomes.py) turns its stored decisions into chargebacks and cardholders' answers, and the
simulated analyst works the review queue through the day. Open loop (`--open-loop`, the oracle for measuring):
every fraud's label after its delay, whatever was decided, and every blocked genuine transaction known genuine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fraudloop.pipelines.data.outcomes import LABEL_COLUMNS, IssuerConfig, issuer_labels, work_queue
from fraudloop.pipelines.retraining.training_set import BLOCKED
from fraudloop.streaming.decide import REVIEW


class Issuer:
    """Labels due a day at a time. `truth`: is_fraud by transaction id (the simulator's); `pending`: labels already
    on their way (the open loop's all of them; the closed loop's: chargebacks of the history before the stream)."""

    def __init__(self, truth: pd.Series, pending: pd.DataFrame, config: IssuerConfig | None, seed: int = 0) -> None:
        self.truth, self.config = truth, config
        self.pending = pending.reindex(columns=LABEL_COLUMNS)
        self.open_cases = pd.DataFrame(columns=["transaction_id", "time", "score", "is_fraud"])
        self.rng = np.random.default_rng(seed)

    @property
    def closed_loop(self) -> bool:
        return self.config is not None

    def due(self, since: float, until: float) -> pd.DataFrame:
        """The pending labels known in [since, until): sent with that day's transactions."""
        known = self.pending["known_at"]
        due = (known >= since) & (known < until)
        out, self.pending = self.pending[due], self.pending[~due]
        return out

    def decided(self, decisions: pd.DataFrame, since: float, until: float) -> pd.DataFrame:
        """The day's decisions (transaction_id, event_time, decision, score, as stored) in; the labels known by
        `until` that they and the queue produced out (sent at once); later ones wait in `pending`."""
        day = decisions.rename(columns={"event_time": "time"}).assign(
            is_fraud=decisions["transaction_id"].map(self.truth).fillna(False).astype(bool).to_numpy())
        if not self.closed_loop:  # the oracle knows the blocked genuine ones too: else they would be unknown
            genuine = day[day["decision"].isin(BLOCKED) & ~day["is_fraud"]]
            return pd.DataFrame({"transaction_id": genuine["transaction_id"], "is_fraud": False,
                                 "known_at": genuine["time"].astype(float), "source": "simulation",
                                 "analyst": None}, columns=LABEL_COLUMNS)
        reviews = day.loc[day["decision"] == REVIEW, ["transaction_id", "time", "score", "is_fraud"]]
        verdicts, self.open_cases = work_queue(pd.concat([self.open_cases, reviews], ignore_index=True), since, until,
                                               self.config, self.rng)
        later = issuer_labels(day, self.config, self.rng)
        self.pending = pd.concat([self.pending, later], ignore_index=True)
        return pd.concat([verdicts, self.due(-np.inf, until)], ignore_index=True)
