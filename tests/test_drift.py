import numpy as np
import pandas as pd
import pytest
from fraudloop.models.features import compute_features
from fraudloop.models.units import DAY
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining.drift import (
    bin_shares,
    calibrate,
    feature_drift,
    jensen_shannon,
    ks,
    min_window,
    psi,
)

rng = np.random.default_rng(0)


def test_same_distribution_does_not_drift():
    a, b = rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000)
    assert psi(a, b) < 0.01 and jensen_shannon(a, b) < 0.02 and ks(a, b) < 0.03


def test_a_shift_drifts_and_grows_with_its_size():
    base = rng.normal(0, 1, 20_000)
    small, large = psi(base, rng.normal(0.2, 1, 20_000)), psi(base, rng.normal(1.0, 1, 20_000))
    assert 0.02 < small < 0.1 < 0.25 < large
    assert jensen_shannon(base, rng.normal(1.0, 1, 20_000)) > 0.1


def test_a_tie_block_on_a_bin_edge_is_not_split_by_last_digit_noise():
    # 15 % of scores share one value, which is also the reference's first decile edge; the scorer's compiled
    # model reproduces it only to the last digits.
    reference = np.r_[np.full(1_500, 0.0011792506565179524), rng.uniform(0.002, 1, 8_500)]
    assert np.quantile(reference, 0.1) == reference[0]  # the block straddles the first edge
    noisy = reference * (1 + rng.uniform(1e-13, 1e-12, len(reference)))
    assert psi(reference, noisy) < 1e-3
    assert psi(reference, np.r_[reference[1_500:], rng.uniform(0.002, 1, 1_500)]) > 0.1  # the block gone: drift


def test_missing_values_have_a_bin_of_their_own():
    reference = np.r_[rng.normal(0, 1, 9_000), np.full(1_000, np.nan)]
    expected, actual = bin_shares(reference, np.full(500, np.nan))
    assert expected[-1] == pytest.approx(0.1) and actual[-1] == 1.0
    assert psi(reference, np.full(500, np.nan)) > 1


def test_constant_features_do_not_break_the_statistics():
    assert psi(np.zeros(100), np.zeros(100)) == pytest.approx(0.0)
    assert psi(np.zeros(100), np.ones(100)) > 1


def test_the_simulators_drift_is_flagged_and_its_absence_is_not():
    from fraudloop.pipelines.retraining.monitor import MONITORED

    config = SimulationConfig(customers=400, terminals=800, days=75, seed=5, drift_day=60)
    history = simulate(config, progress=False)
    features = compute_features(history, labels_of(history))[list(MONITORED)]
    day = ((history["time"] - config.start_epoch) // DAY).to_numpy()
    reference, before, after = (features[m] for m in ((day >= 38) & (day < 52), (day >= 52) & (day < 59),
                                                      (day >= 61) & (day < 68)))
    cards = history["card_id"].to_numpy()[(day >= 38) & (day < 52)]
    thresholds = calibrate(reference, cards, len(before), score_column=None)
    calm, drifted = feature_drift(reference, before, thresholds.feature_psi), feature_drift(reference, after,
                                                                                       thresholds.feature_psi)
    assert calm["psi"].mean() < thresholds.mean_psi < drifted["psi"].mean()
    flagged = set(drifted.loc[drifted["drifted"], "feature"])
    assert "amount" in flagged  # genuine spending shifted by 1.3
    assert list(drifted.columns) == ["feature", "psi", "psi_threshold", "jensen_shannon", "ks", "drifted"]


def test_calibrated_thresholds_hold_their_false_alarm_rate_and_shrink_with_the_window():
    rng = np.random.default_rng(8)
    cards = rng.integers(0, 3_000, 20_000)
    card_effect = rng.normal(0, 1, (3_000, 4))  # a card's transactions resemble each other

    def traffic(n: int, shift: float = 0.0) -> pd.DataFrame:
        who = rng.integers(0, 3_000, n)
        return pd.DataFrame(rng.normal(shift, 1, (n, 4)) + card_effect[who], columns=list("abcd"))

    reference = pd.DataFrame(rng.normal(0, 1, (20_000, 4)) + card_effect[cards], columns=list("abcd"))
    small, large = (calibrate(reference, cards, n, false_alarm_rate=0.05, score_column=None) for n in (300, 3_000))
    assert large.mean_psi < small.mean_psi / 3  # PSI's noise shrinks as the window grows

    def mean_psi(window: pd.DataFrame) -> float:
        return float(np.mean([psi(reference[c].to_numpy(), window[c].to_numpy()) for c in reference]))

    alarms = np.mean([mean_psi(traffic(300)) > small.mean_psi for _ in range(200)])
    assert alarms <= 0.10  # stated 5 %; allows for the 200 trials' own noise
    assert np.mean([mean_psi(traffic(3_000, shift=0.3)) > large.mean_psi for _ in range(20)]) == 1.0

    needed = min_window(reference, cards, detectable_psi=0.05, false_alarm_rate=0.05)
    assert calibrate(reference, cards, needed, 0.05, score_column=None).mean_psi <= 0.05 * 1.15
    assert calibrate(reference, cards, needed // 2, 0.05, score_column=None).mean_psi > 0.05


def _traffic(n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    from fraudloop.models.features import FEATURE_NAMES

    values = np.random.default_rng(seed).normal(shift, 1, (n, len(FEATURE_NAMES)))
    return pd.DataFrame(values, columns=list(FEATURE_NAMES))


def test_the_monitor_verdict_combines_data_score_and_performance_signals():
    from fraudloop.pipelines.retraining.monitor import assess

    rng = np.random.default_rng(3)
    reference = _traffic(5_000).assign(score=rng.beta(1, 20, 5_000), card_id=rng.integers(0, 1_000, 5_000))
    labelled_well = pd.DataFrame({"score": np.r_[rng.uniform(0.5, 1, 30), rng.uniform(0, 0.5, 970)],
                                  "is_fraud": np.r_[np.ones(30, bool), np.zeros(970, bool)]})
    calm = assess(reference, _traffic(2_000, seed=1), rng.beta(1, 20, 2_000), labelled_well, 0.8, 0.0, "1")
    assert not calm.retrain and calm.summary.startswith("stable") and calm.rows >= calm.min_rows

    moved = assess(reference, _traffic(2_000, shift=1.0, seed=2), rng.beta(1, 20, 2_000), labelled_well, 0.8, 0.0, "1")
    assert moved.data_drift and moved.retrain and moved.signal and not moved.score_drift

    scores_up = assess(reference, _traffic(2_000, seed=4), rng.beta(5, 5, 2_000), labelled_well, 0.8, 0.0, "1")
    assert scores_up.score_drift and not scores_up.data_drift

    labelled_badly = labelled_well.assign(score=rng.uniform(0, 1, 1_000))
    decayed = assess(reference, _traffic(2_000, seed=5), rng.beta(1, 20, 2_000), labelled_badly, 0.8, 0.0, "1")
    assert decayed.performance_decay and decayed.retrain and decayed.recent_average_precision < 0.2

    few = assess(reference, _traffic(40, shift=3.0, seed=6), rng.beta(5, 5, 40), labelled_well.head(5), 0.8, 0.0, "1")
    assert not few.retrain and few.recent_average_precision is None  # too little to judge, not an alarm
    assert "too few to judge drift" in few.summary


def test_a_drift_episode_signals_one_retrain_per_cooldown():
    from fraudloop.models.units import DAY as D
    from fraudloop.pipelines.retraining.monitor import MonitorConfig, assess

    rng = np.random.default_rng(4)
    reference = _traffic(5_000).assign(score=rng.beta(1, 20, 5_000), card_id=rng.integers(0, 1_000, 5_000))
    labelled = pd.DataFrame({"score": rng.uniform(0, 1, 100), "is_fraud": np.zeros(100, bool)})

    def check(hours_after_signal: float):
        return assess(reference, _traffic(2_000, shift=1.0, seed=7), rng.beta(1, 20, 2_000), labelled, 0.8,
                      10 * D + hours_after_signal * 3_600, "1", MonitorConfig(cooldown_days=1.0), last_signal=10 * D)

    within = check(5)
    assert within.retrain and not within.signal and "already signalled" in within.summary
    assert check(24).signal  # the episode lasts a day past its signal: the next retrain may run
