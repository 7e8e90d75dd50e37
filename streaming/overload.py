"""Graceful overload: when the scorer falls behind it gives up optional work, and takes it back once it has caught
up. Pure logic; the worker feeds it one observation per batch.

What is shed, together (`lean` mode): shadow scoring (a challenger's scores are evidence for a later promotion, not
for this customer; the rows shed are counted), and the exact reasons of reviews (declines keep theirs: a declined
customer is owed one). Never shed: a transaction's features, its decision, the store write, the acknowledgement. No
transaction is dropped or delayed to make room. A compressed model as a further step was measured and not built:
the served model, compiled, costs 2.9 µs a row of the worker's 101–113 µs a transaction, and the cheapest variant that
keeps its AP 0.8 µs (benchmarks/compression.md), so it would buy ~2 %.

Two signals, either over its budget counts: how long the oldest transaction of a batch waited before its scoring
began (what a user feels; from its Kafka timestamp, so producer clocks ahead or behind shift it), and the
transactions behind the end of the partitions just read (what is coming). Over budget for `escalate_seconds` on end:
lean; under half of both for `recover_seconds` on end: full service again; in between, the mode holds. The hysteresis
is there so that one stall (tens of ms, a few times a minute on a quiet machine) does not flip modes. An idle scorer
(an empty poll) reads as calm: nothing is waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL, LEAN = "full", "lean"
MODES = (FULL, LEAN)


@dataclass(frozen=True)
class Budget:
    wait_ms: float  # the oldest transaction of a batch waited longer than this before scoring began
    lag: int  # transactions behind the end of the partitions just read
    recover_seconds: float  # under half of both budgets this long: full service again
    escalate_seconds: float = 0.5  # over a budget this long: lean


class Governor:
    """The service mode, from one observation per batch. `enabled=False`: always full service."""

    def __init__(self, budget: Budget, enabled: bool = True) -> None:
        self.budget, self.enabled = budget, enabled
        self.mode = FULL
        self._over_since: float | None = None
        self._calm_since: float | None = None

    def observe(self, wait_ms: float, lag: int, now: float) -> str:
        """The mode for the batch about to be scored. `now`: a monotonic clock in seconds."""
        if not self.enabled:
            return FULL
        b = self.budget
        if wait_ms > b.wait_ms or lag > b.lag:
            self._calm_since = None
            self._over_since = now if self._over_since is None else self._over_since
            if now - self._over_since >= b.escalate_seconds:
                self.mode = LEAN
        else:
            self._over_since = None
            if wait_ms <= b.wait_ms / 2 and lag <= b.lag / 2:
                self._calm_since = now if self._calm_since is None else self._calm_since
                if now - self._calm_since >= b.recover_seconds:
                    self.mode = FULL
            else:
                self._calm_since = None
        return self.mode
