"""The rules backtest over stored decisions, and a recorded change of the served rules (CLI end to end)."""

from __future__ import annotations

import json

import mlflow
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.registry import RegistryConfig
from fraudloop.models.schema import Label, Transaction
from fraudloop.models.store import DecisionRow, Store
from fraudloop.models.units import DAY
from fraudloop.pipelines.cli import main
from fraudloop.pipelines.policy.backtest import backtest, describe
from fraudloop.streaming.rules import parse

T0 = 1_700_006_400.0  # a midnight, UTC
RULES = """
version = "bt1"
[lists]
block_cards = ["C-stolen"]
[[rules]]
name = "burst"
action = "review"
when = "card_tx_count_1h >= 5"
[[rules]]
name = "vip"
action = "allow"
when = "amount < 2"
"""


def fill(store: Store) -> list[tuple]:
    """Twenty transactions over two days: (id, card, amount, burst, score, fraud, served decision, version)."""
    rows = []
    for i in range(20):
        card = "C-stolen" if i < 2 else f"C{i}"
        amount, burst = (1.0 if i in (2, 3) else 50.0), (9 if 4 <= i < 8 else 0)
        score = {0: 0.95, 2: 0.95, 6: 0.5, 7: 0.8, 16: 0.5, 17: 0.5, 18: 0.9}.get(i, 0.1)
        fraud = i in (0, 2, 4, 5, 7, 18)
        served = "decline" if i == 19 else "approve"  # t19: declined when served, never labelled: unknown
        rows.append((f"t{i}", card, amount, burst, score, fraud, served, "1" if i < 10 else "2"))
    decisions = []
    for k, (tx_id, card, amount, burst, score, _, served, version) in enumerate(rows):
        features = [0.0] * len(FEATURE_NAMES)
        features[FEATURE_NAMES.index("amount")] = amount
        features[FEATURE_NAMES.index("card_tx_count_1h")] = burst
        tx = Transaction(tx_id, card, "T1", T0 + k * DAY / 10, round(amount * 100))
        decisions.append(DecisionRow(tx, score, served, version, features, tx.time))
    store.write(decisions, [Label(r[0], True, T0 + 3 * DAY) for r in rows if r[5]])
    return rows


def test_the_backtest_counts_per_rule_what_the_set_would_decide_with_each_version_at_its_own_thresholds(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    rows = fill(store)
    labels = store.labels_of_window(T0 - 1, T0 + 3 * DAY, known_by=T0 + 3 * DAY)
    assert sorted(labels["transaction_id"]) == sorted(r[0] for r in rows if r[5])
    thresholds = {"1": (0.3, 0.7), "2": (0.4, 0.95)}
    result = backtest(store.decision_chunks(T0 - 1, T0 + 3 * DAY), labels, T0 + 3 * DAY, parse(RULES),
                      thresholds.__getitem__)
    store.close()
    r = result["rules"]
    assert r["block_cards list"] == {"action": "block", "decided": 2, "per_day": 1.0, "unknown": 0, "precision": 0.5,
                                     "frauds_model_missed": 0, "frauds_let_through": 0, "genuine_cards_hit": 1}
    assert r["vip"]["decided"] == 2 and r["vip"]["frauds_let_through"] == 1  # t2: a fraud the model declined
    assert r["burst"]["decided"] == 3 and r["burst"]["precision"] == 0.6667  # t7 (0.8): the model declines it first
    assert r["burst"]["frauds_model_missed"] == 2  # t4, t5 scored 0.1: the model approved them
    assert r["burst"]["genuine_cards_hit"] == 1  # C6
    # the model decides the rest, v1 at 0.3 / 0.7 (t7 declined) and v2 at 0.4 / 0.95 (t16, t17, t18 reviewed)
    assert r["model"]["decided"] == 13 and r["model"]["unknown"] == 1  # t19
    assert r["model"]["precision"] == round(2 / 12, 4)  # over the known outcomes: t19 is neither fraud nor genuine
    assert result["with_rules"] == {"approve": 11, "review": 6, "decline": 3}
    assert result["served"] == {"approve": 19, "review": 0, "decline": 1} and result["days"] == 2
    assert "| burst | review | 3 | 1.5 | 0 | 0.667 | 2 | 0 | 1 |" in describe(result)


def test_rules_apply_serves_the_file_whole_and_records_who_when_why_and_the_backtest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRAUDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FRAUDLOOP_ACTOR", "analyst-7")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(store_url)
    fill(store)
    store.close()
    rules_file, served = tmp_path / "new.toml", tmp_path / "served" / "rules.toml"
    rules_file.write_text(RULES)
    window = ["--store", store_url, "--from", "2023-11-14", "--to", "2023-11-17"]
    assert main(["rules", "apply", "--rules", str(rules_file), "--to-file", str(served), "--reason",
                 "stolen card reported", *window]) == 0
    out = capsys.readouterr().out
    assert "| burst | review | 3 |" in out and "serving rules bt1" in out
    assert served.read_text() == RULES
    registry = RegistryConfig.from_env()
    mlflow.set_tracking_uri(registry.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[f"{registry.experiment}-rules-changes"], output_format="list")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert (tags["actor"], tags["reason"], tags["to_version"], tags["from_version"]) == (
        "analyst-7", "stolen card reported", "bt1", "none")
    served.write_text("version = ")  # broken by hand: the change that repairs it is allowed, and says so
    assert main(["rules", "apply", "--rules", str(rules_file), "--to-file", str(served), "--reason", "repair",
                 *window]) == 0
    capsys.readouterr()
    assert served.read_text() == RULES and served.stat().st_mode & 0o044 == 0o044  # readable by the scorer's user
    runs = mlflow.search_runs(experiment_names=[f"{registry.experiment}-rules-changes"], output_format="list")
    assert sorted(run.data.tags["from_version"] for run in runs) == ["none", "unusable"]
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace("card_tx_count_1h", "card_tx_1h"))
    assert main(["rules", "backtest", "--rules", str(bad), *window]) == 2
    assert "unknown name 'card_tx_1h'" in capsys.readouterr().err and served.read_text() == RULES
    assert main(["rules", "backtest", "--rules", str(rules_file), "--json", *window]) == 0
    printed = capsys.readouterr().out
    # versions the registry does not know are judged at the scorer's default thresholds (0.3 / 0.7): t18 declined
    assert json.loads(printed[printed.index("{"):])["with_rules"]["decline"] == 4


