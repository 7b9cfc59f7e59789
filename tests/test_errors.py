"""Every kstore error carries the Kafka code kafka-python's kafka.errors uses for it."""

import inspect

import kafka.errors as kerr
import pytest

from kstore import errors

KSTORE = [
    cls for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.KStoreError) and cls is not errors.KStoreError
]
KAFKA_BY_CODE = {
    cls.errno: cls for _, cls in inspect.getmembers(kerr, inspect.isclass)
    if issubclass(cls, kerr.BrokerResponseError) and getattr(cls, "errno", None) is not None
}


@pytest.mark.parametrize("cls", KSTORE, ids=lambda c: c.__name__)
def test_code_matches_kafka_python(cls):
    assert cls.code in KAFKA_BY_CODE, f"{cls.__name__} has code {cls.code} unknown to Kafka"
    theirs = KAFKA_BY_CODE[cls.code]
    # Same meaning: the names line up once Kafka's suffixes are dropped.
    norm = lambda n: n.replace("Error", "").replace("_", "").lower()  # noqa: E731
    aliases = {"recordtoolarge": "messagesizetoolarge", "kafkastorage": "kafkastorage",
               "invalidconfig": "invalidconfiguration", "invalidfetchsize": "invalidfetchrequest",
               "unknownserver": "unknown", "notleaderorfollower": "notleaderforpartition",
               "network": "networkexception"}
    name = norm(cls.__name__)
    if cls.__dict__.get("code") is None:  # kstore-only subclass reusing its parent's code
        return
    assert norm(theirs.__name__) in (name, aliases.get(name)), (cls.__name__, theirs.__name__)


def test_codes_named_in_the_issue():
    assert errors.CorruptRecordError.code == 2
    assert errors.RecordTooLargeError.code == 10
    assert errors.InvalidRecordError.code == 87
    assert errors.UnsupportedCompressionTypeError.code == 76
    assert errors.OffsetOutOfRangeError.code == 1


def test_error_for_code_and_duplicates():
    assert errors.error_for_code(2) is errors.CorruptRecordError
    assert errors.error_for_code(12345) is errors.UnknownServerError
    with pytest.raises(TypeError, match="reuses Kafka error code 2"):
        type("Dup", (errors.KStoreError,), {"code": 2})


def test_builtin_mixins():
    assert issubclass(errors.CorruptRecordError, ValueError)
    assert issubclass(errors.KafkaStorageError, OSError)
