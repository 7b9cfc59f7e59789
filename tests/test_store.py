"""Store: the data directory, the topic registry and its rules, config changes reaching the open
logs, partitions that only grow, deletion, one writer per directory (in this process and in
another), read-only readers alongside the writer, and the groups view of committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import kstore
from kstore import errors
from kstore.records import TIMESTAMP_CREATE, TIMESTAMP_LOG_APPEND
from kstore.store import DataSignal

TS0 = 1_700_000_000_000


def read_all(lg, start=0):
    """Every record of a PartitionLog from ``start`` to its end, across segments."""
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


def values(lg, start=0):
    return [r.value for r in read_all(lg, start)]


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "data")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# Opening


def test_open_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "data"
    assert not path.exists()
    with kstore.open(path) as s:
        assert path.is_dir()
        assert s.topics() == []
        assert not s.closed
    assert s.closed
    with pytest.raises(errors.ClosedError):
        s.create_topic("t")


def test_open_a_file_is_a_storage_error_and_the_file_is_kept(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(b"not a directory")
    with pytest.raises(errors.KafkaStorageError, match="file"):
        kstore.open(f)
    with pytest.raises(errors.KafkaStorageError):
        kstore.open(f, read_only=True)
    assert f.read_bytes() == b"not a directory"


def test_read_only_open_of_a_missing_directory_creates_nothing(tmp_path):
    with pytest.raises(errors.KafkaStorageError, match="does not exist"):
        kstore.open(tmp_path / "nope", read_only=True)
    assert not (tmp_path / "nope").exists()


# ---------------------------------------------------------------------------------------------
# Topic names, partitions and config


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 250, "a/b", "a b", "a\\b", "ü", "a:b",
                                  "a*", "tab\t", "new\nline", "trailing\n"])
def test_bad_topic_names_are_refused(store, name):
    with pytest.raises(errors.InvalidTopicError):
        store.create_topic(name)
    assert store.topics() == []
    # Nothing but the lock files of a (shared) store: no registry, no partition folder.
    assert sorted(os.listdir(store.path)) == [".kstore-shared", ".lock"]


def test_topic_name_of_249_legal_characters_is_accepted(store):
    name = ("Ab-9_." * 50)[:249]
    assert len(name) == 249
    store.create_topic(name)
    assert store.topics() == [name]
    with store.producer(linger_ms=0) as p:
        p.send(name, b"v", key=b"k")
    assert values(store.partition(name, 0)) == [b"v"]


def test_topic_name_must_be_a_str(store):
    with pytest.raises(TypeError):
        store.create_topic(b"bytes")


@pytest.mark.parametrize("partitions", [0, -1, "x", 1.5, None, True])
def test_bad_partition_counts_are_refused(store, partitions):
    with pytest.raises(errors.InvalidPartitionsError):
        store.create_topic("t", partitions=partitions)
    assert store.topics() == []


@pytest.mark.parametrize("config, key", [
    ({"no.such.key": 1}, "no.such.key"),
    ({"retention.ms": "abc"}, "retention.ms"),
    ({"retention.ms": -2}, "retention.ms"),
    ({"segment.bytes": 1}, "segment.bytes"),
    ({"cleanup.policy": "forever"}, "cleanup.policy"),
    ({"compression.type": "brotli"}, "compression.type"),
    ({"message.timestamp.type": "Now"}, "message.timestamp.type"),
    ({"preallocate": "maybe"}, "preallocate"),
    ({"min.cleanable.dirty.ratio": 2}, "min.cleanable.dirty.ratio"),
])
def test_bad_config_is_refused_naming_the_key(store, config, key):
    with pytest.raises(errors.InvalidConfigError, match=key.replace(".", r"\.")):
        store.create_topic("t", config=config)
    assert store.topics() == []
    assert not (store.path / "kstore.json").exists() or "t" not in json.loads(
        (store.path / "kstore.json").read_text())["topics"]


def test_config_given_as_strings_is_converted(store):
    store.create_topic("t", config={"retention.ms": "1000", "preallocate": "false",
                                    "cleanup.policy": "compact,delete"})
    cfg = store.topic_config("t")
    assert cfg["retention.ms"] == 1000
    assert cfg["preallocate"] is False
    assert cfg["cleanup.policy"] == "compact,delete"
    assert cfg["segment.bytes"] == 1073741824  # Kafka's default for the keys not given


def test_create_twice_is_topic_already_exists_and_keeps_the_first(store):
    store.create_topic("t", partitions=2, config={"retention.ms": 5000})
    with pytest.raises(errors.TopicAlreadyExistsError):
        store.create_topic("t", partitions=5)
    d = store.describe_topic("t")
    assert d["partitions"] == 2
    assert d["config"] == {"retention.ms": 5000}


def test_create_topics_writes_the_registry_once_for_many_topics(store, monkeypatch):
    """Issue 13 item 7: 10,000 topics made one create_topic at a time rewrote and fsynced the
    whole registry each time (O(n^2)); create_topics writes it once and reports each failure."""
    store.create_topic("old", partitions=2)
    writes = []
    real = kstore.store.atomic_write
    monkeypatch.setattr(kstore.store, "atomic_write", lambda p, d: (writes.append(p), real(p, d)))
    names = [f"t{i:05d}" for i in range(10_000)]
    failed = store.create_topics([(n, 1) for n in names] + [
        ("old", 1), ("bad/name", 1), ("zero", 0), ("badcfg", 1, {"retention.ms": "soon"}),
        ("twice", 3, {"retention.ms": 5000}), ("twice", 1)])
    assert len(writes) == 1
    assert {k: type(v) for k, v in failed.items()} == {
        "old": errors.TopicAlreadyExistsError, "bad/name": errors.InvalidTopicError,
        "zero": errors.InvalidPartitionsError, "badcfg": errors.InvalidConfigError,
        "twice": errors.InvalidRequestError}
    assert "retention.ms" in str(failed["badcfg"])
    assert "more than once" in str(failed["twice"])
    assert set(store.topics()) == {"old", *names}
    assert store.partitions_for("old") == 2
    # A second batch of names that all exist writes nothing; single create_topic still works.
    assert set(store.create_topics([("old", 1), ("t00001", 1)])) == {"old", "t00001"}
    assert len(writes) == 1
    store.create_topic("single")
    path = store.path
    store.close()
    with kstore.open(path, read_only=True) as ro:
        assert len(ro.topics()) == 10_002


def test_create_topics_that_cannot_write_the_registry_creates_none(store, monkeypatch):
    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kstore.store, "atomic_write", full)
    with pytest.raises(errors.KafkaStorageError, match="no topic was created"):
        store.create_topics([("a", 1), ("b", 1)])
    assert store.topics() == []


def test_describe_topic(store):
    store.create_topic("clicks", partitions=3, config={"compression.type": "lz4"})
    with store.producer(linger_ms=0) as p:
        for i in range(5):
            p.send("clicks", b"v%d" % i, partition=1)
    d = store.describe_topic("clicks")
    assert d["name"] == "clicks"
    assert d["partitions"] == 3
    assert d["config"] == {"compression.type": "lz4"}
    assert isinstance(d["topic_id"], str) and d["topic_id"]
    info = d["partition_info"]
    assert [x["partition"] for x in info] == [0, 1, 2]
    assert [(x["log_start_offset"], x["log_end_offset"]) for x in info] == [(0, 0), (0, 5), (0, 0)]
    assert info[1]["size_bytes"] > 0 and info[0]["size_bytes"] == 0
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.describe_topic("nope")


def test_topics_lists_names_without_the_internal_topic(store):
    store.create_topic("b")
    store.create_topic("a")
    c = store.consumer(group="g", topics=["a"], auto_offset_reset="earliest")
    c.poll(timeout=0)
    c.commit({("a", 0): 0})
    assert store.topics() == ["a", "b"]
    assert "__consumer_offsets" in store.topics(internal=True)


# ---------------------------------------------------------------------------------------------
# alter_topic_config


def test_alter_topic_config_applies_to_the_open_logs(store):
    store.create_topic("t", partitions=2)
    with store.producer(linger_ms=0) as p:
        p.send("t", b"before", partition=0, timestamp=TS0)
        p.send("t", b"before", partition=1, timestamp=TS0)
        store.alter_topic_config("t", {"message.timestamp.type": "LogAppendTime"})
        assert store.describe_topic("t")["config"] == {"message.timestamp.type": "LogAppendTime"}
        p.send("t", b"after", partition=0, timestamp=TS0)
        p.send("t", b"after", partition=1, timestamp=TS0)
    for part in (0, 1):
        before, after = read_all(store.partition("t", part))
        assert before.timestamp == TS0 and before.timestamp_type == TIMESTAMP_CREATE
        assert after.value == b"after"
        assert after.timestamp_type == TIMESTAMP_LOG_APPEND
        assert after.timestamp > TS0  # the log's clock, not the producer's timestamp


def test_alter_topic_config_none_resets_a_key(store):
    store.create_topic("t", config={"retention.ms": 1000, "message.timestamp.type": "LogAppendTime"})
    store.partition("t", 0)  # open it
    store.alter_topic_config("t", {"message.timestamp.type": None, "segment.ms": 3600000})
    assert store.describe_topic("t")["config"] == {"retention.ms": 1000, "segment.ms": 3600000}
    assert store.topic_config("t")["message.timestamp.type"] == "CreateTime"
    with store.producer(linger_ms=0) as p:
        p.send("t", b"x", timestamp=TS0)
    (r,) = read_all(store.partition("t", 0))
    assert (r.timestamp, r.timestamp_type) == (TS0, TIMESTAMP_CREATE)
    # Resetting a key that was never set is fine; an unknown key is not.
    store.alter_topic_config("t", {"flush.ms": None})
    with pytest.raises(errors.InvalidConfigError, match=r"bogus\.key"):
        store.alter_topic_config("t", {"bogus.key": None})
    with pytest.raises(errors.InvalidConfigError, match=r"retention\.ms"):
        store.alter_topic_config("t", {"retention.ms": "soon"})
    assert store.describe_topic("t")["config"] == {"retention.ms": 1000, "segment.ms": 3600000}
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.alter_topic_config("nope", {"retention.ms": 1})


# ---------------------------------------------------------------------------------------------
# create_partitions, delete_topic, partition()


def test_create_partitions_grows_only(store):
    store.create_topic("t", partitions=2)
    for bad in (1, 2, 0, -3, "4"):
        with pytest.raises(errors.InvalidPartitionsError):
            store.create_partitions("t", bad)
    assert store.describe_topic("t")["partitions"] == 2
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.partition("t", 3)
    store.create_partitions("t", 5)
    assert store.describe_topic("t")["partitions"] == 5
    assert store.partitions_for("t") == 5
    assert store.partition("t", 4).log_end_offset == 0
    with store.producer(linger_ms=0) as p:
        assert p.send("t", b"x", partition=4) == 4
    assert values(store.partition("t", 4)) == [b"x"]
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.create_partitions("nope", 3)


def test_delete_topic_removes_its_data(store):
    store.create_topic("t", partitions=2)
    store.create_topic("keep")
    with store.producer(linger_ms=0) as p:
        p.send("t", b"a", partition=0)
        p.send("t", b"b", partition=1)
        p.send("keep", b"k")
    assert (store.path / "t-0").is_dir() and (store.path / "t-1").is_dir()
    store.delete_topic("t")
    assert store.topics() == ["keep"]
    assert not [n for n in os.listdir(store.path) if n.startswith("t-")]
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.partition("t", 0)
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.describe_topic("t")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.delete_topic("t")
    assert values(store.partition("keep", 0)) == [b"k"]
    # A topic of the same name starts empty.
    store.create_topic("t")
    assert store.partition("t", 0).log_end_offset == 0


def test_delete_topic_with_a_name_of_249_characters(store):
    """Kafka shortens the topic part of ``<topic>-<p>.<id>-delete`` to keep it under 255 bytes;
    a 249-character topic must be deletable and leave nothing behind."""
    name = "d" * 249
    store.create_topic(name)
    with store.producer(linger_ms=0) as p:
        p.send(name, b"v")
    store.delete_topic(name)
    assert name not in store.topics()
    assert [n for n in os.listdir(store.path) if n.startswith("ddd")] == []
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.partition(name, 0)


@pytest.mark.parametrize("part", [-1, 2, 100, "0", None])
def test_partition_out_of_range(store, part):
    store.create_topic("t", partitions=2)
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.partition("t", part)


def test_unknown_topic(store):
    with pytest.raises(errors.UnknownTopicOrPartitionError, match="nope"):
        store.partition("nope", 0)
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.producer().send("nope", b"x")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        store.consumer(group=None, topics=["nope"])
    assert store.topics() == []


def test_auto_create_topics(tmp_path):
    with kstore.open(tmp_path / "data", auto_create_topics=True, num_partitions=3) as s:
        with s.producer() as p:
            p.send("made", b"x", key=b"k")
        assert s.topics() == ["made"]
        assert s.partitions_for("made") == 3
        assert s.partition("other", 0).log_end_offset == 0
        c = s.consumer(group=None, topics=["third"])
        assert c.assignment() == {("third", p) for p in range(3)}
        assert s.topics() == ["made", "other", "third"]
        with pytest.raises(errors.InvalidTopicError):
            s.partition("bad name", 0)
        assert s.topics() == ["made", "other", "third"]


# ---------------------------------------------------------------------------------------------
# The registry


def test_registry_survives_reopen(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("a", partitions=3, config={"retention.ms": 1234, "compression.type": "zstd"})
        s.create_topic("b")
        s.create_partitions("b", 2)
        s.alter_topic_config("a", {"segment.ms": 60000})
        ids = {t: s.describe_topic(t)["topic_id"] for t in ("a", "b")}
        with s.producer() as p:
            for i in range(30):
                p.send("a", b"v%d" % i, key=b"k%d" % i)
    with kstore.open(path) as s:
        assert s.topics() == ["a", "b"]
        a = s.describe_topic("a")
        assert a["partitions"] == 3
        assert a["config"] == {"retention.ms": 1234, "compression.type": "zstd", "segment.ms": 60000}
        assert s.describe_topic("b")["partitions"] == 2
        assert {t: s.describe_topic(t)["topic_id"] for t in ("a", "b")} == ids
        got = sorted(v for p in range(3) for v in values(s.partition("a", p)))
        assert got == sorted(b"v%d" % i for i in range(30))


def test_corrupt_registry_is_a_clear_error_and_nothing_is_deleted(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t", partitions=2)
        with s.producer(linger_ms=0) as p:
            p.send("t", b"a", partition=0)
            p.send("t", b"b", partition=1)
    registry = path / "kstore.json"
    good = registry.read_bytes()
    listing = sorted(os.listdir(path))
    files = {p: p.read_bytes() for p in path.rglob("*.log")}
    for bad in (b"{not json", good[: len(good) // 2], b'{"topics": {"a b": {"partitions": 1}}}',
                b'{"topics": {"t": {"partitions": 0}}}', b"[]", b"\xff\xfe"):
        registry.write_bytes(bad)
        with pytest.raises(errors.KafkaStorageError) as ei:
            kstore.open(path)
        msg = str(ei.value)
        assert "kstore.json" in msg and "corrupt" in msg, msg
        assert registry.read_bytes() == bad
        assert sorted(os.listdir(path)) == listing
        assert {p: p.read_bytes() for p in path.rglob("*.log")} == files
    # Restored from a backup, the store opens (in this same process) with its data.
    registry.write_bytes(good)
    with kstore.open(path) as s:
        assert s.topics() == ["t"]
        assert values(s.partition("t", 0)) == [b"a"]
        assert values(s.partition("t", 1)) == [b"b"]


# ---------------------------------------------------------------------------------------------
# One writer; readers alongside


def test_second_writer_in_this_process_is_refused_by_an_exclusive_store(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path, exclusive=True) as s:
        s.create_topic("t")
        for exclusive in (False, True):
            with pytest.raises(errors.LogLockedError, match="read_only"):
                kstore.open(path, exclusive=exclusive)
        s.create_topic("u")  # the first writer is unaffected
        assert s.topics() == ["t", "u"]
    with kstore.open(path) as s:  # released on close
        assert s.topics() == ["t", "u"]
        with pytest.raises(errors.LogLockedError, match="read_only"):
            kstore.open(path, exclusive=True)  # an exclusive store waits for shared ones to go


def test_shared_stores_in_one_process_write_side_by_side(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as a, kstore.open(path) as b:
        a.create_topic("t", partitions=2)
        assert b.topics() == ["t"]  # b sees a's topic
        pa, pb = a.producer(linger_ms=0), b.producer(linger_ms=0)
        for i in range(100):
            (pa if i % 2 else pb).send("t", b"%d" % i, partition=0)
        assert [r.value for r in a.partition("t", 0).read_records(0)] == [b"%d" % i for i in range(100)]
        assert b.partition("t", 0).log_end_offset == 100


SECOND_WRITER = r"""
import sys, kstore
from kstore import errors
try:
    kstore.open(sys.argv[1])
except errors.LogLockedError as exc:
    print("LogLockedError", exc)
else:
    print("opened")
with kstore.open(sys.argv[1], read_only=True) as r:
    print("topics", ",".join(r.topics()))
"""


def test_second_writer_in_another_process_is_refused_by_an_exclusive_store(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path, exclusive=True) as s:
        s.create_topic("t")
        out = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("LogLockedError") and "read_only" in lines[0]
        assert lines[1] == "topics t"
    out = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[0] == "opened", out.stderr


def test_read_only_store_alongside_the_writer(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as w:
        w.create_topic("t", partitions=2)
        p = w.producer(linger_ms=0)
        for i in range(10):
            p.send("t", b"v%d" % i, partition=i % 2)
        wc = w.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                        enable_auto_commit=False)
        wc.commit({("t", 0): 3, ("t", 1): 2})
        with kstore.open(path, read_only=True) as r:
            assert r.read_only
            assert r.topics() == ["t"]
            assert r.describe_topic("t")["partitions"] == 2
            assert [x["log_end_offset"] for x in r.describe_topic("t")["partition_info"]] == [5, 5]
            assert values(r.partition("t", 0)) == [b"v%d" % i for i in range(0, 10, 2)]
            assert r.describe_group("g")["partitions"][0]["committed"] == 3

            c = r.consumer(group=None, topics=["t"], auto_offset_reset="earliest")
            got = []
            while len(got) < 10:
                recs = c.poll(timeout=10)
                assert recs
                got += recs
            assert sorted(x.value for x in got) == sorted(b"v%d" % i for i in range(10))
            # Records the writer appends later reach the reader's consumer.
            p.send("t", b"late", partition=1)
            assert [x.value for x in c.poll(timeout=10)] == [b"late"]
            # New topics made by the writer are seen.
            w.create_topic("u")
            assert r.topics() == ["t", "u"]

            gc = r.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
            assert gc.position("t", 0) == 3 and gc.position("t", 1) == 2
            recs = []
            while len(recs) < 6:
                more = gc.poll(timeout=10)
                assert more
                recs += more
            assert sorted((x.partition, x.offset) for x in recs) == (
                [(0, o) for o in range(3, 5)] + [(1, o) for o in range(2, 6)])

            with pytest.raises(errors.ReadOnlyError):
                r.producer()
            with pytest.raises(errors.ReadOnlyError):
                r.create_topic("v")
            with pytest.raises(errors.ReadOnlyError):
                r.alter_topic_config("t", {"retention.ms": 1})
            with pytest.raises(errors.ReadOnlyError):
                r.create_partitions("t", 4)
            with pytest.raises(errors.ReadOnlyError):
                r.delete_topic("t")
            with pytest.raises(errors.ReadOnlyError, match="commit") as ei:
                gc.commit()
            assert "read_only" in str(ei.value)
            with pytest.raises(errors.ReadOnlyError, match="commit"):
                gc.commit({("t", 0): 4})
            gc.close()  # closing a reader's group consumer commits nothing and raises nothing
        p.close()
        assert w.committed("g", "t", 0) == 3
        assert w.topics() == ["t", "u"]


def test_read_only_store_reads_a_topic_with_partitions_never_written(tmp_path):
    """A topic exists once created: a reader can describe and consume it even when some of its
    partitions have not received a record (Kafka creates every partition's log at creation)."""
    path = tmp_path / "data"
    with kstore.open(path) as w:
        w.create_topic("t", partitions=3)
        with w.producer(linger_ms=0) as p:
            p.send("t", b"only", partition=1)
        w.create_topic("empty")
        with kstore.open(path, read_only=True) as r:
            d = r.describe_topic("t")
            assert [x["log_end_offset"] for x in d["partition_info"]] == [0, 1, 0]
            c = r.consumer(group=None, topics=["t", "empty"], auto_offset_reset="earliest")
            assert [x.value for x in c.poll(timeout=10)] == [b"only"]


# ---------------------------------------------------------------------------------------------
# groups() and describe_group()


def test_groups_and_describe_group_show_committed_offsets_and_lag(store):
    store.create_topic("t", partitions=2)
    with store.producer(linger_ms=0) as p:
        for i in range(7):
            p.send("t", b"v", partition=0)
        for i in range(4):
            p.send("t", b"v", partition=1)
    assert store.groups() == []
    c = store.consumer(group="etl", topics=["t"], auto_offset_reset="earliest",
                       enable_auto_commit=False)
    assert store.groups() == ["etl"]  # a member in this process
    g = store.describe_group("etl")
    assert g["state"] == "Stable"
    assert [m["member_id"] for m in g["members"]] == [c.member_id]
    assert g["members"][0]["assignment"] == [("t", 0), ("t", 1)]
    assert g["partitions"] == []
    c.commit({("t", 0): 5, ("t", 1): 4}, metadata="m1")
    g = store.describe_group("etl")
    parts = {(x["topic"], x["partition"]): x for x in g["partitions"]}
    assert set(parts) == {("t", 0), ("t", 1)}
    assert (parts["t", 0]["committed"], parts["t", 0]["log_end_offset"], parts["t", 0]["lag"]) == (5, 7, 2)
    assert (parts["t", 1]["committed"], parts["t", 1]["log_end_offset"], parts["t", 1]["lag"]) == (4, 4, 0)
    assert parts["t", 0]["metadata"] == "m1"
    c.close()
    assert store.groups() == ["etl"]  # committed offsets remain
    g = store.describe_group("etl")
    assert g["state"] == "Empty" and g["members"] == []
    assert [x["committed"] for x in g["partitions"]] == [5, 4]
    other = store.describe_group("nobody")
    assert other["partitions"] == [] and other["members"] == []


# ---------------------------------------------------------------------------------------------
# Removing committed offsets: DeleteGroups and offsets.retention.minutes


def test_delete_group_offsets_tombstones_every_commit_and_survives_reopen(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t", partitions=2)
        s.commit_offsets("gone", {("t", 0): (0, "m", -1), ("t", 1): (0, "", 3)})
        s.commit_offsets("kept", {("t", 0): (0, "", -1)})
        assert s.delete_group_offsets("gone") == [("t", 0), ("t", 1)]
        assert s.committed("gone", "t", 0) is None and s.committed("gone", "t", 1) is None
        assert s.groups() == ["kept"]
        assert s.delete_group_offsets("gone") == []  # nothing left: nothing written
        assert s.delete_group_offsets("never") == []
    with kstore.open(path) as s:  # replayed from __consumer_offsets
        assert s.committed("gone", "t", 0) is None and s.committed("gone", "t", 1) is None
        assert s.committed("kept", "t", 0) == 0
        assert s.groups() == ["kept"]  # a group whose offsets were all tombstoned is gone


def test_expire_offsets_tombstones_old_commits_and_survives_reopen(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path, offsets_retention_minutes=1) as s:
        s.create_topic("t")
        s.commit_offsets("old", {("t", 0): (0, "", -1)})
        now = s.now_ms()
        assert s.expire_offsets(now) == {}  # not a minute old yet
        assert s.expire_offsets(now + 60_000) == {"old": [("t", 0)]}
        assert s.committed("old", "t", 0) is None and s.groups() == []
    with kstore.open(path) as s:
        assert s.committed("old", "t", 0) is None and s.groups() == []


def test_data_signal_async_waits_that_time_out_or_are_cancelled_leave_no_waiter_behind():
    """A Fetch long-poll server times out constantly: every wait_async that ends without a
    notify() (timeout, cancellation) must take its parked future out again, or the list grows
    forever and the next notify schedules one callback per dead wait. A live waiter still
    wakes, from another thread, and leaves nothing either."""
    sig = DataSignal()

    async def scenario() -> None:
        for _ in range(200):
            assert await sig.wait_async(sig.version, 0.0005) is False
        assert len(sig._async) == 0 and sig.waiters == 0
        # A client that goes away: its parked Fetch is cancelled.
        gone = asyncio.ensure_future(sig.wait_async(sig.version, None))
        while not sig._async:
            await asyncio.sleep(0)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        assert len(sig._async) == 0 and sig.waiters == 0
        live = asyncio.ensure_future(sig.wait_async(sig.version, 5))
        while not sig._async:
            await asyncio.sleep(0)
        assert len(sig._async) == 1
        t = threading.Thread(target=sig.notify)
        t.start()
        t.join()
        assert await asyncio.wait_for(live, 2) is True
        assert len(sig._async) == 0 and sig.waiters == 0

    asyncio.run(scenario())


def _offsets_store(path, now, retention_minutes=1):
    s = kstore.open(path, offsets_retention_minutes=retention_minutes, clock=lambda: now[0],
                    retention_check_interval_ms=0)
    if "t" not in s.topics():
        s.create_topic("t", partitions=2)
        for p in range(2):
            s.partition("t", p).append(b"x")
            s.partition("t", p).append(b"y")
    return s


def test_expire_offsets_keeps_a_commit_that_lands_between_its_snapshot_and_the_tombstones(
        tmp_path):
    """expire_offsets picks its candidates from a snapshot; a commit can land (on the server's
    event loop) before the tombstones are written. The candidates are checked again, under the
    lock commit_offsets appends under, so the fresh commit is kept, in memory and on disk. The
    interleaving is forced from the activity hook, which expire_offsets calls after taking its
    snapshot."""
    now = [TS0]
    s = _offsets_store(tmp_path / "d", now)
    s.commit_offsets("g", {("t", 0): (0, "", -1), ("t", 1): (0, "", -1)})
    now[0] += 120_000  # both commits are past the one-minute retention

    def commit_meanwhile():
        t = threading.Thread(target=s.commit_offsets, args=("g", {("t", 0): (1, "", -1)}))
        t.start()
        t.join()
        return {}, 0  # no activity known: the commit times decide

    s.group_activity_hooks.append(commit_meanwhile)
    assert s.expire_offsets() == {"g": [("t", 1)]}
    assert s.committed("g", "t", 0) == 1 and s.committed("g", "t", 1) is None
    s.close()
    with kstore.open(tmp_path / "d", retention_check_interval_ms=0) as s2:
        assert s2.committed("g", "t", 0) == 1 and s2.committed("g", "t", 1) is None


def test_a_commit_is_appended_and_published_atomically_for_expire_offsets(tmp_path):
    """commit_offsets appends to __consumer_offsets and then updates the in-memory view. An
    expiry running between the two would see the old commit, tombstone it after the new
    record and lose the new commit on disk (the memory still showing it). The append and the
    update hold the lock expire_offsets re-checks under, so the expiry waits."""
    from kstore import offsets as koffsets

    now = [TS0]
    s = _offsets_store(tmp_path / "d", now)
    s.commit_offsets("g", {("t", 0): (0, "", -1)})
    now[0] += 120_000
    lg = s.partition(koffsets.OFFSETS_TOPIC, koffsets.group_partition("g"))
    real = lg.append_batch
    box = {}

    def append_then_expire(*a, **kw):
        out = real(*a, **kw)
        if "expiry" not in box:  # the commit's own append: run an expiry in the middle
            box["expiry"] = t = threading.Thread(
                target=lambda: box.setdefault("expired", s.expire_offsets()))
            t.start()
            t.join(0.3)  # it finishes here only if it does not wait for the commit
        return out

    lg.append_batch = append_then_expire
    s.commit_offsets("g", {("t", 0): (1, "", -1)})
    box["expiry"].join(10)
    del lg.append_batch
    assert box["expired"] == {}
    assert s.committed("g", "t", 0) == 1
    s.close()
    with kstore.open(tmp_path / "d", retention_check_interval_ms=0) as s2:
        assert s2.committed("g", "t", 0) == 1


def test_a_recreated_topic_starts_at_offset_zero(tmp_path):
    """Deleting a topic forgets its partitions' checkpoints (log start, recovery point,
    cleaner): a topic made again under the same name starts empty at 0, as in Kafka, not at
    the deleted one's log start (found by the mirror tests)."""
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", partitions=2, config={"cleanup.policy": "compact,delete"})
        p = s.producer(linger_ms=0)
        for i in range(10):
            p.send("t", b"v%d" % i, key=b"k%d" % i, partition=i % 2)
        p.flush()
        s.delete_records({("t", 0): 4, ("t", 1): 3})
        s.run_maintenance()
        s.delete_topic("t")
        s.create_topic("t", partitions=2)
        for part in (0, 1):
            lg = s.partition("t", part)
            assert (lg.log_start_offset, lg.log_end_offset) == (0, 0)
        p.send("t", b"new", partition=0)
        p.flush()
        c = s.consumer(auto_offset_reset="earliest")
        c.assign([("t", 0), ("t", 1)])
        assert [(r.partition, r.offset, r.value) for r in c.poll(timeout=1)] == [(0, 0, b"new")]
    with kstore.open(tmp_path / "d") as s:  # and after a restart
        assert s.partition("t", 0).log_start_offset == 0
        assert s.partition("t", 1).log_end_offset == 0
