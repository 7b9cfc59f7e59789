"""Producer: where records go (Java's murmur2 and librdkafka's crc32, checked against the vectors
of kafka-storage.md 8.3, sticky null keys, explicit partitions), when they reach the log
(batch_size, linger_ms, flush), delivery callbacks, bad input, send_many in each of its input
forms, compression and headers."""

from __future__ import annotations

import numpy as np
import pytest

import kstore
from kstore import errors
from kstore.records import TIMESTAMP_LOG_APPEND

TS0 = 1_700_000_000_000

# kafka-storage.md section 8.3: key, then (murmur2 & 0x7fffffff) % 3, % 6, % 12, then
# zlib.crc32 % 3, % 6, % 12. Hard-coded from the table; not recomputed here.
VECTORS = [
    (b"", (0, 3, 9), (0, 0, 0)),
    (b"a", (1, 4, 4), (0, 3, 3)),
    (b"abc", (0, 3, 3), (0, 0, 6)),
    (b"abcd", (2, 2, 8), (1, 1, 1)),
    (b"kafka", (1, 4, 4), (2, 5, 11)),
    (b"key-1", (0, 0, 0), (2, 2, 2)),
    (b"user-42", (1, 4, 4), (1, 1, 7)),
    (b"order:2024-10-25:000017", (0, 3, 3), (1, 1, 7)),
    (bytes.fromhex("ffffffffffffff"), (1, 1, 7), (0, 3, 9)),
    ("héllo-世界".encode(), (1, 4, 4), (2, 5, 5)),
]
COUNTS = (3, 6, 12)


def read_all(lg, start=0):
    out = []
    off = start
    end = lg.log_end_offset
    while off < end:
        fs = lg.read(off)
        assert len(fs), f"nothing read at {off} (end {end})"
        for b in fs.batches():
            out += [r for r in b.records() if r.offset >= off]
            off = b.next_offset
    return out


def batches(lg):
    out = []
    off = lg.log_start_offset
    while off < lg.log_end_offset:
        for b in lg.read(off).batches():
            out.append(b)
            off = b.next_offset
    return out


def values(lg, start=0):
    return [r.value for r in read_all(lg, start)]


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "data")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# Where records go


def test_send_returns_the_partition_the_record_went_to(store):
    store.create_topic("t", partitions=4)
    with store.producer() as p:
        got = [(p.send("t", b"v%d" % i, key=b"k%d" % i), b"v%d" % i) for i in range(40)]
    for part in range(4):
        assert values(store.partition("t", part)) == [v for q, v in got if q == part]
    assert len({q for q, _ in got}) > 1


@pytest.mark.parametrize("col", range(3))
def test_keyed_records_follow_java_murmur2(store, col):
    n = COUNTS[col]
    store.create_topic("t", partitions=n)
    with store.producer(partitioner="murmur2") as p:
        for key, want, _ in VECTORS:
            assert p.send("t", key, key=key) == want[col], key
        # A str key is its UTF-8 bytes.
        assert p.send("t", b"str", key="héllo-世界") == VECTORS[-1][1][col]
    for part in range(n):
        expect = [k for k, want, _ in VECTORS if want[col] == part]
        expect += [b"str"] if VECTORS[-1][1][col] == part else []
        assert values(store.partition("t", part)) == expect


@pytest.mark.parametrize("col", range(3))
def test_consistent_random_follows_librdkafka_crc32(store, col):
    n = COUNTS[col]
    store.create_topic("t", partitions=n)
    with store.producer(partitioner="consistent_random") as p:
        for key, _, want in VECTORS:
            if key:  # an empty key is sticky under consistent_random
                assert p.send("t", key, key=key) == want[col], key
    for part in range(n):
        assert values(store.partition("t", part)) == [
            k for k, _, want in VECTORS if k and want[col] == part]


@pytest.mark.parametrize("partitioner, col", [("murmur2", 1), ("consistent_random", 2)])
def test_send_many_with_keys_uses_the_same_partitioner(store, partitioner, col):
    store.create_topic("t", partitions=6)
    keys = [v[0] for v in VECTORS if v[0]]
    vals = [b"m-" + k for k in keys]
    with store.producer(partitioner=partitioner) as p:
        assert p.send_many("t", vals, keys=keys) == len(keys)
    for part in range(6):
        expect = [b"m-" + v[0] for v in VECTORS if v[0] and v[col][1] == part]
        assert values(store.partition("t", part)) == expect


def test_null_keys_stick_to_a_partition_then_move_on(store):
    store.create_topic("t", partitions=4)
    batch_size = 2000
    with store.producer(batch_size=batch_size, linger_ms=60_000) as p:
        parts = [p.send("t", b"%019d" % i) for i in range(1000)]  # 20-byte values
    runs = []  # [partition, length]
    for q in parts:
        if runs and runs[-1][0] == q:
            runs[-1][1] += 1
        else:
            runs.append([q, 1])
    assert len(runs) >= 3, runs
    for (q, length) in runs[:-1]:
        # about batch_size bytes per partition: at least one batch worth, at most two
        assert batch_size // 84 <= length <= 2 * batch_size // 20 + 1, runs
    for part in range(4):
        assert values(store.partition("t", part)) == [
            b"%019d" % i for i, q in enumerate(parts) if q == part]


def test_explicit_partition_is_honoured(store):
    store.create_topic("t", partitions=3)
    with store.producer() as p:
        for key, want, _ in VECTORS:
            target = (want[0] + 1) % 3  # never the key's own partition
            assert p.send("t", key, key=key, partition=target) == target
    for part in range(3):
        assert values(store.partition("t", part)) == [k for k, want, _ in VECTORS
                                                      if (want[0] + 1) % 3 == part]


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_explicit_partition_out_of_range(store, bad):
    store.create_topic("t", partitions=3)
    with store.producer() as p:
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            p.send("t", b"x", partition=bad)
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            p.send_many("t", [b"x"], partition=bad)
        assert p.send("t", b"ok", partition=2) == 2
    assert [store.partition("t", q).log_end_offset for q in range(3)] == [0, 0, 1]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_values_and_keys_of_the_wrong_type_are_type_errors(store):
    store.create_topic("t")
    with store.producer(linger_ms=0) as p:
        with pytest.raises(TypeError, match="value"):
            p.send("t", 5)
        with pytest.raises(TypeError):
            p.send("t", b"v", key=1.5)
        with pytest.raises(TypeError):
            p.send("t", [b"a"])
        with pytest.raises(TypeError):
            p.send(None, b"v")
        with pytest.raises(TypeError):
            p.send_many("t", [b"a", 2])
        p.send("t", b"fine")
        p.send("t", None, key=b"tombstone")
        p.send("t", bytearray(b"ba"))
        p.send("t", memoryview(b"mv"))
        p.send("t", "str")
    assert values(store.partition("t", 0)) == [b"fine", None, b"ba", b"mv", b"str"]


@pytest.mark.parametrize("kwargs", [dict(linger_ms=-1), dict(linger_ms=1.5), dict(batch_size=0),
                                    dict(compression="brotli"), dict(partitioner="fnv9")])
def test_bad_producer_arguments(store, kwargs):
    with pytest.raises((ValueError, errors.KStoreError)):
        store.producer(**kwargs)


def test_record_over_max_message_bytes_raises_at_send(store):
    store.create_topic("t", partitions=2, config={"max.message.bytes": 1024})
    with store.producer() as p:
        with pytest.raises(errors.RecordTooLargeError, match="max.message.bytes"):
            p.send("t", b"x" * 2000, partition=0)
        with pytest.raises(errors.RecordTooLargeError):
            p.send("t", b"y" * 10, key=b"k" * 2000)
        # The producer goes on working.
        for i in range(3):
            p.send("t", b"small-%d" % i, partition=0)
        p.flush()
        assert values(store.partition("t", 0)) == [b"small-0", b"small-1", b"small-2"]


def test_records_queued_before_an_oversized_one_are_still_delivered(store):
    store.create_topic("t", config={"max.message.bytes": 1024})
    with store.producer(linger_ms=60_000) as p:
        p.send("t", b"before")
        with pytest.raises(errors.RecordTooLargeError):
            p.send("t", b"x" * 900 + b"y" * 400)
        p.send("t", b"after")
    assert values(store.partition("t", 0)) == [b"before", b"after"]


def test_batches_stay_under_a_max_message_bytes_smaller_than_batch_size(store):
    """A topic may accept smaller batches than the producer's batch_size: records that each
    fit must all be delivered (Kafka's producer splits such batches), none refused or lost."""
    store.create_topic("t", partitions=2, config={"max.message.bytes": 1024})
    with store.producer(batch_size=16384, linger_ms=60_000) as p:
        for i in range(50):
            p.send("t", b"%099d" % i, partition=0)
        assert p.send_many("t", [b"%099d" % i for i in range(50)], partition=1) == 50
    for part in (0, 1):
        lg = store.partition("t", part)
        assert values(lg) == [b"%099d" % i for i in range(50)]
        assert all(len(b) <= 1024 for b in batches(lg))


def test_send_many_with_an_oversized_record_writes_nothing(store):
    store.create_topic("t", partitions=3, config={"max.message.bytes": 1024})
    with store.producer() as p:
        # key-1 -> 0, a -> 1, abcd -> 2 (kafka-storage.md 8.3): the big one is last to go.
        with pytest.raises(errors.RecordTooLargeError):
            p.send_many("t", [b"a" * 10, b"b" * 10, b"c" * 2000], keys=[b"key-1", b"a", b"abcd"])
    assert [store.partition("t", q).log_end_offset for q in range(3)] == [0, 0, 0]


def test_send_after_close_is_closed_error(store):
    store.create_topic("t")
    p = store.producer()
    p.send("t", b"x")
    p.close()
    p.close()  # twice is fine
    assert p.closed
    with pytest.raises(errors.ClosedError):
        p.send("t", b"y")
    with pytest.raises(errors.ClosedError):
        p.send_many("t", [b"y"])
    assert values(store.partition("t", 0)) == [b"x"]


def test_store_close_flushes_its_producers(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t")
        p = s.producer(linger_ms=60_000)
        p.send("t", b"pending")
    assert p.closed
    with kstore.open(path) as s:
        assert values(s.partition("t", 0)) == [b"pending"]


# ---------------------------------------------------------------------------------------------
# When records reach the log


def test_on_delivery_is_called_with_offsets_once_flushed(store):
    store.create_topic("t", partitions=2)
    with store.producer(linger_ms=0) as p0:
        p0.send("t", b"old0", partition=1)
        p0.send("t", b"old1", partition=1)
    calls = []
    p = store.producer(linger_ms=60_000)
    for i in range(3):
        p.send("t", b"v%d" % i, partition=1, timestamp=TS0 + i,
               on_delivery=lambda err, md: calls.append((err, md)))
    p.send("t", b"no-callback", partition=1)
    p.send("t", b"v-p0", key=b"key-1", on_delivery=lambda err, md: calls.append((err, md)))
    assert calls == []
    p.flush()
    assert len(calls) == 4
    assert all(err is None for err, _ in calls)
    mds = sorted((md.partition, md.offset, md.topic) for _, md in calls)
    assert mds == [(0, 0, "t"), (1, 2, "t"), (1, 3, "t"), (1, 4, "t")]
    lg = store.partition("t", 1)
    assert [r.value for r in read_all(lg, 2)] == [b"v0", b"v1", b"v2", b"no-callback"]
    p.close()


def test_on_delivery_metadata_carries_the_record_timestamp(store):
    """As Kafka's RecordMetadata.timestamp(): the create time for a CreateTime topic, the
    log append time for a LogAppendTime topic."""
    store.create_topic("c")
    store.create_topic("l", config={"message.timestamp.type": "LogAppendTime"})
    calls = []
    with store.producer(linger_ms=60_000) as p:
        p.send("c", b"x", timestamp=TS0 + 7, on_delivery=lambda e, md: calls.append(md))
        p.send("l", b"y", timestamp=TS0 + 7, on_delivery=lambda e, md: calls.append(md))
    by_topic = {md.topic: md for md in calls}
    assert by_topic["c"].timestamp == TS0 + 7
    (stored,) = read_all(store.partition("l", 0))
    assert stored.timestamp_type == TIMESTAMP_LOG_APPEND
    assert by_topic["l"].timestamp == stored.timestamp


def test_linger_makes_records_readable_without_flush(store):
    store.create_topic("t", partitions=2)
    with store.producer(linger_ms=5) as p:
        p.send("t", b"a", partition=1)
        lg = store.partition("t", 1)
        assert lg.wait_for(0, timeout=30), "the linger flusher never appended the batch"
        assert values(lg) == [b"a"]
        p.send("t", b"b", partition=0)
        p.send("t", b"c", partition=1)
        assert store.partition("t", 0).wait_for(0, timeout=30)
        assert lg.wait_for(1, timeout=30)
        assert values(lg) == [b"a", b"c"]


def test_linger_zero_appends_each_send_at_once(store):
    store.create_topic("t")
    lg = store.partition("t", 0)
    with store.producer(linger_ms=0) as p:
        for i in range(5):
            p.send("t", b"v%d" % i)
            assert lg.log_end_offset == i + 1
    assert len(batches(lg)) == 5


def test_a_full_batch_is_appended_without_flush(store):
    store.create_topic("t")
    lg = store.partition("t", 0)
    with store.producer(linger_ms=60_000, batch_size=1000) as p:
        for i in range(200):
            p.send("t", b"%099d" % i)
        assert lg.log_end_offset > 0  # sealed at batch_size
        assert all(len(b) <= 1000 + 200 for b in batches(lg))
    assert values(lg) == [b"%099d" % i for i in range(200)]


def test_flush_appends_everything_pending(store):
    store.create_topic("t", partitions=3)
    p = store.producer(linger_ms=60_000)
    for i in range(30):
        p.send("t", b"v%d" % i, partition=i % 3)
    p.flush()
    assert [store.partition("t", q).log_end_offset for q in range(3)] == [10, 10, 10]
    p.close()


# ---------------------------------------------------------------------------------------------
# send_many


def test_send_many_from_lists(store):
    store.create_topic("t", partitions=3)
    vals = [b"v%d" % i for i in range(300)]
    with store.producer() as p:
        assert p.send_many("t", vals) == 300
        assert p.send_many("t", []) == 0
    got = []
    for part in range(3):
        got += values(store.partition("t", part))
    assert sorted(got) == sorted(vals)
    # Without keys, each partition receives the records in their input order.
    for part in range(3):
        vs = values(store.partition("t", part))
        idx = [vals.index(v) for v in vs]
        assert idx == sorted(idx)


def test_send_many_with_keys_and_timestamps(store):
    store.create_topic("t", partitions=6)
    keys = [b"k%d" % (i % 10) for i in range(200)]
    vals = [b"v%d" % i for i in range(200)]
    ts = [TS0 + i for i in range(200)]
    with store.producer() as p:
        p.send_many("t", vals, keys=keys, timestamps=ts)
        single = {k: p.send("t", b"probe", key=k) for k in set(keys)}
    for part in range(6):
        recs = [r for r in read_all(store.partition("t", part)) if r.value != b"probe"]
        assert all(single[r.key] == part for r in recs)
        idx = [int(r.value[1:]) for r in recs]
        assert idx == sorted(idx)
        assert all(r.timestamp == TS0 + i and r.key == keys[i] for r, i in zip(recs, idx))
    assert sum(store.partition("t", q).log_end_offset for q in range(6)) == 210
    with pytest.raises(ValueError):
        store.producer().send_many("t", vals, keys=keys[:5])


def test_send_many_from_a_2d_uint8_array(store):
    store.create_topic("t", partitions=2)
    arr = np.arange(64, dtype=np.uint8).reshape(16, 4)
    karr = np.repeat(np.frombuffer(b"abcd", dtype=np.uint8)[None, :], 16, axis=0)
    with store.producer() as p:
        assert p.send_many("t", arr, partition=1) == 16
        assert p.send_many("t", arr, keys=karr) == 16
    assert values(store.partition("t", 1))[:16] == [bytes(row) for row in arr]
    # key "abcd" -> murmur2 % 2 == 0 (kafka-storage.md 8.3: % 6 == 2, so even)
    recs = read_all(store.partition("t", 0))
    assert [r.value for r in recs] == [bytes(row) for row in arr]
    assert all(r.key == b"abcd" for r in recs)


def test_send_many_from_data_and_offsets(store):
    store.create_topic("t", partitions=2)
    data = np.frombuffer(b"aabbbcdddd", dtype=np.uint8)
    offs = np.array([0, 2, 5, 5, 6, 10], dtype=np.int64)  # one empty value
    kdata = np.frombuffer(b"key-1key-1key-1key-1key-1", dtype=np.uint8)
    koffs = np.arange(0, 26, 5, dtype=np.int64)
    with store.producer() as p:
        assert p.send_many("t", (data, offs), partition=1) == 5
        assert p.send_many("t", (b"aabbbcdddd", offs), keys=(kdata, koffs)) == 5
    expect = [b"aa", b"bbb", b"", b"c", b"dddd"]
    assert values(store.partition("t", 1)) == expect
    recs = read_all(store.partition("t", 0))  # key-1 -> 0 for any count (8.3)
    assert [r.value for r in recs] == expect
    assert all(r.key == b"key-1" for r in recs)


def test_send_many_keeps_order_with_earlier_sends(store):
    store.create_topic("t", partitions=3)
    with store.producer(linger_ms=60_000) as p:
        p.send("t", b"s0", partition=2)
        p.send("t", b"s1", partition=2)
        p.send("t", b"k-first", key=b"abcd")  # -> 2
        p.send_many("t", [b"m0", b"m1"], partition=2)
        p.send_many("t", [b"k-second"], keys=[b"abcd"])
        p.send("t", b"s2", partition=2)
        p.send("t", b"k-third", key=b"abcd")
    assert values(store.partition("t", 2)) == [
        b"s0", b"s1", b"k-first", b"m0", b"m1", b"k-second", b"s2", b"k-third"]


# ---------------------------------------------------------------------------------------------
# Compression and headers


@pytest.mark.parametrize("codec", ["lz4", "zstd", "gzip", "snappy"])
def test_producer_compression(store, codec):
    store.create_topic("t")
    with store.producer(compression=codec) as p:
        for i in range(100):
            p.send("t", b"compressible %d " % i * 10)
        p.send_many("t", [b"many %d" % i * 10 for i in range(100)])
    lg = store.partition("t", 0)
    assert {b.compression for b in batches(lg)} == {codec}
    vs = values(lg)
    assert vs[:100] == [b"compressible %d " % i * 10 for i in range(100)]
    assert vs[100:] == [b"many %d" % i * 10 for i in range(100)]


@pytest.mark.parametrize("producer_codec", [None, "lz4"])
def test_topic_compression_type_decides_the_stored_codec(store, producer_codec):
    """compression.type other than 'producer' is the codec the topic stores, whatever the
    producer used (Kafka recompresses)."""
    store.create_topic("t", config={"compression.type": "zstd"})
    store.create_topic("keep")  # compression.type=producer: the producer's codec
    with store.producer(compression=producer_codec) as p:
        for i in range(50):
            p.send("t", b"x%d" % i * 20)
            p.send("keep", b"x%d" % i * 20)
        p.send_many("t", [b"y" * 50] * 10)
    lg = store.partition("t", 0)
    assert {b.compression for b in batches(lg)} == {"zstd"}
    assert len(values(lg)) == 60
    assert {b.compression for b in batches(store.partition("keep", 0))} == {producer_codec or "none"}


def test_headers_round_trip(store):
    store.create_topic("t")
    hdrs = [("h", b"v"), ("empty", None), ("utf8-é", "é".encode()), ("h", b"again"), ("z", b"")]
    with store.producer(compression="lz4") as p:
        p.send("t", b"with", key=b"k", headers=hdrs, timestamp=TS0)
        p.send("t", b"without")
        p.send("t", b"tuple", headers=(("a", b"1"),))
    a, b, c = read_all(store.partition("t", 0))
    assert (a.key, a.value, a.timestamp) == (b"k", b"with", TS0)
    assert list(a.headers) == hdrs
    assert list(b.headers) == []
    assert list(c.headers) == [("a", b"1")]
    cons = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    got = cons.poll(timeout=10)
    assert [list(r.headers) for r in got] == [hdrs, [], [("a", b"1")]]


# ---------------------------------------------------------------------------------------------
# A producer that was made before the topic changed


def test_existing_producer_sees_added_partitions(store):
    store.create_topic("t", partitions=2)
    with store.producer(linger_ms=0) as p:
        p.send("t", b"a", partition=1)
        store.create_partitions("t", 4)
        assert p.send("t", b"b", partition=3) == 3
        # Keys now spread over 4 partitions: (murmur2 & 0x7fffffff) % 4 == (% 12 column) % 4.
        parts = [p.send("t", k, key=k) for k, _, _ in VECTORS]
    assert parts == [want[2] % 4 for _, want, _ in VECTORS]
    assert values(store.partition("t", 3))[0] == b"b"


def test_existing_producer_follows_altered_topic_config(store):
    store.create_topic("t")
    with store.producer(linger_ms=60_000) as p:
        p.send("t", b"x" * 500)
        p.flush()
        store.alter_topic_config("t", {"max.message.bytes": 300, "compression.type": "gzip"})
        with pytest.raises(errors.RecordTooLargeError):
            p.send("t", b"y" * 500)  # at send, as for any record over max.message.bytes
        p.send("t", b"z" * 100)
    lg = store.partition("t", 0)
    assert values(lg) == [b"x" * 500, b"z" * 100]
    assert [b.compression for b in batches(lg)] == ["none", "gzip"]


def test_existing_producer_after_delete_and_recreate(store):
    store.create_topic("t")
    with store.producer(linger_ms=0) as p:
        p.send("t", b"old")
        store.delete_topic("t")
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            p.send("t", b"gone")
        store.create_topic("t")
        p.send("t", b"new")
    assert values(store.partition("t", 0)) == [b"new"]


def _first_partition_of_a_keyless_call(path, q):
    with kstore.open(path, retention_check_interval_ms=0) as s:
        s.producer().send_many("spread", [b"%d" % i for i in range(8)])  # a record each
        first = [p for p in range(8)
                 if s.partition("spread", p).read_records(0)[-1].value == b"0"]
        q.put(first)


def test_forked_writers_do_not_all_start_keyless_calls_on_one_partition(tmp_path):
    """Processes forked from one parent inherit numpy's random state; keyless send_many must
    not use it to pick where a call starts, or every writer of a pool queues on the same
    partition at once."""
    import multiprocessing as mp

    import numpy as np

    path = tmp_path / "d"
    with kstore.open(path) as s:
        s.create_topic("spread", 8)
    np.random.seed(1)
    ctx = mp.get_context("fork")
    starts = []
    for _ in range(6):
        q = ctx.Queue()
        p = ctx.Process(target=_first_partition_of_a_keyless_call, args=(str(path), q))
        p.start()
        starts += q.get(timeout=60)
        p.join(60)
    assert len(starts) == 6 and len(set(starts)) > 1
