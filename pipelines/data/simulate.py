"""Transaction simulator: the published card-fraud data model, plus drift and label delay.

Vectorised with numpy and deterministic for a seed. The data model (customers and terminals on a grid,
Poisson daily counts, three fraud scenarios) is the one described in the reference handbook; the drift
and label-delay options are ours, so that drift detection and retraining can be exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from fraudloop.models.units import DAY
from scipy.spatial import cKDTree
from tqdm import tqdm

# fraud_scenario values
GENUINE, BIG_AMOUNT, COMPROMISED_TERMINAL, COMPROMISED_CARD, CARD_TESTING = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    # Each fraud's label becomes known after a log-normal delay (median days, sigma); sigma 0 gives the
    # fixed delay of the reference protocol.
    label_delay_days: float = 7.0
    label_delay_sigma: float = 0.0
    # From drift_day on: card-testing bursts (small amounts at terminals new to the card) and a shift
    # in legitimate spending (amounts multiplied by spending_shift).
    drift_day: int | None = None
    card_testing_cards_per_day: int = 15
    spending_shift: float = 1.3

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.radius <= 0 or self.label_delay_days < 0 or self.label_delay_sigma < 0:
            raise ValueError("radius must be positive and label delays non-negative")
        if self.drift_day is not None and not 0 <= self.drift_day < self.days:
            raise ValueError(f"drift_day must be within 0..{self.days - 1}, got {self.drift_day}")
        datetime.fromisoformat(self.start_date)

    @property
    def start_epoch(self) -> int:
        return int(datetime.fromisoformat(self.start_date).replace(tzinfo=UTC).timestamp())


def _reachable_terminals(customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float):
    """CSR layout (offsets, counts, flat terminal indices) of the terminals within radius of each customer."""
    lists = cKDTree(terminal_xy).query_ball_point(customer_xy, r=radius, return_sorted=True)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter((t for x in lists for t in x), dtype=np.int64, count=int(counts.sum()))
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return offsets, counts, flat


def simulate(config: SimulationConfig, progress: bool = True) -> pd.DataFrame:
    """One row per transaction, in time order, with ground truth and the time each fraud label is known."""
    rng = np.random.default_rng(config.seed)
    n_cust, n_days = config.customers, config.days
    steps = tqdm(total=6, desc="simulate", disable=not progress, unit="step")

    customer_xy = rng.uniform(0, 100, (n_cust, 2))
    mean_amount = rng.uniform(5, 100, n_cust)
    std_amount = mean_amount / 2
    tx_per_day = rng.uniform(0, 4, n_cust)
    terminal_xy = rng.uniform(0, 100, (config.terminals, 2))
    offsets, n_reachable, reachable = _reachable_terminals(customer_xy, terminal_xy, config.radius)
    steps.update()

    counts = rng.poisson(np.repeat(tx_per_day[:, None], n_days, axis=1))
    counts[n_reachable == 0] = 0  # a customer with no terminal in reach cannot transact
    customer_day = np.repeat(np.arange(n_cust * n_days), counts.ravel())
    # Time of day ~ Normal(noon, 20,000 s); a draw outside the day drops the transaction. (Redrawing
    # instead gives ~3 % more transactions than the published reference counts.)
    seconds = rng.normal(DAY / 2, 20_000, len(customer_day))
    inside = (seconds >= 0) & (seconds < DAY)
    customer_day, seconds = customer_day[inside], seconds[inside].astype(np.int64)
    customer, day = customer_day // n_days, customer_day % n_days
    n = len(customer)
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    amount = np.round(amount, 2)
    terminal = reachable[offsets[customer] + (rng.random(n) * n_reachable[customer]).astype(np.int64)]
    steps.update()

    scenario = np.zeros(n, dtype=np.int8)
    scenario[amount > 220] = BIG_AMOUNT
    compromised = np.zeros((config.terminals, n_days), dtype=bool)
    for start in range(n_days):
        for t in rng.choice(config.terminals, 2, replace=False):
            compromised[t, start : start + 28] = True
    scenario[compromised[terminal, day]] = COMPROMISED_TERMINAL
    steps.update()

    by_customer = np.argsort(customer, kind="stable")
    cust_start = np.searchsorted(customer[by_customer], np.arange(n_cust))
    cust_end = np.searchsorted(customer[by_customer], np.arange(n_cust), side="right")
    for start in range(n_days):
        for c in rng.choice(n_cust, 3, replace=False):
            own = by_customer[cust_start[c] : cust_end[c]]
            window = own[(day[own] >= start) & (day[own] < start + 14)]
            hit = rng.choice(window, len(window) // 3, replace=False) if len(window) >= 3 else window[:0]
            fresh = hit[scenario[hit] != COMPROMISED_CARD]
            amount[fresh] = np.round(amount[fresh] * 5, 2)
            scenario[hit] = COMPROMISED_CARD
    steps.update()

    if config.drift_day is not None:
        shifted = (day >= config.drift_day) & (scenario == GENUINE)
        amount[shifted] = np.round(amount[shifted] * config.spending_shift, 2)
        burst = _card_testing(rng, config, n_reachable)
        customer = np.concatenate([customer, burst["customer"]])
        day = np.concatenate([day, burst["day"]])
        seconds = np.concatenate([seconds, burst["seconds"]])
        amount = np.concatenate([amount, burst["amount"]])
        terminal = np.concatenate([terminal, burst["terminal"]])
        scenario = np.concatenate([scenario, np.full(len(burst["day"]), CARD_TESTING, dtype=np.int8)])
    steps.update()

    time = config.start_epoch + day * DAY + seconds
    order = np.lexsort((terminal, customer, time))
    time, customer, terminal, amount, scenario = (a[order] for a in (time, customer, terminal, amount, scenario))
    is_fraud = scenario != GENUINE
    label_known_at = np.where(is_fraud, label_times(time, config.label_delay_days, config.label_delay_sigma, rng), -1)
    frame = pd.DataFrame(
        {
            "transaction_id": _ids("TX", np.arange(len(time)), 9),
            "card_id": _ids("C", customer, 6),
            "terminal_id": _ids("T", terminal, 6),
            "time": time.astype(np.int64),
            "amount": amount,
            "is_fraud": is_fraud,
            "fraud_scenario": scenario,
            "label_known_at": label_known_at.astype(np.int64),
        }
    )
    steps.update()
    steps.close()
    return frame


def label_times(time: np.ndarray, delay_days: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """When each outcome becomes known (epoch seconds): after a log-normal delay of median `delay_days` and
    shape `sigma` (0: the fixed delay of the reference protocol), rounded to the second."""
    delay = np.full(len(time), float(delay_days) * DAY)
    if sigma > 0:
        delay *= np.exp(sigma * rng.standard_normal(len(time)))
    return np.asarray(time, dtype=np.int64) + np.round(delay).astype(np.int64)


def _card_testing(rng: np.random.Generator, config: SimulationConfig, n_reachable: np.ndarray) -> dict:
    """Bursts of 5-15 small amounts, minutes apart, at random terminals anywhere on the grid."""
    days = np.arange(config.drift_day, config.days)
    active = np.flatnonzero(n_reachable > 0)
    cards = rng.choice(active, (len(days), config.card_testing_cards_per_day))
    sizes = rng.integers(5, 16, cards.shape)
    burst_day = np.repeat(np.repeat(days, cards.shape[1]), sizes.ravel())
    burst_card = np.repeat(cards.ravel(), sizes.ravel())
    sizes_flat = sizes.ravel()
    first_of_burst = np.cumsum(sizes_flat) - sizes_flat
    gaps = rng.exponential(90, len(burst_day)).astype(np.int64) + 5
    gaps[first_of_burst] = 0
    elapsed = np.cumsum(gaps)
    since_start = elapsed - np.repeat(elapsed[first_of_burst], sizes_flat)
    burst_start = np.repeat(rng.integers(0, DAY - 3_600, cards.size), sizes_flat)
    seconds = np.minimum(burst_start + since_start, DAY - 1)
    return {
        "customer": burst_card,
        "day": burst_day,
        "seconds": seconds,
        "amount": np.round(rng.uniform(0.5, 5.0, len(burst_day)), 2),
        "terminal": rng.integers(0, config.terminals, len(burst_day)),
    }


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pd.Series:
    return prefix + pd.Series(numbers).astype(str).str.zfill(width)


def labels_of(history: pd.DataFrame) -> pd.DataFrame:
    """The open loop's labels: every fraud, whatever was decided, after its delay (the oracle, for measuring; the
    closed loop's labels depend on the decisions: pipelines/data/outcomes.py). (transaction_id, is_fraud, known_at,
    source), by known_at."""
    frauds = history.loc[history["is_fraud"], ["transaction_id", "label_known_at"]]
    labels = frauds.rename(columns={"label_known_at": "known_at"}).assign(is_fraud=True, source="simulation")
    return labels.sort_values(["known_at", "transaction_id"], kind="stable").reset_index(drop=True)


def summary(history: pd.DataFrame) -> dict[str, float]:
    days = (history["time"].max() - history["time"].min()) / DAY + 1
    return {
        "transactions": len(history),
        "frauds": int(history["is_fraud"].sum()),
        "fraud_rate": float(history["is_fraud"].mean()),
        "transactions_per_day": len(history) / days,
        "frauds_per_day": history["is_fraud"].sum() / days,
        "cards": history["card_id"].nunique(),
        "terminals": history["terminal_id"].nunique(),
    }
