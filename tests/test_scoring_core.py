"""The scoring core's guarantee: every message ends as exactly one decision (or label) or one dead letter, never
an exception.

On the real core (Scorer, FeatureState, a LightGBM booster, the SQLite store): the hostile messages found when
trying the scorer as a user would, one by one, then arbitrary streams from hypothesis.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import orjson
import pytest
from fraudloop.models.features import FEATURE_NAMES, N_FEATURES, FeatureState
from fraudloop.models.schema import EARLIEST, LATEST, Label, Transaction, format_time, label_record, transaction_record
from fraudloop.models.store import Store
from fraudloop.models.units import DAY
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.event_time import STREAM, EventTimePolicy
from fraudloop.streaming.model import ServingModel
from fraudloop.streaming.scorer import Message, Scorer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = datetime(2018, 6, 1, tzinfo=UTC).timestamp()
NOW = T0 + 100 * DAY  # the wall clock of these tests


@pytest.fixture(scope="module")
def model() -> ServingModel:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, N_FEATURES))
    x[:, 0] *= 1_000
    data = lgb.Dataset(x, label=(x[:, 0] > 800).astype(float), feature_name=list(FEATURE_NAMES))
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1}, data, num_boost_round=10)
    return ServingModel("card-fraud", "1", booster)


def make_scorer(state: FeatureState | None = None, **settings) -> Scorer:
    config = ScorerConfig(**settings)
    return Scorer(config, state or FeatureState(config.allowed_lateness_seconds), Store("sqlite://"))


class Feed:
    """Numbers messages as a partition would."""

    def __init__(self, config: ScorerConfig) -> None:
        self.config, self.offset = config, 0

    def _next(self, topic: str, value: bytes | None) -> Message:
        self.offset += 1
        return Message(topic, 0, self.offset, int(NOW * 1000), value)

    def tx(self, tx: Transaction, **changes) -> Message:
        return self._next(self.config.transactions_topic, orjson.dumps({**transaction_record(tx), **changes}))

    def label(self, label: Label, **changes) -> Message:
        return self._next(self.config.labels_topic, orjson.dumps({**label_record(label), **changes}))

    def raw(self, topic: str, value: bytes | None) -> Message:
        return self._next(topic, value)


def history(n: int = 40, card: str = "C1") -> list[Transaction]:
    return [Transaction(f"H{i}", card, f"M{i % 3}", T0 + i * 3_600, 1_000 + 10 * i) for i in range(n)]


def warmed(model: ServingModel, **settings) -> tuple[Scorer, Feed]:
    scorer = make_scorer(**settings)
    feed = Feed(scorer.config)
    result = scorer.process([feed.tx(tx) for tx in history()], model, now=NOW)
    assert len(result.decisions) == 40 and not result.dead_letters
    return scorer, feed


def single_outcome(result, messages: list[Message]) -> None:
    """Each message is the source of exactly one decision (a label: one label kept) or one dead letter."""
    ends = ([m.offset for m in result.sources] + [m.offset for m in result.label_sources]
            + [d.message.offset for d in result.dead_letters])
    assert sorted(ends) == sorted(m.offset for m in messages)


def test_tombstones_are_dead_lettered_on_either_topic(model):
    scorer, feed = warmed(model)
    batch = [feed.raw(scorer.config.transactions_topic, None), feed.raw(scorer.config.labels_topic, None)]
    result = scorer.process(batch, model, now=NOW)
    assert [(d.message.topic, d.kind) for d in result.dead_letters] == [
        (scorer.config.transactions_topic, "invalid"), (scorer.config.labels_topic, "invalid")]
    assert "tombstone" in result.dead_letters[0].reason


def test_a_transaction_beyond_the_allowed_lateness_is_dead_lettered_late_and_one_within_is_scored(model):
    scorer, feed = warmed(model)
    watermark = scorer.state.watermark
    old = Transaction("OLD", "C1", "M0", watermark - 44 * DAY, 5_000)  # crashed the feature code before
    within = Transaction("WITHIN", "C1", "M0", watermark - 0.5 * DAY, 5_000)
    batch = [feed.tx(old), feed.tx(within)]
    result = scorer.process(batch, model, now=NOW)
    single_outcome(result, batch)
    assert [d["transaction_id"] for d in result.decisions] == ["WITHIN"]
    assert result.dead_letters[0].kind == "late" and "3801600 s behind its partition" in result.dead_letters[0].reason
    assert scorer.state.watermark == watermark and "OLD" not in scorer.state.seen
    # within the lateness the features are exact: as if it had come in order
    reference = FeatureState()
    for tx in sorted([*history(), within], key=lambda t: t.time):
        row = reference.transform(tx)
    assert result.rows[0].features == reference.transform(within) != row


@pytest.mark.parametrize("clock", ["wall", STREAM])
def test_a_transaction_far_ahead_is_dead_lettered_future_never_stored_and_moves_nothing(model, clock):
    scorer, feed = warmed(model, event_clock=clock, max_ahead_seconds=3_600.0)
    watermark = scorer.state.watermark
    ahead = Transaction("AHEAD", "C1", "M0", NOW + 30 * 365 * DAY, 5_000)  # the schema accepts up to 2100
    nxt = Transaction("NEXT", "C1", "M1", watermark + 60, 2_000)
    batch = [feed.tx(ahead), feed.tx(nxt)]
    result = scorer.process(batch, model, now=NOW)
    single_outcome(result, batch)
    assert [d.kind for d in result.dead_letters] == ["future"] and "AHEAD" not in scorer.state.seen
    assert [d["transaction_id"] for d in result.decisions] == ["NEXT"] and scorer.state.watermark == nxt.time
    assert scorer.store.decisions_for(["AHEAD"]) == {}
    later = Transaction("LATER", "C1", "M1", nxt.time + 60, 2_000)  # every later one is still scored
    assert [d["transaction_id"] for d in scorer.process([feed.tx(later)], model, now=NOW).decisions] == ["LATER"]


def test_the_stream_clock_judges_skew_against_the_watermark_and_the_wall_clock_against_now():
    wall, stream = EventTimePolicy(max_ahead=60), EventTimePolicy(max_ahead=60, clock=STREAM)
    assert wall.transaction(T0, T0 - 1_000, watermark=T0 - 1_000, now=T0) is None
    assert wall.transaction(T0 + 61, T0 + 1_000, watermark=T0 + 1_000, now=T0).startswith("future")
    assert stream.transaction(T0 + 1_000, -math.inf, watermark=-math.inf, now=0) is None  # the first sets the clock
    assert stream.transaction(T0 + 61, T0, watermark=T0, now=0).startswith("future")
    assert stream.transaction(T0 + 60, T0, watermark=T0, now=0) is None
    assert stream.label(T0 + 61, watermark=T0, now=0).startswith("future")
    assert stream.label(T0 - 365 * DAY, watermark=T0, now=0) is None  # labels are late by nature
    with pytest.raises(ValueError, match="event_clock"):
        EventTimePolicy(clock="sundial")


def test_a_redelivered_transaction_gets_the_decision_already_made_and_other_content_is_a_conflict(model):
    scorer, feed = warmed(model)
    tx = Transaction("DUP", "C1", "M0", scorer.state.watermark + 60, 1_000)
    first = scorer.process([feed.tx(tx)], model, now=NOW).decisions[0]
    again = feed.tx(tx)
    other = feed.tx(Transaction("DUP", "C1", "M0", tx.time, 499_999))  # 10.00 then 4,999.99
    result = scorer.process([again, other], model, now=NOW + 5)
    single_outcome(result, [again, other])
    (replayed,) = result.decisions
    assert {k: replayed[k] for k in ("decision", "score", "model_version", "reasons", "decided_at")} == {
        k: first[k] for k in ("decision", "score", "model_version", "reasons", "decided_at")}
    assert result.replayed == 1 and result.rows == []
    assert [d.kind for d in result.dead_letters] == ["conflicting duplicate"]
    assert "the first decision stands" in result.dead_letters[0].reason
    stored = scorer.store.decisions_for(["DUP"])["DUP"]
    assert stored.tx == tx and stored.decision == first["decision"] and stored.decided_at == first["decided_at"]


def test_lateness_is_disorder_within_a_partition_not_a_partition_read_behind_the_others(model):
    """kafka-python drains a backlog one partition after another: a partition read days behind is on time,
    exact, and the state keeps what it needs; disorder within a partition beyond the lateness is late."""
    scorer = make_scorer(partition_skew_seconds=20 * DAY)
    feed = Feed(scorer.config)
    ahead = [Transaction(f"A{i}", "CA", "M0", T0 + 35 * DAY + i * 3_600, 1_000) for i in range(24)]
    behind = history(40, card="CB")  # 35 days older, from another partition
    batch = [feed.tx(tx) for tx in ahead]
    assert len(scorer.process(batch, model, now=NOW, partitions=[0, 1]).decisions) == 24
    on_other = [Message(m.topic, 1, m.offset, m.timestamp_ms, m.value) for m in (feed.tx(tx) for tx in behind[:20])]
    assert len(scorer.process(on_other, model, now=NOW, partitions=[0, 1]).decisions) == 0  # 35 days > the skew
    scorer.config = ScorerConfig(partition_skew_seconds=40 * DAY)
    scorer.policy = scorer.config.event_time_policy()
    on_other = [Message(m.topic, 1, m.offset, m.timestamp_ms, m.value) for m in (feed.tx(tx) for tx in behind)]
    result = scorer.process(on_other, model, now=NOW, partitions=[0, 1])
    assert len(result.decisions) == 40 and not result.dead_letters
    reference = FeatureState()
    expected = [reference.transform(tx) for tx in behind]
    assert [list(row.features) for row in result.rows] == expected  # exact: nothing it needs was forgotten
    disorder = Message(scorer.config.transactions_topic, 1, 999, 0,
                       orjson.dumps(transaction_record(Transaction("X", "CB", "M0", behind[-1].time - 2 * DAY, 10))))
    assert [d.kind for d in scorer.process([disorder], model, now=NOW).dead_letters] == ["late"]


def test_copies_of_a_transaction_within_one_batch_get_one_decision(model):
    scorer, feed = warmed(model)
    tx = Transaction("TWICE", "C1", "M0", scorer.state.watermark + 60, 1_000)
    batch = [feed.tx(tx), feed.tx(tx), feed.tx(Transaction("TWICE", "C9", "M0", tx.time, 1_000))]
    result = scorer.process(batch, model, now=NOW)
    single_outcome(result, batch)
    assert len(result.decisions) == 2 and result.decisions[0]["score"] == result.decisions[1]["score"]
    assert len(result.rows) == 1 and [d.kind for d in result.dead_letters] == ["conflicting duplicate"]
    assert scorer.state.cards["C1"].times.count(tx.time) == 1


def test_a_duplicate_the_state_forgot_is_caught_by_the_store(model):
    """Decided by another instance, or longer ago than the state remembers: the store's decision stands."""
    scorer, feed = warmed(model)
    tx = Transaction("ELSEWHERE", "C1", "M0", scorer.state.watermark + 60, 1_000)
    other = make_scorer()
    other.store = scorer.store
    made = other.process([Feed(other.config).tx(tx)], model, now=NOW - 50).decisions[0]
    result = scorer.process([feed.tx(tx)], model, now=NOW)
    assert result.decisions[0]["decided_at"] == made["decided_at"] and result.replayed == 1 and not result.rows
    conflicting = Transaction("ELSEWHERE2", "C1", "M0", tx.time + 1, 1_000)
    other.process([Feed(other.config).tx(conflicting)], model, now=NOW - 50)
    result = scorer.process([feed.tx(Transaction("ELSEWHERE2", "C1", "M0", tx.time + 1, 7_700))], model, now=NOW)
    assert not result.decisions and [d.kind for d in result.dead_letters] == ["conflicting duplicate"]


def test_labels_for_unknown_transactions_are_kept_and_counted_and_bad_labels_dead_lettered(model):
    scorer, feed = warmed(model)
    batch = [feed.label(Label("NOT-YET", True, NOW - DAY)), feed.label(Label("H3", True, NOW - DAY)),
             feed.label(Label("H4", True, NOW - DAY), is_fraud="true")]
    result = scorer.process(batch, model, now=NOW)
    single_outcome(result, batch)
    assert result.unknown_labels == 1 and [lb.transaction_id for lb in result.labels] == ["NOT-YET", "H3"]
    assert [(d.message.topic, d.kind) for d in result.dead_letters] == [(scorer.config.labels_topic, "invalid")]
    assert scorer.config.dead_letter_topic_for(scorer.config.labels_topic) == scorer.config.labels_dead_letter_topic
    assert {lb.transaction_id for lb in scorer.store.all_labels()} == {"NOT-YET", "H3"}


def test_an_unexpected_error_on_one_transaction_dead_letters_it_alone(model):
    class Fragile(FeatureState):
        def transform(self, tx: Transaction, partition: int = -1) -> list[float]:
            if tx.card_id == "BOOM":
                raise KeyError("a bug in the feature code")
            return super().transform(tx, partition)

    scorer = make_scorer(Fragile())
    feed = Feed(scorer.config)
    batch = [feed.tx(Transaction("A", "C1", "M0", T0, 100)), feed.tx(Transaction("B", "BOOM", "M0", T0 + 1, 100)),
             feed.tx(Transaction("C", "C2", "M0", T0 + 2, 100))]
    result = scorer.process(batch, model, now=NOW)
    single_outcome(result, batch)
    assert [d["transaction_id"] for d in result.decisions] == ["A", "C"]
    assert [d.reason for d in result.dead_letters] == ["internal: KeyError: 'a bug in the feature code'"]


def test_a_row_the_model_cannot_score_is_dead_lettered_alone(model):
    class Picky(ServingModel):
        def predict(self, features: np.ndarray) -> np.ndarray:
            scores = super().predict(features)
            return np.where(features[:, 0] == 66.6, np.nan, scores)  # one row gives no probability

    picky = Picky(model.name, model.version, model.booster)
    scorer = make_scorer()
    feed = Feed(scorer.config)
    batch = [feed.tx(Transaction(f"R{i}", f"C{i}", "M0", T0 + i, 6_660 if i == 1 else 100)) for i in range(3)]
    result = scorer.process(batch, picky, now=NOW)
    single_outcome(result, batch)
    assert [d["transaction_id"] for d in result.decisions] == ["R0", "R2"]
    assert result.dead_letters[0].reason.startswith("internal: ValueError: the model gave nan")


# -- arbitrary streams -------------------------------------------------------------------------------
IDS = [f"T{i}" for i in range(12)]
times = st.one_of(
    st.integers(int(T0 - 60 * DAY), int(T0 + 60 * DAY)),  # mostly near each other: late, on time and ahead
    st.integers(int(EARLIEST), int(LATEST) - 1),  # anywhere the schema accepts
).map(float)
transactions = st.builds(Transaction, st.sampled_from(IDS), st.sampled_from(["C1", "C2", "C3"]),
                         st.sampled_from(["M1", "M2"]), times, st.integers(0, 100_000_000))
labels = st.builds(Label, st.sampled_from([*IDS, "UNSEEN"]), st.booleans(), times)
hostile = st.one_of(st.none(), st.binary(max_size=40), st.just(b"{}"), st.just(b'{"schema_version": 1}'))
messages = st.one_of(
    transactions.map(lambda tx: ("tx", orjson.dumps(transaction_record(tx)))),
    transactions.map(lambda tx: ("tx", orjson.dumps({**transaction_record(tx), "timestamp": format_time(tx.time)}))),
    labels.map(lambda lb: ("label", orjson.dumps(label_record(lb)))),
    hostile.map(lambda value: ("tx", value)),
    hostile.map(lambda value: ("label", value)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(st.lists(messages, max_size=12), min_size=1, max_size=5),
       clock=st.sampled_from(["wall", STREAM]), lateness=st.sampled_from([0.0, DAY, 10 * DAY]))
def test_every_message_ends_as_exactly_one_decision_or_one_dead_letter(model, batches, clock, lateness):
    scorer = make_scorer(event_clock=clock, allowed_lateness_seconds=lateness, max_ahead_seconds=DAY)
    offset = 0
    decided: dict[str, dict] = {}
    for batch in batches:
        sent = []
        for kind, value in batch:
            offset += 1
            topic = scorer.config.transactions_topic if kind == "tx" else scorer.config.labels_topic
            sent.append(Message(topic, offset % 3, offset, int(NOW * 1000), value))
        result = scorer.process(sent, model, now=NOW)  # never raises
        single_outcome(result, sent)
        assert all(d.kind in ("invalid", "late", "future", "conflicting duplicate") for d in result.dead_letters), \
            [d.reason for d in result.dead_letters]
        for decision in result.decisions:  # one decision per transaction id, whenever it comes again
            first = decided.setdefault(decision["transaction_id"], decision)
            assert (decision["decision"], decision["score"], decision["decided_at"]) == (
                first["decision"], first["score"], first["decided_at"])
    stored = scorer.store.decisions_for(list(decided))
    assert set(stored) == set(decided)  # the decisions topic and the store agree
    for tx_id, decision in decided.items():
        assert (stored[tx_id].decision, stored[tx_id].decided_at) == (decision["decision"], decision["decided_at"])


def test_exploration_approves_a_share_of_the_models_blocks_and_every_decision_carries_its_probability(model):
    """Scores high enough to decline (amount feature > 800 in this model) are approved at the configured share, by
    the transaction id's draw, rule `exploration`; the probabilities reach the messages and the store, and a
    redelivery gets the same decision with the same probability."""
    scorer, feed = warmed(model, exploration_share=0.5, exploration_max_amount=10_000.0, review_threshold=0.5,
                          decline_threshold=0.5)
    txs = [Transaction(f"X{i}", f"K{i}", "M1", T0 + 50 * 3_600 + i, 95_000) for i in range(200)]
    result = scorer.process([feed.tx(tx) for tx in txs], model, now=NOW)
    by_id = {d["transaction_id"]: d for d in result.decisions}
    explored = [d for d in by_id.values() if d["rule"] == "exploration"]
    declined = [d for d in by_id.values() if d["decision"] == "decline"]
    assert len(explored) + len(declined) == 200 and 70 < len(explored) < 130
    assert all(d["decision"] == "approve" and d["propensity"] == 0.5 for d in explored)
    assert all(d["propensity"] == 0.5 for d in declined)
    from fraudloop.streaming.decide import draw

    assert {d["transaction_id"] for d in explored} == {tx.transaction_id for tx in txs if draw(tx.transaction_id) < 0.5}
    stored = scorer.store.decisions_for([explored[0]["transaction_id"]])[explored[0]["transaction_id"]]
    assert (stored.decision, stored.rule, stored.propensity) == ("approve", "exploration", 0.5)
    again = scorer.process([feed.tx(txs[0])], model, now=NOW).decisions[0]
    assert (again["decision"], again["propensity"]) == (by_id["X0"]["decision"], by_id["X0"]["propensity"])
    # off by default: every decision certain
    plain, plain_feed = warmed(model)
    assert {d["propensity"] for d in plain.process([plain_feed.tx(tx) for tx in txs[:20]], model,
                                                   now=NOW).decisions} == {1.0}
