"""Learning from feedback at once: a delayed model averaged with a model of the latest investigators' feedback.

Once labels depend on the decisions, two kinds of label arrive at different speeds (Dal Pozzolo et al., IEEE TNNLS
2018): analysts' verdicts and cardholders' answers ("feedback", on what the model flagged) within hours, and every
other outcome only once chargebacks have had time to come back ("delayed"). A model trained on the delayed labels
alone is blind for the maturity period after a drift; one trained on both pooled drowns the few hundred verdicts a
day in the millions of delayed rows. The aggregate keeps them apart: a feedback model on the last days' feedback, a
delayed model on the mature rows, and their probabilities averaged (alpha = 0.5, as published; an adaptive alpha
brought no gain there). `fraudloop benchmark feedback` measures it against the pooled model on the same worlds.

Both boosters are plain LightGBM models, so either serves through LightGBM or compiled (streaming/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from fraudloop.models.units import DAY

# Label sources that answer a flag at once: an analyst's verdict on a review, a cardholder's answer on a decline.
FEEDBACK_SOURCES = frozenset({"review", "cardholder"})
FEEDBACK_FILE = "feedback.lgb"  # the feedback booster, beside the delayed one (model.lgb) in a registered version
ALPHA_TAG = "feedback_alpha"


@dataclass(frozen=True)
class FeedbackConfig:
    days: float = 7.0  # delta: the feedback model learns the verdicts of this many days; 0: the delayed model alone
    alpha: float = 0.5  # the feedback model's weight in the average
    num_boost_round: int = 100  # a few hundred verdicts a day: a small model
    min_frauds: int = 5  # and as many genuine: below, a feedback model would learn noise, so the delayed one serves

    def __post_init__(self) -> None:
        if self.days < 0 or not 0 <= self.alpha <= 1:
            raise ValueError(f"feedback days must not be negative and alpha must be within 0..1, got {self}")


@dataclass(frozen=True)
class Aggregate:
    """`predict` = (1 - alpha) * delayed + alpha * feedback: the same call as a `lightgbm.Booster`'s."""

    delayed: lgb.Booster
    feedback: lgb.Booster
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be within 0..1, got {self.alpha}")
        if self.feedback.feature_name() != self.delayed.feature_name():
            raise ValueError("the feedback and delayed models must read the same features")

    def predict(self, features: np.ndarray, num_threads: int = 1, **kwargs) -> np.ndarray:
        if kwargs.get("pred_contrib"):  # reasons: the parts' contributions, weighted as their probabilities are
            return sum(weight * booster.predict(features, num_threads=num_threads, **kwargs)
                       for booster, weight in parts(self))
        return sum(weight * booster.predict(features, num_threads=num_threads) for booster, weight in parts(self))

    def feature_name(self) -> list[str]:
        return self.delayed.feature_name()

    def num_feature(self) -> int:
        return self.delayed.num_feature()


Model = lgb.Booster | Aggregate


def parts(model: Model) -> list[tuple[lgb.Booster, float]]:
    """The boosters a model averages, with their weights (one, weighted 1, for a plain booster)."""
    if isinstance(model, Aggregate):
        return [(model.delayed, 1 - model.alpha), (model.feedback, model.alpha)]
    return [(model, 1.0)]


def feedback_rows(frame: pd.DataFrame, until: float, days: float) -> np.ndarray:
    """Rows of `frame` (with `label_source`, `event_time`) whose label is feedback, from the `days` before `until`."""
    time_ = frame["event_time"].to_numpy(float)
    return (frame["label_source"].isin(FEEDBACK_SOURCES).to_numpy() & (time_ < until)
            & (time_ >= until - days * DAY))


def delayed_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose label has matured (every row of a training set built without feedback)."""
    return frame["mature"].to_numpy(bool) if "mature" in frame else np.ones(len(frame), dtype=bool)
