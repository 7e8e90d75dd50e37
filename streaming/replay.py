"""Produce a simulated history to the topics as a live feed: transactions, and labels when they become known."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator

import orjson
import pandas as pd
from fraudloop.models.features import labels_in_order, transactions_of
from fraudloop.models.schema import label_record, transaction_record
from kafka import KafkaProducer
from tqdm import tqdm


def events(history: pd.DataFrame, labels: pd.DataFrame) -> Iterator[tuple[float, str, bytes, bytes]]:
    """(event time, kind, key, value) in time order; a label comes before a transaction of the same second."""
    txs = ((tx.time, "transaction", tx.card_id.encode(), orjson.dumps(transaction_record(tx)))
           for tx in transactions_of(history))
    outcomes = ((lb.known_at, "label", lb.transaction_id.encode(), orjson.dumps(label_record(lb)))
                for lb in labels_in_order(labels))
    return heapq.merge(outcomes, txs, key=lambda e: (e[0], e[1] == "transaction"))


def send_history(producer: KafkaProducer, history: pd.DataFrame, labels: pd.DataFrame, *, transactions_topic: str,
           labels_topic: str, rate: float | None = None, speedup: float | None = None, progress: bool = True,
           until: float | None = None) -> dict[str, int]:
    """Send every event up to `until` (event time); pace by messages a second or by simulated-time speed-up."""
    sent = {"transaction": 0, "label": 0}
    started = time.monotonic()
    first_time = None
    total = len(history) + len(labels)
    with tqdm(total=total, desc="replay", unit="msg", disable=not progress, mininterval=0.5) as bar:
        for event_time, kind, key, value in events(history, labels):
            if until is not None and event_time > until:
                break
            first_time = event_time if first_time is None else first_time
            n = sent["transaction"] + sent["label"]
            due = n / rate if rate else (event_time - first_time) / speedup if speedup else 0.0
            wait = started + due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            producer.send(transactions_topic if kind == "transaction" else labels_topic, key=key, value=value)
            sent[kind] += 1
            bar.update()
    producer.flush()
    return sent
