"""`kstore serve` on a file system that fills up (a real tmpfs): a refused produce is answered
KAFKA_STORAGE_ERROR (56), logged at ERROR once per partition (not once per request) until a
write to it succeeds again; the server stays up and serves reads; freeing space lets produce
resume, and every acknowledged record is there after a restart."""

from __future__ import annotations

import os
import re

import pytest

import kstore
from kstore import _core
from tests.server.conftest import kcat
from tests.server.rawclient import RawClient
from tests.smallfs import small_tmpfs

PRODUCE, FETCH, API_VERSIONS = 0, 1, 18
KAFKA_STORAGE_ERROR = 56
ERROR_LINE = re.compile(r" ERROR kstore\.server: produce to t-0 failed")


def _batch(i: int) -> bytes:
    b = _core.BatchBuilder()
    for j in range(4):
        b.append(os.urandom(8000), key=b"%d-%d" % (i, j))
    return b.build()


def _produce(c: RawClient, raw: bytes, topic: str = "t") -> dict:
    res = c.call(PRODUCE, 9, {"acks": -1, "timeout_ms": 5000, "transactional_id": None,
                              "topic_data": [{"name": topic, "partition_data": [
                                  {"index": 0, "records": raw}]}]})
    return res["responses"][0]["partition_responses"][0]


def _fetch_count(c: RawClient, topic: str, offset: int) -> int:
    res = c.call(FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 64 << 20,
        "isolation_level": 1, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [{
            "partition": 0, "current_leader_epoch": -1, "fetch_offset": offset,
            "log_start_offset": -1, "partition_max_bytes": 64 << 20}]}],
        "forgotten_topics_data": [], "rack_id": ""})
    p = res["responses"][0]["partitions"][0]
    assert p["error_code"] == 0, p
    return sum(len(b.records()) for b in _core.iter_batches(p["records"] or b""))


def _fill_up(c: RawClient, acked: list[tuple[int, bytes]], start: int) -> dict:
    """Produce until the disk refuses; return the refusing answer."""
    for i in range(start, start + 2000):
        raw = _batch(i)
        r = _produce(c, raw)
        if r["error_code"] != 0:
            return r
        acked.append((r["base_offset"], raw))
    raise AssertionError("the file system never filled up")


@pytest.fixture
def tiny_fs(tmp_path):
    # Requested before kserver: the server stops before the file system goes.
    with small_tmpfs(tmp_path / "fs", 6 << 20) as root:
        yield root


def test_serve_on_a_full_disk_answers_56_logs_once_and_recovers(tiny_fs, kserver):
    root = tiny_fs
    data = root / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t")
        s.create_topic("other")
        s.partition("other", 0).append(b"readable")
    reserve = [root / "reserve-0", root / "reserve-1"]
    for r in reserve:
        r.write_bytes(b"\0" * (512 << 10))
    srv = kserver("--no-auto-create", data=data)
    acked: list[tuple[int, bytes]] = []
    with RawClient(srv.port, timeout=30) as c:
        r = _fill_up(c, acked, 0)
        assert r["error_code"] == KAFKA_STORAGE_ERROR, r
        assert "No space left" in (r.get("error_message") or ""), r
        for i in range(20):  # librdkafka retries: each retry is refused, logged once
            assert _produce(c, _batch(10_000 + i))["error_code"] == KAFKA_STORAGE_ERROR
        # A real client: librdkafka retries KAFKA_STORAGE_ERROR (retriable in Kafka too)
        # until its message timeout; every retry is refused, none is logged again.
        k = kcat(srv, "-P", "-t", "t", "-p", "0", "-X", "message.timeout.ms=3000",
                 "-X", "retry.backoff.ms=50", input=b"z" * 60_000 + b"\n", check=False)
        assert k.returncode != 0, k
        assert len([ln for ln in srv.log.splitlines() if ERROR_LINE.search(ln)]) == 1, \
            srv.log[-5000:]
        # the server is up and serves reads of both topics
        assert c.call(API_VERSIONS, 0, {})["error_code"] == 0
        assert _fetch_count(c, "other", 0) == 1
        assert _fetch_count(c, "t", 0) >= 1
        # room again: produce resumes where it stopped, and the next refusal is logged again
        reserve[0].unlink()
        raw = _batch(20_000)
        r = _produce(c, raw)
        assert r["error_code"] == 0, r
        assert r["base_offset"] == acked[-1][0] + 4  # nothing refused was kept
        acked.append((r["base_offset"], raw))
        srv.wait_log("the disk accepts writes again")
        r = _fill_up(c, acked, 30_000)
        assert r["error_code"] == KAFKA_STORAGE_ERROR, r
        assert len([ln for ln in srv.log.splitlines() if ERROR_LINE.search(ln)]) == 2
    reserve[1].unlink()  # room for a clean shutdown
    srv.stop()
    assert "Traceback" not in srv.log
    with kstore.open(data, retention_check_interval_ms=0) as s:
        lg = s.partition("t", 0)
        assert lg.log_end_offset == acked[-1][0] + 4
        records = {}
        off = 0
        while off < lg.log_end_offset:
            fs = lg.read(off)
            for b in fs.batches():
                records[b.base_offset] = b
            off = fs.next_offset
        assert sorted(records) == [base for base, _ in acked]
        for base, raw in acked:
            want = [bytes(x.value) for x in next(_core.iter_batches(raw)).records()]
            assert [bytes(x.value) for x in records[base].records()] == want


SITECUSTOMIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a killed process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def test_serve_past_its_file_size_limit_answers_56_and_serves_the_rest(kserver, tmp_path):
    """No root needed: RLIMIT_FSIZE makes writes past the limit fail with EFBIG, the other
    way a disk refuses. The partition that hit it answers 56 (logged once); other partitions
    keep taking produces and reads; the server stops cleanly."""
    data = tmp_path / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t")
        s.create_topic("other")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(limit=1 << 20))
    srv = kserver("--no-auto-create", data=data, env={"PYTHONPATH": str(site)})
    acked: list[tuple[int, bytes]] = []
    with RawClient(srv.port, timeout=30) as c:
        r = _fill_up(c, acked, 0)
        assert r["error_code"] == KAFKA_STORAGE_ERROR, r
        assert "File too large" in (r.get("error_message") or ""), r
        for i in range(10):
            assert _produce(c, _batch(10_000 + i))["error_code"] == KAFKA_STORAGE_ERROR
        assert len([ln for ln in srv.log.splitlines() if ERROR_LINE.search(ln)]) == 1, \
            srv.log[-5000:]
        small = _core.BatchBuilder()
        small.append(b"still-writable")
        assert _produce(c, small.build(), topic="other")["error_code"] == 0
        assert _fetch_count(c, "other", 0) == 1
        assert _fetch_count(c, "t", 0) >= 1
        assert c.call(API_VERSIONS, 0, {})["error_code"] == 0
    srv.stop()
    with kstore.open(data, retention_check_interval_ms=0) as s:
        assert s.partition("t", 0).log_end_offset == acked[-1][0] + 4
