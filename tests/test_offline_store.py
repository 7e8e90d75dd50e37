"""The offline store: exported days are final and idempotent; the out-of-core build gives the rows and labels of the
in-memory one; downsampling keeps what must be kept and weighs the rest back."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.store import DecisionRow, Store
from fraudloop.models.training import TrainParams, fit
from fraudloop.models.units import DAY
from fraudloop.pipelines.data.backfill import backfill
from fraudloop.pipelines.offline.build import build, card_fraction
from fraudloop.pipelines.offline.export import export
from fraudloop.pipelines.offline.store import DECISIONS, LABELS, OfflineStore
from fraudloop.pipelines.retraining import training_set

MATURITY = 7 * DAY


@pytest.fixture(scope="module")
def filled(tmp_path_factory, small_history, small_labels):
    """A scorer's store backfilled with decisions of a model (so some are blocked) and feedback on young rows."""
    folder = tmp_path_factory.mktemp("offline")
    rows = training_set.history_rows(small_history, small_labels)
    booster = fit(rows, small_history["is_fraud"].to_numpy(), TrainParams(num_boost_round=20))
    store = Store(f"sqlite:///{folder / 'scoring.db'}")
    as_of = float(small_history["time"].max()) - 0.5 * DAY
    labels = small_labels[small_labels["known_at"] <= as_of + 3 * DAY]  # some known only after as_of
    backfill(store, small_history, rows, labels, booster, version="1", thresholds=(0.2, 0.6))
    young = small_history[small_history["time"] > as_of - 3 * DAY].head(400)
    store.write([], [Label(tx, bool(fraud), float(when) + 3600, source="review" if i % 2 else "cardholder")
                     for i, (tx, fraud, when) in enumerate(young[["transaction_id", "is_fraud", "time"]].itertuples(
                         index=False))])
    offline = OfflineStore((folder / "offline").as_uri())
    export(store, offline, until=as_of + 10 * DAY)
    yield store, offline, as_of, folder
    store.close()


def test_the_out_of_core_build_gives_the_rows_and_labels_of_the_in_memory_one(filled):
    store, offline, as_of, folder = filled
    lookback = 40 * DAY
    expected = training_set.from_store(f"sqlite:///{folder / 'scoring.db'}", as_of, MATURITY, lookback)
    result = build(offline, as_of, MATURITY, lookback, str(folder / "built.parquet"), budget_rows=None)
    built = training_set.read(result["uri"])
    assert result["sample_rate"] == 1.0 and (built["weight"] == 1.0).all()
    assert built["transaction_id"].tolist() == expected["transaction_id"].tolist()
    for column in ("card_id", "is_fraud", "label_source", "mature", "propensity"):
        assert built[column].astype(object).tolist() == expected[column].astype(object).tolist(), column
    assert built["decision"].astype(str).tolist() == expected["decision"].astype(str).tolist()
    np.testing.assert_array_equal(built[list(FEATURE_NAMES)].to_numpy(), expected[list(FEATURE_NAMES)].to_numpy())
    np.testing.assert_array_equal(built["event_time"].to_numpy(), expected["event_time"].to_numpy())
    assert result["unknown_rows"] == expected.attrs["unknown_rows"] > 0
    assert result["frauds"] == int(expected["is_fraud"].sum())
    assert (~built["mature"]).sum() > 0  # the young feedback is in, as in memory


def test_downsampling_keeps_every_fraud_and_block_and_weighs_the_sampled_cards_back(filled):
    store, offline, as_of, folder = filled
    whole = build(offline, as_of, MATURITY, 40 * DAY, str(folder / "full.parquet"), budget_rows=None)
    full = training_set.read(whole["uri"])
    budget = whole["kept_rows"] + (len(full) - whole["kept_rows"]) // 3
    result = build(offline, as_of, MATURITY, 40 * DAY, str(folder / "sampled.parquet"), budget_rows=budget)
    sampled = training_set.read(result["uri"])
    rate = result["sample_rate"]
    assert rate == pytest.approx(1 / 3, rel=0.01) and len(sampled) < len(full)
    must = (full["is_fraud"] | (full["decision"].astype(str) != "approve")
            | full["label_source"].isin(["review", "cardholder"]))
    drawn = card_fraction(full["card_id"]) < rate
    assert set(sampled["transaction_id"]) == set(full.loc[must | drawn, "transaction_id"])
    kept = sampled.set_index("transaction_id")["weight"]
    assert (kept[full.loc[must, "transaction_id"]] == 1.0).all()
    assert np.allclose(kept[full.loc[~must & drawn, "transaction_id"]], 1 / rate)
    # the weights give back the traffic's size: close, not exact (a third of 400 cards drawn: about 7 % apart)
    assert sampled["weight"].sum() == pytest.approx(len(full), rel=0.1)


def test_card_fraction_is_duckdbs_md5_number_upper():
    import duckdb

    ids = ["C1", "card-42", "x" * 40]
    theirs = duckdb.sql("SELECT md5_number_upper(id)::DOUBLE / 18446744073709551616.0 FROM "
                        "unnest(['C1', 'card-42', '" + "x" * 40 + "']) t(id)").fetchall()
    assert card_fraction(ids).tolist() == [v for (v,) in theirs]
    assert card_fraction(["C1"])[0] == int.from_bytes(hashlib.md5(b"C1").digest()[:8], "little") / 2**64


def test_an_exported_day_is_final_and_exporting_again_writes_the_same_bytes(filled):
    store, offline, as_of, folder = filled
    days = offline.days(DECISIONS)
    assert len(days) >= 70 and offline.days(LABELS)
    before = {d: offline.fs.cat_file(offline.path(DECISIONS, d)) for d in days[:3]}
    again = export(store, offline, until=as_of + 10 * DAY)
    assert again["decision_days"] == 0  # the older days are final, the newest two unchanged
    newest = max(days)
    store.write([DecisionRow(Transaction("late", "C-late", "T1", newest * DAY + 60, 100), 0.1, "approve", "1",
                             [0.0] * len(FEATURE_NAMES), newest * DAY + 61)], [])
    again = export(store, offline, until=as_of + 10 * DAY)
    assert again["decision_days"] == 1 and offline.rows(DECISIONS, newest) == len(
        pd.read_parquet(offline.path(DECISIONS, newest)))  # the day that received a row, written again
    copy = OfflineStore((folder / "copy").as_uri())
    export(store, copy, until=as_of + 10 * DAY)
    for day, content in before.items():
        assert copy.fs.cat_file(copy.path(DECISIONS, day)) == content
    day = pd.read_parquet(offline.path(DECISIONS, days[5]))
    assert ((day["event_time"] > days[5] * DAY) & (day["event_time"] <= (days[5] + 1) * DAY)).all()


def test_a_store_of_another_feature_set_or_another_source_is_refused_in_one_line(tmp_path, filled):
    offline = OfflineStore(tmp_path.as_uri())
    (tmp_path / "schema.json").write_text('{"version": 1, "features": ["amount"], "source": null}')
    with pytest.raises(ValueError, match="export into a new URI"):
        offline.check_schema()
    store, exported, as_of, folder = filled
    other = Store(f"sqlite:///{folder / 'other.db'}")
    try:
        with pytest.raises(ValueError, match="holds the days of another store"):
            export(other, exported, until=as_of)
    finally:
        other.close()


def test_the_monitor_reads_the_same_window_from_the_offline_store_and_a_bounded_sample_past_its_size(filled):
    from fraudloop.pipelines.retraining.monitor import MonitorConfig, read_offline, read_window
    from fraudloop.pipelines.retraining.training_set import decode_decisions

    store, offline, as_of, folder = filled
    config = MonitorConfig(maturity_days=7.0, window_days=2.0)
    recent, matured, labels = read_window(store, as_of, config)
    off_recent, off_matured, off_labels = read_offline(offline, as_of, config)
    np.testing.assert_array_equal(off_recent[list(FEATURE_NAMES)].to_numpy(),
                                  decode_decisions(recent)[list(FEATURE_NAMES)].to_numpy())
    assert off_matured["transaction_id"].tolist() == matured["transaction_id"].tolist()
    assert off_matured["score"].tolist() == matured["score"].tolist()
    assert sorted(off_labels["transaction_id"]) == sorted(labels["transaction_id"]) and len(labels)

    small = MonitorConfig(maturity_days=7.0, window_days=2.0, sample_rows=len(matured) // 4)
    _, sampled, sampled_labels = read_offline(offline, as_of, small)
    assert 0 < len(sampled) < len(matured) // 2
    rate = small.sample_rows / len(matured)
    assert (card_fraction(sampled["card_id"]) < rate).all()  # whole cards, drawn as the build draws them
    assert set(sampled_labels["transaction_id"]) <= set(sampled["transaction_id"])


def test_retention_in_the_scorer_store_never_takes_a_row_from_the_offline_store(tmp_path):
    import math

    store = Store(f"sqlite:///{tmp_path / 'scoring.db'}")
    t0 = 1_800_000_000.0
    for i in range(40):  # a decision a day, and its chargeback 30 days later
        store.write([DecisionRow(Transaction(f"t{i}", "C1", "T1", t0 + i * DAY, 100), 0.1, "approve", "1",
                                 [0.0] * (len(FEATURE_NAMES) - 1) + [math.nan], t0 + i * DAY)],
                    [Label(f"t{i}", True, t0 + (i + 30) * DAY)] if i < 5 else [])
    offline = OfflineStore((tmp_path / "offline").as_uri())
    export(store, offline, until=t0 + 40 * DAY)
    exported = {kind: {d: offline.rows(kind, d) for d in offline.days(kind)} for kind in (DECISIONS, LABELS)}
    assert sum(exported[LABELS].values()) == 5
    store.prune(before=t0 + 32 * DAY)  # the decisions of 32 days go, and no label (they became known later)
    store.write([DecisionRow(Transaction("new", "C1", "T1", t0 + 40 * DAY, 100), 0.1, "approve", "1",
                             [0.0] * len(FEATURE_NAMES), t0 + 40 * DAY)], [])
    export(store, offline, until=t0 + 41 * DAY, every_day=True)
    for kind in (DECISIONS, LABELS):
        for day, rows in exported[kind].items():
            assert offline.rows(kind, day) >= rows, (kind, day)
    assert sum(offline.rows(DECISIONS, d) for d in offline.days(DECISIONS)) == 41
    store.close()
