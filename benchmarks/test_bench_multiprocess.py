"""Several writer processes on one data directory (issue 14): send_many throughput of 1, 2 and
4 processes appending to one 4-partition topic of a shared store, against one process with
the store opened exclusive (no process-shared mutex on the append path) in the same run.

    python -m pytest benchmarks/test_bench_multiprocess.py --benchmark-enable \\
        --benchmark-only --benchmark-json=out.json && python benchmarks/report.py out.json

Workload: 100-byte JSON-like values, keyless (send_many spreads each call over the partitions in
contiguous runs), calls of 65,536 records; KSTORE_BENCH_RECORDS records per process (default
2,000,000). Processes are forked, start together at a barrier and are timed from the barrier
to the last one's end; the throughput is records of all processes over that time, in
``extra_info``; the 2- and 4-process runs also carry ``ratio_to_1_shared`` (their median over
the 1-shared median of the same session). Writers run on however many cores the machine has.
Two controls for 2-shared: two processes each on its own exclusive store ("separate": the
machine's ceiling) and two processes on one shared store each on its own topic
("shared-own-topics": the shared mode without contention for a partition).

Also ``Producer.send`` per record (then ``flush``) in one process, shared against exclusive:
KSTORE_BENCH_SEND_RECORDS records (default a quarter of KSTORE_BENCH_RECORDS), same values.

Comparing with another kstore build (e.g. the one before issue 14) needs two interpreters:
see benchmarks/compare_builds.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import kstore

from .conftest import make_values

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "2000000"))
CALL = min(65536, N)
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))
CTX = mp.get_context("fork")


def _values() -> np.ndarray:
    vals = make_values(CALL)
    return np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(CALL, 100)


def _writer(path: str, barrier, done, exclusive: bool, calls: int, topic: str = "t") -> None:
    vals = _values()
    with kstore.open(path, retention_check_interval_ms=0, exclusive=exclusive) as s:
        p = s.producer()
        p.send_many(topic, vals[:100])  # partitions opened before the clock starts
        barrier.wait()
        for _ in range(calls):
            p.send_many(topic, vals)
        done.put(os.getpid())


def run_writers(procs: int, exclusive: bool = False, records: int = N,
                separate: bool = False, own_topic: bool = False) -> float:
    """Records per second of ``procs`` writer processes, each sending ``records``. With
    ``separate`` each process has its own exclusive store (its own directory): nothing shared,
    the ceiling this machine allows for ``procs`` writers. With ``own_topic`` the processes share
    one store but each writes its own 4-partition topic: no two contend for a partition."""
    dirs = [Path(tempfile.mkdtemp(prefix="kstore-bench-mp-", dir=ROOT))
            for _ in range(procs if separate else 1)]
    exclusive = exclusive or separate
    topics = [f"t{i}" if own_topic else "t" for i in range(procs)]
    try:
        for d in dirs:
            with kstore.open(d, exclusive=exclusive) as s:
                for t in sorted(set(topics)):
                    s.create_topic(t, 4, {"segment.bytes": 1 << 30})
        calls = max(records // CALL, 1)
        barrier = CTX.Barrier(procs + 1)
        done = CTX.Queue()
        ps = [CTX.Process(target=_writer,
                          args=(str(dirs[i % len(dirs)]), barrier, done, exclusive, calls,
                                topics[i]))
              for i in range(procs)]
        for p in ps:
            p.start()
        barrier.wait(120)
        t0 = time.perf_counter()
        for _ in ps:
            done.get(timeout=600)
        elapsed = time.perf_counter() - t0
        for p in ps:
            p.join(60)
            assert p.exitcode == 0
        total = 0
        for d in dirs:
            with kstore.open(d, read_only=True) as r:
                total += sum(r.partition(t, i).log_end_offset
                             for t in r.topics() for i in range(4))
        assert total == procs * (calls * CALL + 100)
        return procs * calls * CALL / elapsed
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


_MEDIANS: dict[tuple[int, bool], float] = {}  # (processes, exclusive) -> median records/s


@pytest.mark.parametrize("procs,exclusive", [(1, True), (1, False), (2, False), (4, False)],
                         ids=["1-exclusive", "1-shared", "2-shared", "4-shared"])
def test_send_many_writer_processes(benchmark, procs, exclusive):
    _bench_writers(benchmark, procs, exclusive, separate=False)


def test_send_many_two_separate_stores(benchmark):
    """The control for 2-shared: two processes, each on its own exclusive store. If this is not
    ~2x one process either, the machine (cores taken by other jobs, memory bandwidth of the
    page-cache copies) and not the shared mutex caps the scaling."""
    _bench_writers(benchmark, 2, True, separate=True)


def test_send_many_two_processes_own_topics(benchmark):
    """Two processes on one shared store, each on its own topic: against 2-shared (one topic)
    this separates contention for the same partitions from the shared mode's own cost."""
    _bench_writers(benchmark, 2, False, separate=False, own_topic=True)


def _bench_writers(benchmark, procs: int, exclusive: bool, separate: bool,
                   own_topic: bool = False) -> None:
    rates: list[float] = []

    def once() -> None:
        rates.append(run_writers(procs, exclusive, separate=separate, own_topic=own_topic))

    benchmark.pedantic(once, rounds=int(os.environ.get("KSTORE_BENCH_ROUNDS", "5")),
                       iterations=1)
    rates.sort()
    median = rates[len(rates) // 2]
    if not (separate or own_topic):
        _MEDIANS[procs, exclusive] = median
    benchmark.extra_info.update(
        workload="send_many", processes=procs,
        mode=("separate" if separate else "shared-own-topics" if own_topic
              else "exclusive" if exclusive else "shared"),
        records_per_process=max(N // CALL, 1) * CALL,
        records_per_s_median=median, records_per_s_min=rates[0],
        records_per_s_max=rates[-1])
    if procs > 1 and (1, False) in _MEDIANS:  # 1-shared ran earlier in this session
        benchmark.extra_info["ratio_to_1_shared"] = median / _MEDIANS[1, False]


SEND_N = int(os.environ.get("KSTORE_BENCH_SEND_RECORDS", str(max(N // 4, 1))))


def send_per_record(exclusive: bool, records: int = SEND_N) -> float:
    """Records per second of one process calling ``Producer.send`` per record, then ``flush``:
    the producer appends one batch per 16 KiB, so a shared store takes the partition's mutex
    once per batch, not once per record."""
    vals = make_values(4096)
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-send-", dir=ROOT))
    try:
        with kstore.open(d, retention_check_interval_ms=0, exclusive=exclusive) as s:
            s.create_topic("t", 4, {"segment.bytes": 1 << 30})
            p = s.producer()
            p.send("t", vals[0])
            p.flush()
            send = p.send
            t0 = time.perf_counter()
            for i in range(records):
                send("t", vals[i & 4095])
            p.flush()
            elapsed = time.perf_counter() - t0
            assert sum(s.partition("t", i).log_end_offset for i in range(4)) == records + 1
        return records / elapsed
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "shared"])
def test_send_per_record_one_process(benchmark, exclusive):
    rates: list[float] = []

    def once() -> None:
        rates.append(send_per_record(exclusive))

    benchmark.pedantic(once, rounds=int(os.environ.get("KSTORE_BENCH_ROUNDS", "5")),
                       iterations=1)
    rates.sort()
    benchmark.extra_info.update(
        workload="send", processes=1, mode="exclusive" if exclusive else "shared",
        records_per_process=SEND_N, records_per_s_median=rates[len(rates) // 2],
        records_per_s_min=rates[0], records_per_s_max=rates[-1])
