"""Terminal aggregates: per terminal, its transactions counted by the hour and its known frauds.

A terminal serves cards on every partition, so unlike a card's history its aggregates cannot live with one
scorer instance. Counted in hourly buckets they are what a shared store keeps well: an atomic increment per
transaction, a small hash per terminal (streaming/terminal_store.py keeps them in Redis). The offline build and
a scorer alone keep the very same structure in memory (`Terminals`); `terminal_features` computes the features
from it in both cases: one implementation.

Semantics (event time, UTC; B = one hour, bucket(t) = floor(t / B)):
- the delayed windows of a transaction at t are the 24·w buckets ending with bucket(t - delay): they end
  within the hour after t - delay, and a window's edges move by whole hours;
- a window's risk is the known frauds whose transaction falls in its buckets over the transactions counted
  there; a fraud counts once known (its label applied), and once per transaction however often it is labelled;
- `terminal_known_frauds_7d` counts known frauds of the last 7 days by their exact times, and the fraud
  episode starts at the earliest known fraud within the delayed windows' reach (exact time); its risk is the
  frauds since then over the transactions counted in the buckets since then.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass, field

from fraudloop.models.units import DAY, HOUR

TERMINAL_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_DELAY_DAYS = 7
BUCKET = HOUR
BUCKETS_PER_DAY = DAY // BUCKET
# How far back a terminal's fraud episode is traced: the reach of its longest delayed window.
EPISODE_REACH = (TERMINAL_DELAY_DAYS + max(TERMINAL_WINDOWS_DAYS)) * DAY


def bucket(time: float) -> int:
    return int(time // BUCKET)


def first_kept(cutoff: float) -> float:
    """The oldest hour kept when what is at or before `cutoff` is forgotten (the cutoff's own hour stays: a fraud
    episode may start in it); -inf while nothing is forgotten."""
    return bucket(cutoff) if math.isfinite(cutoff) else -math.inf


@dataclass(slots=True)
class TerminalHistory:
    buckets: list[int] = field(default_factory=list)  # hours with a transaction, ascending
    counts: list[int] = field(default_factory=list)  # transactions in each
    frauds: dict[str, float] = field(default_factory=dict)  # known frauds: transaction id -> its time
    fraud_times: list[float] = field(default_factory=list)  # the same times, sorted

    def count(self, hour: int, n: int = 1) -> None:
        buckets = self.buckets
        if buckets and buckets[-1] == hour:  # the common case: the current hour
            self.counts[-1] += n
        elif not buckets or buckets[-1] < hour:
            buckets.append(hour)
            self.counts.append(n)
        else:
            index = bisect_left(buckets, hour)
            if buckets[index] == hour:
                self.counts[index] += n
            else:
                buckets.insert(index, hour)
                self.counts.insert(index, n)

    def add_fraud(self, transaction_id: str, time: float) -> bool:
        """Whether the fraud is new here (a repeated label changes nothing)."""
        if transaction_id in self.frauds:
            return False
        self.frauds[transaction_id] = time
        insort(self.fraud_times, time)
        return True

    def drop_before(self, cutoff: float) -> None:
        """Forget what no window of a transaction after `cutoff` + the longest reach can see."""
        old = bisect_left(self.buckets, first_kept(cutoff))
        if old:
            del self.buckets[:old]
            del self.counts[:old]
        gone = bisect_right(self.fraud_times, cutoff)
        if gone:
            del self.fraud_times[:gone]
            self.frauds = {tx_id: time for tx_id, time in self.frauds.items() if time > cutoff}

    def __bool__(self) -> bool:
        return bool(self.buckets or self.frauds)


EMPTY = TerminalHistory()
NO_TERMINAL = ([0.0] * len(TERMINAL_WINDOWS_DAYS), [0.0] * len(TERMINAL_WINDOWS_DAYS), 0.0, math.nan, math.nan)


def terminal_features(history: TerminalHistory, t: float) -> tuple[list[float], list[float], float, float, float]:
    """(delayed counts, delayed risks, known frauds of the last 7 days, fraud episode age in days, episode risk)
    of a transaction at `t` at this terminal."""
    buckets, counts = history.buckets, history.counts
    if not buckets and not history.fraud_times:
        return NO_TERMINAL
    end = bucket(t - TERMINAL_DELAY_DAYS * DAY)
    stop = bisect_right(buckets, end)
    window_counts = [sum(counts[bisect_right(buckets, end - w * BUCKETS_PER_DAY, 0, stop):stop])
                     for w in TERMINAL_WINDOWS_DAYS]
    frauds = history.fraud_times
    if not frauds:  # most terminals never had a known fraud
        return [float(n) for n in window_counts], [0.0] * len(TERMINAL_WINDOWS_DAYS), 0.0, math.nan, math.nan
    fraud_end = bisect_left(frauds, (end + 1) * BUCKET)  # frauds in the delayed windows' buckets
    risks = [(fraud_end - bisect_left(frauds, (end - w * BUCKETS_PER_DAY + 1) * BUCKET, 0, fraud_end)) / n
             if n else 0.0 for w, n in zip(TERMINAL_WINDOWS_DAYS, window_counts, strict=True)]
    known = float(bisect_right(frauds, t) - bisect_right(frauds, t - 7 * DAY))
    # The terminal's fraud episode, as the delayed windows see it: from its earliest fraud within their reach to
    # their end. Its age (an old episode may be over while the delayed risk still reads high) and its risk (a
    # compromised terminal's episode is all frauds; a stolen card's visit is one in many).
    first = bisect_right(frauds, t - EPISODE_REACH)
    if first < fraud_end:
        start = frauds[first]
        since = sum(counts[bisect_left(buckets, bucket(start), 0, stop):stop])
        age, episode_risk = (t - start) / DAY, (fraud_end - first) / max(since, 1)
    else:
        age = episode_risk = math.nan
    return [float(n) for n in window_counts], risks, known, age, episode_risk


class Terminals:
    """Every terminal's aggregates, in this process: the offline build's and a scorer's alone.

    A scorer calls `load` before a batch and `commit` after its decisions are stored; here both do nothing
    (the store this stands for is this process's memory). A shared store's adapter overrides them."""

    shared = False

    def __init__(self) -> None:
        self.entries: dict[str, TerminalHistory] = {}

    def get(self, terminal_id: str) -> TerminalHistory:
        return self.entries.get(terminal_id, EMPTY)

    def _entry(self, terminal_id: str) -> TerminalHistory:
        entry = self.entries.get(terminal_id)
        if entry is None:
            entry = self.entries[terminal_id] = TerminalHistory()
        return entry

    def count(self, terminal_id: str, time: float, cutoff: float) -> None:
        entry = self._entry(terminal_id)
        entry.count(bucket(time))
        if entry.buckets[0] < first_kept(cutoff):  # trimmed as touched; quiet ones by `prune`
            entry.drop_before(cutoff)

    def withdraw(self, terminal_id: str, time: float) -> None:
        """A transaction counted in this batch was decided before (by another writer, or longer ago than the state
        remembers): its count comes off again."""
        entry = self.entries.get(terminal_id)
        if entry is not None:
            entry.count(bucket(time), -1)

    def add_fraud(self, terminal_id: str, transaction_id: str, time: float, cutoff: float) -> None:
        if time > cutoff:  # an older one is out of every window already
            self._entry(terminal_id).add_fraud(transaction_id, time)

    def load(self, terminal_ids: Iterable[str], cutoff: float) -> None:
        """Before a batch: the aggregates of these terminals, as the shared store has them."""

    def commit(self, cutoff: float) -> None:
        """After a batch's decisions are stored: its counts and frauds into the shared store."""

    def prune(self, cutoff: float) -> None:
        """Sweep out terminals gone quiet."""
        for key, entry in list(self.entries.items()):
            entry.drop_before(cutoff)
            if not entry:
                del self.entries[key]
