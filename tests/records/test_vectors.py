"""Every batch captured from real producers decodes to exactly what its manifest lists, and
re-encoding its records with the same codec gives a batch kafka-python's decoder accepts."""

import hashlib

import pytest
from kafka.record.default_records import DefaultRecordBatch

from kstore.records import BatchBuilder, columns, iter_batches

from ..conftest import VECTORS, vector_files

FILES = vector_files()


def _entry(manifest, name):
    return next(f for f in manifest["files"] if f["file"] == name)


def _hex(v):
    return None if v is None else bytes.fromhex(v)


def _check_value(expected, actual):
    if "value_sha256" in expected:
        assert actual is not None
        assert len(actual) == expected["value_len"]
        assert hashlib.sha256(actual).hexdigest() == expected["value_sha256"]
    else:
        assert actual == _hex(expected["value"])


@pytest.mark.parametrize("name", FILES)
def test_vector_decodes_as_manifest_says(manifest, name):
    entry = _entry(manifest, name)
    raw = (VECTORS / name).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
    (batch,) = list(iter_batches(raw))
    batch.validate(deep=True)
    h = entry["batch"]
    assert batch.base_offset == h["base_offset"]
    assert batch.batch_length == h["batch_length"]
    assert batch.partition_leader_epoch == h["partition_leader_epoch"]
    assert batch.magic == 2
    assert f"{batch.crc:08x}" == h["crc"]
    assert batch.attributes == h["attributes"]
    assert batch.compression == h["compression"]
    assert batch.is_transactional == h["is_transactional"]
    assert batch.is_control == h["is_control"]
    assert batch.last_offset_delta == h["last_offset_delta"]
    assert batch.first_timestamp == h["first_timestamp"]
    assert batch.max_timestamp == h["max_timestamp"]
    assert batch.producer_id == h["producer_id"]
    assert batch.producer_epoch == h["producer_epoch"]
    assert batch.base_sequence == h["base_sequence"]
    assert batch.record_count == h["record_count"]

    records = batch.records()
    assert len(records) == len(entry["records"])
    for rec, exp in zip(records, entry["records"]):
        assert rec.offset == h["base_offset"] + exp["offset_delta"]
        assert rec.timestamp == exp["timestamp"]
        assert rec.key == _hex(exp["key"])
        _check_value(exp, rec.value)
        assert [list(x) for x in rec.headers] == [[k, _hex(v)] for k, v in exp["headers"]]

    cols = batch.columns()
    assert list(cols.offsets) == [r.offset for r in records]
    assert list(cols.timestamps) == [r.timestamp for r in records]
    assert cols.values() == [r.value for r in records]
    assert cols.keys() == [r.key for r in records]
    assert columns(raw).values() == cols.values()


@pytest.mark.parametrize("name", FILES)
def test_vector_reencodes_for_kafka_python(manifest, name):
    entry = _entry(manifest, name)
    raw = (VECTORS / name).read_bytes()
    (batch,) = list(iter_batches(raw))
    records = batch.records()
    b = BatchBuilder(compression=batch.compression, producer_id=batch.producer_id,
                     producer_epoch=batch.producer_epoch, base_sequence=batch.base_sequence)
    for r in records:
        assert b.append(r.value, key=r.key, headers=r.headers, timestamp=r.timestamp)
    out = b.build()
    if batch.compression == "none":
        # Uncompressed, every byte after the leader epoch must match what the client sent.
        assert out[16:] == raw[16:]
    theirs = DefaultRecordBatch(bytearray(out))
    assert theirs.validate_crc()
    decoded = list(theirs)
    assert len(decoded) == len(records)
    for mine, other in zip(records, decoded):
        assert other.offset == mine.offset
        assert other.timestamp == mine.timestamp
        assert other.key == mine.key
        assert other.value == mine.value
        assert [(k, v) for k, v in other.headers] == list(mine.headers)
    assert theirs.compression_type == batch.compression_id
