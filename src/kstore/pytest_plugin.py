"""pytest fixtures for a Kafka broker (``kstore serve`` in-process), loaded by the ``pytest11``
entry point whenever kstore is installed.

Fixtures:

``kafka_broker``
    A fresh broker for one test (function scope): its own data directory, server and free
    loopback port, stopped at the end of the test. A :class:`kstore.testing.Broker`
    (``.bootstrap_servers``, ``.store``, ``.create_topic()``, ``.records()``, ``.wait_for()``).
    Options per test with the marker ``@pytest.mark.kafka_broker(sasl_users={"alice": "pw"},
    tls_cert=..., tls_key=..., auto_create_topics=False, num_partitions=3, ...)`` (the keywords
    of :func:`kstore.testing.broker`).
``kafka_broker_session``
    One broker for the whole session (one per pytest-xdist worker), default options: faster
    when tests keep to their own topic names, not isolated.
``kafka_bootstrap``
    ``kafka_broker.bootstrap_servers``, the ``host:port`` string.

A fresh broker per test was measured faster than one broker cleaned between tests and is
isolated by construction (topics, consumer groups, committed offsets, producer ids, connections
a test left open): see "A Kafka broker for tests" in the README for the figures.

``pytest --kafka-bootstrap HOST:PORT`` points the same fixtures at an external broker (real
Kafka in CI): ``records``, ``create_topic`` and ``wait_for`` then go through confluent-kafka,
topics ``create_topic`` made are deleted after each test, ``.store`` raises
:class:`kstore.errors.ExternalBrokerError`, and tests whose marker asks for broker options
(SASL, TLS, ...) are skipped, as the external broker has its own. ``--kafka-config KEY=VALUE``
(repeatable) adds librdkafka settings (security) for those clients.

Importing this module costs nothing beyond pytest: kstore's server is imported when a fixture
is first used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kstore.testing import Broker, ExternalBroker

MARKER = "kafka_broker"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kstore", "Kafka broker fixtures (kstore)")
    group.addoption(
        "--kafka-bootstrap", metavar="HOST:PORT", default=None,
        help="point the kafka_broker fixtures at this external broker instead of starting "
             "kstore serve in-process")
    group.addoption(
        "--kafka-config", metavar="KEY=VALUE", action="append", default=[],
        help="a librdkafka setting (e.g. security.protocol=SASL_SSL) for the fixtures' own "
             "clients of the --kafka-bootstrap broker; repeatable")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): broker options of this test's kafka_broker fixture "
        "(sasl_users={user: password}, tls_cert=, tls_key=, tls_ca=, auto_create_topics=, "
        "num_partitions=, or any kstore.server.ServerConfig field; see kstore.testing.broker)")


def _external(config: pytest.Config) -> ExternalBroker | None:
    bootstrap = config.getoption("kafka_bootstrap")
    if not bootstrap:
        return None
    from kstore.errors import InvalidConfigError
    from kstore.testing import ExternalBroker

    settings = {}
    for item in config.getoption("kafka_config"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidConfigError(f"--kafka-config {item!r}: expected KEY=VALUE, e.g. "
                                     f"security.protocol=SASL_SSL")
        settings[key] = value
    return ExternalBroker(bootstrap, settings)


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    # The closest marker last, so a test's own marker overrides its class's and module's.
    for mark in reversed(list(request.node.iter_markers(MARKER))):
        if mark.args:
            raise pytest.UsageError(
                f"{request.node.nodeid}: @pytest.mark.{MARKER} takes keyword options only "
                f"(e.g. auto_create_topics=False), not {mark.args!r}")
        options.update(mark.kwargs)
    return options


def _broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            name: str, options: dict[str, Any]) -> Iterator[Broker | ExternalBroker]:
    """The fixtures' body: the external broker when given, else a new one under ``name``."""
    external = _external(request.config)
    broker: Broker | ExternalBroker
    if external is not None:
        if options:
            pytest.skip(f"asks the broker for {sorted(options)}; the external broker "
                        f"{external.bootstrap_servers} (--kafka-bootstrap) has its own settings")
        broker = external
    else:
        from kstore.testing import start

        broker = start(tmp_path_factory.mktemp(name, numbered=True), **options)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def kafka_broker(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker | ExternalBroker]:
    """A broker of this test alone; see the module doc."""
    yield from _broker(request, tmp_path_factory, "kafka_broker", _options(request))


@pytest.fixture(scope="session")
def kafka_broker_session(
        request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker | ExternalBroker]:
    """One broker for the session (per xdist worker); see the module doc."""
    yield from _broker(request, tmp_path_factory, "kafka_broker_session", {})


@pytest.fixture
def kafka_bootstrap(kafka_broker: Broker | ExternalBroker) -> str:
    """``host:port`` of this test's broker (``kafka_broker.bootstrap_servers``)."""
    return kafka_broker.bootstrap_servers
