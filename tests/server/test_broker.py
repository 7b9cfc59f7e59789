"""The broker's API semantics through the wire: exact requests from a raw client against an
in-process server, answers checked field by field (kafka-protocol.md section 3.3 and 5)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from kstore import _core
from tests.server.rawclient import RawClient, ServerThread

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS, DELETE_RECORDS = 18, 19, 20, 21
INIT_PRODUCER_ID, OFFSET_FOR_LEADER_EPOCH = 22, 23
DESCRIBE_CONFIGS, ALTER_CONFIGS, CREATE_PARTITIONS, DESCRIBE_CLUSTER = 32, 33, 37, 60
FIND_COORDINATOR = 10


@pytest.fixture
def srv(tmp_path):
    s = ServerThread(tmp_path / "data")
    yield s
    s.stop()


@pytest.fixture
def client(srv):
    with srv.client() as c:
        yield c


def batch(values, *, pid=-1, epoch=-1, seq=-1, codec="none", ts=None, transactional=False):
    b = _core.BatchBuilder(compression=codec, producer_id=pid, producer_epoch=epoch,
                           base_sequence=seq, transactional=transactional)
    for i, v in enumerate(values):
        b.append(v, key=b"k%d" % i, timestamp=None if ts is None else ts + i)
    return b.build()


def produce(client, topic, records, partition=0, version=9, acks=-1):
    res = client.call(PRODUCE, version, {
        "acks": acks, "timeout_ms": 1000,
        "topic_data": [{"name": topic, "partition_data": [{"index": partition, "records": records}]}]})
    return res["responses"][0]["partition_responses"][0]


def fetch(client, topic, offset, partition=0, version=11, max_wait_ms=0, min_bytes=1,
          leader_epoch=-1, max_bytes=1 << 20, session_id=0):
    res = client.call(FETCH, version, {
        "replica_id": -1, "max_wait_ms": max_wait_ms, "min_bytes": min_bytes,
        "max_bytes": max_bytes, "isolation_level": 1, "session_id": session_id,
        "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [{
            "partition": partition, "current_leader_epoch": leader_epoch,
            "fetch_offset": offset, "log_start_offset": -1, "partition_max_bytes": max_bytes}]}],
        "forgotten_topics_data": [], "rack_id": ""})
    return res


def values_of(records):
    return [bytes(r.value) for b in _core.iter_batches(records) for r in b.records()]


# ==============================================================================================
# ApiVersions, Metadata


def test_api_versions_lists_the_advertised_ranges(client):
    res = client.call(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
    ranges = {k["api_key"]: (k["min_version"], k["max_version"]) for k in res["api_keys"]}
    # Old versions stay in range or librdkafka <= 2.11 turns features off (section 3.2).
    assert ranges[PRODUCE] == (0, 11) and ranges[FETCH] == (0, 12)
    assert ranges[FIND_COORDINATOR][0] == 0 and ranges[11][0] == 0 and ranges[22][0] == 0
    assert ranges[17] == (0, 1) and ranges[36][0] == 0 and ranges[LIST_OFFSETS][0] == 0
    assert res["error_code"] == 0


def test_api_versions_too_new_gets_error_35_in_v0_layout(srv):
    with srv.client() as c:
        c.sock.sendall(bytes.fromhex("0000000e 0012 0063 00000007 0004 74657374".replace(" ", "")))
        data = c.recv_frame()
        assert data == bytes.fromhex("00000007 0023 00000001 0012 0000 0004".replace(" ", ""))
        # The connection stays usable: the client retries with a version we know.
        assert c.call(API_VERSIONS, 0, {})["error_code"] == 0


def test_metadata_auto_creates_and_lists(srv, client):
    res = client.call(METADATA, 9, {"topics": [{"name": "fresh"}], "allow_auto_topic_creation": True})
    (t,) = res["topics"]
    assert t["error_code"] == 0 and t["name"] == "fresh" and len(t["partitions"]) == 1
    p = t["partitions"][0]
    assert (p["leader_id"], p["leader_epoch"], list(p["replica_nodes"])) == (1, 0, [1])
    assert res["controller_id"] == 1 and res["brokers"][0]["port"] == srv.port
    assert "fresh" in srv.store.topics()
    # Not allowed to create: unknown stays unknown.
    res = client.call(METADATA, 9, {"topics": [{"name": "other"}], "allow_auto_topic_creation": False})
    assert res["topics"][0]["error_code"] == 3
    # v0: an empty list means all topics; v1+: null means all, empty means none.
    assert [t["name"] for t in client.call(METADATA, 0, {"topics": []})["topics"]] == ["fresh"]
    assert client.call(METADATA, 1, {"topics": []})["topics"] == []
    assert [t["name"] for t in client.call(METADATA, 1, {"topics": None})["topics"]] == ["fresh"]
    bad = client.call(METADATA, 9, {"topics": [{"name": "bad name!"}], "allow_auto_topic_creation": True})
    assert bad["topics"][0]["error_code"] == 17


def test_cluster_id_is_stable_across_restarts(tmp_path):
    ids = []
    for _ in range(2):
        s = ServerThread(tmp_path / "data")
        with s.client() as c:
            ids.append(c.call(METADATA, 9, {"topics": [], "allow_auto_topic_creation": False})["cluster_id"])
            assert c.call(DESCRIBE_CLUSTER, 0, {})["cluster_id"] == ids[-1]
        s.stop()
    assert ids[0] == ids[1] and len(ids[0]) == 22


# ==============================================================================================
# Produce


def test_produce_appends_the_batch_as_sent(srv, client):
    raw = batch([b"a", b"b", b"c"], codec="lz4")
    r = produce(client, "t", raw)
    assert (r["error_code"], r["base_offset"], r["log_start_offset"]) == (0, 0, 0)
    r = produce(client, "t", batch([b"d"]))
    assert r["base_offset"] == 3
    lg = srv.store.partition("t", 0)
    stored = lg.read(0).read()
    # Byte for byte the client's batch apart from the offset the broker stamps (bytes 0-7)
    # and the partition leader epoch (12-15, not covered by the CRC).
    assert stored[16:len(raw)] == raw[16:]
    assert values_of(stored) == [b"a", b"b", b"c", b"d"]


def test_produce_acks_0_gets_no_response(srv, client):
    client.send(PRODUCE, 7, {"acks": 0, "timeout_ms": 1000, "transactional_id": None, "topic_data": [
        {"name": "t", "partition_data": [{"index": 0, "records": batch([b"x"])}]}]})
    # The next response on the connection belongs to the next request.
    res = client.call(API_VERSIONS, 0, {})
    assert res["error_code"] == 0
    assert srv.call_soon(lambda: srv.store.partition("t", 0).log_end_offset) == 1


@pytest.mark.parametrize("case, code", [
    ("acks", 21), ("magic1", 87), ("two-batches", 87), ("transactional", 48), ("zstd-v3", 76),
    ("crc", 2), ("unknown-partition", 3), ("internal", 17),
])
def test_produce_refusals(srv, client, case, code):
    produce(client, "t", batch([b"seed"]))  # creates the topic
    raw, version, acks, topic, part = batch([b"x", b"y"]), 9, -1, "t", 0
    if case == "acks":
        acks = 2
    elif case == "magic1":
        raw = bytearray(raw)
        raw[16] = 1
        raw = bytes(raw)
    elif case == "two-batches":
        raw = raw + batch([b"z"])
    elif case == "transactional":
        raw = batch([b"x"], pid=5, epoch=0, seq=0, transactional=True)
    elif case == "zstd-v3":
        raw, version = batch([b"x"], codec="zstd"), 3
    elif case == "crc":
        raw = bytearray(raw)
        raw[-1] ^= 0xFF
        raw = bytes(raw)
    elif case == "unknown-partition":
        part = 5
    elif case == "internal":
        topic = "__consumer_offsets"
    r = client.call(PRODUCE, version, {"acks": acks, "timeout_ms": 1000, "transactional_id": None,
                                       "topic_data": [{"name": topic, "partition_data": [
                                           {"index": part, "records": raw}]}]})
    pr = r["responses"][0]["partition_responses"][0]
    assert pr["error_code"] == code, pr
    assert srv.call_soon(lambda: srv.store.partition("t", 0).log_end_offset) == 1  # nothing kept


def test_idempotent_producer_sequences(srv, client):
    res = client.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout_ms": 60000,
                                            "producer_id": -1, "producer_epoch": -1})
    assert res["error_code"] == 0 and res["producer_id"] >= 0 and res["producer_epoch"] == 0
    pid = res["producer_id"]
    first = produce(client, "t", batch([b"a", b"b"], pid=pid, epoch=0, seq=0))
    second = produce(client, "t", batch([b"c"], pid=pid, epoch=0, seq=2))
    assert (first["base_offset"], second["base_offset"]) == (0, 2)
    # A retry of an acknowledged batch is answered with its first offset and not appended.
    dup = produce(client, "t", batch([b"a", b"b"], pid=pid, epoch=0, seq=0))
    assert (dup["error_code"], dup["base_offset"]) == (0, 0)
    assert srv.call_soon(lambda: srv.store.partition("t", 0).log_end_offset) == 3
    # A gap in the sequence is fatal for the producer: 45.
    assert produce(client, "t", batch([b"d"], pid=pid, epoch=0, seq=9))["error_code"] == 45
    # An older epoch is fenced: 47. A new epoch must start at 0.
    assert produce(client, "t", batch([b"e"], pid=pid, epoch=1, seq=3))["error_code"] == 45
    assert produce(client, "t", batch([b"e"], pid=pid, epoch=1, seq=0))["error_code"] == 0
    assert produce(client, "t", batch([b"f"], pid=pid, epoch=0, seq=3))["error_code"] == 47
    # Another producer id is independent; new ids differ.
    other = client.call(INIT_PRODUCER_ID, 0, {"transactional_id": None, "transaction_timeout_ms": 1})
    assert other["producer_id"] != pid
    assert produce(client, "t", batch([b"g"], pid=other["producer_id"], epoch=0, seq=100))["error_code"] == 0


def test_init_producer_id_always_gives_a_new_id_without_a_transactional_id(client):
    """Kafka's rule for idempotent producers: naming the old id does not bump its epoch (a
    retried request would fence its own producer; anyone could fence anyone's id)."""
    first = client.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout_ms": 1,
                                              "producer_id": -1, "producer_epoch": -1})
    again = client.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout_ms": 1,
                                              "producer_id": first["producer_id"], "producer_epoch": 0})
    assert again["error_code"] == 0 and again["producer_epoch"] == 0
    assert again["producer_id"] != first["producer_id"]


def test_idempotent_produce_carries_one_batch_even_below_v3(srv, client):
    raw = batch([b"a"], pid=7, epoch=0, seq=0) + batch([b"b"], pid=7, epoch=0, seq=1)
    assert produce(client, "t", raw, version=2)["error_code"] == 87
    # Plain (non-idempotent) batches may still come several at a time below v3.
    assert produce(client, "t", batch([b"a"]) + batch([b"b"]), version=2)["error_code"] == 0
    assert srv.call_soon(lambda: srv.store.partition("t", 0).log_end_offset) == 2


def test_init_producer_id_with_transactional_id_bumps_the_epoch(client):
    """The same id each time, one epoch up (which fences the previous producer); a producer
    naming a stale (id, epoch) is fenced itself; the timeout must be in (0, 900000]."""
    first = client.call(INIT_PRODUCER_ID, 1, {"transactional_id": "tx-bump",
                                              "transaction_timeout_ms": 60000})
    assert first["error_code"] == 0 and first["producer_epoch"] == 0
    again = client.call(INIT_PRODUCER_ID, 1, {"transactional_id": "tx-bump",
                                              "transaction_timeout_ms": 60000})
    assert (again["error_code"], again["producer_id"], again["producer_epoch"]) == (
        0, first["producer_id"], 1)
    stale = client.call(INIT_PRODUCER_ID, 4, {"transactional_id": "tx-bump",
                                              "transaction_timeout_ms": 60000,
                                              "producer_id": first["producer_id"],
                                              "producer_epoch": 0})
    assert stale["error_code"] == 90  # PRODUCER_FENCED
    for bad in (0, -1, 900_001):
        res = client.call(INIT_PRODUCER_ID, 1, {"transactional_id": "tx-bump",
                                                "transaction_timeout_ms": bad})
        assert res["error_code"] == 50, bad  # INVALID_TRANSACTION_TIMEOUT


# ==============================================================================================
# Fetch


def test_fetch_returns_whole_batches_from_the_one_holding_the_offset(client):
    produce(client, "t", batch([b"a", b"b", b"c"]))
    produce(client, "t", batch([b"d"]))
    res = fetch(client, "t", 1)
    p = res["responses"][0]["partitions"][0]
    assert (p["error_code"], p["high_watermark"], p["last_stable_offset"], p["log_start_offset"]) == (0, 4, 4, 0)
    assert values_of(p["records"]) == [b"a", b"b", b"c", b"d"]  # the client skips below 1
    # At the log end: empty records (length 0), not null.
    p = fetch(client, "t", 4)["responses"][0]["partitions"][0]
    assert p["error_code"] == 0 and bytes(p["records"]) == b""


def test_fetch_first_batch_is_whole_even_over_max_bytes(client):
    big = batch([b"x" * 5000])
    produce(client, "t", big)
    produce(client, "t", batch([b"y"]))
    p = fetch(client, "t", 0, max_bytes=100)["responses"][0]["partitions"][0]
    assert values_of(p["records"]) == [b"x" * 5000]


@pytest.mark.parametrize("offset, epoch, code", [(99, -1, 1), (0, 5, 75), (0, 0, 0)])
def test_fetch_errors(client, offset, epoch, code):
    produce(client, "t", batch([b"a"]))
    p = fetch(client, "t", offset, leader_epoch=epoch)["responses"][0]["partitions"][0]
    assert p["error_code"] == code


def test_fetch_later_partitions_stay_within_max_bytes(srv, client):
    create(client, "two", 2)
    produce(client, "two", batch([b"x" * 5000]), partition=0)
    produce(client, "two", batch([b"y" * 5000]), partition=1)
    res = client.call(FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 6000,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": "two", "partitions": [
            {"partition": p, "current_leader_epoch": -1, "fetch_offset": 0,
             "log_start_offset": -1, "partition_max_bytes": 1 << 20} for p in (0, 1)]}],
        "forgotten_topics_data": [], "rack_id": ""})
    p0, p1 = res["responses"][0]["partitions"]
    assert values_of(p0["records"]) == [b"x" * 5000]  # the first is whole
    assert bytes(p1["records"]) == b"" and p1["high_watermark"] == 1  # next time


def test_a_parked_fetch_of_a_vanished_client_is_dropped(srv):
    with srv.client() as c:
        produce(c, "t", batch([b"a"]))
    c = srv.client()
    c.send(FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 2**31 - 1, "min_bytes": 1, "max_bytes": 1 << 20,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": "t", "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                  "fetch_offset": 1, "log_start_offset": -1,
                                                  "partition_max_bytes": 1 << 20}]}],
        "forgotten_topics_data": [], "rack_id": ""})
    deadline = time.monotonic() + 5
    while srv.call_soon(lambda: len(srv.server._conns)) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    c.close()
    while srv.call_soon(lambda: len(srv.server._conns)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.call_soon(lambda: len(srv.server._conns)) == 0, "the parked fetch held its connection"


def test_a_client_that_never_reads_its_response_is_dropped(tmp_path, caplog):
    caplog.set_level("INFO", logger="kstore.server")
    s = ServerThread(tmp_path / "d", idle_timeout_s=0.5)
    try:
        with s.client() as c:
            for _ in range(16):
                produce(c, "t", batch([b"z" * 1000] * 500))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.port))
        lazy = RawClient.__new__(RawClient)
        lazy.sock, lazy.corr = sock, 0
        lazy.send(FETCH, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 64 << 20,
            "isolation_level": 0, "session_id": 0, "session_epoch": -1,
            "topics": [{"topic": "t", "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                      "fetch_offset": 0, "log_start_offset": -1,
                                                      "partition_max_bytes": 64 << 20}]}],
            "forgotten_topics_data": [], "rack_id": ""})
        deadline = time.monotonic() + 10
        while "did not read its response" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "did not read its response within the idle timeout" in caplog.text
        assert s.call_soon(lambda: len(s.server._conns)) == 0
        assert sock.recv(1 << 20), "the response never started"
        sock.close()
    finally:
        s.stop()


def test_unauthenticated_frames_are_small(tmp_path):
    from kstore.server.auth import Users

    s = ServerThread(tmp_path / "d", sasl_users=Users.from_dict({"u": "p"}))
    try:
        with s.client() as c:
            # Only the size: the server must refuse it without waiting for (or buffering) the
            # 600 KB body, which nobody unauthenticated may send.
            c.sock.sendall(struct.pack(">i", 600_000))
            c.sock.settimeout(5)
            assert c.sock.recv(100) == b""  # closed at once
        with s.client() as c:  # small requests before authentication are fine
            assert c.call(API_VERSIONS, 0, {})["error_code"] == 0
    finally:
        s.stop()


def test_internal_topic_records_and_config_are_protected(srv, client):
    srv.call_soon(lambda: srv.store.commit_offsets("g", {}) or srv.store._ensure_offsets_topic())
    res = client.call(DELETE_RECORDS, 2, {"timeout_ms": 1000, "topics": [
        {"name": "__consumer_offsets", "partitions": [{"partition_index": 0, "offset": -1}]}]})
    assert res["topics"][0]["partitions"][0]["error_code"] == 17
    res = client.call(ALTER_CONFIGS, 0, {"validate_only": False, "resources": [
        {"resource_type": 2, "resource_name": "__consumer_offsets",
         "configs": [{"name": "retention.ms", "value": "1"}]}]})
    assert res["responses"][0]["error_code"] == 17


def test_fetch_unknown_topic_and_session(client):
    assert fetch(client, "nope", 0)["responses"][0]["partitions"][0]["error_code"] == 3
    assert fetch(client, "nope", 0, session_id=7)["error_code"] == 70


def test_fetch_long_poll_is_woken_by_an_append(srv):
    with srv.client() as c, srv.client() as producer:
        produce(producer, "t", batch([b"first"]))
        done = {}

        def waiter():
            t0 = time.monotonic()
            res = fetch(c, "t", 1, max_wait_ms=10_000, min_bytes=1)
            done["elapsed"] = time.monotonic() - t0
            done["res"] = res

        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(0.3)
        assert th.is_alive(), "the fetch answered before any data arrived"
        produce(producer, "t", batch([b"second"]))
        th.join(10)
        assert not th.is_alive()
        assert done["elapsed"] < 9, "the fetch waited for max_wait_ms instead of the append"
        assert values_of(done["res"]["responses"][0]["partitions"][0]["records"]) == [b"second"]


def test_fetch_long_poll_times_out_empty(client):
    produce(client, "t", batch([b"a"]))
    t0 = time.monotonic()
    p = fetch(client, "t", 1, max_wait_ms=200, min_bytes=1)["responses"][0]["partitions"][0]
    assert time.monotonic() - t0 >= 0.19
    assert p["error_code"] == 0 and bytes(p["records"]) == b""


def test_fetch_is_sent_with_sendfile_from_the_segment(srv, client, monkeypatch):
    import os
    calls = []
    real = os.sendfile

    def spy(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(os, "sendfile", spy)
    produce(client, "t", batch([b"v" * 1000] * 50))
    p = fetch(client, "t", 0)["responses"][0]["partitions"][0]
    assert len(values_of(p["records"])) == 50
    assert calls, "the records did not go through sendfile"


# ==============================================================================================
# ListOffsets, OffsetForLeaderEpoch, DeleteRecords


def list_offset(client, topic, ts, version=7, partition=0, epoch=-1):
    res = client.call(LIST_OFFSETS, version, {"replica_id": -1, "isolation_level": 0, "topics": [
        {"name": topic, "partitions": [{"partition_index": partition, "current_leader_epoch": epoch,
                                        "timestamp": ts}]}]})
    return res["topics"][0]["partitions"][0]


def test_list_offsets(client):
    produce(client, "t", batch([b"a", b"b"], ts=1000))
    produce(client, "t", batch([b"c"], ts=5000))
    produce(client, "t", batch([b"d"], ts=3000))
    assert list_offset(client, "t", -1)["offset"] == 4
    assert list_offset(client, "t", -2)["offset"] == 0
    r = list_offset(client, "t", 1001)
    assert (r["offset"], r["timestamp"], r["leader_epoch"]) == (1, 1001, 0)
    r = list_offset(client, "t", 4000)
    assert (r["offset"], r["timestamp"]) == (2, 5000)
    r = list_offset(client, "t", 6000)
    assert (r["error_code"], r["offset"], r["timestamp"]) == (0, -1, -1)
    r = list_offset(client, "t", -3)
    assert (r["offset"], r["timestamp"]) == (2, 5000)
    assert list_offset(client, "t", -1, version=1)["offset"] == 4
    assert list_offset(client, "t", -1, partition=3)["error_code"] == 3
    assert list_offset(client, "t", -1, epoch=3)["error_code"] == 75


def test_offset_for_leader_epoch(client):
    produce(client, "t", batch([b"a", b"b"]))

    def ask(epoch, current=-1):
        res = client.call(OFFSET_FOR_LEADER_EPOCH, 4, {"replica_id": -1, "topics": [
            {"topic": "t", "partitions": [{"partition": 0, "current_leader_epoch": current,
                                           "leader_epoch": epoch}]}]})
        return res["topics"][0]["partitions"][0]

    r = ask(0)
    assert (r["error_code"], r["leader_epoch"], r["end_offset"]) == (0, 0, 2)
    r = ask(-1)
    assert (r["leader_epoch"], r["end_offset"]) == (-1, -1)
    r = ask(3)  # an epoch this log never had
    assert (r["error_code"], r["leader_epoch"], r["end_offset"]) == (0, -1, -1)
    assert ask(0, current=2)["error_code"] == 75


def test_delete_records(srv, client):
    for i in range(5):
        produce(client, "t", batch([b"%d" % i]))
    res = client.call(DELETE_RECORDS, 2, {"timeout_ms": 1000, "topics": [
        {"name": "t", "partitions": [{"partition_index": 0, "offset": 3}]}]})
    p = res["topics"][0]["partitions"][0]
    assert (p["error_code"], p["low_watermark"]) == (0, 3)
    assert list_offset(client, "t", -2)["offset"] == 3
    assert fetch(client, "t", 1)["responses"][0]["partitions"][0]["error_code"] == 1
    res = client.call(DELETE_RECORDS, 0, {"timeout_ms": 1000, "topics": [
        {"name": "t", "partitions": [{"partition_index": 0, "offset": 99}]}]})
    assert res["topics"][0]["partitions"][0]["error_code"] == 1


# ==============================================================================================
# Topics and configs


def create(client, name, partitions=1, rf=1, configs=(), version=5, validate_only=False):
    res = client.call(CREATE_TOPICS, version, {"timeout_ms": 1000, "validate_only": validate_only,
                                               "topics": [{"name": name, "num_partitions": partitions,
                                                           "replication_factor": rf, "assignments": [],
                                                           "configs": [{"name": k, "value": v}
                                                                       for k, v in configs]}]})
    return res["topics"][0]


def test_create_topics(srv, client):
    r = create(client, "a", 3, configs=[("retention.ms", "1000")])
    assert (r["error_code"], r["num_partitions"], r["replication_factor"]) == (0, 3, 1)
    assert {c["name"]: c["value"] for c in r["configs"]}["retention.ms"] == "1000"
    assert srv.store.partitions_for("a") == 3
    assert create(client, "a")["error_code"] == 36
    assert create(client, "b", rf=3)["error_code"] == 38
    assert create(client, "b", partitions=0)["error_code"] == 37
    assert create(client, "bad/name")["error_code"] == 17
    assert create(client, "b", configs=[("retention.ms", "soon")])["error_code"] == 40
    assert create(client, "b", configs=[("no.such.key", "1")])["error_code"] == 40
    assert create(client, "c", validate_only=True)["error_code"] == 0
    assert "c" not in srv.store.topics()
    r = create(client, "d", partitions=-1, rf=-1)
    assert (r["error_code"], r["num_partitions"]) == (0, 1)


def test_delete_topics_and_create_partitions(srv, client):
    create(client, "a", 2)
    res = client.call(CREATE_PARTITIONS, 3, {"timeout_ms": 1000, "validate_only": False, "topics": [
        {"name": "a", "count": 4, "assignments": None}]})
    assert res["results"][0]["error_code"] == 0 and srv.store.partitions_for("a") == 4
    res = client.call(CREATE_PARTITIONS, 0, {"timeout_ms": 1000, "validate_only": False, "topics": [
        {"name": "a", "count": 2, "assignments": None}]})
    assert res["results"][0]["error_code"] == 37
    res = client.call(DELETE_TOPICS, 5, {"timeout_ms": 1000, "topic_names": ["a", "zz"]})
    assert [(r["name"], r["error_code"]) for r in res["responses"]] == [("a", 0), ("zz", 3)]
    assert "a" not in srv.store.topics()


def test_describe_and_alter_configs(srv, client):
    create(client, "a", configs=[("retention.ms", "1000")])

    def describe(keys=None, version=4):
        res = client.call(DESCRIBE_CONFIGS, version, {"include_synonyms": True, "include_documentation": True,
                                                      "resources": [{"resource_type": 2, "resource_name": "a",
                                                                     "configuration_keys": keys}]})
        return {c["name"]: c for c in res["results"][0]["configs"]}

    cfg = describe()
    assert cfg["retention.ms"]["value"] == "1000" and cfg["retention.ms"]["config_source"] == 1
    assert cfg["segment.bytes"]["value"] == "1073741824" and cfg["segment.bytes"]["config_source"] == 5
    assert cfg["preallocate"]["value"] == "false"
    assert set(describe(["cleanup.policy"])) == {"cleanup.policy"}
    assert describe(version=0)["segment.bytes"]["is_default"] is True
    # AlterConfigs replaces the whole set: retention.ms goes back to its default.
    res = client.call(ALTER_CONFIGS, 2, {"validate_only": False, "resources": [
        {"resource_type": 2, "resource_name": "a", "configs": [{"name": "cleanup.policy", "value": "compact"}]}]})
    assert res["responses"][0]["error_code"] == 0
    cfg = describe()
    assert cfg["cleanup.policy"]["value"] == "compact" and cfg["retention.ms"]["value"] == "604800000"
    res = client.call(ALTER_CONFIGS, 0, {"validate_only": False, "resources": [
        {"resource_type": 2, "resource_name": "a", "configs": [{"name": "retention.ms", "value": "x"}]}]})
    assert res["responses"][0]["error_code"] == 40
    res = client.call(DESCRIBE_CONFIGS, 1, {"include_synonyms": False, "resources": [
        {"resource_type": 4, "resource_name": "1", "configuration_keys": None}]})
    assert {c["name"] for c in res["results"][0]["configs"]} >= {"auto.create.topics.enable", "num.partitions"}
    res = client.call(DESCRIBE_CONFIGS, 1, {"include_synonyms": False, "resources": [
        {"resource_type": 2, "resource_name": "missing", "configuration_keys": None}]})
    assert res["results"][0]["error_code"] == 3
    res = client.call(DESCRIBE_CONFIGS, 1, {"include_synonyms": False, "resources": [
        {"resource_type": 3, "resource_name": "x", "configuration_keys": None}]})
    assert res["results"][0]["error_code"] == 42 and "not supported" in res["results"][0]["error_message"]
    res = client.call(ALTER_CONFIGS, 0, {"validate_only": False, "resources": [
        {"resource_type": 4, "resource_name": "1", "configs": [{"name": "num.partitions", "value": "3"}]}]})
    assert res["responses"][0]["error_code"] == 42


def test_find_coordinator(srv, client):
    r = client.call(FIND_COORDINATOR, 2, {"key": "g", "key_type": 0})
    assert (r["error_code"], r["node_id"], r["port"]) == (0, 1, srv.port)
    r = client.call(FIND_COORDINATOR, 4, {"key_type": 0, "coordinator_keys": ["a", "b"]})
    assert [c["key"] for c in r["coordinators"]] == ["a", "b"]
    r = client.call(FIND_COORDINATOR, 1, {"key": "tx", "key_type": 1})  # transactions: here too
    assert (r["error_code"], r["node_id"], r["port"]) == (0, 1, srv.port)
    assert client.call(FIND_COORDINATOR, 1, {"key": "x", "key_type": 2})["error_code"] == 42


# ==============================================================================================
# Connections


def test_pipelined_requests_are_answered_in_order(srv, client):
    corrs = [client.send(API_VERSIONS, 0, {}) for _ in range(3)]
    corrs.append(client.send(METADATA, 1, {"topics": None}))
    got = [struct.unpack_from(">i", client.recv_frame())[0] for _ in corrs]
    assert got == corrs


def test_a_bad_frame_closes_only_its_connection(srv):
    with srv.client() as good:
        bad = socket.create_connection(("127.0.0.1", srv.port))
        bad.sendall(struct.pack(">i", 12) + b"\xff" * 12)
        bad.settimeout(5)
        assert bad.recv(100) == b""  # closed
        bad.close()
        assert good.call(API_VERSIONS, 0, {})["error_code"] == 0
        with RawClient(srv.port) as again:
            assert again.call(API_VERSIONS, 0, {})["error_code"] == 0


def test_idle_producer_state_expires():
    from kstore.server.producers import ProducerStates

    now = [0.0]
    ps = ProducerStates(expiration_s=100, clock=lambda: now[0])
    pid, _ = ps.new_producer_id()
    ps.record(pid, 0, 0, 0, "t", 0, 0, 0, -1)
    assert len(ps) == 1
    now[0] = 50
    other, _ = ps.new_producer_id()
    ps.record(other, 0, 0, 0, "t", 0, 1, 1, -1)
    now[0] = 130  # the first is idle for 130 s, the second for 80 s
    ps.new_producer_id()
    assert len(ps) == 1
    # The expired producer is unknown again: any sequence starts it.
    assert ps.check(pid, 0, 77, 0, "t", 0) is None
    assert ps.check(other, 0, 1, 0, "t", 0) is None
    assert ps.check(other, 0, 0, 0, "t", 0).first_offset == 1  # still known: a duplicate


def test_idempotent_producer_state_is_rebuilt_from_the_log_after_a_restart(tmp_path):
    """A retry that straddles a restart is still a duplicate, and the sequence goes on: the
    state of a producer from before the restart is read back from the partition's batches."""
    s = ServerThread(tmp_path / "d")
    with s.client() as c:
        pid = c.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout_ms": 1,
                                           "producer_id": -1, "producer_epoch": -1})["producer_id"]
        assert produce(c, "t", batch([b"a", b"b"], pid=pid, epoch=0, seq=0))["base_offset"] == 0
        assert produce(c, "t", batch([b"c"], pid=pid, epoch=0, seq=2))["base_offset"] == 2
        produce(c, "t", batch([b"other"]))  # a non-idempotent batch after it
    s.stop()
    s = ServerThread(tmp_path / "d")
    try:
        with s.client() as c:
            dup = produce(c, "t", batch([b"c"], pid=pid, epoch=0, seq=2))
            assert (dup["error_code"], dup["base_offset"]) == (0, 2)
            assert s.call_soon(lambda: s.store.partition("t", 0).log_end_offset) == 4
            assert produce(c, "t", batch([b"d"], pid=pid, epoch=0, seq=9))["error_code"] == 45
            assert produce(c, "t", batch([b"d"], pid=pid, epoch=0, seq=3))["base_offset"] == 4
            # A producer the log has never seen may still start anywhere.
            assert produce(c, "t", batch([b"e"], pid=pid - 1, epoch=0, seq=50))["error_code"] == 0
    finally:
        s.stop()
