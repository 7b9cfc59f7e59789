"""What only ``kstore.connect`` has: reaching (or not) a cluster, ``kstore.open("kafka://")``,
client configs, delivery failures found after send."""

from __future__ import annotations

import socket
import time

import pytest

import kstore
from kstore import errors
from kstore.cluster import ClusterStore
from tests.server.conftest import wait_until

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def test_unreachable_broker_fails_in_bounded_time():
    start = time.monotonic()
    with pytest.raises((errors.NetworkError, errors.RequestTimedOutError)) as ei:
        kstore.connect(f"kafka://127.0.0.1:{_closed_port()}", default_api_timeout_ms=1500)
    assert time.monotonic() - start < 30  # a guard against a hang, not a timing threshold
    assert "127.0.0.1" in str(ei.value)


def test_broker_gone_after_connect(kserver):
    srv = kserver("--no-auto-create")
    store = kstore.connect(f"kafka://{srv.bootstrap}", default_api_timeout_ms=1000)
    store.create_topic("t")
    srv.stop()
    # groups() first: librdkafka answered it with an empty list and an error beside it, which
    # ClusterStore once took for "no groups". topics() last: a metadata response librdkafka had
    # in flight when the broker stopped may still answer a call made at once.
    for call in (store.groups, lambda: store.create_topic("u"), store.topics):
        with pytest.raises((errors.NetworkError, errors.RequestTimedOutError)):
            call()
    store.close()


def test_open_kafka_url_is_connect(connect_url):
    with kstore.open(connect_url) as s:
        assert isinstance(s, ClusterStore)
        assert isinstance(s.topics(), list)
    with kstore.open(connect_url, client_id="named", default_api_timeout_ms=5000) as s:
        assert s.config["client.id"] == "named" and s.timeout_s == 5


@pytest.mark.parametrize("kwargs", [{"read_only": True}, {"exclusive": True},
                                    {"auto_create_topics": True}, {"num_partitions": 3},
                                    {"retention_check_interval_ms": 0}])
def test_open_kafka_url_refuses_local_arguments(connect_url, kwargs):
    with pytest.raises(errors.InvalidConfigError, match="cluster"):
        kstore.open(connect_url, **kwargs)


def test_bad_client_config(connect_url):
    with pytest.raises(errors.InvalidConfigError):
        kstore.connect(connect_url, no_such_property="x")
    with pytest.raises(errors.InvalidConfigError):
        kstore.connect(connect_url, default_api_timeout_ms=0)
    with pytest.raises(errors.InvalidConfigError):
        kstore.connect("kafka://nohost")


def test_delivery_failure_is_raised_at_flush(connect_url):
    """The broker refuses a batch the producer's cached metadata let through: the error comes
    back at flush (and the next send), as the kstore class, not silently."""
    with kstore.connect(connect_url) as a, kstore.connect(connect_url) as b:
        t = f"delivery-{time.monotonic_ns()}"
        a.create_topic(t)
        prod = a.producer(linger_ms=0)
        prod.send(t, b"fits")
        prod.flush()
        b.alter_topic_config(t, {"max.message.bytes": 200})  # a does not know yet
        prod.send(t, b"x" * 1000)
        with pytest.raises(errors.RecordTooLargeError, match="not delivered"):
            prod.flush()
        prod.flush()  # reported once
        calls = []
        prod.send(t, b"y" * 1000, on_delivery=lambda err, md: calls.append((err, md)))
        prod.flush()  # the callback was told (as the embedded producer does)
        assert len(calls) == 1 and isinstance(calls[0][0], errors.RecordTooLargeError)
        assert calls[0][1] is None
        prod.send(t, b"z" * 1000)
        # Until librdkafka reports the failure (served by the producer's poll), nothing knows.
        wait_until(lambda: prod._p.poll(0.05) >= 0 and prod.pending_records == 0, 30,
                   "the delivery report")
        with pytest.raises(errors.RecordTooLargeError, match="1 record"):
            prod.send(t, b"ok")  # raised by the next send as well
        prod.flush()


def test_producer_settings_map_to_librdkafka(connect_url):
    with kstore.connect(connect_url) as s:
        cfg = s.producer().client_config
        assert cfg["enable.idempotence"] is True  # retries add no duplicates
        assert (cfg["linger.ms"], cfg["batch.size"], cfg["compression.type"]) == (5, 16384, "none")
        cfg = s.producer(linger_ms=0, batch_size=1000, compression="lz4").client_config
        assert (cfg["linger.ms"], cfg["batch.size"], cfg["compression.type"]) == (0, 1000, "lz4")
        assert s.producer().client_config["delivery.report.only.error"] is True
    with kstore.connect(connect_url, enable_idempotence=False) as s:
        assert s.producer().client_config["enable.idempotence"] is False  # the caller's word
    with kstore.connect(connect_url) as s:
        with pytest.raises(errors.UnsupportedCompressionTypeError):
            s.producer(compression="brotli")


def test_success_reports_start_with_the_first_callback(connect_url):
    """Only failures are reported by librdkafka until a send asks for its report; then the
    producer switches (flushing first): every record arrives, in order, and the callbacks
    get their metadata."""
    with kstore.connect(connect_url) as s:
        t = f"reports-{time.monotonic_ns()}"
        s.create_topic(t)
        prod = s.producer(linger_ms=50)
        for i in range(100):
            prod.send(t, b"%d" % i)
        seen = []
        prod.send(t, b"100", on_delivery=lambda err, md: seen.append((err, md.offset)))
        assert prod.client_config["delivery.report.only.error"] is False
        for i in range(101, 200):
            prod.send(t, b"%d" % i, on_delivery=lambda err, md: seen.append((err, md.offset)))
        prod.flush()
        assert seen == [(None, off) for off in range(100, 200)]
        c = s.consumer(group=None, auto_offset_reset="earliest")
        c.assign([(t, 0)])
        got = []
        wait_until(lambda: got.extend(c.poll(timeout=0.2)) or len(got) >= 200, 30, "200 records")
        assert [r.value for r in got] == [b"%d" % i for i in range(200)]


def test_send_many_goes_as_idempotent_batches_over_plaintext_only(connect_url, cluster_server):
    """send_many's records go as batches C encoded, through kstore's batch producer: one
    producer id, sequences that continue call after call, the producer's compression."""
    from kstore._batchproducer import BatchProducer, usable

    t = f"batches-{time.monotonic_ns()}"
    with kstore.connect(connect_url) as s:
        s.create_topic(t, 1)
        with s.producer(compression="lz4", batch_size=4096) as prod:
            prod.send_many(t, [b"v%d" % i for i in range(500)], partition=0)
            prod.send_many(t, [b"w%d" % i for i in range(500)], partition=0)
            assert isinstance(prod._batcher, BatchProducer)
        with s.producer(transactional_id=t) as tx:
            assert not tx._batches_ok()  # librdkafka's transactional producer owns it
    with kstore.open(cluster_server.data, read_only=True) as st:
        batches = list(st.partition(t, 0).read(0, 1 << 24).batches())
    assert len(batches) > 2 and {b.compression for b in batches} == {"lz4"}
    assert len({b.producer_id for b in batches}) == 1 and batches[0].producer_id >= 0
    assert [b.base_sequence for b in batches] == [b.base_offset for b in batches]
    assert all(b.size <= 4096 + 100 for b in batches)
    assert usable({"bootstrap.servers": "h:1"})
    assert usable({"security.protocol": "PLAINTEXT"})
    assert not usable({"security.protocol": "SASL_PLAINTEXT"})
    assert not usable({"ssl.ca.location": "/x"}) and not usable({"sasl.mechanism": "PLAIN"})

