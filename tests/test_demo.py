"""The README's first command, shortened: the whole system runs, reports real numbers and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from fraudloop.streaming.broker import free_port

pytestmark = pytest.mark.integration


def listening(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def test_a_short_demo_runs_end_to_end_and_cleans_up(tmp_path):
    env = {**os.environ, "FRAUDLOOP_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    ui_port, review_port = free_port(), free_port()
    done = subprocess.run(
        [sys.executable, "-m", "fraudloop.pipelines.cli", "demo", "--customers", "600", "--terminals", "1200",
         "--history-days", "30", "--stream-days", "5", "--drift-after-days", "2", "--seconds-per-day", "2",
         "--ui-port", str(ui_port), "--review-port", str(review_port), "--record", str(tmp_path / "demo.md")],
        env=env, capture_output=True, text=True,
        timeout=900)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:] + out[-3000:]
    scored = int(re.search(r"transactions scored: ([\d,]+)", out).group(1).replace(",", ""))
    assert scored > 5_000
    assert "dead letters: 4" in out  # the four malformed messages (one in a currency without a rate), none lost
    assert re.search(r"before drift, first champion\s+AP 0\.\d+\s+CP@100 0\.\d+", out)
    assert re.search(r"after retraining, last champion\s+AP 0\.\d+", out)
    assert re.search(r"served by v1\s+AP 0\.\d+", out)
    recorded = json.loads((tmp_path / "demo.json").read_text())  # the report's numbers, recorded
    assert recorded["scored"] == scored and str(tmp_path) not in (tmp_path / "demo.md").read_text()
    latency = recorded["latency"]  # split at the retrains' start and end: the two parts make the whole
    assert latency["all"]["transactions"] == latency["while_training"]["transactions"] + \
        latency["otherwise"]["transactions"] > 5_000
    assert re.search(r"while a retrain ran\s+(p50 <= \d+ ms, p99 <= \d+ ms \([\d,]+ transactions\)|none scored)", out)
    before, after, retrained = (p.get("average_precision") for p in recorded["periods"])
    assert before > after + 0.2  # the drift costs the first champion much of its AP (cards tested in bursts)
    assert "drift_monitor / retrain by simulated day: d1:" in out and "model versions: verdict" in out
    assert re.search(r"v1 \(passed\): learnt from frauds by chargeback [\d,]+; training [\d.]+ CPU s, \d+ MB peak "
                     r"RSS; served [\d,]+: \d+ CPU ms", out)
    # the closed loop (the default): labels come back only as the decisions let them, each with its source
    assert recorded["loop"] == "closed" and "closed loop: labels as an issuer receives them" in out
    sources = recorded["labels_by_source"]
    assert sources.get("review", 0) > 0 and sources.get("chargeback", 0) > 0 and "simulation" not in sources
    queue = recorded["review_queue"]
    assert 0 < queue["worked_per_day"] <= queue["queued_per_day"] + 1e-9 and queue["verdict_latency_hours_p50"] > 0
    assert "days_to_first_promotion_after_drift" in recorded
    assert re.search(r"decisions by what decided them \(rules [\w.-]+\): model [\d,]+", out)
    # each validated version serves its own thresholds, and the model's reviews (all but the rules') stay near the
    # capacity they were derived for on the first champion's calm days
    calm = re.search(r"v1 before the drift \([\d.]+ days, review >= [\d.]+, decline >= [\d.]+\): ([\d,]+) reviews a "
                     r"day \(([\d,]+) of them by rules\)", out)
    capacity = float(re.search(r"analysts' capacity \(([\d,]+) a day", out).group(1).replace(",", ""))
    reviews, by_rules = (float(group.replace(",", "")) for group in calm.groups())
    assert reviews - by_rules <= 2 * capacity
    assert "| decided by | action | decisions |" in out and "| review | " in out  # the backtest's tables
    processes, peak = re.search(r"at most (\d+) processes holding ([\d,]+) MB", out).groups()
    assert int(processes) >= 4 and 500 < float(peak.replace(",", "")) < 12_000  # broker, MLflow, scorer, worker...
    bootstrap = re.search(r"broker on (127\.0\.0\.1:\d+)", out).group(1)
    assert re.search(rf"review queue page on http://127.0.0.1:{review_port}", out)
    # nothing left running
    assert not any(listening(f"127.0.0.1:{port}") for port in (bootstrap.rsplit(":")[1], ui_port, review_port))
