"""The one implementation of every model feature, for the scorer and for training sets alike.

`FeatureState` holds what the features need per card and per terminal and computes a transaction's
features incrementally (the scorer calls it per transaction). `compute_features` builds a training
set from a whole history by replaying the same events through the same state in time order, with each
fraud label applied at the moment it became known. There is no second, vectorised copy of the feature
logic that could drift from the online one; amounts are integer cents so sums are exact.

Semantics (all windows in event time, UTC):
- card windows (t - w, t] include the current transaction (the reference protocol's definition);
- terminal windows end `terminal_delay` before t and count only fraud labels known by t;
- a transaction seen twice (a replay after a crash) is not added to the state twice.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.units import DAY, HOUR
from tqdm import tqdm

CARD_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_DELAY_DAYS = 7
# How far back a terminal's fraud episode is traced: the reach of its longest delayed window.
EPISODE_REACH = (TERMINAL_DELAY_DAYS + max(TERMINAL_WINDOWS_DAYS)) * DAY
# How late (event time behind the newest seen) a transaction may arrive and still see exact windows, by
# default: the state keeps this much more than the windows need (the scorer's allowed lateness sets it).
LATENESS = DAY
# Quiet cards and terminals are swept out this often (event time); active ones are trimmed as they are touched.
SWEEP_EVERY = 7 * DAY


def retention(lateness: float = LATENESS) -> tuple[float, float]:
    """How far behind the newest transaction the card and the terminal state must reach: no window of a
    transaction at most `lateness` late looks further back."""
    return (lateness + max(CARD_WINDOWS_DAYS) * DAY,
            lateness + (TERMINAL_DELAY_DAYS + max(TERMINAL_WINDOWS_DAYS)) * DAY)


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


@dataclass(slots=True)
class _TerminalHistory:
    times: list[float] = field(default_factory=list)
    fraud_times: list[float] = field(default_factory=list)  # times of its transactions labelled fraud


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
    """Per-card and per-terminal state; `transform` returns a transaction's features and records it."""

    def __init__(self, lateness: float = LATENESS) -> None:
        self.card_retention, self.terminal_retention = retention(lateness)
        self.cards: dict[str, _CardHistory] = {}
        self.terminals: dict[str, _TerminalHistory] = {}
        self.seen: dict[str, tuple[str, float]] = {}  # transaction id -> (terminal id, time)
        self.frauds_applied: set[str] = set()
        self.pending_frauds: dict[str, float] = {}  # labels that arrived before their transaction
        self.watermark = -math.inf  # newest transaction time seen
        # Nothing newer than this is forgotten (the scorer holds it at its slowest partition's time while a
        # backlog is read one partition after another); offline, the watermark alone decides.
        self.hold = math.inf
        self._arrivals: deque[tuple[float, str]] = deque()  # (time, transaction id) in arrival order
        self._swept_at = -math.inf

    # -- labels ----------------------------------------------------------------------------------
    def add_label(self, label: Label) -> None:
        """Record a known outcome. Only frauds change features; repeats are ignored."""
        if not label.is_fraud or label.transaction_id in self.frauds_applied:
            return
        seen = self.seen.get(label.transaction_id)
        if seen is None:
            self.pending_frauds[label.transaction_id] = label.known_at
            return
        terminal_id, time = seen
        terminal = self.terminals.get(terminal_id)
        if terminal is not None:  # else swept out: the fraud is older than every window
            insort(terminal.fraud_times, time)
        self.frauds_applied.add(label.transaction_id)

    # -- transactions ----------------------------------------------------------------------------
    def _record(self, tx: Transaction) -> None:
        card = self.cards.get(tx.card_id)
        if card is None:
            card = self.cards[tx.card_id] = _CardHistory()
        card.add(tx.time, tx.amount_cents, tx.terminal_id)
        terminal = self.terminals.get(tx.terminal_id)
        if terminal is None:
            terminal = self.terminals[tx.terminal_id] = _TerminalHistory()
        _insert_sorted(terminal.times, tx.time)
        self.seen[tx.transaction_id] = (tx.terminal_id, tx.time)
        self._arrivals.append((tx.time, tx.transaction_id))
        known_at = self.pending_frauds.pop(tx.transaction_id, None)
        if known_at is not None:
            self.add_label(Label(tx.transaction_id, True, known_at))
        if tx.time > self.watermark:
            self.watermark = tx.time
        # Forget, a little at a time, what no window can reach any more (given the lateness).
        card_cutoff, terminal_cutoff = self._cutoffs()
        card.drop_before(card_cutoff)
        dropped = _drop_before(terminal_cutoff, terminal.times)
        if dropped:
            del terminal.fraud_times[: bisect_right(terminal.fraud_times, terminal_cutoff)]
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= terminal_cutoff:
            _, old_id = arrivals.popleft()
            self.seen.pop(old_id, None)
            self.frauds_applied.discard(old_id)
        if self.watermark - self._swept_at > SWEEP_EVERY:
            self.prune()

    def record(self, tx: Transaction) -> None:
        """Take `tx` into the state without computing its features (another scorer instance scored it)."""
        if tx.transaction_id not in self.seen:
            self._record(tx)

    def transform(self, tx: Transaction) -> list[float]:
        """Features of `tx` given everything seen so far (itself included); records it once."""
        if tx.transaction_id not in self.seen:
            self._record(tx)
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

        terminal = self.terminals[tx.terminal_id]
        delayed_end = t - TERMINAL_DELAY_DAYS * DAY
        seen, frauds = terminal.times, terminal.fraud_times
        seen_end = bisect_right(seen, delayed_end)
        term_counts = [seen_end - bisect_right(seen, delayed_end - w * DAY, 0, seen_end) for w in TERMINAL_WINDOWS_DAYS]
        if frauds:  # most terminals never had a known fraud
            fraud_end = bisect_right(frauds, delayed_end)
            risks = [(fraud_end - bisect_right(frauds, delayed_end - w * DAY, 0, fraud_end)) / n if n else 0.0
                     for w, n in zip(TERMINAL_WINDOWS_DAYS, term_counts, strict=True)]
            known_frauds = float(_count_between(frauds, t - 7 * DAY, t))
            # The terminal's fraud episode, as the delayed windows see it: from its earliest fraud within their
            # reach to their end. Its age (an old episode may be over while the delayed risk still reads high)
            # and its risk (a compromised terminal's episode is all frauds; a stolen card's visit is one in many).
            first = bisect_right(frauds, t - EPISODE_REACH)
            if first < fraud_end:
                start = frauds[first]
                episode_age = (t - start) / DAY
                episode_risk = (fraud_end - first) / max(seen_end - bisect_left(seen, start, 0, seen_end), 1)
            else:
                episode_age = episode_risk = nan
        else:
            risks, known_frauds, episode_age, episode_risk = [0.0] * len(TERMINAL_WINDOWS_DAYS), 0.0, nan, nan

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
            *map(float, term_counts),
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
        for key, terminal in list(self.terminals.items()):
            if _drop_before(terminal_cutoff, terminal.times):
                del terminal.fraud_times[: bisect_right(terminal.fraud_times, terminal_cutoff)]
                if not terminal.times:
                    del self.terminals[key]
        for tx_id, known_at in list(self.pending_frauds.items()):
            if known_at <= terminal_cutoff:
                del self.pending_frauds[tx_id]


def _drop_before(cutoff: float, times: list[float], *parallel: list) -> int:
    """Remove the leading entries with time <= cutoff from `times` and its parallel lists; how many."""
    if not times or times[0] > cutoff:
        return 0
    drop = bisect_right(times, cutoff)
    del times[:drop]
    for values in parallel:
        del values[:drop]
    return drop


def transactions_of(history: pd.DataFrame) -> Iterable[Transaction]:
    cents = np.round(history["amount"].to_numpy() * 100).astype(np.int64)
    columns = (history[c].tolist() for c in ("transaction_id", "card_id", "terminal_id", "time"))
    for tx_id, card, terminal, time, amount in zip(*columns, cents.tolist(), strict=True):
        yield Transaction(tx_id, card, terminal, float(time), amount)


def labels_in_order(labels: pd.DataFrame) -> list[Label]:
    ordered = labels.sort_values(["known_at", "transaction_id"], kind="stable")
    return [
        Label(tx, bool(fraud), float(known))
        for tx, fraud, known in zip(ordered["transaction_id"], ordered["is_fraud"], ordered["known_at"], strict=True)
    ]


def replay(state: FeatureState, transactions: Iterable[Transaction], labels: list[Label]) -> Iterable[list[float]]:
    """Feed a time-ordered stream through `state`, each label applied once known; yields each row's features.

    Labels must be ordered by known_at; one known at the same second as a transaction is applied first.
    """
    next_label = 0
    for tx in transactions:
        while next_label < len(labels) and labels[next_label].known_at <= tx.time:
            state.add_label(labels[next_label])
            next_label += 1
        yield state.transform(tx)
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
