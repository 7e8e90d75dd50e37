"""The event-time policy: which transactions the scorer scores, by their time against its clocks. Pure.

- **Stream time** of a partition: the newest transaction time read from it. Transactions are keyed by
  card, so lateness is disorder within a partition (Kafka Streams measures it the same way): a backlog is
  read one partition after another, and a partition read behind the others is not late.
- **Allowed lateness**: a transaction up to this far behind its partition's stream time is scored on exact
  features. One further behind is dead-lettered `late`: the state no longer holds the windows its features
  need, so any score would come from truncated windows (a card that looks new), and storing it would put
  a row into the training set that no offline build reproduces. The dead letter keeps its bytes for an
  operator to re-drive.
- **Partition skew**: how far behind the newest transaction seen (the watermark) a partition may be read
  and still be on time; the state keeps what the slowest partition needs, up to this far back. A
  partition not read yet since the start counts as this far behind.
- **Largest skew ahead**: a transaction more than `max_ahead` ahead of the clock is dead-lettered
  `future`; it is never stored and never moves the watermark, so one bad timestamp cannot make every
  later transaction late. The clock is the wall clock (`wall`, production: event time is real time) or,
  for replayed and simulated streams that run on a clock of their own, the watermark (`stream`; the
  first transaction into an empty state sets it).

Labels are late by nature and change no window of the past: only the `future` rule applies to them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from fraudloop.models.features import LATENESS
from fraudloop.models.units import DAY

WALL, STREAM = "wall", "stream"
LATE, FUTURE = "late", "future"


@dataclass(frozen=True, slots=True)
class EventTimePolicy:
    allowed_lateness: float = LATENESS
    max_ahead: float = 300.0
    clock: str = WALL
    partition_skew: float = 30 * DAY

    def __post_init__(self) -> None:
        if self.clock not in (WALL, STREAM):
            raise ValueError(f"event_clock must be {WALL!r} or {STREAM!r}, got {self.clock!r}")
        if not min(self.allowed_lateness, self.max_ahead, self.partition_skew) >= 0:
            raise ValueError("allowed_lateness_seconds, max_ahead_seconds and partition_skew_seconds must not be "
                             "negative")

    def hold(self, watermark: float, stream_times: Iterable[float], unread: bool = False) -> float:
        """The oldest stream time the state must serve: the slowest partition's (`unread`: a partition not
        read yet, which counts as the furthest behind), at most `partition_skew` behind the watermark."""
        floor = watermark - self.partition_skew
        return max(min([*stream_times, *([floor] if unread else [])], default=watermark), floor)

    def reference(self, watermark: float, now: float) -> float:
        """The time a transaction may be at most `max_ahead` ahead of."""
        return now if self.clock == WALL else watermark

    def transaction(self, time: float, stream_time: float, watermark: float, now: float) -> str | None:
        """None if a transaction at `time` is scored; else the dead-letter reason. `stream_time`: its
        partition's, or -inf for a partition not read yet."""
        oldest = max(stream_time, watermark - self.partition_skew) - self.allowed_lateness
        if time < oldest:
            return (f"{LATE}: {oldest + self.allowed_lateness - time:.0f} s behind its partition's stream time "
                    f"(allowed lateness {self.allowed_lateness:.0f} s, partition skew {self.partition_skew:.0f} s)")
        return self._ahead(time, watermark, now)

    def label(self, known_at: float, watermark: float, now: float) -> str | None:
        return self._ahead(known_at, watermark, now)

    def _ahead(self, time: float, watermark: float, now: float) -> str | None:
        reference = self.reference(watermark, now)
        if math.isfinite(reference) and time > reference + self.max_ahead:
            return (f"{FUTURE}: {time - reference:.0f} s ahead of the {self.clock} clock "
                    f"(largest skew accepted {self.max_ahead:.0f} s)")
        return None
