"""kstore._batchproducer, the mirror's path for stored batches: sealed batches decode with an
independent implementation (kafka-python), and faults on the way (a connection cut in the
middle of a request, or after the broker appended but before its answer came back, a refused
batch, a corrupt stored batch) lose nothing, repeat nothing and are never silent."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kstore
from kstore import _core, errors, testing
from kstore._batchproducer import BatchProducer, seal
from kstore.mirror import Mirror
from tests.mirror.conftest import records_of

T0 = 1_700_000_000_000


def test_sealed_batch_decodes_with_kafka_python_as_the_producers():
    pytest.importorskip("kafka")
    from kafka.record.default_records import DefaultRecordBatch

    raw = _core.encode_batches([b"v%d" % i for i in range(50)], [b"k%d" % i for i in range(50)],
                               [T0 + i for i in range(50)], compression="lz4", base_offset=1234,
                               producer_id=7, producer_epoch=3, base_sequence=99,
                               transactional=True, partition_leader_epoch=5)
    buf = bytearray(raw)
    seal(buf, 4242, 17, 123456)
    b = DefaultRecordBatch(bytes(buf))
    assert b.validate_crc()
    assert (b.base_offset, b.producer_id, b.producer_epoch, b.base_sequence) == (0, 4242, 17, 123456)
    assert not b.is_transactional and b.compression_type == 3  # lz4 kept
    recs = list(b)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in recs] == [
        (i, b"k%d" % i, b"v%d" % i, T0 + i) for i in range(50)]
    ours = _core.read_batch(bytes(buf))
    assert ours.partition_leader_epoch == -1 and ours.crc == ours.compute_crc()


# ==============================================================================================
# Faults between the producer and the broker


class CuttingProxy:
    """A TCP proxy in front of a broker that cuts the first connection once: ``mode``
    "mid_request" forwards half of request number ``at`` (counted over Produce frames) and
    closes; "lost_answer" forwards the whole request, lets the broker answer, and closes
    without passing the answer back."""

    def __init__(self, mode: str, at: int) -> None:
        self.mode, self.at = mode, at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = 0
        self.cut = threading.Event()
        self.lost_corr: int | None = None  # lost_answer: the answer being waited for
        self._threads: list[threading.Thread] = []

    def start(self, target_port: int) -> None:
        self.target = target_port
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for args in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pipe, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        buf = b""
        produce_seen = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if self.cut.is_set() and self.lost_corr is None:
                    dst.sendall(data)  # after the cut: a plain proxy
                    continue
                buf += data
                # Whole frames: requests watched for the Produce to cut at, answers for the
                # one to lose.
                while len(buf) >= 4:
                    size = struct.unpack_from(">i", buf)[0]
                    if len(buf) < 4 + size:
                        break
                    frame, buf = buf[:4 + size], buf[4 + size:]
                    if not requests:
                        if self.lost_corr is not None:
                            if struct.unpack_from(">i", frame, 4)[0] == self.lost_corr:
                                self.lost_corr = None  # the broker appended and answered
                                raise ConnectionAbortedError
                            continue  # answers before it are lost with it
                        dst.sendall(frame)
                        continue
                    if struct.unpack_from(">h", frame, 4)[0] == 0:  # Produce
                        produce_seen += 1
                        if produce_seen == self.at and not self.cut.is_set():
                            if self.mode == "mid_request":
                                self.cut.set()
                                dst.sendall(frame[:len(frame) // 2])
                                raise ConnectionAbortedError
                            self.lost_corr = struct.unpack_from(">i", frame, 8)[0]
                            self.cut.set()
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def proxied_broker(path: Path, mode: str, at: int) -> Iterator[tuple[testing.Broker, CuttingProxy]]:
    """A broker that tells clients to come through a CuttingProxy (advertised.listeners)."""
    proxy = CuttingProxy(mode, at)
    try:
        with testing.start(path, advertised_host="127.0.0.1", advertised_port=proxy.port) as b:
            proxy.start(b.port)
            yield b, proxy
    finally:
        proxy.close()


def by_partition(broker: testing.Broker, topic: str, partition: int) -> list:
    return [r for r in broker.records(topic) if r.partition == partition]


def lz4_source(path: Path, topic: str, n: int, per_batch: int) -> list[tuple]:
    with kstore.open(path) as s:
        s.create_topic(topic, 2)
        pr = s.producer(linger_ms=0, compression="lz4")
        for p in (0, 1):
            for start in range(0, n, per_batch):
                k = min(per_batch, n - start)
                pr.send_many(topic, [b"p%d-v%d" % (p, start + i) for i in range(k)],
                             keys=[b"k%d" % (start + i) for i in range(k)],
                             timestamps=[T0 + start + i for i in range(k)], partition=p)
        pr.flush()
        return [records_of(s, topic, p) for p in (0, 1)]


@pytest.mark.parametrize("mode", ["mid_request", "lost_answer"])
def test_a_cut_connection_resends_what_was_not_acknowledged_exactly_once(tmp_path, mode):
    topic = "cut"
    want = lz4_source(tmp_path / "src", topic, 3000, 100)  # 30 batches per partition
    with proxied_broker(tmp_path / "broker", mode, at=4) as (broker, proxy):
        st = Mirror(tmp_path / "src", f"kafka://127.0.0.1:{proxy.port}", topics=[topic],
                    groups=False, timeout=20).run()
        assert proxy.cut.is_set()
        assert st.records == 6000
        for p in (0, 1):
            got = [(r.offset, r.key, r.value, r.timestamp) for r in by_partition(broker, topic, p)]
            assert got == [(o, k, v, ts) for o, k, v, _, ts in want[p]], f"partition {p}"


def test_a_cut_connection_is_counted_and_the_producer_goes_on(tmp_path):
    """The same at the producer's level: acknowledgements come once per batch, in order, with
    the destination offsets, after a reset."""
    with proxied_broker(tmp_path / "b", "lost_answer", at=2) as (broker, proxy):
        broker.create_topic("t", 1)
        bp = BatchProducer(f"127.0.0.1:{proxy.port}", timeout=20)
        try:
            for i in range(6):
                raw = _core.encode_batches([b"b%d-%d" % (i, j) for j in range(10)],
                                           compression="none")
                bp.produce("t", 0, bytearray(raw), 10, i)
            acks = bp.poll(wait=True)
        finally:
            bp.close()
        assert acks == [(i, 10 * (i + 1)) for i in range(6)]
        assert bp.resets >= 1
        assert [r.value for r in by_partition(broker, "t", 0)] == [
            b"b%d-%d" % (i, j) for i in range(6) for j in range(10)]


# ==============================================================================================
# Refusals and damage are errors, never silent


def test_a_batch_the_cluster_refuses_is_an_error_and_not_checkpointed_as_copied(tmp_path):
    src = tmp_path / "src"
    lz4_source(src, "big", 2000, 2000)  # batches of 16 KiB (the producer's batch_size)
    with testing.start(tmp_path / "b") as broker:
        # The destination takes batches of at most 1,000 bytes.
        broker.create_topic("big", 2, config={"max.message.bytes": 1000})
        with pytest.raises(errors.RecordTooLargeError, match=r"refused a batch of \d+ records for big-\d \(Kafka error 10\)"):
            Mirror(src, f"kafka://{broker.bootstrap_servers}", topics=["big"], groups=False,
                   timeout=10).run()
        assert broker.records("big") == []


@pytest.mark.parametrize("forward", [True, False], ids=["batches", "per_record"])
def test_a_corrupt_stored_batch_stops_the_copy_there(tmp_path, forward):
    src = tmp_path / "src"
    want = lz4_source(src, "bad", 500, 100)  # 5 batches per partition
    seg = sorted((src / "bad-0").glob("*.log"))[0]
    data = bytearray(seg.read_bytes())
    batches = list(_core.iter_batches(bytes(data)))
    third = batches[2]
    data[third.position + third.size - 3] ^= 0xFF  # inside its records: the CRC no longer fits
    seg.write_bytes(bytes(data))
    with testing.start(tmp_path / "b") as broker:
        with pytest.raises(errors.CorruptRecordError):
            Mirror(src, f"kafka://{broker.bootstrap_servers}", topics=["bad"], groups=False,
                   timeout=10, compression="lz4", forward_batches=forward).run()
        got = [(r.key, r.value) for r in by_partition(broker, "bad", 0)]
        # Nothing from the damaged batch on, and never its bytes under a new CRC.
        assert got == [(k, v) for _, k, v, _, _ in want[0]][:len(got)]
        assert len(got) <= 200


def test_reencoded_batches_stay_within_the_topics_max_message_bytes(tmp_path):
    src = tmp_path / "src"
    with kstore.open(src) as s:
        s.create_topic("small", 1, config={"max.message.bytes": 3000})
        pr = s.producer(linger_ms=0, batch_size=2500)  # uncompressed: re-encoded as lz4
        for i in range(400):
            pr.send("small", b"value %d " % i + bytes(i % 50), b"k%d" % i, None, T0 + i, 0)
        pr.flush()
        want = records_of(s, "small", 0)
    with testing.start(tmp_path / "b") as broker:
        st = Mirror(src, f"kafka://{broker.bootstrap_servers}", topics=["small"], groups=False,
                    timeout=10, compression="lz4").run()
        assert st.records == 400
        assert [(r.key, r.value) for r in broker.records("small")] == [
            (k, v) for _, k, v, _, _ in want]
        sizes = [b.size for b in broker.store.partition("small", 0).read(0, 1 << 24).batches()]
        assert max(sizes) <= 3000 and len(sizes) > 1


# ==============================================================================================
# Reading whole batches from a cluster (BatchFetcher) into a data directory


def test_from_a_cluster_only_what_read_committed_sees_on_both_paths(tmp_path):
    """Committed, aborted, interleaved and still-open transactions beside plain records, at the
    broker: the batch path (Fetch with read_committed, Kafka's aborted-transaction rule) and
    librdkafka's consumer copy the same records."""
    with testing.start(tmp_path / "b") as broker:
        s = broker.store
        s.create_topic("tx", 2)
        plain = s.producer(linger_ms=0)
        t1 = s.producer(transactional_id="one", linger_ms=0)
        t2 = s.producer(transactional_id="two", linger_ms=0)
        for r in range(8):
            t1.begin_transaction()
            t2.begin_transaction()
            for p in (0, 1):
                t1.send("tx", b"one-%d-%d" % (r, p), partition=p)
                plain.send("tx", b"plain-%d-%d" % (r, p), partition=p)
                t2.send("tx", b"two-%d-%d" % (r, p), partition=p)
            t1.flush()
            t2.flush()
            plain.flush()
            (t1.abort_transaction if r % 3 == 1 else t1.commit_transaction)()
            (t2.abort_transaction if r % 2 == 0 else t2.commit_transaction)()
        t1.begin_transaction()
        t1.send("tx", b"open", partition=0)
        t1.flush()
        c = s.consumer(isolation_level="read_committed", auto_offset_reset="earliest")
        c.assign([("tx", 0), ("tx", 1)])
        want: dict[int, list[bytes]] = {0: [], 1: []}
        while recs := c.poll(timeout=0):
            for r in recs:
                want[r.partition].append(r.value)
        c.close()
        assert b"open" not in want[0] and any(v.startswith(b"two") for v in want[0])
        url = f"kafka://{broker.bootstrap_servers}"
        for forward in (True, False):
            dst = tmp_path / f"dst-{forward}"
            st = Mirror(url, dst, topics=["tx"], groups=False, forward_batches=forward,
                        timeout=10).run()
            assert st.records == len(want[0]) + len(want[1]), forward
            with kstore.open(dst, read_only=True) as d:
                for p in (0, 1):
                    assert [r[2] for r in records_of(d, "tx", p)] == want[p], (forward, p)
        t1.abort_transaction()


def test_fetch_batches_from_the_middle_of_a_batch_and_past_small_fetch_sizes(tmp_path):
    from kstore.mirror import _ClusterSide

    with testing.start(tmp_path / "b") as broker:
        broker.create_topic("mid", 1)
        with broker.store.producer(linger_ms=0, compression="lz4", batch_size=4096) as pr:
            pr.send_many("mid", [b"value %05d " % i + bytes(80) for i in range(3000)],
                         partition=0)
        side = _ClusterSide(f"kafka://{broker.bootstrap_servers}", None, None, 10)
        try:
            assert side.use_fetcher()
            side.fetcher.partition_max_bytes = 1000  # under one batch: each comes whole
            got, pos = [], 7  # inside the first batch: its records from 7 are re-encoded
            while pos < 3000:
                res = side.fetch_batches({("mid", 0): pos}, {("mid", 0): 3000}, "lz4",
                                         lambda t: 1 << 20, 10_000)
                batches, nxt, k = res[("mid", 0)]
                assert nxt > pos and k == sum(c for _, c in batches)
                for buf, _ in batches:
                    got += [r.value for r in _core.read_batch(bytes(buf)).records()]
                pos = nxt
            assert got == [b"value %05d " % i + bytes(80) for i in range(7, 3000)]
        finally:
            side.close()


# ==============================================================================================
# Found by review: idle producers, deleted topics, codecs that grow data


def test_a_producer_idle_past_its_timeout_still_sends_and_recovers(tmp_path):
    with proxied_broker(tmp_path / "b", "lost_answer", at=2) as (broker, proxy):
        broker.create_topic("t", 1)
        bp = BatchProducer(f"127.0.0.1:{proxy.port}", timeout=1.0)
        try:
            bp.produce("t", 0, bytearray(_core.encode_batches([b"a"] * 10)), 10, "a")
            assert bp.poll(wait=True) == [("a", 10)]
            time.sleep(1.5)  # longer than the timeout, with nothing outstanding
            # The next request's answer is lost (a reset): still within the timeout.
            bp.produce("t", 0, bytearray(_core.encode_batches([b"b"] * 10)), 10, "b")
            assert bp.poll(wait=True) == [("b", 20)]
            assert bp.resets == 1
        finally:
            bp.close()
        assert [r.value for r in broker.records("t")] == [b"a"] * 10 + [b"b"] * 10


def test_a_deleted_topic_does_not_stop_sends_to_others(tmp_path):
    with testing.start(tmp_path / "b") as broker:
        broker.create_topic("x", 1)
        broker.create_topic("y", 1)
        bp = BatchProducer(broker.bootstrap_servers, timeout=5)
        try:
            bp.produce("x", 0, bytearray(_core.encode_batches([b"x"])), 1)
            bp.poll(wait=True)
            broker.store.delete_topic("x")
            bp.produce("y", 0, bytearray(_core.encode_batches([b"y"])), 1, "y")
            assert bp.poll(wait=True) == [("y", 1)]
        finally:
            bp.close()


@pytest.mark.parametrize("codec", ["lz4", "snappy"])
def test_batches_of_incompressible_records_stay_under_max_message_bytes(tmp_path, codec):
    """The encoder bounds the bytes before compression; lz4 and snappy make random bytes a
    little larger. Both the mirror's re-encoding and kstore.connect's send_many must cut
    smaller then, not send what the topic refuses."""
    rng = random.Random(1)
    values = [rng.randbytes(1000) for _ in range(300)]
    src = tmp_path / "src"
    with kstore.open(src) as s:
        s.create_topic("m", 1, config={"max.message.bytes": 100_000})
        with s.producer(linger_ms=0, compression="none") as pr:  # re-encoded by the mirror
            for v in values:
                pr.send("m", v, partition=0)
    with testing.start(tmp_path / "b") as broker:
        url = f"kafka://{broker.bootstrap_servers}"
        st = Mirror(src, url, topics=["m"], groups=False, compression=codec, timeout=10).run()
        assert st.records == 300
        broker.create_topic("c", 1, config={"max.message.bytes": 20_000})
        with kstore.connect(url) as cs, cs.producer(compression=codec,
                                                    batch_size=1 << 20) as pr:
            assert pr.send_many("c", values, partition=0) == 300
        for t, limit in (("m", 100_000), ("c", 20_000)):
            assert [r.value for r in broker.records(t)] == values
            batches = list(broker.store.partition(t, 0).read(0, 1 << 26).batches())
            assert max(b.size for b in batches) <= limit
            assert {b.compression for b in batches} == {codec}


def test_nothing_more_is_sent_after_a_refusal(tmp_path):
    with testing.start(tmp_path / "b") as broker:
        broker.create_topic("small", 1, config={"max.message.bytes": 200})
        broker.create_topic("other", 1)
        bp = BatchProducer(broker.bootstrap_servers, timeout=5)
        try:
            bp.produce("small", 0, bytearray(_core.encode_batches([b"x" * 500])), 1)
            with pytest.raises(errors.RecordTooLargeError, match="Kafka error 10"):
                bp.poll(wait=True)
            with pytest.raises(errors.RecordTooLargeError):
                bp.produce("other", 0, bytearray(_core.encode_batches([b"late"])), 1)
            bp.poll(wait=False)
        finally:
            bp.close()
        assert broker.records("other") == [] and broker.records("small") == []


def test_follow_from_a_cluster_copies_new_records_as_they_come(tmp_path):
    with testing.start(tmp_path / "b") as broker:
        broker.create_topic("f", 2)
        url = f"kafka://{broker.bootstrap_servers}"
        dst = tmp_path / "dst"
        m = Mirror(url, dst, topics=["f"], groups=False, follow=True, timeout=10)
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("stats", m.run()), daemon=True)
        t.start()
        try:
            with kstore.connect(url) as cs, cs.producer(linger_ms=0) as pr:
                for rnd in range(3):
                    pr.send_many("f", [b"r%d-%d" % (rnd, i) for i in range(100)],
                                 keys=[b"k%d" % i for i in range(100)])

                    def landed(n: int = 100 * (rnd + 1)) -> bool:
                        if not (dst / "kstore.json").exists():
                            return False
                        with kstore.open(dst, read_only=True) as d:
                            return ("f" in d.topics() and sum(
                                d.partition("f", p).log_end_offset for p in (0, 1)) >= n)

                    deadline = time.monotonic() + 30
                    while not landed():
                        assert time.monotonic() < deadline and t.is_alive(), "not followed"
                        time.sleep(0.05)
        finally:
            m.stop()
            t.join(30)
        assert box["stats"].records == 300
        with kstore.open(dst, read_only=True) as d:
            got = sorted(r[2] for p in (0, 1) for r in records_of(d, "f", p))
        assert got == sorted(b"r%d-%d" % (rnd, i) for rnd in range(3) for i in range(100))
