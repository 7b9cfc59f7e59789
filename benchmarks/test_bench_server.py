"""`kstore serve` through Kafka clients over loopback, against Redis Streams and a raw
``os.sendfile`` measured in the same run.

    python -m pytest benchmarks/test_bench_server.py --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

The server is ``python -m kstore serve`` in its own process (the client is this process: on
two cores each gets one, as users run it), on a fresh data folder under KSTORE_BENCH_DIR.
Workload: N values of 100 bytes (``kstore.peers.make_workload``: the peer comparison's), no
keys, one partition, no compression. KSTORE_BENCH_RECORDS sets N (default 1,000,000),
KSTORE_BENCH_ROUNDS the rounds of each benchmark (default 5; 3 for kafka-python; 10 for the
fetch pair), KSTORE_SERVER_FETCH_MB the fetch size of the sendfile benchmark (default 64).

- produce: confluent-kafka Producer, ``produce()`` in a loop with ``poll(0)`` every 10,000,
  ``flush()`` at the end; linger.ms 10, batch.size 1 MB, acks 1 and all (no idempotence).
  Every delivery report is counted (all must succeed) and ListOffsets must then give N.
  ``raw_pipelined`` is the server's own ceiling: the same values as pre-encoded 1 MB
  ProduceRequests, 8 in flight, from a raw-protocol client (no Kafka client in the way).
  Baseline: XADD pipelined 10,000 per round trip (redis-py) to a redis-server started here.
- consume: N records produced beforehand; confluent-kafka ``consume(num_messages=10000)``
  batches, assigned (no group) and subscribed with a group (the join is in the time; its
  share is ``join_ms``), and kafka-python's KafkaConsumer for reference. Baselines: XRANGE
  and XREAD of 10,000 entries a call over the same N values in one stream.
- fetch: the consume topic's log read with Fetch v11 requests of KSTORE_SERVER_FETCH_MB by a
  raw-protocol client (the server answers with ``sendfile`` from the segment), against
  ``os.sendfile`` of the same segment file by another process to a loopback TCP socket; both
  read by the same loop (``recv_into`` of at most 1 MiB a call).

redis-server runs with no persistence (``--save "" --appendonly no``; kstore's server does no
fsync either: both stop at memory/page cache), as ``kstore bench --compare`` starts it.
redis-py parses replies in Python unless ``hiredis`` is installed (``extra_info["hiredis"]``);
install it for Redis's best figure (about 2x on XRANGE/XREAD here).

The clients run in this process, so Python's garbage collector is part of their figures:
confluent-kafka's Message objects are GC-tracked, and with the collector on about half of
consume()'s time goes to collections. ``--benchmark-disable-gc`` turns it off inside every
timed call (Redis's too), which shows what the transport allows; report.py says which it was.
Each benchmark records the 1-minute load average when it starts and ends (``load_1m``): the
figures are only meaningful with the load in view.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from kstore.peers import RedisPeer, _Skip, make_workload
from kstore.records import encode_batches
from kstore.server import protocol

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "1000000"))
ROUNDS = int(os.environ.get("KSTORE_BENCH_ROUNDS", "5"))
FETCH_MB = int(os.environ.get("KSTORE_SERVER_FETCH_MB", "64"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))  # same disk as the checkout
CHUNK = 1 << 20  # bytes a recv_into call asks for, on every read path
STEP = 10_000  # poll(0) / pipeline / consume batch
PRODUCE = "server produce: 100-byte values over loopback, records/s"
CONSUME = "server consume: N records over loopback, records/s"
FETCH = "server fetch: whole log to a loopback TCP reader, bytes/s"

_I32 = struct.Struct(">i")
_BATCH = struct.Struct(">qi")  # base offset, batch length
_LAST_DELTA = struct.Struct(">i")  # at byte 23 of a batch
_MESSAGE = struct.Struct(">qi")  # offset, size of a v0/v1 message


# ---- the server, a raw client, the workload ---------------------------------------------------

class ServeProcess:
    """``python -m kstore serve`` on a free port, stderr to a file (read for the port)."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.log = data.parent / f"{data.name}.stderr"
        with open(self.log, "w") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kstore", "serve", "--data", str(data), "--listen",
                 "127.0.0.1:0", "--log-level", "warning", "--group-initial-rebalance-delay-ms",
                 "0", *args], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while True:
            m = re.search(r"kstore serving .* on [\d.]+:(\d+)", self.log.read_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kstore serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RawClient:
    """Requests framed with kstore.server.protocol on a blocking socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.corr = 0
        self.buf = bytearray(1 << 16)

    def close(self) -> None:
        self.sock.close()

    def send(self, api_key: int, version: int, body: dict) -> None:
        self.corr += 1
        self.sock.sendall(protocol.encode_request(api_key, version, self.corr, body, "bench"))

    def recv_frame(self) -> memoryview:
        """The next response frame in ``self.buf`` (grown as needed), without its size."""
        head = memoryview(self.buf)[:4]
        recv_exactly(self.sock, head, 4)
        (size,) = _I32.unpack(head)
        if size > len(self.buf):
            self.buf = bytearray(size)
        mv = memoryview(self.buf)[:size]
        recv_exactly(self.sock, mv, size)
        assert _I32.unpack_from(mv, 0)[0] == self.corr
        return mv

    def call(self, api_key: int, version: int, body: dict) -> dict:
        self.send(api_key, version, body)
        pos = 5 if protocol.is_flexible(api_key, version) else 4
        return protocol.decode(api_key, True, version, self.recv_frame(), pos)

    def create_topic(self, topic: str) -> None:
        res = self.call(19, 2, {"topics": [{"name": topic, "num_partitions": 1,
                                            "replication_factor": 1, "assignments": [],
                                            "configs": []}], "timeout_ms": 10_000})
        assert res["topics"][0]["error_code"] == 0, res

    def delete_topic(self, topic: str) -> None:
        res = self.call(20, 1, {"topic_names": [topic], "timeout_ms": 10_000})
        assert res["responses"][0]["error_code"] in (0, 3), res  # 3: it was not there

    def end_offset(self, topic: str) -> int:
        res = self.call(2, 1, {"replica_id": -1, "topics": [
            {"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}]})
        p = res["topics"][0]["partitions"][0]
        assert p["error_code"] == 0, res
        return p["offset"]


def recv_exactly(sock: socket.socket, mv: memoryview, n: int) -> None:
    """Fill mv[:n] from sock, at most CHUNK bytes a recv_into call."""
    got = 0
    while got < n:
        k = sock.recv_into(mv[got:min(n, got + CHUNK)])
        if not k:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k


def drain(sock: socket.socket, buf: bytearray, n: int) -> None:
    """Read and discard n bytes (the same recv_into calls as recv_exactly, into one buffer)."""
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(mv[:min(n - got, CHUNK)])
        if not k:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def with_load(benchmark, fn, **kw):
    """benchmark.pedantic, with the 1-minute load average before and after in extra_info."""
    before = load_avg()
    out = benchmark.pedantic(fn, **kw)
    benchmark.extra_info["load_1m"] = f"{before}..{load_avg()}"
    return out


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-server-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def values():
    return make_workload(N)[1]


@pytest.fixture(scope="module")
def server(workdir):
    srv = ServeProcess(workdir / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def raw(server):
    c = RawClient(server.port)
    yield c
    c.close()


@pytest.fixture(scope="module")
def redis_peer(workdir):
    peer = RedisPeer()
    try:
        peer.prepare()
    except _Skip as exc:
        pytest.skip(str(exc))
    d = workdir / "redis"
    d.mkdir()
    peer.start(d)
    yield peer.client
    peer.stop()


def redis_info(benchmark, values):
    import redis.utils
    benchmark.extra_info["records"] = len(values)
    benchmark.extra_info["bytes"] = sum(map(len, values))
    benchmark.extra_info["hiredis"] = bool(redis.utils.HIREDIS_AVAILABLE)


def confluent():
    return pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")


# ---- produce ------------------------------------------------------------------------------------

PRODUCER_CONFIG = {
    "linger.ms": 10,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,  # batch.size decides (about 9,000 of these records)
    "compression.type": "none",
    "enable.idempotence": False,
    "queue.buffering.max.messages": 10_000_000,
    "queue.buffering.max.kbytes": 4 << 20,
}


def confluent_produce(bootstrap: str, topic: str, values: list[bytes], acks: str):
    """(producer, run, reports, errors): ``run()`` produces every value and flushes; reports
    counts [delivered, failed]. The Producer is created and connected here, before timing."""
    ck = confluent()
    reports = [0, 0]  # delivered, failed
    errors = []

    def on_delivery(err, msg):
        if err is None:
            reports[0] += 1
        else:
            reports[1] += 1
            if len(errors) < 5:
                errors.append(err)

    p = ck.Producer({"bootstrap.servers": bootstrap, "acks": acks, "on_delivery": on_delivery,
                     **PRODUCER_CONFIG})
    p.list_topics(topic, timeout=10)  # connected, metadata known

    def run():
        produce, poll = p.produce, p.poll
        for i in range(0, len(values), STEP):
            for v in values[i:i + STEP]:
                try:
                    produce(topic, v)
                except BufferError:  # the queue is full: serve delivery reports, retry
                    poll(0.005)
                    produce(topic, v)
            poll(0)
        left = p.flush(60)
        assert left == 0, f"{left} records not delivered"

    return p, run, reports, errors


def _produce_bench(benchmark, server, raw, values, acks):
    confluent()
    benchmark.extra_info["records"] = len(values)
    benchmark.extra_info["bytes"] = sum(map(len, values))
    state = {}

    def setup():
        if "topic" in state:
            raw.delete_topic(state["topic"])  # keep the data folder at one round's size
        topic = state["topic"] = f"produce-{acks}-{uuid.uuid4().hex[:8]}"
        raw.create_topic(topic)
        p, run, reports, errors = confluent_produce(server.bootstrap, topic, values, acks)
        state.update(producer=p, reports=reports, errors=errors)
        return (run,), {}

    def timed(run):
        run()
        reports = state["reports"]
        assert reports == [len(values), 0], (reports, state["errors"])
        assert raw.end_offset(state["topic"]) == len(values)  # one ListOffsets round trip

    with_load(benchmark, timed, setup=setup, rounds=ROUNDS)
    raw.delete_topic(state["topic"])


@pytest.mark.benchmark(group=PRODUCE)
def test_serve_produce_confluent_acks_1(benchmark, server, raw, values):
    _produce_bench(benchmark, server, raw, values, "1")


@pytest.mark.benchmark(group=PRODUCE)
def test_serve_produce_confluent_acks_all(benchmark, server, raw, values):
    _produce_bench(benchmark, server, raw, values, "all")


@pytest.mark.benchmark(group=PRODUCE)
def test_serve_produce_baseline_redis_xadd(benchmark, redis_peer, values):
    """XADD {v: value} pipelined, 10,000 a round trip (transaction=False), into a fresh stream."""
    r = redis_peer
    redis_info(benchmark, values)

    def setup():
        r.delete("produce")
        return (), {}

    def run():
        for i in range(0, len(values), STEP):
            pipe = r.pipeline(transaction=False)
            xadd = pipe.xadd
            for v in values[i:i + STEP]:
                xadd("produce", {b"v": v})
            pipe.execute()
        assert r.xlen("produce") == len(values)

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    r.delete("produce")


RAW_BATCH = 9000  # records of a ~1 MB batch, as the Producer above builds them
RAW_IN_FLIGHT = 8


@pytest.mark.benchmark(group=PRODUCE)
def test_serve_produce_raw_pipelined(benchmark, server, raw, values):
    """The server's ceiling: the values as pre-encoded ProduceRequest v7 frames of one ~1 MB
    batch each, RAW_IN_FLIGHT in flight on one connection (a thread sends, this one reads
    the responses), acks=1; ListOffsets must then give N."""
    batches = [encode_batches(values[i:i + RAW_BATCH], max_batch_bytes=4 << 20)
               for i in range(0, len(values), RAW_BATCH)]
    benchmark.extra_info["records"] = len(values)
    benchmark.extra_info["bytes"] = sum(map(len, values))
    state = {}

    def setup():
        if "topic" in state:
            raw.delete_topic(state["topic"])
        topic = state["topic"] = f"produce-raw-{uuid.uuid4().hex[:8]}"
        raw.create_topic(topic)
        frames = [protocol.encode_request(0, 7, i + 1, {
            "transactional_id": None, "acks": 1, "timeout_ms": 30_000,
            "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": b}]}]},
            "bench") for i, b in enumerate(batches)]
        return (frames, RawClient(server.port)), {}

    def run(frames, c):
        window = threading.Semaphore(RAW_IN_FLIGHT)

        def send():
            for f in frames:
                window.acquire()
                c.sock.sendall(f)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        for i in range(len(frames)):
            c.corr = i + 1
            mv = c.recv_frame()
            res = protocol.decode(0, True, 7, mv, 4)
            assert res["responses"][0]["partition_responses"][0]["error_code"] == 0, res
            window.release()
        t.join()
        c.close()
        assert raw.end_offset(state["topic"]) == len(values)

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    raw.delete_topic(state["topic"])


# ---- consume ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def filled(server, raw, values):
    """Topic ``consume``: the N values produced through the server by confluent-kafka."""
    confluent()
    raw.create_topic("consume")
    p, run, reports, errors = confluent_produce(server.bootstrap, "consume", values, "1")
    run()
    assert reports == [len(values), 0], (reports, errors)
    del p
    assert raw.end_offset("consume") == len(values)
    return "consume"


# librdkafka's defaults (queued.min.messages 100,000, fetch.queue.backoff.ms 1,000) stop
# fetching for a second whenever 100,000 records wait in the client's queue: about 0.25 M
# records/s here, whatever the broker. These keep the pipeline full.
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20,
    "queued.max.messages.kbytes": 256 << 10,
    "queued.min.messages": 1_000_000,
    "fetch.queue.backoff.ms": 10,
    "fetch.wait.max.ms": 100,
}


def _confluent_consume(c, n: int) -> int:
    got = last = 0
    consume = c.consume
    while got < n:
        # never more than are left: consume() waits out its timeout for a full batch
        msgs = consume(num_messages=min(STEP, n - got), timeout=10)
        if not msgs:
            raise AssertionError(f"no records for 10 s after {got} of {n}")
        for m in msgs:
            if m.error():
                raise AssertionError(m.error())
        got += len(msgs)
        last = msgs[-1].offset()
    assert got == n and last == n - 1, (got, last)
    return got


@pytest.mark.benchmark(group=CONSUME)
def test_serve_consume_confluent_assign(benchmark, server, filled, values):
    ck = confluent()
    n = len(values)
    benchmark.extra_info["records"] = n
    benchmark.extra_info["bytes"] = sum(map(len, values))

    def setup():
        c = ck.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "unused",
                         **CONSUMER_CONFIG})
        c.list_topics(filled, timeout=10)
        return (c,), {}

    def run(c):
        c.assign([ck.TopicPartition(filled, 0, 0)])
        _confluent_consume(c, n)
        c.close()

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)


@pytest.mark.benchmark(group=CONSUME)
def test_serve_consume_confluent_group(benchmark, server, filled, values):
    """subscribe() with a new group each round (no committed offsets: from the earliest);
    FindCoordinator, JoinGroup and SyncGroup are in the time (``join_ms``: median until the
    assignment)."""
    ck = confluent()
    n = len(values)
    benchmark.extra_info["records"] = n
    benchmark.extra_info["bytes"] = sum(map(len, values))
    joins = []

    def setup():
        c = ck.Consumer({"bootstrap.servers": server.bootstrap,
                         "group.id": f"bench-{uuid.uuid4().hex[:8]}", **CONSUMER_CONFIG})
        c.list_topics(filled, timeout=10)
        return (c,), {}

    def run(c):
        t0 = time.perf_counter()

        def on_assign(consumer, partitions):
            joins.append((time.perf_counter() - t0) * 1e3)

        c.subscribe([filled], on_assign=on_assign)
        _confluent_consume(c, n)
        c.close()

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    benchmark.extra_info["join_ms"] = round(sorted(joins)[len(joins) // 2], 1)


@pytest.mark.benchmark(group=CONSUME)
def test_serve_consume_kafka_python(benchmark, server, filled, values):
    """kafka-python's KafkaConsumer (pure Python), assigned, poll(max_records=10000)."""
    kafka = pytest.importorskip("kafka", reason="kafka-python is not installed")
    n = len(values)
    benchmark.extra_info["records"] = n
    benchmark.extra_info["bytes"] = sum(map(len, values))
    benchmark.extra_info["kafka_python"] = kafka.__version__

    def setup():
        c = kafka.KafkaConsumer(bootstrap_servers=server.bootstrap, group_id=None,
                                enable_auto_commit=False, max_poll_records=STEP,
                                fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
                                request_timeout_ms=60_000)
        c.topics()  # connected, metadata known
        return (c,), {}

    def run(c):
        tp = kafka.TopicPartition(filled, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = last = 0
        while got < n:
            for recs in c.poll(timeout_ms=10_000, max_records=STEP).values():
                got += len(recs)
                last = recs[-1].offset
        assert got == n and last == n - 1, (got, last)
        c.close()

    with_load(benchmark, run, setup=setup, rounds=max(1, min(ROUNDS, 3)))


@pytest.fixture(scope="module")
def redis_filled(redis_peer, values):
    r = redis_peer
    r.delete("consume")
    for i in range(0, len(values), STEP):
        pipe = r.pipeline(transaction=False)
        for v in values[i:i + STEP]:
            pipe.xadd("consume", {b"v": v})
        pipe.execute()
    assert r.xlen("consume") == len(values)
    return "consume"


@pytest.mark.benchmark(group=CONSUME)
def test_serve_consume_baseline_redis_xrange(benchmark, redis_peer, redis_filled, values):
    """XRANGE of 10,000 entries a call, from the last id read (exclusive)."""
    r = redis_peer
    n = len(values)
    redis_info(benchmark, values)

    def run():
        got = 0
        start = b"-"
        last = None
        while True:
            entries = r.xrange(redis_filled, min=start, count=STEP)
            if not entries:
                break
            got += len(entries)
            last = entries[-1]
            start = b"(" + last[0]
        assert got == n and last[1][b"v"] == values[-1]

    with_load(benchmark, run, rounds=ROUNDS)


@pytest.mark.benchmark(group=CONSUME)
def test_serve_consume_baseline_redis_xread(benchmark, redis_peer, redis_filled, values):
    """XREAD COUNT 10000 (no BLOCK) from the last id read."""
    r = redis_peer
    n = len(values)
    redis_info(benchmark, values)

    def run():
        got = 0
        last_id = b"0-0"
        last = None
        while True:
            res = r.xread({redis_filled: last_id}, count=STEP)
            if not res:
                break
            entries = res[0][1]
            got += len(entries)
            last = entries[-1]
            last_id = last[0]
        assert got == n and last[1][b"v"] == values[-1]

    with_load(benchmark, run, rounds=ROUNDS)


# ---- fetch: sendfile ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segment(server, filled):
    segs = sorted((server.data / f"{filled}-0").glob("*.log"))
    assert len(segs) == 1, segs
    return segs[0]


def fetch_all(c: RawClient, topic: str, end: int) -> int:
    """Fetch v11 from offset 0 to ``end``, FETCH_MB a request; returns the records bytes."""
    limit = FETCH_MB << 20
    offset = total = 0
    while offset < end:
        res = c.call(1, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": limit,
            "isolation_level": 0, "session_id": 0, "session_epoch": -1,
            "topics": [{"topic": topic, "partitions": [
                {"partition": 0, "current_leader_epoch": -1, "fetch_offset": offset,
                 "log_start_offset": -1, "partition_max_bytes": limit}]}],
            "forgotten_topics_data": [], "rack_id": ""})
        p = res["responses"][0]["partitions"][0]
        assert res["error_code"] == 0 and p["error_code"] == 0, res
        rec = p["records"]
        n = len(rec)
        assert n > 0
        pos = 0  # the last whole batch gives the next offset
        while pos + 61 <= n:
            base, length = _BATCH.unpack_from(rec, pos)
            if pos + 12 + length > n:
                break
            offset = base + _LAST_DELTA.unpack_from(rec, pos + 23)[0] + 1
            pos += 12 + length
        total += n
    return total


@pytest.mark.benchmark(group=FETCH)
def test_serve_fetch_sendfile(benchmark, server, filled, segment):
    """A raw-protocol client fetching the whole log, FETCH_MB a request (max_wait 0)."""
    size = segment.stat().st_size
    benchmark.extra_info["bytes"] = size
    benchmark.extra_info["fetch_mb"] = FETCH_MB
    c = RawClient(server.port)
    end = c.end_offset(filled)
    c.buf = bytearray((FETCH_MB << 20) + (1 << 20))

    def run():
        assert fetch_all(c, filled, end) == size

    with_load(benchmark, run, rounds=2 * ROUNDS)
    c.close()


def fetch_all_converted(c: RawClient, topic: str, end: int) -> int:
    """Fetch v3 (message format v1: the server down-converts, no sendfile) from offset 0 to
    ``end``, FETCH_MB a request; returns the records bytes."""
    limit = FETCH_MB << 20
    offset = total = 0
    while offset < end:
        res = c.call(1, 3, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": limit,
            "topics": [{"topic": topic, "partitions": [
                {"partition": 0, "fetch_offset": offset, "partition_max_bytes": limit}]}]})
        p = res["responses"][0]["partitions"][0]
        assert p["error_code"] == 0, res
        rec = p["records"]
        n = len(rec)
        assert n > 0
        pos = 0  # whole messages only: the last one gives the next offset
        while pos + 12 <= n:
            base, length = _MESSAGE.unpack_from(rec, pos)
            offset = base + 1
            pos += 12 + length
        total += n
    return total


@pytest.mark.benchmark(group=FETCH)
def test_serve_fetch_down_converted(benchmark, server, filled, segment):
    """The same records as test_serve_fetch_sendfile, fetched with Fetch v3: each v2 batch
    down-converted to message format v1 in memory (kstore.server.legacy), as old clients
    (kafka-go 0.2, Fetch v2) read them."""
    benchmark.extra_info["fetch_mb"] = FETCH_MB
    c = RawClient(server.port)
    end = c.end_offset(filled)
    c.buf = bytearray((FETCH_MB << 20) + (1 << 20))
    sizes = []

    def run():
        sizes.append(fetch_all_converted(c, filled, end))

    with_load(benchmark, run, rounds=ROUNDS)
    benchmark.extra_info["bytes"] = sizes[-1]
    c.close()


SENDER = r"""
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = os.open(sys.argv[2], os.O_RDONLY)
size = os.fstat(fd).st_size
s.recv(1)  # go
off = 0
while off < size:
    off += os.sendfile(s.fileno(), fd, off, size - off)
s.close()
"""


@pytest.mark.benchmark(group=FETCH)
def test_serve_fetch_baseline_os_sendfile(benchmark, segment):
    """Another process sends the segment file with os.sendfile (blocking socket) after a go
    byte; this one reads it with the same recv_into loop."""
    size = segment.stat().st_size
    benchmark.extra_info["bytes"] = size
    buf = bytearray(CHUNK)
    lsn = socket.create_server(("127.0.0.1", 0))
    port = lsn.getsockname()[1]
    procs = []

    def setup():
        for p in procs:
            assert p.wait(30) == 0
        procs.clear()
        procs.append(subprocess.Popen([sys.executable, "-c", SENDER, str(port), str(segment)]))
        conn, _ = lsn.accept()
        return (conn,), {}

    def run(conn):
        conn.sendall(b"g")
        drain(conn, buf, size)
        conn.close()

    with_load(benchmark, run, setup=setup, rounds=2 * ROUNDS)
    for p in procs:
        assert p.wait(30) == 0
    lsn.close()
