"""Compacted topics refuse records without a key, at append, with Kafka's INVALID_RECORD."""

import pytest

import kstore
from kstore import errors
from kstore.log import PartitionLog
from kstore.records import BatchBuilder


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "data", retention_check_interval_ms=0)
    yield s
    s.close()


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete,compact"])
def test_producer_send_refuses_null_keys(store, policy):
    store.create_topic("c", config={"cleanup.policy": policy})
    with store.producer(linger_ms=0) as p:
        with pytest.raises(errors.InvalidRecordError, match="without a key") as ei:
            p.send("c", b"v")
        assert ei.value.code == 87
        p.send("c", b"v", key=b"k")
        p.send("c", None, key=b"k")  # a tombstone has a key: fine
    assert store.partition("c", 0).log_end_offset == 2


def test_send_many_refuses_null_keys_and_writes_nothing(store):
    store.create_topic("c", partitions=2, config={"cleanup.policy": "compact"})
    with store.producer() as p:
        with pytest.raises(errors.InvalidRecordError, match="nothing was written"):
            p.send_many("c", [b"a", b"b"])
        with pytest.raises(errors.InvalidRecordError):
            p.send_many("c", [b"a", b"b", b"c"], keys=[b"1", None, b"3"])
        assert p.send_many("c", [b"a", b"b"], keys=[b"1", b"2"]) == 2
    assert sum(store.partition("c", i).log_end_offset for i in range(2)) == 2


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_log_append_refuses_a_batch_with_a_null_key(tmp_path, codec):
    with PartitionLog.open(tmp_path / "c-0", {"cleanup.policy": "compact"}) as lg:
        b = BatchBuilder(compression=codec)
        b.append(b"v1", key=b"k1")
        b.append(b"v2")  # no key
        with pytest.raises(errors.InvalidRecordError, match="without a key"):
            lg.append_batch(b.build())
        assert lg.log_end_offset == 0 and lg.size_bytes == 0
    with PartitionLog.open(tmp_path / "d-0") as lg:  # delete policy: keyless is fine
        b = BatchBuilder()
        b.append(b"v2")
        assert lg.append_batch(b.build()) == (0, 0, -1)


def test_altering_a_topic_to_compact_applies_to_live_producers_and_logs(store):
    store.create_topic("t")
    with store.producer(linger_ms=0) as p:
        p.send("t", b"keyless ok")
        store.alter_topic_config("t", {"cleanup.policy": "compact"})
        with pytest.raises(errors.InvalidRecordError):
            p.send("t", b"keyless now refused")
    b = BatchBuilder()
    b.append(b"x")
    with pytest.raises(errors.InvalidRecordError):
        store.partition("t", 0).append_batch(b.build())
