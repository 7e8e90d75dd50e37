"""Export the SQL store's decisions and labels into the offline store, a day at a time, bounded in memory.

File day D holds the rows with D*DAY < time <= (D+1)*DAY (the store's own window convention). Days already
exported are skipped but for the newest LATE_DAYS, written again when the store holds more of their rows (the
newest may have been written before its day ended; the others may have received late events). A day is never
written with fewer rows than it has, so retention in the SQL store cannot take a row from the offline store, and
running the export again, or twice at once, writes the same bytes.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from fraudloop.models import store as sql
from fraudloop.models.units import DAY
from fraudloop.pipelines.offline.store import DECISIONS, LABELS, OfflineStore
from fraudloop.pipelines.retraining.training_set import decode_decisions

CHUNK_ROWS = 100_000
# Days behind the newest exported one still checked for rows that arrived late (a lagging partition, a scorer
# catching up after an outage); older ones only with `every_day`
LATE_DAYS = 7
EXTRA = ("terminal_id", "amount_cents", "score", "model_version", "decided_at")


def file_day(time: float) -> int:
    """The day file a row of this time lands in (D*DAY < time <= (D+1)*DAY)."""
    return math.ceil(time / DAY) - 1


def decision_table(chunk: pd.DataFrame) -> pa.Table:
    """Stored decisions (features as JSON) as offline rows (one column a feature)."""
    rows = decode_decisions(chunk)
    for column in EXTRA:
        rows[column] = chunk[column].to_numpy()
    rows["mode"] = chunk["mode"].fillna("full").to_numpy(object)
    rows["score"] = rows["score"].astype(float)
    return pa.Table.from_pandas(rows, preserve_index=False)


def label_table(frame: pd.DataFrame) -> pa.Table:
    return pa.table({"transaction_id": frame["transaction_id"].astype(str), "known_at": frame["known_at"].astype(float),
                     "is_fraud": frame["is_fraud"].astype(bool),
                     "source": frame["source"].fillna("chargeback").astype(str)})


def _bounds(store: sql.Store, column: sa.Column, until: float) -> tuple[float, float] | None:
    with store.engine.connect() as db:
        low, high = db.execute(sa.select(sa.func.min(column), sa.func.max(column)).where(column <= until)).one()
    return None if low is None else (float(low), float(high))


def _to_write(store: sql.Store, offline: OfflineStore, kind: str, column: sa.Column, until: float,
              every_day: bool) -> list[int]:
    """The days to write: the new ones, and of the newest LATE_DAYS (`every_day`: of all) those where the SQL store
    holds more rows than the file. Never fewer: rows are only inserted, but for retention, which deletes what the
    offline store keeps (a day partly pruned is left as it was exported)."""
    bounds = _bounds(store, column, until)
    if bounds is None:
        return []
    first, last = file_day(bounds[0]), file_day(bounds[1])  # never a day past the data: it would look final
    done = set(offline.days(kind))
    redo_from = first if every_day or not done else max(done) - LATE_DAYS + 1
    return [d for d in range(first, last + 1)
            if d not in done or (d >= redo_from and _count(store, column, d) > offline.rows(kind, d))]


def _count(store: sql.Store, column: sa.Column, day: int) -> int:
    with store.engine.connect() as db:
        return int(db.execute(sa.select(sa.func.count()).where(column > day * DAY, column <= (day + 1) * DAY))
                   .scalar_one())


def source_fingerprint(store: sql.Store) -> str:
    """Which SQL store an offline store's days came from (its URL's hash: no password, no path in the marker)."""
    return hashlib.sha256(store.engine.url.render_as_string(hide_password=True).encode()).hexdigest()[:16]


def export(store: sql.Store, offline: OfflineStore, until: float, every_day: bool = False) -> dict:
    """Export every day up to `until`'s that is new or may have changed, whole (a reader filters by time: what a day
    holds after `until` is never read as known before it); returns what was written. `every_day`: every day the
    store holds more of than the offline store (after writing into old days: a backfill, an import of old labels)."""
    offline.check_schema(source_fingerprint(store))
    written = {DECISIONS: 0, LABELS: 0}
    days = {DECISIONS: 0, LABELS: 0}
    for day in _to_write(store, offline, DECISIONS, sql.decisions.c.event_time, until, every_day):
        chunks = store.decision_chunks(day * DAY, (day + 1) * DAY, CHUNK_ROWS)
        written[DECISIONS] += offline.write_day(DECISIONS, day, (decision_table(c) for c in chunks))
        days[DECISIONS] += 1
    label = sql.labels.c
    for day in _to_write(store, offline, LABELS, label.known_at, until, every_day):
        query = (sa.select(label.transaction_id, label.known_at, label.is_fraud, label.source)
                 .where(label.known_at > day * DAY, label.known_at <= (day + 1) * DAY)
                 .order_by(label.known_at, label.transaction_id))
        with store.engine.connect().execution_options(stream_results=True) as db:
            chunks = pd.read_sql(query, db, chunksize=CHUNK_ROWS)
            written[LABELS] += offline.write_day(LABELS, day, (label_table(c) for c in chunks))
        days[LABELS] += 1
    return {"uri": offline.uri, "until": until, "decision_days": days[DECISIONS], "decisions": written[DECISIONS],
            "label_days": days[LABELS], "labels": written[LABELS]}
