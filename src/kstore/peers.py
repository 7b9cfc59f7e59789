"""kstore against the stores a user would pick instead: one workload, one disk, one run.

    kstore bench --compare --records 1000000 --runs 5 --plot peers.png
    python benchmarks/peers.py --records 1000000 --runs 5 --plot peers.png [--json]

The workload: N records, keys of 8-16 bytes, values of ``value_size`` bytes (JSON-like, 100 by
default), a millisecond timestamp each. Every peer gets the same three lists and does:

- write: open (create) the store, append all N records, close it (no fsync inside the timing
  unless the peer does one by itself; the page cache, as Kafka by default);
- read: open it again and read back every record as Python objects (key, value, timestamp);
- for kstore also a columnar read (``poll_batches``: numpy columns, no object per record).

The last record read is checked against the last record written, for every peer and phase.
Peers (all optional, ``pip install 'kstore[bench]'``; a missing one is skipped with a line
saying so): a plain ``os.write`` log of length-prefixed records (the floor), SQLite
(``executemany`` in one transaction, WAL), LMDB (one write transaction, a cursor to read),
Redis Streams (``XADD`` pipelined to a redis-server started on 127.0.0.1 and stopped), persist-
queue's file queue, diskcache's ``Deque``, and kafka-python's RecordBatch v2 codec (encode and
decode in memory, no disk). Data files go to a temporary folder under ``root`` (the current
directory by default: the same disk as the store under test), deleted afterwards.

Peer packages are imported lazily, inside each peer: kstore itself never needs them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'kstore[bench]'"
TS0 = 1_700_000_000_000
WORDS = [b"user", b"click", b"page", b"id", b"ts", b"home", b"cart", b"item", b"price",
         b"true", b"false", b"null", b"session", b"ref", b"search", b"query"]


# ---- workload ---------------------------------------------------------------------------------

def make_workload(n: int, value_size: int = 100, seed: int = 0
                  ) -> tuple[list[bytes], list[bytes], list[int]]:
    """(keys, values, timestamps): keys ``user-<digits>`` of 8-16 bytes, JSON-like values of
    exactly ``value_size`` bytes whose ``"n"`` field is the record's number, timestamps 1 ms
    apart."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(3, 12, size=n)
    ids = rng.integers(0, 10**6, size=n)
    keys = [b"user-%0*d" % (int(w), int(k)) for w, k in zip(widths, ids)]
    words = rng.integers(len(WORDS), size=64)
    nums = rng.integers(100000, size=64)
    tail = b"".join(b',"%s":%d' % (WORDS[int(w)], int(x)) for w, x in zip(words, nums))
    tail = tail.ljust(value_size, b" ")
    values = []
    for i in range(n):
        head = b'{"n":%d' % i
        values.append((head + tail)[: value_size - 1] + b"}")
    ts = list(range(TS0, TS0 + n))
    return keys, values, ts


# ---- results ----------------------------------------------------------------------------------

@dataclass
class Phase:
    peer: str
    phase: str  # write | read | columnar
    seconds: list[float] = field(default_factory=list)
    note: str = ""
    records: int = 0  # fewer than the workload's N for the slowest peers (see Peer.cap)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class Report:
    records: int
    value_size: int
    runs: int
    payload_bytes: int
    phases: list[Phase]
    skipped: list[tuple[str, str]]
    root: str

    def row(self, peer: str, phase: str) -> Phase | None:
        for p in self.phases:
            if p.peer == peer and p.phase == phase:
                return p
        return None

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for p in self.phases:
            ref = self.row("kstore", "read" if p.phase == "columnar" else p.phase)
            if p.peer == "kstore" and p.phase == "columnar":
                ref = p
            secs = [max(s, 1e-9) for s in p.seconds]
            n = p.records or self.records
            med = statistics.median(secs)
            rps = n / med
            ref_rps = (ref.records or self.records) / ref.median if ref else None
            out.append({
                "peer": p.peer, "phase": p.phase, "runs": len(secs), "records": n,
                "median_s": med, "min_s": min(secs), "max_s": max(secs),
                "records_per_s": rps,
                "records_per_s_min": n / max(secs),
                "records_per_s_max": n / min(secs),
                "mb_per_s": self.payload_bytes * n / self.records / med / 1e6,
                # records/s of this peer / records/s of kstore (same phase; columnar vs itself)
                "ratio_to_kstore": rps / ref_rps if ref_rps else None,
                "note": p.note,
            })
        return out

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "value_size": self.value_size, "runs": self.runs,
                "payload_bytes": self.payload_bytes, "root": self.root,
                "skipped": [{"peer": a, "reason": b} for a, b in self.skipped],
                "results": self.rows()}


# ---- peers ------------------------------------------------------------------------------------
# Each peer: write(dir, keys, values, ts) and read(dir) -> (count, last (key, value, ts)).
# ``prepare()`` imports what it needs and raises _Skip (with the reason) when it cannot run.

class _Skip(Exception):
    pass


def _need(module: str, package: str) -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _Skip(f"{package} is not installed ({INSTALL_HINT})") from None


class Peer:
    name = ""
    phases: tuple[str, ...] = ("write", "read")
    note = ""
    cap: int | None = None  # at most this many records (a peer too slow for the full N)

    def prepare(self) -> None:
        pass

    def start(self, d: Path) -> None:  # per run, untimed (servers)
        pass

    def stop(self) -> None:
        pass

    def write(self, d: Path, keys: list[bytes], values: list[bytes], ts: list[int]) -> None:
        raise NotImplementedError

    def read(self, d: Path) -> tuple[int, tuple[bytes, bytes, int]]:
        raise NotImplementedError


class KstorePeer(Peer):
    name = "kstore"
    phases = ("write", "read", "columnar")
    note = "Store + Producer.send_many, 1 partition; consumer poll / poll_batches"

    def write(self, d, keys, values, ts):
        import kstore
        with kstore.open(d / "kstore") as store:
            store.create_topic("bench", partitions=1)
            p = store.producer()
            p.send_many("bench", values, keys=keys, timestamps=np.asarray(ts, np.int64))
            p.close()

    def read(self, d):
        import kstore
        n = 0
        last = None
        with kstore.open(d / "kstore", read_only=True) as store:
            end = store.partition("bench", 0).log_end_offset
            c = store.consumer(topics=["bench"], auto_offset_reset="earliest",
                               max_poll_records=100_000)
            while n < end:
                recs = c.poll(timeout=0, max_records=100_000)
                if not recs:
                    if c.position("bench", 0) >= end:
                        break
                    continue
                out = [(r.key, r.value, r.timestamp) for r in recs]
                n += len(out)
                last = out[-1]
            c.close()
        return n, last

    def columnar(self, d):
        import kstore
        n = 0
        last = None
        with kstore.open(d / "kstore", read_only=True) as store:
            end = store.partition("bench", 0).log_end_offset
            c = store.consumer(topics=["bench"], auto_offset_reset="earliest")
            while n < end:
                batches = c.poll_batches(timeout=0, max_records=1_000_000)
                if not batches:
                    if c.position("bench", 0) >= end:
                        break
                    continue
                for pc in batches:
                    if not len(pc):
                        continue
                    n += len(pc)
                    data = pc.data
                    kp, kl = int(pc.key_positions[-1]), int(pc.key_lengths[-1])
                    vp, vl = int(pc.value_positions[-1]), int(pc.value_lengths[-1])
                    last = (bytes(data[kp:kp + kl]), bytes(data[vp:vp + vl]),
                            int(pc.timestamps[-1]))
                del batches
            c.close()
        return n, last


_HDR = struct.Struct("<qHI")  # timestamp, key length, value length


class OsWritePeer(Peer):
    name = "os.write log"
    note = "the floor: length-prefixed records, 1 MiB os.write calls; parsed back with struct"

    def write(self, d, keys, values, ts):
        fd = os.open(d / "floor.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            buf = bytearray()
            pack = _HDR.pack
            for k, v, t in zip(keys, values, ts):
                buf += pack(t, len(k), len(v))
                buf += k
                buf += v
                if len(buf) >= 1 << 20:
                    os.write(fd, buf)
                    buf.clear()
            if buf:
                os.write(fd, buf)
        finally:
            os.close(fd)

    def read(self, d):
        with open(d / "floor.log", "rb") as f:
            data = f.read()
        unpack = _HDR.unpack_from
        hs = _HDR.size
        pos, end = 0, len(data)
        out = []
        append = out.append
        while pos < end:
            t, kl, vl = unpack(data, pos)
            pos += hs
            k = data[pos:pos + kl]
            pos += kl
            append((k, data[pos:pos + vl], t))
            pos += vl
        return len(out), out[-1]


class SqlitePeer(Peer):
    name = "SQLite"
    note = "WAL, executemany in one transaction; SELECT key, value, ts"

    def write(self, d, keys, values, ts):
        db = sqlite3.connect(d / "log.sqlite")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, key BLOB, value BLOB, ts INTEGER)")
        with db:
            db.executemany("INSERT INTO log (key, value, ts) VALUES (?, ?, ?)",
                           zip(keys, values, ts))
        db.close()

    def read(self, d):
        db = sqlite3.connect(d / "log.sqlite")
        rows = db.execute("SELECT key, value, ts FROM log ORDER BY id").fetchall()
        db.close()
        return len(rows), rows[-1]


class LmdbPeer(Peer):
    name = "LMDB"
    note = "one write txn, putmulti (big-endian offset keys, sync off); cursor read"

    def prepare(self):
        self.lmdb = _need("lmdb", "lmdb")

    def write(self, d, keys, values, ts):
        size = sum(map(len, keys)) + sum(map(len, values)) + len(keys) * 64
        env = self.lmdb.open(str(d / "lmdb"), map_size=max(size * 3, 1 << 24), sync=False,
                             writemap=True)
        pack = struct.Struct(">Q").pack
        hdr = struct.Struct("<qH").pack
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(
                ((pack(i), hdr(t, len(k)) + k + v)
                 for i, (k, v, t) in enumerate(zip(keys, values, ts))), append=True)
        env.close()

    def read(self, d):
        env = self.lmdb.open(str(d / "lmdb"), readonly=True, lock=False)
        unpack = struct.Struct("<qH").unpack_from
        out = []
        append = out.append
        with env.begin(buffers=False) as txn:
            for _, rec in txn.cursor():
                t, kl = unpack(rec)
                append((rec[10:10 + kl], rec[10 + kl:], t))
        env.close()
        return len(out), out[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisPeer(Peer):
    name = "Redis Streams"
    cap = 200_000
    note = "XADD pipelined (10k a round trip) to a local redis-server, no persistence; XRANGE"

    def prepare(self):
        self.redis = _need("redis", "redis (the Python client)")
        self.server = shutil.which("redis-server")
        if not self.server:
            raise _Skip("redis-server is not installed (apt-get install redis-server), "
                        "so Redis Streams is skipped")
        self.proc = None

    def start(self, d):
        port = _free_port()
        self.proc = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(d)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = self.redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                self.client.ping()
                return
            except self.redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            with contextlib.suppress(self.redis.RedisError, OSError):
                self.client.close()
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def write(self, d, keys, values, ts):
        r = self.client
        r.delete("bench")
        step = 10_000
        for i in range(0, len(keys), step):
            pipe = r.pipeline(transaction=False)
            for k, v, t in zip(keys[i:i + step], values[i:i + step], ts[i:i + step]):
                pipe.xadd("bench", {b"k": k, b"v": v, b"t": t})
            pipe.execute()

    def read(self, d):
        r = self.client
        out = []
        start = b"-"
        while True:
            got = r.xrange("bench", min=start, count=10_000)
            if not got:
                break
            out += [(f[b"k"], f[b"v"], int(f[b"t"])) for _, f in got]
            start = b"(" + got[-1][0]
        return len(out), out[-1]


class PersistQueuePeer(Peer):
    name = "persist-queue"
    cap = 20_000  # about 6k puts/s here: it rewrites its info file on every put
    note = "persistqueue.Queue (file-based, pickled tuples), put each, get each"

    def prepare(self):
        self.pq = _need("persistqueue", "persist-queue")

    def write(self, d, keys, values, ts):
        q = self.pq.Queue(str(d / "pq"), chunksize=10_000, tempdir=str(d))
        put = q.put
        for item in zip(keys, values, ts):
            put(item)  # each put writes the record and the queue's info file
        del q

    def read(self, d):
        q = self.pq.Queue(str(d / "pq"), chunksize=10_000, tempdir=str(d))
        n = q.qsize()
        get = q.get
        out = [get(block=False) for _ in range(n)]
        del q
        return len(out), tuple(out[-1])


class DiskcacheDequePeer(Peer):
    name = "diskcache Deque"
    cap = 200_000
    note = "diskcache.Deque.extend inside one transact(); iterate"

    def prepare(self):
        self.dc = _need("diskcache", "diskcache")

    def write(self, d, keys, values, ts):
        dq = self.dc.Deque(directory=str(d / "deque"))
        with dq.transact():
            dq.extend(zip(keys, values, ts))
        dq.cache.close()

    def read(self, d):
        dq = self.dc.Deque(directory=str(d / "deque"))
        out = list(dq)
        dq.cache.close()
        return len(out), tuple(out[-1])


class KafkaPythonPeer(Peer):
    name = "kafka-python codec"
    note = "DefaultRecordBatchBuilder / DefaultRecordBatch, 16 KiB batches, in memory (no disk)"

    def prepare(self):
        _need("kafka", "kafka-python")
        from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
        self.Builder, self.Batch = DefaultRecordBatchBuilder, DefaultRecordBatch
        self.batches: list[bytes] = []

    def write(self, d, keys, values, ts):
        B = self.Builder
        out = []
        b = B(2, 0, False, -1, -1, -1, 16384)
        off = 0
        for k, v, t in zip(keys, values, ts):
            if b.append(off, t, k, v, []) is None:
                out.append(bytes(b.build()))
                b = B(2, 0, False, -1, -1, -1, 16384)
                off = 0
                b.append(off, t, k, v, [])
            off += 1
        out.append(bytes(b.build()))
        self.batches = out

    def read(self, d):
        out = []
        for raw in self.batches:
            out += [(r.key, r.value, r.timestamp) for r in self.Batch(raw)]
        return len(out), out[-1]


PEERS: dict[str, type[Peer]] = {p.name: p for p in (
    KstorePeer, OsWritePeer, SqlitePeer, LmdbPeer, RedisPeer, PersistQueuePeer,
    DiskcacheDequePeer, KafkaPythonPeer)}


# ---- running ----------------------------------------------------------------------------------

def run(records: int = 1_000_000, runs: int = 5, value_size: int = 100,
        peers: list[str] | None = None, root: str | Path = ".",
        log: Callable[[str], None] = print) -> Report:
    """Run the workload through kstore and each peer ``runs`` times; returns a Report."""
    keys, values, ts = make_workload(records, value_size)
    payload = sum(map(len, keys)) + sum(map(len, values)) + 8 * records
    chosen = list(PEERS) if peers is None else ["kstore"] + [p for p in peers if p != "kstore"]
    active: list[Peer] = []
    skipped: list[tuple[str, str]] = []
    for name in chosen:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
        peer = PEERS[name]()
        try:
            peer.prepare()
        except _Skip as exc:
            skipped.append((name, str(exc)))
            log(f"skipped {name}: {exc}")
            continue
        active.append(peer)
    phases: dict[tuple[str, str], Phase] = {}
    for peer in active:
        for ph in peer.phases:
            n = min(records, peer.cap or records)
            phases[(peer.name, ph)] = Phase(peer.name, ph, note=peer.note, records=n)
    top = Path(tempfile.mkdtemp(prefix="kstore-peers-", dir=root))
    try:
        for r in range(runs):
            for peer in active:
                d = top / f"{peer.name.replace(' ', '_')}-{r}"
                d.mkdir()
                peer.start(d)
                n_peer = min(records, peer.cap or records)
                if n_peer < records:
                    pk, pv, pt = keys[:n_peer], values[:n_peer], ts[:n_peer]
                else:
                    pk, pv, pt = keys, values, ts
                want = (pk[-1], pv[-1], pt[-1])
                try:
                    gc.collect()
                    t0 = time.perf_counter()
                    peer.write(d, pk, pv, pt)
                    phases[(peer.name, "write")].seconds.append(time.perf_counter() - t0)
                    for ph in peer.phases[1:]:
                        fn = getattr(peer, ph)
                        gc.collect()
                        t0 = time.perf_counter()
                        n, last = fn(d)
                        phases[(peer.name, ph)].seconds.append(time.perf_counter() - t0)
                        last = (bytes(last[0]), bytes(last[1]), int(last[2]))
                        if n != n_peer or last != want:
                            raise AssertionError(
                                f"{peer.name} {ph}: read {n} records, last {last!r}; "
                                f"expected {n_peer}, last {want!r}")
                        del last
                finally:
                    del pk, pv, pt
                    peer.stop()
                    if isinstance(peer, KafkaPythonPeer):
                        peer.batches = []
                    shutil.rmtree(d, ignore_errors=True)
                log(f"run {r + 1}/{runs}: {peer.name} done")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return Report(records, value_size, runs, payload, list(phases.values()), skipped,
                  str(Path(root).resolve()))


# ---- output -----------------------------------------------------------------------------------

def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def table(report: Report) -> Any:
    """A rich Table of the report: median records/s with the min-max spread, MB/s, ratio."""
    from rich.table import Table
    t = Table(title=f"{report.records:,} records ({report.value_size}-byte values, 8-16 byte "
                    f"keys, timestamps), median of {report.runs} run{'s' * (report.runs != 1)}")
    for col, just in (("phase", "left"), ("store", "left"), ("records/s", "right"),
                      ("spread (min-max)", "right"), ("MB/s", "right"),
                      ("vs kstore", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for row in _ordered(report):
        ratio = row["ratio_to_kstore"]
        t.add_row(row["phase"], _label(report, row), _fmt_rate(row["records_per_s"]),
                  f"{_fmt_rate(row['records_per_s_min'])} - {_fmt_rate(row['records_per_s_max'])}",
                  f"{row['mb_per_s']:,.0f}", "" if ratio is None else f"{ratio:.2f}x")
    return t


def markdown(report: Report) -> str:
    lines = ["| phase | store | records/s (median) | spread (min-max) | MB/s | vs kstore |",
             "|---|---|---|---|---|---|"]
    for row in _ordered(report):
        ratio = row["ratio_to_kstore"]
        lines.append(f"| {row['phase']} | {_label(report, row)} | {_fmt_rate(row['records_per_s'])} | "
                     f"{_fmt_rate(row['records_per_s_min'])} - "
                     f"{_fmt_rate(row['records_per_s_max'])} | {row['mb_per_s']:,.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def _label(report: Report, row: dict[str, Any]) -> str:
    if row["records"] < report.records:
        return f"{row['peer']} ({row['records'] // 1000}k records)"
    return row["peer"]


def _ordered(report: Report) -> list[dict[str, Any]]:
    order = {"write": 0, "read": 1, "columnar": 2}
    rows = report.rows()
    return sorted(rows, key=lambda r: (order[r["phase"]], r["peer"] != "kstore",
                                       -r["records_per_s"]))


def plot(report: Report, path: str | Path, dpi: int = 80) -> Path:
    """Grouped bars (records/s, log scale) per phase, one bar per store, min-max error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows()
    phases = [p for p in ("write", "read", "columnar") if any(r["phase"] == p for r in rows)]
    stores = list(dict.fromkeys(r["peer"] for r in rows))
    width = 0.8 / max(len(stores), 1)
    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(stores):
        xs, ys, lo, hi = [], [], [], []
        for j, p in enumerate(phases):
            r = next((r for r in rows if r["peer"] == s and r["phase"] == p), None)
            if r is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(r["records_per_s"])
            lo.append(r["records_per_s"] - r["records_per_s_min"])
            hi.append(r["records_per_s_max"] - r["records_per_s"])
        capped = next(r for r in rows if r["peer"] == s)["records"] < report.records
        label = f"{s} (first {next(r for r in rows if r['peer'] == s)['records']:,})" if capped else s
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label, color=cmap(i % 10))
    ax.set_xticks(range(len(phases)))
    ax.set_xticklabels([{"write": "write (open..close)", "read": "read as Python objects",
                         "columnar": "read as numpy columns"}[p] for p in phases])
    ax.set_yscale("log")
    ax.set_ylabel("records/s (log scale, median; bars: min-max)")
    ax.set_title(f"{report.records:,} records, {report.value_size}-byte values, "
                 f"median of {report.runs}")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
