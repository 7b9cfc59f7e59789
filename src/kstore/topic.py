"""Topics: Kafka's naming rules and the partitioners (Java's murmur2, librdkafka's crc32)."""

from __future__ import annotations

import random
import re
import zlib

from kstore import _core
from kstore.errors import InternalTopicError, InvalidTopicError

MAX_NAME_LENGTH = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
PARTITIONERS = ("murmur2", "murmur2_random", "consistent_random", "consistent", "random")


def validate_topic_name(name: object) -> str:
    """Kafka's rules (Topic.validate): 1..249 characters of [a-zA-Z0-9._-], not . or .."""
    if not isinstance(name, str):
        raise TypeError(f"topic must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidTopicError("topic name is empty")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name cannot be {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidTopicError(
            f"topic name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not _LEGAL.fullmatch(name):  # fullmatch: "$" would let a trailing newline through
        bad = sorted({c for c in name if not re.match(r"[a-zA-Z0-9._-]", c)})
        raise InvalidTopicError(
            f"topic name {name!r} has illegal characters {''.join(bad)!r}: use ASCII letters, "
            f"digits, '.', '_' and '-'")
    return name


INTERNAL_PREFIX = "__"


def is_internal_topic(name: str) -> bool:
    """Whether ``name`` is an internal topic. Kafka's are ``__consumer_offsets`` and
    ``__transaction_state``; kstore reserves the whole ``__`` prefix, as its Kafka-protocol
    server always has (CreateTopics, Produce and DeleteRecords refuse such names with 17) and
    as ``Store.topics()`` hides them."""
    return isinstance(name, str) and name.startswith(INTERNAL_PREFIX)


def refuse_internal(name: str, action: str) -> None:
    """Raise InternalTopicError if ``name`` is internal; ``action`` says what was refused."""
    if is_internal_topic(name):
        raise InternalTopicError(
            f"cannot {action} {name!r}: topics whose names start with '__' are internal to "
            f"kstore (committed offsets live in __consumer_offsets; commit them with "
            f"Consumer.commit or Store.commit_offsets, which write it in Kafka's format)")


def validate_partitioner(name: str) -> str:
    if name not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {name!r}: use one of {', '.join(PARTITIONERS)}")
    return name


def key_partition(key: bytes | None, num_partitions: int, partitioner: str) -> int:
    """The partition a key goes to, or -1 when the partitioner leaves it to stickiness."""
    if partitioner in ("murmur2", "murmur2_random"):
        if key is None:
            return -1
        return _core.murmur2_partition(key, num_partitions)
    if partitioner == "consistent_random":
        if not key:  # null and empty keys are sticky in librdkafka's default
            return -1
        return zlib.crc32(key) % num_partitions
    if partitioner == "consistent":
        return zlib.crc32(key or b"") % num_partitions
    return -1  # random


class Sticky:
    """Kafka's sticky choice for keyless records: stay on one partition until about batch.size
    bytes went there, then move to another at random (KIP-480)."""

    __slots__ = ("partition", "bytes", "limit", "rng")

    def __init__(self, limit: int, rng: random.Random | None = None) -> None:
        self.partition = -1
        self.bytes = 0
        self.limit = limit
        self.rng = rng or random.Random()

    def choose(self, num_partitions: int, size: int) -> int:
        if self.partition < 0 or self.partition >= num_partitions or self.bytes >= self.limit:
            old = self.partition
            p = self.rng.randrange(num_partitions)
            if num_partitions > 1 and p == old:
                p = (p + 1 + self.rng.randrange(num_partitions - 1)) % num_partitions
            self.partition = p
            self.bytes = 0
        self.bytes += size
        return self.partition
