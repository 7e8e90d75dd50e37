import orjson
import pytest
from fraudloop.models.schema import (
    InvalidRecord,
    Label,
    Transaction,
    decode_json,
    decode_transaction,
    label_record,
    parse_label,
    parse_transaction,
    transaction_record,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD = {
    "schema_version": 1,
    "transaction_id": "TX1",
    "card_id": "C1",
    "terminal_id": "T1",
    "timestamp": "2018-04-01T10:00:00Z",
    "amount": 12.34,
    "currency": "EUR",
}


def test_a_valid_transaction_is_typed():
    tx = parse_transaction(GOOD)
    assert tx == Transaction("TX1", "C1", "T1", 1522576800.0, 1234)


def test_round_trip_through_the_wire_format():
    tx = Transaction("TX9", "C9", "T9", 1522576801.0, 5)
    assert parse_transaction(transaction_record(tx)) == tx
    label = Label("TX9", True, 1523000000.0)
    assert parse_label(label_record(label)) == label


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"amount": "12"}, "amount: '12' is not of type 'number'"),
        ({"amount": -1}, "amount: -1 is less than the minimum of 0"),
        ({"amount": 1.234}, "amount: 1.234 has more than two decimals"),
        ({"card_id": ""}, "card_id: '' should be non-empty"),
        ({"currency": "euro"}, "currency: 'euro' does not match"),
        ({"timestamp": "yesterday"}, "timestamp: 'yesterday' is not an RFC 3339 date-time"),
        ({"timestamp": "2018-04-01T10:00:00"}, "timestamp: '2018-04-01T10:00:00' has no UTC offset"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "outside 2000-01-01..2100-01-01"),
        ({"schema_version": 2}, "schema_version: 1 was expected"),
    ],
)
def test_each_bad_field_gets_a_specific_error(change, expected):
    with pytest.raises(InvalidRecord) as error:
        parse_transaction({**GOOD, **change})
    assert expected in str(error.value)


def test_every_bad_field_is_listed():
    record = {**GOOD, "amount": "x", "terminal_id": 5}
    del record["card_id"]
    with pytest.raises(InvalidRecord) as error:
        parse_transaction(record)
    text = " | ".join(error.value.errors)
    assert "'card_id' is a required property" in text
    assert "amount: 'x' is not of type 'number'" in text
    assert "terminal_id: 5 is not of type 'string'" in text
    assert len(error.value.errors) == 3


def test_not_an_object_is_rejected():
    with pytest.raises(InvalidRecord, match="record: .* is not of type 'object'"):
        parse_transaction([1, 2])


def test_label_errors_are_specific():
    with pytest.raises(InvalidRecord, match="is_fraud: 'yes' is not of type 'boolean'"):
        parse_label({"schema_version": 1, "transaction_id": "TX1", "is_fraud": "yes",
                     "known_at": "2018-04-02T00:00:00Z"})


# -- the fast path (msgspec) against the exact one (JSON Schema): the same verdict, the same words -------------------
def _outcome(decode, raw):
    try:
        tx = decode(raw)
        return ("ok", tx, tx.amount_cents)  # Transaction equality leaves the converted amount out: compare it too
    except InvalidRecord as error:
        return ("invalid", error.errors)


def _exact(raw):
    return parse_transaction(decode_json(raw))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 2_000_000), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 1.0, 2, 12.34, 1.005, 1_000_000, 1_000_000.01, -0.0, "1", "", "x" * 65, "EUR", "eur",
                     "XTS", "USD", "EURO", "2018-04-01T10:00:00Z", "2018-04-01T10:00:00", "2018-04-01 10:00:00+02:00",
                     "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "not a time", [], {}]),
    st.text(max_size=70))


@settings(max_examples=600, deadline=None)
@given(changes=st.dictionaries(st.sampled_from([*GOOD, "extra"]), _VALUES, max_size=3),
       dropped=st.sets(st.sampled_from(list(GOOD)), max_size=2))
def test_the_fast_path_gives_the_exact_paths_verdict_and_words(changes, dropped):
    record = {k: v for k, v in {**GOOD, **changes}.items() if k not in dropped}
    raw = orjson.dumps(record)
    assert _outcome(decode_transaction, raw) == _outcome(_exact, raw)


_GOOD_BYTES = orjson.dumps(GOOD)


@pytest.mark.parametrize("raw", [
    None, b"", b"not json", b"[1, 2]", b"3", b'"text"', b"{", b'{"a": 1}', _GOOD_BYTES + b" trailing",
    orjson.dumps({**GOOD, "schema_version": 1.0}),
    _GOOD_BYTES[:-1] + b', "note": "K\xfcche"}',  # not UTF-8, in a field the contract does not name
    _GOOD_BYTES[:-1] + b', "x": 1e400}',  # a number no double holds, ditto
    _GOOD_BYTES[:-1] + b', "x": ' + b"9" * 400 + b"}",
    _GOOD_BYTES.replace(b'"C1"', b'"K\xfcche"'),  # not UTF-8, in a field it names
    orjson.dumps({**GOOD, "currency": "EUR\n"}),  # `$` before a trailing newline
    b'{"x": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # deeper than orjson reads
])
def test_the_fast_path_on_what_is_not_a_transaction(raw):
    assert _outcome(decode_transaction, raw) == _outcome(_exact, raw)


def test_the_fast_path_accepts_a_valid_transaction():
    assert decode_transaction(orjson.dumps(GOOD)) == parse_transaction(GOOD)
