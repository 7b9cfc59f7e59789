"""What ``kstore.connect`` and ``kstore mirror`` share about talking to a Kafka cluster through
confluent-kafka (librdkafka): the ``kafka://`` address, client configs under Kafka's names, and
librdkafka's errors as kstore.errors classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kstore import errors

SCHEME = "kafka://"


def is_kafka_url(target: object) -> bool:
    """Whether ``target`` names a cluster (``kafka://host:port[,host:port...]``) rather than a
    data directory."""
    return isinstance(target, str) and target.lower().startswith(SCHEME)


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` (or a bare ``h1:9092,h2:9092``) -> ``h1:9092,h2:9092``.
    Raises InvalidConfigError naming what is wrong."""
    if not isinstance(url, str):
        raise errors.InvalidConfigError(f"a cluster address must be a str, not {url!r}")
    rest = url[len(SCHEME):] if is_kafka_url(url) else url
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "@" in rest:
        raise errors.InvalidConfigError(
            f"{url!r}: expected kafka://host:port[,host:port...] (credentials and TLS go in the "
            f"client config, e.g. sasl.username=..., security.protocol='SASL_SSL')")
    hosts = [h.strip() for h in rest.split(",") if h.strip()]
    if not hosts:
        raise errors.InvalidConfigError(f"{url!r} names no broker: expected kafka://host:port")
    for h in hosts:
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise errors.InvalidConfigError(
                f"{url!r}: broker {h!r} is not host:port (a port from 1 to 65535)")
    return ",".join(hosts)


def client_config(url: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A confluent-kafka config: ``bootstrap.servers`` from ``url`` plus ``config`` under Kafka's
    (librdkafka's) names. Python keywords may spell the dots as underscores
    (``security_protocol="SASL_SSL"`` is ``security.protocol``)."""
    out: dict[str, Any] = {"bootstrap.servers": bootstrap_servers(url)}
    for key, value in (config or {}).items():
        if not isinstance(key, str):
            raise errors.InvalidConfigError(f"config keys are str, not {key!r}")
        name = key if "." in key else key.replace("_", ".")
        if name == "bootstrap.servers":
            raise errors.InvalidConfigError(
                "bootstrap.servers comes from the kafka:// address; do not pass it as well")
        out[name] = value
    return out


def confluent() -> Any:
    """The confluent_kafka module, or MissingDependencyError saying how to install it."""
    try:
        import confluent_kafka
        import confluent_kafka.admin  # noqa: F401 - confluent_kafka.admin is used as an attribute
    except ImportError as exc:
        raise errors.MissingDependencyError(
            f"a Kafka cluster is reached through confluent-kafka, which is not installed "
            f"({exc}); install it with: pip install 'kstore[cluster]'") from None
    return confluent_kafka


# librdkafka's own (negative) error codes, as the Kafka error that means the same to a caller.
_LOCAL_CODES = {
    -188: errors.UnknownTopicOrPartitionError,  # _UNKNOWN_TOPIC
    -190: errors.UnknownTopicOrPartitionError,  # _UNKNOWN_PARTITION
    -185: errors.RequestTimedOutError,  # _TIMED_OUT
    -192: errors.RequestTimedOutError,  # _MSG_TIMED_OUT
    -195: errors.NetworkError,  # _TRANSPORT
    -187: errors.NetworkError,  # _ALL_BROKERS_DOWN
    -193: errors.NetworkError,  # _RESOLVE
    -181: errors.NetworkError,  # _SSL
    -169: errors.SaslAuthenticationFailedError,  # _AUTHENTICATION
    -186: errors.InvalidRequestError,  # _INVALID_ARG
    -154: errors.InvalidRequestError,  # _INVALID_TYPE
    -179: errors.GroupIdNotFoundError,  # _UNKNOWN_GROUP
    -170: errors.UnsupportedVersionError,  # _NOT_IMPLEMENTED
    -165: errors.UnsupportedVersionError,  # _UNSUPPORTED_FEATURE
    -199: errors.CorruptRecordError,  # _BAD_MSG
}


def error_from(err: Any, what: str) -> errors.KStoreError:
    """A kstore error for a confluent-kafka ``KafkaError`` (or a ``KafkaException`` holding one),
    its message saying ``what`` was being done and librdkafka's words and code name."""
    kerr = err.args[0] if isinstance(err, BaseException) and err.args else err
    code = getattr(kerr, "code", None)
    if not callable(code):
        return errors.UnknownServerError(f"{what}: {err}")
    c = kerr.code()
    cls = _LOCAL_CODES.get(c, errors.UnknownServerError) if c < 0 else errors.error_for_code(c)
    text = kerr.str() if callable(getattr(kerr, "str", None)) else str(kerr)
    name = kerr.name() if callable(getattr(kerr, "name", None)) else str(c)
    exc = cls(f"{what}: {text} ({name})")
    exc.__dict__["kafka_code"] = c
    return exc


def raise_from(err: Any, what: str) -> None:
    raise error_from(err, what) from None


def default_client_id() -> str:
    return f"kstore-{os.getpid()}"
