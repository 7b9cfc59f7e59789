"""Several writer processes on one data directory (issue 14): send_many throughput of 1, 2 and
4 processes appending to one 4-partition topic of a shared store, against one process with
the store opened exclusive (no process-shared mutex on the append path) in the same run.

    python -m pytest benchmarks/test_bench_multiprocess.py --benchmark-enable \\
        --benchmark-only --benchmark-json=out.json && python benchmarks/report.py out.json

Workload: 100-byte JSON-like values, keyless (send_many spreads each call over the partitions in
contiguous runs), calls of 65,536 records; KSTORE_BENCH_RECORDS records per process (default
2,000,000). Processes are forked, start together at a barrier and are timed from the barrier
to the last one's end; the throughput is records of all processes over that time, in
``extra_info``. Writers run on however many cores the machine has (2 here).

Baseline of the machine, same run: the same processes encoding the same batches in C and
storing nothing (``encode-only``). Its 2-process/1-process ratio is the most any writer can
scale by here: a VM's two vCPUs need not give twice the work of one.
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

from kstore import _core

from .conftest import make_values

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "2000000"))
CALL = min(65536, N)
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))
CTX = mp.get_context("fork")


def _values() -> np.ndarray:
    vals = make_values(CALL)
    return np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(CALL, 100)


def _writer(path: str, barrier, done, exclusive: bool, calls: int) -> None:
    vals = _values()
    with kstore.open(path, retention_check_interval_ms=0, exclusive=exclusive) as s:
        p = s.producer()
        p.send_many("t", vals[:100])  # partitions opened before the clock starts
        barrier.wait()
        for _ in range(calls):
            p.send_many("t", vals)
        done.put(os.getpid())


def _encoder(path: str, barrier, done, exclusive: bool, calls: int) -> None:
    vals = _values()
    barrier.wait()
    for _ in range(calls):
        for part in np.array_split(np.arange(CALL), 4):  # as send_many splits a keyless call
            _core.encode_batches(vals, None, None, indices=part, compression="none",
                                 max_batch_bytes=16384)
    done.put(os.getpid())


def run_writers(procs: int, exclusive: bool = False, records: int = N,
                encode_only: bool = False) -> float:
    """Records per second of ``procs`` writer processes, each sending ``records``."""
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-mp-", dir=ROOT))
    try:
        with kstore.open(d, exclusive=exclusive) as s:
            s.create_topic("t", 4, {"segment.bytes": 1 << 30})
        calls = max(records // CALL, 1)
        barrier = CTX.Barrier(procs + 1)
        done = CTX.Queue()
        target = _encoder if encode_only else _writer
        ps = [CTX.Process(target=target, args=(str(d), barrier, done, exclusive, calls))
              for _ in range(procs)]
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
        if not encode_only:
            with kstore.open(d, read_only=True) as r:
                total = sum(r.partition("t", i).log_end_offset for i in range(4))
            assert total == procs * (calls * CALL + 100)
        return procs * calls * CALL / elapsed
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("procs,mode", [(1, "exclusive"), (1, "shared"), (2, "shared"),
                                        (4, "shared"), (1, "encode-only"), (2, "encode-only"),
                                        (4, "encode-only")],
                         ids=["1-exclusive", "1-shared", "2-shared", "4-shared",
                              "1-encode-only", "2-encode-only", "4-encode-only"])
def test_send_many_writer_processes(benchmark, procs, mode):
    rates: list[float] = []
    exclusive = mode == "exclusive"

    def once() -> None:
        rates.append(run_writers(procs, exclusive, encode_only=mode == "encode-only"))

    benchmark.pedantic(once, rounds=int(os.environ.get("KSTORE_BENCH_ROUNDS", "5")),
                       iterations=1)
    rates.sort()
    benchmark.extra_info.update(
        processes=procs, mode=mode,
        records_per_process=max(N // CALL, 1) * CALL,
        records_per_s_median=rates[len(rates) // 2], records_per_s_min=rates[0],
        records_per_s_max=rates[-1])
