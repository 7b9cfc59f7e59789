"""Consumer: positions and auto_offset_reset, poll limits without loss or duplicates, waiting and
waking (poll, wakeup, close, iteration, asyncio), commits and their errors, offsets that
survive a reopen, seeks, time lookups, manual assignment, range assignment and rebalancing in
a group, the columnar poll_batches, auto commit, and the __consumer_offsets records on disk."""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import pytest

import kstore
from kstore import errors, offsets
from kstore.log import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP

TS0 = 1_700_000_000_000
DEADLINE = 10.0  # seconds a waiting thread may take before the test calls it hung


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "data")
    yield s
    s.close()


def fill(store, topic, counts, prefix=b"v", ts=None):
    """Append counts[p] records to each partition p; values ``<prefix><p>-<i>``."""
    with store.producer(linger_ms=60_000) as p:
        for part, n in enumerate(counts):
            start = store.partition(topic, part).log_end_offset
            for i in range(start, start + n):
                p.send(topic, b"%s%d-%d" % (prefix, part, i), key=b"k%d" % i, partition=part,
                       timestamp=None if ts is None else ts(part, i))


def drain(consumer, max_records=None):
    """Poll until a poll returns nothing (data already in the log: no waiting needed)."""
    out = []
    while True:
        recs = consumer.poll(timeout=0, max_records=max_records)
        if not recs:
            return out
        out += recs


def ids(records):
    return [(r.topic, r.partition, r.offset) for r in records]


def run_in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def wait_until_waiting(store, deadline=DEADLINE):
    """Until some consumer of the store sleeps on its data signal."""
    end = time.monotonic() + deadline
    while store.signal.waiters == 0:
        assert time.monotonic() < end, "the consumer never started waiting"
        time.sleep(0.0005)


# ---------------------------------------------------------------------------------------------
# Positions and auto_offset_reset


def test_group_none_reads_every_partition(store):
    store.create_topic("t", partitions=3)
    fill(store, "t", [4, 0, 6])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    assert c.assignment() == {("t", 0), ("t", 1), ("t", 2)}
    got = drain(c)
    assert sorted(ids(got)) == [("t", 0, i) for i in range(4)] + [("t", 2, i) for i in range(6)]
    r = next(x for x in got if (x.partition, x.offset) == (2, 5))
    assert (r.topic, r.key, r.value) == ("t", b"k5", b"v2-5")
    assert c.committed("t", 0) is None
    assert c.position("t", 0) == 4 and c.position("t", 1) == 0 and c.position("t", 2) == 6
    with pytest.raises(errors.InvalidGroupIdError):
        c.commit()
    with pytest.raises(errors.InvalidGroupIdError):
        c.commit({("t", 0): 1})
    c.close()
    assert store.groups() == []


def test_auto_offset_reset_latest_starts_at_the_end(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [3, 3])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="latest")
    assert c.poll(timeout=0) == []
    assert c.position("t", 0) == 3 and c.position("t", 1) == 3
    fill(store, "t", [1, 2], prefix=b"new")
    got = drain(c)
    assert sorted(r.value for r in got) == [b"new0-3", b"new1-3", b"new1-4"]


def test_auto_offset_reset_earliest(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [3, 2])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
    assert len(drain(c)) == 5


def test_auto_offset_reset_none(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [3, 2])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="none")
    with pytest.raises(errors.NoOffsetForPartitionError, match="auto_offset_reset"):
        c.poll(timeout=0)
    with pytest.raises(errors.NoOffsetForPartitionError):
        c.position("t", 0)
    with pytest.raises(errors.NoOffsetForPartitionError):
        store.consumer(group=None, topics=["t"], auto_offset_reset="none").poll(timeout=0)
    # With committed offsets (or a seek) there is a position to start from.
    with store.consumer(group="g2", topics=["t"], enable_auto_commit=False) as setter:
        setter.commit({("t", 0): 1, ("t", 1): 2})
    c2 = store.consumer(group="g2", topics=["t"], auto_offset_reset="none")
    assert sorted(ids(drain(c2))) == [("t", 0, 1), ("t", 0, 2)]
    c3 = store.consumer(group=None, topics=["t"], auto_offset_reset="none")
    c3.seek("t", 0, 2)
    c3.seek("t", 1, 0)
    assert sorted(ids(drain(c3))) == [("t", 0, 2), ("t", 1, 0), ("t", 1, 1)]


@pytest.mark.parametrize("kwargs, exc", [
    (dict(auto_offset_reset="smallest"), ValueError),
    (dict(group=""), errors.InvalidGroupIdError),
    (dict(group=5), errors.InvalidGroupIdError),
    (dict(topics="t"), TypeError),
    (dict(topics=["nope"]), errors.UnknownTopicOrPartitionError),
    (dict(max_poll_records=0), ValueError),
])
def test_bad_consumer_arguments(store, kwargs, exc):
    store.create_topic("t")
    args = dict(group="g", topics=["t"])
    args.update(kwargs)
    with pytest.raises(exc):
        store.consumer(**args)


# ---------------------------------------------------------------------------------------------
# poll limits


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_poll_max_records_continues_where_it_stopped(store, limit):
    store.create_topic("t", partitions=4)
    counts = [23, 0, 41, 9]
    fill(store, "t", counts)
    # Part of partition 2 compressed, to cut through decoded batches too.
    with store.producer(compression="lz4", linger_ms=60_000) as p:
        for i in range(41, 60):
            p.send("t", b"v2-%d" % i, partition=2)
    counts[2] = 60
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    got = []
    last = {}
    while True:
        recs = c.poll(timeout=0, max_records=limit)
        if not recs:
            break
        assert len(recs) <= limit
        for r in recs:
            assert r.offset == last.get(r.partition, -1) + 1, (r.partition, r.offset)
            last[r.partition] = r.offset
            assert r.value == b"v%d-%d" % (r.partition, r.offset)
        got += recs
    assert sorted(ids(got)) == sorted(("t", p, o) for p, n in enumerate(counts) for o in range(n))


def test_max_poll_records_is_the_default_limit(store):
    store.create_topic("t")
    fill(store, "t", [30])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest",
                       max_poll_records=8)
    sizes = []
    while recs := c.poll(timeout=0):
        sizes.append(len(recs))
    assert sizes == [8, 8, 8, 6]


# ---------------------------------------------------------------------------------------------
# Waiting and waking


def test_poll_waits_and_wakes_when_another_thread_sends(store):
    store.create_topic("t", partitions=2)
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    producer = store.producer(linger_ms=60_000)

    def send():
        wait_until_waiting(store)
        producer.send("t", b"hello", partition=1)
        producer.flush()

    t, box = run_in_thread(send)
    recs = c.poll(timeout=DEADLINE)
    t.join(DEADLINE)
    assert "error" not in box, box
    assert [(r.partition, r.offset, r.value) for r in recs] == [(1, 0, b"hello")]
    producer.close()


def test_no_lost_wakeup_when_data_lands_between_the_fetch_and_the_wait(store):
    """DataSignal promises no lost wake-ups: a record appended after poll found nothing but
    before it went to sleep must still wake it. The interleaving is forced by running the
    append right after the consumer's empty fetch."""
    store.create_topic("t")
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    producer = store.producer(linger_ms=0)
    fetch = c._fetch
    appended = []

    def fetch_then_append(max_records):
        recs = fetch(max_records)
        if not recs and not appended:
            t = threading.Thread(target=producer.send, args=("t", b"late"))
            t.start()
            t.join()
            appended.append(True)
        return recs

    c._fetch = fetch_then_append
    t, box = run_in_thread(lambda: c.poll(timeout=None))
    t.join(DEADLINE / 2)  # waking takes microseconds; half the usual deadline spots a hang
    hung = t.is_alive()
    if hung:
        c.wakeup()
        t.join(DEADLINE)
    assert appended, "the forced interleaving did not happen"
    assert not hung, "poll slept through a record appended just before it waited"
    assert [r.value for r in box["result"]] == [b"late"]
    producer.close()


def test_wakeup_returns_a_blocked_poll(store):
    store.create_topic("t")
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    t, box = run_in_thread(lambda: c.poll(timeout=None))
    wait_until_waiting(store)
    c.wakeup()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert box == {"result": []}
    # A wakeup before poll makes the next poll return at once; the one after waits again.
    c.wakeup()
    assert c.poll(timeout=None) == []
    fill(store, "t", [2])
    assert len(c.poll(timeout=DEADLINE)) == 2


def test_wakeup_ends_iteration(store):
    store.create_topic("t", partitions=2)
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    seen = []
    two = threading.Event()

    def iterate():
        for r in c:
            seen.append(r.value)
            if len(seen) == 2:
                two.set()
        return "ended"

    t, box = run_in_thread(iterate)
    fill(store, "t", [1, 1])
    assert two.wait(DEADLINE)
    c.wakeup()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert box == {"result": "ended"}
    assert sorted(seen) == [b"v0-0", b"v1-0"]
    assert not c._closed
    fill(store, "t", [1, 0])
    assert [r.value for r in c.poll(timeout=DEADLINE)] == [b"v0-1"]


def test_close_ends_iteration(store):
    store.create_topic("t")
    fill(store, "t", [3])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
    seen = []
    got3 = threading.Event()

    def iterate():
        for r in c:
            seen.append(r.offset)
            if len(seen) == 3:
                got3.set()
        return "ended"

    t, box = run_in_thread(iterate)
    assert got3.wait(DEADLINE)
    wait_until_waiting(store)
    c.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert box == {"result": "ended"}
    assert seen == [0, 1, 2]
    assert store.committed("g", "t", 0) == 3  # auto commit on close
    with pytest.raises(errors.ClosedError):
        c.poll(timeout=0)


def test_store_close_ends_a_blocked_poll(tmp_path):
    s = kstore.open(tmp_path / "data")
    s.create_topic("t")
    c = s.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    t, box = run_in_thread(lambda: c.poll(timeout=None))
    wait_until_waiting(s)
    s.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert box.get("result") == [] or isinstance(box.get("error"), errors.ClosedError), box


def test_poll_async_and_async_for(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [3, 2])

    async def main():
        c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
        first = await c.poll_async(timeout=DEADLINE, max_records=4)
        assert len(first) == 4
        rest = await c.poll_async(timeout=DEADLINE)
        assert len(rest) == 1
        assert await c.poll_async(timeout=0) == []

        # poll_async waits on the loop for a record another thread sends.
        producer = store.producer(linger_ms=60_000)

        def send(value, part):
            wait_until_waiting(store)
            producer.send("t", value, partition=part)
            producer.flush()

        t = threading.Thread(target=send, args=(b"async", 1))
        t.start()
        woke = await c.poll_async(timeout=DEADLINE)
        t.join(DEADLINE)
        assert [(r.partition, r.value) for r in woke] == [(1, b"async")]

        # async for: every record, waiting for more, until wakeup().
        seen = []
        t = threading.Thread(target=send, args=(b"later", 0))
        t.start()

        async def consume():
            async for r in c:
                seen.append(r.value)
                if r.value == b"later":
                    c.wakeup()
            return "ended"

        assert await asyncio.wait_for(consume(), DEADLINE) == "ended"
        t.join(DEADLINE)
        assert seen == [b"later"]
        producer.close()
        c.close()
        return first + rest

    got = asyncio.run(main())
    assert sorted(ids(got)) == [("t", 0, 0), ("t", 0, 1), ("t", 0, 2), ("t", 1, 0), ("t", 1, 1)]


# ---------------------------------------------------------------------------------------------
# Commits


def test_commit_committed_and_position(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [10, 4])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=False)
    assert c.committed("t", 0) is None
    assert c.position("t", 0) == 0
    recs = c.poll(timeout=0, max_records=6)
    assert len(recs) == 6
    last = {}
    for r in recs:
        last[r.partition] = r.offset
    for p, o in last.items():
        assert c.position("t", p) == o + 1
    assert c.committed("t", 0) is None
    c.commit()
    for p, o in last.items():
        assert c.committed("t", p) == o + 1 == store.committed("g", "t", p)
    c.commit({("t", 1): 2}, metadata="explicit")
    assert c.committed("t", 1) == 2
    assert store.describe_group("g")["partitions"][1]["metadata"] == "explicit"
    # Committing the log end itself is fine; beyond it is not, nor a negative offset.
    c.commit({("t", 0): 10})
    for bad in (11, 1000, -1):
        with pytest.raises(errors.OffsetOutOfRangeError):
            c.commit({("t", 0): bad})
    assert c.committed("t", 0) == 10
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        c.commit({("t", 5): 0})
    with pytest.raises(ValueError):
        c.position("t", 7)


def test_commit_of_several_partitions_is_all_or_nothing(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [5, 5])
    c = store.consumer(group="g", topics=["t"], enable_auto_commit=False)
    with pytest.raises(errors.OffsetOutOfRangeError):
        c.commit({("t", 0): 3, ("t", 1): 99})
    assert c.committed("t", 0) is None and c.committed("t", 1) is None


def test_offsets_survive_close_and_reopen(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t", partitions=3)
        fill(s, "t", [10, 10, 10])
        c = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=False)
        first = c.poll(timeout=0, max_records=12)
        c.commit()
        committed = {p: c.committed("t", p) for p in range(3)}
        c.poll(timeout=0, max_records=5)  # read but not committed: read again after reopen
        auto = s.consumer(group="auto", topics=["t"], auto_offset_reset="earliest")
        auto_first = auto.poll(timeout=0, max_records=7)
        # Store.close closes `auto`, which commits its positions.
    with kstore.open(path) as s:
        assert {p: s.committed("g", "t", p) for p in range(3)} == committed
        assert None in committed.values()  # a partition the first poll never reached
        c = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
        for p in range(3):
            if committed[p] is not None:
                assert c.position("t", p) == committed[p]
        rest = drain(c)
        assert sorted(ids(first) + ids(rest)) == [("t", p, o) for p in range(3) for o in range(10)]
        auto = s.consumer(group="auto", topics=["t"], auto_offset_reset="earliest")
        auto_rest = drain(auto)
        assert sorted(ids(auto_first) + ids(auto_rest)) == [
            ("t", p, o) for p in range(3) for o in range(10)]
        assert s.groups() == ["auto", "g"]


def test_consumer_offsets_records_on_disk_decode_to_the_commits(store):
    """Kafka's key v1 and value v3 (kafka-storage.md 7.2) in the group's partition of
    __consumer_offsets: "my-group" -> partition 12 (7.1)."""
    store.create_topic("orders", partitions=4)
    with store.producer() as p:
        p.send_many("orders", [b"x"] * 12345, partition=3)
        p.send_many("orders", [b"y"] * 10, partition=0)
    c = store.consumer(group="my-group", topics=["orders"], enable_auto_commit=False)
    c.commit({("orders", 3): 12345})
    c.commit({("orders", 0): 4, ("orders", 3): 100}, metadata="second")
    gp = offsets.group_partition("my-group")
    assert gp == 12
    assert store.describe_topic("__consumer_offsets")["partitions"] == 50
    lg = store.partition("__consumer_offsets", gp)
    recs = []
    off = 0
    while off < lg.log_end_offset:
        for b in lg.read(off).batches():
            recs += b.records()
            off = b.next_offset
    assert len(recs) == 3
    first = recs[0]
    assert first.key == bytes.fromhex("0001" "0008" "6d792d67726f7570" "0006" "6f7264657273" "00000003")
    assert first.value[:2] == b"\x00\x03" and len(first.value) == 24
    assert struct.unpack(">q", first.value[2:10])[0] == 12345
    assert first.value[14:16] == b"\x00\x00"  # empty metadata
    decoded = [offsets.decode_record(r.key, r.value) for r in recs]
    assert [k for k, _ in decoded] == ["offset"] * 3
    got = [(o.group, o.topic, o.partition, o.offset, o.metadata) for _, o in decoded]
    assert got == [("my-group", "orders", 3, 12345, ""), ("my-group", "orders", 0, 4, "second"),
                   ("my-group", "orders", 3, 100, "second")]
    assert all(o.commit_timestamp > TS0 for _, o in decoded)
    for p in range(50):
        if p != gp and (store.path / f"__consumer_offsets-{p}").exists():
            assert store.partition("__consumer_offsets", p).log_end_offset == 0


# ---------------------------------------------------------------------------------------------
# Seeking and time lookups


def test_seek_seek_to_beginning_and_seek_to_end(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [10, 10])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    c.poll(timeout=0, max_records=3)  # pending decoded records must not leak past a seek
    c.seek("t", 0, 7)
    c.seek("t", 1, 9)
    assert c.position("t", 0) == 7
    assert sorted(ids(drain(c))) == [("t", 0, 7), ("t", 0, 8), ("t", 0, 9), ("t", 1, 9)]
    c.seek_to_beginning()
    assert c.position("t", 0) == 0 and c.position("t", 1) == 0
    assert len(drain(c)) == 20
    c.seek_to_beginning(("t", 1))
    assert sorted({r.partition for r in drain(c)}) == [1]
    c.seek_to_end()
    assert drain(c) == []
    fill(store, "t", [1, 0], prefix=b"new")
    assert [r.value for r in drain(c)] == [b"new0-10"]
    c.seek_to_end(("t", 0))
    assert c.position("t", 0) == 11
    with pytest.raises(TypeError):
        c.seek("t", 0, "3")
    with pytest.raises(ValueError):
        c.seek("t", 5, 0)


@pytest.mark.parametrize("reset, target", [(-5, None), (50, None)])
@pytest.mark.parametrize("mode", ["earliest", "latest"])
def test_seek_out_of_range_then_poll_applies_auto_offset_reset(store, reset, target, mode):
    store.create_topic("t")
    fill(store, "t", [10])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset=mode)
    c.seek("t", 0, reset)
    got = drain(c)
    if mode == "earliest":
        assert [r.offset for r in got] == list(range(10))
    else:
        assert got == []
        assert c.position("t", 0) == 10
        fill(store, "t", [1])
        assert [r.offset for r in drain(c)] == [10]


def test_seek_out_of_range_with_reset_none_raises(store):
    store.create_topic("t")
    fill(store, "t", [10])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="none")
    c.seek("t", 0, 50)
    with pytest.raises(errors.OffsetOutOfRangeError):
        c.poll(timeout=0)


def test_poll_batches_out_of_range_seek_applies_reset(store):
    store.create_topic("t")
    fill(store, "t", [10])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    c.seek("t", 0, 99)
    cols = c.poll_batches(timeout=0)
    assert [int(o) for pc in cols for o in pc.offsets] == list(range(10))


def test_offsets_for_times(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [10, 3], ts=lambda p, i: TS0 + 100 * i)
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    got = c.offsets_for_times({("t", 0): TS0 + 150, ("t", 1): TS0})
    assert got == {("t", 0): 2, ("t", 1): 0}
    assert c.offsets_for_times({("t", 1): TS0 + 1000}) == {("t", 1): None}
    assert c.offsets_for_times({("t", 0): TS0 + 900}) == {("t", 0): 9}
    assert c.offsets_for_times({("t", 0): TS0 + 901}) == {("t", 0): None}
    assert c.offsets_for_times({("t", 0): EARLIEST_TIMESTAMP, ("t", 1): LATEST_TIMESTAMP}) == {
        ("t", 0): 0, ("t", 1): 3}
    # Seeking to what it returns reads from there.
    c.seek("t", 0, c.offsets_for_times({("t", 0): TS0 + 750})[("t", 0)])
    assert [r.offset for r in drain(c) if r.partition == 0] == [8, 9]


# ---------------------------------------------------------------------------------------------
# Assignment and groups


def test_assign_reads_only_the_given_partitions(store):
    store.create_topic("t", partitions=3)
    store.create_topic("u", partitions=2)
    fill(store, "t", [3, 4, 5])
    fill(store, "u", [2, 2])
    c = store.consumer(group="g", auto_offset_reset="earliest", enable_auto_commit=False)
    assert c.assignment() == set()
    assert c.poll(timeout=0) == []
    c.assign([("t", 1), ("u", 0)])
    assert c.assignment() == {("t", 1), ("u", 0)}
    got = drain(c)
    assert sorted(ids(got)) == [("t", 1, o) for o in range(4)] + [("u", 0, 0), ("u", 0, 1)]
    c.commit()
    assert store.committed("g", "t", 1) == 4 and store.committed("g", "t", 0) is None
    # Another member subscribing to the group does not take manual partitions away.
    other = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
    assert other.assignment() == {("t", 0), ("t", 1), ("t", 2)}
    assert c.assignment() == {("t", 1), ("u", 0)}
    with pytest.raises(ValueError):
        c.subscribe(["t"])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        c.assign([("t", 3)])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        c.assign([("nope", 0)])
    with pytest.raises(ValueError):
        other.assign([("t", 0)])
    c.assign([("t", 2)])
    assert [r.offset for r in drain(c)] == list(range(5))


def _check_ranges(consumers, n):
    """Range assignment: every partition exactly once, each member a contiguous block."""
    parts = [sorted(p for _, p in c.assignment()) for c in consumers]
    assert sorted(p for ps in parts for p in ps) == list(range(n))
    for ps in parts:
        assert ps == list(range(ps[0], ps[0] + len(ps))) if ps else True
    return sorted((len(ps) for ps in parts), reverse=True)


def test_group_members_split_partitions_by_range(store):
    store.create_topic("t", partitions=4)
    a = store.consumer(group="g", topics=["t"])
    assert _check_ranges([a], 4) == [4]
    b = store.consumer(group="g", topics=["t"])
    assert _check_ranges([a, b], 4) == [2, 2]
    c = store.consumer(group="g", topics=["t"])
    assert _check_ranges([a, b, c], 4) == [2, 1, 1]
    # The first n % m members by id get the extra one.
    by_id = sorted([a, b, c], key=lambda x: x.member_id)
    assert [len(x.assignment()) for x in by_id] == [2, 1, 1]
    c.close()
    assert _check_ranges([a, b], 4) == [2, 2]
    b.close()
    assert a.assignment() == {("t", p) for p in range(4)}
    assert [m["member_id"] for m in store.describe_group("g")["members"]] == [a.member_id]
    # A consumer of another group is not part of this one.
    other = store.consumer(group="h", topics=["t"])
    assert len(other.assignment()) == 4 and len(a.assignment()) == 4


@pytest.mark.parametrize("auto_commit", [False, True])
def test_rebalance_on_close_resumes_from_committed_offsets(store, auto_commit):
    store.create_topic("t", partitions=4)
    fill(store, "t", [10, 10, 10, 10])
    a = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=False)
    b = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=auto_commit)
    a_parts = {p for _, p in a.assignment()}
    b_parts = {p for _, p in b.assignment()}
    assert len(a_parts) == len(b_parts) == 2
    seen_a = drain(a)
    a.commit()
    seen_b = drain(b, max_records=7)
    b.commit()
    fill(store, "t", [5, 5, 5, 5], prefix=b"more")
    seen_a += drain(a)
    b_committed = b.poll(timeout=0, max_records=3)
    b.commit()
    committed_b = {p: b.committed("t", p) for p in b_parts}
    b_uncommitted = b.poll(timeout=0, max_records=2)  # read after the last explicit commit
    b.close()
    assert a.assignment() == {("t", p) for p in range(4)}
    after = drain(a)
    # a resumes b's partitions where b's group offsets stand; nothing is skipped.
    got = ids(seen_a) + ids(seen_b) + ids(b_committed) + ids(after)
    if auto_commit:
        got += ids(b_uncommitted)  # b committed its position when it closed
        assert sorted(got) == [("t", p, o) for p in range(4) for o in range(15)]
    else:
        assert sorted(set(got)) == [("t", p, o) for p in range(4) for o in range(15)]
        for p in b_parts:
            firsts = [o for _, q, o in ids(after) if q == p]
            assert firsts == list(range(committed_b[p], 15))
    assert len(ids(seen_a) + ids(after)) == len(set(ids(seen_a) + ids(after)))


def test_member_joining_takes_over_where_the_group_got_to(store):
    """With auto commit, partitions that move to a joining member are read on from where
    their previous owner got to: no record is returned twice (Kafka commits on revocation
    before the new owner starts)."""
    store.create_topic("t", partitions=4)
    fill(store, "t", [10, 10, 10, 10])
    a = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
    first = drain(a)
    assert len(first) == 40
    b = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
    fill(store, "t", [5, 5, 5, 5], prefix=b"more")
    rest = drain(b) + drain(a)
    assert len(b.assignment()) == 2 and len(a.assignment()) == 2
    got = ids(first) + ids(rest)
    dups = sorted({x for x in got if got.count(x) > 1})
    assert not dups, f"{len(dups)} records returned twice, e.g. {dups[:3]}"
    assert sorted(got) == [("t", p, o) for p in range(4) for o in range(15)]


# ---------------------------------------------------------------------------------------------
# poll_batches


def test_poll_batches_matches_poll(store):
    store.create_topic("t", partitions=3)
    fill(store, "t", [25, 0, 40], ts=lambda p, i: TS0 + i)
    with store.producer(compression="zstd", linger_ms=60_000) as p:
        for i in range(25, 60):
            p.send("t", b"z%d" % i, key=None if i % 3 else b"kz%d" % i, partition=0,
                   timestamp=TS0 + i)
        p.send_many("t", [b"m%d" % i for i in range(30)], partition=1)
    ref = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    want = sorted((r.partition, r.offset, r.timestamp, r.key, r.value) for r in drain(ref))
    assert len(want) == 60 + 30 + 40
    col = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    got = []
    while True:
        out = col.poll_batches(timeout=0, max_records=17)
        if not out:
            break
        assert sum(len(pc) for pc in out) <= 17
        for pc in out:
            assert pc.topic == "t"
            offs = [int(o) for o in pc.offsets]
            assert offs == list(range(offs[0], offs[0] + len(offs)))
            assert len(pc.values()) == len(pc.keys()) == len(pc.timestamps) == len(offs)
            got += zip([pc.partition] * len(pc), offs, [int(t) for t in pc.timestamps],
                       pc.keys(), pc.values())
    assert sorted(got) == want
    assert len(got) == len(want)


def test_poll_and_poll_batches_share_positions(store):
    store.create_topic("t")
    fill(store, "t", [30])
    c = store.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
    a = c.poll(timeout=0, max_records=5)
    (pc,) = c.poll_batches(timeout=0, max_records=10)
    b = c.poll(timeout=0)
    offs = [r.offset for r in a] + [int(o) for o in pc.offsets] + [r.offset for r in b]
    assert offs == list(range(30))


# ---------------------------------------------------------------------------------------------
# Auto commit


def test_auto_commit_commits_during_polls(store):
    store.create_topic("t", partitions=2)
    fill(store, "t", [6, 6])
    c = store.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=True, auto_commit_interval_ms=1)
    got = c.poll(timeout=0, max_records=8)
    assert len(got) == 8
    want = {p: c.position("t", p) for p in (0, 1)}
    end = time.monotonic() + DEADLINE
    while {p: store.committed("g", "t", p) for p in (0, 1)} != want:
        assert time.monotonic() < end, "auto commit never happened"
        c.poll(timeout=0.002, max_records=1)
        want = {p: c.position("t", p) for p in (0, 1)}
    manual = store.consumer(group="m", topics=["t"], auto_offset_reset="earliest",
                            enable_auto_commit=False)
    drain(manual)
    drain(manual)
    assert store.committed("m", "t", 0) is None


def test_manual_commit_after_a_rebalance_commits_what_was_delivered(tmp_path):
    """enable_auto_commit=False: poll, a second member joins (taking partitions away), then
    commit(): the records the first one was given are committed, not handed out again."""
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", 2)
        with s.producer(linger_ms=0) as p:
            for i in range(20):
                p.send("t", b"%d" % i, partition=i % 2)
        c1 = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                        enable_auto_commit=False)
        first = c1.poll(timeout=5)
        while len(first) < 20:
            first += c1.poll(timeout=5)
        c2 = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                        enable_auto_commit=False)
        c1.commit()  # c1 now has one partition; both were delivered to it
        assert {s.committed("g", "t", p) for p in (0, 1)} == {10}
        assert c2.poll(timeout=0.2) == []  # nothing delivered twice
        c1.close()
        c2.close()


def test_poll_batches_decodes_about_what_it_returns(tmp_path, monkeypatch):
    """A read takes up to 16 MiB; lz4 batches of it inflate to far more records than a poll
    returns. poll_batches decoded the whole read on every call and kept max_records, so
    reading a topic decoded O(n^2) records (7x slower at 1 M records). It decodes the batches
    it returns, give or take one batch at each end."""
    import kstore.consumer as kc

    decoded = []
    real = kc._core.columns

    def counting(*args, **kwargs):
        cols = real(*args, **kwargs)
        decoded.append(len(cols))
        return cols

    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t")
        p = s.producer(compression="lz4", batch_size=16384)
        n = 200_000
        p.send_many("t", [b"v%07d" % i + b"x" * 90 for i in range(n)])
        monkeypatch.setattr(kc._core, "columns", counting)
        c = s.consumer(auto_offset_reset="earliest")
        c.assign([("t", 0)])
        got = []
        while True:
            out = c.poll_batches(timeout=0, max_records=5_000)
            if not out:
                break
            got.extend(int(o) for b in out for o in b.offsets)
        assert got == list(range(n))
        per_batch = 16384 // 100 + 1
        assert sum(decoded) <= n + len(decoded) * 2 * per_batch
