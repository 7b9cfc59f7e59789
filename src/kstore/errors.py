"""One exception hierarchy for kstore, rooted at :class:`KStoreError`.

Every class carries Kafka's numeric error code as ``code`` (checked against kafka-python's
``kafka.errors``) and whether Kafka treats it as ``retriable``. Classes register themselves by
code; :func:`error_for_code` maps a code back to its class, falling back to
:class:`UnknownServerError`. Where callers expect a builtin exception, the class mixes it in
(``CorruptRecordError`` is a ``ValueError``).
"""

from __future__ import annotations

_BY_CODE: dict[int, type[KStoreError]] = {}


class KStoreError(Exception):
    """Base of every error kstore raises. ``code`` is Kafka's error code."""

    code: int = -1
    retriable: bool = False

    def __init_subclass__(cls, register: bool = True, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not register:
            return
        if cls.code in _BY_CODE:
            raise TypeError(
                f"{cls.__name__} reuses Kafka error code {cls.code} of {_BY_CODE[cls.code].__name__}"
            )
        _BY_CODE[cls.code] = cls


def error_for_code(code: int) -> type[KStoreError]:
    """The exception class for a Kafka error code (UnknownServerError if none is known)."""
    return _BY_CODE.get(code, UnknownServerError)


class UnknownServerError(KStoreError):
    code = -1


class OffsetOutOfRangeError(KStoreError, IndexError):
    code = 1


class CorruptRecordError(KStoreError, ValueError):
    """Bytes that fail their CRC, or whose fields disagree with their sizes.

    Raised by a read of stored data, it says where: ``topic``, ``partition``, ``path`` and
    ``position`` (the byte in that file), and the offsets the damage covers, ``offset`` ..
    ``last_offset``: ``consumer.seek(err.topic, err.partition, err.last_offset + 1)`` reads on
    past it. Each is None when unknown (e.g. bytes that never were stored)."""

    code = 2
    retriable = True
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    last_offset: int | None = None
    path: str | None = None
    position: int | None = None

    def locate(self, **where: object) -> CorruptRecordError:
        """Set the location attributes given (topic, partition, offset, ...); returns self."""
        for k, v in where.items():
            if k not in ("topic", "partition", "offset", "last_offset", "path", "position"):
                raise TypeError(f"CorruptRecordError has no location field {k!r}")
            setattr(self, k, v)
        return self


class UnknownTopicOrPartitionError(KStoreError, LookupError):
    code = 3
    retriable = True


class InvalidFetchSizeError(KStoreError, ValueError):
    code = 4


class LeaderNotAvailableError(KStoreError):
    code = 5
    retriable = True


class NotLeaderOrFollowerError(KStoreError):
    code = 6
    retriable = True


class RequestTimedOutError(KStoreError, TimeoutError):
    """A request (or, from a cluster client, a message or an admin call) that did not complete
    in time. Whether it took effect is unknown."""

    code = 7
    retriable = True


class BrokerNotAvailableError(KStoreError):
    code = 8
    retriable = True


class RecordTooLargeError(KStoreError, ValueError):
    """MESSAGE_TOO_LARGE: a batch over max.message.bytes."""

    code = 10


class NetworkError(KStoreError, ConnectionError):
    """The connection to a broker failed or no broker could be reached (Kafka's
    NETWORK_EXCEPTION)."""

    code = 13
    retriable = True


class CoordinatorLoadInProgressError(KStoreError):
    code = 14
    retriable = True


class CoordinatorNotAvailableError(KStoreError):
    code = 15
    retriable = True


class NotCoordinatorError(KStoreError):
    code = 16
    retriable = True


class InvalidTopicError(KStoreError, ValueError):
    code = 17


class RecordListTooLargeError(KStoreError, ValueError):
    code = 18


class InvalidRequiredAcksError(KStoreError, ValueError):
    code = 21


class IllegalGenerationError(KStoreError):
    code = 22


class InconsistentGroupProtocolError(KStoreError):
    code = 23


class InvalidGroupIdError(KStoreError, ValueError):
    code = 24


class UnknownMemberIdError(KStoreError):
    code = 25


class InvalidSessionTimeoutError(KStoreError, ValueError):
    code = 26


class RebalanceInProgressError(KStoreError):
    code = 27


class InvalidCommitOffsetSizeError(KStoreError, ValueError):
    code = 28


class TopicAuthorizationFailedError(KStoreError, PermissionError):
    code = 29


class GroupAuthorizationFailedError(KStoreError, PermissionError):
    code = 30


class ClusterAuthorizationFailedError(KStoreError, PermissionError):
    code = 31


class InvalidTimestampError(KStoreError, ValueError):
    code = 32


class UnsupportedSaslMechanismError(KStoreError, ValueError):
    """A SaslHandshake or authenticator asked for a mechanism this server does not enable."""

    code = 33


class IllegalSaslStateError(KStoreError):
    """A SASL token out of sequence: after success, after a failure, or before the handshake."""

    code = 34


class UnsupportedVersionError(KStoreError):
    code = 35


class TopicAlreadyExistsError(KStoreError):
    code = 36


class InvalidPartitionsError(KStoreError, ValueError):
    code = 37


class InvalidReplicationFactorError(KStoreError, ValueError):
    code = 38


class InvalidConfigError(KStoreError, ValueError):
    """A config key that does not exist or a value out of range; the message names the key."""

    code = 40


class NotControllerError(KStoreError):
    code = 41
    retriable = True


class InvalidRequestError(KStoreError, ValueError):
    code = 42


class UnsupportedForMessageFormatError(KStoreError):
    code = 43


class PolicyViolationError(KStoreError, ValueError):
    code = 44


class OutOfOrderSequenceNumberError(KStoreError):
    code = 45


class DuplicateSequenceNumberError(KStoreError):
    code = 46


class InvalidProducerEpochError(KStoreError):
    code = 47


class InvalidTxnStateError(KStoreError):
    """A transactional request that does not fit the transaction's state (e.g. a commit with
    no transaction begun, a batch for a partition the transaction did not add)."""

    code = 48


class InvalidProducerIdMappingError(KStoreError):
    """The transactional id is unknown, or belongs to another producer id: call
    InitProducerId (``init_transactions``) first."""

    code = 49


class InvalidTransactionTimeoutError(KStoreError, ValueError):
    code = 50


class ConcurrentTransactionsError(KStoreError):
    code = 51
    retriable = True


class ProducerFencedError(KStoreError):
    """A newer producer with the same transactional id has started (its InitProducerId bumped
    the epoch): this one is a zombie and must close."""

    code = 90


class KafkaStorageError(KStoreError, OSError):
    """The disk refused: full, read-only, permission denied, file-size limit."""

    code = 56
    retriable = True


class SaslAuthenticationFailedError(KStoreError):
    """Bad credentials or a malformed SASL token. For bad credentials the message never says
    whether the user exists (Kafka answers a wrong password and an unknown user alike)."""

    code = 58


class UnknownProducerIdError(KStoreError):
    code = 59


class NonEmptyGroupError(KStoreError):
    code = 68


class GroupIdNotFoundError(KStoreError, LookupError):
    code = 69


class UnsupportedCompressionTypeError(KStoreError, ValueError):
    code = 76


class InvalidRecordError(KStoreError, ValueError):
    """A record or batch that is well-formed bytes but breaks a rule (INVALID_RECORD)."""

    code = 87


# kstore-only conditions. They reuse the Kafka code closest in meaning, so they do not register.


class LogLockedError(KafkaStorageError, register=False):
    """Another writer (thread or process) holds the log directory's lock."""


class ReadOnlyError(KafkaStorageError, register=False):
    """A write on a log opened with read_only=True."""

    retriable = False


class ClosedError(KStoreError, register=False):
    """An operation on a closed log, store, producer or consumer."""


class InternalTopicError(InvalidTopicError, register=False):
    """A write to, or a change of, an internal topic (``__consumer_offsets``, any name
    starting with ``__``) outside kstore's own offsets code. Kafka answers
    INVALID_TOPIC_EXCEPTION (17) to a produce to an internal topic; so does this."""


class NoOffsetForPartitionError(KStoreError, register=False):
    """A consumer with auto_offset_reset='none' has no committed offset to start from."""


class DecompressionLimitError(CorruptRecordError, register=False):
    """A compressed batch that inflates past the decompression limit (a zip bomb)."""

    retriable = False


class UnsupportedOnClusterError(KStoreError, NotImplementedError, register=False):
    """A Store feature that cannot exist behind ``kstore.connect`` (a Kafka cluster): zero-copy
    reads of a partition's files, retention run by the client, exclusive locks."""


class MissingDependencyError(KStoreError, ImportError, register=False):
    """An optional package a feature needs is not installed (the message says which extra)."""


class ExternalBrokerError(KStoreError, register=False):
    """What the test fixtures cannot do against an external broker (``--kafka-bootstrap``),
    such as handing out its data directory as ``kafka_broker.store``."""


class WaitTimeoutError(KStoreError, TimeoutError, register=False):
    """A test helper's wait (``kstore.testing.Broker.wait_for``) ran out of time; the message
    says what there was instead."""
