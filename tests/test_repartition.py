"""The repartition step's pure part (re-keying and ordering a poll) and the settings that guard it."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.repartition import ORIGINAL_KEY, card_of, rekeyed


def record(key: bytes | None, value: bytes | None, partition: int = 0, timestamp: int = 1_000) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, headers=[("trace", b"t")], partition=partition, timestamp=timestamp)


def tx(card: str, time: float) -> bytes:
    return orjson.dumps({"transaction_id": f"{card}-{time}", "card_id": card, "time": time, "amount": 1.0})


def test_a_poll_is_keyed_by_card_in_event_time_order_with_the_producer_s_key_kept():
    polled = [record(b"account-7", tx("c1", 30.0), 0), record(None, tx("c2", 10.0), 1),
              record(b"c3", tx("c3", 20.0), 2), record(b"x", b"not json", 1), record(None, None, 2)]
    out = rekeyed(polled)
    # unreadable messages first (time 0), as read; then the transactions by event time
    assert [key for key, *_ in out] == [b"x", None, b"c2", b"c3", b"c1"]
    by_key = {key: headers for key, _, headers, _ in out}
    assert by_key[b"c1"] == [("trace", b"t"), (ORIGINAL_KEY, b"account-7")]
    assert by_key[b"c2"] == [("trace", b"t"), (ORIGINAL_KEY, b"")]
    assert by_key[b"c3"] == [("trace", b"t")]  # already keyed by its card: unchanged
    assert all(timestamp == 1_000 for *_, timestamp in out)
    assert [value for _, value, _, _ in out][2] == tx("c2", 10.0)  # values as they came


def test_card_of_reads_only_what_it_needs():
    assert card_of(tx("c9", 5.5)) == (b"c9", 5.5)
    assert card_of(orjson.dumps({"card_id": "", "time": 1})) == (None, 0.0)
    assert card_of(b"{") == (None, 0.0) and card_of(None) == (None, 0.0)
    assert card_of(orjson.dumps({"card_id": 12})) == (None, 0.0)  # not a card id: the scorer says why


def test_repartition_from_cannot_be_a_topic_the_scorer_reads_or_writes():
    assert ScorerConfig(repartition_from="bank-transactions").repartition_from == "bank-transactions"
    for topic in ("transactions", "decisions", "labels"):
        with pytest.raises(ValueError, match="repartition_from"):
            ScorerConfig.load(repartition_from=topic)


def test_the_producer_codec_is_one_kafka_defines():
    assert ScorerConfig().compression_type() == "zstd"
    assert ScorerConfig(producer_codec="none").compression_type() is None
    with pytest.raises(ValueError, match="producer_codec"):
        ScorerConfig.load(producer_codec="brotli")
