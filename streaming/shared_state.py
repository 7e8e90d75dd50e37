"""Feature state shared by several scorer instances of one consumer group, through a Redis stream.

A card stays on one partition, but a terminal serves cards on every partition, and a rebalance moves
cards from one instance to another. So every instance keeps the whole state in process (the one feature
implementation, `FeatureState`) and publishes each batch's transactions and labels to a Redis stream;
before each batch it applies what the other instances published. When partitions move, the new owner
already holds their cards' history; when an instance restarts it rebuilds from the shared store, then
applies what was published since it started reading. Applying is idempotent by transaction id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import orjson
import redis
from fraudloop.models.features import FeatureState
from fraudloop.models.schema import Label, Transaction

STREAM = "fraudloop:feature-events"


class SharedEvents:
    def __init__(self, url: str, stream: str = STREAM, max_entries: int = 1_000_000,
                 instance: str | None = None) -> None:
        self.redis = redis.Redis.from_url(url)
        self.stream = stream
        self.max_entries = max_entries  # one entry per batch; trimmed approximately
        self.instance = (instance or uuid.uuid4().hex[:12]).encode()
        self.last_id = b"0-0"

    def mark_start(self) -> None:
        """Remember the newest entry now: call before rebuilding from the store, apply from here on."""
        newest = self.redis.xrevrange(self.stream, count=1)
        self.last_id = newest[0][0] if newest else b"0-0"

    def publish(self, transactions: Sequence[Transaction], labels: Sequence[Label]) -> None:
        if not transactions and not labels:
            return
        payload = orjson.dumps({
            "t": [[t.transaction_id, t.card_id, t.terminal_id, t.time, t.amount_cents] for t in transactions],
            "l": [[lb.transaction_id, lb.is_fraud, lb.known_at] for lb in labels],
        })
        self.redis.xadd(self.stream, {"i": self.instance, "v": payload}, maxlen=self.max_entries, approximate=True)

    def apply_others(self, state: FeatureState, page: int = 500) -> int:
        """Apply the other instances' events published since the last call; returns how many."""
        applied = 0
        while True:
            answer = self.redis.xread({self.stream: self.last_id}, count=page)
            entries = answer[0][1] if answer else []
            for entry_id, fields in entries:
                self.last_id = entry_id
                if fields[b"i"] == self.instance:
                    continue
                events = orjson.loads(fields[b"v"])
                for tx_id, card, terminal, when, cents in events["t"]:
                    state.record(Transaction(tx_id, card, terminal, when, cents))
                for tx_id, is_fraud, known_at in events["l"]:
                    state.add_label(Label(tx_id, is_fraud, known_at))
                applied += len(events["t"]) + len(events["l"])
            if len(entries) < page:
                return applied

    def close(self) -> None:
        self.redis.close()
