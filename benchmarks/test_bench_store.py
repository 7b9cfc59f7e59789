"""The embedded API end to end: producer send and send_many, consumer iteration and columnar
polls, send-to-poll latency, and the same workload through SQLite and plain os.write.

    python -m pytest benchmarks/test_bench_store.py --benchmark-enable --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

Workload: 100-byte values, 8-16 byte keys, 4 partitions. KSTORE_BENCH_RECORDS sets N (default
1,000,000; send() uses N/5).
"""

import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kstore

from .conftest import make_values

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "1000000"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-store-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def workload():
    values = make_values(N)
    rng = np.random.default_rng(7)
    keys = [b"user-%0*d" % (int(w), int(k)) for w, k in
            zip(rng.integers(3, 12, size=N), rng.integers(0, 10**6, size=N))]
    return values, keys


class _Fresh:
    def __init__(self, workdir):
        self.workdir = workdir
        self.store = None

    def __call__(self):
        if self.store is not None:
            self.store.close()
        d = self.workdir / "store"
        shutil.rmtree(d, ignore_errors=True)
        self.store = kstore.open(d)
        self.store.create_topic("bench", partitions=4)
        return (self.store,), {}

    def close(self):
        if self.store is not None:
            self.store.close()


@pytest.mark.benchmark(group="produce: send() per record")
def test_send_kstore(benchmark, workdir, workload):
    values, keys = workload
    n = N // 5
    values, keys = values[:n], keys[:n]
    benchmark.extra_info["records"] = n
    fresh = _Fresh(workdir)

    def run(store):
        p = store.producer(linger_ms=100)
        send = p.send
        for i in range(n):
            send("bench", values[i], keys[i])
        p.flush()
        p.close()

    benchmark.pedantic(run, setup=fresh, rounds=5)
    fresh.close()


@pytest.mark.benchmark(group="produce: send_many() from lists")
def test_send_many_kstore(benchmark, workdir, workload):
    values, keys = workload
    benchmark.extra_info["records"] = N
    benchmark.extra_info["bytes"] = sum(map(len, values)) + sum(map(len, keys))
    fresh = _Fresh(workdir)

    def run(store):
        p = store.producer()
        p.send_many("bench", values, keys=keys)
        p.close()

    benchmark.pedantic(run, setup=fresh, rounds=5)
    fresh.close()


@pytest.mark.benchmark(group="produce: send_many() from lists")
def test_send_many_numpy_kstore(benchmark, workdir, workload):
    """The same records as one buffer plus offsets (no Python object per record)."""
    values, keys = workload
    vdata = b"".join(values)
    voffs = np.zeros(N + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values], out=voffs[1:])
    kdata = b"".join(keys)
    koffs = np.zeros(N + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=koffs[1:])
    benchmark.extra_info["records"] = N
    benchmark.extra_info["bytes"] = len(vdata) + len(kdata)
    fresh = _Fresh(workdir)

    def run(store):
        p = store.producer()
        p.send_many("bench", (vdata, voffs), keys=(kdata, koffs))
        p.close()

    benchmark.pedantic(run, setup=fresh, rounds=5)
    fresh.close()


@pytest.mark.benchmark(group="produce: send_many() from lists")
def test_send_many_list_join_floor(benchmark, workload):
    """Reading every value of the list once (b"".join): a floor for any list consumer."""
    values, _ = workload
    benchmark.extra_info["records"] = N
    benchmark(b"".join, values)


@pytest.mark.benchmark(group="produce: send_many() from lists")
def test_send_many_baseline_os_write(benchmark, workdir, workload):
    """The same encoded bytes (what kstore wrote) through a loop of os.write of 16 KiB."""
    values, keys = workload
    raw = kstore.records.encode_batches(values, keys, max_batch_bytes=16384)
    chunks = [raw[i:i + 16384] for i in range(0, len(raw), 16384)]
    benchmark.extra_info["records"] = N
    benchmark.extra_info["bytes"] = sum(map(len, values)) + sum(map(len, keys))
    path = workdir / "raw" / "x.log"

    def setup():
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir()
        return (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),), {}

    def run(fd):
        for c in chunks:
            os.write(fd, c)
        os.close(fd)

    benchmark.pedantic(run, setup=setup, rounds=5)


@pytest.mark.benchmark(group="produce: send_many() from lists")
def test_send_many_baseline_sqlite(benchmark, workdir, workload):
    """SQLite with WAL: executemany of (key, value, ts) in one transaction."""
    values, keys = workload
    benchmark.extra_info["records"] = N
    rows = list(zip(keys, values, [1_700_000_000_000] * N))
    path = workdir / "bench.sqlite"

    def setup():
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, key BLOB, value BLOB, ts INTEGER)")
        return (db,), {}

    def run(db):
        with db:
            db.executemany("INSERT INTO log (key, value, ts) VALUES (?, ?, ?)", rows)
        db.close()

    benchmark.pedantic(run, setup=setup, rounds=3)


@pytest.fixture(scope="module")
def filled(workdir, workload):
    values, keys = workload
    d = workdir / "filled"
    shutil.rmtree(d, ignore_errors=True)
    with kstore.open(d) as store:
        store.create_topic("bench", partitions=4)
        p = store.producer()
        p.send_many("bench", values, keys=keys)
        p.close()
    return d


@pytest.mark.benchmark(group="consume: all records")
def test_consume_iterate_kstore(benchmark, filled):
    benchmark.extra_info["records"] = N

    def run():
        with kstore.open(filled, read_only=True) as store:
            c = store.consumer(topics=["bench"], auto_offset_reset="earliest")
            n = 0
            for _ in c:
                n += 1
                if n == N:
                    break
            c.close()
        assert n == N

    benchmark.pedantic(run, rounds=5)


@pytest.mark.benchmark(group="consume: all records")
def test_consume_poll_batches_kstore(benchmark, filled):
    benchmark.extra_info["records"] = N

    def run():
        with kstore.open(filled, read_only=True) as store:
            c = store.consumer(topics=["bench"], auto_offset_reset="earliest")
            n = 0
            while n < N:
                n += sum(len(b) for b in c.poll_batches(timeout=1))
            c.close()
        assert n == N

    benchmark.pedantic(run, rounds=5)


@pytest.mark.benchmark(group="consume: all records")
def test_consume_baseline_sqlite(benchmark, workdir, workload):
    values, keys = workload
    path = workdir / "read.sqlite"
    if not path.exists():
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, key BLOB, value BLOB, ts INTEGER)")
        with db:
            db.executemany("INSERT INTO log (key, value, ts) VALUES (?, ?, ?)",
                           zip(keys, values, [0] * N))
        db.close()
    benchmark.extra_info["records"] = N

    def run():
        db = sqlite3.connect(path)
        n = sum(1 for _ in db.execute("SELECT id, key, value, ts FROM log"))
        db.close()
        assert n == N

    benchmark.pedantic(run, rounds=3)


def measure_latency(path, rate=10_000, count=3000):
    """send + flush in one thread at ``rate`` records/s, poll in another; returns latencies (s)."""
    shutil.rmtree(path, ignore_errors=True)
    lat = []
    with kstore.open(path) as store:
        store.create_topic("lat", partitions=1)
        p = store.producer(linger_ms=0)
        c = store.consumer(topics=["lat"], auto_offset_reset="earliest")
        sent = {}
        done = threading.Event()

        def consume():
            got = 0
            while got < count:
                for r in c.poll(timeout=5):
                    lat.append(time.perf_counter() - sent[r.offset])
                    got += 1
            done.set()

        t = threading.Thread(target=consume)
        t.start()
        interval = 1 / rate
        start = time.perf_counter()
        for i in range(count):
            # Sleep (not spin) until the next send: a spinning loop holds the GIL and the
            # consumer thread would only run every sys.getswitchinterval() (5 ms).
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[i] = time.perf_counter()
            p.send("lat", b"x" * 100, key=b"k")
            p.flush()
        done.wait(30)
        t.join()
        c.close()
        p.close()
    return lat


@pytest.mark.benchmark(group="latency: send+flush to poll, 10k records/s")
def test_end_to_end_latency(benchmark, workdir):
    result = {}

    def run():
        lat = sorted(measure_latency(workdir / "lat"))
        result["p50_us"] = lat[len(lat) // 2] * 1e6
        result["p99_us"] = lat[int(len(lat) * 0.99)] * 1e6
        result["max_us"] = lat[-1] * 1e6

    benchmark.pedantic(run, rounds=3)
    benchmark.extra_info.update(result)
