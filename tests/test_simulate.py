import numpy as np
import pandas as pd
import pytest
from fraudloop.models.units import DAY
from fraudloop.pipelines.data.simulate import CARD_TESTING, GENUINE, SimulationConfig, labels_of, simulate, summary

TINY = SimulationConfig(customers=200, terminals=400, days=40, seed=3)


def test_same_seed_same_history():
    pd.testing.assert_frame_equal(simulate(TINY, progress=False), simulate(TINY, progress=False))


def test_other_seed_other_history():
    other = simulate(SimulationConfig(customers=200, terminals=400, days=40, seed=4), progress=False)
    assert not simulate(TINY, progress=False)["amount"].equals(other["amount"])


def test_history_follows_the_data_model():
    history = simulate(TINY, progress=False)
    assert history["time"].is_monotonic_increasing
    assert history["transaction_id"].is_unique
    assert (history["amount"] >= 0).all()
    assert (history.loc[history["amount"] > 220, "is_fraud"]).all()  # scenario 1 is a hard rule
    assert set(history["fraud_scenario"].unique()) >= {0, 1, 2, 3}
    stats = summary(history)
    # about 2 a customer a day, less those drawn outside the day and customers with no terminal in reach
    assert 1.5 * 200 < stats["transactions_per_day"] < 2.3 * 200


def test_fixed_label_delay_and_labels_of():
    history = simulate(TINY, progress=False)
    frauds = history[history["is_fraud"]]
    assert ((frauds["label_known_at"] - frauds["time"]) == 7 * DAY).all()
    assert (history.loc[~history["is_fraud"], "label_known_at"] == -1).all()
    labels = labels_of(history)
    assert len(labels) == len(frauds) and labels["known_at"].is_monotonic_increasing


def test_random_label_delay_is_positive_and_varied():
    history = simulate(SimulationConfig(customers=200, terminals=400, days=40, seed=3, label_delay_days=3,
                                        label_delay_sigma=0.8), progress=False)
    delay = (history.loc[history["is_fraud"], "label_known_at"] - history.loc[history["is_fraud"], "time"]) / DAY
    assert delay.min() > 0 and delay.std() > 1 and 2 < delay.median() < 4


def test_drift_adds_card_testing_and_shifts_spending_after_the_drift_day():
    base = simulate(TINY, progress=False)
    drifted = simulate(SimulationConfig(customers=200, terminals=400, days=40, seed=3, drift_day=30), progress=False)
    day = (drifted["time"] - drifted["time"].min()) // DAY
    testing = drifted["fraud_scenario"] == CARD_TESTING
    assert testing.sum() > 0 and (day[testing] >= 30).all()
    assert (drifted.loc[testing, "amount"] <= 5).all() and drifted.loc[testing, "is_fraud"].all()
    genuine_after = drifted[(day >= 30) & (drifted["fraud_scenario"] == GENUINE)]["amount"].mean()
    base_day = (base["time"] - base["time"].min()) // DAY
    base_after = base[(base_day >= 30) & (base["fraud_scenario"] == GENUINE)]["amount"].mean()
    assert genuine_after == pytest.approx(base_after * 1.3, rel=0.05)
    before = drifted.loc[day < 30, "amount"].to_numpy()
    assert np.array_equal(before, base.loc[base_day < 30, "amount"].to_numpy()[: len(before)])


@pytest.mark.parametrize("bad", [{"customers": 0}, {"radius": -1}, {"drift_day": 99}, {"start_date": "April"}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        SimulationConfig(**{**TINY.__dict__, **bad})
