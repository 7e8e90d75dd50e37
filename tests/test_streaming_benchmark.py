"""The streaming and overload benchmarks' pure parts: load schedules and the reading of latencies (the runs
themselves need the broker)."""

from __future__ import annotations

import numpy as np
import pytest
from fraudloop.pipelines.benchmarks.overload import phases, recovery_seconds, schedule
from fraudloop.pipelines.benchmarks.streaming import Run, due, slo_rate, spread, steady


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


def test_a_schedule_sends_each_segment_evenly_and_a_zero_second_segment_at_once():
    schedule = [(100, 10.0), (300, 0.0), (50, 5.0)]  # 10 a second, 300 at once, 10 a second
    assert [due(t, schedule) for t in (0.0, 0.05, 0.1, 9.95)] == [1, 1, 2, 100]
    assert due(10.0, schedule) == 401  # the surge and the first of the calm after it
    assert due(14.99, schedule) == 450 and due(60.0, schedule) == 450
    assert due(3.0, steady(100, 10.0)) == 31


def test_the_overload_schedules_and_phases_by_send_order():
    burst = schedule("burst", 500.0, 30.0, (10.0, 20.0))
    assert burst == [(2_500, 10.0), (30_000, 30.0), (5_000, 20.0)]
    assert schedule("surge", 500.0, 30.0, (10.0, 20.0))[1] == (30_000, 0.0)
    # sent out of order by a few ms: the ranks, not the arrival order, give the phases
    run = Run("scorer", 6, 1.0, np.zeros(6), np.array([5.0, 1.0, 2.0, 3.0, 4.0, 6.0]))
    assert phases(run, [(2, 1.0), (3, 0.0), (1, 1.0)]).tolist() == [1, 0, 0, 1, 1, 2]


def test_recovery_is_the_first_second_from_which_the_rest_of_the_run_meets_the_slo():
    sent = np.arange(0, 20_000, 10.0)  # 20 s of send times after the burst's end at 0, 100 messages a second
    latencies = np.full(len(sent), 5.0)
    assert recovery_seconds(sent, latencies, 0.0) == 0.0
    latencies[sent < 3_000] = 900.0  # a queue for 3 s
    assert recovery_seconds(sent, latencies, 0.0) == 3.0
    latencies[(sent >= 10_000) & (sent < 10_050)] = 400.0  # then one stall of 5 messages in 1,700: within the p99
    assert recovery_seconds(sent, latencies, 0.0) == 3.0
    latencies[sent >= 14_000] = 80.0  # slow again until the end: not recovered before the last 5 s
    assert recovery_seconds(sent, latencies, 0.0) is None
