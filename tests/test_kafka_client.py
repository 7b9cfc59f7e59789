"""kstore._kafka: the kafka:// address, client configs under Kafka's names, and librdkafka's
errors as kstore.errors classes."""

from __future__ import annotations

import sys

import pytest

from kstore import _kafka, errors


@pytest.mark.parametrize("url, want", [
    ("kafka://h:9092", "h:9092"),
    ("KAFKA://h:9092/", "h:9092"),
    ("kafka://h1:9092,h2:9093", "h1:9092,h2:9093"),
    ("kafka://h1:9092, h2:9093 ,", "h1:9092,h2:9093"),
    ("h1:1,h2:65535", "h1:1,h2:65535"),
    ("kafka://[::1]:9092", "[::1]:9092"),
])
def test_bootstrap_servers(url, want):
    assert _kafka.bootstrap_servers(url) == want


@pytest.mark.parametrize("url", [
    "kafka://", "kafka://,", "kafka://host", "kafka://host:", "kafka://:9092", "kafka://h:0",
    "kafka://h:65536", "kafka://h:port", "kafka://user:pw@h:9092", "kafka://h:9092/topic",
    "kafka://h:9092?x=1", 9092, None,
])
def test_bad_addresses_say_what_is_wrong(url):
    with pytest.raises(errors.InvalidConfigError) as ei:
        _kafka.bootstrap_servers(url)
    assert "kafka://" in str(ei.value) or "str" in str(ei.value)


def test_is_kafka_url():
    assert _kafka.is_kafka_url("kafka://h:1") and _kafka.is_kafka_url("Kafka://h:1")
    assert not _kafka.is_kafka_url("./data") and not _kafka.is_kafka_url(None)
    assert not _kafka.is_kafka_url(b"kafka://h:1")


def test_client_config_names():
    cfg = _kafka.client_config("kafka://h:1", {"security_protocol": "SASL_SSL",
                                               "sasl.mechanism": "PLAIN",
                                               "ssl.endpoint.identification.algorithm": "none",
                                               "linger_ms": 3})
    assert cfg == {"bootstrap.servers": "h:1", "security.protocol": "SASL_SSL",
                   "sasl.mechanism": "PLAIN", "ssl.endpoint.identification.algorithm": "none",
                   "linger.ms": 3}
    with pytest.raises(errors.InvalidConfigError, match="kafka:// address"):
        _kafka.client_config("kafka://h:1", {"bootstrap_servers": "x:1"})
    with pytest.raises(errors.InvalidConfigError):
        _kafka.client_config("kafka://h:1", {1: "x"})


def test_missing_confluent_kafka_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails
    with pytest.raises(errors.MissingDependencyError, match=r"kstore\[cluster\]") as ei:
        _kafka.confluent()
    assert isinstance(ei.value, ImportError)


ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")


@pytest.mark.parametrize("code, cls", [
    (3, errors.UnknownTopicOrPartitionError), (7, errors.RequestTimedOutError),
    (10, errors.RecordTooLargeError), (16, errors.NotCoordinatorError),
    (25, errors.UnknownMemberIdError), (27, errors.RebalanceInProgressError),
    (29, errors.TopicAuthorizationFailedError), (36, errors.TopicAlreadyExistsError),
    (37, errors.InvalidPartitionsError), (40, errors.InvalidConfigError),
    (58, errors.SaslAuthenticationFailedError), (87, errors.InvalidRecordError),
    (-188, errors.UnknownTopicOrPartitionError), (-190, errors.UnknownTopicOrPartitionError),
    (-185, errors.RequestTimedOutError), (-192, errors.RequestTimedOutError),
    (-195, errors.NetworkError), (-187, errors.NetworkError), (-193, errors.NetworkError),
    (-181, errors.NetworkError), (-169, errors.SaslAuthenticationFailedError),
    (-186, errors.InvalidRequestError), (-179, errors.GroupIdNotFoundError),
    (-170, errors.UnsupportedVersionError), (-199, errors.CorruptRecordError),
    (-150, errors.UnknownServerError),  # a local code with no Kafka meaning
    (9999, errors.UnknownServerError),
])
def test_error_from_maps_codes(code, cls):
    err = ck.KafkaError(code, "librdkafka's words")
    for given in (err, ck.KafkaException(err)):
        exc = _kafka.error_from(given, "doing X")
        assert type(exc) is cls
        assert str(exc).startswith("doing X: librdkafka's words")
        assert err.name() in str(exc)
        assert exc.kafka_code == code


def test_error_from_without_a_code():
    exc = _kafka.error_from(RuntimeError("odd"), "doing Y")
    assert type(exc) is errors.UnknownServerError and "doing Y" in str(exc)
    with pytest.raises(errors.TopicAlreadyExistsError):
        _kafka.raise_from(ck.KafkaError(36), "creating t")
