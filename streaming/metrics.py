"""Prometheus metrics of one scorer process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ScorerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.transactions = Counter("fraud_transactions", "Transaction messages consumed", registry=r)
        self.labels = Counter("fraud_labels", "Label messages consumed", registry=r)
        self.decisions = Counter("fraud_decisions", "Decisions produced", ["decision"], registry=r)
        self.dead_letters = Counter("fraud_dead_letters", "Messages sent to the dead-letter topic", ["topic"],
                                    registry=r)
        self.end_to_end = Histogram("fraud_end_to_end_seconds", "Broker timestamp of a transaction to its decision "
                                    "acknowledged", buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("fraud_model_seconds_per_batch", "Model prediction per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fraud_batch_seconds", "Whole batch: decode, features, model, store, produce, "
                                       "commit", buckets=LATENCY_BUCKETS, registry=r)
        self.scoring_cpu = Counter("fraud_scoring_cpu_seconds", "CPU seconds of the Kafka loop and the scoring worker",
                                   registry=r)
        self.model_version = Gauge("fraud_model_version", "Model version in use", ["model"], registry=r)
        self.model_events = Counter("fraud_model_events", "Model swaps, compilations, refusals, registry errors",
                                    ["event"], registry=r)
        self.lag = Gauge("fraud_consumer_lag", "Messages behind the end of the assigned partitions", registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
