"""`fraudloop import`: a file in another layout becomes a history every --history command reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fraudloop.models.units import DAY
from fraudloop.pipelines.benchmarks import model as benchmark
from fraudloop.pipelines.cli import main
from fraudloop.pipelines.data.history import read_history
from fraudloop.pipelines.data.importer import REJECTS_FILE, Mapping, import_history
from fraudloop.pipelines.data.simulate import SimulationConfig, simulate

EXAMPLE_MAPPING = Path(__file__).parents[1] / "examples" / "handbook-mapping.toml"


def handbook_layout(history: pd.DataFrame) -> pd.DataFrame:
    """A simulated history in the column layout of the reference handbook's published dataset."""
    start = history["time"].min() // DAY * DAY
    return pd.DataFrame({
        "TRANSACTION_ID": np.arange(len(history)),
        "TX_DATETIME": pd.to_datetime(history["time"], unit="s"),  # no zone, as published
        "CUSTOMER_ID": history["card_id"].str[1:].astype(int),
        "TERMINAL_ID": history["terminal_id"].str[1:].astype(int),
        "TX_AMOUNT": history["amount"],
        "TX_TIME_SECONDS": history["time"] - start,
        "TX_TIME_DAYS": (history["time"] - start) // DAY,
        "TX_FRAUD": history["is_fraud"].astype(int),
        "TX_FRAUD_SCENARIO": history["fraud_scenario"],
    })


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return simulate(SimulationConfig(customers=300, terminals=600, days=20, seed=4), progress=False)


def test_a_csv_in_the_handbooks_layout_is_imported_and_bad_rows_are_kept_with_their_reason(world, tmp_path):
    table = handbook_layout(world).astype({"TX_DATETIME": str, "TX_AMOUNT": object, "TX_FRAUD": object})
    bad = table.head(4).copy()
    bad["TRANSACTION_ID"] = [10**7, 10**7 + 1, 10**7 + 2, 0]  # the last repeats an accepted id
    bad.loc[bad.index[0], "TX_AMOUNT"] = -4.2
    bad.loc[bad.index[1], "TX_DATETIME"] = "yesterday"
    bad.loc[bad.index[2], "TX_FRAUD"] = "maybe"
    source = tmp_path / "handbook.csv"
    pd.concat([table, bad]).to_csv(source, index=False)

    out = tmp_path / "history"
    assert main(["import", str(source), "--mapping", str(EXAMPLE_MAPPING), "--out", str(out)]) == 0
    history, labels = read_history(out)
    assert len(history) == len(world) and history["is_fraud"].sum() == world["is_fraud"].sum()
    assert history["time"].tolist() == world["time"].tolist()  # naive times read as UTC
    assert np.allclose(history["amount"], world["amount"])
    frauds = history[history["is_fraud"]].set_index("transaction_id")["time"]
    assert (labels.set_index("transaction_id")["known_at"] - frauds).eq(7 * DAY).all()  # the mapping's fixed delay

    rejects = pd.read_csv(out / REJECTS_FILE)
    assert sorted(rejects["TRANSACTION_ID"]) == [0, 10**7, 10**7 + 1, 10**7 + 2]
    reasons = dict(zip(rejects["TRANSACTION_ID"], rejects["reason"], strict=True))
    assert "amount" in reasons[10**7] and "minimum" in reasons[10**7]
    assert "timestamp" in reasons[10**7 + 1] and "is_fraud" in reasons[10**7 + 2]
    assert "duplicate" in reasons[0]


def test_parquet_with_a_labels_file_and_log_normal_or_fixed_delays(world, tmp_path):
    table = handbook_layout(world)
    source = tmp_path / "tx.parquet"
    table.drop(columns="TX_FRAUD").to_parquet(source)
    frauds = table[table["TX_FRAUD"] == 1]
    outcome_file = tmp_path / "outcomes.csv"
    pd.DataFrame({"tx": frauds["TRANSACTION_ID"].tolist() + [99_999_999], "fraud": "true",
                  "at": (frauds["TX_DATETIME"] + pd.Timedelta(days=3)).dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
                  + ["2018-05-01T00:00:00Z"]}).to_csv(outcome_file, index=False)
    mapping = Mapping.load(EXAMPLE_MAPPING)
    mapping.columns.pop("is_fraud")
    mapping.label_columns.update(transaction_id="tx", is_fraud="fraud", known_at="at")
    result = import_history(source, tmp_path / "h", mapping, labels=outcome_file)
    history, labels = read_history(tmp_path / "h")
    assert result.frauds == len(frauds) == history["is_fraud"].sum() == len(labels)
    assert sum(result.labels_rejected.values()) == 1 and "no accepted transaction" in result.summary()

    flagged = Mapping.load(EXAMPLE_MAPPING, label_delay_sigma=0.8, seed=1)
    table.to_parquet(source)
    import_history(source, tmp_path / "ln", flagged)
    _, spread = read_history(tmp_path / "ln")
    delays = spread.set_index("transaction_id")["known_at"] - history.set_index("transaction_id")["time"]
    delays = delays.dropna() / DAY
    assert 5 < delays.median() < 9 and delays.std() > 1  # log-normal around the 7-day median


def test_a_mapping_that_does_not_fit_the_file_is_one_clear_line(world, tmp_path, capsys):
    source = tmp_path / "tx.csv"
    handbook_layout(world).head(10).to_csv(source, index=False)
    assert main(["import", str(source), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no column for transaction_id" in error
    assert main(["import", str(source), "--mapping", str(EXAMPLE_MAPPING), "--map", "colour=TX_FRAUD",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "nowhere.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["import", str(source), "--mapping", str(EXAMPLE_MAPPING), "--timezone", "Mars/Olympus",
                 "--out", str(tmp_path / "x")]) == 2
    assert "'Mars/Olympus' is not a known time zone" in capsys.readouterr().err
    assert main(["import", str(source), "--mapping", str(EXAMPLE_MAPPING), "--labels", str(source),
                 "--out", str(tmp_path / "x")]) == 2
    assert "a fraud flag column (is_fraud) or a --labels file, not both" in capsys.readouterr().err


def test_epoch_seconds_missing_amounts_and_times_that_do_not_exist_in_the_zone(world, tmp_path):
    table = handbook_layout(world).head(5)
    table["TX_DATETIME"] = world["time"].head(5).to_numpy()  # epoch seconds
    table.to_csv(tmp_path / "epoch.csv", index=False)
    epoch = import_history(tmp_path / "epoch.csv", tmp_path / "e", Mapping.load(EXAMPLE_MAPPING))
    assert epoch.accepted == 5 and read_history(tmp_path / "e")[0]["time"].tolist() == world["time"].head(5).tolist()

    table = handbook_layout(world).head(3)
    table["TX_AMOUNT"] = [np.nan, 12.5, 3.0]
    table["TX_DATETIME"] = pd.to_datetime(["2018-03-25 01:30", "2018-03-25 02:30", "2018-03-25 03:30"])
    table.to_parquet(tmp_path / "paris.parquet")
    paris = import_history(tmp_path / "paris.parquet", tmp_path / "p", Mapping.load(EXAMPLE_MAPPING,
                                                                                    timezone="Europe/Paris"))
    reasons = pd.read_csv(tmp_path / "p" / REJECTS_FILE)["reason"].tolist()
    assert paris.accepted == 1 and len(reasons) == 2  # a missing amount; 02:30 did not happen in Paris that night
    assert any("amount" in r for r in reasons) and any("timestamp" in r and "Europe/Paris" in r for r in reasons)


def test_the_model_benchmark_runs_the_protocol_on_an_imported_history(tmp_path):
    world = simulate(SimulationConfig(customers=400, terminals=1_200, days=100, start_date="2018-05-20", seed=2),
                     progress=False)
    source = tmp_path / "tx.parquet"
    handbook_layout(world).to_parquet(source)
    import_history(source, tmp_path / "h", Mapping.load(EXAMPLE_MAPPING))
    history, labels = read_history(tmp_path / "h")
    with pytest.raises(ValueError, match="needs transactions from 2018-06-13 to 2018-09-04; the history holds "
                                         "2018-05-20 to 2018-08-27"):
        benchmark.run(history, labels, "imported", progress=False)

    result = benchmark.run(history, labels, "imported", test_start="2018-08-01", progress=False,
                           ideas=benchmark.IDEAS[:2])
    record = benchmark.to_json(result, "test")
    assert record["protocol"] == "handbook" and record["dataset"]["transactions"] == len(world)
    assert record["test_weeks"][0] == "2018-07-25..2018-07-31" and len(record["test_weeks"]) == 4
    fraud_rate = record["dataset"]["fraud_rate"]
    assert record["average_precision"]["mean"] > 5 * fraud_rate  # far above a random ranking
    assert 0 < record["card_precision_at_100"]["mean"] <= record["daily_card_precision_at_100"]["mean"]
    assert [i["idea"] for i in record["ideas"]] == [i.name for i in benchmark.IDEAS[:2]]
    assert "test weeks 2018-07-25..2018-07-31" in benchmark.to_markdown(result, "test")


def test_train_and_backfill_take_an_imported_history(tmp_path):
    world = simulate(SimulationConfig(customers=300, terminals=600, days=50, seed=5), progress=False)
    source = tmp_path / "tx.csv.gz"
    handbook_layout(world).to_csv(source, index=False)
    out = tmp_path / "history"
    assert main(["import", str(source), "--mapping", str(EXAMPLE_MAPPING), "--out", str(out)]) == 0

    env = {**os.environ, "FRAUDLOOP_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("FRAUDLOOP_STORE_URL", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fraudloop.pipelines.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    trained = run("train", "--history", str(out), "--train-days", "14", "--num-boost-round", "100")
    assert trained.returncode == 0, trained.stderr
    assert '"version": "1"' in trained.stdout
    filled = run("backfill", "--history", str(out), "--quiet")
    assert filled.returncode == 0, filled.stderr
    assert f"backfilled {len(world):,} transactions" in filled.stdout
