"""A Kafka broker for tests: ``kstore serve`` in a background thread, in milliseconds.

    import kstore.testing

    with kstore.testing.broker() as b:              # a free loopback port, a temporary directory
        b.create_topic("orders", partitions=2)
        ...                                          # any Kafka client on b.bootstrap_servers
        records = b.wait_for("orders", 3, timeout=10)   # kstore Records, partition/offset order

The server runs on its own event loop in a daemon thread, so it serves synchronous code and
asyncio code (on any other loop) alike. ``b.store`` is the server's own :class:`kstore.Store`
for direct inspection. Under pytest the same thing comes as fixtures (``kafka_broker``,
``kafka_broker_session``, ``kafka_bootstrap``: see :mod:`kstore.pytest_plugin`), which can also
point at an external Kafka cluster (:class:`ExternalBroker`).

Unlike ``kstore serve``, a test broker starts consumer groups at once:
``group.initial.rebalance.delay.ms`` is 0 (Kafka's default is 3000 ms; Kafka's own test
brokers set 0 too), so a consumer's first poll is not held 3 s waiting for peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kstore.errors import (
    ClosedError,
    ExternalBrokerError,
    InvalidConfigError,
    UnknownTopicOrPartitionError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from kstore._core import Record
    from kstore.server import Server
    from kstore.server.auth import Users
    from kstore.store import Store

__all__ = ["Broker", "ExternalBroker", "broker", "start"]

#: Seconds to wait for the server thread to start listening or to stop.
START_STOP_TIMEOUT_S = 30.0
#: group.initial.rebalance.delay.ms of a test broker (Kafka's own test brokers use 0 too).
TEST_GROUP_INITIAL_REBALANCE_DELAY_MS = 0


class Broker:
    """A running in-process broker. Make one with :func:`broker` (a context manager).

    Thread safety: every method may be called from any thread while the server runs; the
    server itself runs on its own loop in a background thread.
    """

    def __init__(self, store: Store, server: Server, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, owned_dir: Path | None, users: Mapping[str, str],
                 tls: bool) -> None:
        self._store = store
        self._server = server
        self._loop = loop
        self._thread = thread
        self._owned_dir = owned_dir
        self._closed = False
        self.users = dict(users)
        self.sasl = server.config.sasl_users is not None
        self.tls = tls
        self.host = server.config.host
        self.port = server.port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for a client's ``bootstrap.servers`` / ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def security_protocol(self) -> str:
        """Kafka's ``security.protocol`` a client needs: PLAINTEXT, SSL, SASL_PLAINTEXT or
        SASL_SSL."""
        return _security_protocol(self.sasl, self.tls)

    def client_config(self, user: str | None = None) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings to reach this broker: bootstrap.servers,
        security.protocol and, with SASL, PLAIN credentials of ``user`` (default: the first
        user). With TLS add ``ssl.ca.location`` yourself (the CA that signed the certificate)."""
        cfg = {"bootstrap.servers": self.bootstrap_servers,
               "security.protocol": self.security_protocol}
        if self.users:
            name = user if user is not None else next(iter(self.users))
            if name not in self.users:
                raise InvalidConfigError(f"no SASL user {name!r} on this broker; its users are "
                                         f"{sorted(self.users)}")
            cfg.update({"sasl.mechanisms": "PLAIN", "sasl.username": name,
                        "sasl.password": self.users[name]})
        return cfg

    @property
    def store(self) -> Store:
        """The server's :class:`kstore.Store` (topics, partitions, committed offsets)."""
        self._check_open()
        return self._store

    @property
    def data_dir(self) -> Path:
        return Path(self._store.path)

    def create_topic(self, name: str, partitions: int = 1,
                     config: Mapping[str, Any] | None = None) -> None:
        """Create a topic (Kafka config keys in ``config``, e.g. ``{"cleanup.policy":
        "compact"}``). Raises TopicAlreadyExistsError, InvalidTopicError, InvalidConfigError."""
        self.store.create_topic(name, partitions, config)

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` now, as :class:`kstore.Record` (``topic``, ``partition``,
        ``offset``, ``timestamp``, ``key``, ``value``, ``headers``), partition by partition in
        offset order. Raises UnknownTopicOrPartitionError when the topic does not exist."""
        store = self.store
        out: list[Record] = []
        for p in range(store.partitions_for(topic)):
            plog = store.partition(topic, p)
            offset, end = plog.log_start_offset, plog.log_end_offset
            while offset < end:
                batch = plog.read_records(offset)
                if not batch:
                    break
                for r in batch:
                    r.topic, r.partition = topic, p
                out.extend(batch)
                offset = batch[-1].offset + 1
        return out

    def wait_for(self, topic: str, n: int, timeout: float = 10.0) -> list[Record]:
        """Wait until ``topic`` holds at least ``n`` records (it may not exist yet); returns
        :meth:`records`. Woken by the appends themselves, not by polling. Raises
        :class:`~kstore.errors.WaitTimeoutError` saying how many there were after ``timeout``
        seconds."""
        store = self.store
        deadline = time.monotonic() + timeout
        while True:
            version = store.signal.version
            try:
                got = self.records(topic)
            except UnknownTopicOrPartitionError:
                got = None
            if got is not None and len(got) >= n:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                have = ("the topic does not exist" if got is None
                        else f"it has {len(got)}")
                raise WaitTimeoutError(
                    f"topic {topic!r} did not get {n} records within {timeout:g}s on "
                    f"{self.bootstrap_servers}: {have} (did the producer flush, and to this "
                    f"broker?)")
            # Topic creation wakes no one: look again soon while the topic is missing.
            store.signal.wait(version, remaining if got is not None else min(remaining, 0.02))

    def close(self) -> None:
        """Stop the server, close the store and remove the temporary directory (one given to
        :func:`broker` is kept). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                fut = asyncio.run_coroutine_threadsafe(self._server.close(), self._loop)
                fut.result(START_STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()
            self._store.close()
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the test broker {self.bootstrap_servers} is closed")

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<kstore.testing.Broker {self.bootstrap_servers} {self.data_dir} {state}>"


def start(data_dir: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
          port: int = 0, auto_create_topics: bool = True, num_partitions: int = 1,
          sasl_users: Mapping[str, str] | Users | None = None,
          tls_cert: str | os.PathLike[str] | None = None,
          tls_key: str | os.PathLike[str] | None = None,
          tls_ca: str | os.PathLike[str] | None = None,
          **server_options: Any) -> Broker:
    """Start a broker and return it (call ``.close()``, or use it in a ``with``);
    :func:`broker` is the context-manager form and documents the arguments."""
    from kstore.server import Server, ServerConfig
    from kstore.store import Store

    if (tls_cert is None) != (tls_key is None):
        raise InvalidConfigError("tls_cert and tls_key go together: give both or neither")
    unknown = set(server_options) - set(ServerConfig.__dataclass_fields__)
    if unknown:
        raise InvalidConfigError(
            f"unknown broker option(s) {sorted(unknown)}: the options are broker()'s arguments "
            f"and kstore.server.ServerConfig's fields")
    if "ssl_context" in server_options and tls_cert is not None:
        raise InvalidConfigError("give either ssl_context or tls_cert/tls_key, not both")
    ssl_context = server_options.pop("ssl_context", None)
    if tls_cert is not None:
        from kstore.server.auth import server_ssl_context

        ssl_context = server_ssl_context(tls_cert, tls_key, tls_ca)  # type: ignore[arg-type]
    users: dict[str, str] = {}
    sasl = None
    if sasl_users is not None:
        from kstore.server.auth import Users

        if isinstance(sasl_users, Users):
            sasl = sasl_users  # e.g. Users.load(path): client_config() knows no password
        else:
            users = dict(sasl_users)
            sasl = Users.from_dict(users)
    server_options.setdefault("group_initial_rebalance_delay_ms",
                              TEST_GROUP_INITIAL_REBALANCE_DELAY_MS)
    config = ServerConfig(host=host, port=port, auto_create_topics=auto_create_topics,
                          num_partitions=num_partitions, ssl_context=ssl_context,
                          sasl_users=sasl, **server_options)
    owned = None
    if data_dir is None:
        owned = Path(tempfile.mkdtemp(prefix="kstore-broker-"))
        data_dir = owned
    store = None
    loop = None
    try:
        # exclusive: a test broker's directory is its own, so the store skips the machinery
        # that watches other processes' appends.
        store = Store(data_dir, exclusive=True)
        server = Server(store, config)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name=f"kstore-broker-{data_dir}",
                                  daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(START_STOP_TIMEOUT_S)
        except BaseException as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_STOP_TIMEOUT_S)
            if isinstance(exc, OSError):
                raise InvalidConfigError(
                    f"the test broker cannot listen on {host}:{port}: {exc.strerror or exc}; "
                    f"port=0 (the default) picks a free port") from None
            raise
    except BaseException:
        if loop is not None and not loop.is_running():
            loop.close()
        if store is not None:
            store.close()
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    return Broker(store, server, loop, thread, owned, users, ssl_context is not None)


@contextlib.contextmanager
def broker(data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Iterator[Broker]:
    """A running broker for the ``with`` block; stopped (and its temporary directory removed)
    at the end.

    Options (keywords of :func:`start`, which returns the broker without the ``with``):
    ``data_dir``: the data directory (kept afterwards); default a new temporary one.
    ``port`` 0 picks a free port. ``auto_create_topics`` (Kafka's auto.create.topics.enable)
    and ``num_partitions`` (num.partitions) as in Kafka. ``sasl_users`` ``{user: password}``
    (or a :class:`kstore.server.auth.Users`) turns SASL on (PLAIN, SCRAM-SHA-256,
    SCRAM-SHA-512). ``tls_cert``/``tls_key`` (PEM files)
    turn TLS on, ``tls_ca`` asks clients for certificates it signed. Any other keyword is a
    :class:`kstore.server.ServerConfig` field (``group_initial_rebalance_delay_ms`` defaults to
    0 here, see the module doc). Raises InvalidConfigError for an unknown option or a port
    that cannot be bound, LogLockedError when another process holds ``data_dir``.
    """
    b = start(data_dir, **options)
    try:
        yield b
    finally:
        b.close()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Tasks the server left (there should be none after close()) end with the loop.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _security_protocol(sasl: bool, tls: bool) -> str:
    return {(False, False): "PLAINTEXT", (False, True): "SSL", (True, False): "SASL_PLAINTEXT",
            (True, True): "SASL_SSL"}[(sasl, tls)]


# ==============================================================================================
# An external broker (pytest --kafka-bootstrap), through confluent-kafka


class ExternalBroker:
    """The same interface over a Kafka cluster this process did not start (real Kafka in CI,
    or a ``kstore serve`` elsewhere): ``create_topic``, ``records`` and ``wait_for`` go through
    confluent-kafka; ``store`` raises :class:`~kstore.errors.ExternalBrokerError`, as there is no
    local data directory to inspect. ``config``: extra librdkafka settings (security)."""

    tls = False

    def __init__(self, bootstrap_servers: str, config: Mapping[str, str] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.config = dict(config or {})
        self.users: dict[str, str] = {}
        self.created: list[str] = []
        self._admin: Any = None

    @property
    def security_protocol(self) -> str:
        return self.config.get("security.protocol", "PLAINTEXT")

    def client_config(self, user: str | None = None) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers, **self.config}

    @property
    def store(self) -> Store:
        raise ExternalBrokerError(
            f"kafka_broker.store is not available: the broker is the external one at "
            f"{self.bootstrap_servers} (--kafka-bootstrap), whose data directory is not in this "
            f"process. Read what was produced with kafka_broker.records(topic) or "
            f"kafka_broker.wait_for(topic, n), which work against any broker.")

    def _admin_client(self) -> Any:
        if self._admin is None:
            confluent_kafka = _confluent()
            self._admin = confluent_kafka.admin.AdminClient(self.client_config())
        return self._admin

    def create_topic(self, name: str, partitions: int = 1,
                     config: Mapping[str, Any] | None = None) -> None:
        from kstore import errors

        confluent_kafka = _confluent()
        new = confluent_kafka.admin.NewTopic(name, num_partitions=partitions,
                                             replication_factor=-1,
                                             config={k: str(v) for k, v in (config or {}).items()})
        fut = self._admin_client().create_topics([new], operation_timeout=30)[name]
        try:
            fut.result(60)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            raise errors.error_for_code(err.code())(
                f"{self.bootstrap_servers}: cannot create topic {name!r}: {err.str()}") from None
        self.created.append(name)

    def delete_created_topics(self) -> None:
        """Delete the topics :meth:`create_topic` made (the fixtures' per-test cleanup)."""
        if not self.created:
            return
        futs = self._admin_client().delete_topics(self.created, operation_timeout=30)
        for fut in futs.values():
            with contextlib.suppress(Exception):
                fut.result(60)
        self.created.clear()

    def records(self, topic: str) -> list[Record]:
        from kstore import errors
        from kstore.records import Record

        confluent_kafka = _confluent()
        consumer = confluent_kafka.Consumer({**self.client_config(), "group.id": "kstore-testing",
                                             "enable.auto.commit": False,
                                             "enable.partition.eof": True})
        try:
            meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
            if meta is None or meta.error is not None:
                raise errors.UnknownTopicOrPartitionError(
                    f"topic {topic!r} does not exist on {self.bootstrap_servers}")
            ends: dict[int, int] = {}
            starts = []
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    confluent_kafka.TopicPartition(topic, p), timeout=30)
                if high > low:
                    ends[p] = high
                    starts.append(confluent_kafka.TopicPartition(topic, p, low))
            out: list[Record] = []
            if starts:
                consumer.assign(starts)
            pending = set(ends)
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None:
                    continue
                if m.error() is not None:
                    if m.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise errors.error_for_code(m.error().code())(
                        f"{self.bootstrap_servers}: reading {topic}-{m.partition()}: "
                        f"{m.error().str()}")
                ts_type, ts = m.timestamp()
                out.append(Record(offset=m.offset(), timestamp=ts, key=m.key(), value=m.value(),
                                  headers=tuple(m.headers() or ()),
                                  timestamp_type=max(ts_type - 1, 0), topic=topic,
                                  partition=m.partition()))
                if m.offset() + 1 >= ends[m.partition()]:
                    pending.discard(m.partition())
            if pending:
                raise WaitTimeoutError(f"{self.bootstrap_servers}: could not read {topic} "
                                       f"partitions {sorted(pending)} to their end within 60s")
            out.sort(key=lambda r: (r.partition, r.offset))
            return out
        finally:
            consumer.close()

    def wait_for(self, topic: str, n: int, timeout: float = 10.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got: list[Record] | None = self.records(topic)
            except UnknownTopicOrPartitionError:
                got = None
            if got is not None and len(got) >= n:
                return got
            if time.monotonic() > deadline:
                have = "the topic does not exist" if got is None else f"it has {len(got)}"
                raise WaitTimeoutError(f"topic {topic!r} did not get {n} records within "
                                       f"{timeout:g}s on {self.bootstrap_servers}: {have}")
            time.sleep(0.1)

    def close(self) -> None:
        """Delete the topics :meth:`create_topic` made (so a test leaves none behind)."""
        self.delete_created_topics()
        self._admin = None

    def __repr__(self) -> str:
        return f"<kstore.testing.ExternalBroker {self.bootstrap_servers}>"


def _confluent() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError:
        raise ExternalBrokerError(
            "an external broker (--kafka-bootstrap) is read and administered through "
            "confluent-kafka, which is not installed: pip install confluent-kafka") from None
    return confluent_kafka
