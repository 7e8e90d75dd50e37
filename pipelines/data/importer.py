"""Bring your own history: a CSV or Parquet file of transactions (and labels) into a history folder.

The history folder is what `fraudloop simulate` writes and what `benchmark model`, `train`, `backfill`
and `replay` read. Every row passes through the stream's own contracts (`parse_transaction`,
`parse_label`), so an imported history holds nothing the scorer would have refused; a row that fails is
kept, with its reason, in `rejects.csv` beside the history, and counted in the summary.

The mapping names the file's column for each of our fields, in a small TOML file or by flags (flags win):

    [columns]            # our field = the file's column
    transaction_id = "TRANSACTION_ID"
    card_id = "CUSTOMER_ID"
    terminal_id = "TERMINAL_ID"
    timestamp = "TX_DATETIME"
    amount = "TX_AMOUNT"
    is_fraud = "TX_FRAUD"      # optional: a fraud flag
    currency = "CURRENCY"      # optional: else `currency` below

    [options]
    timezone = "UTC"           # for times written without an offset
    currency = "EUR"
    label_delay_days = 7.0     # when only a fraud flag is given: each fraud is known this long after it
    label_delay_sigma = 0.0    # > 0: log-normal delays of that shape around the median above (the simulator's)
    seed = 0

A labels file (`--labels`) gives the outcomes instead: columns transaction_id, is_fraud, known_at (mapped
in `[label_columns]`).
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from fraudloop.models.currency import load_rates
from fraudloop.models.schema import InvalidRecord, parse_label, parse_transaction
from fraudloop.models.settings import settings
from fraudloop.pipelines.data.history import write_history
from fraudloop.pipelines.data.simulate import label_times

FIELDS = ("transaction_id", "card_id", "terminal_id", "timestamp", "amount")
OPTIONAL_FIELDS = ("is_fraud", "currency")
LABEL_FIELDS = ("transaction_id", "is_fraud", "known_at")
REJECTS_FILE = "rejects.csv"


@dataclass
class Mapping:
    columns: dict[str, str] = field(default_factory=dict)  # our field -> the file's column
    label_columns: dict[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    currency: str = "EUR"
    label_delay_days: float = 7.0
    label_delay_sigma: float = 0.0
    seed: int = 0

    @classmethod
    def load(cls, path: Path | None, columns: list[str] | tuple[str, ...] = (), **options: object) -> Mapping:
        """From a TOML file (optional), then `field=COLUMN` flags and options that are not None."""
        mapping = cls()
        if path is not None:
            if not path.is_file():
                raise ValueError(f"mapping file {path} not found")
            try:
                document = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"mapping file {path}: {error}") from None
            unknown = set(document) - {"columns", "label_columns", "options"}
            if unknown:
                raise ValueError(f"mapping file {path}: unknown sections {sorted(unknown)}")
            mapping.columns.update(document.get("columns", {}))
            mapping.label_columns.update(document.get("label_columns", {}))
            options = {**document.get("options", {}), **{k: v for k, v in options.items() if v is not None}}
        for item in columns:
            ours, sep, theirs = item.partition("=")
            if not sep or not theirs:
                raise ValueError(f"--map {item!r}: expected FIELD=COLUMN")
            mapping.columns[ours] = theirs
        known = {f.name for f in fields(cls)} - {"columns", "label_columns"}
        for name, value in options.items():
            if value is None:
                continue
            if name not in known:
                raise ValueError(f"unknown option {name!r} (known: {', '.join(sorted(known))})")
            default = getattr(mapping, name)
            try:
                setattr(mapping, name, type(default)(value))
            except (TypeError, ValueError):
                raise ValueError(f"option {name}: {value!r} is not a {type(default).__name__}") from None
        for name in mapping.columns:
            if name not in FIELDS + OPTIONAL_FIELDS:
                raise ValueError(f"unknown field {name!r} in the mapping (fields: "
                                 f"{', '.join(FIELDS + OPTIONAL_FIELDS)})")
        for name in mapping.label_columns:
            if name not in LABEL_FIELDS:
                raise ValueError(f"unknown label field {name!r} (fields: {', '.join(LABEL_FIELDS)})")
        try:
            ZoneInfo(mapping.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {mapping.timezone!r} is not a known time zone (e.g. UTC, Europe/Paris)"
                             ) from None
        if mapping.label_delay_days < 0 or mapping.label_delay_sigma < 0:
            raise ValueError("label_delay_days and label_delay_sigma must be non-negative")
        return mapping

    def column(self, name: str) -> str:
        return self.columns.get(name, name)


@dataclass
class Imported:
    rows: int
    accepted: int
    rejects: Counter  # reason -> rows
    labels: int
    labels_rejected: Counter
    label_rule: str
    first: str
    last: str
    cards: int
    terminals: int
    frauds: int
    out: Path

    def summary(self) -> str:
        lines = [
            f"read {self.rows:,} transactions: {self.accepted:,} accepted, {sum(self.rejects.values()):,} rejected",
            *(f"  rejected {n:,}: {reason}" for reason, n in self.rejects.most_common(5)),
            *([f"  ... and {len(self.rejects) - 5} more reasons"] if len(self.rejects) > 5 else []),
            f"time {self.first} .. {self.last}; {self.cards:,} cards, {self.terminals:,} terminals",
            f"frauds {self.frauds:,} ({self.frauds / max(self.accepted, 1):.3%}); labels {self.labels:,} "
            f"({self.label_rule})",
            *(f"  label rejected {n:,}: {reason}" for reason, n in self.labels_rejected.most_common(5)),
            f"history written to {self.out}"
            + (f"; rejects with their reasons in {self.out / REJECTS_FILE}" if self.rejects or self.labels_rejected
               else ""),
        ]
        return "\n".join(lines)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file, by its suffix; every column as read (CSV: strings, so nothing is coerced)."""
    if not path.is_file():
        raise ValueError(f"{path} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".gz") or path.name.lower().endswith(".csv.gz"):
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    raise ValueError(f"{path}: expected a .csv, .csv.gz or .parquet file")


def _timestamps(values: pd.Series, timezone: str) -> list[str]:
    """RFC 3339 strings with an offset; times without one are read in `timezone`. Unreadable -> as written."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values if values.dt.tz is not None else values.dt.tz_localize(timezone, nonexistent="NaT",
                                                                                  ambiguous="NaT")
        return [t.isoformat() if not pd.isna(t) else f"{v} (not one time in {timezone})"
                for t, v in zip(stamps, values, strict=True)]
    if pd.api.types.is_numeric_dtype(values):  # epoch seconds
        stamps = pd.to_datetime(values, unit="s", utc=True, errors="coerce")
        return [t.isoformat() if not pd.isna(t) else str(v) for t, v in zip(stamps, values, strict=True)]
    out = []
    for text in values.astype(str):
        try:
            stamp = pd.Timestamp(float(text), unit="s", tz="UTC")  # epoch seconds written as text
        except (ValueError, OverflowError):
            try:
                stamp = pd.Timestamp(text)
                if stamp.tzinfo is None:
                    stamp = stamp.tz_localize(timezone)
            except (ValueError, TypeError):
                stamp = None
        # an unreadable or nonexistent time goes on as text: the contract names it
        out.append(stamp.isoformat() if stamp is not None and not pd.isna(stamp) else f"{text} (in {timezone})")
    return out


def _texts(values: pd.Series) -> list[str]:
    """Ids as text; a missing one becomes "" (which the contract refuses), never the word "None"."""
    return values.where(values.notna(), "").astype(str).tolist()


def _amounts(values: pd.Series) -> list[object]:
    """Numbers where the column holds them; anything else (text, a missing value) as text, which the contract
    refuses with its reason."""
    numbers = pd.to_numeric(values, errors="coerce")
    return [float(n) if np.isfinite(n) else str(text) for n, text in zip(numbers, values, strict=True)]


def _flags(values: pd.Series) -> list[object]:
    """A fraud flag: booleans, 0/1 or true/false text; anything else is passed on for the contract to refuse."""
    truth = {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}
    return [truth.get(str(v).strip().lower(), v) if not isinstance(v, bool) else v for v in values]


def import_history(transactions: Path, out: Path, mapping: Mapping, labels: Path | None = None) -> Imported:
    table = read_table(transactions)
    missing = [f"{name} (column {mapping.column(name)!r})" for name in FIELDS if mapping.column(name) not in table]
    if missing:
        raise ValueError(f"{transactions}: no column for {', '.join(missing)}; columns are {list(table.columns)}")
    has_flag = "is_fraud" in mapping.columns or (labels is None and "is_fraud" in table)
    if labels is None and not has_flag:
        raise ValueError(f"{transactions}: no fraud flag column (map is_fraud=COLUMN) and no --labels file")
    if has_flag and labels is not None:
        raise ValueError("give the outcomes once: a fraud flag column (is_fraud) or a --labels file, not both")
    if has_flag and mapping.column("is_fraud") not in table:
        raise ValueError(f"{transactions}: no column {mapping.column('is_fraud')!r} for is_fraud")

    stamps = _timestamps(table[mapping.column("timestamp")], mapping.timezone)
    amounts = _amounts(table[mapping.column("amount")])
    currency_column = mapping.column("currency")
    currencies = table[currency_column].tolist() if currency_column in table else [mapping.currency] * len(table)
    flags = _flags(table[mapping.column("is_fraud")]) if has_flag else [False] * len(table)
    ids, cards, terminals = (_texts(table[mapping.column(n)]) for n in ("transaction_id", "card_id", "terminal_id"))

    rates = load_rates(settings().rates_file)  # the scorer's table: the same amounts
    accepted, reasons, seen = [], [None] * len(table), set()
    for row, record in enumerate(zip(ids, cards, terminals, stamps, amounts, currencies, flags, strict=True)):
        tx_id, card, terminal, stamp, amount, currency, flag = record
        try:
            tx = parse_transaction({"schema_version": 1, "transaction_id": tx_id, "card_id": card,
                                    "terminal_id": terminal, "timestamp": stamp, "amount": amount,
                                    "currency": currency}, rates)
            if not isinstance(flag, bool):
                raise InvalidRecord([f"is_fraud: {flag!r} is not a fraud flag (true/false, 1/0)"])
            if tx_id in seen:
                raise InvalidRecord(["transaction_id: duplicate (an earlier row has it)"])
        except InvalidRecord as error:
            reasons[row] = str(error)
            continue
        seen.add(tx_id)
        accepted.append((tx.transaction_id, tx.card_id, tx.terminal_id, tx.time, tx.amount_cents / 100, flag))

    history = pd.DataFrame(accepted, columns=["transaction_id", "card_id", "terminal_id", "time", "amount",
                                              "is_fraud"])
    history = history.sort_values(["time", "transaction_id"], kind="stable", ignore_index=True)
    if (history["time"] % 1 == 0).all():
        history["time"] = history["time"].astype(np.int64)  # whole seconds, as the simulator writes them
    rejected = table.assign(reason=reasons)[[r is not None for r in reasons]]

    label_rejects: Counter = Counter()
    if labels is not None:
        outcomes, label_rejected = _read_labels(labels, mapping, set(history["transaction_id"]))
        label_rejects.update(label_rejected["reason"])
        rejected = pd.concat([rejected, label_rejected], ignore_index=True)
        frauds = set(outcomes.loc[outcomes["is_fraud"], "transaction_id"])
        history["is_fraud"] = history["is_fraud"] | history["transaction_id"].isin(frauds)
        rule = f"from {labels.name}"
    else:
        fraud = history["is_fraud"].to_numpy(bool)
        known = label_times(history["time"].to_numpy()[fraud], mapping.label_delay_days, mapping.label_delay_sigma,
                            np.random.default_rng(mapping.seed))
        outcomes = pd.DataFrame({"transaction_id": history["transaction_id"].to_numpy()[fraud], "is_fraud": True,
                                 "known_at": known})
        rule = (f"each fraud known {mapping.label_delay_days:g} days after it" if mapping.label_delay_sigma == 0 else
                f"log-normal delays, median {mapping.label_delay_days:g} days, sigma {mapping.label_delay_sigma:g}")
    outcomes = outcomes.sort_values(["known_at", "transaction_id"], kind="stable", ignore_index=True)

    write_history(out, history, outcomes)
    rejects_path = out / REJECTS_FILE
    if len(rejected):
        rejected.to_csv(rejects_path, index=False)
    elif rejects_path.exists():
        rejects_path.unlink()
    span = pd.to_datetime(history["time"].agg(["min", "max"]), unit="s", utc=True) if len(history) else None
    return Imported(
        rows=len(table), accepted=len(history), rejects=Counter(r for r in reasons if r is not None),
        labels=len(outcomes), labels_rejected=label_rejects, label_rule=rule,
        first=str(span.iloc[0]) if span is not None else "-", last=str(span.iloc[1]) if span is not None else "-",
        cards=history["card_id"].nunique(), terminals=history["terminal_id"].nunique(),
        frauds=int(history["is_fraud"].sum()), out=out)


def _read_labels(path: Path, mapping: Mapping, transactions: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labels that pass the label contract and name an accepted transaction; the others with reasons."""
    table = read_table(path)
    column = {name: mapping.label_columns.get(name, name) for name in LABEL_FIELDS}
    missing = [f"{name} (column {c!r})" for name, c in column.items() if c not in table]
    if missing:
        raise ValueError(f"{path}: no column for {', '.join(missing)}; columns are {list(table.columns)}")
    stamps = _timestamps(table[column["known_at"]], mapping.timezone)
    flags = _flags(table[column["is_fraud"]])
    kept, reasons = [], []
    for tx_id, flag, stamp in zip(_texts(table[column["transaction_id"]]), flags, stamps, strict=True):
        try:
            label = parse_label({"schema_version": 1, "transaction_id": tx_id, "is_fraud": flag, "known_at": stamp})
            if label.transaction_id not in transactions:
                raise InvalidRecord(["transaction_id: no accepted transaction has it"])
        except InvalidRecord as error:
            reasons.append(str(error))
            continue
        reasons.append(None)
        kept.append((label.transaction_id, label.is_fraud, label.known_at))
    outcomes = pd.DataFrame(kept, columns=["transaction_id", "is_fraud", "known_at"])
    rejected = table.assign(reason=reasons)[[r is not None for r in reasons]]
    return outcomes, rejected.assign(file=path.name)
