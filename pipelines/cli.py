"""`fraudloop` command line: every batch job, runnable by hand, from Airflow, or from CI."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from fraudloop.models.aliases import CHAMPION, PREVIOUS_CHAMPION
from fraudloop.models.schema import InvalidRecord
from fraudloop.pipelines.data.simulate import SimulationConfig
from fraudloop.pipelines.jobs import RETENTION_DAYS, NothingToDo
from fraudloop.streaming import children

SIM_FIELDS = {
    "customers": int, "terminals": int, "days": int, "start_date": str, "seed": int,
    "label_delay_days": float, "label_delay_sigma": float, "drift_day": int,
}


def _add_simulation_options(parser: argparse.ArgumentParser, **defaults: object) -> None:
    group = parser.add_argument_group("simulation")
    for name, kind in SIM_FIELDS.items():
        default = defaults.get(name, getattr(SimulationConfig, name))
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                           help=f"(default: {default})")


def _simulation_config(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(**{name: getattr(args, name) for name in SIM_FIELDS})


def cmd_simulate(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.data.history import write_history
    from fraudloop.pipelines.data.simulate import labels_of, simulate, summary

    history = simulate(_simulation_config(args), progress=not args.quiet)
    write_history(args.out, history, labels_of(history))
    stats = summary(history)
    print(f"wrote {args.out}: {stats['transactions']:,} transactions, {stats['frauds']:,} frauds "
          f"({stats['fraud_rate']:.3%})")


def _time_arg(text: str | None, flag: str) -> float | None:
    try:
        return _as_of(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an ISO date or time (e.g. 2018-06-01 or 2018-06-01T12:00)") from None


def _as_of(text: str | None) -> float | None:
    from fraudloop.pipelines.jobs import utc_seconds

    if not text:
        return None
    try:
        return utc_seconds(text)
    except ValueError:
        raise ValueError(f"--as-of {text!r} is not an ISO date or time (e.g. 2018-06-01 or 2018-06-01T12:00)") from None


def _print_json(result: dict) -> None:
    import json

    print(json.dumps(result, indent=2, default=str))


def cmd_training_set(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs

    if args.budget_rows is not None and args.budget_rows < 1:
        raise ValueError(f"--budget-rows must be at least 1, got {args.budget_rows}")
    _print_json(jobs.build_training_set(_as_of(args.as_of), args.maturity_days, store_url=args.store,
                                        history=str(args.history) if args.history else None, out=args.out,
                                        lookback_days=args.days,
                                        budget_rows=None if args.all_rows else (args.budget_rows or -1),
                                        source=args.source))


def cmd_export(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs

    _print_json(jobs.export_offline(_as_of(args.until), store_url=args.store, every_day=args.all))


def cmd_train(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs

    path = args.training_set
    if args.history:
        path = jobs.build_training_set(None, args.maturity_days, history=str(args.history))["uri"]
    result = jobs.train_challenger(str(path), train_days=args.train_days, delay_days=args.delay_days,
                                   test_days=args.test_days, maturity_days=args.maturity_days,
                                   num_boost_round=args.num_boost_round, scheduler=args.dask_scheduler)
    _print_json(result)
    if args.promote:
        from fraudloop.pipelines.retraining.validate import describe

        verdict = jobs.validate_version(str(path), result["version"])
        print(describe(verdict))
        if not verdict["passed"]:
            raise RuntimeError(f"version {result['version']} was not promoted ({verdict['status']}); the champion "
                               "stays")
        _print_json(jobs.promote_version(result["version"], reason="fraudloop train --promote: " + verdict["summary"]))


def cmd_validate(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs
    from fraudloop.pipelines.retraining.validate import describe

    verdict = jobs.validate_version(str(args.training_set), args.version, args.margin, args.decline_precision,
                            args.review_capacity)
    print(describe(verdict))
    if args.json:
        _print_json(verdict)


def cmd_rules(args: argparse.Namespace) -> None:
    from fraudloop.models.registry import RegistryConfig, version_thresholds
    from fraudloop.pipelines import jobs
    from fraudloop.pipelines.policy import backtest as rules_backtest
    from fraudloop.pipelines.retraining.promote import default_actor
    from fraudloop.streaming.config import ScorerConfig

    if not Path(args.rules).is_file():
        raise FileNotFoundError(f"rules file {args.rules} not found")
    registry, served = RegistryConfig.from_env(), ScorerConfig.load()
    result = rules_backtest.run(jobs._store_url(args.store), args.rules, _time_arg(args.since, "--from"),
                                _time_arg(args.until, "--to"), args.maturity_days,
                                version_thresholds(registry, (served.review_threshold, served.decline_threshold)))
    print(rules_backtest.describe(result))
    if args.rules_command == "apply":
        change = rules_backtest.apply(registry, args.rules, args.to_file, args.reason, result, default_actor())
        print(f"serving rules {change['to_version']} at {args.to_file} (was {change['from_version']}); recorded in "
              f"MLflow experiment {registry.experiment}-rules-changes")
    if args.json:
        _print_json(result)


def cmd_promote(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs

    _print_json(jobs.promote_version(args.version, args.reason))


def cmd_rollback(args: argparse.Namespace) -> None:
    from fraudloop.pipelines import jobs

    _print_json(jobs.rollback(args.reason))


def cmd_drift(args: argparse.Namespace) -> None:
    import time

    from fraudloop.pipelines import jobs

    as_of = _as_of(args.as_of) or time.time()
    report = jobs.check_drift(as_of, store_url=args.store, window_days=args.window_days,
                              maturity_days=args.maturity_days, false_alarm_rate=args.false_alarm_rate,
                              cooldown_days=args.cooldown_days)
    print(f"champion v{report['champion_version']}: {report['summary']}")
    if args.json:
        _print_json(report)


def cmd_prune(args: argparse.Namespace) -> None:
    import time

    from fraudloop.pipelines import jobs

    _print_json(jobs.prune_store(_as_of(args.as_of) or time.time(), args.keep_days, store_url=args.store))


def cmd_backfill(args: argparse.Namespace) -> None:
    from fraudloop.models.store import Store
    from fraudloop.pipelines.data.backfill import backfill
    from fraudloop.pipelines.data.history import read_history
    from fraudloop.pipelines.retraining.training_set import history_rows

    history, labels = read_history(args.history)
    store = Store(args.store or "")
    try:
        written = backfill(store, history, history_rows(history, labels, progress=not args.quiet),
                           labels[labels["known_at"] <= history["time"].max()])
    finally:
        store.close()
    print(f"backfilled {written:,} transactions into the store")


def cmd_dag(args: argparse.Namespace) -> None:
    import json

    from fraudloop.pipelines import airflow_local

    conf = json.loads(args.conf) if args.conf else {}
    from fraudloop.models.home import fraudloop_home

    airflow_local.prepare(fraudloop_home() / "airflow")
    airflow_local.migrate()
    states = airflow_local.run(args.dag_id, conf)
    _print_json(states)
    _print_outcome(args.dag_id, states)
    if any(state == "failed" or state == "upstream_failed" for state in states.values()):
        raise RuntimeError(f"DAG {args.dag_id} had failed tasks")


def _print_outcome(dag_id: str, states: dict[str, str]) -> None:
    """What a DAG run decided, in words: the drift verdict, or the challenger's verdict and what became of it."""
    from fraudloop.models import registry
    from fraudloop.pipelines.retraining.validate import challenger_verdict, describe

    reg = registry.RegistryConfig.from_env()
    if dag_id == "drift_monitor" and states.get("check_drift") == "success":
        champion = registry.alias_version(reg, registry.CHAMPION)
        if champion:
            verdict = registry.version_info(reg, champion).tags.get("drift_verdict")
            print(f"drift check of champion v{champion}: {verdict}")
    if dag_id == "retrain" and states.get("validate") == "success":
        verdict = challenger_verdict(reg)
        if verdict:
            print(describe(verdict))
            print("promoted: it is the champion now" if states.get("promote") == "success"
                  else "not promoted: the champion stays")


def cmd_demo(args: argparse.Namespace) -> None:
    """The whole system on embedded defaults: broker, MLflow UI, scorer, replay with drift, DAGs, hot swap, report."""
    from fraudloop.pipelines.data.outcomes import IssuerConfig
    from fraudloop.pipelines.demo.run import DemoConfig, run

    if args.drift_after_days >= args.stream_days:
        raise ValueError("--drift-after-days must fall inside --stream-days")
    report = run(DemoConfig(customers=args.customers, terminals=args.terminals, history_days=args.history_days,
                            stream_days=args.stream_days, drift_after_days=args.drift_after_days,
                            seconds_per_day=args.seconds_per_day, seed=args.seed, ui_port=args.ui_port,
                            review_port=args.review_port, exploration_share=args.exploration_share,
                            keep_running=args.keep_running, issuer=None if args.open_loop else IssuerConfig(
                                review_capacity_per_day=args.review_capacity,
                                analyst_error_rate=args.analyst_error_rate,
                                cardholder_share=args.cardholder_share)))
    if args.record:
        from fraudloop.pipelines.demo.report import record

        shown = os.path.relpath(args.record)  # a record names no path of this machine
        shown = args.record.name if shown.startswith("..") else shown
        command = [shown if arg == str(args.record) else arg for arg in sys.argv[2:]]
        record(report, args.record, "fraudloop demo " + shlex.join(command))
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import model as benchmark

    if args.history:
        from fraudloop.pipelines.data.history import read_history

        history, labels = read_history(args.history)
        source, command = f"the history in {args.history.name}", f"fraudloop benchmark model --history {args.history}"
    else:
        from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate

        history = simulate(SimulationConfig(seed=args.seed), progress=not args.quiet)
        labels = labels_of(history)
        source = f"the project's reference simulation (seed {args.seed})"
        command = "fraudloop benchmark model" + (f" --seed {args.seed}" if args.seed else "")
    if args.test_start != benchmark.TEST_START:
        command += f" --test-start {args.test_start}"
    result = benchmark.run(history, labels, source, args.test_start, progress=not args.quiet)
    print(benchmark.to_markdown(result, command))
    if args.record:
        benchmark.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_compression(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import compression as benchmark
    from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate

    history = simulate(SimulationConfig(seed=args.seed), progress=not args.quiet)
    result = benchmark.run(history, labels_of(history), f"the project's reference simulation (seed {args.seed})",
                           progress=not args.quiet)
    command = "fraudloop benchmark compression" + (f" --seed {args.seed}" if args.seed else "")
    print(benchmark.to_markdown(result, command))
    if args.record:
        benchmark.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_import(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.data.importer import Mapping, import_history

    mapping = Mapping.load(args.mapping, args.map or [], timezone=args.timezone, currency=args.currency,
                           label_delay_days=args.label_delay_days, label_delay_sigma=args.label_delay_sigma,
                           seed=args.seed)
    print(import_history(args.file, args.out, mapping, labels=args.labels).summary())


def cmd_benchmark_retraining(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import retraining as bench

    if args.seeds < 1 or args.drift_seeds < 0 or args.check_hours <= 0:
        raise ValueError("--seeds must be at least 1, --drift-seeds not negative, --check-hours positive")
    from fraudloop.pipelines.data.outcomes import IssuerConfig

    result = bench.run(args.seeds, args.drift_seeds, args.check_hours, progress=not args.quiet,
                       closed_loop=IssuerConfig() if args.closed_loop else None)
    command = (f"fraudloop benchmark retraining --seeds {args.seeds} --drift-seeds {args.drift_seeds} "
               f"--check-hours {args.check_hours:g}" + (" --closed-loop" if args.closed_loop else ""))
    print(bench.to_markdown(result, command))
    if args.record:
        bench.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_feedback(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import feedback as bench

    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    result = bench.run(args.seeds, bench.Settings(design=args.design), progress=not args.quiet)
    command = f"fraudloop benchmark feedback --seeds {args.seeds} --design {args.design}"
    print(bench.to_markdown(result, command))
    if args.record:
        bench.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_store(args: argparse.Namespace) -> None:
    import tempfile

    from fraudloop.pipelines.benchmarks import store as bench

    if args.decisions < 1 or args.days <= 0:
        raise ValueError("--decisions must be at least 1 and --days positive")
    with tempfile.TemporaryDirectory(prefix="fraudloop-store-") as work:
        result = bench.run(args.decisions, args.days, Path(work), tuple(args.backends.split(",")))
    command = f"fraudloop benchmark store --decisions {args.decisions} --days {args.days:g}"
    print(bench.to_markdown(result, command))
    if args.record:
        bench.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_volume(args: argparse.Namespace) -> None:
    import tempfile

    from fraudloop.pipelines.benchmarks import volume as bench

    volumes = tuple(int(v) for v in args.volumes.split(","))
    if min(volumes) < 1_000:
        raise ValueError(f"--volumes must be decisions a day of at least 1,000 each, got {args.volumes}")
    with tempfile.TemporaryDirectory(prefix="fraudloop-volume-") as work:
        result = bench.run(Path(work), volumes)
    command = "fraudloop benchmark volume" + (f" --volumes {args.volumes}" if volumes != bench.VOLUMES else "")
    print(bench.to_markdown(result, command))
    if args.record:
        bench.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_broker(args: argparse.Namespace) -> None:
    """Run the development broker on loopback with the scorer's topics until Ctrl-C (or SIGTERM)."""
    import time

    from fraudloop.streaming.broker import create_topics, start_broker
    from fraudloop.streaming.config import ScorerConfig

    config = ScorerConfig.load(args.config)
    with start_broker(args.port) as broker:
        topics = config.topics
        create_topics(broker.bootstrap, topics, partitions=args.partitions)
        print(f"broker listening on {broker.bootstrap}; topics {', '.join(topics)} ({args.partitions} partitions)."
              " Ctrl-C stops it.", flush=True)
        while broker.process.poll() is None:
            time.sleep(0.5)
        raise RuntimeError(f"the broker exited with code {broker.process.returncode}")


def cmd_score(args: argparse.Namespace) -> None:
    import logging

    from fraudloop.streaming.config import ScorerConfig
    from fraudloop.streaming.service import ScorerService, stop_on_signals

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party noise off by default: kafka-python's INFO lines, MLflow's download progress bars (the
    # scoring worker inherits the environment).
    logging.getLogger("kafka").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    config = ScorerConfig.load(args.config, bootstrap_servers=args.bootstrap, metrics_port=args.metrics_port,
                               group_id=args.group_id)
    stop = stop_on_signals()
    from fraudloop.models.registry import RegistryConfig

    repartitioner = None
    if config.repartition_from:  # re-keyed by card in a process of its own, as long as the scorer runs
        import multiprocessing
        import threading

        from fraudloop.streaming import repartition

        repartitioner = multiprocessing.get_context("spawn").Process(target=repartition.run, args=(config,),
                                                                     name="fraudloop-repartition", daemon=True)
        repartitioner.start()

        def watch() -> None:  # a scorer whose input is no longer re-keyed stops, so that its supervisor sees it
            while not stop.wait(2.0):
                if not repartitioner.is_alive():
                    logging.getLogger("fraudloop.repartition").error(
                        "the repartition process exited (code %s): stopping the scorer", repartitioner.exitcode)
                    stop.set()

        threading.Thread(target=watch, name="repartition-watch", daemon=True).start()
    try:
        ScorerService(config, RegistryConfig.from_env()).run(stop)
    finally:
        if repartitioner is not None:
            repartitioner.terminate()
            repartitioner.join(10)
    if repartitioner is not None and repartitioner.exitcode not in (0, -signal.SIGTERM):
        raise SystemExit(1)


def cmd_repartition(args: argparse.Namespace) -> None:
    from fraudloop.streaming import repartition
    from fraudloop.streaming.config import ScorerConfig

    config = ScorerConfig.load(args.config, bootstrap_servers=args.bootstrap)
    if not config.repartition_from:
        raise ValueError("repartition_from is not set (the topic a producer writes without keying by card)")
    repartition.run(config)


def cmd_seed_terminals(args: argparse.Namespace) -> None:
    from fraudloop.models.store import Store
    from fraudloop.streaming.config import ScorerConfig
    from fraudloop.streaming.rebuild import seed_shared_terminals
    from fraudloop.streaming.terminal_store import RedisTerminals

    config = ScorerConfig.load(args.config, group_id=args.group_id)
    if not config.shared_state_url:
        raise ValueError("no shared_state_url set (redis://...): there is no shared store to seed")
    store, terminals = Store(config.store_url), RedisTerminals.of(config)
    try:
        count = seed_shared_terminals(store, terminals, config.event_time_policy())
    finally:
        store.close()
        terminals.close()
    print(f"seeded the aggregates of {count:,} terminals into {terminals.prefix}:*")


def cmd_group(args: argparse.Namespace) -> None:
    from fraudloop.streaming import operate
    from fraudloop.streaming.config import ScorerConfig

    config = ScorerConfig.load(args.config, bootstrap_servers=args.bootstrap, group_id=args.group_id)
    if args.action == "lag":
        rows = operate.group_lag(config)
        print(f"group {config.group_id}")
        print(f"{'topic':<24} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}")
        for row in rows:
            committed = "-" if row.committed is None else row.committed
            print(f"{row.topic:<24} {row.partition:>9} {committed:>10} {row.end:>10} {row.lag:>8}")
        return
    if args.topic is None or args.partition is None or args.to_offset is None:
        raise ValueError("skip needs --topic, --partition and --to-offset")
    copied = operate.skip(config, args.topic, args.partition, args.to_offset)
    print(f"copied {copied} messages of {args.topic}-{args.partition} to "
          f"{config.dead_letter_topic_for(args.topic)}; group {config.group_id} now reads from {args.to_offset}")


def cmd_replay(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.data.history import read_history
    from fraudloop.streaming.config import ScorerConfig
    from fraudloop.streaming.replay import send_history
    from kafka import KafkaProducer

    config = ScorerConfig.load(args.config, bootstrap_servers=args.bootstrap)
    history, labels = read_history(args.history)
    if args.limit:
        history = history.head(args.limit)
        labels = labels[labels["known_at"] <= history["time"].max()]
    producer = KafkaProducer(bootstrap_servers=config.bootstrap_servers.split(","), acks="all", linger_ms=5,
                             batch_size=256 * 1024)
    sent = send_history(producer, history, labels, transactions_topic=config.transactions_topic,
                  labels_topic=config.labels_topic, rate=args.rate, speedup=args.speedup, progress=not args.quiet)
    producer.close()
    print(f"sent {sent['transaction']:,} transactions and {sent['label']:,} labels")


def cmd_benchmark_streaming(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import streaming as benchmark

    if min(args.messages, args.repetitions, args.sweeps, args.point_seconds) <= 0:
        raise ValueError("--messages, --repetitions, --sweeps and --point-seconds must be positive")
    outcome = benchmark.run(n=args.messages, repetitions=args.repetitions, sweeps=args.sweeps,
                            point_seconds=args.point_seconds)
    command = "fraudloop benchmark streaming" + "".join(
        f" --{flag.replace('_', '-')} {getattr(args, flag):g}" for flag, default in
        (("messages", 30_000), ("repetitions", 5), ("sweeps", 3), ("point_seconds", 8.0))
        if getattr(args, flag) != default)
    print(benchmark.to_markdown(outcome, command))
    if args.record:
        benchmark.record(outcome, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_overload(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import overload as benchmark

    if args.repetitions <= 0 or args.burst_seconds <= 0 or (args.slo_rate is not None and args.slo_rate <= 0):
        raise ValueError("--repetitions, --burst-seconds and --slo-rate must be positive")
    outcome = benchmark.run(repetitions=args.repetitions, slo_rate=args.slo_rate, burst_seconds=args.burst_seconds)
    command = "fraudloop benchmark overload" + "".join(
        f" --{flag.replace('_', '-')} {getattr(args, flag):g}" for flag, default in
        (("repetitions", 3), ("slo_rate", None), ("burst_seconds", 30.0)) if getattr(args, flag) != default)
    print(benchmark.to_markdown(outcome, command))
    if args.record:
        benchmark.record(outcome, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_scale_out(args: argparse.Namespace) -> None:
    from fraudloop.pipelines.benchmarks import scale_out as benchmark

    if min(args.transactions, args.paced, args.rate) <= 0 or args.repetitions < 2:
        raise ValueError("--transactions, --paced and --rate must be positive and --repetitions at least 2 (two "
                         "single-instance runs give the parity baseline)")
    outcome = benchmark.run(n=args.transactions, paced=args.paced, rate=args.rate, repetitions=args.repetitions)
    command = "fraudloop benchmark scale-out" + "".join(
        f" --{flag} {getattr(args, flag):g}" for flag, default in
        (("transactions", 30_000), ("paced", 12_000), ("rate", 1_000.0), ("repetitions", 2))
        if getattr(args, flag) != default)
    print(benchmark.to_markdown(outcome, command))
    if args.record:
        benchmark.record(outcome, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def _size_benchmark(args: argparse.Namespace, name: str, size: str, default_size: int) -> None:
    """A benchmark run as `run(n=--<size>, repetitions=--repetitions)`: printed, and recorded with its command."""
    import importlib

    benchmark = importlib.import_module(f"fraudloop.pipelines.benchmarks.{name}")
    if getattr(args, size) <= 0 or args.repetitions <= 0:
        raise ValueError(f"--{size} and --repetitions must be positive")
    outcome = benchmark.run(n=getattr(args, size), repetitions=args.repetitions)
    command = f"fraudloop benchmark {name}" + "".join(
        f" --{flag} {getattr(args, flag)}" for flag, default in ((size, default_size), ("repetitions", 5))
        if getattr(args, flag) != default)
    print(benchmark.to_markdown(outcome, command))
    if args.record:
        benchmark.record(outcome, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")


def cmd_benchmark_codecs(args: argparse.Namespace) -> None:
    _size_benchmark(args, "codecs", "decisions", 20_000)


def cmd_benchmark_repartition(args: argparse.Namespace) -> None:
    _size_benchmark(args, "repartition", "messages", 30_000)


def cmd_soak(args: argparse.Namespace) -> None:
    import logging

    from fraudloop.pipelines.benchmarks import soak

    if args.minutes <= 0 or args.rate <= 0:
        raise ValueError("--minutes and --rate must be positive")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "kafka", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = soak.run(args.minutes, args.rate, args.seed)
    command = f"fraudloop soak --minutes {args.minutes:g}" + (f" --rate {args.rate:g}" if args.rate != 100 else "") \
        + (f" --seed {args.seed}" if args.seed else "")
    text = soak.to_markdown(result, command)
    print(text)
    if args.record:
        soak.record(result, args.record, command)
        print(f"recorded in {args.record} and {args.record.with_suffix('.json')}")
    if result.missing or result.conflicting_duplicates:
        raise RuntimeError(f"{result.missing} transactions missing, {result.conflicting_duplicates} conflicting "
                           "decisions")


def cmd_review(args: argparse.Namespace) -> None:
    from fraudloop.streaming.config import ScorerConfig
    from fraudloop.streaming.review import create_app
    from werkzeug.serving import make_server

    config = ScorerConfig.load(args.config, bootstrap_servers=args.bootstrap)
    server = make_server(args.host, args.port, create_app(config), threaded=True)
    print(f"review queue on http://{args.host}:{server.port} (store {config.store_url.split('://')[0] or 'sqlite'}, "
          f"verdicts to {config.labels_topic}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def cmd_ui(args: argparse.Namespace) -> None:
    from fraudloop.models.registry import SERVER_ENV, RegistryConfig, server_command, server_env

    command = server_command(RegistryConfig.from_env(), args.host, args.port)
    print("$ " + " ".join(f"{k}={v}" for k, v in SERVER_ENV.items()) + " " + shlex.join(command), flush=True)
    os.execve(command[0], command, server_env())


def cmd_airflow(args: argparse.Namespace) -> None:
    """A real Airflow on loopback over this project's DAGs, until Ctrl-C."""
    import socket
    import time

    from fraudloop.models.home import fraudloop_home
    from fraudloop.pipelines import airflow_local

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            raise ValueError(f"port {args.port} is already in use: choose another with --port")
    home = fraudloop_home() / "airflow"
    _, password = airflow_local.standalone_env(home, args.port)
    log_path = home / "standalone.log"
    with open(log_path, "ab") as log, airflow_local.standalone(home, args.port, log) as airflow:
        print(f"starting Airflow (api-server, scheduler, dag-processor, triggerer) over {airflow_local.DAGS_FOLDER}; "
              f"log: {log_path}", flush=True)
        deadline = time.monotonic() + 240
        while not _listening(args.port):
            if airflow.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Airflow did not start (see {log_path})")
            time.sleep(1)
        print(f"Airflow UI: http://127.0.0.1:{args.port}  login: admin / {password}\n"
              "DAGs start paused: unpause drift_monitor, retrain and store_retention in the UI. Ctrl-C stops "
              "Airflow.", flush=True)
        if airflow.process.wait():
            raise RuntimeError(f"Airflow exited with code {airflow.process.returncode} (see {log_path})")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fraudloop", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="main job: the whole system end to end on loopback, then a report")
    from fraudloop.pipelines.demo.run import DemoConfig

    demo = DemoConfig()
    p.add_argument("--customers", type=int, default=demo.customers, help=f"(default: {demo.customers})")
    p.add_argument("--terminals", type=int, default=demo.terminals, help=f"(default: {demo.terminals})")
    p.add_argument("--history-days", type=int, default=demo.history_days,
                   help=f"simulated days before the stream (default: {demo.history_days})")
    p.add_argument("--stream-days", type=int, default=demo.stream_days,
                   help=f"simulated days streamed: a shorter or longer run (default: {demo.stream_days})")
    p.add_argument("--drift-after-days", type=int, default=demo.drift_after_days,
                   help=f"drift starts this far into the stream (default: {demo.drift_after_days})")
    p.add_argument("--seconds-per-day", type=float, default=demo.seconds_per_day,
                   help=f"wall seconds per streamed day (default: {demo.seconds_per_day:g})")
    p.add_argument("--seed", type=int, default=demo.seed)
    p.add_argument("--ui-port", type=int, default=demo.ui_port, help=f"MLflow server port (default: {demo.ui_port})")
    p.add_argument("--review-port", type=int, default=demo.review_port,
                   help=f"review queue page port (default: {demo.review_port})")
    p.add_argument("--keep-running", action="store_true", help="leave the broker, scorer and MLflow UI up")
    p.add_argument("--exploration-share", type=float, default=demo.exploration_share,
                   help="share of the model's declines and reviews the scorer approves at random, with the "
                        f"probability recorded (default: {demo.exploration_share:g}; 0: none)")
    issuer = demo.issuer
    p.add_argument("--open-loop", action="store_true",
                   help="label every fraud whatever was decided (the oracle, for measuring); default: the closed "
                        "loop, labels from the scorer's decisions as an issuer receives them")
    p.add_argument("--review-capacity", type=float, default=issuer.review_capacity_per_day,
                   help=f"cases the simulated analysts work a day (default: {issuer.review_capacity_per_day:g})")
    p.add_argument("--analyst-error-rate", type=float, default=issuer.analyst_error_rate,
                   help=f"share of wrong verdicts (default: {issuer.analyst_error_rate:g})")
    p.add_argument("--cardholder-share", type=float, default=issuer.cardholder_share,
                   help=f"declines whose cardholder answers within hours (default: {issuer.cardholder_share:g})")
    p.add_argument("--record", type=Path, help="write the report here as Markdown and the JSON beside it")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="write a simulated history (Parquet) to a folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_simulation_options(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("import", help="a CSV or Parquet file of transactions (and labels) into a history folder, "
                                      "every row checked by the stream's contracts")
    p.add_argument("file", type=Path, help="transactions: .csv, .csv.gz or .parquet")
    p.add_argument("--out", type=Path, required=True, help="history folder to write")
    p.add_argument("--mapping", type=Path, help="TOML: [columns], [label_columns], [options] (see docs/import.md)")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="our field = the file's column (repeatable; over --mapping)")
    p.add_argument("--labels", type=Path, help="outcomes file: transaction_id, is_fraud, known_at")
    p.add_argument("--timezone", help="for times without an offset (default: UTC)")
    p.add_argument("--currency", help="when the file has no currency column (default: EUR)")
    p.add_argument("--label-delay-days", type=float,
                   help="fraud flag only: each label known this long after (default: 7)")
    p.add_argument("--label-delay-sigma", type=float, help="> 0: log-normal delays of this shape (default: 0)")
    p.add_argument("--seed", type=int, help="for log-normal delays (default: 0)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("training-set", help="point-in-time training set from the scorer's store (or a history)")
    p.add_argument("--as-of", help="ISO date/time; default: everything stored")
    p.add_argument("--maturity-days", type=float, default=7.0, help="label delay to wait for (default: 7)")
    p.add_argument("--store", help="store URL (default: FRAUDLOOP_STORE_URL or SQLite under FRAUDLOOP_HOME)")
    p.add_argument("--history", type=Path,
                   help="a history folder ('fraudloop simulate' or 'fraudloop import') instead of the store")
    p.add_argument("--days", type=float, help="days before --as-of read from the store (default: what the default "
                                              "split needs, plus the maturity and a day)")
    p.add_argument("--out", help="Parquet file or URI (default: FRAUDLOOP_TRAINING_SETS_URI or "
                                 "FRAUDLOOP_HOME/training-sets, latest.parquet)")
    p.add_argument("--source", choices=("offline", "store"), default="offline",
                   help="offline: export the store into the offline store (FRAUDLOOP_OFFLINE_URI) and build out of "
                        "core (default); store: read the store's window into memory")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-rows", type=int, help="rows at most: genuine traffic sampled by card and weighed "
                                                        "back (default: 2,000,000)")
    budget.add_argument("--all-rows", action="store_true", help="no budget: every row")
    p.set_defaults(func=cmd_training_set)

    p = sub.add_parser("export", help="export the scorer's store into the offline store (day-partitioned Parquet)")
    p.add_argument("--until", help="ISO date/time; default: the newest stored decision")
    p.add_argument("--store", help="store URL (default: FRAUDLOOP_STORE_URL or SQLite under FRAUDLOOP_HOME)")
    p.add_argument("--all", action="store_true", help="check every day for rows the offline store lacks, not only "
                                                      "the last week's (after a backfill or an import of old labels)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a challenger on a training set; register it (alias 'challenger')")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--training-set", help="file or URI written by 'fraudloop training-set'")
    source.add_argument("--history", type=Path, help="a history folder ('fraudloop simulate' or 'fraudloop import')")
    p.add_argument("--train-days", type=int, default=28)
    p.add_argument("--delay-days", type=int, default=7, help="gap between training and holdout")
    p.add_argument("--test-days", type=int, default=7, help="holdout days")
    p.add_argument("--maturity-days", type=float, default=7.0)
    p.add_argument("--num-boost-round", type=int, default=600)
    p.add_argument("--promote", action="store_true", help=f"validate, then move '{CHAMPION}' if it passed")
    p.add_argument("--dask-scheduler", help="train on this Dask cluster (e.g. tcp://scheduler:8786; default: "
                                            "FRAUDLOOP_DASK_SCHEDULER, else this machine)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="challenger vs champion on the challenger's holdout; verdict to MLflow")
    p.add_argument("--training-set", required=True, help="file or URI written by 'fraudloop training-set'")
    p.add_argument("--version", required=True)
    p.add_argument("--margin", type=float, default=None,
                   help="the lower bound of the AP difference's interval must exceed this (default: the gates')")
    p.add_argument("--decline-precision", type=float, help="decline where the holdout's precision is at least "
                   "this (default: models/thresholds.py)")
    p.add_argument("--review-capacity", type=float, help="reviews a day the analysts can work (default: "
                   "models/thresholds.py)")
    p.add_argument("--json", action="store_true", help="also print the verdict as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("rules", help="the decision rules: backtest a file on the stored decisions, or serve it")
    rules = p.add_subparsers(dest="rules_command", required=True)
    for name, text in (("backtest", "what a rules file would have decided on the stored decisions, per rule"),
                       ("apply", "backtest, then serve a rules file (the scorer reloads it) and record the change")):
        q = rules.add_parser(name, help=text)
        q.add_argument("--rules", required=True, help="the rules file (TOML; see examples/rules.toml)")
        q.add_argument("--from", dest="since", help="ISO date/time (default: 14 days before --to)")
        q.add_argument("--to", dest="until", help="ISO date/time (default: the newest stored transaction less the "
                       "label maturity)")
        q.add_argument("--maturity-days", type=float, default=7.0, help="label delay to wait for (default: 7)")
        q.add_argument("--store", help="store URL (default: FRAUDLOOP_STORE_URL or the local SQLite store)")
        q.add_argument("--json", action="store_true", help="also print the backtest as JSON")
        q.set_defaults(func=cmd_rules)
        if name == "apply":
            q.add_argument("--to-file", required=True, help="the path the scorer's rules_file setting names")
            q.add_argument("--reason", required=True, help="why: recorded with who and when")

    p = sub.add_parser("promote", help=f"move '{CHAMPION}' to a version that passed validation")
    p.add_argument("--version", required=True)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help=f"move '{CHAMPION}' back to '{PREVIOUS_CHAMPION}'")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("drift", help="drift and decay of the champion on recent traffic; report to MLflow")
    p.add_argument("--as-of", help="ISO date/time (default: now)")
    p.add_argument("--window-days", type=float, help="recent traffic compared (default: MonitorConfig's, 1)")
    p.add_argument("--maturity-days", type=float, help="label delay to wait for (default: 7)")
    p.add_argument("--false-alarm-rate", type=float, help="per check (default: 0.01)")
    p.add_argument("--cooldown-days", type=float, help="one retrain signal per episode per this long (default: 1)")
    p.add_argument("--store")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("airflow", help="a real Airflow on loopback (airflow standalone) over this project's DAGs")
    p.add_argument("--port", type=int, default=8080, help="the UI and API port (default: 8080)")
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("prune", help="retention: delete stored decisions (and labels) older than --keep-days")
    p.add_argument("--keep-days", type=float, default=RETENTION_DAYS, help="(default: %(default)s)")
    p.add_argument("--as-of", help="ISO date/time (default: now)")
    p.add_argument("--store")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("backfill", help="write a history (simulated or imported) into the scorer's store")
    p.add_argument("--history", type=Path, required=True,
                   help="a history folder ('fraudloop simulate' or 'fraudloop import')")
    p.add_argument("--store")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("dag", help="run a DAG once with Airflow's dag.test() runner")
    p.add_argument("dag_id", choices=["retrain", "drift_monitor", "store_retention"])
    p.add_argument("--conf", help='JSON params, e.g. \'{"as_of": "2018-06-01", "num_boost_round": 300}\'')
    p.set_defaults(func=cmd_dag)

    p = sub.add_parser("benchmark", help="benchmarks (model: the reference protocol vs the published table)")
    bench = p.add_subparsers(dest="benchmark", required=True)
    b = bench.add_parser("model", help="the handbook's protocol on the reference run (or --history); our row beside "
                                       "the published table")
    data = b.add_mutually_exclusive_group()
    data.add_argument("--seed", type=int, default=0, help="reference simulation seed (default: 0)")
    data.add_argument("--history", type=Path, help="a history folder (fraudloop simulate or fraudloop import)")
    b.add_argument("--test-start", default="2018-08-15",
                   help="training start of the latest test fold (default: the published 2018-08-15)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark)
    b = bench.add_parser("compression", help="smaller model variants on the reference protocol: AP and CP@100 "
                                             "against µs a row compiled and model size; the Pareto choice")
    b.add_argument("--seed", type=int, default=0, help="reference simulation seed (default: 0)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark_compression)
    b = bench.add_parser("retraining", help="gates and drift monitor on simulated worlds: false and true "
                                            "promotions, false alarms, detection delay, AP recovered")
    b.add_argument("--seeds", type=int, default=20, help="worlds for the promotion trials (default: 20)")
    b.add_argument("--drift-seeds", type=int, default=3, help="of those, worlds the monitor watches (default: 3)")
    b.add_argument("--closed-loop", action="store_true",
                   help="also each world with the labels an issuer receives (from the champion's decisions), "
                        "side by side with the open loop's oracle")
    b.add_argument("--check-hours", type=float, default=1.0, help="hours between drift checks (default: 1)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark_retraining)
    b = bench.add_parser("feedback", help="closed-loop worlds with drift: days to the first promotion after the "
                                          "drift, AP recovered, Pk by design, the champion's estimated AP against "
                                          "its true AP (naive and weighted), exploration's cost")
    b.add_argument("--seeds", type=int, default=10, help="worlds (default: 10)")
    b.add_argument("--design", choices=("delayed", "pooled", "aggregate"), default="pooled",
                   help="the design the product ships, whose numbers are the record's keys (default: pooled)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark_feedback)
    b = bench.add_parser("store", help="time and peak memory of the training-set build and the monitor's read on "
                                       "a large store (SQLite and a real PostgreSQL)")
    b.add_argument("--decisions", type=int, default=10_000_000)
    b.add_argument("--days", type=float, default=200)
    b.add_argument("--backends", default="sqlite,postgresql")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_store)
    b = bench.add_parser("volume", help="the batch half at 250,000 to 1,000,000 decisions a day from the offline "
                                        "store: build, train, validate (seconds, peak RSS), downsampling, Dask")
    b.add_argument("--volumes", default="250000,500000,1000000", help="decisions a day (default: %(default)s)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_volume)
    b = bench.add_parser("streaming", help="pass-through vs our scorer vs naive through the real broker: backlog "
                                           "throughput and latency against offered load, in interleaved repetitions")
    b.add_argument("--messages", type=int, default=30_000, help="messages in each backlog run (default: 30000)")
    b.add_argument("--repetitions", type=int, default=5, help="interleaved backlog repetitions, and pairs at half "
                                                              "the scorer's SLO rate (default: 5)")
    b.add_argument("--sweeps", type=int, default=3, help="sweeps of the offered-load curve (default: 3)")
    b.add_argument("--point-seconds", type=float, default=8.0, help="seconds of paced input at each offered rate "
                                                                    "(default: 8)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_streaming)
    b = bench.add_parser("overload", help="a burst through the real broker and scorer, with shedding and without: "
                                          "p99 in the burst and seconds to recover, in interleaved repetitions")
    b.add_argument("--repetitions", type=int, default=3, help="repetitions of each burst and scorer (default: 3)")
    b.add_argument("--slo-rate", type=float, help="the scorer's SLO rate, msg/s (default: benchmarks/streaming.json's)")
    b.add_argument("--burst-seconds", type=float, default=30.0, help="seconds of the burst (default: 30)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_overload)
    b = bench.add_parser("scale-out", help="1, 2 and 3 scorer instances on the real broker and Redis: CPU and state "
                                           "per instance, Redis commands per transaction, feature parity")
    b.add_argument("--transactions", type=int, default=30_000, help="transactions of the backlog, where costs are "
                                                                    "measured (default: 30000)")
    b.add_argument("--paced", type=int, default=12_000, help="transactions paced first, where parity is measured "
                                                             "(default: 12000)")
    b.add_argument("--rate", type=float, default=1_000.0, help="their rate a second (default: 1000)")
    b.add_argument("--repetitions", type=int, default=2, help="interleaved runs of each instance count (default: 2)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_scale_out)

    b = bench.add_parser("codecs", help="bytes a decision on the decisions topic and the producer's CPU a decision, "
                                        "for each Kafka codec; the scorer's default producer_codec")
    b.add_argument("--decisions", type=int, default=20_000, help="decisions a real scorer makes, then produced "
                                                                 "again with each codec (default: 20000)")
    b.add_argument("--repetitions", type=int, default=5, help="interleaved repetitions (default: 5)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_codecs)

    b = bench.add_parser("repartition", help="the repartition step (an unkeyed topic re-keyed by card): CPU a message "
                                             "and messages a second, against the same hop without re-keying")
    b.add_argument("--messages", type=int, default=30_000, help="messages in each backlog (default: 30000)")
    b.add_argument("--repetitions", type=int, default=5, help="interleaved repetitions (default: 5)")
    b.add_argument("--record", type=Path, help="also write the Markdown here and the JSON beside it")
    b.set_defaults(func=cmd_benchmark_repartition)

    p = sub.add_parser("broker", help="run the development Kafka broker (Tansu) on loopback with the topics")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--config", type=Path, help="scorer config file (TOML) naming the topics")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("score", help="run the streaming scorer (Kafka in, decisions out) until SIGTERM/Ctrl-C")
    p.add_argument("--config", type=Path, help="TOML file; FRAUDLOOP_* environment variables override it")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--group-id")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on metrics_host:PORT (default host 127.0.0.1)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("repartition", help="re-key a topic not keyed by card (repartition_from) by card into the "
                                           "transactions topic, until SIGTERM/Ctrl-C (fraudloop score does it too "
                                           "when repartition_from is set)")
    p.add_argument("--config", type=Path, help="TOML file; FRAUDLOOP_* environment variables override it")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    p.set_defaults(func=cmd_repartition)

    p = sub.add_parser("seed-terminals", help="the terminal aggregates of the store's history into the shared store "
                                              "(Redis): before the first start with shared_state_url, or after Redis "
                                              "lost them; scorers of the group stopped")
    p.add_argument("--config", type=Path, help="TOML file; FRAUDLOOP_* environment variables override it")
    p.add_argument("--group-id")
    p.set_defaults(func=cmd_seed_terminals)

    p = sub.add_parser("group", help="the scorer group: lag per partition, or (scorer stopped) skip a partition "
                                     "past an offset, the skipped messages copied to the dead-letter topic first")
    p.add_argument("action", choices=["lag", "skip"])
    p.add_argument("--config", type=Path, help="TOML file; FRAUDLOOP_* environment variables override it")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--group-id")
    p.add_argument("--topic", help="skip: the topic (transactions or labels)")
    p.add_argument("--partition", type=int, help="skip: the partition")
    p.add_argument("--to-offset", type=int, help="skip: the first offset to read after skipping")
    p.set_defaults(func=cmd_group)

    p = sub.add_parser("replay", help="produce a simulated history to the transactions and labels topics")
    p.add_argument("--history", type=Path, required=True,
                   help="a history folder ('fraudloop simulate' or 'fraudloop import')")
    p.add_argument("--config", type=Path)
    p.add_argument("--bootstrap")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="messages a second (default: as fast as possible)")
    pace.add_argument("--speedup", type=float, help="simulated seconds per real second")
    p.add_argument("--limit", type=int, help="only the first N transactions (and their labels so far)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("soak", help="a stream at a fixed rate while the scorer is killed, the broker restarted and "
                                    "poison sent; counts what went missing (must be 0)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0, help="messages a second (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", type=Path, help="write the Markdown here and the JSON beside it")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("review", help="the review queue page: analysts' fraud / genuine verdicts on the cases the "
                                      "scorer sent to review, published as labels")
    p.add_argument("--config", type=Path, help="the scorer's TOML file (store, labels topic, clock, expiry)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5050)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("ui", help="MLflow UI over the project's tracking and registry store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = f"fraudloop {argv[0]}" if argv and not argv[0].startswith("-") else "fraudloop"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a terminal shows verdicts, not bars
    try:
        args = parser().parse_args(argv)  # its defaults read the settings: a bad one is said below
        with children.interruptible():  # Ctrl-C or SIGTERM: every child of the command is stopped, exit 130
            args.func(args)
    except (FileNotFoundError, ValueError, InvalidRecord, RuntimeError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except NothingToDo as reason:  # a fresh home, no champion yet: said, and not a failure
        print(f"{name}: nothing to do: {reason}", file=sys.stderr)
    except KeyboardInterrupt as interrupted:  # the command's children are stopped by now
        return getattr(interrupted, "exit_status", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
