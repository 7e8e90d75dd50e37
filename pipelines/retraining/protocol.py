"""The reference evaluation protocol: time-ordered train / label-delay gap / test splits.

Pure logic over arrays: which rows train, which rows test. Cards whose compromise is already known
(a fraud in the training period, or one whose label has arrived by the test day) leave the test set,
as a deployed system would have blocked them already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from fraudloop.models.units import DAY


@dataclass(frozen=True)
class Split:
    train_start: str  # ISO date, UTC
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    @property
    def start_day(self) -> int:
        return int(datetime.fromisoformat(self.train_start).replace(tzinfo=UTC).timestamp()) // DAY

    def shifted(self, days: int) -> Split:
        start = datetime.fromisoformat(self.train_start) + timedelta(days=days)
        return Split(start.date().isoformat(), self.train_days, self.delay_days, self.test_days)

    @property
    def span_days(self) -> int:
        return self.train_days + self.delay_days + self.test_days

    def days(self) -> range:
        """Day numbers (days since the epoch) from the first training day to the last test day."""
        return range(self.start_day, self.start_day + self.span_days)

    def describe(self) -> dict[str, str]:
        day = datetime.fromisoformat(self.train_start).date()
        test_start = day + timedelta(days=self.train_days + self.delay_days)
        return {
            "train": f"{day}..{day + timedelta(days=self.train_days - 1)}",
            "test": f"{test_start}..{test_start + timedelta(days=self.test_days - 1)}",
        }


def test_period(time: np.ndarray, split: Split) -> np.ndarray:
    """Every row of the test days, known-compromised cards included: what the scorer saw in that period."""
    day = np.asarray(time) // DAY
    test_start = split.start_day + split.train_days + split.delay_days
    return (day >= test_start) & (day < test_start + split.test_days)


def split_masks(
    time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, split: Split
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over the rows."""
    day = np.asarray(time) // DAY
    first = split.start_day
    train_end = first + split.train_days
    train = (day >= first) & (day < train_end)
    test = test_period(time, split)

    # A fraud on day x is known from day x + delay + 1: such cards are removed from later test days.
    frauds = pd.DataFrame({"card": card_id, "day": day})[np.asarray(is_fraud, dtype=bool) & (day >= first)]
    first_fraud_day = frauds.groupby("card")["day"].min()
    known_from = pd.Series(card_id).map(first_fraud_day + split.delay_days + 1).to_numpy(dtype=float)
    already_known = ~np.isnan(known_from) & (day >= np.nan_to_num(known_from, nan=np.inf))
    return train, test & ~already_known


def prequential(split: Split, folds: int = 4) -> list[Split]:
    """`folds` splits, each shifted back by one test period from the previous."""
    return [split.shifted(-k * split.test_days) for k in range(folds)]


def disjoint_validation(test_folds: list[Split], folds: int | None = None) -> list[Split]:
    """Prequential validation folds that share no day with any test fold: the latest ends the day before
    the earliest test fold starts, the others step back a week each. Tuning on them cannot see the test."""
    earliest = min(test_folds, key=lambda s: s.start_day)
    return prequential(earliest.shifted(-earliest.span_days), folds or len(test_folds))
