"""What the demo measured: the scorer's Prometheus metrics, and the report built from the store and registry."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING

from fraudloop.models.units import DAY
from fraudloop.streaming.decide import EXPLORATION

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from fraudloop.pipelines.demo.run import DemoConfig



def scrape(port: int) -> dict[str, float]:
    """The scorer's Prometheus metrics, flattened: name{labels} -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def histogram_between(name: str, windows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """The series of histogram `name` observed within the windows (each: a scrape at its start, one at its end)."""
    observed: dict[str, float] = {}
    for before, after in windows:
        for key, value in after.items():
            if key.startswith(name):
                observed[key] = observed.get(key, 0.0) + value - before.get(key, 0.0)
    return observed


def histogram_quantile(values: dict[str, float], name: str, q: float,
                       since: dict[str, float] | None = None) -> float | None:
    """Upper bucket bound holding the q-quantile (Prometheus buckets are cumulative); `since`: an earlier
    scrape, for the quantile of what was observed in between."""
    since = since or {}
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v - since.get(k, 0.0)) for k, v in values.items()
                     if k.startswith(f"{name}_bucket") and 'le="+Inf"' not in k)
    total = values.get(f"{name}_count", 0.0) - since.get(f"{name}_count", 0.0)
    if not total:
        return None
    return next((bound for bound, count in buckets if count >= q * total), float("inf"))


def _period(decisions: pd.DataFrame, mask: np.ndarray, name: str) -> dict:
    from fraudloop.models.metrics import evaluate

    part = decisions[mask]
    if part.empty or not part["is_fraud"].any():
        return {"period": name, "transactions": int(len(part)), "frauds": int(part["is_fraud"].sum())}
    scores = evaluate(part["event_time"].to_numpy(), part["card_id"].to_numpy(), part["is_fraud"].to_numpy(),
                      part["score"].to_numpy())
    return {"period": name, "transactions": int(len(part)), "frauds": int(part["is_fraud"].sum()),
            "average_precision": scores["average_precision"], "card_precision_at_100": scores["card_precision_at_100"],
            "versions": ", ".join(sorted(part["model_version"].unique()))}


def estimates(decisions: pd.DataFrame, labels: pd.DataFrame, mask: np.ndarray, as_of: float, name: str) -> dict:
    """The AP of what served in `mask` as the loop can estimate it from the labels known at `as_of`: naive, on the
    labelled rows; weighted by 1 / probability (exploration); beside the truth (the simulator's). All three over
    the traffic exploration reaches (`training_set.explorable`: not the blocks no draw could turn)."""
    from fraudloop.models.metrics import weighted_ap
    from fraudloop.pipelines.retraining.training_set import UNKNOWN, explorable, known_outcomes, observation_weights
    from sklearn.metrics import average_precision_score

    part = decisions[mask & explorable(decisions["decision"], decisions["propensity"].fillna(1.0))]  # its scope
    if part.empty or not part["is_fraud"].any():
        return {"period": name, "transactions": int(len(part))}
    known = known_outcomes(part["transaction_id"], part["decision"], labels, as_of)
    y, score, cards = known["is_fraud"].to_numpy(), part["score"].to_numpy(float), part["card_id"].to_numpy()
    labelled = (known["label_source"] != UNKNOWN).to_numpy()
    weights = observation_weights(part["decision"], part["propensity"].fillna(1.0))
    weighted = None if weights is None else weighted_ap(y, score, weights, cards, resamples=200)
    return {"period": name, "transactions": int(len(part)),
            "true": float(average_precision_score(part["is_fraud"], score)),
            "naive": float(average_precision_score(y[labelled], score[labelled])) if y[labelled].any() else None,
            "labelled_share": float(labelled.mean()),
            "weighted": None if weighted is None else {"estimate": weighted.estimate, "low": weighted.low,
                                                        "high": weighted.high,
                                                        "effective_frauds": weighted.effective_frauds},
            "explored": int((part["rule"] == EXPLORATION).sum())}


def alerts(decisions: pd.DataFrame, tags_of, capacity: float, drift_at: float) -> list[dict]:
    """Per served version, in serving order (a version that served across the drift's start, once each side):
    its thresholds, and reviews and declines a day (by the rules too) against the analysts' capacity: a promotion
    should keep the review volume where it was asked to be."""
    from fraudloop.models.thresholds import from_tags

    rows = []
    decisions = decisions.assign(drifted=decisions["event_time"] >= drift_at)
    order = decisions.groupby(["model_version", "drifted"])["event_time"].min().sort_values().index
    for version, drifted in order:
        part = decisions[(decisions["model_version"] == version) & (decisions["drifted"] == drifted)]
        days = max((part["event_time"].max() - part["event_time"].min()) / DAY, 1 / 24)
        by_rules = part["rule"].fillna("model") != "model"
        reviews = (part["decision"] == "review").to_numpy()
        rows.append({"version": version, "drifted": bool(drifted), "days": days, "transactions": len(part),
                     "thresholds": from_tags(tags_of(version)),  # what the scorer applied (None: its defaults)
                     "reviews_per_day": float(reviews.sum() / days),
                     "rule_reviews_per_day": float((reviews & by_rules.to_numpy()).sum() / days),
                     "declines_per_day": float((part["decision"] == "decline").sum() / days),
                     "capacity": capacity})
    return rows


def build_report(config: DemoConfig, stream: pd.DataFrame, cut: float, metrics: dict[str, float], runs: list[dict],
                 stream_seconds: float, total_seconds: float, ui: str, bootstrap: str, rules_path: str,
                 maturity_days: float, footprint: tuple[int, float],
                 training: list[tuple[dict[str, float], dict[str, float]]]) -> dict:
    """Every number from this run: the store, the scorer's metrics, the registry. `training`: the scorer's metrics
    at the start and the end of each retrain."""
    from fraudloop.models import registry
    from fraudloop.models.store import Store
    from fraudloop.pipelines.data.outcomes import IssuerConfig
    from fraudloop.pipelines.retraining import promote
    from fraudloop.streaming.review_queue import queue_summary

    store = Store("")
    decisions = store.decisions_between(cut - 1, float("inf"))
    costs = {v: store.serving_cost(v) for v in decisions["model_version"].unique()}
    end = cut + config.stream_days * DAY + 1  # the last day's last verdicts are known at its very end
    expiry_hours = (config.issuer or IssuerConfig()).review_expiry_hours  # what the simulated analysts applied
    labels_by_source = store.labels_by_source(cut, end)
    labels = store.labels_of_window(cut - 1, end, known_by=end)
    review_queue = queue_summary(*store.review_log(cut - expiry_hours * 3_600, end), cut, end, expiry_hours)
    store.close()
    truth = stream.set_index("transaction_id")["is_fraud"]
    decisions["is_fraud"] = decisions["transaction_id"].map(truth).fillna(False).astype(bool)
    drift_at = cut + config.drift_after_days * DAY
    first_version = decisions.loc[decisions["event_time"].idxmin(), "model_version"]
    old = (decisions["model_version"] == first_version).to_numpy()
    when = decisions["event_time"].to_numpy()
    final = decisions.loc[decisions["event_time"].idxmax(), "model_version"]
    periods = [_period(decisions, old & (when < drift_at), "before drift, first champion"),
               _period(decisions, old & (when >= drift_at), "after drift, first champion"),
               _period(decisions, (decisions["model_version"] == final).to_numpy() & (when >= drift_at),
                       "after retraining, last champion")]
    by_version = [_period(decisions, (decisions["model_version"] == v).to_numpy(), f"served by v{v}")
                  for v in sorted(decisions["model_version"].unique(), key=int)]
    mature = when <= end - maturity_days * DAY  # outcomes known by the stream's end, but for unworked blocks
    estimated = [estimates(decisions, labels, old & mature & (when < drift_at), end, "before drift, first champion"),
                 estimates(decisions, labels, mature & (when >= drift_at), end, "after drift, as served")]
    reg = registry.RegistryConfig.from_env()
    versions = []
    for version in sorted({*decisions["model_version"].unique(), *(registry.alias_version(reg, a) or "" for a in
                                                                    (registry.CHAMPION, registry.CHALLENGER))} - {""},
                          key=int):
        tags = registry.version_info(reg, version).tags
        served, cpu = costs.get(version, (0, 0.0))
        versions.append({"version": version, "validation": tags.get("validation_status", "?"),
                         "ap_difference": tags.get("validation_ap_difference", "none"),
                         "validated_against": tags.get("validated_against", "none"),
                         "training_cpu_seconds": float(tags.get("training_cpu_seconds", "nan")),
                         "training_peak_rss_mb": float(tags.get("training_peak_rss_mb", "nan")),
                         "train_frauds_by_source": json.loads(tags.get("train_frauds_by_source", "{}")),
                         "served": served, "serving_cpu_ms_per_1k": cpu / served * 1e6 if served else None})
    from fraudloop.models.store import default_url
    from fraudloop.models.thresholds import Targets
    from fraudloop.pipelines.policy.backtest import describe, run
    from fraudloop.streaming.config import ScorerConfig

    served = ScorerConfig()
    rule_mix = decisions["rule"].fillna("model").value_counts().to_dict()
    try:
        backtest = describe(run(default_url(), rules_path, cut, None, maturity_days,
                                registry.version_thresholds(reg, (served.review_threshold, served.decline_threshold))))
    except ValueError as error:  # a stream too short for its labels to mature
        backtest = f"not run: {error}"
    name = "fraud_end_to_end_seconds"
    while_training = histogram_between(name, training)
    otherwise = {key: value - while_training.get(key, 0.0) for key, value in metrics.items() if key.startswith(name)}
    latency = {part: {"transactions": int(values.get(f"{name}_count", 0)),
                      **{f"p{q * 100:.0f}_ms": (histogram_quantile(values, name, q) or 0) * 1000 for q in (0.5, 0.99)}}
               for part, values in (("all", metrics), ("while_training", while_training), ("otherwise", otherwise))}
    before, after, retrained = (p.get("average_precision") for p in periods)
    recovered = ((retrained - after) / (before - after) if None not in (before, after, retrained) and before > after
                 else None)
    # from the drift's start to the end of the day whose retrain promoted (the DAGs run as each day closes)
    promoted = [e["day"] for e in runs if e.get("retrain") == "promoted" and e["day"] > config.drift_after_days]
    return {
        "loop": "closed" if config.issuer is not None else "open",
        "labels_by_source": labels_by_source, "review_queue": review_queue,
        "days_to_first_promotion_after_drift": promoted[0] - config.drift_after_days if promoted else None,
        "recovered_share": recovered,
        "scored": int(len(decisions)), "dead_letters": int(sum(v for k, v in metrics.items()
                                                               if k.startswith("fraud_dead_letters_total"))),
        "stream_seconds": stream_seconds, "throughput": len(decisions) / stream_seconds,
        "latency": latency,
        "periods": periods, "by_version": by_version, "estimates": estimated, "runs": runs,
        "moves": promote.history(reg)[::-1],
        "versions": versions,
        "alerts": alerts(decisions, lambda v: registry.version_info(reg, v).tags, Targets().review_capacity_per_day,
                         drift_at),
        "rule_mix": {str(k): int(v) for k, v in rule_mix.items()},
        "rules_version": str(decisions["rules_version"].dropna().iloc[-1]) if decisions["rules_version"].notna().any()
        else "none", "backtest": backtest,
        "total_seconds": total_seconds, "peak_processes": footprint[0], "peak_rss_mb": footprint[1],
        "ui": ui, "bootstrap": bootstrap, "home": str(config.home),
    }


def record(r: dict, path: Path, command: str) -> None:
    """The report as printed, in Markdown with the command that made it, and its numbers as JSON."""
    import contextlib
    import io
    import os

    from fraudloop.pipelines.benchmarks import write_record

    home = os.path.relpath(r["home"]) if not os.path.relpath(r["home"]).startswith("..") else "$FRAUDLOOP_HOME/demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_report({**r, "home": home})  # no path of this machine in a record
    kept = {k: v for k, v in r.items() if k not in ("home", "ui", "bootstrap")}  # where this run's files were
    write_record(path, f"# The end-to-end demo (one run)\n\nCommand: `{command}`\n\n```\n"
                       f"{printed.getvalue().strip()}\n```\n", kept)


def print_report(r: dict) -> None:
    print()
    print("\n================ fraudloop demo: report (all numbers measured in this run) ================")
    print(f"transactions scored: {r['scored']:,} in {r['stream_seconds']:.0f} s of streaming "
          f"({r['throughput']:,.0f} tx/s, the replay's pace); dead letters: {r['dead_letters']}")
    print("end-to-end latency (broker timestamp to decision acknowledged; the upper bounds of the histogram buckets "
          "holding p50 and p99):")
    for part, said in (("all", "all"), ("while_training", "while a retrain ran"), ("otherwise", "otherwise")):
        latency = r["latency"][part]
        if not latency["transactions"]:
            print(f"  {said:<20} none scored")
            continue
        print(f"  {said:<20} p50 <= {latency['p50_ms']:.0f} ms, p99 <= {latency['p99_ms']:.0f} ms "
              f"({latency['transactions']:,} transactions)")
    print("\nquality per period and per served version (ground truth from the simulator):")
    for p in r["periods"] + r["by_version"]:
        if "average_precision" in p:
            print(f"  {p['period']:<40} AP {p['average_precision']:.3f}  CP@100 {p['card_precision_at_100']:.3f}"
                  f"  ({p['transactions']:,} transactions, {p['frauds']:,} frauds; model v{p['versions']})")
        else:
            print(f"  {p['period']:<40} not measured ({p['transactions']:,} transactions, {p['frauds']} frauds)")
    if r["recovered_share"] is not None:
        print(f"  share of the AP lost to the drift that retraining recovered: {r['recovered_share']:.0%}")
    print("\nthe served AP as the loop estimates it from the labels known at the end (mature days), against the truth "
          "(traffic but the blocks no draw could turn: a rule's, one over the caps):")
    for e in r.get("estimates", []):
        if "true" not in e:
            print(f"  {e['period']:<40} not measured ({e['transactions']:,} transactions)")
            continue
        naive = "n/a" if e["naive"] is None else f"{e['naive']:.3f}"
        w = e["weighted"]
        weighted = ("none (nothing explored)" if w is None else
                    f"{w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}], {w['effective_frauds']:,.0f} effective "
                    "frauds")
        print(f"  {e['period']:<40} true {e['true']:.3f}; naive (the {e['labelled_share']:.0%} labelled) {naive}; "
              f"weighted by 1 / probability {weighted}; {e['explored']:,} approved by exploration")
    days = [f"d{e['day']}:{'drift' if e['drift'] else 'ok'}{'/' + e['retrain'] if e['retrain'] else ''}"
            for e in r["runs"]]
    print("\ndrift_monitor / retrain by simulated day: " + ", ".join(days))
    first = r["days_to_first_promotion_after_drift"]
    print("first promotion after the drift's start: " + (f"{first} days after it" if first is not None else "none"))
    from fraudloop.pipelines.retraining.validate import one_line

    for e in r["runs"]:
        if e.get("verdict"):
            print(f"  day {e['day']}: {one_line(e['verdict'])}")
    print(f"\ndecisions by what decided them (rules {r['rules_version']}): "
          + ", ".join(f"{k} {v:,}" for k, v in r["rule_mix"].items()))
    print(f"review volume against the analysts' capacity ({r['alerts'][0]['capacity']:.0f} a day, the retrain DAG's "
          "review_capacity_per_day), per served version in serving order:")
    for a in r["alerts"]:
        thresholds = (f"review >= {a['thresholds'][0]:.3f}, decline >= {a['thresholds'][1]:.3f}" if a["thresholds"]
                      else "the scorer's default thresholds")
        when = "after the drift's start" if a["drifted"] else "before the drift"
        print(f"  v{a['version']} {when} ({a['days']:.1f} days, {thresholds}): {a['reviews_per_day']:,.0f} reviews "
              f"a day ({a['rule_reviews_per_day']:,.0f} of them by rules), {a['declines_per_day']:,.0f} declines a day")
    loop = ("closed loop: labels as an issuer receives them, from the scorer's decisions" if r["loop"] == "closed"
            else "open loop: the oracle, every fraud labelled whatever was decided")
    print(f"\noutcomes ({loop}), labels known during the stream by source: "
          + (", ".join(f"{k} {v:,}" for k, v in sorted(r["labels_by_source"].items())) or "none"))
    q = r["review_queue"]
    print(f"review queue: {q['queued_per_day']:,.0f} cases queued a day, {q['worked_per_day']:,.0f} worked, "
          f"{q['expired_per_day']:,.0f} expired unworked; median {q['verdict_latency_hours_p50']:.1f} h from a "
          "transaction to its verdict")
    print("\nrules backtest on this run's store (`fraudloop rules backtest --rules examples/rules.toml`):")
    print("  " + r["backtest"].replace("\n", "\n  "))
    print("\nchampion moves:")
    for move in r["moves"]:
        before = "" if move.get("from_version") in (None, "none") else f"v{move.get('from_version')} -> "
        print(f"  {move.get('at', '?')} {move.get('action')} {before}v{move.get('to_version')}"
              f" by {move.get('actor')}: {move.get('reason', '')[:160]}")
    print("\nmodel versions: verdict (AP difference vs the champion it was validated against, 95 % interval), cost:")
    for v in r["versions"]:
        serving = f"{v['serving_cpu_ms_per_1k']:.0f} CPU ms per 1,000 scored" if v["serving_cpu_ms_per_1k"] else "-"
        against = (f" vs v{v['validated_against']} {v['ap_difference']}" if v["validated_against"] != "none"
                   else "")
        sources = ", ".join(f"{k} {n:,}" for k, n in sorted(v["train_frauds_by_source"].items())) or "?"
        print(f"  v{v['version']} ({v['validation']}{against}): learnt from frauds by {sources}; training "
              f"{v['training_cpu_seconds']:.1f} CPU s, {v['training_peak_rss_mb']:.0f} MB peak RSS; served "
              f"{v['served']:,}: {serving}")
    print(f"\ndemo took {r['total_seconds']:.0f} s, at most {r['peak_processes']} processes holding "
          f"{r['peak_rss_mb']:,.0f} MB of resident memory at the peak (summed; sampled each second). Everything is "
          f"under {r['home']}.")
    print(f"The review UI: {r['ui']}/#/models/card-fraud while the demo runs; `./dev demo --keep-running` leaves "
          f"it up, or later: FRAUDLOOP_HOME={r['home']} .venv/bin/fraudloop ui")
