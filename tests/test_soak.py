"""A short soak in CI: the scorer killed, the broker restarted and poison sent while a stream flows; nothing
acknowledged by the broker it restarted into may go without a decision."""

from __future__ import annotations

import pytest
from fraudloop.pipelines.benchmarks import soak

pytestmark = pytest.mark.integration


def test_a_one_minute_soak_loses_nothing_and_never_stops_the_scorer(tmp_path):
    result = soak.run(minutes=1.0, rate=100.0, seed=3, work=tmp_path / "soak", say=lambda _: None)
    assert result.scorer_kills >= 1 and result.broker_restarts >= 1 and result.poison_bursts >= 1, result
    assert result.missing == 0 and result.conflicting_duplicates == 0, result
    assert result.codec_switches >= 3, result  # the producer went through several codecs
    assert result.transactions > 3_000 and result.decided + result.lost_transactions + result.lost_decisions \
        == result.transactions, result
    # every kind of hostile message ended in a dead-letter topic
    assert {"invalid", "late", "future", "conflicting duplicate"} <= set(result.dead_letters), result.dead_letters
    assert result.rss_end_mb > 0 and result.rss_start_mb > 0
