"""Kafka transactions through ``kstore serve`` with confluent-kafka (librdkafka): commit and
abort seen by read_committed and read_uncommitted consumers, send_offsets_to_transaction,
zombie fencing, the LSO held by an open transaction, restarts mid-transaction, timeouts, and
DescribeTransactions/ListTransactions (kafka-protocol.md, kafka-storage.md 9.3)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.server.conftest import KServer, wait_until
from tests.server.rawclient import RawClient

ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("txn")
    s = KServer(d / "data", ["--group-initial-rebalance-delay-ms", "0"], None, d, "server")
    s.start()
    yield s
    s.stop(check=False)
    KServer.check_log(s.log)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def txn_producer(bootstrap: str, tid: str, **conf) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 5,
                  "message.timeout.ms": 20000, **conf})
    p.init_transactions(TIMEOUT)
    return p


def read_all(bootstrap: str, topic: str, isolation: str, partitions=(0,)) -> list[bytes]:
    """Every record value up to the end (for read_committed: the LSO), in offset order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": name("reader"),
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest", "isolation.level": isolation})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[bytes] = []
        eof: set[int] = set()
        deadline = time.monotonic() + TIMEOUT
        while eof != set(partitions):
            assert time.monotonic() < deadline, f"reading {topic} took over {TIMEOUT}s"
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                eof.add(msg.partition())
                continue
            out.append(msg.value())
        return out
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        (tp,) = c.committed([TopicPartition(topic, partition)], timeout=TIMEOUT)
        return tp.offset
    finally:
        c.close()


def test_commit_and_abort_as_each_isolation_level_sees_them(srv):
    topic = name("t")
    p = txn_producer(srv.bootstrap, name("tid"))
    for batch, commit in ((b"a", True), (b"b", False), (b"c", True)):
        p.begin_transaction()
        for i in range(5):
            p.produce(topic, value=b"%s%d" % (batch, i), partition=0)
        assert p.flush(TIMEOUT) == 0  # sent: abort_transaction would drop unsent ones
        if commit:
            p.commit_transaction(TIMEOUT)
        else:
            p.abort_transaction(TIMEOUT)
    want = [b"a%d" % i for i in range(5)] + [b"c%d" % i for i in range(5)]
    assert read_all(srv.bootstrap, topic, "read_committed") == want
    every = read_all(srv.bootstrap, topic, "read_uncommitted")
    assert every == [b"%s%d" % (x, i) for x in (b"a", b"b", b"c") for i in range(5)]


def test_send_offsets_to_transaction_commits_only_with_the_transaction(srv):
    src, dst, group = name("in"), name("out"), name("g")
    plain = Producer({"bootstrap.servers": srv.bootstrap})
    for i in range(10):
        plain.produce(src, value=b"%d" % i, partition=0)
    assert plain.flush(TIMEOUT) == 0
    c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed"})
    p = txn_producer(srv.bootstrap, name("tid"))
    try:
        c.subscribe([src])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 10:
            assert time.monotonic() < deadline
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append(m)
        for end, commit in ((4, False), (10, True)):
            p.begin_transaction()
            for m in got[:end]:
                p.produce(dst, value=m.value(), partition=0)
            p.send_offsets_to_transaction([TopicPartition(src, 0, end)],
                                          c.consumer_group_metadata(), TIMEOUT)
            if commit:
                p.commit_transaction(TIMEOUT)
            else:
                p.abort_transaction(TIMEOUT)
                assert committed(srv.bootstrap, group, src) < 0  # nothing committed
    finally:
        c.close()
    assert committed(srv.bootstrap, group, src) == 10
    assert read_all(srv.bootstrap, dst, "read_committed") == [b"%d" % i for i in range(10)]


def test_offsets_ahead_of_the_log_end_commit_with_the_transaction(srv):
    """Kafka takes any offset in TxnOffsetCommit: a transactional producer may commit offsets
    past what the partition holds (records of its own still in flight, an empty partition).
    kstore serve answered OFFSET_OUT_OF_RANGE, and send_offsets_to_transaction failed."""
    from confluent_kafka.admin import AdminClient, NewTopic

    src, group = name("in"), name("g")
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    admin.create_topics([NewTopic(src, 2)])[src].result(TIMEOUT)
    plain = Producer({"bootstrap.servers": srv.bootstrap})
    plain.produce(src, value=b"x", partition=0)  # partition 0 ends at 1; partition 1 is empty
    assert plain.flush(TIMEOUT) == 0
    c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    p = txn_producer(srv.bootstrap, name("tid"))
    try:
        for (at0, at1), commit in (((2000, 9), False), ((1000, 7), True)):
            p.begin_transaction()
            p.produce(src, value=b"in flight", partition=0)
            p.send_offsets_to_transaction([TopicPartition(src, 0, at0), TopicPartition(src, 1, at1)],
                                          c.consumer_group_metadata(), TIMEOUT)
            if commit:
                p.commit_transaction(TIMEOUT)
            else:
                p.abort_transaction(TIMEOUT)
                assert committed(srv.bootstrap, group, src, 0) < 0  # nothing with an abort
    finally:
        c.close()
    assert committed(srv.bootstrap, group, src, 0) == 1000
    assert committed(srv.bootstrap, group, src, 1) == 7


def test_zombie_is_fenced_and_its_transaction_aborted(srv):
    topic, tid = name("t"), name("tid")
    old = txn_producer(srv.bootstrap, tid)
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    assert old.flush(TIMEOUT) == 0
    new = txn_producer(srv.bootstrap, tid)  # bumps the epoch, aborts the open transaction
    new.begin_transaction()
    new.produce(topic, value=b"new", partition=0)
    new.commit_transaction(TIMEOUT)
    with pytest.raises(KafkaException) as exc:
        old.produce(topic, value=b"late", partition=0)
        old.commit_transaction(TIMEOUT)
    err = exc.value.args[0]
    assert err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                         KafkaError.INVALID_PRODUCER_EPOCH), err
    assert read_all(srv.bootstrap, topic, "read_committed") == [b"new"]
    assert b"late" not in read_all(srv.bootstrap, topic, "read_uncommitted")


def test_open_transaction_holds_the_last_stable_offset(srv):
    topic = name("t")
    plain = Producer({"bootstrap.servers": srv.bootstrap})
    plain.produce(topic, value=b"before", partition=0)
    assert plain.flush(TIMEOUT) == 0
    p = txn_producer(srv.bootstrap, name("tid"))
    p.begin_transaction()
    p.produce(topic, value=b"open", partition=0)
    assert p.flush(TIMEOUT) == 0
    plain.produce(topic, value=b"after", partition=0)
    assert plain.flush(TIMEOUT) == 0
    c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": name("g"),
                  "isolation.level": "read_committed"})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT)
        assert (lo, hi) == (0, 1)  # ListOffsets read_committed: latest is the LSO
    finally:
        c.close()
    assert read_all(srv.bootstrap, topic, "read_committed") == [b"before"]
    p.commit_transaction(TIMEOUT)
    assert read_all(srv.bootstrap, topic, "read_committed") == [b"before", b"open", b"after"]


def test_describe_and_list_transactions(srv):
    tid, topic = name("tid"), name("t")
    p = txn_producer(srv.bootstrap, tid)
    p.begin_transaction()
    p.produce(topic, value=b"x", partition=0)
    assert p.flush(TIMEOUT) == 0
    with RawClient(srv.port) as rc:
        (d,) = rc.call(65, 0, {"transactional_ids": [tid]})["transaction_states"]
        assert d["error_code"] == 0 and d["transaction_state"] == "Ongoing"
        assert [(t["topic"], list(t["partitions"])) for t in d["topics"]] == [(topic, [0])]
        listed = rc.call(66, 1, {"state_filters": ["Ongoing"], "producer_id_filters": [],
                                 "duration_filter": -1})
        assert tid in [t["transactional_id"] for t in listed["transaction_states"]]
        assert rc.call(65, 0, {"transactional_ids": ["nope"]})["transaction_states"][0][
            "error_code"] == 105
    p.commit_transaction(TIMEOUT)
    with RawClient(srv.port) as rc:
        (d,) = rc.call(65, 0, {"transactional_ids": [tid]})["transaction_states"]
        assert d["transaction_state"] == "CompleteCommit"


def test_client_control_batch_and_unverified_transactional_batch_refused(srv):
    from kstore.log.txn import encode_control_batch
    from kstore.records import BatchBuilder
    topic = name("t")
    Producer({"bootstrap.servers": srv.bootstrap}).produce(topic, b"x", partition=0)
    b = BatchBuilder(producer_id=12345, producer_epoch=0, base_sequence=0, transactional=True)
    b.append(b"v")
    data = b.build()
    with RawClient(srv.port) as rc:
        wait_until(lambda: rc.call(3, 1, {"topics": [{"name": topic}]})["topics"][0][
            "error_code"] == 0, what="topic")
        for raw, tid, code in ((encode_control_batch(12345, 0, True), "x", 87),
                               (data, "x", 49), (data, None, 48)):
            res = rc.call(0, 7, {"transactional_id": tid, "acks": -1, "timeout_ms": 1000,
                                 "topic_data": [{"name": topic, "partition_data": [
                                     {"index": 0, "records": raw}]}]})
            assert res["responses"][0]["partition_responses"][0]["error_code"] == code


def test_restart_mid_transaction_resumes_it(kserver):
    srv = kserver()
    topic, tid = name("t"), name("tid")
    p = txn_producer(srv.bootstrap, tid)
    p.begin_transaction()
    p.produce(topic, value=b"kept", partition=0)
    assert p.flush(TIMEOUT) == 0
    srv.kill()
    srv.restart()
    p.commit_transaction(TIMEOUT)  # the coordinator found the transaction Ongoing
    assert read_all(srv.bootstrap, topic, "read_committed") == [b"kept"]
    # A transaction a restart finds past its timeout is aborted, its producer fenced.
    q = txn_producer(srv.bootstrap, name("tid"), **{"transaction.timeout.ms": 2000,
                                                     "message.timeout.ms": 2000})
    q.begin_transaction()
    q.produce(topic, value=b"dropped", partition=0)
    assert q.flush(TIMEOUT) == 0
    srv.kill()
    srv.restart()
    srv.wait_log("has been open for .* aborting it", timeout=TIMEOUT)
    assert read_all(srv.bootstrap, topic, "read_committed") == [b"kept"]
    assert read_all(srv.bootstrap, topic, "read_uncommitted") == [b"kept", b"dropped"]
