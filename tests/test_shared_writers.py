"""Several processes writing to one data directory (shared mode, the default of kstore.open).

Appends to a partition from different processes are serialised by the robust mutex of its
shared tail (``<partition>/.kstore-tail``): offsets stay dense, every batch lands whole, a
process killed at any point of an append (holding the mutex or not) loses nothing that was
acknowledged, and the next process to lock the tail rebuilds it from the files. Real processes
are forked and SIGKILLed; nothing here measures time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest

import kstore
from kstore import _core, errors
from kstore.log import PartitionLog

CTX = mp.get_context("fork")
SMALL = {"segment.bytes": 64 * 1024, "index.interval.bytes": 512}


def _records(log: PartitionLog) -> list[tuple[int, bytes]]:
    out, off = [], log.log_start_offset
    while off < log.log_end_offset:
        recs = log.read_records(off, 1 << 20)
        assert recs, off
        for r in recs:
            assert r.offset == off, (r.offset, off)  # dense
            out.append((r.offset, r.value))
            off += 1
    return out


def _writer(directory: str, wid: int, n: int, ack_path: str) -> None:
    log = PartitionLog.open(directory, SMALL, shared=True)
    with open(ack_path, "a", buffering=1) as ack:  # a line per acknowledged append
        for i in range(n):
            if i % 7 == 0:
                vals = [b"w%d-%d-%d" % (wid, i, j) for j in range(20)]
                first, last, _ = log.append_many(vals)
                for j, v in enumerate(vals):
                    ack.write(f"{first + j} {v.decode()}\n")
            else:
                v = b"w%d-%d" % (wid, i) + b"x" * random.randrange(300)
                first, _, _ = log.append(v)
                ack.write(f"{first} {v.decode()}\n")
    log.close()


def _acked(tmp: Path) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for f in tmp.glob("ack-*"):
        for line in f.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                off, v = line[:-1].split(" ", 1)
                assert int(off) not in out, f"offset {off} acknowledged twice"
                out[int(off)] = v.encode()
    return out


def test_four_processes_append_to_one_partition(tmp_path):
    d = tmp_path / "t-0"
    procs = [CTX.Process(target=_writer, args=(str(d), w, 400, str(tmp_path / f"ack-{w}")))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    acked = _acked(tmp_path)
    with PartitionLog.open(d, SMALL, shared=True) as log:
        recs = _records(log)
        assert log.verify() == []
        assert len(log.segments()) > 3  # rolls happened, by whichever process was appending
    assert dict(recs) == acked  # every acknowledged record, nothing else, at its offset
    for w in range(4):  # each writer's records in the order it wrote them
        mine = [v for _, v in recs if v.startswith(b"w%d-" % w)]
        order = [int(v.split(b"-")[1].split(b"x")[0]) for v in mine]
        assert order == sorted(order)


def test_sigkill_while_appending_keeps_every_acknowledged_record(tmp_path):
    d = tmp_path / "t-0"
    rng = random.Random(7)

    def start(w: int, k: int) -> mp.Process:
        p = CTX.Process(target=_writer, args=(str(d), w, 100_000, str(tmp_path / f"ack-{w}-{k}")))
        p.start()
        return p

    procs = {w: start(w, 0) for w in range(4)}
    time.sleep(0.3)
    for k in range(1, 25):
        time.sleep(rng.uniform(0.01, 0.08))
        w = rng.randrange(4)
        os.kill(procs[w].pid, signal.SIGKILL)
        procs[w].join(30)
        procs[w] = start(w, k)
    for p in procs.values():
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
    acked = _acked(tmp_path)
    with PartitionLog.open(d, SMALL, shared=True) as log:
        assert not log.recovery.clean  # everyone died: the next open recovers
        recs = dict(_records(log))
        assert log.verify() == []
    for off, v in acked.items():
        assert recs.get(off) == v, off
    assert len(recs) >= len(acked) > 0


# -- dying while holding the mutex, at each step of an append ------------------------------------

def _die_holding_the_tail(directory: str, stage: str) -> None:
    log = PartitionLog.open(directory, SMALL, shared=True)
    log.append(b"before")
    tail = log._tail
    assert tail is not None
    b = _core.BatchBuilder()
    b.append(b"unpublished")
    raw = bytearray(b.build())
    raw[:8] = log.log_end_offset.to_bytes(8, "big")
    seg = log._active
    assert seg is not None
    tail.lock()
    fd = os.open(seg.log_path, os.O_WRONLY | os.O_APPEND)
    if stage == "torn":
        os.write(fd, bytes(raw[: len(raw) // 2]))
    elif stage == "whole":
        os.write(fd, bytes(raw))
    elif stage == "roll":  # a new segment's files made, nothing published yet
        base = log.log_end_offset
        for ext in (".log", ".index", ".timeindex"):
            (Path(directory) / f"{base:020d}{ext}").touch()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("stage", ["torn", "whole", "roll", "nothing"])
def test_a_process_dying_with_the_tail_locked_is_repaired_by_the_next(tmp_path, stage):
    d = tmp_path / "t-0"
    with PartitionLog.open(d, SMALL, shared=True) as log:  # stays open: the tail lives on
        log.append(b"first")
        p = CTX.Process(target=_die_holding_the_tail, args=(str(d), stage))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        first, _, _ = log.append(b"after")  # would block for ever without a robust mutex
        values = [v for _, v in _records(log)]
        # A whole batch written before the death is kept, as recovery keeps it; a torn one
        # goes; a half-made roll is undone.
        expect = [b"first", b"before"] + ([b"unpublished"] if stage == "whole" else []) + [b"after"]
        assert values == expect
        assert first == len(expect) - 1
        assert log.verify() == []
        assert log._tail.stats()["repairs"] == 1
        assert len(log.segments()) == 1


# -- the store: registry, maintenance, deletion ----------------------------------------------------

def _grow_and_send(path: str, q: mp.Queue) -> None:
    with kstore.open(path) as s:
        p = s.producer(linger_ms=0)
        p.send("t", b"p0", partition=0)
        q.put("opened")
        assert q.get(timeout=60) == "grown"
        n = p.send_many("t", [b"p3"], partition=3)  # a partition made by the other process
        q.put(("sent", n, s.partitions_for("t"), s.topic_config("t")["retention.ms"]))


def test_other_processes_see_new_partitions_and_configs(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t", 1)
        q: mp.Queue = CTX.Queue()
        p = CTX.Process(target=_grow_and_send, args=(str(path), q))
        p.start()
        assert q.get(timeout=60) == "opened"
        s.create_partitions("t", 4)
        s.alter_topic_config("t", {"retention.ms": 12345})
        q.put("grown")
        assert q.get(timeout=60) == ("sent", 1, 4, 12345)
        p.join(60)
        assert p.exitcode == 0
        assert [r.value for r in s.partition("t", 3).read_records(0)] == [b"p3"]


def _send_until_refused(path: str, q: mp.Queue) -> None:
    with kstore.open(path) as s:
        p = s.producer()
        q.put("sending")
        try:
            while True:
                p.send_many("t", [b"v"] * 100)
        except errors.KStoreError as exc:
            q.put(type(exc).__name__)


def test_deleting_a_topic_stops_writers_in_other_processes(tmp_path):
    path = tmp_path / "data"
    with kstore.open(path) as s:
        s.create_topic("t", 2)
        q: mp.Queue = CTX.Queue()
        p = CTX.Process(target=_send_until_refused, args=(str(path), q))
        p.start()
        assert q.get(timeout=60) == "sending"
        time.sleep(0.2)
        s.delete_topic("t")
        assert q.get(timeout=60) == "UnknownTopicOrPartitionError"  # never silent
        p.join(60)
        assert p.exitcode == 0
        assert not list(path.glob("t-*"))
        s.create_topic("t", 1)  # the name can be used again at once
        with kstore.open(path) as other:
            other.producer(linger_ms=0).send("t", b"new", partition=0)
        assert [r.value for r in s.partition("t", 0).read_records(0)] == [b"new"]


def test_maintenance_runs_in_one_process_at_a_time(tmp_path):
    import fcntl

    path = tmp_path / "data"
    with kstore.open(path, retention_check_interval_ms=0) as s:
        s.create_topic("t")
        fd = os.open(path / ".kstore-maintenance.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process's pass is running
            assert "skipped" in s.run_maintenance()
        finally:
            os.close(fd)
        assert "skipped" not in s.run_maintenance()


def _append_forever(path: str, q: mp.Queue) -> None:
    with kstore.open(path, retention_check_interval_ms=0) as s:
        lg = s.partition("t", 0)
        n = 0
        q.put("appending")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            lg.append_many([b"%08d" % (n + i) + b"z" * 200 for i in range(50)])
            n += 50
        q.put(n)


def test_retention_in_one_process_beside_an_appender_in_another(tmp_path):
    path = tmp_path / "data"
    cfg = {"segment.bytes": 32 * 1024, "retention.bytes": 128 * 1024, "file.delete.delay.ms": 0}
    with kstore.open(path, retention_check_interval_ms=0) as s:
        s.create_topic("t", 1, cfg)
        q: mp.Queue = CTX.Queue()
        p = CTX.Process(target=_append_forever, args=(str(path), q))
        p.start()
        assert q.get(timeout=60) == "appending"
        deleted = 0
        while p.is_alive() and q.empty():
            rep = s.run_maintenance()
            deleted += sum(r.deleted_segments for k, r in rep.items() if k == "t-0")
        n = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0  # the appender never failed
        lg = s.partition("t", 0)
        assert deleted > 0 and lg.log_start_offset > 0
        assert lg.log_end_offset == n
        recs = _records(lg)  # what is left: dense, whole, in order, up to the end
        assert [int(v[:8]) for _, v in recs] == list(range(lg.log_start_offset, n))
        assert lg.verify() == []


def _create_topics(path: str, wid: int, q: mp.Queue) -> None:
    with kstore.open(path, retention_check_interval_ms=0) as s:
        won = 0
        for i in range(25):
            s.create_topic(f"w{wid}-{i}", 1 + i % 3)
            try:
                s.create_topic(f"same-{i}")  # every process tries: one wins
                won += 1
            except errors.TopicAlreadyExistsError:
                pass
        q.put(won)


def test_topics_created_by_processes_at_once_are_all_kept(tmp_path):
    path = tmp_path / "data"
    kstore.open(path).close()
    q: mp.Queue = CTX.Queue()
    procs = [CTX.Process(target=_create_topics, args=(str(path), w, q)) for w in range(4)]
    for p in procs:
        p.start()
    won = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert won == 25  # each shared name created exactly once
    with kstore.open(path) as s:  # no registry write lost another's topic
        names = s.topics()
        assert len(names) == 125
        assert all(s.partitions_for(f"w{w}-{i}") == 1 + i % 3 for w in range(4) for i in range(25))


def test_truncate_needs_the_log_to_itself(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", shared=True) as log:
        log.append(b"a")
        log.append(b"b")
        with pytest.raises(errors.InvalidRequestError, match="to itself"):
            log.truncate_to(1)
        assert log.log_end_offset == 2
    with PartitionLog.open(tmp_path / "t-0") as log:  # exclusive: allowed
        log.truncate_to(1)
        assert log.log_end_offset == 1
