"""What the scorer persists for retraining: each decision with the feature values used, and each label.

SQLAlchemy Core, so one code path serves the embedded SQLite default and PostgreSQL in production.
Writes are idempotent by transaction id: a batch replayed after a crash changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import orjson
import pandas as pd
import sqlalchemy as sa
from fraudloop.models.currency import REFERENCE_CURRENCY
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.home import first_use_lock, fraudloop_home, sqlite_path
from fraudloop.models.schema import Label, Transaction

metadata = sa.MetaData()
decisions = sa.Table(
    "decisions", metadata,
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("card_id", sa.String(64), nullable=False),
    sa.Column("terminal_id", sa.String(64), nullable=False),
    sa.Column("event_time", sa.Float, nullable=False, index=True),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),  # in the reference currency (models/currency.py)
    sa.Column("score", sa.Float, nullable=True),  # null for history imported without a model
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("features", sa.Text, nullable=False),  # JSON list in FEATURE_NAMES order (null for NaN)
    sa.Column("decided_at", sa.Float, nullable=False),
    # JSON list of the decision's reasons: a redelivered transaction gets the decision already made, whole
    sa.Column("reasons", sa.Text, nullable=True),
    sa.Column("rule", sa.String(128), nullable=True),  # what decided: a rule, a list or `model` (streaming/rules.py)
    sa.Column("rules_version", sa.String(64), nullable=True),  # the rules file in force
    # The message's own amount and currency (null: the reference currency, as rows written before conversion)
    sa.Column("currency", sa.String(3), nullable=True),
    sa.Column("original_amount_cents", sa.BigInteger, nullable=True),
    # The scorer's service mode when it decided (streaming/overload.py; null: full, as rows written before modes)
    sa.Column("mode", sa.String(16), nullable=True),
    # The transactions partition it was read from: whose card state it is (null: stored before partitions were)
    sa.Column("source_partition", sa.Integer, nullable=True),
    # The probability the decision had (streaming/decide.py exploration; null: 1, as rows written before it)
    sa.Column("propensity", sa.Float, nullable=True),
    sa.Index("decisions_partition_time", "source_partition", "event_time"),
)
# One row per outcome: a chargeback later reversed (confirmed genuine) is a second row; the latest known wins.
labels = sa.Table(
    "labels", metadata,
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("known_at", sa.Float, primary_key=True, index=True),
    sa.Column("is_fraud", sa.Boolean, nullable=False),
    # Where it came from (models/schema.py SOURCES; null: stored before sources were) and who, for a review verdict
    sa.Column("source", sa.String(16), nullable=True),
    sa.Column("analyst", sa.String(128), nullable=True),
)
# What serving each model version cost: the scorer adds each batch's transactions and CPU seconds.
serving_costs = sa.Table(
    "serving_costs", metadata,
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("transactions", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.Float, nullable=False),
)
# Scores of the shadow model (the `challenger` alias) on transactions the champion decided: never decisions,
# kept for validation's live gate. One row per transaction and shadow version.
shadow_scores = sa.Table(
    "shadow_scores", metadata,
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("event_time", sa.Float, nullable=False, index=True),
)
feature_sets = sa.Table(
    "feature_sets", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("features", sa.Text, nullable=False),
)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    tx: Transaction
    score: float
    decision: str
    model_version: str
    features: Sequence[float]
    decided_at: float
    reasons: Sequence[dict] = ()
    rule: str = "model"
    rules_version: str = "none"
    mode: str = "full"  # the scorer's service mode (streaming/overload.py): a `lean` review has no reasons
    partition: int | None = None  # the transactions partition it was read from
    propensity: float = 1.0  # the probability the decision had (below 1 where exploration could approve it)


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A decision already made, as the store keeps it: what a redelivery of its transaction gets."""

    tx: Transaction
    score: float | None
    decision: str
    model_version: str
    decided_at: float
    reasons: list[dict]
    rule: str = "model"
    rules_version: str = "none"
    mode: str = "full"
    propensity: float = 1.0


def default_url() -> str:
    home = fraudloop_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'scoring.db'}"


class Store:
    def __init__(self, url: str = "") -> None:
        url = url or default_url()
        if url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_schema(self.engine)
        self._upsert = _dialect_insert(self.engine.dialect.name)
        self._insert = lambda table: self._upsert(table).on_conflict_do_nothing()
        marker = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        columns = [c.name for c in decisions.columns]
        self._insert_decisions_sql = (f"INSERT INTO decisions ({', '.join(columns)}) VALUES "
                                      f"({', '.join([marker] * len(columns))}) ON CONFLICT DO NOTHING")
        with self.engine.begin() as db:
            names = orjson.dumps(FEATURE_NAMES).decode()
            db.execute(self._insert(feature_sets), [{"name": "current", "features": names}])

    def write(self, rows: Sequence[DecisionRow], new_labels: Sequence[Label],
              costs: dict[str, tuple[int, float]] | None = None) -> int:
        """One database transaction per batch; existing transaction ids are left as they are. Returns how
        many decisions were new (fewer than `rows`: some transaction id was stored already).

        `costs`: transactions and CPU seconds spent per model version since the last write, added up.
        """
        inserted = 0
        with self.engine.begin() as db:
            if rows:  # the hot path: one driver-level executemany, no per-row parameter building
                inserted = db.exec_driver_sql(self._insert_decisions_sql, [
                    (r.tx.transaction_id, r.tx.card_id, r.tx.terminal_id, r.tx.time, r.tx.amount_cents, r.score,
                     r.decision, r.model_version, orjson.dumps(list(r.features)).decode(), r.decided_at,
                     orjson.dumps(list(r.reasons)).decode(), r.rule, r.rules_version, r.tx.currency,
                     r.tx.original_cents, r.mode, r.partition, r.propensity)
                    for r in rows]).rowcount
            self.insert(db, [], [{"transaction_id": lb.transaction_id, "is_fraud": lb.is_fraud,
                                  "known_at": lb.known_at, "source": lb.source, "analyst": lb.analyst}
                                 for lb in new_labels])
            for version, (count, cpu) in (costs or {}).items():
                upsert = self._upsert(serving_costs).values(model_version=version, transactions=count, cpu_seconds=cpu)
                db.execute(upsert.on_conflict_do_update(index_elements=["model_version"], set_={
                    "transactions": serving_costs.c.transactions + count,
                    "cpu_seconds": serving_costs.c.cpu_seconds + cpu}))
        return inserted

    def write_shadow(self, version: str, scored: Sequence[tuple[str, float, float]]) -> None:
        """Shadow scores of `version`: (transaction id, score, event time); a redelivered batch changes nothing."""
        if scored:
            with self.engine.begin() as db:
                db.execute(self._insert(shadow_scores), [
                    {"transaction_id": tx_id, "model_version": version, "score": score, "event_time": when}
                    for tx_id, score, when in scored])

    def shadow_pairs(self, version: str, until: float) -> pd.DataFrame:
        """The shadow scores of `version` beside the served decisions of the same transactions (event_time <=
        `until`): transaction_id, card_id, event_time, shadow_score, and the served score, model_version and
        decision."""
        d, sh = decisions.c, shadow_scores.c
        query = (sa.select(d.transaction_id, d.card_id, d.event_time, sh.score.label("shadow_score"), d.score,
                           d.model_version, d.decision)
                 .join(shadow_scores, shadow_scores.c.transaction_id == d.transaction_id)
                 .where(sh.model_version == version, d.event_time <= until, d.score.is_not(None))
                 .order_by(d.event_time))
        with self.engine.connect() as db:
            return pd.read_sql(query, db)

    def labels_for(self, transaction_ids: Sequence[str], known_by: float) -> pd.DataFrame:
        """Labels of these transactions known by `known_by`."""
        parts = []
        with self.engine.connect() as db:
            for start in range(0, len(transaction_ids), 500):
                parts.append(pd.read_sql(sa.select(labels).where(
                    labels.c.transaction_id.in_(list(transaction_ids[start:start + 500])),
                    labels.c.known_at <= known_by), db))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["transaction_id", "known_at",
                                                                                     "is_fraud"])

    def decisions_for(self, transaction_ids: Sequence[str]) -> dict[str, StoredDecision]:
        """The stored decisions of these transaction ids (those there are)."""
        found: dict[str, StoredDecision] = {}
        c = decisions.c
        with self.engine.connect() as db:
            for start in range(0, len(transaction_ids), 500):
                query = sa.select(c.transaction_id, c.card_id, c.terminal_id, c.event_time, c.amount_cents, c.score,
                                  c.decision, c.model_version, c.decided_at, c.reasons, c.rule,
                                  c.rules_version, c.currency, c.original_amount_cents, c.mode,
                                  c.propensity).where(
                    c.transaction_id.in_(transaction_ids[start:start + 500]))
                for r in db.execute(query):
                    tx = Transaction(r[0], r[1], r[2], float(r[3]), int(r[4]), r[12] or REFERENCE_CURRENCY,
                                     None if r[13] is None else int(r[13]))
                    found[r[0]] = StoredDecision(tx,
                                                 None if r[5] is None else float(r[5]), r[6], r[7], float(r[8]),
                                                 orjson.loads(r[9]) if r[9] else [], r[10] or "model",
                                                 r[11] or "none", r[14] or "full",
                                                 1.0 if r[15] is None else float(r[15]))
        return found

    def insert(self, db: sa.Connection, decision_records: list[dict], label_records: list[dict]) -> None:
        if decision_records:
            db.execute(self._insert(decisions), decision_records)
        if label_records:
            db.execute(self._insert(labels), label_records)

    def decisions_between(self, start: float, end: float) -> pd.DataFrame:
        """Decisions on transactions with start < event_time <= end."""
        with self.engine.connect() as db:
            return pd.read_sql(sa.select(decisions).where(decisions.c.event_time > start, decisions.c.event_time <= end)
                               .order_by(decisions.c.event_time), db)

    def serving_cost(self, version: str) -> tuple[int, float]:
        """(transactions, CPU seconds) the scorer spent serving `version`."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(serving_costs.c.transactions, serving_costs.c.cpu_seconds)
                             .where(serving_costs.c.model_version == version)).first()
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

    def newest_event_time(self, at_most: float = float("inf")) -> float | None:
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.max(decisions.c.event_time))
                              .where(decisions.c.event_time <= at_most)).scalar()

    def newest_event_times(self, count: int) -> list[float]:
        """The `count` newest transaction times, newest first."""
        with self.engine.connect() as db:
            return [float(t) for t in db.scalars(sa.select(decisions.c.event_time)
                                                 .order_by(decisions.c.event_time.desc()).limit(count))]

    def recent_transactions(self, horizon_seconds: float, newest: float | None = None,
                            partitions: Collection[int] | None = None) -> Iterator[tuple[Transaction, int]]:
        """Decided transactions within `horizon_seconds` of `newest` (default: the newest stored) and not after
        it, in time order, each with the partition it was read from (-1: not known): to rebuild state.
        `partitions`: those of these partitions only (and those of none known)."""
        newest = self.newest_event_time() if newest is None else newest
        if newest is None:
            return
        c = decisions.c
        query = (sa.select(c.transaction_id, c.card_id, c.terminal_id, c.event_time, c.amount_cents, c.source_partition)
                 .where(c.event_time > newest - horizon_seconds, c.event_time <= newest)
                 .order_by(c.event_time, c.transaction_id))
        if partitions is not None:
            query = query.where(sa.or_(c.source_partition.in_(list(partitions)), c.source_partition.is_(None)))
        with self.engine.connect() as db:
            for row in db.execute(query):
                yield Transaction(row[0], row[1], row[2], float(row[3]), int(row[4])), -1 if row[5] is None else row[5]

    def where_decided(self, transaction_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        """The terminal and time of these transactions, those decided: where a label's fraud is counted."""
        found: dict[str, tuple[str, float]] = {}
        c = decisions.c
        ids = list(transaction_ids)
        with self.engine.connect() as db:
            for start in range(0, len(ids), 500):
                query = sa.select(c.transaction_id, c.terminal_id, c.event_time).where(
                    c.transaction_id.in_(ids[start:start + 500]))
                found.update((r[0], (r[1], float(r[2]))) for r in db.execute(query))
        return found

    def all_labels(self, since: float = float("-inf")) -> list[Label]:
        with self.engine.connect() as db:
            query = (sa.select(labels).where(labels.c.known_at > since)
                     .order_by(labels.c.known_at, labels.c.transaction_id))
            return [Label(r.transaction_id, bool(r.is_fraud), float(r.known_at), r.source or "chargeback", r.analyst)
                    for r in db.execute(query)]

    def frames(self, since: float, until: float, known_by: float | None = None,
               features: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Decisions on transactions with since < event_time <= until, and the labels of those transactions
        known by `known_by` (default `until`): a time range read through the event-time index, never the whole
        store. `features=False` leaves out the feature values (the widest column) when only scores are needed."""
        columns = decisions.columns if features else [c for c in decisions.columns if c.name != "features"]
        with self.engine.connect() as db:
            made = pd.read_sql(sa.select(*columns).where(*_window(since, until)).order_by(decisions.c.event_time), db)
        return made, self.labels_of_window(since, until, until if known_by is None else known_by)

    def decision_chunks(self, since: float, until: float, rows: int = 100_000) -> Iterator[pd.DataFrame]:
        """The decisions of `frames`, `rows` at a time through a server-side cursor: a caller that reduces each
        chunk (decodes its features) never holds the whole range as Python objects."""
        query = sa.select(decisions).where(*_window(since, until)).order_by(decisions.c.event_time)
        with self.engine.connect().execution_options(stream_results=True) as db:
            yield from pd.read_sql(query, db, chunksize=rows)

    def labels_of_window(self, since: float, until: float, known_by: float) -> pd.DataFrame:
        """Labels known by `known_by` of the transactions with since < event_time <= until."""
        ids = sa.select(decisions.c.transaction_id).where(*_window(since, until))
        with self.engine.connect() as db:
            return pd.read_sql(sa.select(labels).where(labels.c.known_at <= known_by, labels.c.transaction_id.in_(ids)),
                               db)

    def review_cases(self, now: float, expiry_seconds: float, limit: int = 100) -> pd.DataFrame:
        """The open review cases at `now`: transactions sent to review within `expiry_seconds` before it with no
        `review` verdict yet, highest score first (the oldest first among equals), at most `limit`."""
        d = decisions.c
        query = (sa.select(decisions).where(*_open_cases(now, expiry_seconds))
                 .order_by(d.score.desc(), d.event_time, d.transaction_id).limit(limit))
        with self.engine.connect() as db:
            return pd.read_sql(query, db)

    def open_case_count(self, now: float, expiry_seconds: float, transaction_id: str | None = None) -> int:
        """How many review cases are open at `now` (of `transaction_id` alone: 1 if it is an open case, else 0)."""
        query = sa.select(sa.func.count()).select_from(decisions).where(*_open_cases(now, expiry_seconds))
        if transaction_id is not None:
            query = query.where(decisions.c.transaction_id == transaction_id)
        with self.engine.connect() as db:
            return int(db.execute(query).scalar_one())

    def card_history(self, card_id: str, before: float, count: int = 10) -> pd.DataFrame:
        """The card's `count` latest decided transactions before `before`, newest first, with their labels."""
        d = decisions.c
        query = (sa.select(d.transaction_id, d.event_time, d.terminal_id, d.amount_cents, d.score, d.decision)
                 .where(d.card_id == card_id, d.event_time < before).order_by(d.event_time.desc()).limit(count))
        with self.engine.connect() as db:
            history = pd.read_sql(query, db)
            known = pd.read_sql(sa.select(labels.c.transaction_id, labels.c.is_fraud, labels.c.source)
                                .where(labels.c.transaction_id.in_(history["transaction_id"].tolist()))
                                .order_by(labels.c.known_at), db)
        latest = known.drop_duplicates("transaction_id", keep="last").set_index("transaction_id")
        return history.assign(is_fraud=history["transaction_id"].map(latest["is_fraud"]),
                              source=history["transaction_id"].map(latest["source"]))

    def review_log(self, since: float, until: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        """What the review queue saw (streaming/review_queue.py): the transactions sent to review with since <=
        event_time < until (transaction_id, time), and the review verdicts on them (transaction_id, known_at)."""
        d = decisions.c
        with self.engine.connect() as db:
            reviews = pd.read_sql(sa.select(d.transaction_id, d.event_time.label("time")).where(
                d.decision == "review", d.event_time >= since, d.event_time < until), db)
            verdicts = pd.read_sql(sa.select(labels.c.transaction_id, labels.c.known_at).where(
                labels.c.source == "review", labels.c.transaction_id.in_(
                    sa.select(d.transaction_id).where(d.decision == "review", d.event_time >= since,
                                                      d.event_time < until))), db)
        return reviews, verdicts

    def labels_by_source(self, since: float, until: float = float("inf")) -> dict[str, int]:
        """Labels known in [since, until), counted by source (`chargeback` for those stored before sources were)."""
        source = sa.func.coalesce(labels.c.source, "chargeback")
        with self.engine.connect() as db:
            rows = db.execute(sa.select(source, sa.func.count()).where(labels.c.known_at >= since,
                                                                       labels.c.known_at < until).group_by(source))
            return {str(name): int(n) for name, n in rows}

    def prune(self, before: float) -> tuple[int, int]:
        """Delete decisions on transactions older than `before`, and labels that became known before it (retention);
        (decisions, labels). A late label of a deleted transaction stays until it ages out too: the offline store
        files labels by the day they became known, and a day must never lose a row it was exported with."""
        with self.engine.begin() as db:
            gone_labels = db.execute(sa.delete(labels).where(labels.c.known_at < before)).rowcount
            db.execute(sa.delete(shadow_scores).where(shadow_scores.c.event_time < before))
            gone = db.execute(sa.delete(decisions).where(decisions.c.event_time < before)).rowcount
        return gone, gone_labels

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


def _open_cases(now: float, expiry_seconds: float) -> tuple:
    """Sent to review within `expiry_seconds` before `now`, and no `review` verdict yet."""
    d = decisions.c
    verdict = sa.select(labels.c.transaction_id).where(labels.c.transaction_id == d.transaction_id,
                                                       labels.c.source == "review").exists()
    return d.decision == "review", d.event_time > now - expiry_seconds, d.event_time <= now, ~verdict


def _window(since: float, until: float) -> tuple:
    return decisions.c.event_time > since, decisions.c.event_time <= until


def _create_schema(engine: sa.Engine) -> None:
    """Tables, columns and indexes, made by one process at a time: concurrent first users of a fresh store (two
    Airflow tasks, a scorer and a CLI command) would otherwise both create them and one would fail. A file lock
    for SQLite, a transaction-scoped advisory lock for PostgreSQL."""
    path = sqlite_path(str(engine.url))
    with first_use_lock(path) if path else nullcontext(), engine.begin() as db:
        if engine.dialect.name == "postgresql":
            db.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
        metadata.create_all(db)
        _add_missing_columns(db)


SCHEMA_LOCK_KEY = 0x66726175  # any constant the project's stores agree on ("frau")


def _add_missing_columns(db: sa.Connection) -> None:
    """A store made by an earlier version gets the columns added since (nullable ones, so no rewrite)."""
    inspector = sa.inspect(db)
    for table in (decisions, labels):
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                db.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                                   f"{column.type.compile(db.dialect)}")
    for index in decisions.indexes:  # create_all leaves an existing table's new indexes out
        index.create(db, checkfirst=True)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _dialect_insert(dialect: str):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise ValueError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
    return insert
