"""The scorer's core, free of Kafka: a batch of raw messages in, decisions / labels / dead letters out.

The guarantee: every message ends as exactly one decision (a label: one stored label) or one dead letter,
whatever its bytes, and no message can fail its batch. Per message: decode and validate (`invalid`); the
event-time policy (`late`, `future`; streaming/event_time.py); the transaction id against those already
decided (a redelivery gets the decision already made; other content under the same id is a `conflicting
duplicate`); then the features. An unexpected exception while handling one message dead-letters that
message alone (`internal: <type>: <message>`). Per batch: one model call (a row that breaks it is retried
alone), the decision policy (streaming/rules.py: lists, rules, then the served version's thresholds), reasons
only for the transactions that are not approved (exact contributions cost far more than a prediction), and one store
write, which is also where a duplicate the state could not know of is caught.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from fraudloop.models.currency import load_rates
from fraudloop.models.features import FEATURE_NAMES, FeatureState
from fraudloop.models.schema import (
    InvalidRecord,
    Label,
    Transaction,
    decode_json,
    decode_transaction,
    parse_label,
)
from fraudloop.models.store import DecisionRow, Store, StoredDecision
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.decide import (
    APPROVE,
    DECLINE,
    EXPLORATION,
    REVIEW,
    Exploration,
    draw,
    explore,
    top_reasons,
)
from fraudloop.streaming.event_time import FUTURE, LATE
from fraudloop.streaming.model import ServingModel
from fraudloop.streaming.overload import FULL
from fraudloop.streaming.rebuild import rebuild_cards
from fraudloop.streaming.rules import MODEL, NO_RULES, RuleSet

log = logging.getLogger(__name__)
# Dead-letter reasons start with one of these, then ": " and the detail; metrics count by the kind.
INVALID, CONFLICT, INTERNAL = "invalid", "conflicting duplicate", "internal"
DEAD_LETTER_KINDS = (INVALID, LATE, FUTURE, CONFLICT, INTERNAL)
# Labels waiting for their transaction's decision (scored by another instance) are looked for this often.
PENDING_CHECK_SECONDS = 5.0
# Where the worker's CPU goes, in the order a batch goes through them (StageClock).
STAGES = ("decode", "lookup", "shared", "features", "model", "policy", "reasons", "messages", "store", "serialize")


class StageClock:
    """This thread's CPU seconds by stage, summed until taken: one clock read per stage and batch, so it stays on."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.thread_time()

    def start(self) -> None:
        self._last = time.thread_time()

    def lap(self, stage: str) -> None:
        """The CPU since the last lap (or start) was spent on `stage`."""
        now = time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {}
        return taken


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    reason: str

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class BatchResult:
    decisions: list[dict] = field(default_factory=list)  # the decision messages, in event-time order
    sources: list[Message] = field(default_factory=list)  # each decision's transaction message
    rows: list[DecisionRow] = field(default_factory=list)  # the new decisions, for the store
    labels: list[Label] = field(default_factory=list)
    label_sources: list[Message] = field(default_factory=list)  # each label's message
    dead_letters: list[DeadLetter] = field(default_factory=list)
    replayed: int = 0  # decisions given again to a redelivered transaction
    unknown_labels: int = 0  # labels of transactions this scorer has not seen (yet)
    # transactions not keyed by their card, or read from another partition than their card's history (see
    # Scorer._not_keyed_by_card), and one of them
    not_keyed: int = 0
    not_keyed_example: str = ""
    model_seconds: float = 0.0
    rules_error: str = ""  # why the rules could not decide this batch (the model's thresholds alone did)

    def decide(self, decision: dict, source: Message) -> None:
        self.decisions.append(decision)
        self.sources.append(source)


class Scorer:
    def __init__(self, config: ScorerConfig, state: FeatureState, store: Store) -> None:
        self.config, self.state, self.store = config, state, store
        self.policy = config.event_time_policy()
        self.rates = load_rates(config.rates_file)  # amounts in one currency (models/currency.py)
        self._exploration_key = config.exploration_key.get_secret_value().encode()
        self.stream_times: dict[tuple[str, int], float] = {}  # per partition read: its newest transaction time
        # The transactions partitions whose cards the state holds (None: every stored one, as rebuilt on start).
        self.owned: set[int] | None = set() if state.terminals.shared else None
        self.rebuilt, self.rebuild_seconds = 0, 0.0  # stored transactions read for partitions taken over, how long
        self._pending_checked = -math.inf  # when the pending labels were last looked for in the store
        self.clock = StageClock()

    def process(self, messages: list[Message], model: ServingModel, now: float | None = None,
                costs: dict[str, tuple[int, float]] | None = None,
                partitions: Collection[int] | None = None, rules: RuleSet = NO_RULES, mode: str = FULL,
                partition_count: int = 0) -> BatchResult:
        """Score a batch and store its new decisions and labels (with `costs`, see Store.write). `partitions`:
        the transactions partitions assigned to this scorer now (None: those it has read), of `partition_count`
        (0: not known). `rules`: the decision
        policy in force for this batch. `mode`: the service mode (streaming/overload.py) the batch is scored in.

        Each message is judged in the order it was read (the event-time policy, as a partition's stream time
        advances); what is accepted is then applied in event-time order (a label at its known_at, before a
        transaction of the same second), as the offline build does."""
        now = time.time() if now is None else now
        clock = self.clock
        clock.start()
        if partitions is not None:
            self.follow(set(partitions), partition_count, now)
        result = BatchResult()
        judged = self._judge(messages, result, now, partitions)
        self._not_keyed_by_card(judged, result)
        clock.lap("decode")
        seen = self.state.seen
        stored = self.store.decisions_for([item.transaction_id for _, item, verdict in judged
                                           if isinstance(item, Transaction)
                                           and (item.transaction_id in seen or (verdict or "").startswith(LATE))])
        batch = _Batch(model.name, mode)
        accepted: list[tuple[float, int, Message, Transaction | Label]] = []
        for message, item, verdict in judged:
            if isinstance(item, Label):
                if verdict:
                    result.dead_letters.append(DeadLetter(message, verdict))
                else:
                    accepted.append((item.known_at, 0, message, item))
            elif self._resolved(result, batch, message, item, verdict, stored):
                continue
            else:
                accepted.append((item.time, 1, message, item))
        accepted.sort(key=lambda e: (e[0], e[1]))
        wheres = self._where_scored(accepted)
        clock.lap("lookup")
        self._load_terminals(accepted, wheres)
        clock.lap("shared")
        for _, _, message, item in accepted:
            try:
                if isinstance(item, Label):
                    self._label(result, message, item, wheres.get(item.transaction_id))
                else:
                    batch.scored.append((message, item, self.state.transform(item, message.partition)))
            except Exception as error:  # noqa: BLE001 - one message never fails its batch
                _failed(result, message, error, item.transaction_id)
        if self.owned is not None and not self.owned:  # no transactions here to wait for: labels apply as read
            self.state.release_held()
        clock.lap("features")
        if batch.scored:
            self._score(result, batch, model, now, rules)
        if result.rows or result.labels or costs:
            inserted = self.store.write(result.rows, result.labels, costs)
            if inserted < len(result.rows):
                self._reconcile(result, model.name)
        clock.lap("store")
        self.state.terminals.commit(self.state.terminal_cutoff())  # after the store: see terminal_store.py
        clock.lap("shared")
        return result

    def _where_scored(self, accepted: list[tuple]) -> dict[str, tuple[str, float]]:
        """The terminal and time of the fraud labels' transactions that other instances scored (in the store);
        the labels pending here since an earlier batch are looked for again. Only with shared terminal
        aggregates: a scorer alone has recorded every transaction it scored itself."""
        state = self.state
        if not state.terminals.shared:
            return {}
        wanted = [item.transaction_id for _, _, _, item in accepted
                  if isinstance(item, Label) and item.is_fraud and item.transaction_id not in state.seen]
        if state.pending_frauds and time.monotonic() - self._pending_checked >= PENDING_CHECK_SECONDS:
            self._pending_checked = time.monotonic()
            wanted += state.pending_frauds
        return self.store.where_decided(wanted) if wanted else {}

    def _load_terminals(self, accepted: list[tuple], wheres: dict[str, tuple[str, float]]) -> None:
        """The aggregates of the terminals this batch touches, from the shared store (one round trip); labels
        pending since an earlier batch whose transaction is now found are applied first (known before it)."""
        state = self.state
        terminals = {item.terminal_id for _, _, _, item in accepted if isinstance(item, Transaction)}
        terminals.update(terminal for terminal, _ in wheres.values())
        state.terminals.load(terminals, state.terminal_cutoff())
        for tx_id, known_at in list(state.pending_frauds.items()):
            if tx_id in wheres:
                state.add_label(Label(tx_id, True, known_at), wheres[tx_id])

    def follow(self, assigned: set[int], partition_count: int = 0, now: float | None = None) -> None:
        """Hold the cards of the partitions assigned now and no others: a partition taken over gets its cards'
        stored history before its first transaction is scored; one gone is forgotten."""
        state = self.state
        if self.owned is None:  # rebuilt from the whole store: the partitions it holds cards of
            self.owned = {seen[2] for seen in state.seen.values()} - {-1}
        gone, added = self.owned - assigned, assigned - self.owned
        if gone:
            log.info("partitions %s moved away: %d cards forgotten", sorted(gone), state.drop_partitions(gone))
        if added:
            started = time.perf_counter()
            self.rebuilt += rebuild_cards(state, self.store, self.policy, added, partition_count,
                                          time.time() if now is None else now)
            self.rebuild_seconds += time.perf_counter() - started
        self.owned = assigned

    def _not_keyed_by_card(self, judged: list[tuple], result: BatchResult) -> None:
        """Count the transactions whose Kafka key is not their card id, or that come from another partition than
        their card's history. State is held by partition on the promise that the topic is keyed by card: a producer
        keying by account or terminal, or not at all, splits a card's history across instances without any error.
        The key is what can be checked whatever partitioner the producer uses (librdkafka's default hashes keys
        with CRC32, Java's and kafka-python's with murmur2)."""
        cards = self.state.cards
        for message, item, verdict in judged:
            if verdict is not None or not isinstance(item, Transaction):
                continue
            card = cards.get(item.card_id)
            moved = card is not None and 0 <= card.partition != message.partition
            if moved or message.key != item.card_id.encode():
                result.not_keyed += 1
                result.not_keyed_example = result.not_keyed_example or (
                    f"card {item.card_id} keyed {message.key!r}, read from partition {message.partition}"
                    + (f", its history from partition {card.partition}" if moved else ""))

    # -- per message -----------------------------------------------------------------------------
    def _judge(self, messages: list[Message], result: BatchResult, now: float,
               partitions: Collection[int] | None) -> list[tuple[Message, Transaction | Label, str | None]]:
        """Decode and validate each message and apply the event-time policy in the order read: (message,
        record, None or the reason it is not scored). Sets the state's hold for the batch."""
        times, topic = self.stream_times, self.config.transactions_topic
        if partitions is not None:  # a revoked partition no longer holds the state back
            self.stream_times = times = {key: t for key, t in times.items() if key[1] in partitions}
        watermark = self.state.watermark
        judged: list[tuple[Message, Transaction | Label, str | None]] = []
        for message in messages:
            try:
                if message.topic == self.config.labels_topic:
                    label = parse_label(decode_json(message.value))
                    judged.append((message, label, self.policy.label(label.known_at, watermark, now)))
                    continue
                tx = decode_transaction(message.value, self.rates)
                key = (message.topic, message.partition)
                verdict = self.policy.transaction(tx.time, times.get(key, -math.inf), watermark, now)
                if verdict is None:
                    times[key] = max(times.get(key, tx.time), tx.time)
                    watermark = max(watermark, tx.time)
                judged.append((message, tx, verdict))
            except InvalidRecord as error:
                result.dead_letters.append(DeadLetter(message, f"{INVALID}: {error}"))
            except Exception as error:  # noqa: BLE001 - one message never fails its batch
                _failed(result, message, error, "?")
        unread = partitions is not None and any((topic, p) not in times for p in partitions)
        self.state.hold = self.policy.hold(watermark, times.values(), unread)  # an unread one holds it back
        return judged

    def _resolved(self, result: BatchResult, batch: _Batch, message: Message, tx: Transaction, verdict: str | None,
                  stored: dict[str, StoredDecision]) -> bool:
        """Whether the transaction is settled without scoring: decided before, a copy of one in this batch, or
        not to be scored (the verdict)."""
        made = stored.get(tx.transaction_id)
        if made is not None:  # decided in an earlier batch: that decision stands, however late the copy
            if made.tx == tx:
                result.decide(_stored_message(batch.model_name, made, message), message)
                result.replayed += 1
            else:
                result.dead_letters.append(DeadLetter(message, _conflict(made.tx)))
            return True
        first = batch.first.get(tx.transaction_id)
        if first is not None:  # twice in this batch: decided with its first copy
            if first == tx:
                batch.copies.append((message, tx.transaction_id))
            else:
                result.dead_letters.append(DeadLetter(message, _conflict(first)))
            return True
        if verdict:
            result.dead_letters.append(DeadLetter(message, verdict))
            return True
        batch.first[tx.transaction_id] = tx
        return False

    def _label(self, result: BatchResult, message: Message, label: Label, where: tuple[str, float] | None) -> None:
        if where is None and label.transaction_id not in self.state.seen:
            result.unknown_labels += 1  # kept: it may come before its transaction, or after the state forgot it
        self.state.add_label(label, where)
        result.labels.append(label)
        result.label_sources.append(message)

    # -- per batch -------------------------------------------------------------------------------
    def _score(self, result: BatchResult, batch: _Batch, model: ServingModel, now: float, rules: RuleSet) -> None:
        features = np.array([row for _, _, row in batch.scored], dtype=float)
        started = time.perf_counter()
        scores, failed = _predict(model, features)
        result.model_seconds = time.perf_counter() - started
        self.clock.lap("model")
        columns = {name: features[:, j] for j, name in enumerate(FEATURE_NAMES)}
        columns["score"] = np.nan_to_num(scores)
        cards, terminals = [tx.card_id for _, tx, _ in batch.scored], [tx.terminal_id for _, tx, _ in batch.scored]
        thresholds = model.thresholds_or((self.config.review_threshold, self.config.decline_threshold))
        try:
            decided, by_rule = rules.decide(columns, cards, terminals, *thresholds)
        except Exception as error:  # noqa: BLE001 - a rule set that fails here never stops scoring
            log.error("rules version %s failed on a batch of %d; the model's thresholds alone decided it: %r",
                      rules.version, len(cards), error)
            result.rules_error = f"{type(error).__name__}: {error}"
            rules = NO_RULES
            decided, by_rule = rules.decide(columns, cards, terminals, *thresholds)
        propensity = None  # every decision certain: exploration is off
        if self.config.exploration_share > 0:
            decided, propensity, by_rule = _explore(decided, by_rule, columns, batch.scored, self.config.exploration,
                                                    self._exploration_key)
        self.clock.lap("policy")
        reasons = self._reasons(model, features, decided, failed, batch.mode)
        self.clock.lap("reasons")
        index: dict[str, int] = {}  # transaction id -> its decision in result.decisions
        for j, (message, tx, row) in enumerate(batch.scored):
            if j in failed:
                _failed(result, message, failed[j], tx.transaction_id)
                continue
            score, why = float(scores[j]), reasons.get(j, [])
            p = 1.0 if propensity is None else float(propensity[j])
            index[tx.transaction_id] = len(result.decisions)
            result.decide(decision_message(model.name, tx, decided[j], score, model.version, why, now, message,
                                           by_rule[j], rules.version, batch.mode, p), message)
            result.rows.append(DecisionRow(tx, score, decided[j], model.version, row, now, why, by_rule[j],
                                           rules.version, batch.mode, message.partition, p))
        for message, tx_id in batch.copies:
            if tx_id not in index:  # its first copy could not be scored either
                result.dead_letters.append(DeadLetter(message, f"{INTERNAL}: its first copy in the batch failed"))
                continue
            result.decide({**result.decisions[index[tx_id]], "latency_ms": _latency_ms(message)}, message)
            result.replayed += 1
        self.clock.lap("messages")

    def _reasons(self, model: ServingModel, features: np.ndarray, decided: list[str],
                 failed: dict[int, BaseException], mode: str) -> dict[int, list[dict]]:
        """Exact contributions of the flagged decisions: reviews and declines, or declines only when shedding."""
        wanted = (REVIEW, DECLINE) if mode == FULL else (DECLINE,)
        flagged = [j for j, d in enumerate(decided) if d in wanted and j not in failed]
        if not flagged or not self.config.reasons:
            return {}
        try:
            contributions = model.booster.predict(features[flagged], pred_contrib=True, num_threads=1)
            return {j: top_reasons(c, features[j], FEATURE_NAMES, self.config.reasons)
                    for j, c in zip(flagged, contributions, strict=True)}
        except Exception as error:  # noqa: BLE001 - a decision without reasons beats no decision
            log.error("reasons could not be computed for %d decisions: %r", len(flagged), error)
            return {}

    def _reconcile(self, result: BatchResult, model_name: str) -> None:
        """Some new decisions' ids were in the store already (written by another instance, or longer ago than
        the state remembers): the stored decision stands. A redelivery gets it; other content is dead-lettered."""
        stored = self.store.decisions_for([row.tx.transaction_id for row in result.rows])
        ours = {row.tx.transaction_id: row for row in result.rows}
        overruled = {tx_id for tx_id, row in ours.items() if tx_id in stored and (
            stored[tx_id].tx, stored[tx_id].decision, stored[tx_id].score, stored[tx_id].decided_at)
            != (row.tx, row.decision, row.score, row.decided_at)}
        decisions, sources = result.decisions, result.sources
        result.decisions, result.sources = [], []
        for decision, source in zip(decisions, sources, strict=True):
            tx_id = decision["transaction_id"]
            if tx_id not in overruled:
                result.decide(decision, source)
                continue
            made = stored[tx_id]
            log.warning("transaction %s was decided before (%s, version %s): that decision stands", tx_id,
                        made.decision, made.model_version)
            if made.tx == ours[tx_id].tx:
                result.decide(_stored_message(model_name, made, source), source)
                result.replayed += 1
            else:
                result.dead_letters.append(DeadLetter(source, _conflict(made.tx)))
        result.rows = [row for row in result.rows if row.tx.transaction_id not in overruled]
        for tx_id in overruled:  # its decider counted it
            self.state.terminals.withdraw(ours[tx_id].tx.terminal_id, ours[tx_id].tx.time)


@dataclass
class _Batch:
    """What one batch has decided so far, for the copies of a transaction within it."""

    model_name: str
    mode: str
    first: dict[str, Transaction] = field(default_factory=dict)  # the first copy of each id scored
    scored: list[tuple[Message, Transaction, list[float]]] = field(default_factory=list)
    copies: list[tuple[Message, str]] = field(default_factory=list)  # identical copies of one scored here


def _predict(model: ServingModel, features: np.ndarray) -> tuple[np.ndarray, dict[int, BaseException]]:
    """Scores of the rows; a row the model cannot score (or scores outside [0, 1]) is set apart, alone."""
    try:
        scores = np.asarray(model.predict(features), dtype=float)
        bad = ~((scores >= 0) & (scores <= 1))
        if not bad.any():
            return scores, {}
    except Exception as error:  # noqa: BLE001 - retried row by row below
        log.warning("the model failed on a batch of %d (%r); scoring it row by row", len(features), error)
        scores, bad = np.full(len(features), np.nan), np.ones(len(features), dtype=bool)
    failed: dict[int, BaseException] = {}
    for j in np.flatnonzero(bad):
        try:
            value = float(np.asarray(model.predict(features[j:j + 1]), dtype=float)[0])
            if not 0 <= value <= 1:
                raise ValueError(f"the model gave {value!r}, not a probability")
            scores[j] = value
        except Exception as error:  # noqa: BLE001
            failed[int(j)] = error
    return scores, failed


def _failed(result: BatchResult, message: Message, error: BaseException, tx_id: str) -> None:
    log.error("dead-lettered %s (topic %s, partition %d, offset %d) on an unexpected error: %r", tx_id,
              message.topic, message.partition, message.offset, error)
    result.dead_letters.append(DeadLetter(message, f"{INTERNAL}: {type(error).__name__}: {error}"))


def _latency_ms(message: Message) -> float:
    return round(time.time() * 1000 - message.timestamp_ms, 2)


def _explore(decided: list[str], by_rule: list[str], columns: dict, scored: list, exploration: Exploration,
             key: bytes) -> tuple[list[str], np.ndarray, list[str]]:
    """Exploration over the model's own flags (streaming/decide.py): the decisions taken, their probabilities, and
    EXPLORATION as what decided an explored approval. Only the model's flags (a few in a hundred) are drawn."""
    flagged = (np.asarray(decided, dtype=object) != APPROVE) & (np.asarray(by_rule, dtype=object) == MODEL)
    draws = np.ones(len(decided))
    for j in np.flatnonzero(flagged):
        draws[j] = draw(scored[j][1].transaction_id, key)
    taken, propensity = explore(decided, columns["score"], columns["amount"], draws, exploration, flagged)
    rules = list(by_rule)
    for j in np.flatnonzero(np.asarray(taken, dtype=object) != np.asarray(decided, dtype=object)):
        rules[j] = EXPLORATION
    return taken, propensity, rules


def decision_message(model_name: str, tx: Transaction, decision: str, score: float | None, version: str,
                     reasons: list, decided_at: float, message: Message, rule: str, rules_version: str,
                     mode: str, propensity: float = 1.0) -> dict:
    """`rule`: what decided (a rule's name, a list, `model` for the version's thresholds, or `exploration`);
    `rules_version`: the rules file in force; `mode`: the service mode the decision was made in (a review made
    `lean` has no reasons); `propensity`: the probability the decision had (below 1 where exploration could have
    approved, or did)."""
    return {
        "schema_version": 1,
        "transaction_id": tx.transaction_id,
        "card_id": tx.card_id,
        "decision": decision,
        "score": None if score is None else round(score, 6),
        "model": model_name,
        "model_version": version,
        "reasons": reasons,
        "rule": rule,
        "rules_version": rules_version,
        "latency_ms": _latency_ms(message),
        "decided_at": decided_at,
        "mode": mode,
        "propensity": round(propensity, 6),
    }


def _stored_message(model_name: str, made: StoredDecision, message: Message) -> dict:
    return decision_message(model_name, made.tx, made.decision, made.score, made.model_version, made.reasons,
                            made.decided_at, message, made.rule, made.rules_version, made.mode, made.propensity)


def _conflict(first: Transaction) -> str:
    return (f"{CONFLICT}: transaction id {first.transaction_id!r} was already decided for other content "
            f"(card {first.card_id}, terminal {first.terminal_id}, time {first.time:.0f}, "
            f"amount {first.amount_cents / 100:.2f}); the first decision stands")
