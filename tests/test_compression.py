"""The compression benchmark's choice (pure) and its variants' training and serving cost, on small data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks.compression import DEFAULT, VARIANTS, choose, pareto, train, variant_costs


def test_the_pareto_front_keeps_what_nothing_beats_in_both():
    points = {"big": (0.72, 3.0), "small": (0.71, 1.0), "worse": (0.70, 2.0), "same as small": (0.71, 1.0)}
    assert pareto(points) == ["big", "small", "same as small"]


def test_the_choice_is_the_cheapest_on_the_front_not_clearly_worse_than_its_best():
    folds = {"big": [0.72, 0.70, 0.74, 0.71], "close": [0.71, 0.71, 0.73, 0.71], "far": [0.60, 0.58, 0.62, 0.59]}
    validation = {name: pd.DataFrame({"average_precision": ap}) for name, ap in folds.items()}
    cost = {"big": 3.0, "close": 1.5, "far": 0.5}
    assert choose(validation, {k: {"compiled_us_per_row_batch_500": v} for k, v in cost.items()}) == "close"
    cost["close"] = 4.0  # dominated by big now: off the front
    assert choose(validation, {k: {"compiled_us_per_row_batch_500": v} for k, v in cost.items()}) == "big"


@pytest.mark.integration  # compiles with lleaves and times in a spawned process
def test_every_variant_trains_and_is_served_compiled_as_lightgbm_scores_it():
    rng = np.random.default_rng(0)
    n = 3_000
    features = pd.DataFrame(rng.random((n, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    fraud = rng.random(n) < features["amount"].to_numpy() ** 4
    times = np.sort(rng.uniform(0, 7 * DAY, n))
    teacher = train(DEFAULT, features, fraud, times, None)
    boosters = {v.name: train(v, features, fraud, times, teacher) for v in VARIANTS[-2:]}  # early-stopped, distilled
    assert boosters[VARIANTS[-1].name].num_trees() == 150  # distilled: the student's size
    assert 0 < boosters[VARIANTS[-2].name].num_trees() <= 600  # early-stopped
    cost = variant_costs(boosters, features.to_numpy(np.float64), repetitions=1)
    for name, figures in cost.items():
        assert figures["trees"] == boosters[name].num_trees() and figures["compiled_kb"] > 0
        assert figures["compiled_us_per_row_batch_500"] > 0 and figures["lightgbm_us_per_row_batch_20"] > 0
