"""The review queue's numbers, from what the store holds: pure, shared by the page's metrics and the demo's report.

A transaction decided `review` is a case; a `review` label is its verdict; a case with no verdict once
`expiry_hours` have passed since its transaction has expired (no analyst sees it any more: its outcome stays
unknown).
"""

from __future__ import annotations

import pandas as pd
from fraudloop.models.units import DAY, HOUR


def queue_summary(reviews: pd.DataFrame, verdicts: pd.DataFrame, since: float, until: float,
                  expiry_hours: float) -> dict[str, float]:
    """Over [since, until), a day at a time: cases queued (transactions sent to review then), worked (verdicts
    given then), expired (cases whose expiry fell then, unworked), and the median hours from a transaction to its
    verdict among the verdicts given then. `reviews`: transaction_id, time of every case that may count (queued
    from `since` less the expiry); `verdicts`: transaction_id, known_at of their review labels."""
    days = max((until - since) / DAY, 1e-9)
    first = (verdicts.sort_values("known_at", kind="stable").drop_duplicates("transaction_id")
             .set_index("transaction_id")["known_at"])
    worked_at = reviews["transaction_id"].map(first)
    expires = reviews["time"] + expiry_hours * HOUR
    queued = (reviews["time"] >= since) & (reviews["time"] < until)
    worked = worked_at.notna() & (worked_at >= since) & (worked_at < until)
    expired = (expires >= since) & (expires < until) & ~(worked_at <= expires)
    latency = (worked_at[worked] - reviews["time"][worked]) / HOUR
    return {"queued_per_day": float(queued.sum()) / days, "worked_per_day": float(worked.sum()) / days,
            "expired_per_day": float(expired.sum()) / days,
            "verdict_latency_hours_p50": float(latency.median()) if len(latency) else float("nan")}
