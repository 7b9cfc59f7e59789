"""kstore.testing.broker and the pytest fixtures (kstore.pytest_plugin, loaded here by its
entry point like anywhere kstore is installed), driven by the clients people test with:
confluent-kafka, kafka-python, aiokafka, faststream's real KafkaBroker and a quixstreams
Application. The plugin's behaviour inside other suites (xdist, asyncio, --kafka-bootstrap) is
in test_pytest_plugin.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

import kstore
import kstore.testing
from kstore.errors import ClosedError, InvalidConfigError, WaitTimeoutError
from tests.conftest import need

ck = need("confluent_kafka", "test")
import confluent_kafka.admin  # noqa: E402  (ck.admin)

CLIENT_TIMEOUT = 30.0  # seconds a client may take for anything here (guards against hangs)


def produce(bootstrap: str, topic: str, items: list[tuple[int | None, bytes, bytes]],
            **conf: str) -> None:
    """(partition or None, key, value) items through one confluent-kafka producer, flushed."""
    errors: list[object] = []
    p = ck.Producer({"bootstrap.servers": bootstrap, **conf})
    for partition, key, value in items:
        kw = {} if partition is None else {"partition": partition}
        p.produce(topic, value, key=key, on_delivery=lambda e, m: e and errors.append(e), **kw)
    assert p.flush(CLIENT_TIMEOUT) == 0
    assert errors == []


def consume_group(bootstrap: str, topic: str, group: str, n: int) -> list[bytes]:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        c.commit(asynchronous=False)
    finally:
        c.close()
    return got


# ==============================================================================================
# The Broker object


def test_records_come_back_partition_by_partition_in_offset_order(kafka_broker):
    kafka_broker.create_topic("orders", partitions=3)
    items = [(p, b"k%d" % i, b"v%d-p%d" % (i, p)) for i in range(4) for p in (2, 0, 1)]
    produce(kafka_broker.bootstrap_servers, "orders", items)
    got = kafka_broker.wait_for("orders", 12)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in got] == [
        ("orders", p, i, b"k%d" % i, b"v%d-p%d" % (i, p)) for p in range(3) for i in range(4)]
    assert all(isinstance(r, kstore.Record) for r in got)
    assert kafka_broker.records("orders") == got


def test_wait_for_is_woken_by_a_produce_that_comes_later(kafka_broker):
    import threading

    late = threading.Timer(0.2, produce, (kafka_broker.bootstrap_servers, "late",
                                          [(None, b"k", b"v")]))
    late.start()
    try:
        assert [r.value for r in kafka_broker.wait_for("late", 1, timeout=CLIENT_TIMEOUT)] == [b"v"]
    finally:
        late.join()


def test_wait_for_timeout_says_what_there_was(kafka_broker):
    with pytest.raises(WaitTimeoutError, match="'nothing'.*does not exist") as exc:
        kafka_broker.wait_for("nothing", 1, timeout=0.05)
    assert isinstance(exc.value, TimeoutError) and isinstance(exc.value, kstore.KStoreError)
    produce(kafka_broker.bootstrap_servers, "few", [(None, b"k", b"v")])
    with pytest.raises(WaitTimeoutError, match="'few' did not get 2 records.*it has 1"):
        kafka_broker.wait_for("few", 2, timeout=0.05)


def test_kafka_bootstrap_is_the_broker_address(kafka_broker, kafka_bootstrap):
    assert kafka_bootstrap == kafka_broker.bootstrap_servers
    host, port = kafka_bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1"
    socket.create_connection((host, int(port)), timeout=5).close()


def test_context_manager_stops_the_server_and_removes_its_directory():
    with kstore.testing.broker() as b:
        produce(b.bootstrap_servers, "t", [(None, b"k", b"v")])
        data_dir, port = b.data_dir, b.port
        assert (data_dir / "t-0").is_dir()
    assert not data_dir.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises(ClosedError, match="is closed"):
        b.store
    b.close()  # idempotent


def test_a_given_data_directory_is_kept_with_what_was_produced(tmp_path):
    with kstore.testing.broker(tmp_path / "data") as b:
        produce(b.bootstrap_servers, "kept", [(None, b"k", b"v1"), (None, b"k", b"v2")])
    with kstore.open(tmp_path / "data") as store:
        assert [r.value for r in store.partition("kept", 0).read_records(0)] == [b"v1", b"v2"]


def test_bad_options_are_refused_saying_why(tmp_path):
    with pytest.raises(InvalidConfigError, match=r"unknown broker option\(s\) \['no_such'\]"):
        kstore.testing.broker(no_such=1).__enter__()
    with pytest.raises(InvalidConfigError, match="tls_cert and tls_key go together"):
        kstore.testing.broker(tls_cert=tmp_path / "c.pem").__enter__()
    with pytest.raises(InvalidConfigError, match="cannot load the TLS certificate"):
        kstore.testing.broker(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem").__enter__()
    assert list(tmp_path.iterdir()) == []  # no directory left by the refused ones
    with kstore.testing.broker() as b, pytest.raises(
            InvalidConfigError, match=f"cannot listen on 127.0.0.1:{b.port}: .*port=0"):
        kstore.testing.broker(tmp_path / "second", port=b.port).__enter__()
    kstore.open(tmp_path / "second", exclusive=True).close()  # the refused one let go of it


def test_groups_start_without_the_initial_rebalance_delay():
    # Kafka's default of 3 s would hold every test's first consumer poll; a test broker uses 0
    # (as Kafka's own test brokers do) unless told otherwise.
    with kstore.testing.broker() as b:
        assert b._server.coordinator.initial_rebalance_delay_ms == 0
    with kstore.testing.broker(group_initial_rebalance_delay_ms=3000) as b:
        assert b._server.coordinator.initial_rebalance_delay_ms == 3000


# ==============================================================================================
# The marker's options


@pytest.mark.kafka_broker(auto_create_topics=False)
def test_marker_turns_auto_create_off(kafka_broker):
    p = ck.Producer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                     "message.timeout.ms": 300})
    failed: list[object] = []
    p.produce("absent", b"v", on_delivery=lambda e, m: failed.append(e))
    p.flush(CLIENT_TIMEOUT)
    assert len(failed) == 1 and failed[0] is not None
    assert kafka_broker.store.topics() == []


@pytest.mark.kafka_broker(num_partitions=3)
class TestMarkerOnAClass:
    def test_class_marker_applies(self, kafka_broker):
        produce(kafka_broker.bootstrap_servers, "auto", [(None, b"k", b"v")])
        assert kafka_broker.store.partitions_for("auto") == 3

    @pytest.mark.kafka_broker(num_partitions=2)
    def test_the_tests_own_marker_wins(self, kafka_broker):
        produce(kafka_broker.bootstrap_servers, "auto", [(None, b"k", b"v")])
        assert kafka_broker.store.partitions_for("auto") == 2


@pytest.mark.kafka_broker(sasl_users={"alice": "alice-secret"})
def test_marker_turns_sasl_on(kafka_broker):
    cfg = kafka_broker.client_config()
    assert cfg["security.protocol"] == "SASL_PLAINTEXT" and cfg["sasl.username"] == "alice"
    produce(kafka_broker.bootstrap_servers, "secured", [(None, b"k", b"v")],
            **{k: v for k, v in cfg.items() if k != "bootstrap.servers"})
    assert [r.value for r in kafka_broker.wait_for("secured", 1)] == [b"v"]
    refused: list[object] = []
    admin = ck.admin.AdminClient({**cfg, "sasl.password": "wrong",
                                  "error_cb": refused.append})
    with pytest.raises(ck.KafkaException):
        admin.list_topics(timeout=0)  # times out at once, having started the connection
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while not refused and time.monotonic() < deadline:
        admin.poll(0.05)
    assert refused and refused[0].code() == ck.KafkaError._AUTHENTICATION, refused
    with pytest.raises(InvalidConfigError, match="no SASL user 'bob'"):
        kafka_broker.client_config("bob")


def test_tls(tmp_path):
    from tests.server.tlsutil import make_ca_and_cert

    ca, cert, key = make_ca_and_cert(tmp_path)
    with kstore.testing.broker(tls_cert=cert, tls_key=key) as b:
        cfg = b.client_config()
        assert cfg["security.protocol"] == "SSL"
        produce(b.bootstrap_servers, "tls", [(None, b"k", b"v")], **{
            "security.protocol": "SSL", "ssl.ca.location": str(ca)})
        assert [r.value for r in b.wait_for("tls", 1)] == [b"v"]


# ==============================================================================================
# Clients


def test_confluent_kafka_group_consumer(kafka_broker):
    produce(kafka_broker.bootstrap_servers, "clicks", [(None, b"k%d" % i, b"c%d" % i)
                                                       for i in range(5)])
    got = consume_group(kafka_broker.bootstrap_servers, "clicks", "etl", 5)
    assert got == [b"c%d" % i for i in range(5)]
    assert kafka_broker.store.committed("etl", "clicks", 0) == 5


def test_kafka_python(kafka_broker):
    kafka = need("kafka", "test")
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    for i in range(3):
        producer.send("kp", key=b"k", value=b"kp%d" % i)
    producer.flush(CLIENT_TIMEOUT)
    producer.close()
    consumer = kafka.KafkaConsumer("kp", bootstrap_servers=kafka_broker.bootstrap_servers,
                                   auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        got = [m.value for _, m in zip(range(3), consumer)]
    finally:
        consumer.close()
    assert got == [r.value for r in kafka_broker.records("kp")] == [b"kp0", b"kp1", b"kp2"]


@pytest.mark.asyncio
async def test_aiokafka_in_an_asyncio_test(kafka_broker):
    aiokafka = need("aiokafka", "test")
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait("aio", b"a%d" % i, key=b"k")
    finally:
        await producer.stop()
    consumer = aiokafka.AIOKafkaConsumer("aio", bootstrap_servers=kafka_broker.bootstrap_servers,
                                         group_id="aio-group", auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = [(await consumer.getone()).value for _ in range(3)]
    finally:
        await consumer.stop()
    assert got == [b"a0", b"a1", b"a2"]


@pytest.mark.asyncio
async def test_faststream_kafka_broker(kafka_broker, kafka_bootstrap):
    import asyncio

    faststream_kafka = need("faststream.kafka", "test")
    app_broker = faststream_kafka.KafkaBroker(kafka_bootstrap)

    @app_broker.subscriber("fs-in", group_id="fs", auto_offset_reset="earliest")
    @app_broker.publisher("fs-out")
    async def shout(body: str) -> str:
        return body.upper()

    await app_broker.start()
    try:
        for word in ("hello", "kafka"):
            await app_broker.publish(word, "fs-in")
        got = await asyncio.to_thread(kafka_broker.wait_for, "fs-out", 2, CLIENT_TIMEOUT)
    finally:
        await app_broker.stop()
    assert sorted(r.value for r in got) == [b"HELLO", b"KAFKA"]
    assert kafka_broker.store.committed("fs", "fs-in", 0) == 2


def test_quixstreams_application_at_least_once(kafka_broker, tmp_path):
    quixstreams = need("quixstreams", "streams")
    kafka_broker.create_topic("readings", partitions=2)
    kafka_broker.create_topic("scaled")  # else quixstreams waits 1 s (its poll) for it to exist

    def app_and_run(values: list[int]) -> list[object]:
        app = quixstreams.Application(
            broker_address=kafka_broker.bootstrap_servers, consumer_group="scaler",
            auto_offset_reset="earliest", state_dir=str(tmp_path / "state"),
            processing_guarantee="at-least-once")
        readings = app.topic("readings", value_deserializer="json")
        scaled = app.topic("scaled", value_serializer="json")
        app.dataframe(readings).apply(lambda v: {"n": v["n"] * 10}).to_topic(scaled)
        with app.get_producer() as producer:
            for n in values:
                producer.produce("readings", key=b"sensor-%d" % (n % 3), value=b'{"n": %d}' % n)
        return app.run(count=len(values), timeout=CLIENT_TIMEOUT)

    assert sorted(o["n"] for o in app_and_run([1, 2, 3, 4])) == [10, 20, 30, 40]
    # At-least-once: the offsets are committed once the outputs are acknowledged, so a new
    # instance of the application resumes after them and processes only the new readings.
    assert sorted(o["n"] for o in app_and_run([5, 6])) == [50, 60]
    store = kafka_broker.store
    ends = [store.partition("readings", p).log_end_offset for p in range(2)]
    assert sum(ends) == 6
    assert [store.committed("scaler", "readings", p) for p in range(2)] == ends
    assert sorted(r.value for r in kafka_broker.wait_for("scaled", 6)) == sorted(
        b'{"n":%d}' % (n * 10) for n in range(1, 7))


def test_each_test_gets_a_fresh_broker_first(kafka_broker):
    # With test_each_test_gets_a_fresh_broker_second: neither sees the other's topic or group.
    assert kafka_broker.store.topics() == []
    assert kafka_broker.store.groups() == []
    produce(kafka_broker.bootstrap_servers, "shared-name", [(None, b"k", b"first")])
    assert consume_group(kafka_broker.bootstrap_servers, "shared-name", "shared-group", 1) == [
        b"first"]


def test_each_test_gets_a_fresh_broker_second(kafka_broker):
    assert kafka_broker.store.topics() == []
    assert kafka_broker.store.groups() == []
    assert kafka_broker.store.committed("shared-group", "shared-name", 0) is None
    produce(kafka_broker.bootstrap_servers, "shared-name", [(None, b"k", b"second")])
    assert [r.value for r in kafka_broker.records("shared-name")] == [b"second"]


def test_session_broker_is_one_for_the_session(kafka_broker_session, kafka_broker):
    assert kafka_broker_session.bootstrap_servers != kafka_broker.bootstrap_servers
    assert Path(kafka_broker_session.data_dir).is_dir()
    produce(kafka_broker_session.bootstrap_servers, "session-topic", [(None, b"k", b"v")])
    assert len(kafka_broker_session.records("session-topic")) >= 1


def test_sasl_users_may_be_a_users_object():
    from kstore.server.auth import Users

    with kstore.testing.broker(sasl_users=Users.from_dict({"bob": "bob-secret"})) as b:
        assert b.security_protocol == "SASL_PLAINTEXT"
        assert "sasl.username" not in b.client_config()  # no password to give out
        cfg = {"bootstrap.servers": b.bootstrap_servers, "security.protocol": "SASL_PLAINTEXT",
               "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": "bob",
               "sasl.password": "bob-secret"}
        produce(b.bootstrap_servers, "scram", [(None, b"k", b"v")],
                **{k: v for k, v in cfg.items() if k != "bootstrap.servers"})
        assert [r.value for r in b.wait_for("scram", 1)] == [b"v"]
