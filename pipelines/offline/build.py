"""The point-in-time training set built out of core by DuckDB from the offline store, bounded by a row budget.

DuckDB, not Polars' streaming engine or hand-written pyarrow scans: the build is a join, a latest-label-wins
aggregate, filters and a sort, which DuckDB runs in SQL over Parquet with a hard memory limit, spilling to disk
past it, and streams straight to Parquet (COPY); it is one wheel with no dependencies. The same SQL semantics as
`training_set.training_set_as_of` (a test holds them to the same rows and labels on a small store).

Downsampling: every row whose outcome is rare or costly to learn is kept (frauds, blocked and explored rows, rows
with an analyst's or cardholder's answer); the remaining genuine traffic is sampled by card at the rate the budget
leaves, with weight 1 / rate, so sums and rates over the set estimate those over all traffic (training,
evaluation, thresholds and the gates use the weights). By card, not by transaction: Card Precision@k ranks cards
by their highest score, the gates' bootstrap resamples cards, and a card thinned to some of its transactions
would rank lower than it does. (A compromised card not drawn keeps its frauds and blocks: its highest score, in
practice. Keeping such cards whole was tried: in the simulated world a quarter of all rows belong to a card
compromised some time in 30 days, more than a budget can hold at volume.) The draw is a hash of the card id, so the
same card is in or out of every training set (a reader can recompute it: `card_fraction`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import duckdb
import fsspec
import numpy as np
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.units import DAY
from fraudloop.pipelines.offline.store import DECISIONS, LABELS, OfflineStore
from fraudloop.pipelines.retraining.training_set import BLOCKED, FEEDBACK_SOURCES, NO_CHARGEBACK, UNKNOWN, location

BUDGET_ROWS = 2_000_000  # rows of a training set: about 1 GB in pandas, 3 GB of peak to train and validate
MIN_RATE = 0.001  # when what must be kept exceeds the budget, genuine traffic is still sampled at this rate
MEMORY_LIMIT = "1GB"  # DuckDB's own: it spills to disk past it
_TWO_64 = 18446744073709551616.0


def card_fraction(card_ids: Iterable[str]) -> np.ndarray:
    """Each card's place in [0, 1): the first 8 bytes of its id's MD5, little-endian, over 2^64 (DuckDB's
    `md5_number_upper`). A card is in a sample at rate r when its fraction is below r."""
    return np.array([int.from_bytes(hashlib.md5(str(c).encode()).digest()[:8], "little") / _TWO_64 for c in card_ids])


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(_text(p) for p in paths) + "]"


def _sql_set(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


@contextmanager
def connect(offline: OfflineStore, memory_limit: str = MEMORY_LIMIT) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with a memory limit, spilling to a folder of its own (removed after)."""
    spill = tempfile.mkdtemp(prefix="fraudloop-duckdb-")
    db = duckdb.connect()
    try:
        db.execute(f"SET memory_limit = {_text(memory_limit)}")
        db.execute(f"SET temp_directory = {_text(spill)}")
        db.execute("SET preserve_insertion_order = false")
        protocol = offline.fs.protocol if isinstance(offline.fs.protocol, str) else offline.fs.protocol[0]
        if protocol not in ("file", "local"):
            db.register_filesystem(offline.fs)
        yield db
    finally:
        db.close()
        shutil.rmtree(spill, ignore_errors=True)


def _text(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _labelled(offline: OfflineStore, since: float, as_of: float, maturity: float) -> str | None:
    """SQL of the window's decisions with their outcome as known at `as_of` (None: no decision files)."""
    first, last = int(since // DAY) - 1, int(as_of // DAY)
    decision_files, label_files = offline.files(DECISIONS, first, last), offline.files(LABELS, first, last)
    if not decision_files:
        return None
    features = ", ".join(f'"{f}"' for f in FEATURE_NAMES)
    labels = (f"SELECT transaction_id, arg_max(is_fraud, known_at) AS is_fraud, arg_max(source, known_at) AS source "
              f"FROM read_parquet({_list(label_files)}) WHERE known_at <= {as_of!r} GROUP BY transaction_id"
              if label_files else
              "SELECT NULL::VARCHAR AS transaction_id, NULL::BOOLEAN AS is_fraud, NULL::VARCHAR AS source LIMIT 0")
    return f"""
        WITH d AS (
            SELECT transaction_id, card_id, event_time, {features}, decision, coalesce(propensity, 1.0) AS propensity,
                   coalesce(rule, 'model') AS rule
            FROM read_parquet({_list(decision_files)}) WHERE event_time > {since!r} AND event_time <= {as_of!r}),
        l AS ({labels})
        SELECT d.*, d.event_time <= {as_of - maturity!r} AS mature, coalesce(l.is_fraud, false) AS is_fraud,
               CASE WHEN l.transaction_id IS NOT NULL THEN l.source
                    WHEN d.decision IN {_sql_set(BLOCKED)} THEN '{UNKNOWN}' ELSE '{NO_CHARGEBACK}' END AS label_source
        FROM d LEFT JOIN l USING (transaction_id)"""


def build(offline: OfflineStore, as_of: float, maturity_seconds: float, lookback_seconds: float, out: str,
          budget_rows: int | None = BUDGET_ROWS, feedback_seconds: float | None = None,
          memory_limit: str = MEMORY_LIMIT) -> dict:
    """Write the training set as of `as_of` (the `lookback_seconds` before it) to `out`; returns its URI and counts.

    Its rows and labels are those of `training_set.training_set_as_of(..., feedback_seconds)` (default: the
    maturity), in the same order, plus a `weight` column; `budget_rows` None keeps every row (weight 1)."""
    as_of, maturity_seconds = float(as_of), float(maturity_seconds)  # written into the SQL as Python floats
    feedback = maturity_seconds if feedback_seconds is None else float(feedback_seconds)
    labelled = _labelled(offline, as_of - float(lookback_seconds), as_of, maturity_seconds)
    if labelled is None:
        raise ValueError(f"the offline store {offline.uri} holds no decisions up to the day of {as_of!r} "
                         "(run 'fraudloop export' first)")
    with connect(offline, memory_limit) as db:
        db.execute(f"""CREATE TEMP VIEW chosen AS SELECT * FROM ({labelled})
            WHERE label_source <> '{UNKNOWN}' AND (mature OR (event_time > {as_of - feedback!r}
                  AND label_source IN {_sql_set(FEEDBACK_SOURCES)}))""")
        db.execute(f"""CREATE TEMP VIEW marked AS SELECT chosen.*, (is_fraud OR decision <> 'approve' OR propensity < 1
                OR label_source IN {_sql_set(FEEDBACK_SOURCES)}) AS kept FROM chosen""")
        total, kept, frauds = db.execute("SELECT count(*), count(*) FILTER (WHERE kept), "
                                         "count(*) FILTER (WHERE is_fraud) FROM marked").fetchone()
        unknown = db.execute(f"SELECT count(*) FROM ({labelled}) WHERE mature AND label_source = '{UNKNOWN}'"
                             ).fetchone()[0]
        if not frauds:
            raise ValueError("the training set has no labelled fraud: nothing to learn from")
        rate = 1.0 if budget_rows is None or total <= budget_rows else max(
            MIN_RATE, (budget_rows - kept) / max(total - kept, 1))
        sampled = "TRUE" if rate >= 1 else f"md5_number_upper(card_id) / {_TWO_64!r} < {rate!r}"
        columns = ", ".join(f'"{c}"' for c in ("transaction_id", "card_id", "event_time", *FEATURE_NAMES, "decision",
                                                "propensity", "rule", "mature", "is_fraud", "label_source"))
        uri = location(out)
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        target = path if uri.startswith("file://") else uri
        weight = f"CAST(CASE WHEN kept THEN 1 ELSE {1 / rate!r} END AS DOUBLE) AS weight"
        db.execute(f"""COPY (SELECT {columns}, {weight} FROM marked WHERE kept OR {sampled}
                             ORDER BY event_time, transaction_id)
                       TO {_text(target)} (FORMAT parquet, COMPRESSION zstd)""")
        rows, newest, by_source = db.execute(
            f"SELECT count(*), max(event_time), histogram(label_source) FILTER (WHERE is_fraud) "
            f"FROM read_parquet({_text(target)})").fetchone()
    return {"uri": uri, "rows": int(rows), "frauds": int(frauds), "unknown_rows": int(unknown),
            "frauds_by_source": {str(k): int(v) for k, v in sorted((by_source or {}).items())},
            "labelled_rows": int(total), "kept_rows": int(kept), "sample_rate": rate,
            "newest_event": float(newest), "as_of": as_of}


def read_sample(offline: OfflineStore, since: float, until: float, columns: Iterable[str], sample_rows: int,
                known_by: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decisions with since < event_time <= until (`columns` of them), a uniform sample by card of at most about
    `sample_rows`, in time order; and the labels of those known by `known_by` (empty without it). What the monitor
    reads: its memory is set by `sample_rows`, whatever the day's volume."""
    first, last = int(since // DAY) - 1, int(until // DAY)
    files = offline.files(DECISIONS, first, last)
    wanted = ", ".join(f'"{c}"' for c in columns)
    label_columns = ["transaction_id", "known_at", "is_fraud", "source"]
    if not files:
        return pd.DataFrame(columns=list(columns)), pd.DataFrame(columns=label_columns)
    where = f"event_time > {float(since)!r} AND event_time <= {float(until)!r}"
    with connect(offline) as db:
        count = db.execute(f"SELECT count(*) FROM read_parquet({_list(files)}) WHERE {where}").fetchone()[0]
        if count > sample_rows:
            where += f" AND md5_number_upper(card_id) / {_TWO_64!r} < {sample_rows / count!r}"
        rows = db.execute(f"SELECT {wanted} FROM read_parquet({_list(files)}) WHERE {where} "
                          "ORDER BY event_time, transaction_id").df()
        label_files = [] if known_by is None else offline.files(LABELS, first, int(known_by // DAY))
        if not label_files or rows.empty:
            return rows, pd.DataFrame(columns=label_columns)
        db.register("sampled", rows[["transaction_id"]])
        labels = db.execute(f"SELECT {', '.join(label_columns)} FROM read_parquet({_list(label_files)}) "
                            f"WHERE known_at <= {float(known_by)!r} "
                            "AND transaction_id IN (SELECT transaction_id FROM sampled)").df()
    return rows, labels
