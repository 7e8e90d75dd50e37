import pytest
from fraudloop.models.schema import (
    InvalidRecord,
    Label,
    Transaction,
    label_record,
    parse_label,
    parse_transaction,
    transaction_record,
)

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
