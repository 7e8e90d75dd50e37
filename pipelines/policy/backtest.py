"""Backtest a rules file on the stored decisions before it serves, and record each change of the served rules.

The backtest replays the policy (streaming/rules.py, the scorer's very code) over the decisions the scorer stored
(their features and served scores) whose labels have matured: per rule, how often it would decide, its
precision, the frauds it catches that the model's thresholds let through, the genuine customers it hits; and the
decision mix the whole set would have produced beside the one served. Each model version is judged at its own
thresholds (its tags), as the scorer applies them.

A change of the served rules is recorded as an alias move is: one run per change in the `<experiment>-rules-
changes` experiment (who, when, why, the version replaced, the file and its backtest).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining.training_set import UNKNOWN, decode_decisions, known_outcomes
from fraudloop.streaming.decide import APPROVE, DECLINE, REVIEW, outcomes
from fraudloop.streaming.rules import MODEL, RulesError, RuleSet, parse


@dataclass
class RuleStats:
    action: str
    decided: int = 0  # transactions it would decide (first match)
    unknown: int = 0  # of those, blocked when served and never labelled: neither fraud nor genuine
    frauds: int = 0  # of those, labelled fraud
    frauds_model_missed: int = 0  # frauds it flags that the model's thresholds approved
    frauds_let_through: int = 0  # (allow) frauds the model's thresholds flagged
    genuine_cards: set[str] = field(default_factory=set)  # customers hit (block / review) or spared (allow)

    def as_dict(self, days: float) -> dict:
        return {"action": self.action, "decided": self.decided, "per_day": round(self.decided / days, 2),
                "unknown": self.unknown,  # precision is over the known outcomes only
                "precision": round(self.frauds / known, 4) if (known := self.decided - self.unknown) else None,
                "frauds_model_missed": self.frauds_model_missed, "frauds_let_through": self.frauds_let_through,
                "genuine_cards_hit": len(self.genuine_cards) if self.action != "allow" else 0}


def backtest(chunks, labels: pd.DataFrame, as_of: float, rules: RuleSet,
             thresholds_of: Callable[[str], tuple[float, float]]) -> dict:
    """`chunks`: stored decisions (Store.decision_chunks); `labels`: their labels, as known at `as_of`. A blocked
    transaction without a label is unknown (training_set.known_outcomes): neither a fraud nor a genuine card."""
    stats = {name: RuleStats(_action(rules, name)) for name in rules.names}
    served, replayed = Counter(), Counter()
    days: set[int] = set()
    rows = frauds = 0
    for chunk in chunks:
        chunk = chunk[chunk["score"].notna()]
        if chunk.empty:
            continue
        decoded = decode_decisions(chunk)
        columns = {name: decoded[name].to_numpy() for name in FEATURE_NAMES}
        columns["score"] = chunk["score"].to_numpy(float)
        outcome, rule = np.empty(len(chunk), dtype=object), np.empty(len(chunk), dtype=object)
        model = np.empty(len(chunk), dtype=object)
        versions = chunk["model_version"].to_numpy()
        cards, terminals = chunk["card_id"].tolist(), chunk["terminal_id"].tolist()
        for version in np.unique(versions):  # each version at its own thresholds, as the scorer applied them
            rows_of = np.flatnonzero(versions == version)
            sub = {k: v[rows_of] for k, v in columns.items()}
            review, decline = thresholds_of(str(version))
            o, r = rules.decide(sub, [cards[i] for i in rows_of], [terminals[i] for i in rows_of], review, decline)
            outcome[rows_of], rule[rows_of] = o, r
            model[rows_of] = outcomes(sub["score"], review, decline)
        known = known_outcomes(chunk["transaction_id"], chunk["decision"], labels, as_of)
        is_fraud, unknown = known["is_fraud"].to_numpy(), (known["label_source"] == UNKNOWN).to_numpy()
        rows, frauds = rows + len(chunk), frauds + int(is_fraud.sum())
        days.update((chunk["event_time"].to_numpy() // DAY).astype(int).tolist())
        served.update(chunk["decision"].tolist())
        replayed.update(outcome.tolist())
        for j, name in enumerate(rule):
            s = stats[name]
            s.decided += 1
            s.unknown += int(unknown[j])
            if is_fraud[j]:
                s.frauds += 1
                s.frauds_model_missed += s.action != "allow" and model[j] == APPROVE and name != MODEL
                s.frauds_let_through += s.action == "allow" and model[j] != APPROVE
            elif not unknown[j] and (outcome[j] != APPROVE or s.action == "allow"):
                s.genuine_cards.add(cards[j])
    n_days = max(len(days), 1)
    return {"rules_version": rules.version, "transactions": rows, "frauds": frauds, "days": len(days),
            "rules": {name: s.as_dict(n_days) for name, s in stats.items()},
            "served": {k: served.get(k, 0) for k in (APPROVE, REVIEW, DECLINE)},
            "with_rules": {k: replayed.get(k, 0) for k in (APPROVE, REVIEW, DECLINE)}}


def _action(rules: RuleSet, name: str) -> str:
    if name == MODEL:
        return "model"
    if name.endswith(" list"):
        return name.split("_", 1)[0]
    return next(rule.action for rule in rules.rules if rule.name == name)


def describe(result: dict) -> str:
    """The backtest as Markdown: per rule, then the decision mix."""
    days = max(result["days"], 1)
    lines = [f"Rules {result['rules_version']} on {result['transactions']:,} stored decisions over {result['days']} "
             f"days ({result['frauds']:,} frauds by the labels known now; a transaction served a decline or a review "
             "that got no label is unknown, left out of precision); first match wins.", "",
             "| decided by | action | decisions | a day | outcome unknown | precision (known outcomes) | frauds the "
             "model missed | frauds let through | genuine cards hit |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rules"].items():
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        lines.append(f"| {name} | {r['action']} | {r['decided']:,} | {r['per_day']:,.1f} | {r['unknown']:,} | "
                     f"{precision} | "
                     f"{r['frauds_model_missed']:,} | {r['frauds_let_through']:,} | {r['genuine_cards_hit']:,} |")
    lines += ["", "| decision | served | with these rules | a day served | a day with these rules |",
              "|---|---|---|---|---|"]
    for k in (APPROVE, REVIEW, DECLINE):
        served, replayed = result["served"][k], result["with_rules"][k]
        lines.append(f"| {k} | {served:,} | {replayed:,} | {served / days:,.1f} | {replayed / days:,.1f} |")
    return "\n".join(lines)


def run(store_url: str, rules_path: str, since: float | None, until: float | None, maturity_days: float,
        thresholds_of: Callable[[str], tuple[float, float]]) -> dict:
    """Backtest `rules_path` on the store's decisions between `since` and `until` (default: the 14 days ending
    `maturity_days` before the newest stored transaction, so their labels have matured)."""
    from fraudloop.models.store import Store

    rules = parse(Path(rules_path).read_text(), rules_path)
    store = Store(store_url)
    try:
        newest = store.newest_event_time()
        if newest is None:
            raise ValueError(f"the store {store_url.split('://')[0]}://… holds no decisions to backtest on")
        until = newest - maturity_days * DAY if until is None else until
        since = until - 14 * DAY if since is None else since
        if since >= until:
            raise ValueError(f"--from must be before --to (and before the newest stored transaction less "
                             f"{maturity_days:g} days of label maturity)")
        labels = store.labels_of_window(since, until, newest)
        result = backtest(store.decision_chunks(since, until), labels, newest, rules, thresholds_of)
    finally:
        store.close()
    return {**result, "from": since, "to": until}


def apply(registry_config, rules_path: str, served_path: str, reason: str, backtest_result: dict,
          actor: str) -> dict:
    """Serve `rules_path` at `served_path` (written whole, then renamed over it: the scorer never reads half a
    file) and record the change."""
    from fraudloop.pipelines.retraining.promote import now, record_change

    text = Path(rules_path).read_text(encoding="utf-8")
    new = parse(text, rules_path)
    target = Path(served_path)
    try:
        old = parse(target.read_text(encoding="utf-8"), served_path).version if target.is_file() else "none"
    except (RulesError, UnicodeDecodeError):
        old = "unusable"  # the change that repairs a broken served file is allowed, and says so
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        tmp.write(text)
    try:
        # readable by the scorer, which may run as another user (a temporary file is the owner's alone)
        os.chmod(tmp.name, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        change = {"action": "rules", "from_version": old, "to_version": new.version, "digest": new.digest,
                  "actor": actor, "reason": reason, "at": now()}
        record_change(registry_config, "rules-changes", f"rules {new.version}", change, {
            "rules.toml": text, "backtest.md": describe(backtest_result),
            "backtest.json": json.dumps(backtest_result, indent=1)})
        os.replace(tmp.name, target)  # recorded first: nothing serves that the record does not show
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return change

