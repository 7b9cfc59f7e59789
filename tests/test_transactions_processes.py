"""Transactional ids across processes on one data directory (a shared Store): one live
producer per id; a process killed with a transaction open or half committed does not hold
read_committed readers back for ever (aborted once transaction.timeout.ms has passed, or at
once by a producer restarting with the id, in any process; a half-committed one is completed).
Real processes, killed with SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import kstore
from kstore.errors import ConcurrentTransactionsError, ProducerFencedError

CHILD_HEAD = """
import os, signal, sys
import kstore
store = kstore.open(sys.argv[1])
p = store.producer(transactional_id=sys.argv[2], linger_ms=0,
                   transaction_timeout_ms=int(sys.argv[3]))
p.begin_transaction()
for i in range(5):
    p.send("t", b"child-%d" % i, partition=i % 2)
p.flush()
"""


def child(data: Path, tid: str, body: str, timeout_ms: int = 60_000) -> subprocess.Popen:
    code = CHILD_HEAD + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, str(data), tid, str(timeout_ms)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def killed_mid_transaction(data: Path, tid: str, timeout_ms: int) -> None:
    proc = child(data, tid, "os.kill(os.getpid(), signal.SIGKILL)\n", timeout_ms)
    proc.communicate(timeout=60)
    assert proc.returncode == -9


def visible(store: kstore.Store, level: str) -> list[bytes]:
    c = store.consumer(isolation_level=level, auto_offset_reset="earliest")
    c.assign([("t", 0), ("t", 1)])
    out = []
    while recs := c.poll(timeout=0):
        out += [r.value for r in recs]
    c.close()
    return sorted(out)


def stuck(store: kstore.Store) -> bool:
    return any(store.partition("t", p).last_stable_offset() < store.partition("t", p).log_end_offset
               for p in (0, 1))


@pytest.fixture
def data(tmp_path):
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", 2)
    return tmp_path / "d"


CHILD_RECORDS = sorted(b"child-%d" % i for i in range(5))


def test_a_killed_processes_open_transaction_is_aborted_once_timed_out(data):
    killed_mid_transaction(data, "orphan", timeout_ms=1500)
    with kstore.open(data) as s:
        assert stuck(s) and visible(s, "read_committed") == []
        assert "aborted_transactions" not in s.run_maintenance()  # not timed out yet
        assert stuck(s)
        time.sleep(1.6)
        assert s.run_maintenance()["aborted_transactions"] == ["orphan"]
        assert not stuck(s)
        assert visible(s, "read_committed") == []
        assert visible(s, "read_uncommitted") == CHILD_RECORDS
        with s.producer(transactional_id="orphan", linger_ms=0) as p:  # the id is free
            p.begin_transaction()
            p.send("t", b"after", partition=0)
            p.commit_transaction()
        assert visible(s, "read_committed") == [b"after"]


def test_a_producer_restarting_with_the_id_aborts_it_at_once(data):
    killed_mid_transaction(data, "restart", timeout_ms=60_000)
    with kstore.open(data) as s:
        assert stuck(s)
        with s.producer(transactional_id="restart", linger_ms=0) as p:
            assert not stuck(s)  # init_transactions aborted the dead one's transaction
            p.begin_transaction()
            p.send("t", b"again", partition=1)
            p.commit_transaction()
        assert visible(s, "read_committed") == [b"again"]


def test_a_killed_processes_half_commit_is_completed(data):
    # The child dies after PrepareCommit, before its first marker: the decision is on disk,
    # so the transaction commits (Kafka's coordinator does the same after a failover).
    body = """
    from kstore.log import partition as _part
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    _part.PartitionLog.write_marker = die
    p.commit_transaction()
    """
    proc = child(data, "half", body)
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    with kstore.open(data) as s:
        assert stuck(s) and visible(s, "read_committed") == []
        s.run_maintenance()
        assert not stuck(s)
        assert visible(s, "read_committed") == CHILD_RECORDS


def test_one_live_producer_per_id_across_processes(data):
    body = """
    print("open", flush=True)
    sys.stdin.readline()
    p.commit_transaction()
    print("committed", flush=True)
    sys.stdin.readline()
    store.close()
    """
    proc = child(data, "live", body, timeout_ms=1000)
    try:
        assert proc.stdout.readline().strip() == "open"
        with kstore.open(data) as s:
            with pytest.raises(ConcurrentTransactionsError, match="in use by another process"):
                s.producer(transactional_id="live")
            time.sleep(1.2)  # past the child's timeout: a live process expires its own
            assert "aborted_transactions" not in s.run_maintenance()
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "committed"
            assert visible(s, "read_committed") == CHILD_RECORDS
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0, proc.stderr.read()
            with s.producer(transactional_id="live", linger_ms=0) as p:  # free once it exits
                p.begin_transaction()
                p.send("t", b"mine", partition=0)
                p.commit_transaction()
            assert visible(s, "read_committed") == sorted(CHILD_RECORDS + [b"mine"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Two Stores in one process hold their own locks (flock is per open file), as two processes do.


def test_a_fenced_zombies_call_does_not_keep_the_id_from_other_processes(data):
    with kstore.open(data) as a, kstore.open(data) as b:
        zombie = a.producer(transactional_id="z", linger_ms=0)
        current = a.producer(transactional_id="z", linger_ms=0)  # fences the first
        current.close()
        b.producer(transactional_id="z").close()  # free once a has no live producer for it
        with pytest.raises(ProducerFencedError):
            zombie.begin_transaction()
            zombie.send("t", b"zombie", partition=0)
            zombie.flush()
        with b.producer(transactional_id="z", linger_ms=0) as p:
            p.begin_transaction()
            p.send("t", b"b", partition=0)
            p.commit_transaction()
        zombie.close()
        assert visible(b, "read_committed") == [b"b"]


def test_a_producer_whose_transaction_timed_out_lets_the_id_go_when_it_closes(data):
    with kstore.open(data) as a, kstore.open(data) as b:
        p = a.producer(transactional_id="slow", linger_ms=0, transaction_timeout_ms=100)
        p.begin_transaction()
        p.send("t", b"late", partition=0)
        p.flush()
        time.sleep(0.2)
        assert a.run_maintenance()["aborted_transactions"] == ["slow"]
        p.close()  # its epoch is not the current one any more
        with b.producer(transactional_id="slow", linger_ms=0) as q:
            q.begin_transaction()
            q.send("t", b"b", partition=1)
            q.commit_transaction()
        assert visible(b, "read_committed") == [b"b"]


def test_unused_lock_files_are_swept_and_a_held_one_is_kept(data):
    with kstore.open(data) as a, kstore.open(data) as b:
        for i in range(5):  # ids used once (a common pattern: one per run)
            a.producer(transactional_id=f"once-{i}").close()
        kept = b.producer(transactional_id="kept")
        folder = data / ".kstore-txn"
        assert len(list(folder.glob("*.lock"))) == 6
        a.run_maintenance()
        assert len(list(folder.glob("*.lock"))) == 1  # b's, in use
        with pytest.raises(ConcurrentTransactionsError):
            a.producer(transactional_id="kept")
        kept.close()
        with a.producer(transactional_id="once-0", linger_ms=0) as p:  # its file comes back
            p.begin_transaction()
            p.send("t", b"again", partition=0)
            p.commit_transaction()
        assert len(list(folder.glob("*.lock"))) == 2


def test_a_forked_child_does_not_keep_the_parents_ids(data):
    import os

    with kstore.open(data) as a, kstore.open(data) as b:
        p = a.producer(transactional_id="forked")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child lives on (as a worker would) until the parent says
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        try:
            p.close()
            # Free while the child lives: its copy of the lock was let go at the fork.
            b.producer(transactional_id="forked").close()
        finally:
            os.close(w)
            os.waitpid(pid, 0)


def test_producer_ids_are_unique_across_processes_starting_together(data):
    """Ids came from each process's clock (ms << 8): processes starting in the same
    millisecond drew the same ids, and a partition keys its transactions by producer id."""
    code = ("import sys, kstore\n"
            "s = kstore.open(sys.argv[1])\n"
            "print(' '.join(str(s.allocate_producer_id()) for _ in range(300)))\n"
            "s.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        ids += [int(x) for x in out.split()]
    with kstore.open(data) as a, kstore.open(data) as b:
        ids += [a.allocate_producer_id() for _ in range(300)]
        ids += [b.allocate_producer_id() for _ in range(300)]
        pa = a.producer(transactional_id="ida")
        pb = b.producer(transactional_id="idb")
        assert pa.producer_id != pb.producer_id
        pa.close()
        pb.close()
    assert len(ids) == len(set(ids)) == 1800 and min(ids) > 0
