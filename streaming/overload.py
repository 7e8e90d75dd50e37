"""Graceful overload: when the scorer falls behind it gives up optional work, in a fixed order, and takes it back
once it has caught up. Pure logic; the worker feeds it one observation per batch.

What is shed, in order (each mode keeps the sheddings of the one before):
1. `lean`: shadow scoring (a challenger's scores are evidence for a later promotion, not for this customer), and the
   exact reasons of reviews and approvals (declines keep theirs: a declined customer is owed one);
2. `compressed`: the served version's compressed model scores, at its own thresholds, where the version has one.
Never shed: a transaction's features, its decision, the store write, the acknowledgement. No transaction is dropped
or delayed to make room.

Two signals, either over its budget counts: how long the oldest message of a batch waited before its scoring began
(what a user feels), and the messages behind the end of the partitions (what is coming). Over budget for
`escalate_seconds` on end: one step further; under half of both for `recover_seconds` on end: back to full service.
The hysteresis is there so that one stall (tens of ms, a few times a minute on a quiet machine) does not flip modes.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL, LEAN, COMPRESSED = "full", "lean", "compressed"
MODES = (FULL, LEAN, COMPRESSED)


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

    def observe(self, wait_ms: float, lag: int, now: float, deepest: str = COMPRESSED) -> str:
        """The mode for the batch about to be scored. `now`: a monotonic clock in seconds; `deepest`: the furthest
        mode available (`lean` when the served version has no compressed model)."""
        if not self.enabled:
            return FULL
        b, top = self.budget, MODES.index(deepest)
        if wait_ms > b.wait_ms or lag > b.lag:
            self._calm_since = None
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since >= b.escalate_seconds and self.level < top:
                self.level += 1
                self._over_since = now  # the next step takes as long again
        else:
            self._over_since = None
            if wait_ms <= b.wait_ms / 2 and lag <= b.lag / 2:
                if self._calm_since is None:
                    self._calm_since = now
                if now - self._calm_since >= b.recover_seconds:
                    self.level = 0
            else:
                self._calm_since = None
        self.level = min(self.level, top)
        return self.mode
