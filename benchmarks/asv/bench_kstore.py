"""asv benchmarks for kstore: codec, partition log, producer, consumer, recovery, compaction,
and `kstore serve` through confluent-kafka.

    asv run --quick --show-stderr -E existing          # each benchmark once, nothing saved
    asv run -E existing --set-commit-hash HASH         # a result set for `asv compare`

Each setup builds a few MB in a temporary folder of the current directory (the same disk as
the checkout), removed in teardown. The codec benchmarks follow Kafka's
``BaseRecordBatchBenchmark`` (jmh-benchmarks): random bytes from seed 0, a parameter for the
record size and one for the codec, the same batches encoded and decoded on every call.
"""

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import kstore
from kstore.cleaner import clean_log
from kstore.log import PartitionLog
from kstore.records import CODECS, columns, encode_batches, iter_batches

ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))
MB = 4  # bytes of records per setup (a few MB keeps `asv run --quick` near a minute)


def _records(size, seed=0, total=MB << 20):
    """Kafka's BaseRecordBatchBenchmark: ``new Random(seed)`` bytes, ``size`` bytes a record."""
    rng = random.Random(seed)
    n = max(total // size, 1)
    blob = rng.randbytes(size * 64)
    return [blob[(i % 64) * size:(i % 64 + 1) * size] for i in range(n)]


def _keys(n, seed=1):
    rng = np.random.default_rng(seed)
    return [b"user-%0*d" % (int(w), int(k)) for w, k in
            zip(rng.integers(3, 12, size=n), rng.integers(0, 10**6, size=n))]


class _TempDir:
    def _mkdir(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="kstore-asv-", dir=ROOT))

    def teardown(self, *params):
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- codec ------------------------------------------------------------------------------

class Codec:
    """encode_batches / decode (Record objects) / columns, 16 KiB batches, per codec."""
    params = (list(CODECS), [100, 1000])
    param_names = ("codec", "record_size")

    def setup(self, codec, record_size):
        self.values = _records(record_size, total=(MB // 2) << 20)
        self.raw = encode_batches(self.values, compression=codec, max_batch_bytes=16384)

    def time_encode(self, codec, record_size):
        encode_batches(self.values, compression=codec, max_batch_bytes=16384)

    def time_decode_records(self, codec, record_size):
        for b in iter_batches(self.raw):
            b.records()

    def time_decode_columns(self, codec, record_size):
        for b in iter_batches(self.raw):
            b.columns()

    def track_compressed_ratio(self, codec, record_size):
        return len(self.raw) / sum(map(len, self.values))
    track_compressed_ratio.unit = "ratio"


# ---- partition log ------------------------------------------------------------------------

class LogAppend(_TempDir):
    """PartitionLog.append_batches of 16 KiB batches and append_many (a new log each call,
    opened, appended and closed)."""
    number = 1
    repeat = (3, 10, 20.0)

    def setup(self):
        self._mkdir()
        self.values = _records(100)
        self.raw = encode_batches(self.values, max_batch_bytes=16384)
        self.n = 0

    def _log(self):
        self.n += 1
        return PartitionLog.open(self.tmp / f"a-{self.n}")

    def time_append_batches(self):
        lg = self._log()
        lg.append_batches(self.raw, validate_records=False)
        lg.close()  # fsyncs: open to close, as a user sees it

    def time_append_many(self):
        lg = self._log()
        lg.append_many(self.values)
        lg.close()


class LogRead(_TempDir):
    """read() every batch of a filled log: FileSlice records, columns, and sendfile."""

    def setup(self):
        self._mkdir()
        lg = PartitionLog.open(self.tmp / "r-0")
        lg.append_batches(encode_batches(_records(100), max_batch_bytes=16384),
                          validate_records=False)
        lg.close()
        self.log = PartitionLog.open(self.tmp / "r-0", read_only=True)

    def teardown(self):
        self.log.close()
        super().teardown()

    def _slices(self):
        lg = self.log
        off = lg.log_start_offset
        while off < lg.log_end_offset:
            fs = lg.read(off, 1 << 20)
            yield fs
            off = fs.next_offset

    def time_read_records(self):
        for fs in self._slices():
            fs.records()

    def time_read_columns(self):
        for fs in self._slices():
            columns(fs.memoryview())

    def time_sendfile(self):
        total = self.log.size_bytes
        a, b = socket.socketpair()
        got = []

        def drain():
            buf = bytearray(1 << 20)
            n = 0
            while n < total:
                k = b.recv_into(buf)
                if not k:
                    break
                n += k
            got.append(n)

        t = threading.Thread(target=drain)
        t.start()
        for fs in self._slices():
            fs.sendfile(a)
        t.join()
        a.close()
        b.close()
        assert got == [total]


# ---- producer / consumer --------------------------------------------------------------------

class Producer(_TempDir):
    """Producer.send per record and send_many from lists, keyed, 4 partitions."""
    number = 1
    repeat = (3, 10, 20.0)

    def setup(self):
        self._mkdir()
        self.values = _records(100)
        self.keys = _keys(len(self.values))
        self.n = 0

    def _store(self):
        self.n += 1
        store = kstore.open(self.tmp / f"s-{self.n}")
        store.create_topic("bench", partitions=4)
        return store

    def time_send(self):
        with self._store() as store:
            p = store.producer(linger_ms=100)
            send = p.send
            for v, k in zip(self.values, self.keys):
                send("bench", v, k)
            p.close()

    def time_send_many(self):
        with self._store() as store:
            p = store.producer()
            p.send_many("bench", self.values, keys=self.keys)
            p.close()


class Consumer(_TempDir):
    """for record in consumer (Record objects) and poll_batches (numpy columns)."""

    def setup(self):
        self._mkdir()
        values = _records(100)
        self.n = len(values)
        with kstore.open(self.tmp / "c") as store:
            store.create_topic("bench", partitions=4)
            p = store.producer()
            p.send_many("bench", values, keys=_keys(self.n))
            p.close()
        self.store = kstore.open(self.tmp / "c", read_only=True)

    def teardown(self):
        self.store.close()
        super().teardown()

    def time_iterate(self):
        c = self.store.consumer(topics=["bench"], auto_offset_reset="earliest")
        n = 0
        while n < self.n:
            n += len(c.poll(timeout=1, max_records=100_000))
        c.close()

    def time_poll_batches(self):
        c = self.store.consumer(topics=["bench"], auto_offset_reset="earliest")
        n = 0
        while n < self.n:
            n += sum(len(b) for b in c.poll_batches(timeout=1))
        c.close()


# ---- recovery ---------------------------------------------------------------------------------

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


class Recovery(_TempDir):
    """Open a log after SIGKILL (every batch past the last fsync re-checked by CRC) and after a
    clean close."""
    number = 1

    def setup(self):
        self._mkdir()
        self.dir = self.tmp / "crash-0"
        subprocess.run([sys.executable, "-c", CRASH_WRITER, str(self.dir), str(MB << 20)],
                       check=False)
        self.marker = self.dir / ".kstore_cleanshutdown"
        self.clean = self.tmp / "clean-0"
        shutil.copytree(self.dir, self.clean)
        PartitionLog.open(self.clean).close()

    def time_open_after_unclean_close(self):
        self.marker.unlink(missing_ok=True)
        lg = PartitionLog.open(self.dir)
        assert not lg.recovery.clean
        for seg in lg._segments:  # close the files but write no clean-shutdown marker:
            seg.close()           # the next call recovers again
        lg._release()
        lg._closed = True

    def time_open_after_clean_close(self):
        lg = PartitionLog.open(self.clean, read_only=True)
        lg.close()


# ---- compaction -------------------------------------------------------------------------------

NOW = 1_800_000_000_000
COMPACT = {"cleanup.policy": "compact", "file.delete.delay.ms": 0, "segment.bytes": 1 << 20}


class Compaction(_TempDir):
    """clean_log(force=True) over a log of 100-byte records with 10% unique keys.

    With ``number = 1`` asv calls setup before every timed call, so each call cleans a fresh
    dirty log; warm-up is off (it would clean the log before the timed call)."""
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0

    def setup(self):
        self._mkdir()
        n = (MB << 20) // 110
        rng = np.random.default_rng(3)
        keys = [b"key-%08d" % k for k in rng.integers(0, n // 10, size=n)]
        ts = np.arange(n, dtype=np.int64) + 1_700_000_000_000
        raw = encode_batches(_records(100, total=n * 100), keys, ts, max_batch_bytes=16384)
        batches = [bytes(b.raw()) for b in iter_batches(raw)]
        # appends of 512 KiB, so that the log rolls 1 MiB segments (several closed, dirty ones)
        self.chunks = [b"".join(batches[i:i + 32]) for i in range(0, len(batches), 32)]
        self.n = 0
        self.log = None
        self.setup_log()

    def setup_log(self):
        if self.log is not None:
            self.log.close()
        self.n += 1
        lg = PartitionLog.open(self.tmp / f"c-{self.n}", COMPACT)
        for chunk in self.chunks:
            lg.append_batches(chunk, validate_records=False)
        lg.roll()
        self.log = lg
        self.dirty = True

    def teardown(self):
        if self.log is not None:
            self.log.close()
        super().teardown()

    def time_clean_log(self):
        if not self.dirty:  # called twice after one setup (should not happen with number=1)
            self.setup_log()
        res = clean_log(self.log, NOW, force=True)
        self.dirty = False
        assert res is not None


# ---- kstore serve -----------------------------------------------------------------------------

class Serve(_TempDir):
    """confluent-kafka Producer (acks=1, linger 10 ms, 1 MB batches) into a new topic, and
    Consumer (assigned, consume() of 10,000) of a filled one, against ``kstore serve`` in its
    own process on loopback (benchmarks/test_bench_server.py has the full comparison)."""
    number = 1
    repeat = (3, 10, 20.0)

    def setup(self):
        try:
            import confluent_kafka as ck
        except ImportError:
            raise NotImplementedError("confluent-kafka is not installed") from None
        self.ck, self.n = ck, 0
        self._mkdir()
        self.values = _records(100)
        err = self.tmp / "serve.err"
        with open(err, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "kstore", "serve", "--data",
                                          str(self.tmp / "d"), "--listen", "127.0.0.1:0"],
                                         stderr=f)
        for _ in range(600):
            m = re.search(r"serving .* on [\d.]+:(\d+)", err.read_text())
            if m or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert m, err.read_text()
        self.conf = {"bootstrap.servers": f"127.0.0.1:{m.group(1)}"}
        self.time_produce()  # topic "t1", read by time_consume

    def teardown(self):
        self.proc.terminate()
        self.proc.wait(30)
        super().teardown()

    def time_produce(self):
        self.n += 1
        p = self.ck.Producer({**self.conf, "linger.ms": 10, "batch.size": 1_000_000, "acks": 1,
                              "queue.buffering.max.messages": 10_000_000})
        for i in range(0, len(self.values), 10_000):
            for v in self.values[i:i + 10_000]:
                p.produce(f"t{self.n}", v)
            p.poll(0)
        assert p.flush(60) == 0

    def time_consume(self):
        c = self.ck.Consumer({**self.conf, "group.id": "asv", "queued.min.messages": 1_000_000,
                              "max.partition.fetch.bytes": 16 << 20})
        c.assign([self.ck.TopicPartition("t1", 0, 0)])
        n = 0
        while n < len(self.values):
            n += len(c.consume(num_messages=min(10_000, len(self.values) - n), timeout=10))
        c.close()
