"""Training set as of a time T: point-in-time correct, from the scorer's store or from a simulated history.

Rows are scored transactions with the feature values used at scoring time. Only what was known at T
counts: transactions that happened by T, labels known by T. A transaction younger than the label maturity
at T may still be charged back, so it is held out rather than counted as genuine.

What an unlabelled transaction means depends on what was decided (`known_outcomes`): an approved one would have been
charged back by maturity, so it is genuine; a declined one cannot be charged back and a reviewed one gets a verdict
only if an analyst worked it, so without a label it is unknown, and left out of training, validation and the
monitor's performance. Counting it genuine would teach the next model that what the last one blocked was fine (most
of it was fraud) and score the champion against its own blind spot. Leaving it out biases the sample towards
what was approved; only exploration with recorded probabilities (counterfactual evaluation) removes that bias.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES, compute_features

ROW_COLUMNS = ("transaction_id", "card_id", "event_time")
# What was decided, by what, and the probability it had (exploration): kept for estimates weighted by 1 / probability
POLICY_COLUMNS = ("decision", "propensity", "rule")
# Decisions after which no chargeback can come: without a label, their outcome is unknown.
BLOCKED = frozenset({"decline", "review"})
# label_source of a row without a label: approved and past maturity (genuine), or blocked (unknown: left out)
NO_CHARGEBACK, UNKNOWN = "no_chargeback", "unknown"
# Label sources that answer a flag within hours: an analyst's verdict on a review, a cardholder's answer on a decline.
# They train at once, before the maturity a chargeback needs (docs/retraining.md, "Learning from feedback").
FEEDBACK_SOURCES = frozenset({"review", "cardholder"})


def training_set_as_of(rows: pd.DataFrame, labels: pd.DataFrame, as_of: float, maturity_seconds: float,
                       feedback_seconds: float = 0.0) -> pd.DataFrame:
    """`rows` (ROW_COLUMNS + FEATURE_NAMES, and `decision` when they were scored) labelled as known at `as_of`, in
    time order.

    Returns the mature rows whose outcome is known (`known_outcomes`), and, from the `feedback_seconds` before
    `as_of`, the younger rows with feedback (FEEDBACK_SOURCES), with
    `is_fraud`, `label_source` and `mature` columns (and POLICY_COLUMNS, where `rows` has them). The latest label
    known by `as_of` wins (a fraud later confirmed genuine counts as genuine).
    """
    time_ = rows["event_time"].to_numpy(float)
    recent = rows[(time_ > as_of - maturity_seconds) & (time_ > as_of - feedback_seconds) & (time_ <= as_of)]
    if len(recent):
        known = known_outcomes(recent["transaction_id"], recent.get("decision"), labels, as_of)
        recent = recent[known["label_source"].isin(FEEDBACK_SOURCES).to_numpy()]
    chosen = rows[time_ <= as_of - maturity_seconds]
    if len(recent):
        chosen = pd.concat([chosen, recent])
    chosen = chosen.sort_values(["event_time", "transaction_id"], kind="stable", ignore_index=True)
    frame = chosen[[*ROW_COLUMNS, *FEATURE_NAMES, *(c for c in POLICY_COLUMNS if c in chosen)]].copy()
    frame["mature"] = frame["event_time"].to_numpy() <= as_of - maturity_seconds
    for column in ("decision", "rule"):  # a few distinct names: codes, not a string object per row
        if column in frame:
            frame[column] = frame[column].astype("category")
    known = known_outcomes(frame["transaction_id"], chosen.get("decision"), labels, as_of)
    frame[["is_fraud", "label_source"]] = known
    unknown = (frame["label_source"] == UNKNOWN).to_numpy()
    frame = frame[~unknown].reset_index(drop=True)
    frame.attrs["unknown_rows"] = int(unknown.sum())  # what was left out, for the job's report
    return frame


def mature_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose label has matured (all of a training set built without feedback)."""
    return frame["mature"].to_numpy(bool) if "mature" in frame else np.ones(len(frame), dtype=bool)


def sample_weights(frame: pd.DataFrame) -> np.ndarray | None:
    """A downsampled set's row weights (1 / the rate each row was sampled at: pipelines/offline/build.py); None when
    every row is there (a set built without a budget, or before budgets were)."""
    if "weight" not in frame:
        return None
    weight = frame["weight"].to_numpy(float)
    return None if (weight == 1).all() else weight


def uniform_rows(frame: pd.DataFrame) -> np.ndarray:
    """The rows of the cards drawn at a downsampled set's rate (whatever else kept them): a uniform sample of the
    traffic by card, for what compares distributions (the monitor's reference). All rows of a set without weights."""
    weight = sample_weights(frame)
    if weight is None:
        return np.ones(len(frame), dtype=bool)
    from fraudloop.pipelines.offline.build import card_fraction

    cards = frame["card_id"].to_numpy()
    unique, index = np.unique(cards, return_inverse=True)
    return card_fraction(unique)[index] < 1 / weight.max()


def known_outcomes(transaction_ids: pd.Series, decisions: pd.Series | None, labels: pd.DataFrame,
                   as_of: float) -> pd.DataFrame:
    """Each transaction's outcome as known at `as_of`, aligned with `transaction_ids`: `is_fraud` (bool) and
    `label_source` (the latest label's source; NO_CHARGEBACK: no label and not blocked, so genuine; UNKNOWN: no
    label and declined or reviewed). `decisions` None: none blocked (a history without a scorer)."""
    known = labels[labels["known_at"] <= as_of].sort_values("known_at", kind="stable")
    latest = known.drop_duplicates("transaction_id", keep="last").set_index("transaction_id")
    source = latest["source"].fillna("chargeback") if "source" in latest else pd.Series("chargeback", latest.index)
    ids = pd.Series(transaction_ids).reset_index(drop=True)
    is_fraud = ids.map(latest["is_fraud"])
    unlabelled = is_fraud.isna().to_numpy()
    label_source = ids.map(source).to_numpy(object)
    blocked = (np.zeros(len(ids), dtype=bool) if decisions is None
               else pd.Series(decisions).isin(BLOCKED).to_numpy())
    label_source[unlabelled] = np.where(blocked[unlabelled], UNKNOWN, NO_CHARGEBACK)
    return pd.DataFrame({"is_fraud": is_fraud.fillna(False).astype(bool).to_numpy(), "label_source": label_source},
                        index=pd.Series(transaction_ids).index)


def observation_weights(decision: pd.Series | None, propensity: pd.Series | None) -> np.ndarray | None:
    """Each row's weight in an estimate over all traffic (inverse-probability weighting): an approved row, whose
    outcome comes back whatever it was, weighs 1 / the probability it had of approval (1 for what the policy
    approves, 1 / share for what exploration approved in place of a block); a blocked row weighs 0, as whatever is
    known of it came through a channel that chose it (a worked case, a cardholder who called). None when no row was
    explored: then nothing stands for the blocked rows and no unbiased estimate exists."""
    if decision is None or propensity is None:
        return None
    approved = (np.asarray(decision, dtype=object) == "approve")
    p = np.asarray(propensity, dtype=float)
    if not (approved & (p < 1)).any():
        return None
    return np.where(approved, 1.0 / np.where(p > 0, p, 1.0), 0.0)


def explorable(decision: pd.Series, propensity: pd.Series) -> np.ndarray:
    """The rows exploration could reach: the approved ones and the blocks that had a chance of approval (probability
    below 1). A weighted estimate holds over these only; a block no draw could turn (a rule's or a list's, one over
    the caps, one made before exploration) stands for nothing, so estimates name this scope and the truth they are
    checked against is taken on it too."""
    approved = pd.Series(decision).astype(object).to_numpy() == "approve"
    return approved | (np.asarray(propensity, dtype=float) < 1)


def decode_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """Stored decisions (features as a JSON list) as rows with one float column per feature."""
    rows = [orjson.loads(f) for f in decisions["features"]]
    other = {len(r) for r in rows} - {len(FEATURE_NAMES)}
    if other:
        raise ValueError(f"stored decisions carry {sorted(other)} features where this version computes "
                         f"{len(FEATURE_NAMES)}: they were scored by another feature set; read only decisions "
                         "scored since the upgrade (or build training sets from a history)")
    values = np.array(rows, dtype=float)
    frame = pd.DataFrame(values.reshape(len(decisions), len(FEATURE_NAMES)), columns=list(FEATURE_NAMES))
    for column in (*ROW_COLUMNS, "decision"):
        frame[column] = decisions[column].to_numpy()
    if "propensity" in decisions:
        frame["propensity"] = decisions["propensity"].fillna(1.0).to_numpy(float)  # null: stored before exploration
    if "rule" in decisions:
        frame["rule"] = decisions["rule"].fillna("model").to_numpy(object)  # null: stored before rules were
    return frame


def history_rows(history: pd.DataFrame, labels: pd.DataFrame, features: pd.DataFrame | None = None,
                 progress: bool = False) -> pd.DataFrame:
    """A simulated history as scored rows: the features the scorer would have computed (same code)."""
    if features is None:
        features = compute_features(history, labels, progress=progress)
    frame = features[list(FEATURE_NAMES)].reset_index(drop=True).copy()
    frame["transaction_id"] = history["transaction_id"].to_numpy()
    frame["card_id"] = history["card_id"].to_numpy()
    frame["event_time"] = history["time"].to_numpy(float)
    return frame


def from_store(url: str, as_of: float | None, maturity_seconds: float, lookback_seconds: float) -> pd.DataFrame:
    """From the scorer's store, the `lookback_seconds` before `as_of` (default: the newest stored transaction): the
    mature rows, and the younger ones with feedback (`training_set_as_of`)."""
    from fraudloop.models.store import Store

    store = Store(url)
    try:
        if as_of is None:
            as_of = store.newest_event_time()
            if as_of is None:
                raise ValueError("the store holds no decisions yet")
        since = as_of - lookback_seconds
        rows = [decode_decisions(chunk) for chunk in store.decision_chunks(since, as_of)]  # decoded as they come
        labels = store.labels_of_window(since, as_of, known_by=as_of)
    finally:
        store.close()
    if not rows:
        raise ValueError(f"the store holds no decisions up to {pd.Timestamp(as_of, unit='s')}")
    return training_set_as_of(pd.concat(rows, ignore_index=True), labels, as_of, maturity_seconds, maturity_seconds)


def from_history(folder: Path, as_of: float | None, maturity_seconds: float, progress: bool = False) -> pd.DataFrame:
    """From a simulator history folder; `as_of` defaults to the end of the history."""
    from fraudloop.pipelines.data.history import read_history

    history, labels = read_history(folder)
    if as_of is None:
        as_of = float(history["time"].max())
    return training_set_as_of(history_rows(history, labels, progress=progress), labels, as_of, maturity_seconds)


def location(where: str | Path) -> str:
    """A training set's URI: fsspec URIs (file://, s3://, gs://, ...) as given, a local path as a file:// URI.

    Tasks pass URIs, never paths: an Airflow worker on another machine reads the same object.
    """
    text = str(where)
    return text if "://" in text else Path(text).resolve().as_uri()


def write(frame: pd.DataFrame, where: str | Path) -> str:
    import fsspec

    if frame.empty or not frame["is_fraud"].any():
        raise ValueError("the training set has no labelled fraud: nothing to learn from")
    uri = location(where)
    with fsspec.open(uri, "wb", auto_mkdir=True) as out:
        frame.to_parquet(out, index=False)
    return uri


def read(where: str | Path) -> pd.DataFrame:
    import fsspec

    uri = location(where)
    try:
        with fsspec.open(uri, "rb") as source:
            frame = pd.read_parquet(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} not found (expected a training set written by 'fraudloop training-set')"
                                ) from None
    missing = {*ROW_COLUMNS, *FEATURE_NAMES, "is_fraud"} - set(frame.columns)
    if missing:
        raise ValueError(f"{where} is not a training set: it lacks {sorted(missing)}")
    for column in ("decision", "rule"):  # as `training_set_as_of` gives them (a DuckDB build writes strings)
        if column in frame and frame[column].dtype == object:
            frame[column] = frame[column].astype("category")
    return frame
