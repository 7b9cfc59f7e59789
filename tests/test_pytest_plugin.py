"""kstore.pytest_plugin inside other people's suites: generated test projects run by pytest in
a subprocess (with the plugin loaded by its pytest11 entry point, as after ``pip install
kstore``), under pytest-xdist and pytest-asyncio, and pointed at an external broker with
``--kafka-bootstrap``. Each run is bounded by a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kstore.testing
from tests.conftest import need

RUN_TIMEOUT = 120.0  # seconds for one generated suite (a hang fails the test)


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    try:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "-p", "no:randomly", "-rA", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the generated suite hung for {RUN_TIMEOUT:.0f}s:\n{exc.stdout!r}")


def write(project: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (project / name).write_text(textwrap.dedent(text))


def test_importing_the_plugin_loads_no_server_numpy_or_compiled_core():
    # pytest imports the plugin in every run where kstore is installed, Kafka tests or not.
    code = ("import sys, kstore.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'kstore')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=True)
    assert done.stdout.split() == ["['kstore',", "'kstore.errors',", "'kstore.pytest_plugin']"]


SUITE = {
    "conftest.py": """
        import json, os
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def record_session_broker(kafka_broker_session):
            # Every xdist worker runs tests, so each writes down its session broker.
            name = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(f"session-broker-{name}.json", "w") as f:
                json.dump([kafka_broker_session.bootstrap_servers,
                           str(kafka_broker_session.data_dir)], f)
    """,
    "test_isolated.py": """
        import pytest
        from confluent_kafka import Producer

        def produce(bootstrap, topic, value):
            p = Producer({"bootstrap.servers": bootstrap})
            p.produce(topic, value)
            assert p.flush(30) == 0

        @pytest.mark.parametrize("i", range(6))
        def test_same_topic_name_fresh_broker(kafka_broker, kafka_bootstrap, i):
            assert kafka_broker.store.topics() == []
            produce(kafka_bootstrap, "orders", b"from test %d" % i)
            assert [r.value for r in kafka_broker.wait_for("orders", 1)] == [b"from test %d" % i]

        @pytest.mark.parametrize("i", range(4))
        def test_session_broker(kafka_broker_session, i):
            produce(kafka_broker_session.bootstrap_servers, "seen-%d" % i, b"x")
            assert len(kafka_broker_session.wait_for("seen-%d" % i, 1)) == 1

        @pytest.mark.kafka_broker(auto_create_topics=False)
        def test_marker(kafka_broker):
            with pytest.raises(Exception, match="does not exist"):
                kafka_broker.records("missing")
            assert kafka_broker.store.topics() == []
    """,
    "test_async.py": """
        import pytest
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        @pytest.mark.asyncio
        @pytest.mark.parametrize("i", range(2))
        async def test_aiokafka_round_trip(kafka_broker, i):
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
            await producer.start()
            await producer.send_and_wait("events", b"async %d" % i)
            await producer.stop()
            consumer = AIOKafkaConsumer("events", bootstrap_servers=kafka_broker.bootstrap_servers,
                                        auto_offset_reset="earliest", group_id="g")
            await consumer.start()
            try:
                assert (await consumer.getone()).value == b"async %d" % i
            finally:
                await consumer.stop()
            assert [r.value for r in kafka_broker.records("events")] == [b"async %d" % i]
    """,
}


def test_suite_under_xdist_and_asyncio_one_session_broker_per_worker(tmp_path):
    need("xdist", "test")
    need("pytest_asyncio", "test")
    need("aiokafka", "test")
    need("confluent_kafka", "test")
    write(tmp_path, SUITE)
    done = run_pytest(tmp_path, "-n", "2", "--dist", "load")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "13 passed" in done.stdout, done.stdout[-3000:]
    seen = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("session-broker-*.json"))]
    assert len(seen) == 2, seen  # gw0 and gw1; the controller runs no test
    (addr0, dir0), (addr1, dir1) = seen
    assert addr0 != addr1 and dir0 != dir1


EXTERNAL = {
    "test_external.py": """
        import pytest
        from confluent_kafka import Producer
        from kstore.errors import ExternalBrokerError

        def test_records_create_topic_and_wait_for(kafka_broker, kafka_bootstrap):
            kafka_broker.create_topic("ext-made", partitions=2)
            p = Producer({"bootstrap.servers": kafka_bootstrap})
            for i in range(4):
                p.produce("ext-made", b"v%d" % i, partition=i % 2)
            assert p.flush(30) == 0
            got = kafka_broker.wait_for("ext-made", 4)
            assert [(r.topic, r.partition, r.offset, r.value) for r in got] == [
                ("ext-made", 0, 0, b"v0"), ("ext-made", 0, 1, b"v2"),
                ("ext-made", 1, 0, b"v1"), ("ext-made", 1, 1, b"v3")]
            p.produce("ext-kept", b"auto-created, not deleted")
            assert p.flush(30) == 0

        def test_store_says_why_not(kafka_broker):
            with pytest.raises(ExternalBrokerError, match="external one at .*--kafka-bootstrap"):
                kafka_broker.store

        @pytest.mark.kafka_broker(sasl_users={"a": "b"})
        def test_needs_its_own_broker(kafka_broker):
            raise AssertionError("must be skipped against an external broker")
    """,
}


def test_kafka_bootstrap_option_points_the_fixtures_at_an_external_broker(tmp_path):
    need("confluent_kafka", "test")
    write(tmp_path, EXTERNAL)
    with kstore.testing.broker() as external:
        done = run_pytest(tmp_path, "--kafka-bootstrap", external.bootstrap_servers)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
        assert "2 passed, 1 skipped" in done.stdout, done.stdout[-3000:]
        assert "has its own settings" in done.stdout
        # The topic the test created was deleted after it; one a client auto-created was not.
        assert external.store.topics() == ["ext-kept"]


class _Options:
    def __init__(self, **options: object) -> None:
        self.options = options

    def getoption(self, name: str) -> object:
        return self.options[name]


def test_kafka_config_settings_reach_the_external_clients_or_are_refused():
    from kstore.errors import InvalidConfigError
    from kstore.pytest_plugin import _external

    ext = _external(_Options(kafka_bootstrap="kafka:9093", kafka_config=[
        "security.protocol=SASL_SSL", "sasl.password=a=b"]))
    assert ext.client_config() == {"bootstrap.servers": "kafka:9093",
                                   "security.protocol": "SASL_SSL", "sasl.password": "a=b"}
    assert ext.security_protocol == "SASL_SSL"
    assert _external(_Options(kafka_bootstrap=None, kafka_config=[])) is None
    with pytest.raises(InvalidConfigError, match="--kafka-config 'nokey': expected KEY=VALUE"):
        _external(_Options(kafka_bootstrap="kafka:9093", kafka_config=["nokey"]))
