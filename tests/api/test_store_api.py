"""The Store API a program uses, the same assertions on the embedded store and on
``kstore.connect`` to a ``kstore serve`` (see conftest.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import kstore
from kstore import _core, errors
from tests.api.conftest import poll_all
from tests.server.conftest import wait_until

def filled(store, topic, partitions, values, keys=None):
    """Create ``topic`` and send_many ``values`` (and ``keys``) to it."""
    store.create_topic(topic, partitions)
    with store.producer() as prod:
        prod.send_many(topic, values, keys=keys)


# ==============================================================================================
# Topics


def test_topic_admin_round_trip(store, backend, names):
    t = names()
    store.create_topic(t, partitions=2, config={"retention.ms": 3_600_000})
    assert t in store.topics()
    assert not any(x.startswith("__") for x in store.topics())
    assert store.partitions_for(t) == 2
    cfg = store.topic_config(t)
    assert cfg["retention.ms"] == 3_600_000  # typed as the embedded store types it
    assert cfg["cleanup.policy"] == "delete" and cfg["max.message.bytes"] == 1048588
    d = store.describe_topic(t)
    assert d["name"] == t and d["partitions"] == 2
    assert d["config"] == {"retention.ms": 3_600_000}
    assert [p["partition"] for p in d["partition_info"]] == [0, 1]
    for p in d["partition_info"]:
        assert p["log_start_offset"] == 0 and p["log_end_offset"] == 0
        if backend == "embedded":
            assert p["size_bytes"] == 0 and p["segments"] == 1
        else:  # a cluster keeps its files to itself (documented)
            assert p["size_bytes"] is None and p["segments"] is None

    store.alter_topic_config(t, {"retention.ms": 7_200_000, "cleanup.policy": "compact"})
    assert store.describe_topic(t)["config"] == {"retention.ms": 7_200_000,
                                                 "cleanup.policy": "compact"}
    store.alter_topic_config(t, {"retention.ms": None})  # back to the default
    assert store.describe_topic(t)["config"] == {"cleanup.policy": "compact"}
    assert store.topic_config(t)["retention.ms"] == 604800000

    store.create_partitions(t, 5)
    assert store.partitions_for(t) == 5
    store.delete_topic(t)
    wait_until(lambda: t not in store.topics(), 10, "the topic to go")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.describe_topic(t)


def test_create_topics_reports_each_failure(store, names):
    a, b, c = names(), names(), names()
    store.create_topic(a)
    failed = store.create_topics([(a, 1), (b, 2, {"retention.ms": 1000}), (c, 0), ("bad name", 1)])
    assert set(failed) == {a, c, "bad name"}
    assert isinstance(failed[a], errors.TopicAlreadyExistsError)
    assert isinstance(failed[c], errors.InvalidPartitionsError)
    assert isinstance(failed["bad name"], errors.InvalidTopicError)
    assert store.partitions_for(b) == 2


def test_admin_errors_are_kstore_classes(store, names):
    t = names()
    store.create_topic(t, 2)
    with pytest.raises(errors.TopicAlreadyExistsError):
        store.create_topic(t)
    with pytest.raises(errors.InvalidPartitionsError):
        store.create_topic(names(), partitions=0)
    with pytest.raises(errors.InvalidConfigError, match="no.such.key"):
        store.create_topic(names(), config={"no.such.key": 1})
    with pytest.raises(errors.InvalidTopicError):
        store.create_topic("has space")
    with pytest.raises(errors.InternalTopicError):
        store.create_topic("__mine")
    for call in (lambda: store.describe_topic(names()), lambda: store.delete_topic(names()),
                 lambda: store.partitions_for(names()), lambda: store.topic_config(names()),
                 lambda: store.create_partitions(names(), 3)):
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            call()
    with pytest.raises(errors.InvalidPartitionsError):
        store.create_partitions(t, 2)  # partitions only grow
    with pytest.raises(errors.InvalidConfigError):
        store.alter_topic_config(t, {"no.such.key": 1})


# ==============================================================================================
# Producing and consuming


def _consumer(store, topic, **kw):
    c = store.consumer(**kw)
    n = store.partitions_for(topic)
    c.assign([(topic, p) for p in range(n)])
    for p in range(n):
        c.seek(topic, p, 0)
    return c


def test_records_round_trip_binary_tombstones_headers_timestamps(store, names):
    t = names()
    store.create_topic(t, 3)
    sent = []
    with store.producer() as prod:
        for i in range(30):
            key = bytes([i, 0, 255, 10]) if i % 5 else None
            value = None if i % 7 == 3 else bytes(range(i % 256)) + b"\x00\n\t"
            headers = [("h", bytes([i])), ("empty", b""), ("null", None)] if i % 2 else None
            ts = 1_700_000_000_000 + i
            p = prod.send(t, value, key=key, headers=headers, timestamp=ts)
            if key is not None:  # keys land where the Java client (and kstore) puts them
                assert p == _core.murmur2_partition(key, 3)
            sent.append((p, key, value, tuple(headers or ()), ts))
        prod.flush()
    c = _consumer(store, t, group=None)
    got = poll_all(c, 30)
    c.close()
    assert len(got) == 30
    by_part: dict = {}
    for r in got:
        by_part.setdefault(r.partition, []).append(r)
    for p, recs in by_part.items():
        assert [r.offset for r in recs] == list(range(len(recs)))
        mine = [s for s in sent if s[0] == p]
        assert [(r.key, r.value, tuple(r.headers), r.timestamp) for r in recs] == \
               [(k, v, h, ts) for _, k, v, h, ts in mine]
        assert all(r.topic == t and r.timestamp_type == 0 for r in recs)
        assert all(isinstance(r, kstore.Record) for r in recs)


def test_send_to_unknown_topic_or_partition(store, names):
    t = names()
    store.create_topic(t, 2)
    with store.producer() as prod:
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            prod.send(names(), b"v")
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            prod.send(t, b"v", partition=2)
        with pytest.raises(errors.InternalTopicError):
            prod.send("__consumer_offsets", b"v")


def test_record_too_large(store, names):
    t = names()
    store.create_topic(t, 1, config={"max.message.bytes": 2000})
    with store.producer() as prod:
        with pytest.raises(errors.RecordTooLargeError):
            prod.send(t, b"x" * 5000)
        with pytest.raises(errors.RecordTooLargeError):
            prod.send_many(t, [b"small", b"x" * 5000])
        prod.send(t, b"fits")
    c = _consumer(store, t, group=None)
    assert [r.value for r in poll_all(c, 1)] == [b"fits"]  # send_many wrote none of its records
    c.close()


def test_compacted_topic_refuses_null_keys(store, names):
    t = names()
    store.create_topic(t, 1, config={"cleanup.policy": "compact"})
    with store.producer() as prod:
        with pytest.raises(errors.InvalidRecordError):
            prod.send(t, b"v")
        with pytest.raises(errors.InvalidRecordError):
            prod.send_many(t, [b"a", b"b"], keys=[b"k", None])
        prod.send(t, None, key=b"k")  # a tombstone is fine


def test_send_many_forms_and_placement(store, names):
    t = names()
    store.create_topic(t, 4)
    n = 200
    keys = [b"key-%d" % i for i in range(n)]
    values = [b"value-%03d" % i for i in range(n)]
    fixed = np.frombuffer(b"".join(values), np.uint8).reshape(n, -1)
    offs = np.array([0] + list(np.cumsum([len(v) for v in values])), dtype=np.int64)
    with store.producer() as prod:
        assert prod.send_many(t, values, keys=keys) == n
        assert prod.send_many(t, fixed, keys=keys) == n
        assert prod.send_many(t, (b"".join(values), offs), keys=keys) == n
        assert prod.send_many(t, values[:10], partition=3) == 10
        assert prod.send_many(t, values) == n  # keyless: contiguous runs
        assert prod.send_many(t, []) == 0
    # send_many returns once its records are stored/acknowledged: the ends show them all.
    ends = [p["log_end_offset"] for p in store.describe_topic(t)["partition_info"]]
    assert sum(ends) == 4 * n + 10
    c = _consumer(store, t, group=None)
    got = poll_all(c, 4 * n + 10, max_records=1000)
    c.close()
    keyed = [r for r in got if r.key is not None]
    assert len(keyed) == 3 * n
    for r in keyed:
        assert r.partition == _core.murmur2_partition(r.key, 4)
        assert r.value == b"value-%03d" % int(r.key.split(b"-")[1])
    keyless = [r for r in got if r.key is None]
    assert sorted(r.value for r in keyless) == sorted(values + values[:10])


def test_send_and_send_many_keep_the_order_of_the_calls(store, names):
    """send() buffers (linger), send_many writes at once (on a cluster through kstore's batch
    producer): a partition still holds the records in call order."""
    t = names()
    store.create_topic(t, 1)
    with store.producer(linger_ms=1000) as prod:
        prod.send(t, b"a", partition=0)
        prod.send_many(t, [b"b", b"c"], partition=0)
        prod.send(t, b"d", partition=0)
        prod.send(t, b"e", partition=0)
        prod.send_many(t, [b"f"] * 3000, keys=[b"k%d" % i for i in range(3000)], partition=0)
        prod.send(t, b"g", partition=0)
    c = _consumer(store, t, group=None)
    got = [r.value for r in poll_all(c, 3006, max_records=5000)]
    c.close()
    assert got == [b"a", b"b", b"c", b"d", b"e"] + [b"f"] * 3000 + [b"g"]


def test_poll_batches_columns(store, names):
    t = names()
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send(t, None, key=None, timestamp=1000)
        prod.send(t, b"", key=b"", timestamp=1001)
        prod.send(t, b"\x00\xffvalue", key=b"\x01k", timestamp=1002)
        prod.send_many(t, [b"v%d" % i for i in range(50)], timestamps=list(range(2000, 2050)))
    c = _consumer(store, t, group=None)
    cols = []
    wait_until(lambda: cols.extend(c.poll_batches(timeout=0.2)) or sum(map(len, cols)) >= 53,
               30, "53 records as columns", interval=0)
    c.close()
    assert all(b.topic == t and b.partition == 0 for b in cols)
    offsets = np.concatenate([b.offsets for b in cols])
    assert offsets.dtype == np.int64 and offsets.tolist() == list(range(53))
    ts = np.concatenate([b.timestamps for b in cols])
    assert ts.dtype == np.int64 and ts.tolist() == [1000, 1001, 1002] + list(range(2000, 2050))
    first = cols[0]
    assert first.values()[:3] == [None, b"", b"\x00\xffvalue"]
    assert first.keys()[:3] == [None, b"", b"\x01k"]
    assert first.value_lengths[:3].tolist() == [-1, 0, 7]
    assert first.key_lengths[:3].tolist() == [-1, 0, 2]
    data = memoryview(first.data)
    p, n = int(first.value_positions[2]), int(first.value_lengths[2])
    assert bytes(data[p:p + n]) == b"\x00\xffvalue"
    values = [v for b in cols for v in b.values()]
    assert values[3:] == [b"v%d" % i for i in range(50)]


def test_delivery_callbacks(store, names):
    t = names()
    store.create_topic(t, 1)
    seen = []
    with store.producer() as prod:
        for i in range(3):
            prod.send(t, b"v%d" % i, on_delivery=lambda err, md: seen.append((err, md)),
                      timestamp=5000 + i)
        prod.flush()
    assert [e for e, _ in seen] == [None] * 3
    assert [(md.topic, md.partition, md.offset, md.timestamp) for _, md in seen] == \
           [(t, 0, i, 5000 + i) for i in range(3)]


# ==============================================================================================
# Positions


def test_seek_position_offsets_for_times(store, names):
    t = names()
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send_many(t, [b"v%d" % i for i in range(20)],
                       timestamps=[10_000 + 100 * i for i in range(20)])
    c = store.consumer(group=None, auto_offset_reset="earliest")
    c.assign([(t, 0)])
    assert c.assignment() == {(t, 0)}
    assert c.position(t, 0) == 0
    c.seek(t, 0, 12)
    assert c.position(t, 0) == 12
    assert [r.offset for r in poll_all(c, 8)] == list(range(12, 20))
    assert c.position(t, 0) == 20
    c.seek_to_beginning()
    assert c.position(t, 0) == 0
    assert poll_all(c, 1, max_records=1)[0].offset == 0
    assert c.position(t, 0) == 1
    c.seek_to_end((t, 0))
    assert c.position(t, 0) == 20
    assert c.poll(timeout=0.3) == []
    assert c.offsets_for_times({(t, 0): 10_550}) == {(t, 0): 6}
    assert c.offsets_for_times({(t, 0): 0}) == {(t, 0): 0}
    assert c.offsets_for_times({(t, 0): 99_999}) == {(t, 0): None}
    with pytest.raises(ValueError):
        c.seek(t, 1, 0)  # not assigned
    with pytest.raises(ValueError):
        c.position(names(), 0)
    c.close()
    with pytest.raises(errors.ClosedError):
        c.poll(timeout=0)


def test_latest_reset_starts_at_the_end(store, names):
    t = names()
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send_many(t, [b"old"] * 5)
        c = store.consumer(group=names("g"), topics=[t])  # auto_offset_reset="latest"
        wait_until(lambda: c.poll(timeout=0.1) == [] and c.assignment(), 30, "an assignment")
        assert c.position(t, 0) == 5
        prod.send(t, b"new")
    assert [r.value for r in poll_all(c, 1)] == [b"new"]
    c.close()


def test_auto_offset_reset_none_without_commit(store, names):
    t = names()
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send(t, b"v")
    c = store.consumer(group=names("g"), auto_offset_reset="none", enable_auto_commit=False)
    c.assign([(t, 0)])
    with pytest.raises(errors.NoOffsetForPartitionError):
        c.poll(timeout=5)
    c.close()


# ==============================================================================================
# Groups


def test_commit_then_new_consumer_resumes(store, names):
    t, g = names(), names("g")
    filled(store, t, 2, [b"v%d" % i for i in range(40)], keys=[b"k%d" % i for i in range(40)])
    c = store.consumer(group=g, topics=[t], auto_offset_reset="earliest",
                       enable_auto_commit=False)
    first = poll_all(c, 10, max_records=10)[:10]
    assert len(first) == 10
    c.commit()
    done = {r.partition: r.offset + 1 for r in first}
    for p, off in done.items():
        assert c.committed(t, p) == off
        assert store.committed(g, t, p) == off
    c.close()  # no auto-commit: nothing more is committed
    assert store.committed(g, t, 0) == done.get(0)
    c2 = store.consumer(group=g, topics=[t], auto_offset_reset="earliest")
    rest = poll_all(c2, 30)
    assert len(rest) == 30
    assert {(r.partition, r.offset) for r in rest}.isdisjoint({(r.partition, r.offset) for r in first})
    assert sorted(r.value for r in first + rest) == sorted(b"v%d" % i for i in range(40))
    c2.close()  # auto-commit commits on close
    ends = {p["partition"]: p["log_end_offset"] for p in store.describe_topic(t)["partition_info"]}
    for p in range(2):
        assert store.committed(g, t, p) == ends[p]
    assert g in store.groups()


def test_commit_explicit_offsets_and_commit_offsets(store, names):
    t, g = names(), names("g")
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send_many(t, [b"v"] * 10)
    c = store.consumer(group=g, enable_auto_commit=False)
    c.assign([(t, 0)])
    c.commit({(t, 0): 4}, metadata="checkpoint")
    assert c.committed(t, 0) == 4
    c.close()
    store.commit_offsets(g, {(t, 0): (7, "m", 0)})
    assert store.committed(g, t, 0) == 7
    assert store.committed(names("g"), t, 0) is None
    c = store.consumer(group=g, topics=[t], auto_offset_reset="earliest")
    assert [r.offset for r in poll_all(c, 3)] == [7, 8, 9]
    c.close()


def test_commit_offsets_checks(store, backend, names):
    t, g = names(), names("g")
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send_many(t, [b"v"] * 10)
    if backend == "embedded":  # nothing is in flight here: past the log end is a mistake
        with pytest.raises(errors.OffsetOutOfRangeError):
            store.commit_offsets(g, {(t, 0): (11, "", 0)})
    else:  # Kafka takes offsets past the log end (a client may commit records in flight)
        g2 = names("g")
        store.commit_offsets(g2, {(t, 0): (11, "", 0)})
        assert store.committed(g2, t, 0) == 11
    with pytest.raises(errors.OffsetOutOfRangeError):
        store.commit_offsets(g, {(t, 0): (-1, "", 0)})  # no position, on either backend
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.commit_offsets(g, {(names(), 0): (1, "", 0)})
    with pytest.raises(errors.InvalidRequestError):
        store.commit_offsets("", {(t, 0): (1, "", 0)})
    assert store.committed(g, t, 0) is None
    c = store.consumer(group=g, topics=[t], auto_offset_reset="earliest", enable_auto_commit=False)
    poll_all(c, 10)
    if backend == "embedded":  # the store writes __consumer_offsets itself
        store.commit_offsets(g, {(t, 0): (3, "", 0)})
        assert store.committed(g, t, 0) == 3
    else:  # Kafka: only a group's members commit while it has any (documented)
        with pytest.raises(errors.UnknownMemberIdError, match="active members"):
            store.commit_offsets(g, {(t, 0): (3, "", 0)})
        assert store.committed(g, t, 0) is None
    c.close()


def test_group_members_share_partitions(store, names):
    t, g = names(), names("g")
    filled(store, t, 4, [b"v%d" % i for i in range(80)], keys=[b"k%d" % i for i in range(80)])
    kw = dict(group=g, topics=[t], auto_offset_reset="earliest", enable_auto_commit=False)
    a = store.consumer(**kw)
    b = store.consumer(**kw)
    got_a: list = []
    got_b: list = []

    def split() -> bool:
        got_a.extend(a.poll(timeout=0.05))
        got_b.extend(b.poll(timeout=0.05))
        sa, sb = a.assignment(), b.assignment()
        return bool(sa) and bool(sb) and sa | sb == {(t, p) for p in range(4)} and not sa & sb

    wait_until(split, 60, "two members splitting four partitions", interval=0)
    assert len(a.assignment()) == 2 and len(b.assignment()) == 2  # range assignment
    ends = {(t, p["partition"]): p["log_end_offset"]
            for p in store.describe_topic(t)["partition_info"]}

    def consumed() -> bool:
        # Each member at the end of the partitions it holds now: records one of them took
        # before the split may be taken again by the other, so counting records can finish
        # before a member has read (and so can commit) its own.
        got_a.extend(a.poll(timeout=0.05))
        got_b.extend(b.poll(timeout=0.05))
        return all(m.position(*tp) == ends[tp] for m in (a, b) for tp in m.assignment())

    wait_until(consumed, 60, "every record by one of the members", interval=0)
    assert {(r.partition, r.offset) for r in got_a + got_b} == {
        (p, o) for (_, p), end in ends.items() for o in range(end)}
    a.commit()
    b.commit()
    d = store.describe_group(g)
    assert d["group"] == g
    assert sorted(m["assignment"] for m in d["members"]) == sorted(
        [sorted(a.assignment()), sorted(b.assignment())])
    assert d["state"] == "Stable"
    assert sum(p["committed"] for p in d["partitions"]) == 80
    assert all(p["lag"] == 0 for p in d["partitions"])
    a.close()
    b.close()


def test_rebalance_hands_over_without_repeats(store, names):
    """Auto-committing members: a partition moving to a new member carries on from where the
    old one stopped (its position is committed when it loses the partition)."""
    t, g = names(), names("g")
    filled(store, t, 2, [b"a%d" % i for i in range(40)], keys=[b"k%d" % i for i in range(40)])
    kw = dict(group=g, topics=[t], auto_offset_reset="earliest", auto_commit_interval_ms=60_000)
    a = store.consumer(**kw)
    first = poll_all(a, 40)
    b = store.consumer(**kw)
    later: list = []
    wait_until(lambda: later.extend(a.poll(timeout=0.05) + b.poll(timeout=0.05))
               or (len(a.assignment()) == 1 and len(b.assignment()) == 1), 60,
               "the two members to split the partitions", interval=0)
    with store.producer() as prod:
        prod.send_many(t, [b"b%d" % i for i in range(40)], keys=[b"k%d" % i for i in range(40)])
    wait_until(lambda: later.extend(a.poll(timeout=0.05) + b.poll(timeout=0.05))
               or len(later) >= 40, 60, "the new records", interval=0)
    for _ in range(3):
        later.extend(a.poll(timeout=0.1) + b.poll(timeout=0.1))
    assert len(first) == 40
    assert sorted(r.value for r in later) == sorted(b"b%d" % i for i in range(40))  # no repeat
    a.close()
    b.close()


def test_describe_group_fields(store, backend, names):
    t, g = names(), names("g")
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send_many(t, [b"v"] * 10)
    c = store.consumer(group=g, topics=[t], auto_offset_reset="earliest", client_id="describer",
                       enable_auto_commit=False)
    poll_all(c, 10)
    c.commit({(t, 0): 6}, metadata="meta")
    d = store.describe_group(g)
    assert d["state"] == "Stable"
    (m,) = d["members"]
    assert m["client_id"] == "describer" and m["assignment"] == [(t, 0)]
    (p,) = d["partitions"]
    assert (p["topic"], p["partition"], p["committed"], p["log_end_offset"], p["lag"],
            p["metadata"]) == (t, 0, 6, 10, 4, "meta")
    if backend == "embedded":
        assert m["pid"] > 0 and p["commit_timestamp"] > 0
    else:  # not in Kafka's DescribeGroups/OffsetFetch answers (documented)
        assert m["pid"] is None and p["commit_timestamp"] is None
    c.close()
    d = store.describe_group(g)
    assert d["state"] == "Empty" and d["members"] == []
    assert d["partitions"][0]["committed"] == 6


# ==============================================================================================
# Blocking, iteration, async


def test_wakeup_unblocks_poll_without_timeout(store, names):
    t = names()
    store.create_topic(t, 1)
    c = store.consumer(group=None)
    c.assign([(t, 0)])
    out = []
    th = threading.Thread(target=lambda: out.append(c.poll(timeout=None)))
    th.start()
    time.sleep(0.3)  # let it block
    assert th.is_alive()
    c.wakeup()
    th.join(20)
    assert not th.is_alive() and out == [[]]
    c.close()


def test_iteration_until_wakeup(store, names):
    t = names()
    filled(store, t, 1, [b"v%d" % i for i in range(5)])
    c = _consumer(store, t, group=None)
    seen = []
    for r in c:
        seen.append(r.value)
        if len(seen) == 5:
            c.wakeup()
    assert seen == [b"v%d" % i for i in range(5)]
    c.close()


def test_poll_async(store, names):
    import asyncio

    t = names()
    store.create_topic(t, 1)
    with store.producer() as prod:
        prod.send(t, b"async")
    c = _consumer(store, t, group=None)

    async def main() -> list:
        got: list = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got += await c.poll_async(timeout=0.5)
        return got

    assert [r.value for r in asyncio.run(main())] == [b"async"]
    c.close()


# ==============================================================================================
# Records and lifecycle


def test_delete_records(store, names):
    t = names()
    filled(store, t, 1, [b"v%d" % i for i in range(10)])
    assert store.delete_records({(t, 0): 4}) == {(t, 0): 4}
    assert store.describe_topic(t)["partition_info"][0]["log_start_offset"] == 4
    c = store.consumer(group=None, auto_offset_reset="earliest")
    c.assign([(t, 0)])
    assert [r.offset for r in poll_all(c, 6)] == list(range(4, 10))
    c.close()


def test_store_context_manager_and_close(backend, tmp_path, request, names):
    s = kstore.open(tmp_path / "d") if backend == "embedded" else kstore.connect(
        request.getfixturevalue("connect_url"))
    with s:
        t = names()
        s.create_topic(t)
        p = s.producer()
        p.send(t, b"pending")
    assert s.closed
    with pytest.raises(errors.ClosedError):
        s.producer()
    if backend == "embedded":
        s = kstore.open(tmp_path / "d")
    else:
        s = kstore.connect(request.getfixturevalue("connect_url"))
    with s:  # close flushed the producer
        c = _consumer(s, t, group=None)
        assert [r.value for r in poll_all(c, 1)] == [b"pending"]


# ==============================================================================================
# What a cluster cannot do


def test_local_only_features(store, backend, names):
    t = names()
    store.create_topic(t)
    calls = [lambda: store.partition(t, 0), store.run_maintenance, store.expire_offsets,
             lambda: store.delete_group_offsets(names("g"))]
    if backend == "embedded":
        for call in calls:
            call()
    else:
        for call in calls:
            with pytest.raises(errors.UnsupportedOnClusterError) as ei:
                call()
            assert isinstance(ei.value, NotImplementedError)
            assert "cluster" in str(ei.value)


def test_transactions_commit_abort_and_offsets(store, names):
    """The same transactional program on both backends: committed records and offsets are
    seen by read_committed consumers, aborted ones never; read_uncommitted sees every data
    record (markers never)."""
    t, g = names(), names("g")
    store.create_topic(t, 1)
    with store.producer(transactional_id=names("tx"), linger_ms=0) as prod:
        prod.begin_transaction()
        prod.send(t, b"kept-1", partition=0)
        prod.send(t, b"kept-2", partition=0)
        # Offsets of records that exist: the embedded store refuses a commit past the log end
        # (kstore serve, as Kafka, takes it), and the two records may still be in flight.
        prod.flush()
        prod.send_offsets_to_transaction({(t, 0): 1}, g)
        prod.commit_transaction()
        prod.begin_transaction()
        prod.send(t, b"dropped", partition=0)
        prod.send_many(t, [b"dropped-many"], partition=0)  # in the transaction too
        prod.flush()  # else librdkafka's abort purges it unsent, and no reader could see it
        prod.send_offsets_to_transaction({(t, 0): 3}, g)
        prod.abort_transaction()
        prod.begin_transaction()
        prod.send(t, b"kept-3", partition=0)
        prod.send_many(t, [b"kept-many"], partition=0)
        prod.commit_transaction()
        with pytest.raises(errors.InvalidTxnStateError):
            prod.commit_transaction()
    for level, want in (("read_committed", [b"kept-1", b"kept-2", b"kept-3", b"kept-many"]),
                        ("read_uncommitted", [b"kept-1", b"kept-2", b"dropped", b"dropped-many",
                                              b"kept-3", b"kept-many"])):
        c = store.consumer(auto_offset_reset="earliest", isolation_level=level)
        c.assign([(t, 0)])
        assert [r.value for r in poll_all(c, len(want))] == want, level
        c.close()
    assert store.committed(g, t, 0) == 1
    with pytest.raises(errors.InvalidTxnStateError):
        store.producer().begin_transaction()
    with pytest.raises(ValueError, match="isolation_level"):
        store.consumer(isolation_level="snapshot")
