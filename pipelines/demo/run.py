"""The end-to-end demo: every real component on loopback, simulated days replayed at accelerated time.

Development broker (Tansu), MLflow tracking server (the review UI), the scorer as its own process,
labels arriving after their delay, drift injected part-way, and Airflow's `drift_monitor` and `retrain`
DAGs run by Airflow's own runner as each simulated day closes. The scorer hot-swaps the champion the
DAGs promote. Everything started here is stopped on exit or Ctrl-C unless asked to stay up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fraudloop.models.home import fraudloop_home
from fraudloop.models.units import DAY
from fraudloop.pipelines import shipped
from fraudloop.pipelines.data.outcomes import IssuerConfig
from fraudloop.pipelines.demo.report import build_report, histogram_quantile, print_report, scrape
from fraudloop.streaming import children
from fraudloop.streaming.config import ScorerConfig

TOPICS = tuple(ScorerConfig().topics)
# Retraining settings for a short run: 21 training days, 3 holdout days, labels mature after 4 days.
RETRAIN = {"train_days": 21, "delay_days": 0, "test_days": 3, "maturity_days": 4.0, "num_boost_round": 300}
MALFORMED = [b"not json", b'{"schema_version": 1, "transaction_id": "X1"}',
             b'{"schema_version": 1, "transaction_id": "X2", "card_id": "C1", "terminal_id": "T1", '
             b'"timestamp": "2018-05-01T10:00:00+00:00", "amount": -5, "currency": "EUR"}',
             b'{"schema_version": 1, "transaction_id": "X3", "card_id": "C1", "terminal_id": "T1", '
             b'"timestamp": "2018-05-01T10:00:00+00:00", "amount": 5, "currency": "XTS"}']  # no rate: not guessed
RULES = shipped("examples") / "rules.toml"  # served by the demo's scorer
# The batch work (the DAG runner, its training) yields the CPU to the scorer, as it would run on other machines
# in production; on the demo's one machine they share the cores.
BATCH_NICE = 10


@dataclass(frozen=True)
class DemoConfig:
    customers: int = 2_000
    terminals: int = 4_000
    # Before the stream: the first champion's training data. Long enough that the simulated world's 30-day windows
    # (37 for the label-delayed terminal risk) have filled before its holdout, or the monitor rightly sees drift.
    history_days: int = 45
    stream_days: int = 15
    drift_after_days: int = 3  # drift starts this many days into the stream
    seconds_per_day: float = 5.0  # wall-clock seconds per simulated day while streaming
    seed: int = 0
    # Labels as an issuer receives them, from the scorer's decisions (pipelines/demo/issuer.py); None: the open
    # loop's oracle, every fraud labelled whatever was decided
    issuer: IssuerConfig | None = field(default_factory=IssuerConfig)
    # The scorer's exploration (ScorerConfig.exploration_share): what the weighted estimates of the report rest on
    exploration_share: float = 0.05
    ui_port: int = 5000
    review_port: int = 5050
    keep_running: bool = False
    home: Path = field(default_factory=lambda: fraudloop_home() / "demo")


@dataclass
class Services:
    """What the demo closes on its way out, after its child processes (streaming/children.py) are stopped."""
    closers: list = field(default_factory=list)

    def stop(self) -> None:
        children.stop_all()
        for close in reversed(self.closers):
            close()


def say(text: str) -> None:
    print(f"\r\033[K[demo] {text}", flush=True)


def wait_http(url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer on {url} within {timeout:.0f} s")


def start_mlflow(config: DemoConfig, services: Services) -> str:
    from fraudloop.models import registry

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", config.ui_port)) == 0:
            raise RuntimeError(f"port {config.ui_port} is already in use: choose another with --ui-port")
    reg = registry.RegistryConfig.from_env(config.home)
    log = open(config.home / "mlflow-server.log", "ab")  # noqa: SIM115 (closed with the services)
    services.closers.append(log.close)
    server = children.start(registry.server_command(reg, "127.0.0.1", config.ui_port), name="MLflow server",
                            env=registry.server_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{config.ui_port}"
    wait_http(f"{url}/health", server.process, 90, "the MLflow server")
    return url


def start_review(config: DemoConfig, services: Services, bootstrap: str) -> str:
    """The review queue page (`fraudloop review`) over the demo's store, on the stream's own clock."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", config.review_port)) == 0:
            raise RuntimeError(f"port {config.review_port} is already in use: choose another with --review-port")
    env = {**os.environ, "FRAUDLOOP_HOME": str(config.home), "FRAUDLOOP_EVENT_CLOCK": "stream"}
    log = open(config.home / "review.log", "ab")  # noqa: SIM115 (closed with the services)
    services.closers.append(log.close)
    page = children.start([sys.executable, "-m", "fraudloop.pipelines.cli", "review", "--bootstrap", bootstrap,
                           "--port", str(config.review_port)], name="review page", env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{config.review_port}"
    wait_http(f"{url}/metrics", page.process, 60, "the review queue page")
    return url


def start_scorer(config: DemoConfig, services: Services, bootstrap: str, metrics_port: int) -> children.Child:
    served_rules = config.home / "rules.toml"
    shutil.copyfile(RULES, served_rules)
    env = {**os.environ, "FRAUDLOOP_HOME": str(config.home), "FRAUDLOOP_MODEL_CHECK_SECONDS": "2",
           "FRAUDLOOP_RULES_FILE": str(served_rules), "FRAUDLOOP_EXPLORATION_SHARE": f"{config.exploration_share:g}"}
    log = open(config.home / "scorer.log", "ab")  # noqa: SIM115 (closed with the services)
    services.closers.append(log.close)
    # a graceful stop drains its batch and writes its last serving costs: up to a minute before SIGKILL
    scorer = children.start([sys.executable, "-m", "fraudloop.pipelines.cli", "score", "--bootstrap", bootstrap,
                             "--metrics-port", str(metrics_port)], name="scorer", grace=60.0, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{metrics_port}/metrics", scorer.process, 120, "the scorer")
    return scorer


class Footprint(threading.Thread):
    """What the demo holds on this machine: every second, the processes of its tree (the broker, MLflow server,
    scorer and its worker, Airflow's runs) and their resident memory summed (shared pages counted in each)."""

    def __init__(self) -> None:
        super().__init__(name="footprint", daemon=True)
        self.stop = threading.Event()
        self.peak_processes, self.peak_rss_mb = 0, 0.0

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(1.0):
            rss, count = 0, 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss += process.memory_info().rss
                    count += 1
                except psutil.Error:  # ended meanwhile
                    continue
            self.peak_processes = max(self.peak_processes, count)
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)


class StatusLine(threading.Thread):
    """One live line while streaming: transactions/s, p99, decisions by outcome, model version."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, threading.Event()
        self.day, self.extra = "day 0", ""  # set by the demo as it goes

    def run(self) -> None:
        last, last_at, recent = 0.0, time.monotonic(), [{}] * 5
        while not self.stop.wait(1.0):
            with contextlib.suppress(OSError, ValueError):
                m = scrape(self.port)
                now = time.monotonic()
                done = m.get("fraud_transactions_total", 0.0)
                rate, last, last_at = (done - last) / (now - last_at), done, now
                p99 = histogram_quantile(m, "fraud_end_to_end_seconds", 0.99, since=recent[0])  # last 5 s
                recent = [*recent[1:], m]
                outcome = {d: int(m.get(f'fraud_decisions_total{{decision="{d}"}}', 0))
                           for d in ("approve", "review", "decline")}
                version = next((int(v) for k, v in m.items() if k.startswith("fraud_model_version")), 0)
                latency = f"<= {p99 * 1000:.0f} ms" if p99 else "-"
                print(f"\r\033[K  {self.day} | {done:>8,.0f} scored, {rate:>6,.0f} tx/s | p99 (5 s) {latency}"
                      f" | approve {outcome['approve']:,} review {outcome['review']:,} "
                      f"decline {outcome['decline']:,} | model v{version}{self.extra}", end="", flush=True)


@contextlib.contextmanager
def running(config: DemoConfig) -> Iterator[Services]:
    """Ctrl-C or SIGTERM at any point stops every process the demo started (streaming/children.py)."""
    services = Services()
    with children.interruptible():
        try:
            yield services
        finally:
            say("stopping the scorer, the review page, the DAG runner, the MLflow server and the broker")
            services.stop()


def run(config: DemoConfig) -> dict:
    """The whole system, end to end; returns the report's numbers."""
    from fraudloop.models.store import Store
    from fraudloop.pipelines import airflow_local, jobs
    from fraudloop.pipelines.data.backfill import backfill
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
    from fraudloop.pipelines.demo.issuer import Issuer
    from fraudloop.pipelines.retraining.training_set import history_rows
    from fraudloop.streaming.broker import create_topics, free_port, start_broker
    from fraudloop.streaming.replay import send_history
    from kafka import KafkaProducer

    shutil.rmtree(config.home, ignore_errors=True)
    config.home.mkdir(parents=True)
    os.environ["FRAUDLOOP_HOME"] = str(config.home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "kafka", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    footprint = Footprint()
    footprint.start()

    days = config.history_days + config.stream_days
    sim = SimulationConfig(customers=config.customers, terminals=config.terminals, days=days, seed=config.seed,
                           drift_day=config.history_days + config.drift_after_days, label_delay_days=2.0,
                           label_delay_sigma=0.5)
    history = simulate(sim, progress=True)
    labels = labels_of(history)
    if config.issuer is not None:  # closed loop: before the stream no model decided, so every fraud was charged back
        labels = labels.assign(source="chargeback")
    start = float(history["time"].min()) // DAY * DAY
    cut = start + config.history_days * DAY
    past, stream = history[history["time"] < cut], history[history["time"] >= cut]
    say(f"simulated {len(history):,} transactions over {days} days ({config.history_days} of history, "
        f"{config.stream_days} to stream; drift from day {config.drift_after_days} of the stream)")

    with running(config) as services:
        broker = start_broker(log=config.home / "broker.log")
        create_topics(broker.bootstrap, TOPICS, partitions=3)
        ui = start_mlflow(config, services)
        say(f"broker on {broker.bootstrap}; MLflow server (review UI) on {ui}")

        store = Store("")
        backfill(store, past, history_rows(past, labels, progress=True), labels[labels["known_at"] <= cut])
        store.close()
        first = jobs.build_training_set(cut, maturity_days=RETRAIN["maturity_days"], name="first")
        model = jobs.train_challenger(first["uri"], **RETRAIN, trained_by="fraudloop demo")
        verdict = jobs.validate_version(first["uri"], model["version"])
        if not verdict["passed"]:
            raise RuntimeError(f"the first model failed validation: {verdict['summary']}")
        jobs.promote_version(model["version"], reason="first model: " + verdict["summary"])
        say(f"first champion: version {model['version']} (holdout AP {model['average_precision']:.3f}, "
            f"{model['training_cpu_seconds']:.1f} CPU s to train)")
        dag_log = open(config.home / "airflow-runs.log", "ab")  # noqa: SIM115 (closed with the services)
        dags = airflow_local.Runner(config.home / "airflow", dag_log, nice=BATCH_NICE)
        services.closers += [dag_log.close, dags.stop]

        metrics_port = free_port()
        scorer = start_scorer(config, services, broker.bootstrap, metrics_port)
        review = start_review(config, services, broker.bootstrap)
        say(f"review queue page on {review}")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        for value in MALFORMED:
            producer.send("transactions", value=value)
        producer.flush()
        wait_until_consumed(metrics_port, len(MALFORMED))  # the scorer has joined its group and is consuming
        # Open loop: every fraud's label. Closed loop: of the stream's frauds, only what its decisions bring back;
        # the history's frauds were approved (no scorer then), so their chargebacks still come.
        on_the_way = labels[(labels["known_at"] >= cut) & (labels["known_at"] < start + days * DAY)]
        if config.issuer is not None:
            on_the_way = on_the_way[on_the_way["transaction_id"].isin(past["transaction_id"])]
        issuer = Issuer(stream.set_index("transaction_id")["is_fraud"], on_the_way, config.issuer, config.seed)
        store = Store("")
        services.closers.append(store.close)
        status = StatusLine(metrics_port)
        status.start()
        replay_started = time.monotonic()
        sent, runs, training = len(MALFORMED), [], []
        # A day's DAGs run while the next day streams, as the scheduler's would (on the day's asset event).
        batch_work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dags")
        services.closers.append(lambda: batch_work.shutdown(wait=False, cancel_futures=True))  # Ctrl-C: no wait
        closing = None
        for day in range(1, config.stream_days + 1):
            status.day = f"day {day:>2}/{config.stream_days}"
            lo, hi = cut + (day - 1) * DAY, cut + day * DAY
            today = stream[(stream["time"] >= lo) & (stream["time"] < hi)]
            sent_now = send_history(producer, today, issuer.due(lo, hi), transactions_topic="transactions",
                                    labels_topic="labels", speedup=DAY / config.seconds_per_day, progress=False)
            sent += sent_now["transaction"] + sent_now["label"]
            wait_until_consumed(metrics_port, sent)
            # the day's outcomes known by its end (reviews worked, cardholders' calls), from what the scorer decided
            answers = issuer.decided(store.decisions_between(lo - 0.5, hi - 0.5), lo, hi)
            sent += send_history(producer, today.iloc[:0], answers, transactions_topic="transactions",
                                 labels_topic="labels", progress=False)["label"]
            wait_until_consumed(metrics_port, sent)
            if closing is not None:
                runs.append(closing.result())
            closing = batch_work.submit(close_day, day, hi, status, dags, training)
        stream_seconds = time.monotonic() - replay_started  # the replay's pace, without the last day's DAGs
        runs.append(closing.result())
        producer.close()
        status.stop.set()
        status.join()
        metrics = scrape(metrics_port)
        if not config.keep_running:  # a graceful stop also writes the scorer's last serving costs
            scorer.stop()
        footprint.stop.set()
        report = build_report(config, stream, cut, metrics, runs, stream_seconds,
                              time.monotonic() - started, ui, broker.bootstrap, str(config.home / "rules.toml"),
                              RETRAIN["maturity_days"], (footprint.peak_processes, footprint.peak_rss_mb), training)
        print_report(report)
        if config.keep_running:
            say(f"services left running (MLflow UI {ui}, review queue {review}, broker {broker.bootstrap}); stop "
                "them with Ctrl-C")
            threading.Event().wait()  # until Ctrl-C or SIGTERM: the command then exits 130 or 143
        return report


def close_day(day: int, as_of: float, status: StatusLine, dags, training: list[tuple[dict, dict]]) -> dict:
    """The day's DAGs, as of its end: drift_monitor, then retrain if it confirmed drift (what the scheduler does on
    the asset event), while the next day streams. Training sets and the holdout are as of the day's end; the live
    gate on shadow traffic reads what the store holds when it runs, as it would in production. `training` gets the
    scorer's metrics before and after each retrain, for its latency while training ran."""
    from datetime import UTC, datetime

    from fraudloop.models.registry import RegistryConfig
    from fraudloop.pipelines.retraining.validate import challenger_verdict, one_line

    conf = {"as_of": datetime.fromtimestamp(as_of, UTC).isoformat(), "maturity_days": RETRAIN["maturity_days"]}
    status.extra = " | drift_monitor..."
    monitor = dags.run("drift_monitor", conf)
    entry = {"day": day, "drift": monitor.get("signal_retrain") == "success", "retrain": None}
    if entry["drift"]:
        status.extra = " | drift confirmed: retrain..."
        before = scrape(status.port)
        states = dags.run("retrain", {**conf, **RETRAIN})
        training.append((before, scrape(status.port)))
        entry["retrain"] = "promoted" if states.get("promote") == "success" else (
            "rejected" if states.get("reject") == "success" else "failed")
        entry["verdict"] = (challenger_verdict(RegistryConfig.from_env()) if states.get("validate") == "success"
                            else None)
    status.extra = ""
    said = ""
    if entry["retrain"]:
        said = f"; retrain: challenger {entry['retrain']}"
        if entry.get("verdict"):
            said += " " + one_line(entry["verdict"])
    say(f"day {day} closed: drift {'confirmed' if entry['drift'] else 'not seen'}{said}")
    return entry


def wait_until_consumed(port: int, expected: int, timeout: float = 120) -> None:
    """Until the scorer has consumed `expected` messages (transactions, labels, dead letters)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = scrape(port)
        if m.get("fraud_transactions_total", 0) + m.get("fraud_labels_total", 0) >= expected:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the scorer did not consume all {expected:,} messages within {timeout:.0f} s")
