"""confluent-kafka (the bundled, current librdkafka) against ``kstore serve``: the idempotent
producer with every codec, a two-member consumer group that splits partitions and hands them
over without losing or repeating a record, and the AdminClient (kafka-protocol.md section 9)."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

import kstore
from tests.server.conftest import wait_until

ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)

FAST_GROUPS = ("--group-initial-rebalance-delay-ms", "0")
TIMEOUT = 30.0


def produce_all(bootstrap, topic, records, **conf):
    """Produce (partition, key, value) records; return the delivery reports in send order."""
    reports: list = []
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 20000,
                  **conf})
    for part, key, value in records:
        p.produce(topic, value=value, key=key, partition=part,
                  on_delivery=lambda err, msg: reports.append(
                      (err, msg.partition(), msg.offset(), msg.key(), msg.value())))
        p.poll(0)
    left = p.flush(TIMEOUT)
    assert left == 0, f"{left} messages not delivered in {TIMEOUT}s"
    return reports


def read_partitions(bootstrap, topic, partitions):
    """Everything in the partitions, from the beginning to the end, as {p: [(off, key, value)]}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-unused",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: dict[int, list] = {p: [] for p in partitions}
        at_end: set[int] = set()
        deadline = threading.Event()
        timer = threading.Timer(TIMEOUT, deadline.set)
        timer.start()
        try:
            while at_end != set(partitions):
                assert not deadline.is_set(), f"reading {topic} took over {TIMEOUT}s: {at_end}"
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                    at_end.add(msg.partition())
                    continue
                out[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
        finally:
            timer.cancel()
        return out
    finally:
        c.close()


# ==============================================================================================
# Idempotent producer


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_producer_every_codec(kserver, codec):
    srv = kserver()
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    topic = f"idem-{codec}"
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(
        TIMEOUT)
    records = [(i % 2, b"k%d" % i, b"%s value %d " % (codec.encode(), i) + b"z" * (i % 300))
               for i in range(400)]
    reports = produce_all(srv.bootstrap, topic, records, **{
        "enable.idempotence": True, "compression.type": codec, "acks": "all",
        "batch.num.messages": 40})
    assert [r[0] for r in reports if r[0] is not None] == []
    assert len(reports) == len(records)
    # Per partition, the reports come back in send order with offsets 0, 1, 2, ...
    by_part: dict[int, list] = defaultdict(list)
    for _, part, off, key, value in reports:
        by_part[part].append((off, key, value))
    for part in (0, 1):
        sent = [(k, v) for p, k, v in records if p == part]
        assert by_part[part] == [(i, k, v) for i, (k, v) in enumerate(sent)]
    # Read back exactly once, in order.
    got = read_partitions(srv.bootstrap, topic, [0, 1])
    assert got == {p: by_part[p] for p in (0, 1)}
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        for part in (0, 1):
            lg = store.partition(topic, part)
            assert lg.log_end_offset == 200
            batches = list(lg.read(0, 1 << 24).batches())
            assert len(batches) > 1
            assert {b.compression for b in batches} == {codec}
            assert {b.producer_epoch for b in batches} == {0}
            (pid,) = {b.producer_id for b in batches}
            assert pid >= 0
            # sequences continue batch after batch
            seq = 0
            for b in batches:
                assert b.base_sequence == seq
                seq += b.last_offset - b.base_offset + 1


# ==============================================================================================
# A two-member group


class Member(threading.Thread):
    """One group member in its own thread: commits each record after taking it."""

    def __init__(self, name, bootstrap, topic, group):
        super().__init__(name=name, daemon=True)
        self.conf = {"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                     "partition.assignment.strategy": "range"}
        self.topic = topic
        self.assignments: list[list[int]] = []
        self.revocations: list[list[int]] = []
        self.consumed: list[tuple[int, int, bytes]] = []
        # Leave the group once this many records have been taken in all. An absolute count, so
        # a record taken while the test sets it (this thread may be inside commit()) is not
        # counted against it.
        self.leave_at: int | None = None
        self.halt = threading.Event()
        self.closed = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        c = Consumer(self.conf)
        try:
            c.subscribe([self.topic],
                        on_assign=lambda _c, ps: self.assignments.append(
                            sorted(p.partition for p in ps)),
                        on_revoke=lambda _c, ps: self.revocations.append(
                            sorted(p.partition for p in ps)))
            while not self.halt.is_set():
                msg = c.poll(0.1)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                self.consumed.append((msg.partition(), msg.offset(), msg.value()))
                c.commit(message=msg, asynchronous=False)
                if self.leave_at is not None and len(self.consumed) >= self.leave_at:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            c.close()  # commits nothing more (manual commits) and leaves the group
            self.closed.set()

    def latest(self):
        return self.assignments[-1] if self.assignments else None


def test_group_splits_partitions_and_hands_over_without_loss(kserver):
    srv = kserver(*FAST_GROUPS)
    topic, group = "handover", "g2"
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(
        TIMEOUT)
    produced: dict[tuple[int, int], bytes] = {}

    def produce_round(n):
        recs = [(p, None, b"r%d-p%d-%d" % (n, p, i)) for i in range(10) for p in range(4)]
        for err, part, off, _, value in produce_all(srv.bootstrap, topic, recs):
            assert err is None
            produced[(part, off)] = value

    a = Member("member-a", srv.bootstrap, topic, group)
    b = Member("member-b", srv.bootstrap, topic, group)
    members = (a, b)
    try:
        a.start()
        wait_until(lambda: a.latest() == [0, 1, 2, 3], TIMEOUT, "member a to get all 4")
        b.start()

        def split():
            la, lb = a.latest(), b.latest()
            return (la is not None and lb is not None and len(la) == 2 and len(lb) == 2
                    and set(la) | set(lb) == {0, 1, 2, 3})

        wait_until(split, TIMEOUT, f"the two members to split: {a.assignments} {b.assignments}")
        a_parts, b_parts = set(a.latest()), set(b.latest())

        produce_round(1)
        wait_until(lambda: len(a.consumed) + len(b.consumed) >= 40, TIMEOUT,
                   "round 1 to be consumed")
        assert {p for p, _, _ in a.consumed} == a_parts
        assert {p for p, _, _ in b.consumed} == b_parts
        b_round1 = len(b.consumed)

        # B takes 3 more records, commits them and leaves; A must take over its partitions
        # at B's commits.
        b.leave_at = b_round1 + 3
        produce_round(2)
        assert b.closed.wait(TIMEOUT), "member b did not stop"
        assert b.error is None, repr(b.error)
        assert len(b.consumed) == b_round1 + 3
        wait_until(lambda: a.latest() == [0, 1, 2, 3] and len(a.assignments) >= 3, TIMEOUT,
                   f"member a to get all 4 back: {a.assignments}")
        produce_round(3)
        wait_until(lambda: len(a.consumed) + len(b.consumed) >= 120 or a.error, TIMEOUT,
                   "rounds 2 and 3 to be consumed")
        a.halt.set()
        assert a.closed.wait(TIMEOUT)
    finally:
        for m in members:
            m.halt.set()
        for m in members:
            m.join(TIMEOUT)
    assert a.error is None, repr(a.error)
    assert a.assignments[0] == [0, 1, 2, 3] and a.assignments[-1] == [0, 1, 2, 3]
    assert sorted(a.assignments[1]) == sorted(a_parts)
    assert b.assignments == [sorted(b_parts)]
    # Every record exactly once, with the value produced there.
    seen = [(p, o) for p, o, _ in a.consumed + b.consumed]
    assert len(seen) == len(set(seen)), "a record was consumed twice"
    assert set(seen) == set(produced), "a record was lost"
    assert all(produced[(p, o)] == v for p, o, v in a.consumed + b.consumed)
    # A picked up each of B's partitions right after B's last commit.
    for p in b_parts:
        b_last = max(o for q, o, _ in b.consumed if q == p)
        a_first = min((o for q, o, _ in a.consumed if q == p), default=None)
        assert a_first == b_last + 1, (p, b_last, a_first)
    # The group's commits, through the AdminClient and through the embedded API.
    admin_offsets = admin.list_consumer_group_offsets(
        [ck.ConsumerGroupTopicPartitions(group)])[group].result(TIMEOUT)
    assert {tp.partition: tp.offset for tp in admin_offsets.topic_partitions
            if tp.topic == topic} == {p: 30 for p in range(4)}
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        assert {p: store.committed(group, topic, p) for p in range(4)} == {p: 30 for p in range(4)}


# ==============================================================================================
# AdminClient


def test_admin_client(kserver):
    srv = kserver()
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    fs = admin.create_topics([
        NewTopic("adm", num_partitions=3, replication_factor=1,
                 config={"retention.ms": "3600000", "cleanup.policy": "compact"}),
        NewTopic("adm2", num_partitions=1, replication_factor=1)], operation_timeout=10)
    for f in fs.values():
        assert f.result(TIMEOUT) is None
    # Refusals carry Kafka's error codes.
    with pytest.raises(KafkaException) as ei:
        admin.create_topics([NewTopic("adm", num_partitions=1)])["adm"].result(TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(KafkaException) as ei:
        admin.create_topics([NewTopic("rf3", num_partitions=1, replication_factor=3)])[
            "rf3"].result(TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR

    md = admin.list_topics(timeout=TIMEOUT)
    assert {"adm", "adm2"} <= set(md.topics) and "rf3" not in md.topics
    assert sorted(md.topics["adm"].partitions) == [0, 1, 2]
    assert md.brokers[1].host == "127.0.0.1" and md.brokers[1].port == srv.port
    assert md.controller_id == 1

    res = ConfigResource(ConfigResource.Type.TOPIC, "adm")
    entries = admin.describe_configs([res])[res].result(TIMEOUT)
    assert entries["retention.ms"].value == "3600000"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not entries["retention.ms"].is_default
    assert entries["cleanup.policy"].value == "compact"
    assert entries["segment.bytes"].is_default
    assert entries["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    bentries = admin.describe_configs([broker])[broker].result(TIMEOUT)
    assert bentries["num.partitions"].value == "1"
    assert bentries["auto.create.topics.enable"].value == "true"

    assert admin.create_partitions([NewPartitions("adm", 5)])["adm"].result(TIMEOUT) is None
    assert sorted(admin.list_topics(timeout=TIMEOUT).topics["adm"].partitions) == [0, 1, 2, 3, 4]
    with pytest.raises(KafkaException) as ei:
        admin.create_partitions([NewPartitions("adm", 2)])["adm"].result(TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    cluster = admin.describe_cluster().result(TIMEOUT)
    assert cluster.controller.id == 1 and [n.id for n in cluster.nodes] == [1]

    assert admin.delete_topics(["adm2"], operation_timeout=10)["adm2"].result(TIMEOUT) is None
    topics = admin.list_topics(timeout=TIMEOUT).topics
    assert "adm2" not in topics and "adm" in topics
    with pytest.raises(KafkaException) as ei:
        admin.delete_topics(["adm2"])["adm2"].result(TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        assert "adm2" not in store.topics()
        assert store.partitions_for("adm") == 5
        assert store.topic_config("adm")["retention.ms"] == 3600000


# ==============================================================================================
# SASL (the bundled librdkafka: SaslHandshake v1 + SaslAuthenticate)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl(kserver, tmp_path, mechanism):
    users = tmp_path / "users.txt"
    users.write_text("alice:alice-secret\n")
    srv = kserver("--sasl-users", str(users))
    auth = {"security.protocol": "sasl_plaintext", "sasl.mechanisms": mechanism,
            "sasl.username": "alice", "sasl.password": "alice-secret"}
    topic = f"sasl-{mechanism}"
    reports = produce_all(srv.bootstrap, topic, [(0, b"k%d" % i, b"v%d" % i) for i in range(5)],
                          **auth)
    assert [(err, off) for err, _, off, _, _ in reports] == [(None, i) for i in range(5)]
    c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "sasl-reader",
                  "auto.offset.reset": "earliest", "enable.partition.eof": True, **auth})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        while True:
            msg = c.poll(TIMEOUT)
            assert msg is not None, "no message or EOF"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                break
            got.append((msg.key(), msg.value()))
    finally:
        c.close()
    assert got == [(b"k%d" % i, b"v%d" % i) for i in range(5)]
    assert "authenticated as alice" in srv.log
    admin = AdminClient({"bootstrap.servers": srv.bootstrap, **auth, "sasl.password": "wrong"})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    srv.wait_log(r"SASL authentication from 127\.0\.0\.1:\d+ failed")
