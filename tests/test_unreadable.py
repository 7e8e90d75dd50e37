"""What tells an unreadable record batch from a readable one, on batches built by the client itself (the broker
side: tests/test_producers.py)."""

from __future__ import annotations

import kafka.codec
from fraudloop.streaming.unreadable import RawBatch, Stuck, dead_letter, readable
from kafka import TopicPartition
from kafka.record.memory_records import MemoryRecordsBuilder

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch(codec: str = "none", count: int = 5) -> RawBatch:
    builder = MemoryRecordsBuilder(magic=2, compression_type=CODEC_IDS[codec], batch_size=1 << 20, offset=40)
    for i in range(count):
        builder.append(timestamp=1_000 + i, key=b"card", value=b'{"n": %d}' % i, headers=[])
    builder.close()
    return RawBatch(40, 40 + count, codec, bytes(builder.buffer()))


def test_every_codec_reads_here():
    assert all(readable(batch(codec)) for codec in CODEC_IDS)


def test_a_flipped_byte_or_a_missing_codec_is_unreadable(monkeypatch):
    good = batch()
    corrupt = bytearray(good.data)
    corrupt[-3] ^= 0xFF  # in the last record: the batch's CRC no longer matches
    assert not readable(RawBatch(40, 45, "none", bytes(corrupt)))
    assert not readable(RawBatch(40, 45, "none", good.data[:20]))  # truncated
    snappy = batch("snappy")
    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    assert not readable(snappy)


def test_the_dead_letter_is_the_batch_as_stored_with_where_and_why():
    raw = batch("lz4")
    stuck = Stuck(TopicPartition("transactions", 2), 42, "UnsupportedCodecError: no lz4")
    key, value, headers = dead_letter(stuck, raw)
    assert key is None and value == raw.data
    assert dict(headers) == {"error.reason": b"unreadable: UnsupportedCodecError: no lz4",
                             "error.kind": b"unreadable", "source.topic": b"transactions", "source.partition": b"2",
                             "source.offset": b"40", "source.unread_from": b"42", "source.next_offset": b"45",
                             "source.codec": b"lz4", "value.format": b"kafka-record-batch-v2"}
