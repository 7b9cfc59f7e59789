"""Issue 14's proof: 4 writer processes and 4 consumer processes of one group on one data
directory, no server, while processes are SIGKILLed and restarted.

Writers send keyed records with ``send_many`` and note each call that returned (acknowledged).
Consumers poll, write what they got to their own file, commit, then write a commit marker.
Checks: every acknowledged record is in the log; per partition each writer's records are in the
order it sent them; the consumed batches that were committed (marked) hold every record of the
log exactly once (two members never read one partition at once, and a new owner starts at the
old one's commit); a consumer killed between its commit and its marker may leave one unmarked
batch, which is the only place a record may be seen twice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import kstore

CTX = mp.get_context("fork")
TOPIC = "events"
PARTS = 4
GROUP = "proof"


def _writer(path: str, wid: int, run: int, out: str) -> None:
    with kstore.open(path, retention_check_interval_ms=0) as s:
        p = s.producer()
        seq = run * 1_000_000
        with open(out, "a", buffering=1) as ack:
            for _ in range(60):
                keys = [b"w%d-k%d" % (wid, (seq + i) % 16) for i in range(100)]
                vals = [b"w%d:%d" % (wid, seq + i) for i in range(100)]
                p.send_many(TOPIC, vals, keys=keys)
                ack.write(f"{seq} {seq + 99}\n")  # acknowledged: in the log
                seq += 100
                time.sleep(0.005)


def _consumer(path: str, cid: int, run: int, out: str, stop: str) -> None:
    with kstore.open(path, retention_check_interval_ms=0) as s:
        c = s.consumer(group=GROUP, topics=[TOPIC], auto_offset_reset="earliest",
                       enable_auto_commit=False, session_timeout_ms=3000)
        with open(out, "a", buffering=1) as f:
            while not os.path.exists(stop):
                recs = c.poll(timeout=0.1)
                if not recs:
                    continue
                f.write("".join(f"{r.partition} {r.offset} {r.value.decode()}\n" for r in recs))
                c.commit()
                f.write("COMMITTED\n")
        c.close()


def _committed_everything(path: Path) -> bool:
    with kstore.open(path, read_only=True) as r:
        for p in range(PARTS):
            end = r.partition(TOPIC, p).log_end_offset
            if (r.committed(GROUP, TOPIC, p) or 0) < end:
                return False
    return True


def test_writers_and_a_group_of_consumers_in_processes_killed_and_restarted(tmp_path):
    data = tmp_path / "data"
    with kstore.open(data) as s:
        s.create_topic(TOPIC, PARTS)
    stop = str(tmp_path / "stop")
    rng = random.Random(14)
    runs = {("w", i): 0 for i in range(4)} | {("c", i): 0 for i in range(4)}

    def start(kind: str, i: int) -> mp.Process:
        run = runs[(kind, i)]
        out = str(tmp_path / f"{kind}{i}-{run}")
        if kind == "w":
            p = CTX.Process(target=_writer, args=(str(data), i, run, out))
        else:
            p = CTX.Process(target=_consumer, args=(str(data), i, run, out, stop))
        p.start()
        return p

    procs = {k: start(*k) for k in runs}
    kills = 0
    # 6 s of it, and at least 8 kills: on a busy machine (xdist workers beside it) processes
    # live longer than their slot, and 6 s gave 7 kills once. 120 s bounds it.
    deadline = time.monotonic() + 6
    hard = time.monotonic() + 120
    while time.monotonic() < deadline or (kills < 8 and time.monotonic() < hard):
        time.sleep(rng.uniform(0.2, 0.5))
        k = rng.choice(sorted(runs))
        if procs[k].is_alive():
            os.kill(procs[k].pid, signal.SIGKILL)
            procs[k].join(30)
            kills += 1
        runs[k] += 1
        procs[k] = start(*k)
    for k, p in procs.items():
        if k[0] == "w":
            p.join(120)
            assert p.exitcode == 0, k
    t_end = time.monotonic() + 120
    while not _committed_everything(data):  # the group drains what the writers left
        assert time.monotonic() < t_end, "the group did not consume everything"
        time.sleep(0.1)
    Path(stop).touch()
    for k, p in procs.items():
        p.join(60)
        assert p.exitcode == 0, k
    assert kills >= 8

    # -- what the log holds ----------------------------------------------------------------
    log: dict[tuple[int, int], bytes] = {}
    with kstore.open(data, read_only=True) as r:
        for p in range(PARTS):
            lg = r.partition(TOPIC, p)
            off = 0
            while off < lg.log_end_offset:
                for rec in lg.read_records(off):
                    assert rec.offset == off
                    log[(p, off)] = rec.value
                    off += 1
    values = list(log.values())
    assert len(set(values)) == len(values)  # no record stored twice
    acked = set()
    for f in tmp_path.glob("w*-*"):
        wid = int(f.name[1])
        for line in f.read_text().splitlines():
            a, b = map(int, line.split())
            acked |= {b"w%d:%d" % (wid, n) for n in range(a, b + 1)}
    assert acked and acked <= set(values)  # every acknowledged record survived the kills
    for p in range(PARTS):  # per partition, each writer's records in the order it sent them
        for w in range(4):
            seqs = [int(v.split(b":")[1]) for (pp, _), v in sorted(log.items())
                    if pp == p and v.startswith(b"w%d:" % w)]
            assert seqs == sorted(seqs)

    # -- what the group consumed ---------------------------------------------------------------
    marked: list[tuple[int, int, bytes]] = []
    unmarked: list[tuple[int, int, bytes]] = []
    for f in tmp_path.glob("c*-*"):
        batch: list[tuple[int, int, bytes]] = []
        last: dict[int, int] = {}
        for line in f.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # killed mid-write
            if line == "COMMITTED\n":
                marked += batch
                batch = []
                continue
            p_, o_, v_ = line[:-1].split(" ", 2)
            p, o = int(p_), int(o_)
            assert o > last.get(p, -1)  # a member reads each partition in order
            last[p] = o
            batch.append((p, o, v_.encode()))
        unmarked += batch
    seen = [(p, o) for p, o, _ in marked]
    assert len(seen) == len(set(seen)), "a committed record was consumed twice"
    for p, o, v in marked + unmarked:
        assert log[(p, o)] == v
    assert set(seen) | {(p, o) for p, o, _ in unmarked} == set(log)  # nothing missed
