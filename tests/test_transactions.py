"""Embedded transactions: store.producer(transactional_id=...) with begin/commit/abort and
send_offsets_to_transaction, read_committed and read_uncommitted consumers through poll and
poll_batches, fencing of a zombie producer, and a producer killed mid-transaction."""

from __future__ import annotations

import os
import subprocess
import time
import sys

import pytest

import kstore
from kstore.errors import (
    InvalidTxnStateError,
    OffsetOutOfRangeError,
    ProducerFencedError,
    UnknownTopicOrPartitionError,
)


@pytest.fixture
def store(tmp_path):
    s = kstore.Store(tmp_path / "data")
    s.create_topic("out", partitions=2)
    s.create_topic("in", partitions=1)
    yield s
    s.close()


def values_polled(c) -> list[bytes]:
    out = []
    while True:
        recs = c.poll(timeout=0)
        if not recs:
            return out
        out += [r.value for r in recs]


def values_batched(c) -> list[bytes]:
    out = []
    while True:
        parts = c.poll_batches(timeout=0)
        if not parts:
            return out
        for pc in parts:
            out += pc.values()


def consumer(store, isolation):
    c = store.consumer(isolation_level=isolation, auto_offset_reset="earliest")
    c.assign([("out", 0), ("out", 1)])
    return c


def run_transactions(store):
    p = store.producer(transactional_id="app", linger_ms=0)
    for tag, commit in ((b"a", True), (b"b", False), (b"c", True)):
        p.begin_transaction()
        for i in range(4):
            p.send("out", b"%s%d" % (tag, i), partition=i % 2)
        p.send_many("out", [b"%sm%d" % (tag, i) for i in range(3)], partition=1)
        if commit:
            p.commit_transaction()
        else:
            p.abort_transaction()
    p.close()


@pytest.mark.parametrize("read", [values_polled, values_batched])
def test_each_isolation_level_sees_what_it_should(store, read):
    run_transactions(store)
    committed = sorted(read(consumer(store, "read_committed")))
    assert committed == sorted([b"%s%d" % (t, i) for t in (b"a", b"c") for i in range(4)]
                               + [b"%sm%d" % (t, i) for t in (b"a", b"c") for i in range(3)])
    every = sorted(read(consumer(store, "read_uncommitted")))
    # Aborted records are there for read_uncommitted; markers are never records.
    assert every == sorted(committed + [b"b%d" % i for i in range(4)]
                           + [b"bm%d" % i for i in range(3)])


def test_read_committed_stops_at_an_open_transaction(store):
    plain = store.producer(linger_ms=0)
    plain.send("out", b"before", partition=0)
    p = store.producer(transactional_id="t", linger_ms=0)
    p.begin_transaction()
    p.send("out", b"open", partition=0)
    p.flush()
    plain.send("out", b"after", partition=0)
    c = consumer(store, "read_committed")
    assert values_polled(c) == [b"before"]
    assert values_batched(consumer(store, "read_committed")) == [b"before"]
    p.commit_transaction()
    assert values_polled(c) == [b"open", b"after"]


def test_offsets_commit_with_the_transaction_only(store):
    p = store.producer(transactional_id="t", linger_ms=0)
    store.producer(linger_ms=0).send_many("in", [b"x"] * 10, partition=0)
    p.begin_transaction()
    p.send("out", b"x", partition=0)
    p.send_offsets_to_transaction({("in", 0): 5}, "g")
    p.abort_transaction()
    assert store.committed("g", "in", 0) is None
    p.begin_transaction()
    p.send_offsets_to_transaction({("in", 0): 7}, "g")
    assert store.committed("g", "in", 0) is None  # not before the commit
    p.commit_transaction()
    assert store.committed("g", "in", 0) == 7


def test_send_offsets_to_transaction_takes_what_consumer_commit_takes(store):
    """The embedded API has one rule for committed offsets: [0, log end], else
    OffsetOutOfRangeError, nothing committed (send_offsets_to_transaction raised ValueError,
    consumer.commit and store.commit_offsets OffsetOutOfRangeError). kstore serve, as Kafka,
    takes offsets past the log end: tests/server/test_transactions.py."""
    store.producer(linger_ms=0).send_many("in", [b"x"] * 3, partition=0)
    c = store.consumer(group="g", enable_auto_commit=False)
    p = store.producer(transactional_id="t", linger_ms=0)
    p.begin_transaction()
    for bad in ({("in", 0): 4}, {("in", 0): -1}, {("in", 0): 2, ("out", 0): 1}):
        with pytest.raises(OffsetOutOfRangeError, match=r"\[0, [03]\]"):
            p.send_offsets_to_transaction(bad, "g")
        with pytest.raises(OffsetOutOfRangeError, match=r"\[0, [03]\]"):
            c.commit(bad)
    with pytest.raises(UnknownTopicOrPartitionError):
        p.send_offsets_to_transaction({("in", 5): 0}, "g")
    p.send_offsets_to_transaction({("in", 0): 3}, "g")  # the log end itself is fine
    p.commit_transaction()
    assert store.committed("g", "in", 0) == 3 and store.committed("g", "out", 0) is None
    c.close()


def test_a_new_producer_fences_the_old_one(store):
    old = store.producer(transactional_id="t", linger_ms=0)
    old.begin_transaction()
    old.send("out", b"zombie", partition=0)
    old.flush()
    new = store.producer(transactional_id="t", linger_ms=0)
    assert new.producer_epoch == old.producer_epoch + 1
    with pytest.raises(ProducerFencedError):
        old.send("out", b"late", partition=1)  # a new partition: refused at once
    with pytest.raises(ProducerFencedError):
        old.commit_transaction()
    new.begin_transaction()
    new.send("out", b"new", partition=0)
    new.commit_transaction()
    assert values_polled(consumer(store, "read_committed")) == [b"new"]
    assert b"late" not in values_polled(consumer(store, "read_uncommitted"))


def test_sending_outside_a_transaction_is_refused(store):
    p = store.producer(transactional_id="t")
    with pytest.raises(InvalidTxnStateError):
        p.send("out", b"x", partition=0)
    with pytest.raises(InvalidTxnStateError):
        p.send_many("out", [b"x"], partition=0)
    with pytest.raises(InvalidTxnStateError):
        p.commit_transaction()
    p.begin_transaction()
    with pytest.raises(InvalidTxnStateError):
        p.begin_transaction()
    p.commit_transaction()  # wrote nothing: no marker needed
    p.close()
    with pytest.raises(InvalidTxnStateError):
        store.producer().begin_transaction()


def test_batches_carry_the_producer_and_rising_sequences(store):
    p = store.producer(transactional_id="t", linger_ms=0, batch_size=64)
    p.begin_transaction()
    for i in range(5):
        p.send("out", b"v%d" % i * 10, partition=0)
    p.send_many("out", [b"w%d" % i * 10 for i in range(6)], partition=0)
    p.commit_transaction()
    batches = list(store.partition("out", 0).read(0).batches())
    data = [b for b in batches if not b.is_control]
    assert all(b.is_transactional and b.producer_id == p.producer_id for b in data)
    seqs = [(b.base_sequence, b.record_count) for b in data]
    assert len(seqs) > 2
    for (s0, n0), (s1, _) in zip(seqs, seqs[1:]):
        assert s1 == s0 + n0
    (marker,) = [b for b in batches if b.is_control]
    assert marker.last_offset == store.partition("out", 0).log_end_offset - 1


KILLED_CHILD = """
import os, signal, sys
import kstore
s = kstore.Store(sys.argv[1])
p = s.producer(transactional_id="crash", linger_ms=0)
p.begin_transaction()
p.send("out", b"committed", partition=0)
p.commit_transaction()
p.begin_transaction()
p.send("out", b"left-open", partition=0)
p.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_producer_killed_mid_transaction(tmp_path):
    d = tmp_path / "data"
    with kstore.Store(d) as s:
        s.create_topic("out", partitions=1)
    r = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(d)], timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == -9
    with kstore.Store(d) as s:
        c = s.consumer(isolation_level="read_committed", auto_offset_reset="earliest")
        c.assign([("out", 0)])
        assert values_polled(c) == [b"committed"]  # the open transaction holds the LSO
        p = s.producer(transactional_id="crash", linger_ms=0)  # aborts it
        p.begin_transaction()
        p.send("out", b"next", partition=0)
        p.commit_transaction()
        assert values_polled(c) == [b"next"]
        u = s.consumer(isolation_level="read_uncommitted", auto_offset_reset="earliest")
        u.assign([("out", 0)])
        assert values_polled(u) == [b"committed", b"left-open", b"next"]


def test_isolation_level_is_checked(store):
    with pytest.raises(ValueError):
        store.consumer(isolation_level="read_something")


def test_maintenance_aborts_a_transaction_past_its_timeout(store):
    p = store.producer(transactional_id="slow", linger_ms=0, transaction_timeout_ms=1)
    p.begin_transaction()
    p.send("out", b"too-late", partition=0)
    p.flush()
    lg = store.partition("out", 0)
    assert lg.last_stable_offset() == 0
    time.sleep(0.01)
    assert store.run_maintenance().get("aborted_transactions") == ["slow"]
    assert lg.last_stable_offset() == lg.log_end_offset
    with pytest.raises(ProducerFencedError):
        p.commit_transaction()
    assert values_polled(consumer(store, "read_committed")) == []
