"""A full disk (a real tmpfs filled to the last byte): every write kstore makes raises
KafkaStorageError, never a raw OSError; no ``.tmp`` file is left behind; the previous file
(kstore.json, the checkpoints) is intact and memory agrees with it; and Store.close() still
releases every lock, so that a later open recovers every acknowledged record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kstore
from kstore.cleaner import _checkpoint as cleaner_checkpoint
from kstore.errors import KafkaStorageError, KStoreError
from kstore.log.checkpoint import LOG_START_OFFSET, RECOVERY_POINT
from tests.smallfs import fill, fill_inodes, small_tmpfs

FS_BYTES = 8 << 20


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every checkpoint and the registry, by name."""
    d = root / "d"
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}


def _read_all(s: kstore.Store, topic: str, partition: int) -> list[bytes]:
    lg = s.partition(topic, partition)
    out, off = [], lg.log_start_offset
    while off < lg.log_end_offset:
        fs = lg.read(off)
        out += [bytes(r.value) for b in fs.batches() for r in b.records(min_offset=off)]
        off = fs.next_offset
    return out


def _populate(d: Path) -> list[bytes]:
    s = kstore.open(d, retention_check_interval_ms=0)
    s.create_topic("t", partitions=2)
    s.create_topic("c", config={"cleanup.policy": "compact"})
    values = [b"v%05d" % i + os.urandom(200) for i in range(300)]
    s.partition("t", 0).append_many(values)
    s.partition("c", 0).append(b"x", key=b"k")
    s.commit_offsets("g", {("t", 0): (5, "", 0)})
    s.close()
    return values


@pytest.fixture
def full(tmp_path):
    """(root, store, acknowledged values of t-0, ballast): a store whose disk is full."""
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as root:
        values = _populate(root / "d")
        s = kstore.open(root / "d", retention_check_interval_ms=0)
        more = [b"w%05d" % i for i in range(50)]
        s.partition("t", 0).append_many(more)  # not flushed: the recovery point lags
        # Open every log before filling: opening deletes its clean-shutdown marker, which
        # would free a page of the full file system.
        s.partition("c", 0)
        assert s.committed("g", "t", 0) == 5
        ballast = fill(root / "ballast")
        yield root, s, values + more, ballast
        if not s.closed:
            ballast.unlink(missing_ok=True)
            s.close()


def test_store_close_on_a_full_disk_raises_the_kstore_error_and_leaves_no_tmp(full):
    root, s, acked, ballast = full
    with pytest.raises(KafkaStorageError) as ei:
        s.close()
    assert isinstance(ei.value, KStoreError)
    assert "No space left" in str(ei.value) and "recover" in str(ei.value)
    assert s.closed
    assert _tmp_files(root) == []
    # Locks and files are released: this process may open it again (flock is per open file,
    # so a leaked lock fd would make this a LogLockedError) - and, once there is room, every
    # acknowledged record and commit is there.
    ballast.unlink()
    with kstore.open(root / "d", retention_check_interval_ms=0) as s2:
        assert _read_all(s2, "t", 0) == acked
        assert s2.committed("g", "t", 0) == 5
        assert s2.partition("t", 0).recovery.clean is False  # recovered, not trusted
    with kstore.open(root / "d", retention_check_interval_ms=0) as s3:
        assert _read_all(s3, "t", 0) == acked
        assert s3.partition("t", 0).recovery.clean is True
    assert _tmp_files(root) == []


def _tp(s):
    return s.partition("t", 0)


# Each action writes one kind of file on a full disk. (name, action, check after the refusal)
ACTIONS = {
    "registry-create-topic": (lambda s: s.create_topic("new"),
                              lambda s: "new" not in s.topics()),
    "registry-alter-config": (lambda s: s.alter_topic_config("t", {"retention.ms": 5000}),
                              lambda s: s.topic_config("t")["retention.ms"] != 5000),
    "registry-create-partitions": (lambda s: s.create_partitions("t", 4),
                                   lambda s: s.partitions_for("t") == 2),
    "registry-delete-topic": (lambda s: s.delete_topic("c"),
                              lambda s: "c" in s.topics() and _read_all(s, "c", 0) == [b"x"]),
    "recovery-point": (lambda s: _tp(s).flush(),
                       lambda s: True),
    "log-start-offset": (lambda s: s.delete_records({("t", 0): 3}),
                         lambda s: _tp(s).log_start_offset == 0),
    "cleaner-offset": (lambda s: cleaner_checkpoint(s.partition("c", 0)).update({("c", 0): 1}),
                       lambda s: True),
    "leader-epoch-new-partition": (lambda s: s.partition("t", 1),
                                   lambda s: True),
    # (metadata big enough to need a new page: tmpfs fills the last page of a file first)
    "offsets-commit": (lambda s: s.commit_offsets("g", {("t", 0): (7, "m" * 4000, 0)}),
                       lambda s: s.committed("g", "t", 0) == 5),
    "offsets-first-commit-of-a-group": (
        lambda s: s.commit_offsets("other", {("t", 0): (7, "", 0)}),
        lambda s: s.committed("other", "t", 0) is None),
    "append": (lambda s: _tp(s).append(b"z" * 5000),
               lambda s: True),
    "producer-send-flush": (lambda s: _send_flush(s),
                            lambda s: True),
    "producer-send-many": (lambda s: s.producer().send_many("t", [b"z" * 5000] * 10),
                           lambda s: True),
}


def _send_flush(s):
    p = s.producer(linger_ms=0)
    p.send("t", b"z" * 5000, partition=0)
    p.flush()


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_write_on_a_full_disk_raises_the_kstore_error_and_keeps_the_old_file(full, name):
    root, s, acked, ballast = full
    action, check = ACTIONS[name]
    before = _snapshot(root)
    leo = _tp(s).log_end_offset
    with pytest.raises(KafkaStorageError) as ei:
        action(s)
    assert isinstance(ei.value, KStoreError)
    assert "No space left" in str(ei.value) or "errno 28" in str(ei.value), str(ei.value)
    assert _tmp_files(root) == []
    after = _snapshot(root)
    for fname in (kstore.store.REGISTRY, RECOVERY_POINT, LOG_START_OFFSET,
                  "cleaner-offset-checkpoint"):
        assert after.get(fname) == before.get(fname), fname  # the previous file, intact
    assert check(s)
    assert _tp(s).log_end_offset == leo  # nothing from a refused append was kept
    # With room again, the same store carries on and closes cleanly.
    ballast.unlink()
    action(s)
    s.close()
    assert _tmp_files(root) == []
    with kstore.open(root / "d", retention_check_interval_ms=0) as s2:
        start = s2.partition("t", 0).log_start_offset
        assert _read_all(s2, "t", 0)[:len(acked) - start] == acked[start:]
        assert s2.partition("t", 0).recovery.clean is True


def test_appends_across_segment_rolls_until_full_then_resume_lose_nothing(tmp_path):
    """Small segments, so the disk fills around rolls and index writes too: every refused
    append raises KafkaStorageError and keeps nothing; every acknowledged record is there
    after a close that may itself be refused and an open once there is room."""
    with small_tmpfs(tmp_path / "fs", 3 << 20) as root:
        reserves = [root / "reserve-0", root / "reserve-1"]
        for r in reserves:
            r.write_bytes(b"\0" * (200 << 10))
        s = kstore.open(root / "d", retention_check_interval_ms=0)
        s.create_topic("t", config={"segment.bytes": 50_000, "index.interval.bytes": 100})
        lg = s.partition("t", 0)
        acked: list[bytes] = []
        refusals = 0
        for phase in range(2):
            for i in range(20_000):
                v = b"%d-%05d" % (phase, i) + os.urandom(700)
                leo = lg.log_end_offset
                try:
                    lg.append(v, key=b"k")
                except KafkaStorageError:
                    assert lg.log_end_offset == leo
                    refusals += 1
                    break
                acked.append(v)
            else:
                raise AssertionError("the file system never filled up")
            if phase == 0:
                reserves[0].unlink()
        assert refusals == 2 and len(lg.segments()) > 3
        try:
            s.close()
        except KafkaStorageError:
            pass  # no room for the clean-shutdown marker: the next open recovers
        assert s.closed and _tmp_files(root) == []
        reserves[1].unlink()
        with kstore.open(root / "d", retention_check_interval_ms=0) as s2:
            assert _read_all(s2, "t", 0) == acked


def test_a_segment_roll_refused_by_the_disk_keeps_the_old_segment_active(tmp_path):
    """No inode left for the new segment's files: the roll fails, the append raises
    KafkaStorageError and keeps nothing, and once files can be created again appends resume.
    (The roll used to deactivate the old segment first and then fail: every later append
    went to its closed write fd, for ever.)"""
    with small_tmpfs(tmp_path / "fs", 64 << 20, nr_inodes=64) as root:
        s = kstore.open(root / "d", retention_check_interval_ms=0)
        s.create_topic("t", config={"segment.bytes": 20_000})
        lg = s.partition("t", 0)
        acked: list[bytes] = []

        def append(i: int) -> None:
            v = b"%05d" % i + os.urandom(700)
            lg.append(v)
            acked.append(v)

        for i in range(10):
            append(i)
        fillers = fill_inodes(root)
        leo = lg.log_end_offset
        refused = 0
        for i in range(10, 200):
            try:
                append(i)
            except KafkaStorageError as exc:
                assert "No space left" in str(exc)
                refused += 1
        assert refused > 100  # every append once the segment was full and could not roll
        assert lg.log_end_offset == len(acked) and len(acked) < 50 and leo == 10
        # A record small enough for the room left in the old segment goes there: it is still
        # the active segment. (Deactivated first, its closed write fd took the bytes: EBADF,
        # or another file's, had the number been reused.)
        tiny = b"tiny"
        lg.append(tiny)
        acked.append(tiny)
        assert _read_all(s, "t", 0) == acked
        for f in fillers:
            f.unlink()
        for i in range(1000, 1100):  # rolls work again
            append(i)
        assert len(lg.segments()) > 3
        s.close()
        with kstore.open(root / "d", retention_check_interval_ms=0) as s2:
            assert _read_all(s2, "t", 0) == acked
            assert s2.partition("t", 0).recovery.clean is True


def test_maintenance_on_a_full_disk_logs_one_line_and_leaves_no_garbage(tmp_path, caplog):
    """Compaction writes new segments: on a full disk it fails, says so in one log line (no
    traceback per pass), leaves no .cleaned/.tmp/.swap file, and runs once there is room."""
    import logging

    with small_tmpfs(tmp_path / "fs", 8 << 20) as root:
        s = kstore.open(root / "d", retention_check_interval_ms=0)
        s.create_topic("c", config={"cleanup.policy": "compact", "segment.bytes": 100_000})
        lg = s.partition("c", 0)
        for i in range(2000):
            lg.append(os.urandom(300), key=b"k%d" % (i % 10))
        lg.roll()
        s.flush()
        ballast = fill(root / "ballast")
        before = [p.name for p in (root / "d" / "c-0").iterdir()]
        with caplog.at_level(logging.WARNING, logger="kstore.store"):
            report = s.run_maintenance()
        assert "c-0 compaction" not in report
        lines = [r for r in caplog.records if "c-0" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None, caplog.text
        assert "No space left" in lines[0].getMessage()
        assert sorted(p.name for p in (root / "d" / "c-0").iterdir()) == sorted(before)
        assert _tmp_files(root) == []
        ballast.unlink()
        assert s.run_maintenance()["c-0 compaction"].cleaned_segments > 0
        s.close()


def test_the_first_commit_of_a_store_on_a_full_disk_creates_no_offsets_topic(tmp_path):
    with small_tmpfs(tmp_path / "fs", 4 << 20) as root:
        s = kstore.open(root / "d", retention_check_interval_ms=0)
        s.create_topic("t")
        s.partition("t", 0).append(b"x")
        registry = (root / "d" / kstore.store.REGISTRY).read_bytes()
        ballast = fill(root / "ballast")
        with pytest.raises(KafkaStorageError):
            s.commit_offsets("g", {("t", 0): (1, "", 0)})
        assert "__consumer_offsets" not in s.topics(internal=True)
        assert (root / "d" / kstore.store.REGISTRY).read_bytes() == registry
        assert _tmp_files(root) == [] and s.committed("g", "t", 0) is None
        ballast.unlink()
        s.commit_offsets("g", {("t", 0): (1, "", 0)})
        s.close()
        with kstore.open(root / "d", retention_check_interval_ms=0) as s2:
            assert s2.committed("g", "t", 0) == 1
