"""The retraining benchmark's machinery on a small world: the same code as the recorded run, fewer seeds."""

from fraudloop.pipelines.benchmarks.retraining import Scenario, run, to_markdown

SMALL = Scenario(customers=600, terminals=1_200, num_boost_round=120, weak_rounds=10)


def test_the_benchmark_runs_the_gates_and_the_monitor_on_a_small_world():
    result = run(seeds=1, drift_seeds=1, check_hours=12, scenario=SMALL, progress=False)
    trial = result.trials[0]
    assert trial["null_status"] != "passed" and trial["drift_status"] == "passed"  # the two easy cases
    assert trial["drift_difference"]["low"] > 0.3 and trial["recovered_share"] > 0.8
    assert result.false_alarms == 0 and result.detection_delay_days <= 1.0
    stable = [c for c in result.checks if c["day"] <= SMALL.drift_day]
    assert len(stable) == 2 * (SMALL.drift_day - SMALL.champion_day) + 1  # every 12 h, both ends included
    assert "| challenger no better than the champion" in to_markdown(result, "test")
