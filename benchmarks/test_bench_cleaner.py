"""Log cleaner (compaction) throughput, and the producer's throughput while the cleaner runs
in another thread against without it, measured in the same run.

    python -m pytest benchmarks/test_bench_cleaner.py --benchmark-enable --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

KSTORE_CLEAN_RECORDS sets the records of the compaction workload (default 200000 records of
100 bytes, 10% unique keys); KSTORE_BENCH_MB the bytes the producer appends (default 128) and
KSTORE_CLEAN_SEGMENT_MB its segment.bytes (default 16).
"""

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from kstore.cleaner import clean_log
from kstore.log import PartitionLog
from kstore.records import encode_batches, iter_batches

from .conftest import make_values

RECORDS = int(os.environ.get("KSTORE_CLEAN_RECORDS", "200000"))
PRODUCE_MB = int(os.environ.get("KSTORE_BENCH_MB", "128"))
SEGMENT_MB = int(os.environ.get("KSTORE_CLEAN_SEGMENT_MB", "16"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))  # same disk as the checkout
NOW = 1_800_000_000_000
COMPACT = {"cleanup.policy": "compact", "file.delete.delay.ms": 0}


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _keys(n, unique, seed=3):
    rng = np.random.default_rng(seed)
    return [b"key-%08d" % k for k in rng.integers(0, unique, size=n)]


@pytest.fixture(scope="module")
def dirty_batches():
    """RECORDS records with 100-byte values, keys drawn from RECORDS/10 (10% unique)."""
    values = make_values(RECORDS)
    ts = np.arange(RECORDS, dtype=np.int64) + 1_700_000_000_000
    return encode_batches(values, _keys(RECORDS, RECORDS // 10), ts, max_batch_bytes=16384)


class _Fresh:
    """Untimed setup: a new log holding the dirty data in closed, fsynced segments."""

    def __init__(self, workdir, raw):
        self.workdir, self.raw, self.n, self.log = workdir, raw, 0, None

    def __call__(self):
        self.close()
        d = self.workdir / f"c-{self.n}"
        self.n += 1
        lg = PartitionLog.open(d, COMPACT)
        lg.append_batches(self.raw, validate_records=False)
        lg.roll()
        lg.flush()
        for t in list(lg._flush_threads):
            t.join()
        self.log = lg
        return (lg,), {}

    def close(self):
        if self.log is not None:
            d = self.log.directory
            self.log.close()
            shutil.rmtree(d, ignore_errors=True)
            self.log = None


@pytest.mark.benchmark(group="compaction: 100-byte records, 10% unique keys")
def test_clean_log(benchmark, workdir, dirty_batches):
    fresh = _Fresh(workdir, dirty_batches)
    results = []

    def clean(lg):
        results.append(clean_log(lg, NOW, force=True))

    benchmark.pedantic(clean, setup=fresh, rounds=9)
    res = results[-1]
    benchmark.extra_info["bytes"] = res.bytes_before
    benchmark.extra_info["records"] = RECORDS
    benchmark.extra_info["bytes_after"] = res.bytes_after
    assert res.records_removed >= RECORDS * 0.85
    assert fresh.log.verify() == []
    fresh.close()


@pytest.mark.benchmark(group="compaction: 100-byte records, 10% unique keys")
def test_clean_baseline_copy_and_fsync(benchmark, workdir, dirty_batches):
    """Reading the segment and writing it to a new fsynced file: the floor of any cleaner
    that rewrites the log."""
    fresh = _Fresh(workdir, dirty_batches)

    def copy(lg):
        src = lg.segments()[0].path
        dst = src.with_name("copy.tmp")
        with open(src, "rb") as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
            g.flush()
            os.fsync(g.fileno())
        dst.unlink()

    benchmark.pedantic(copy, setup=fresh, rounds=9)
    benchmark.extra_info["bytes"] = fresh.log.segments()[0].size
    fresh.close()


# ---- the producer while the cleaner runs ------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_16k_batches():
    one = encode_batches(make_values(20_000), _keys(20_000, 2_000, seed=5),
                         max_batch_bytes=16384)
    batches = [bytes(b.raw()) for b in iter_batches(one)]
    out, total = [], 0
    while total < PRODUCE_MB << 20:
        for b in batches:
            out.append(b)
            total += len(b)
    return out


class _CleanerThread:
    """Runs clean_log on the log in a loop, as a Store's maintenance thread would: a round
    whenever the dirty ratio is above min.cleanable.dirty.ratio, a 5 ms back-off otherwise."""

    def __init__(self, lg):
        self.log, self.stop, self.rounds, self.errors = lg, threading.Event(), 0, []
        self.thread = threading.Thread(target=self._run, name="cleaner", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                if clean_log(self.log, NOW) is None:
                    self.stop.wait(0.005)
                else:
                    self.rounds += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def join(self):
        self.stop.set()
        self.thread.join()


class _ProduceSetup:
    """Untimed setup and teardown: a fresh compacted log, with or without a cleaner thread
    already running when the timed appends start."""

    def __init__(self, workdir, with_cleaner):
        self.workdir, self.with_cleaner, self.n = workdir, with_cleaner, 0
        self.log, self.cleaner, self.rounds = None, None, []

    def __call__(self):
        self.close()
        d = self.workdir / f"p-{self.n}"
        self.n += 1
        self.log = PartitionLog.open(d, {**COMPACT, "segment.bytes": SEGMENT_MB << 20})
        if self.with_cleaner:
            self.cleaner = _CleanerThread(self.log)
        return (self.log,), {}

    def close(self):
        if self.cleaner is not None:
            self.cleaner.join()
            assert not self.cleaner.errors, self.cleaner.errors
            self.rounds.append(self.cleaner.rounds)
            self.cleaner = None
        if self.log is not None:
            d = self.log.directory
            self.log.close()
            shutil.rmtree(d, ignore_errors=True)
            self.log = None


def _producer(batches):
    def run(lg):
        append = lg.append_batch
        for b in batches:
            append(b, validate_records=False)
    return run


def _bench_produce(benchmark, workdir, batches, with_cleaner):
    setup = _ProduceSetup(workdir, with_cleaner)
    benchmark.pedantic(_producer(batches), setup=setup, rounds=7)
    setup.close()
    benchmark.extra_info["bytes"] = sum(map(len, batches))
    if with_cleaner:
        benchmark.extra_info["cleanings_per_round"] = float(np.median(setup.rounds))
        assert max(setup.rounds) > 0, "the cleaner never ran during the appends"


@pytest.mark.benchmark(group="produce: 16 KiB batches to a compacted log")
def test_produce_while_cleaner_runs(benchmark, workdir, keyed_16k_batches):
    _bench_produce(benchmark, workdir, keyed_16k_batches, with_cleaner=True)


@pytest.mark.benchmark(group="produce: 16 KiB batches to a compacted log")
def test_produce_baseline_no_cleaner(benchmark, workdir, keyed_16k_batches):
    _bench_produce(benchmark, workdir, keyed_16k_batches, with_cleaner=False)
