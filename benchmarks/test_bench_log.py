"""Partition log throughput against plain file operations measured in the same run.

    python -m pytest benchmarks/test_bench_log.py --benchmark-enable --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

KSTORE_BENCH_MB sets the size of the append/read workloads (default 64) and KSTORE_SENDFILE_MB
the sendfile log (default 1024).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kstore.log import PartitionLog
from kstore.records import encode_batches, iter_batches

from .conftest import make_values

MB = int(os.environ.get("KSTORE_BENCH_MB", "64"))
SENDFILE_MB = int(os.environ.get("KSTORE_SENDFILE_MB", "1024"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))  # same disk as the checkout


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def batches_16k():
    one = encode_batches(make_values(20_000), max_batch_bytes=16384)
    batches = [bytes(b.raw()) for b in iter_batches(one)]
    out, total = [], 0
    while total < MB << 20:
        for b in batches:
            out.append(b)
            total += len(b)
    return out


@pytest.fixture(scope="module")
def batches_16k_hot(batches_16k):
    """The same bytes count, cycling over 2 MiB of batches that stay in cache, as batches a
    producer has just built would be (the cold variant streams 64 MiB from memory)."""
    hot = batches_16k[:128]
    return [hot[i % len(hot)] for i in range(len(batches_16k))]


@pytest.fixture(scope="module")
def single_record_batches():
    n = 200_000
    vals = make_values(1000)
    return [encode_batches([vals[i % 1000]]) for i in range(n)]


def _fresh(workdir, name):
    d = workdir / name
    shutil.rmtree(d, ignore_errors=True)
    return d


class _Opened:
    """Opens the log (or file) in the untimed setup and closes the previous one there too, so
    only the append loop is timed: close() fsyncs, and the os.write baseline does not."""

    def __init__(self):
        self.current = None

    def log(self, d):
        self._close()
        shutil.rmtree(d, ignore_errors=True)
        self.current = PartitionLog.open(d)
        return (self.current,), {}

    def fd(self, path):
        # A fresh file in a fresh directory, as the log gets: overwriting a file that still
        # has its pages in the cache is a different (and noisier) workload.
        self._close()
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        self.current = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return (self.current,), {}

    def _close(self):
        if isinstance(self.current, int):
            os.close(self.current)
        elif self.current is not None:
            self.current.close()
        self.current = None


def _append_all(d, batches):
    log = PartitionLog.open(d)
    append = log.append_batch
    for b in batches:
        append(b, validate_records=False)
    log.close()


def _appender(batches, validate=False, verify_crc=True):
    def run(log):
        append = log.append_batch
        for b in batches:
            append(b, validate_records=validate, verify_crc=verify_crc)
    return run


def _writer(batches):
    def run(fd):
        write = os.write
        for b in batches:
            write(fd, b)
    return run


def _bench_pair(benchmark, workdir, batches, kind, validate=False, verify_crc=True):
    opened = _Opened()
    if kind == "kstore":
        benchmark.pedantic(_appender(batches, validate, verify_crc), rounds=7,
                           setup=lambda: opened.log(workdir / "a-0"))
    else:
        benchmark.pedantic(_writer(batches), rounds=7,
                           setup=lambda: opened.fd(workdir / "raw-0" / "00000000000000000000.log"))
    opened._close()


@pytest.mark.benchmark(group="append: 16 KiB batches of 100-byte records")
def test_append_16k_kstore(benchmark, workdir, batches_16k):
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k))
    _bench_pair(benchmark, workdir, batches_16k, "kstore")


@pytest.mark.benchmark(group="append: 16 KiB batches of 100-byte records")
def test_append_16k_kstore_validating_records(benchmark, workdir, batches_16k):
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k))
    _bench_pair(benchmark, workdir, batches_16k, "kstore", validate=True)


@pytest.mark.benchmark(group="append: 16 KiB batches of 100-byte records")
def test_append_16k_baseline_os_write(benchmark, workdir, batches_16k):
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k))
    _bench_pair(benchmark, workdir, batches_16k, "raw")


@pytest.mark.benchmark(group="append: 16 KiB batches, hot in cache")
def test_append_16k_hot_kstore(benchmark, workdir, batches_16k_hot):
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k_hot))
    _bench_pair(benchmark, workdir, batches_16k_hot, "kstore")


@pytest.mark.benchmark(group="append: 16 KiB batches, hot in cache")
def test_append_16k_hot_kstore_trusted(benchmark, workdir, batches_16k_hot):
    """Batches encoded in this process (the Producer's path): no CRC recomputation."""
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k_hot))
    _bench_pair(benchmark, workdir, batches_16k_hot, "kstore", verify_crc=False)


@pytest.mark.benchmark(group="append: 16 KiB batches, hot in cache")
def test_append_16k_hot_baseline_os_write(benchmark, workdir, batches_16k_hot):
    benchmark.extra_info["bytes"] = sum(map(len, batches_16k_hot))
    _bench_pair(benchmark, workdir, batches_16k_hot, "raw")


@pytest.mark.benchmark(group="append: single-record batches")
def test_append_single_kstore(benchmark, workdir, single_record_batches):
    benchmark.extra_info["records"] = len(single_record_batches)
    _bench_pair(benchmark, workdir, single_record_batches, "kstore")


@pytest.mark.benchmark(group="append: single-record batches")
def test_append_single_kstore_validating_records(benchmark, workdir, single_record_batches):
    benchmark.extra_info["records"] = len(single_record_batches)
    _bench_pair(benchmark, workdir, single_record_batches, "kstore", validate=True)


@pytest.mark.benchmark(group="append: single-record batches")
def test_append_single_baseline_os_write(benchmark, workdir, single_record_batches):
    benchmark.extra_info["records"] = len(single_record_batches)
    _bench_pair(benchmark, workdir, single_record_batches, "raw")


@pytest.fixture(scope="module")
def written_log(workdir, batches_16k):
    d = workdir / "r-0"
    _append_all(d, batches_16k)
    return d


def _read_views(d):
    log = PartitionLog.open(d, read_only=True)
    off, end, n = 0, log.log_end_offset, 0
    while off < end:
        fs = log.read(off, 1 << 20)
        mv = fs.memoryview()
        n += len(mv)
        off = fs.next_offset
        mv.release()
    log.close()
    return n


def _read_file(path):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


@pytest.mark.benchmark(group="read: whole log")
def test_read_memoryviews_kstore(benchmark, written_log):
    size = sum(p.stat().st_size for p in written_log.glob("*.log"))
    benchmark.extra_info["bytes"] = size
    assert benchmark(_read_views, written_log) == size


@pytest.mark.benchmark(group="read: whole log")
def test_read_baseline_file_read(benchmark, written_log):
    (seg,) = written_log.glob("*.log")
    benchmark.extra_info["bytes"] = seg.stat().st_size
    benchmark(_read_file, seg)


# ---- sendfile -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_log(workdir):
    d = workdir / "big-0"
    one = encode_batches(make_values(20_000), max_batch_bytes=16384)
    log = PartitionLog.open(d)
    while log.size_bytes < SENDFILE_MB << 20:
        log.append_batches(one, validate_records=False)
    log.close()
    return d


def _drain(sock, total, done):
    buf = bytearray(1 << 20)
    got = 0
    while got < total:
        n = sock.recv_into(buf)
        if not n:
            break
        got += n
    done.append(got)


def _send(send_fn, total):
    a, b = socket.socketpair()
    done = []
    t = threading.Thread(target=_drain, args=(b, total, done))
    t.start()
    send_fn(a)
    t.join()
    a.close()
    b.close()
    assert done == [total]


@pytest.mark.benchmark(group="sendfile: whole log to a local socket")
def test_sendfile_kstore(benchmark, big_log):
    log = PartitionLog.open(big_log, read_only=True)
    total = log.size_bytes
    benchmark.extra_info["bytes"] = total

    def send(sock):
        off = log.log_start_offset
        while off < log.log_end_offset:
            fs = log.read(off, 64 << 20)
            fs.sendfile(sock)
            off = fs.next_offset

    benchmark.pedantic(_send, args=(send, total), rounds=5)
    log.close()


@pytest.mark.benchmark(group="sendfile: whole log to a local socket")
def test_sendfile_baseline_os_sendfile(benchmark, big_log):
    segs = sorted(big_log.glob("*.log"))
    total = sum(p.stat().st_size for p in segs)
    benchmark.extra_info["bytes"] = total

    def send(sock):
        for p in segs:
            with open(p, "rb") as f:
                off, size = 0, p.stat().st_size
                while off < size:
                    off += os.sendfile(sock.fileno(), f.fileno(), off, size - off)

    benchmark.pedantic(_send, args=(send, total), rounds=5)


# ---- recovery ---------------------------------------------------------------------------

CRASH_WRITER = r"""
import os, signal, sys
from kstore.log import PartitionLog
from kstore.records import encode_batches
one = encode_batches([b"x" * 100] * 20000, max_batch_bytes=16384)
log = PartitionLog.open(sys.argv[1])
while log.size_bytes < int(sys.argv[2]):
    log.append_batches(one, validate_records=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def crashed_log(workdir):
    d = workdir / "crash-0"
    subprocess.run([sys.executable, "-c", CRASH_WRITER, str(d), str(SENDFILE_MB << 20)])
    return d


@pytest.mark.benchmark(group="open: recovery after SIGKILL (all unflushed) vs clean reopen")
def test_recovery_after_sigkill(benchmark, crashed_log):
    marker = crashed_log / ".kstore_cleanshutdown"
    benchmark.extra_info["bytes"] = sum(p.stat().st_size for p in crashed_log.glob("*.log"))

    def open_unclean():
        log = PartitionLog.open(crashed_log)
        assert not log.recovery.clean and log.recovery.truncated_bytes == 0
        log._release()  # leave it unclean again for the next round
        log._closed = True

    benchmark.pedantic(open_unclean, rounds=5, setup=lambda: marker.unlink(missing_ok=True))


@pytest.mark.benchmark(group="open: recovery after SIGKILL (all unflushed) vs clean reopen")
def test_reopen_after_clean_close(benchmark, crashed_log):
    PartitionLog.open(crashed_log).close()

    def open_clean():
        log = PartitionLog.open(crashed_log)
        assert log.recovery.clean
        log.close()

    benchmark.pedantic(open_clean, rounds=20)
