import numpy as np
import pandas as pd
import pytest

from models.features import compute_features
from pipelines.drift import DriftThresholds, bin_shares, data_drifted, feature_drift, jensen_shannon, ks, psi
from pipelines.simulate import DAY, SimulationConfig, labels_of, simulate

rng = np.random.default_rng(0)


def test_same_distribution_does_not_drift():
    a, b = rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000)
    assert psi(a, b) < 0.01 and jensen_shannon(a, b) < 0.02 and ks(a, b) < 0.03


def test_a_shift_drifts_and_grows_with_its_size():
    base = rng.normal(0, 1, 20_000)
    small, large = psi(base, rng.normal(0.2, 1, 20_000)), psi(base, rng.normal(1.0, 1, 20_000))
    assert 0.02 < small < 0.1 < 0.25 < large
    assert jensen_shannon(base, rng.normal(1.0, 1, 20_000)) > 0.1


def test_missing_values_have_a_bin_of_their_own():
    reference = np.r_[rng.normal(0, 1, 9_000), np.full(1_000, np.nan)]
    expected, actual = bin_shares(reference, np.full(500, np.nan))
    assert expected[-1] == pytest.approx(0.1) and actual[-1] == 1.0
    assert psi(reference, np.full(500, np.nan)) > 1


def test_constant_features_do_not_break_the_statistics():
    assert psi(np.zeros(100), np.zeros(100)) == pytest.approx(0.0)
    assert psi(np.zeros(100), np.ones(100)) > 1


def test_the_simulators_drift_is_flagged_and_its_absence_is_not():
    config = SimulationConfig(customers=400, terminals=800, days=75, seed=5, drift_day=60)
    history = simulate(config, progress=False)
    features = compute_features(history, labels_of(history))
    day = (history["time"] - config.start_epoch) // DAY
    reference, before, after = (features[m] for m in ((day >= 38) & (day < 52), (day >= 52) & (day < 59),
                                                      (day >= 61) & (day < 68)))
    calm, drifted = feature_drift(reference, before), feature_drift(reference, after)
    assert not data_drifted(calm) and data_drifted(drifted, DriftThresholds(share_of_features=0.2))
    flagged = set(drifted.loc[drifted["drifted"], "feature"])
    assert {"amount", "card_mean_amount_7d"} <= flagged  # genuine spending shifted by 1.3
    assert calm["psi"].max() < drifted["psi"].max()
    assert isinstance(drifted, pd.DataFrame) and list(drifted.columns) == ["feature", "psi", "jensen_shannon", "ks",
                                                                           "drifted"]


def _traffic(n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    from models.features import FEATURE_NAMES

    values = np.random.default_rng(seed).normal(shift, 1, (n, len(FEATURE_NAMES)))
    return pd.DataFrame(values, columns=list(FEATURE_NAMES))


def test_the_monitor_verdict_combines_data_score_and_performance_signals():
    from pipelines.monitor import MonitorConfig, assess

    rng = np.random.default_rng(3)
    reference = _traffic(5_000).assign(score=rng.beta(1, 20, 5_000))
    labelled_well = pd.DataFrame({"score": np.r_[rng.uniform(0.5, 1, 30), rng.uniform(0, 0.5, 970)],
                                  "is_fraud": np.r_[np.ones(30, bool), np.zeros(970, bool)]})
    calm = assess(reference, _traffic(2_000, seed=1), rng.beta(1, 20, 2_000), labelled_well, 0.8, 0.0, "1")
    assert not calm.retrain and calm.summary.startswith("stable")

    moved = assess(reference, _traffic(2_000, shift=1.0, seed=2), rng.beta(1, 20, 2_000), labelled_well, 0.8, 0.0, "1")
    assert moved.data_drift and moved.retrain and not moved.score_drift

    scores_up = assess(reference, _traffic(2_000, seed=4), rng.beta(5, 5, 2_000), labelled_well, 0.8, 0.0, "1")
    assert scores_up.score_drift and not scores_up.data_drift

    labelled_badly = labelled_well.assign(score=rng.uniform(0, 1, 1_000))
    decayed = assess(reference, _traffic(2_000, seed=5), rng.beta(1, 20, 2_000), labelled_badly, 0.8, 0.0, "1")
    assert decayed.performance_decay and decayed.retrain and decayed.recent_average_precision < 0.2

    few = assess(reference, _traffic(50, shift=3.0, seed=6), rng.beta(5, 5, 50), labelled_well.head(5), 0.8, 0.0, "1",
                 MonitorConfig(min_rows=200))
    assert not few.retrain and few.recent_average_precision is None  # too little to judge, not an alarm
