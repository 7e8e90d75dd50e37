"""Reading and writing a transaction history (Parquet): transactions.parquet and labels.parquet in a folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TRANSACTIONS_FILE, LABELS_FILE = "transactions.parquet", "labels.parquet"
REQUIRED = {"transaction_id", "card_id", "terminal_id", "time", "amount"}


def write_history(folder: Path, history: pd.DataFrame, labels: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    history.to_parquet(folder / TRANSACTIONS_FILE, index=False)
    labels.to_parquet(folder / LABELS_FILE, index=False)


def read_history(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The history (time-ordered) and its labels; a clear error if the folder is not a history."""
    tx_path, label_path = folder / TRANSACTIONS_FILE, folder / LABELS_FILE
    for path in (tx_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (expected a history folder: 'fraudloop simulate' or "
                                    "'fraudloop import' write one)")
    history = pd.read_parquet(tx_path)
    missing = REQUIRED - set(history.columns)
    if missing:
        raise ValueError(f"{tx_path} lacks columns {sorted(missing)}")
    if not history["time"].is_monotonic_increasing:
        history = history.sort_values(["time", "transaction_id"], kind="stable", ignore_index=True)
    return history, pd.read_parquet(label_path)
