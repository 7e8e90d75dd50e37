"""The streaming benchmark's reading of its latency curve (pure: the runs themselves need the broker)."""

from __future__ import annotations

import pytest
from fraudloop.pipelines.benchmarks.streaming import slo_rate, spread


def test_slo_rate_interpolates_the_crossing():
    # p99 under 50 ms up to 2,000 msg/s, 90 ms at 3,000: the crossing is a quarter of the way (40 ms to go of 40)
    points = [(1_000, 10.0), (3_000, 90.0), (2_000, 40.0)]
    assert slo_rate(points) == pytest.approx(2_000 + 1_000 * (50 - 40) / (90 - 40))


def test_slo_rate_is_the_highest_rate_under_the_slo():
    # a stall at 2,000 does not hide that 3,000 met the SLO; the crossing is between 3,000 and 4,000
    assert slo_rate([(1_000, 10.0), (2_000, 70.0), (3_000, 30.0), (4_000, 70.0)]) == pytest.approx(3_500)


def test_slo_rate_at_the_edges_of_the_grid():
    assert slo_rate([(1_000, 60.0), (2_000, 80.0)]) == 0.0  # missed at every rate
    assert slo_rate([(1_000, 5.0), (2_000, 8.0)]) == 2_000  # met everywhere: the highest rate, a lower bound
    assert slo_rate([(1_000, 30.0), (2_000, 50.0)]) == 2_000  # the rate where p99 reaches the SLO
    assert slo_rate([]) == 0.0


def test_spread_is_the_median_and_the_range():
    assert spread([3.0, 1.0, 2.0, 10.0, 4.0], "x") == {"x_median": 3.0, "x_range": [1.0, 10.0]}
