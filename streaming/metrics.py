"""Prometheus metrics of one scorer process. Every series is there, at zero, from the start."""

from __future__ import annotations

from collections.abc import Callable

from fraudloop.streaming.decide import APPROVE, DECLINE, REVIEW
from fraudloop.streaming.overload import FULL, MODES
from fraudloop.streaming.scorer import DEAD_LETTER_KINDS, STAGES
from fraudloop.streaming.unreadable import UNREADABLE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Fine around the 50 ms SLO, so that a p99 read from the buckets says which side of it the scorer is.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHARED_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.5)
BATCH_STAGES = ("fetched", "to_worker", "scoring", "from_worker", "acked")  # fraud_batch_stage_seconds, in order
MODEL_EVENTS = ("swapped", "compiled", "compile_failed", "refused", "load_failed", "registry_error")


class ScorerMetrics:
    def __init__(self, dead_letter_topic_for: Callable[[str], str] | None = None,
                 sources: tuple[str, ...] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self.transactions = Counter("fraud_transactions", "Transaction messages consumed", registry=r)
        self.labels = Counter("fraud_labels", "Label messages consumed", registry=r)
        self.unknown_labels = Counter("fraud_labels_unknown_transaction", "Labels of transactions this scorer has "
                                      "not seen (kept: a label may come first)", registry=r)
        self.decisions = Counter("fraud_decisions", "Decisions produced", ["decision"], registry=r)
        self.replayed = Counter("fraud_decisions_replayed", "Decisions given again to a redelivered transaction "
                                "(from the store, not scored again)", registry=r)
        self.dead_letters = Counter("fraud_dead_letters", "Messages sent to a dead-letter topic, by the kind of "
                                    "reason", ["topic", "reason"], registry=r)
        self.end_to_end = Histogram("fraud_end_to_end_seconds", "Broker timestamp of a transaction to its decision "
                                    "acknowledged", buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("fraud_model_seconds_per_batch", "Model prediction per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fraud_batch_seconds", "Whole batch: decode, features, model, store, produce, "
                                       "commit", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_stages = Histogram("fraud_batch_stage_seconds", "Where a batch's oldest transaction waited, from "
                                      "its Kafka timestamp to its decision acknowledged: fetched (broker and fetch, "
                                      "to the poll), to_worker (queued behind earlier batches, the pipe), scoring, "
                                      "from_worker (the pipe back, the acking thread), acked (produce and acks)",
                                      ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.scoring_cpu = Counter("fraud_scoring_cpu_seconds", "CPU seconds of the Kafka loop and the scoring worker",
                                   registry=r)
        self.stage_cpu = Counter("fraud_worker_stage_cpu_seconds", "CPU seconds of the worker's scoring thread by "
                                 "stage: decode (decode, validate, event-time policy; labels too), lookup (earlier "
                                 "decisions), shared (the terminal aggregates read from and written to Redis, when "
                                 "shared), features, model, policy, reasons, messages, store, serialize (the "
                                 "decision messages)", ["stage"],
                                 registry=r)
        self.rule_hits = Counter("fraud_rule_hits", "Decisions by what decided them: a rule, a list, or `model` "
                                 "(the served version's thresholds)", ["rule"], registry=r)
        self.rules_events = Counter("fraud_rules_events", "Rules files loaded; refused (the set in force kept "
                                    "deciding); batches the rules failed on (the model's thresholds decided them)",
                                    ["event"], registry=r)
        self.model_version = Gauge("fraud_model_version", "Model version in use", ["model"], registry=r)
        self.model_events = Counter("fraud_model_events", "Model swaps, compilations, refusals, failed loads, "
                                    "registry errors", ["event"], registry=r)
        self.model_behind_alias = Gauge("fraud_model_behind_alias_seconds", "How long the registry alias has named a "
                                        "version other than the one served (0: they agree)", registry=r)
        self.producer_renewals = Counter("fraud_producer_renewals", "Producers replaced after a broker fault "
                                         "(what was on its way is sent again)", registry=r)
        self.topics_replaced = Counter("fraud_topics_replaced", "Input topics the broker replaced (a new topic id), "
                                       "read again from the start", registry=r)
        self.shadow_scored = Counter("fraud_shadow_scored", "Transactions also scored by the shadow model "
                                     "(never decisions)", registry=r)
        self.shadow_shed = Counter("fraud_shadow_shed", "Decisions the shadow model did not score: shed under load "
                                   "(fraud_scorer_mode lean)", registry=r)
        self.shadow_cpu = Counter("fraud_shadow_cpu_seconds", "CPU seconds the worker spent on shadow scoring "
                                  "(included in fraud_scoring_cpu_seconds)", registry=r)
        self.shadow_version = Gauge("fraud_shadow_model_version", "Shadow model version (0: none)", registry=r)
        self.mode = Gauge("fraud_scorer_mode", "The service mode (1 for the one in force): full; lean (no shadow "
                          "scoring, reasons for declines only)", ["mode"], registry=r)
        self.set_mode(FULL)
        self.partitions = Gauge("fraud_partitions_assigned", "Transactions partitions assigned to this instance",
                                registry=r)
        self.state_cards = Gauge("fraud_feature_state_cards", "Cards whose history this instance holds (those of "
                                 "its partitions)", registry=r)
        self.state_transactions = Gauge("fraud_feature_state_transactions", "Transactions the feature state "
                                        "remembers (the cards' windows; ids for the labels' reach)", registry=r)
        self.rebuilt = Counter("fraud_state_rebuilt_transactions", "Stored transactions read into the state for "
                               "partitions taken over (a rebalance)", registry=r)
        self.rebuild_seconds = Counter("fraud_state_rebuild_seconds", "Time spent reading them", registry=r)
        self.state_bytes = Gauge("fraud_feature_state_bytes", "Memory the feature state's objects take in the worker, "
                                 "measured when idle, at most every state_footprint_seconds", registry=r)
        self.shared_commands = Counter("fraud_shared_state_commands", "Commands sent to the shared terminal store "
                                       "(Redis)", registry=r)
        self.shared_round_trip = Histogram("fraud_shared_state_round_trip_seconds", "Pipelined round trips to the "
                                           "shared terminal store: one read and one write per batch",
                                           buckets=SHARED_BUCKETS, registry=r)
        self.shared_failures = Counter("fraud_shared_state_failures", "Round trips to the shared terminal store given "
                                       "up on: a batch scored without terminal aggregates, or its increments held "
                                       "for the next write", registry=r)
        self.lag = Gauge("fraud_consumer_lag", "Messages behind the end of the assigned partitions", registry=r)
        self.not_keyed = Counter("fraud_transactions_not_keyed_by_card", "Transactions whose Kafka key is not their "
                                 "card id, or read from another partition than their card's history: the producer "
                                 "keys by account or terminal, or not at all, which splits a card's history across "
                                 "instances; key it by card, or set repartition_from (docs/scorer.md)", registry=r)
        self.unreadable = Gauge("fraud_partition_unreadable_offset", "A partition whose next record batch the Kafka "
                                "client cannot read (codec, corruption, CRC), at the offset where it waits; present "
                                "only while it waits (unreadable_batches = wait)", ["topic", "partition"], registry=r)
        self.unreadable_batches = Counter("fraud_unreadable_batches", "Record batches the Kafka client could not "
                                          "read, by what was done: waited (until readable) or skipped (copied whole "
                                          "to the dead-letter topic)", ["action"], registry=r)
        for outcome in (APPROVE, REVIEW, DECLINE):
            self.decisions.labels(outcome)
        for event in MODEL_EVENTS:
            self.model_events.labels(event)
        for stage in STAGES:
            self.stage_cpu.labels(stage)
        for stage in BATCH_STAGES:
            self.batch_stages.labels(stage)
        self.rule_hits.labels("model")
        for action in ("waited", "skipped"):
            self.unreadable_batches.labels(action)
        for event in ("loaded", "refused", "error"):
            self.rules_events.labels(event)
        for source in sources:
            for kind in (*DEAD_LETTER_KINDS, UNREADABLE):
                self.dead_letters.labels(dead_letter_topic_for(source), kind)

    def set_mode(self, mode: str) -> None:
        for each in MODES:
            self.mode.labels(each).set(float(each == mode))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
