"""Graceful overload: when the scorer falls behind it gives up optional work, in a fixed order, and takes it back
once it has caught up. Pure logic; the worker feeds it one observation per batch.

What is shed (`lean` mode): shadow scoring (a challenger's scores are evidence for a later promotion, not for this
customer), then the exact reasons of reviews (declines keep theirs: a declined customer is owed one). Never shed: a
transaction's features, its decision, the store write, the acknowledgement. No transaction is dropped or delayed to
make room. A compressed model as a further step was measured and not built: the served model, compiled, costs ~2 µs
a transaction of the worker's ~100 (benchmarks/compression.md), so a cheaper one would buy ~1 %.

Two signals, either over its budget counts: how long the oldest message of a batch waited before its scoring began
(what a user feels), and the messages behind the end of the partitions (what is coming). Over budget for
`escalate_seconds` on end: lean; under half of both for `recover_seconds` on end: back to full service.
The hysteresis is there so that one stall (tens of ms, a few times a minute on a quiet machine) does not flip modes.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL, LEAN = "full", "lean"
MODES = (FULL, LEAN)  # from full service to the most shed


@dataclass(frozen=True)
class Budget:
    wait_ms: float = 100.0  # the oldest message of a batch waited longer than this before scoring began
    lag: int = 2_000  # messages behind the end of the assigned partitions
    escalate_seconds: float = 0.5
    recover_seconds: float = 2.0


class Governor:
    """The service mode, from one observation per batch. `enabled=False`: always full service."""

    def __init__(self, budget: Budget = Budget(), enabled: bool = True) -> None:
        self.budget, self.enabled = budget, enabled
        self.level = 0
        self._over_since: float | None = None
        self._calm_since: float | None = None

    @property
    def mode(self) -> str:
        return MODES[self.level]

    def observe(self, wait_ms: float, lag: int, now: float) -> str:
        """The mode for the batch about to be scored. `now`: a monotonic clock in seconds."""
        if not self.enabled:
            return FULL
        b, top = self.budget, len(MODES) - 1
        if wait_ms > b.wait_ms or lag > b.lag:
            self._calm_since = None
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since >= b.escalate_seconds and self.level < top:
                self.level += 1
                self._over_since = now  # a further step would take as long again
        else:
            self._over_since = None
            if wait_ms <= b.wait_ms / 2 and lag <= b.lag / 2:
                if self._calm_since is None:
                    self._calm_since = now
                if now - self._calm_since >= b.recover_seconds:
                    self.level = 0
            else:
                self._calm_since = None
        return self.mode
