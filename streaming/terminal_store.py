"""Terminal aggregates in Redis, shared by every scorer instance of a consumer group.

A card's history stays with the instance that reads its partition; a terminal's aggregates cannot, since a
terminal serves cards on every partition. So they live in Redis, one hash per terminal (models/terminals.py
says what they are):
- field `<hour>`: transactions counted in that hour (HINCRBY: atomic, whichever instance scored them);
- field `f:<transaction id>`: a known fraud's time (HSETNX: a repeated label changes nothing), set by the
  instance that applied the label. A label is keyed by its transaction id, so it lands on any partition; the
  transaction's terminal and time come from the store's decision row (written by whichever instance scored it).

Per batch, `load` reads the hashes of the batch's terminals in one pipelined round trip; the features are
computed from them as the batch's own transactions and labels update them in order (one instance thus
computes exactly the offline build's values); `commit`, after the batch's decisions are in the store, sends
the batch's increments in one pipelined round trip, trims fields no window reaches any more and renews each
touched key's expiry, so a terminal gone quiet disappears. Pipelines are not MULTI/EXEC transactions, so a
Redis Cluster can shard the terminals (one key each) across nodes.

At most once, never twice: a transaction is counted by the batch that stored its decision, after it stored it; a
redelivered one finds its decision in the store and is neither scored nor counted again. A write is never
repeated: one that timed out may have been applied. What can lose a batch's counts: a process killed between the
store's commit and the write, or a write that timed out (its frauds come back with the redelivered labels, or
with the next start's). Redis down does not stop scoring: a read that fails (after a short retry) leaves the
batch without terminal aggregates (zero counts and risks, no episode: what a new terminal gets), and for 5 s
Redis is not tried again, so a batch waits for no timeout; increments whose write was refused wait in memory
for the next write that gets through.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterable

import redis
from fraudloop.models.terminals import BUCKETS_PER_DAY, TerminalHistory, Terminals, bucket, first_kept
from fraudloop.streaming.config import ScorerConfig
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)
FRAUD = b"f:"
# Keys expire this long (wall clock) after their last update: longer than any window reaches back.
EXPIRE_SECONDS = 45 * 86_400
DOWN_SECONDS = 5.0  # after a failed round trip, Redis is not tried again for this long
TRIM_MARGIN = 7 * 86_400  # fields are deleted this long after this instance's windows stop reaching them
MAX_WAITING = 1_000_000  # increments held while Redis is down; past this the oldest are given up (logged)


class RedisTerminals(Terminals):
    shared = True

    def __init__(self, url: str, prefix: str, retry_seconds: float = 2.0) -> None:
        super().__init__()
        # RESP2: with hiredis its replies parse faster than RESP3 (measured; see docs/scaling.md)
        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, protocol=2)
        self.redis.set_response_callback("HGETALL", lambda reply, **_: reply)  # the flat list: no dict to build
        self.prefix = prefix
        self.retry_seconds = retry_seconds
        self.counts: dict[tuple[str, int], int] = {}  # increments not yet in Redis
        self.frauds: dict[tuple[str, str], float] = {}  # (terminal, transaction id) -> time, not yet in Redis
        self.stale: dict[str, list] = {}  # fields read this batch that no window reaches any more
        self.newest_day: dict[str, int] = {}  # per terminal read this batch: the day of its newest hour counted
        self.ops = 0  # commands sent, for the metrics
        self.round_trips: list[float] = []  # seconds per pipelined round trip, until taken
        self.failures = 0  # round trips given up on
        self.degraded = False  # the last load failed: this batch has no terminal aggregates
        self._down_until = 0.0  # after a failure Redis is left alone until then (time.monotonic())

    @classmethod
    def of(cls, config: ScorerConfig) -> RedisTerminals:
        """The group's terminal aggregates (keys `fraudloop:<group>:terminal:<terminal id>`)."""
        return cls(config.shared_state_url, f"fraudloop:{config.group_id}:terminal")

    def key(self, terminal_id: str) -> str:
        return f"{self.prefix}:{terminal_id}"

    def load(self, terminal_ids: Iterable[str], cutoff: float) -> None:
        ids = list(dict.fromkeys(terminal_ids))
        self.entries, self.stale, self.newest_day = {}, {}, {}
        self.degraded = True
        if time.monotonic() < self._down_until:
            return
        try:
            answers = self._send([("hgetall", self.key(t)) for t in ids], retry=True)
        except redis.RedisError as error:
            self._failed("read", len(ids), error)
            return
        self.degraded = False
        # Fields are deleted only well past what this instance's windows reach: another instance may be behind.
        oldest, trimmed = first_kept(cutoff), first_kept(cutoff - TRIM_MARGIN)
        for terminal_id, flat in zip(ids, answers, strict=True):
            if not flat:
                continue
            # Hour fields are digits, so they sort before the fraud fields (f:...): C-level sorting and splitting.
            fields = sorted(zip(flat[0::2], flat[1::2], strict=True))
            split = bisect_left(fields, (FRAUD,))
            hours = sorted((int(name), int(value)) for name, value in fields[:split])
            kept = bisect_left(hours, (oldest,))
            entry = TerminalHistory([h for h, _ in hours[kept:]], [n for _, n in hours[kept:]])
            stale = [str(h) for h, _ in hours[:bisect_left(hours, (trimmed,))]]
            for name, value in fields[split:]:
                when = float(value)
                if when > cutoff:
                    entry.frauds[name[2:].decode()] = when
                elif when <= cutoff - TRIM_MARGIN:
                    stale.append(name)
            entry.fraud_times = sorted(entry.frauds.values())
            self.entries[terminal_id] = entry
            if hours:
                self.newest_day[terminal_id] = hours[-1][0] // BUCKETS_PER_DAY
            if stale:
                self.stale[terminal_id] = stale

    def count(self, terminal_id: str, time: float, cutoff: float) -> None:
        hour = bucket(time)
        self._entry(terminal_id).count(hour)
        self.counts[terminal_id, hour] = self.counts.get((terminal_id, hour), 0) + 1

    def withdraw(self, terminal_id: str, time: float) -> None:
        key = (terminal_id, bucket(time))
        left = self.counts.get(key, 0) - 1
        if left > 0:
            self.counts[key] = left
        else:
            self.counts.pop(key, None)

    def add_fraud(self, terminal_id: str, transaction_id: str, time: float, cutoff: float) -> None:
        if time > cutoff and self._entry(terminal_id).add_fraud(transaction_id, time):
            self.frauds[terminal_id, transaction_id] = time

    def commit(self, cutoff: float) -> None:
        commands: list[tuple] = [("hincrby", self.key(t), str(hour), n) for (t, hour), n in self.counts.items()]
        commands += [("hsetnx", self.key(t), f"f:{tx_id}", repr(when)) for (t, tx_id), when in self.frauds.items()]
        commands += [("hdel", self.key(t), *fields) for t, fields in self.stale.items()]
        # A key's expiry is renewed with its first count of a day (and with a fraud): an active terminal's key never
        # expires, and a batch does not pay a command per terminal for it.
        renew = {t for t, hour in self.counts if hour // BUCKETS_PER_DAY > self.newest_day.get(t, -1)}
        renew.update(t for t, _ in self.frauds)
        commands += [("expire", self.key(t), EXPIRE_SECONDS) for t in renew]
        self.stale = {}
        if not commands or time.monotonic() < self._down_until:
            return
        try:
            self._send(commands, retry=False)
        except redis.TimeoutError as error:  # maybe applied: sent again it might count twice
            self._failed("write", len(commands), error)
            log.error("%d terminal counts and %d frauds given up (the write timed out)", len(self.counts),
                      len(self.frauds))
        except redis.RedisError as error:  # refused: kept for the next write
            self._failed("write", len(commands), error)
            if len(self.counts) + len(self.frauds) > MAX_WAITING:
                log.error("%d terminal counts and %d frauds given up after Redis failed to take them",
                          len(self.counts), len(self.frauds))
                self.counts, self.frauds = {}, {}
            return
        self.counts, self.frauds = {}, {}

    def seed(self, entries: dict[str, TerminalHistory], chunk: int = 2_000) -> None:
        """Write aggregates built in a process (from the store's history: `rebuild_state`) into Redis, replacing
        what it holds for those terminals: a first start with shared aggregates, or Redis lost."""
        items = list(entries.items())
        for start in range(0, len(items), chunk):
            commands: list[tuple] = []
            for terminal_id, entry in items[start:start + chunk]:
                fields = {str(hour): n for hour, n in zip(entry.buckets, entry.counts, strict=True)}
                fields.update((f"f:{tx_id}", repr(when)) for tx_id, when in entry.frauds.items())
                if not fields:
                    continue
                commands += [("delete", self.key(terminal_id)), ("hset", self.key(terminal_id), None, None, fields),
                             ("expire", self.key(terminal_id), EXPIRE_SECONDS)]
            if commands:
                self._send(commands)

    def prune(self, cutoff: float) -> None:
        """Nothing to sweep here: the entries last one batch, and Redis expires quiet terminals."""

    def _send(self, commands: list[tuple], retry: bool = True) -> list:
        """One pipelined round trip; a read is retried briefly (a failover or a restart is seconds), a write is not
        (see the module's docstring)."""
        for attempt in Retrying(retry=retry_if_exception_type(redis.ConnectionError | redis.TimeoutError),
                                stop=stop_after_delay(self.retry_seconds if retry else 0),
                                wait=wait_exponential(0.05, max=0.5), reraise=True):
            with attempt:
                started = time.perf_counter()
                pipe = self.redis.pipeline(transaction=False)
                for name, *args in commands:
                    getattr(pipe, name)(*args)
                answers = pipe.execute()
                self.round_trips.append(time.perf_counter() - started)
                self.ops += len(commands)
                return answers
        raise AssertionError("unreachable")

    def _failed(self, what: str, commands: int, error: Exception) -> None:
        self.failures += 1
        self._down_until = time.monotonic() + DOWN_SECONDS
        log.error("Redis %s of %d commands failed (%r): scoring goes on without it", what, commands, error)

    def take_round_trips(self) -> list[float]:
        taken, self.round_trips = self.round_trips, []
        return taken

    def close(self) -> None:
        self.redis.close()
