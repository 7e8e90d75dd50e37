"""Transaction and label contracts: JSON Schema files plus the checks JSON Schema cannot express.

Validation is on the scoring hot path. A transaction message is decoded and checked in one pass by msgspec
against a struct that accepts no more than the schema does; whatever it refuses goes the exact way (JSON
Schema, compiled once by fastjsonschema, then the full validator listing every bad field with a specific
message), which accepts what the schema accepts and words every refusal. So the fast path changes the cost,
never the verdict nor the words (tests/test_schema.py checks both paths agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

import fastjsonschema
import jsonschema
import msgspec
import orjson
from fraudloop.models.currency import REFERENCE_CURRENCY, Rates, load_rates

TRANSACTION_SCHEMA = "transaction.v1.json"
LABEL_SCHEMA = "label.v1.json"
# Timestamps outside this range are impossible for a live card transaction (epoch seconds).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


class InvalidRecord(ValueError):
    """A record that breaks its contract; ``errors`` has one specific message per bad field."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Transaction:
    """Two transactions are the same when their messages say the same: the converted amount is left out of the
    comparison, so a redelivery read after a change of the rates table is still recognised as one."""

    transaction_id: str
    card_id: str
    terminal_id: str
    time: float  # epoch seconds, UTC
    amount_cents: int = field(compare=False)  # in the reference currency (models/currency.py): what features see
    currency: str = REFERENCE_CURRENCY  # the message's
    original_cents: int | None = None  # the message's amount in its currency (None: amount_cents, the reference)

    def __post_init__(self) -> None:
        if self.original_cents is None:
            object.__setattr__(self, "original_cents", self.amount_cents)


# Where an outcome came from, as an issuer receives it (the schema's `source`): a chargeback on an approved
# transaction; an analyst's verdict on a reviewed one; the cardholder's answer on a declined one (fraud, or "it was
# me"). `simulation`: the open-loop oracle, every outcome whatever was decided (for measuring only).


@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    is_fraud: bool
    known_at: float  # epoch seconds, UTC
    source: str = "chargeback"  # the schema's enum (older messages' confirmed_* are read as cardholder)
    analyst: str | None = None  # who gave a `review` verdict


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("fraudloop.models").joinpath("schemas", name).read_text())


@cache
def _fast_validator(name: str):
    return fastjsonschema.compile(load_schema(name), formats={"date-time": lambda _: True})


def _schema_errors(name: str, record: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(name))
    errors = []
    for error in sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in error.absolute_path) or "record"
        errors.append(f"{field}: {error.message}")
    return errors or ["record: does not match the schema"]


def _check(name: str, record: Any) -> None:
    try:
        _fast_validator(name)(record)
    except fastjsonschema.JsonSchemaValueException:
        raise InvalidRecord(_schema_errors(name, record)) from None


def parse_time(value: str, field: str) -> float:
    """RFC 3339 with an explicit offset -> epoch seconds; naive or out-of-range times are errors."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord([f"{field}: {value!r} is not an RFC 3339 date-time"]) from None
    if parsed.tzinfo is None:
        raise InvalidRecord([f"{field}: {value!r} has no UTC offset"])
    seconds = parsed.timestamp()
    if not EARLIEST <= seconds < LATEST:
        raise InvalidRecord([f"{field}: {value!r} is outside 2000-01-01..2100-01-01"])
    return seconds


def format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def parse_transaction(record: Any, rates: Rates | None = None) -> Transaction:
    """Validate a decoded JSON object and return the typed transaction, its amount converted to the reference
    currency of `rates` (default: the packaged table), or raise InvalidRecord (a currency the table lacks too)."""
    _check(TRANSACTION_SCHEMA, record)
    return _transaction(record["transaction_id"], record["card_id"], record["terminal_id"], record["timestamp"],
                        record["amount"], record["currency"], rates)


def decode_json(raw: bytes | None) -> Any:
    """A message's JSON value; an empty message (a tombstone) or bytes that are not JSON are invalid records."""
    if raw is None:
        raise InvalidRecord(["record: empty message (tombstone)"])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRecord([f"record: not JSON ({error})"]) from None


_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _TransactionV1(msgspec.Struct, forbid_unknown_fields=True):
    """transaction.v1.json as msgspec checks it: no laxer than the schema and orjson together. Stricter is fine (the
    exact path then decides): a schema_version of 1.0, and any field the struct does not name, since msgspec skips
    unknown fields without checking their UTF-8 or their numbers' range as orjson does."""

    schema_version: Literal[1]
    transaction_id: _ID
    card_id: _ID
    terminal_id: _ID
    timestamp: str
    amount: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]  # fastjsonschema's `$`; re's would allow "\n"


_TRANSACTION_DECODER = msgspec.json.Decoder(_TransactionV1)


def decode_transaction(raw: bytes | None, rates: Rates | None = None) -> Transaction:
    """A transaction message's bytes -> the typed transaction, as `parse_transaction(decode_json(raw))` gives it
    (or the same InvalidRecord), in a fraction of its time for a valid message."""
    try:
        fast = _TRANSACTION_DECODER.decode(raw)
    # Not a valid transaction (msgspec's errors), bytes that are not UTF-8 (UnicodeDecodeError, msgspec lets it
    # through), or no bytes at all (TypeError): the exact path says why, in its words.
    except (ValueError, TypeError):
        return parse_transaction(decode_json(raw), rates)
    return _transaction(fast.transaction_id, fast.card_id, fast.terminal_id, fast.timestamp, fast.amount,
                        fast.currency, rates)


def _transaction(tx_id: str, card: str, terminal: str, timestamp: str, amount: float, currency: str,
                 rates: Rates | None) -> Transaction:
    """The checks the schema cannot express, on fields it has passed; the amount converted."""
    time = parse_time(timestamp, "timestamp")
    if abs(amount * 100 - round(amount * 100)) > 1e-6:
        raise InvalidRecord([f"amount: {amount!r} has more than two decimals"])
    rates = rates or load_rates()
    converted = rates.to_reference(amount, currency)
    if converted is None:
        raise InvalidRecord([f"currency: {currency!r} is not in the rates table (version {rates.version}, "
                             f"{len(rates.per_unit)} currencies); add its rate to convert it to {rates.reference}"])
    return Transaction(tx_id, card, terminal, time, round(converted * 100), currency, round(amount * 100))


def parse_label(record: Any) -> Label:
    _check(LABEL_SCHEMA, record)
    source = record.get("source", "chargeback")
    source = "cardholder" if source in ("confirmed_fraud", "confirmed_genuine") else source  # version 1's names
    return Label(record["transaction_id"], record["is_fraud"], parse_time(record["known_at"], "known_at"), source,
                 record.get("analyst"))


def transaction_record(tx: Transaction) -> dict[str, Any]:
    """The message of a transaction, in its own currency."""
    return {
        "schema_version": 1,
        "transaction_id": tx.transaction_id,
        "card_id": tx.card_id,
        "terminal_id": tx.terminal_id,
        "timestamp": format_time(tx.time),
        "amount": tx.original_cents / 100,
        "currency": tx.currency,
    }


def label_record(label: Label) -> dict[str, Any]:
    record = {
        "schema_version": 1,
        "transaction_id": label.transaction_id,
        "is_fraud": label.is_fraud,
        "known_at": format_time(label.known_at),
        "source": label.source,
    }
    if label.analyst is not None:
        record["analyst"] = label.analyst
    return record
