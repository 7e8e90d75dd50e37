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
