"""The one implementation of every model feature, for the scorer and for training sets alike.

`FeatureState` holds what the features need per card and per terminal and computes a transaction's
features incrementally (the scorer calls it per transaction). `compute_features` builds a training
set from a whole history by replaying the same events through the same state in time order, with each
fraud label applied at the moment it became known. There is no second, vectorised copy of the feature
logic that could drift from the online one; amounts are integer cents so sums are exact.

Semantics (all windows in event time, UTC):
- card windows (t - w, t] include the current transaction (the reference protocol's definition);
- terminal features are computed from hourly counts and known frauds (models/terminals.py): their windows end
  within the hour after t - 7 days and count only fraud labels known by t;
- a transaction seen twice (a replay after a crash) is not added to the state twice.

Card state is keyed by the partition its transactions come from: a scorer instance holds the cards of its
partitions only (`drop_partitions` when they move away). Terminal aggregates sit behind `Terminals`: in this
process, or in a shared store that every instance updates (streaming/terminal_store.py).
"""

from __future__ import annotations

import heapq
import math
import sys
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import pandas as pd
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.terminals import (
    EPISODE_REACH,
    TERMINAL_WINDOWS_DAYS,
    Terminals,
    terminal_features,
)
from fraudloop.models.units import DAY, HOUR
from tqdm import tqdm

CARD_WINDOWS_DAYS = (1, 7, 30)
# How late (event time behind the newest seen) a transaction may arrive and still see exact windows, by
# default: the state keeps this much more than the windows need (the scorer's allowed lateness sets it).
LATENESS = DAY
# Quiet cards and terminals are swept out this often (event time); active ones are trimmed as they are touched.
SWEEP_EVERY = 7 * DAY


def retention(lateness: float = LATENESS) -> tuple[float, float]:
    """How far behind the newest transaction the card and the terminal state must reach: no window of a
    transaction at most `lateness` late looks further back."""
    return (lateness + max(CARD_WINDOWS_DAYS) * DAY,
            lateness + EPISODE_REACH)


FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "is_weekend",
    "is_night",
    *(f"card_tx_count_{w}d" for w in CARD_WINDOWS_DAYS),
    *(f"card_mean_amount_{w}d" for w in CARD_WINDOWS_DAYS),
    *(f"terminal_tx_count_{w}d_delayed" for w in TERMINAL_WINDOWS_DAYS),
    *(f"terminal_risk_{w}d_delayed" for w in TERMINAL_WINDOWS_DAYS),
    "card_tx_count_1h",
    "card_seconds_since_prev",
    "card_amount_ratio_30d",
    "card_amount_to_median_30d",
    "card_large_amounts_30d",
    "card_new_terminal_30d",
    "terminal_known_frauds_7d",
    "terminal_fraud_episode_days",
    "terminal_fraud_episode_risk",
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass(slots=True)
class _CardHistory:
    times: list[float] = field(default_factory=list)
    cents: list[int] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)
    # The same times per terminal: "new terminal" is then a bisect, not a scan of the card's month.
    terminal_times: dict[str, list[float]] = field(default_factory=dict)
    partition: int = -1  # the partition its transactions come from (-1: not known, as offline)

    def add(self, time: float, cents: int, terminal_id: str) -> None:
        index = _insert_sorted(self.times, time)
        self.cents.insert(index, cents)
        self.terminals.insert(index, terminal_id)
        at_terminal = self.terminal_times.get(terminal_id)
        if at_terminal is None:
            self.terminal_times[terminal_id] = [time]
        else:
            _insert_sorted(at_terminal, time)

    def drop_before(self, cutoff: float) -> int:
        """Forget the transactions at or before `cutoff`; how many."""
        drop = _drop_before(cutoff, self.times, self.cents)
        if drop:
            for terminal_id in self.terminals[:drop]:  # each terminal's oldest times are the ones dropped
                at_terminal = self.terminal_times[terminal_id]
                del at_terminal[0]
                if not at_terminal:
                    del self.terminal_times[terminal_id]
            del self.terminals[:drop]
        return drop


def _insert_sorted(times: list[float], value: float) -> int:
    """Append in the common in-order case; insert in place for a late event. Returns the index."""
    if not times or times[-1] <= value:
        times.append(value)
        return len(times) - 1
    index = bisect_right(times, value)
    times.insert(index, value)
    return index


def _count_between(times: Sequence[float], after: float, up_to: float) -> int:
    """How many times t satisfy after < t <= up_to."""
    return bisect_right(times, up_to) - bisect_right(times, after)


class FeatureState:
    """Per-card state and the terminal aggregates; `transform` returns a transaction's features and records it."""

    def __init__(self, lateness: float = LATENESS, terminals: Terminals | None = None) -> None:
        self.card_retention, self.terminal_retention = retention(lateness)
        self.cards: dict[str, _CardHistory] = {}
        self.terminals = Terminals() if terminals is None else terminals
        self.seen: dict[str, tuple[str, float, int]] = {}  # transaction id -> (terminal id, time, partition)
        self.pending_frauds: dict[str, float] = {}  # fraud labels that arrived before their transaction
        # Fraud labels known after the newest transaction seen, by known_at: (known_at, arrival, transaction id, where)
        self.held: list[tuple[float, int, str, tuple[str, float] | None]] = []
        self._held_count = 0
        self.watermark = -math.inf  # newest transaction time seen
        # Nothing newer than this is forgotten (the scorer holds it at its slowest partition's time while a
        # backlog is read one partition after another); offline, the watermark alone decides.
        self.hold = math.inf
        self._arrivals: deque[tuple[float, str]] = deque()  # (time, transaction id) in arrival order
        self._swept_at = -math.inf

    # -- labels ----------------------------------------------------------------------------------
    def where(self, transaction_id: str) -> tuple[str, float] | None:
        """The terminal and time of a transaction this state recorded."""
        seen = self.seen.get(transaction_id)
        return None if seen is None else (seen[0], seen[1])

    def add_label(self, label: Label, where: tuple[str, float] | None = None) -> None:
        """Record a known outcome. Only frauds change features; repeats are ignored. `where`: the transaction's
        terminal and time, when another instance recorded it (the scorer finds them in the store).

        A label known after every transaction seen so far (one read ahead of the transactions, as in a backlog) is
        held until the stream reaches its time, so it changes the features of the transactions after it only, as
        in the offline build."""
        if not label.is_fraud:
            return
        if label.known_at > self.watermark:
            self._held_count += 1
            heapq.heappush(self.held, (label.known_at, self._held_count, label.transaction_id, where))
        else:
            self._apply_fraud(label.transaction_id, label.known_at, where)

    def release_held(self, until: float = math.inf) -> None:
        """Apply the held labels known by `until` (all of them: an instance with no transactions to wait for)."""
        held = self.held
        while held and held[0][0] <= until:
            known_at, _, transaction_id, where = heapq.heappop(held)
            self._apply_fraud(transaction_id, known_at, where)

    def _apply_fraud(self, transaction_id: str, known_at: float, where: tuple[str, float] | None) -> None:
        where = where or self.where(transaction_id)
        if where is None:
            self.pending_frauds[transaction_id] = known_at
            return
        self.pending_frauds.pop(transaction_id, None)
        self.terminals.add_fraud(where[0], transaction_id, where[1], self._cutoffs()[1])

    # -- transactions ----------------------------------------------------------------------------
    def _record(self, tx: Transaction, partition: int, with_terminal: bool) -> None:
        card = self.cards.get(tx.card_id)
        if card is None:
            card = self.cards[tx.card_id] = _CardHistory(partition=partition)
        elif card.partition < 0:  # history of no known partition, then a transaction read from one
            card.partition = partition
        card.add(tx.time, tx.amount_cents, tx.terminal_id)
        self.seen[tx.transaction_id] = (tx.terminal_id, tx.time, partition)
        self._arrivals.append((tx.time, tx.transaction_id))
        if tx.time > self.watermark:
            self.watermark = tx.time
        card_cutoff, terminal_cutoff = self._cutoffs()
        if with_terminal:
            self.terminals.count(tx.terminal_id, tx.time, terminal_cutoff)
            self.release_held(self.watermark)  # the stream has reached their time
            known_at = self.pending_frauds.get(tx.transaction_id)
            if known_at is not None:
                self._apply_fraud(tx.transaction_id, known_at, None)
        # Forget, a little at a time, what no window can reach any more (given the lateness).
        card.drop_before(card_cutoff)
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= terminal_cutoff:
            self.seen.pop(arrivals.popleft()[1], None)
        if self.watermark - self._swept_at > SWEEP_EVERY:
            self.prune()

    def add_card_history(self, tx: Transaction, partition: int) -> None:
        """Take a stored transaction of a partition this instance takes over into its card's history (the
        terminal aggregates counted it when it was scored)."""
        if tx.transaction_id not in self.seen:
            self._record(tx, partition, with_terminal=False)

    def transform(self, tx: Transaction, partition: int = -1) -> list[float]:
        """Features of `tx` given everything seen so far (itself included); records it once. `partition`: the
        partition it was read from, which its card's state belongs to."""
        if tx.transaction_id not in self.seen:
            self._record(tx, partition, with_terminal=True)
        t, cents = tx.time, tx.amount_cents
        card = self.cards[tx.card_id]
        times = card.times
        end = bisect_right(times, t)
        day, week, month = CARD_WINDOWS_DAYS
        day_start = bisect_right(times, t - day * DAY)
        week_start = bisect_right(times, t - week * DAY)
        month_start = bisect_right(times, t - month * DAY)
        amounts = card.cents[month_start:end]  # every card window lies inside the 30-day one
        month_sum = sum(amounts)
        week_sum = sum(amounts[week_start - month_start:])
        day_sum = sum(amounts[day_start - month_start:])
        day_count, week_count, month_count = end - day_start, end - week_start, end - month_start
        # A count is 0 only for a transaction later than the state's lateness (forgotten as soon as recorded):
        # the scorer dead-letters those before they get here; these features stay defined (NaN) regardless.
        nan = math.nan
        day_mean = day_sum / day_count / 100 if day_count else nan
        week_mean = week_sum / week_count / 100 if week_count else nan
        month_mean = month_sum / month_count / 100 if month_count else nan

        before = bisect_left(times, t, month_start, end)
        since_prev = t - times[before - 1] if before > month_start else nan
        prior_count = month_count - 1
        ratio = cents / ((month_sum - cents) / prior_count) if prior_count and month_sum > cents else nan
        amounts.sort()
        middle = month_count // 2
        if not month_count:
            median = nan
        else:
            median = amounts[middle] if month_count % 2 else (amounts[middle - 1] + amounts[middle]) / 2
        to_median = cents / median if median else nan
        # Amounts far above the card's usual (3x its median): a compromised card repeats them.
        large = month_count - bisect_right(amounts, 3 * median) if month_count else 0
        at_terminal = card.terminal_times.get(tx.terminal_id, ())
        new_terminal = 1.0 if _count_between(at_terminal, t - month * DAY, t) <= 1 else 0.0
        burst = end - bisect_right(times, t - HOUR, month_start, end)

        term_counts, risks, known_frauds, episode_age, episode_risk = terminal_features(
            self.terminals.get(tx.terminal_id), t)
        day_number, second_of_day = divmod(t, DAY)
        is_weekend = 1.0 if (int(day_number) + 3) % 7 >= 5 else 0.0  # 1970-01-01 was a Thursday
        is_night = 1.0 if second_of_day < 7 * HOUR else 0.0  # hour <= 6
        return [
            cents / 100,
            is_weekend,
            is_night,
            float(day_count),
            float(week_count),
            float(month_count),
            day_mean,
            week_mean,
            month_mean,
            *term_counts,
            *risks,
            float(burst),
            since_prev,
            ratio,
            to_median,
            float(large),
            new_terminal,
            known_frauds,
            episode_age,
            episode_risk,
        ]

    # -- housekeeping ----------------------------------------------------------------------------
    def terminal_cutoff(self) -> float:
        """Terminal aggregates at or before this time reach no window any more."""
        return self._cutoffs()[1]

    def _cutoffs(self) -> tuple[float, float]:
        newest = min(self.watermark, self.hold)
        return newest - self.card_retention, newest - self.terminal_retention

    def prune(self) -> None:
        """Sweep out cards and terminals that have gone quiet (active ones are trimmed as they are touched)."""
        self._swept_at = self.watermark
        card_cutoff, terminal_cutoff = self._cutoffs()
        for key, card in list(self.cards.items()):
            if card.drop_before(card_cutoff) and not card.times:
                del self.cards[key]
        self.terminals.prune(terminal_cutoff)
        for tx_id, known_at in list(self.pending_frauds.items()):
            if known_at <= terminal_cutoff:
                del self.pending_frauds[tx_id]

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the cards of partitions this instance no longer reads (another instance owns them now); how
        many. Cards of no known partition (-1: history stored before partitions were) stay."""
        gone = [key for key, card in self.cards.items() if card.partition in partitions]
        for key in gone:
            del self.cards[key]
        self.seen = {tx_id: seen for tx_id, seen in self.seen.items() if seen[2] not in partitions}
        return len(gone)

    def footprint(self) -> int:
        """Bytes this process holds for the state (the Python objects themselves, measured): what partitioning
        divides among instances."""
        return _deep_size((self.cards, self.seen, self.pending_frauds, self.held, self._arrivals,
                           self.terminals.entries))


def _drop_before(cutoff: float, times: list[float], *parallel: list) -> int:
    """Remove the leading entries with time <= cutoff from `times` and its parallel lists; how many."""
    if not times or times[0] > cutoff:
        return 0
    drop = bisect_right(times, cutoff)
    del times[:drop]
    for values in parallel:
        del values[:drop]
    return drop


def _deep_size(root: object) -> int:
    """sys.getsizeof over every object reachable through containers and slotted dataclasses, each once."""
    total, seen, todo = 0, set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, list | tuple | set | deque):
            todo.extend(obj)
        elif hasattr(obj, "__slots__"):
            todo.extend(getattr(obj, name) for name in obj.__slots__)
    return total


def transactions_of(history: pd.DataFrame) -> Iterable[Transaction]:
    cents = np.round(history["amount"].to_numpy() * 100).astype(np.int64)
    columns = (history[c].tolist() for c in ("transaction_id", "card_id", "terminal_id", "time"))
    for tx_id, card, terminal, time, amount in zip(*columns, cents.tolist(), strict=True):
        yield Transaction(tx_id, card, terminal, float(time), amount)


def labels_in_order(labels: pd.DataFrame) -> list[Label]:
    """Labels by known_at; their `source` and `analyst` columns when the frame has them."""
    ordered = labels.sort_values(["known_at", "transaction_id"], kind="stable")
    sources = ordered["source"] if "source" in ordered else ["chargeback"] * len(ordered)
    analysts = ordered["analyst"] if "analyst" in ordered else [None] * len(ordered)
    return [
        Label(tx, bool(fraud), float(known), source, analyst if isinstance(analyst, str) else None)
        for tx, fraud, known, source, analyst in zip(ordered["transaction_id"], ordered["is_fraud"],
                                                      ordered["known_at"], sources, analysts, strict=True)
    ]


def replay(state: FeatureState, transactions: Iterable[Transaction], labels: list[Label],
           partitions: Iterable[int] | None = None) -> Iterable[list[float]]:
    """Feed a time-ordered stream through `state`, each label applied once known; yields each row's features.

    Labels must be ordered by known_at; one known at the same second as a transaction is applied first.
    `partitions`: each transaction's partition (default: not known).
    """
    next_label = 0
    for tx, partition in zip(transactions, repeat(-1) if partitions is None else partitions,
                                 strict=False):
        while next_label < len(labels) and labels[next_label].known_at <= tx.time:
            state.add_label(labels[next_label])
            next_label += 1
        yield state.transform(tx, partition)
    for label in labels[next_label:]:
        state.add_label(label)


def compute_features(history: pd.DataFrame, labels: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Features of every transaction of a time-ordered history, each as the scorer would have seen it."""
    if not history["time"].is_monotonic_increasing:
        raise ValueError("history must be sorted by time")
    out = np.empty((len(history), N_FEATURES), dtype=np.float64)
    stream = tqdm(transactions_of(history), total=len(history), desc="features", unit="tx", disable=not progress,
                  mininterval=1.0)
    for row, values in enumerate(replay(FeatureState(), stream, labels_in_order(labels))):
        out[row] = values
    return pd.DataFrame(out, columns=list(FEATURE_NAMES), index=history.index)
