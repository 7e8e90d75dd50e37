"""The retraining benchmark's machinery on a small world: the same code as the recorded run, fewer seeds."""

from fraudloop.pipelines.benchmarks.retraining import Scenario, run, to_markdown
from fraudloop.pipelines.data.outcomes import IssuerConfig

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


def test_the_closed_loop_measures_the_after_drift_challenger_on_the_labels_an_issuer_receives():
    result = run(seeds=1, drift_seeds=1, check_hours=24, scenario=SMALL, progress=False, closed_loop=IssuerConfig())
    open_, closed = result.trials[0], result.closed_loop["trials"][0]
    assert closed["null_status"] == open_["null_status"]  # shared: the worlds agree before the champion's day
    # the same champion; from its day the terminal-risk features see only the frauds that came back
    assert 0.5 < closed["ap_before_drift"] <= open_["ap_before_drift"] + 0.02
    assert set(open_["retrained_frauds_by_source"]) == {"simulation"}
    learnt = closed["retrained_frauds_by_source"]
    assert learnt.get("review", 0) > 0 and learnt.get("chargeback", 0) > 0 and "simulation" not in learnt
    # the oracle labels every fraud; the loop, only what its decisions let back
    assert sum(learnt.values()) < sum(open_["retrained_frauds_by_source"].values())
    assert set(result.closed_loop) >= {"true_promotion_rate", "recovered_share", "false_alarms", "issuer"}
    assert "| after-drift challenger promoted" in to_markdown(result, "test")
