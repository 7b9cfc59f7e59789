"""kafka-python (3.x) against ``kstore serve``: acks 0, 1 and all; a consumer group that commits,
survives a server restart and resumes at its commits; DescribeGroups through the admin client;
commits shared between the embedded Store and the wire in both directions; SASL over
SaslHandshake v1 + SaslAuthenticate and over the raw v0 token frames (kafka-protocol.md 6, 9)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import pytest

import kstore
from kstore.server import protocol
from tests.server.conftest import wait_until
from tests.server.rawclient import read_frame, recv_exact

kafka = pytest.importorskip("kafka", reason="kafka-python is not installed")
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

FAST_GROUPS = ("--group-initial-rebalance-delay-ms", "0")
TIMEOUT = 30.0
# metadata_max_age_ms: kafka-python's group leader assigns from its own metadata; when the first
# join races the first metadata answer it assigns nothing ("No partition metadata for topic"),
# and only the next metadata refresh (5 minutes by default) makes it join again.
GROUP_CONF = {"auto_offset_reset": "earliest", "enable_auto_commit": False,
              "heartbeat_interval_ms": 300, "session_timeout_ms": 6000,
              "request_timeout_ms": 10000, "metadata_max_age_ms": 1000}


def group_member(bootstrap, topic, group, **extra):
    """A kafka-python group member of ``group`` on ``topic``, subscribed once its metadata
    knows the topic: its group leader assigns from its own metadata, and a first join that
    races the first metadata answer assigns nothing ("No partition metadata for topic")."""
    c = KafkaConsumer(group_id=group, bootstrap_servers=bootstrap, **{**GROUP_CONF, **extra})
    deadline = time.monotonic() + TIMEOUT
    while not c.partitions_for_topic(topic):
        assert time.monotonic() < deadline, f"kafka-python learned no partitions of {topic}"
        time.sleep(0.05)
    c.subscribe([topic])
    return c


def in_thread(fn, *args, timeout=60.0):
    """Run ``fn(*args)`` in a thread; fail if it hangs past ``timeout``; return its result."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name=f"client-{fn.__name__}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{fn.__name__} hung for {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def poll_records(consumer, n, timeout=TIMEOUT, settle=0.0):
    """Poll until ``n`` records came (then ``settle`` more seconds of polls, to catch extras)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} records in {timeout:.0f}s"
        for recs in consumer.poll(timeout_ms=200).values():
            got.extend(recs)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for recs in consumer.poll(timeout_ms=100).values():
            got.extend(recs)
    return got


def produce(bootstrap, topic, records, **conf):
    """Send (partition, key, value); return the RecordMetadata of each (acks=0: sent only)."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **conf)
    try:
        futures = [p.send(topic, key=k, value=v, partition=part) for part, k, v in records]
        p.flush(TIMEOUT)
        return [f.get(TIMEOUT) for f in futures]
    finally:
        p.close(TIMEOUT)


def read_all(bootstrap, topic, partitions, **conf):
    """Every record of the partitions, from 0 to the end, without a group."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        total = sum(ends.values())
        return poll_records(c, total) if total else []
    finally:
        c.close()


# ==============================================================================================


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_produce_acks(kserver, acks):
    srv = kserver("--partitions", "2")
    topic = f"acks-{acks}"
    records = [(i % 2, b"k%d" % i, b"value %d with acks %s" % (i, str(acks).encode()))
               for i in range(60)]

    def run():
        metas = produce(srv.bootstrap, topic, records, acks=acks)
        if acks != 0:
            # Offsets per partition: 0, 1, 2, ... in send order.
            for part in (0, 1):
                assert [m.offset for m in metas if m.partition == part] == list(range(30))
        got = read_all(srv.bootstrap, topic, [0, 1])
        return metas, got

    _, got = in_thread(run)
    for part in (0, 1):
        want = [(k, v) for p, k, v in records if p == part]
        have = sorted((r.offset, r.key, r.value) for r in got if r.partition == part)
        assert have == [(i, k, v) for i, (k, v) in enumerate(want)]
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        assert [store.partition(topic, p).log_end_offset for p in (0, 1)] == [30, 30]


def test_group_commit_survives_a_restart_and_resumes(kserver):
    srv = kserver("--partitions", "2", *FAST_GROUPS)
    topic, group = "resume", "kp"
    tps = [TopicPartition(topic, p) for p in (0, 1)]

    def first_round():
        produce(srv.bootstrap, topic, [(i % 2, None, b"a%d" % i) for i in range(20)], acks=1)
        c = group_member(srv.bootstrap, topic, group)
        try:
            got = poll_records(c, 20, settle=0.3)
            c.commit()
            return got, {tp.partition: c.committed(tp) for tp in tps}
        finally:
            c.close()

    got, committed = in_thread(first_round)
    assert sorted(r.value for r in got) == sorted(b"a%d" % i for i in range(20))
    assert committed == {0: 10, 1: 10}

    srv.restart()  # the same port, the same data

    def second_round():
        produce(srv.bootstrap, topic, [(i % 2, None, b"b%d" % i) for i in range(6)], acks="all")
        c = group_member(srv.bootstrap, topic, group)
        try:
            before = {tp.partition: c.committed(tp) for tp in tps}
            got = poll_records(c, 6, settle=0.5)
            c.commit()
            # This consumer stays in the group across a second restart and goes on. (It
            # rejoins first: records taken before that would be taken again after it, as the
            # rejoin resets the positions to the commits, which is the client's doing.)
            srv.restart()
            admin = KafkaAdminClient(bootstrap_servers=srv.bootstrap, request_timeout_ms=10000)
            try:
                def rejoined():
                    c.poll(timeout_ms=100)
                    d = admin.describe_groups([group])[group]
                    return d["group_state"] == "Stable" and len(d["members"]) == 1

                wait_until(rejoined, TIMEOUT, "the consumer to rejoin after the restart")
            finally:
                admin.close()
            produce(srv.bootstrap, topic, [(0, None, b"c0"), (1, None, b"c1")], acks="all")
            more = poll_records(c, 2, settle=0.5)
            c.commit()
            after = {tp.partition: c.committed(tp) for tp in tps}
            return before, got, more, after
        finally:
            c.close()

    before, got, more, after = in_thread(second_round, timeout=120)
    assert before == {0: 10, 1: 10}  # read back from __consumer_offsets after the restart
    # Resumed at the commits: only the new records, none of the first 20.
    assert sorted((r.partition, r.offset, r.value) for r in got) == sorted(
        [(i % 2, 10 + i // 2, b"b%d" % i) for i in range(6)])
    assert sorted((r.partition, r.offset, r.value) for r in more) == [(0, 13, b"c0"),
                                                                      (1, 13, b"c1")]
    assert after == {0: 14, 1: 14}
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        assert [store.committed(group, topic, p) for p in (0, 1)] == [14, 14]


def test_describe_and_list_groups_through_the_admin_client(kserver):
    srv = kserver("--partitions", "3", *FAST_GROUPS)
    topic, group = "described", "dg"

    def run():
        produce(srv.bootstrap, topic, [(p, None, b"x") for p in range(3)], acks=1)
        c = group_member(srv.bootstrap, topic, group, client_id="describe-me")
        admin = KafkaAdminClient(bootstrap_servers=srv.bootstrap, request_timeout_ms=10000)
        try:
            poll_records(c, 3)
            c.commit()

            def stable():
                d = admin.describe_groups([group])[group]
                return d if d["group_state"] == "Stable" and d["members"] else None

            desc = wait_until(stable, TIMEOUT, "the group to be Stable")
            listed = admin.list_groups()
            offsets = admin.list_group_offsets(group)[group]
            c.close()
            c_closed = admin.describe_groups([group])[group]
            return desc, listed, offsets, c_closed
        finally:
            c.close()
            admin.close()

    desc, listed, offsets, after_close = in_thread(run)
    assert desc["error"] is None
    assert desc["protocol_type"] == "consumer" and desc["protocol_data"] == "range"
    (member,) = desc["members"]
    assert member["client_id"] == "describe-me" and member["client_host"] == "/127.0.0.1"
    assert member["member_metadata"]["topics"] == [topic]
    assert member["member_assignment"]["assigned_partitions"] == [
        {"topic": topic, "partitions": [0, 1, 2]}]
    # ListGroups v5 (advertised as Kafka 3.x does) adds the group type: every kstore group is
    # a classic one.
    assert {"group_id": group, "protocol_type": "consumer", "group_state": "Stable",
            "group_type": "classic"} in listed
    assert {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic} == {
        0: 1, 1: 1, 2: 1}
    assert after_close["group_state"] == "Empty" and after_close["members"] == []


def test_commits_are_shared_between_the_store_and_the_wire(kserver, tmp_path):
    data = tmp_path / "shared"
    with kstore.open(data) as store:
        store.create_topic("shared", 1)
        p = store.producer()
        p.send_many("shared", [b"s%d" % i for i in range(10)], partition=0)
        p.close()
    srv = kserver(*FAST_GROUPS, data=data)
    tp = TopicPartition("shared", 0)

    # Remote commit -> embedded API.
    def remote_commit():
        c = KafkaConsumer(group_id="wire", bootstrap_servers=srv.bootstrap, **GROUP_CONF)
        try:
            c.assign([tp])
            c.commit({tp: OffsetAndMetadata(7, "from the wire", -1)})
            return c.committed(tp)
        finally:
            c.close()

    assert in_thread(remote_commit) == 7
    srv.stop()
    with kstore.open(data) as store:
        assert store.committed("wire", "shared", 0) == 7
        (row,) = store.describe_group("wire")["partitions"]
        assert row["metadata"] == "from the wire" and row["lag"] == 3
        # Embedded commit -> remote consumer.
        emb = store.consumer(group="embedded", topics=["shared"], auto_offset_reset="earliest")
        emb.commit({("shared", 0): 4})
        emb.close()
        assert store.committed("embedded", "shared", 0) == 4
    srv.start(srv.port)

    def remote_resume():
        c = group_member(srv.bootstrap, "shared", "embedded")
        try:
            committed = c.committed(tp)
            got = poll_records(c, 6, settle=0.3)
            return committed, got
        finally:
            c.close()

    committed, got = in_thread(remote_resume)
    assert committed == 4
    assert [(r.offset, r.value) for r in got] == [(i, b"s%d" % i) for i in range(4, 10)]


# ==============================================================================================
# SASL


@pytest.fixture
def sasl_server(kserver, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("alice:alice-secret\nbob:bob-secret\n")
    return kserver("--sasl-users", str(users), *FAST_GROUPS)


def sasl_conf(mechanism, user="alice", password="alice-secret", **extra):
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
            "sasl_plain_username": user, "sasl_plain_password": password, **extra}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("handshake", ["v1", "v0-raw"])
def test_sasl(sasl_server, monkeypatch, mechanism, handshake):
    from kafka.protocol.sasl import SaslBytesRequest

    srv = sasl_server
    raw_tokens: list[bytes] = []  # the bare v0 token frames kafka-python sends
    encode = SaslBytesRequest.encode

    def counting_encode(self, *args, **kwargs):
        raw_tokens.append(self._data)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(SaslBytesRequest, "encode", counting_encode)
    # api_version (0, 11) makes kafka-python negotiate SaslHandshake v0, whose tokens travel as
    # bare frames (what kafka-python 2.0.x and aiokafka <= 0.12 always do), with RecordBatch v2.
    extra = {"api_version": (0, 11)} if handshake == "v0-raw" else {}
    conf = sasl_conf(mechanism, **extra)
    topic = f"sasl-{mechanism}-{handshake}"

    def run():
        metas = produce(srv.bootstrap, topic, [(0, b"k%d" % i, b"v%d" % i) for i in range(5)],
                        acks="all", **conf)
        got = read_all(srv.bootstrap, topic, [0], **conf)
        return metas, got

    metas, got = in_thread(run)
    assert [m.offset for m in metas] == list(range(5))
    assert [(r.key, r.value) for r in got] == [(b"k%d" % i, b"v%d" % i) for i in range(5)]
    assert "authenticated as alice" in srv.log
    if handshake == "v0-raw":
        assert raw_tokens
        if mechanism == "PLAIN":
            assert raw_tokens[0] == b"alice\0alice\0alice-secret"
    else:
        assert raw_tokens == []

    def wrong_password():
        with pytest.raises(kafka.errors.KafkaError):
            p = KafkaProducer(bootstrap_servers=srv.bootstrap, max_block_ms=3000,
                              bootstrap_timeout_ms=1000, request_timeout_ms=3000,
                              **sasl_conf(mechanism, password="wrong", **extra))
            try:
                p.send(topic, b"never").get(5)
            finally:
                p.close(5)

    in_thread(wrong_password)
    srv.wait_log(r"SASL authentication from 127\.0\.0\.1:\d+ failed")


class Raw:
    """Frames by hand: Kafka requests (kstore.server.protocol.encode_request) and bare tokens."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.corr = 0

    def request(self, key, version, body):
        self.corr += 1
        self.sock.sendall(protocol.encode_request(key, version, self.corr, body, "raw-sasl"))
        frame = self.frame()
        (corr,) = struct.unpack_from(">i", frame)
        assert corr == self.corr
        pos = 5 if protocol.is_flexible(key, version) and key != 18 else 4
        return protocol.decode(key, True, version, frame, pos)

    def token(self, data):
        self.sock.sendall(struct.pack(">i", len(data)) + data)
        return self.frame()

    def frame(self):
        return read_frame(self.sock)

    def _exact(self, n):
        return recv_exact(self.sock, n)

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self):
        self.sock.close()


def test_raw_v0_sasl_tokens_by_hand(sasl_server):
    from kafka.net.sasl.scram import ScramClient

    srv = sasl_server
    metadata_v1 = {"topics": None}

    # PLAIN: handshake v0, then the token as a bare frame; success is the empty frame 00000000.
    r = Raw(srv.port)
    res = r.request(17, 0, {"mechanism": "PLAIN"})
    assert res["error_code"] == 0
    assert set(res["mechanisms"]) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
    token = b"alice\0alice\0alice-secret"  # kafka-python's form: authzid = user
    r.sock.sendall(struct.pack(">i", len(token)) + token)
    assert r._exact(4) == b"\x00\x00\x00\x00"
    md = r.request(3, 1, metadata_v1)
    assert [b["port"] for b in md["brokers"]] == [srv.port]
    r.close()

    # SCRAM-SHA-512: both server messages come back as bare frames.
    r = Raw(srv.port)
    assert r.request(17, 0, {"mechanism": "SCRAM-SHA-512"})["error_code"] == 0
    client = ScramClient("bob", "bob-secret", "SCRAM-SHA-512")
    server_first = r.token(client.first_message())
    assert server_first.startswith(b"r=" + client.nonce)
    client.process_server_first_message(server_first)
    server_final = r.token(client.final_message())
    client.process_server_final_message(server_final)  # raises on a bad server signature
    assert server_final.startswith(b"v=")
    assert r.request(3, 1, metadata_v1)["brokers"]
    r.close()

    # A wrong password: the connection is closed (v0 has no error frame) and the log says why.
    r = Raw(srv.port)
    assert r.request(17, 0, {"mechanism": "PLAIN"})["error_code"] == 0
    token = b"\0alice\0not-this!"  # librdkafka's form: empty authzid
    r.sock.sendall(struct.pack(">i", len(token)) + token)
    assert r.closed()
    r.close()
    srv.wait_log(r"closing connection from .*SASL authentication failed")

    # An unknown mechanism: error 33 with the list, then closed.
    r = Raw(srv.port)
    res = r.request(17, 1, {"mechanism": "GSSAPI"})
    assert res["error_code"] == 33 and "PLAIN" in res["mechanisms"]
    assert r.closed()
    r.close()

    # SaslAuthenticate without a handshake is out of sequence: 34, then closed.
    r = Raw(srv.port)
    res = r.request(36, 1, {"auth_bytes": b"\0alice\0alice-secret"})
    assert res["error_code"] == 34
    assert r.closed()
    r.close()
