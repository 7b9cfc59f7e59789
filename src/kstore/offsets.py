"""Records of Kafka's ``__consumer_offsets`` topic: group -> partition, and key/value codecs.

Each coordinator record is an ordinary Kafka record whose key starts with an int16 *record
type* and whose value starts with an int16 *value version* (or is null: a tombstone). This
module reads and writes the two kinds a classic group coordinator needs — offset commits
(key types 0 and 1) and group metadata keys (type 2) — and recognises types 3..15 (KIP-848
consumer groups, share groups) so that replaying the topic can skip them. Layouts follow the
``OffsetCommitKey`` / ``OffsetCommitValue`` / ``GroupMetadataKey`` JSON schemas; see
``kafka-storage.md`` section 7. Example::

    from kstore.offsets import decode_record, encode_offset_commit_key, group_partition

    p = group_partition("my-group")                       # 12
    key = encode_offset_commit_key("my-group", "orders", 3)
    value = encode_offset_commit_value(12345, 7, "", 1700000000000)
    kind, commit = decode_record(key, value)              # ("offset", OffsetCommit(...))

Malformed bytes raise :class:`kstore.errors.CorruptRecordError`, whose message names the
structure, the field and the byte position. Arguments an encoder cannot represent (a string
over 32767 UTF-8 bytes, an integer outside its field's range) raise
:class:`kstore.errors.InvalidRequestError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kstore.errors import CorruptRecordError, InvalidRequestError

__all__ = [
    "OFFSETS_TOPIC",
    "OFFSETS_PARTITIONS",
    "java_string_hash",
    "group_partition",
    "OffsetCommit",
    "OffsetCommitKey",
    "GroupMetadataKey",
    "OtherKey",
    "encode_offset_commit_key",
    "encode_offset_commit_value",
    "encode_group_metadata_key",
    "decode_key",
    "decode_offset_commit_value",
    "decode_record",
]

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_PARTITIONS = 50

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_STRING_BYTES = 0x7FFF  # int16 length prefix; Kafka applies the same cap to compact strings

_KEY_OFFSET_COMMIT = (0, 1)
_KEY_OFFSET_COMMIT_WRITTEN = 1
_KEY_GROUP_METADATA = 2
_KEY_OTHER = range(3, 16)  # 3..8 KIP-848 consumer groups, 9..15 share groups
_VALUE_OFFSET_COMMIT_WRITTEN = 3
_VALUE_OFFSET_COMMIT_MAX = 4
_VALUE_OFFSET_COMMIT_FIRST_FLEXIBLE = 4


# --------------------------------------------------------------------------- group -> partition


def java_string_hash(s: str) -> int:
    """Java's ``String.hashCode``: h = 31*h + c over UTF-16 code units, wrapped to a signed int32.

    Characters outside the BMP count as two code units (a surrogate pair), as in Java; lone
    surrogates are accepted and hashed as the single code unit they are.
    """
    if not isinstance(s, str):
        raise TypeError(f"java_string_hash expects str, not {type(s).__name__}")
    units = s.encode("utf-16-be", "surrogatepass")
    h = 0
    for (unit,) in struct.iter_unpack(">H", units):
        h = (h * 31 + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def _kafka_abs(n: int) -> int:
    """Kafka's ``Utils.abs``: the absolute value, except that INT_MIN maps to 0."""
    return 0 if n == _INT32_MIN else abs(n)


def group_partition(group: str, partitions: int = OFFSETS_PARTITIONS) -> int:
    """The ``__consumer_offsets`` partition that holds ``group``: Utils.abs(hashCode) % partitions."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions <= 0:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    return _kafka_abs(java_string_hash(group)) % partitions


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class OffsetCommit:
    """One committed offset, as replayed from the topic (key and value merged)."""

    group: str
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_timestamp: int = -1
    expire_timestamp: int = -1  # only value version 1 carries it


@dataclass(frozen=True)
class GroupMetadataKey:
    """Key of a group metadata record (key type 2)."""

    group: str


@dataclass(frozen=True)
class OffsetCommitKey:
    """Key of an offset commit record (key type 0 or 1)."""

    group: str
    topic: str
    partition: int


@dataclass(frozen=True)
class OtherKey:
    """A record kind 3..15 (KIP-848 consumer groups, share groups): recognised, not parsed."""

    version: int


# --------------------------------------------------------------------------- encoding


def _check_int(name: str, value: int, lo: int, hi: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name}={value} does not fit in an int{bits}")


def _string(name: str, value: str) -> bytes:
    """Classic (non-flexible) string: int16 length + UTF-8."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{name} is not encodable as UTF-8: {exc}") from None
    if len(raw) > _MAX_STRING_BYTES:
        raise InvalidRequestError(
            f"{name} is {len(raw)} UTF-8 bytes; a Kafka string holds at most {_MAX_STRING_BYTES}"
        )
    return _INT16.pack(len(raw)) + raw


def encode_offset_commit_key(group: str, topic: str, partition: int) -> bytes:
    """OffsetCommitKey at key version 1: int16 1, group string, topic string, partition int32."""
    _check_int("partition", partition, _INT32_MIN, _INT32_MAX, 32)
    return b"".join(
        (
            _INT16.pack(_KEY_OFFSET_COMMIT_WRITTEN),
            _string("group", group),
            _string("topic", topic),
            _INT32.pack(partition),
        )
    )


def encode_offset_commit_value(
    offset: int, leader_epoch: int, metadata: str, commit_timestamp: int
) -> bytes:
    """OffsetCommitValue at version 3: offset int64, leaderEpoch int32, metadata, commitTimestamp int64."""
    _check_int("offset", offset, _INT64_MIN, _INT64_MAX, 64)
    _check_int("leader_epoch", leader_epoch, _INT32_MIN, _INT32_MAX, 32)
    _check_int("commit_timestamp", commit_timestamp, _INT64_MIN, _INT64_MAX, 64)
    return b"".join(
        (
            _INT16.pack(_VALUE_OFFSET_COMMIT_WRITTEN),
            _INT64.pack(offset),
            _INT32.pack(leader_epoch),
            _string("metadata", metadata),
            _INT64.pack(commit_timestamp),
        )
    )


def encode_group_metadata_key(group: str) -> bytes:
    """GroupMetadataKey at key version 2: int16 2, group string."""
    return _INT16.pack(_KEY_GROUP_METADATA) + _string("group", group)


# --------------------------------------------------------------------------- decoding


class _Reader:
    """A cursor over a byte buffer whose failures name the structure, field and byte position."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        if data is None:
            raise CorruptRecordError(f"{what}: expected bytes, got null")
        try:
            self.buf = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"{what}: expected a bytes-like object, not {type(data).__name__}") from None
        self.pos = 0
        self.what = what

    def fail(self, message: str, at: int | None = None) -> CorruptRecordError:
        return CorruptRecordError(f"{self.what}: {message} at byte {self.pos if at is None else at}")

    def _take(self, n: int, field: str) -> int:
        start = self.pos
        left = len(self.buf) - start
        if n > left:
            raise self.fail(f"truncated {field} (needs {n} bytes, {left} left)")
        self.pos = start + n
        return start

    def int16(self, field: str) -> int:
        return _INT16.unpack_from(self.buf, self._take(2, f"int16 {field}"))[0]

    def int32(self, field: str) -> int:
        return _INT32.unpack_from(self.buf, self._take(4, f"int32 {field}"))[0]

    def int64(self, field: str) -> int:
        return _INT64.unpack_from(self.buf, self._take(8, f"int64 {field}"))[0]

    def uvarint(self, field: str) -> int:
        """Unsigned varint of at most 5 bytes holding a 32-bit value (Kafka's readUnsignedVarint)."""
        start = self.pos
        value = 0
        for i in range(5):
            if self.pos >= len(self.buf):
                raise self.fail(f"truncated unsigned varint {field}", at=start)
            b = self.buf[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if value > 0xFFFFFFFF:
                    raise self.fail(f"unsigned varint {field} exceeds 32 bits", at=start)
                return value
        raise self.fail(f"unsigned varint {field} longer than 5 bytes", at=start)

    def _utf8(self, field: str, start: int, n: int) -> str:
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"string {field} is not valid UTF-8 ({exc.reason})", at=start + exc.start) from None

    def string(self, field: str) -> str:
        """Classic non-nullable string: int16 length (>= 0) + UTF-8."""
        at = self.pos
        n = self.int16(f"{field} length")
        if n < 0:
            what = "null" if n == -1 else f"negative length {n}"
            raise self.fail(f"non-nullable string {field} has {what}", at=at)
        start = self._take(n, f"string {field}")
        return self._utf8(field, start, n)

    def compact_string(self, field: str) -> str:
        """Compact non-nullable string: unsigned varint (length + 1) + UTF-8."""
        at = self.pos
        n = self.uvarint(f"{field} length") - 1
        if n < 0:
            raise self.fail(f"non-nullable compact string {field} is null", at=at)
        if n > _MAX_STRING_BYTES:
            raise self.fail(f"compact string {field} length {n} exceeds {_MAX_STRING_BYTES}", at=at)
        start = self._take(n, f"string {field}")
        return self._utf8(field, start, n)

    def skip_tagged_fields(self) -> None:
        """A tagged-field section: uvarint count, then per field uvarint tag, uvarint size, data.

        None of these structures defines a tagged field yet, so every tag is unknown and skipped.
        """
        count = self.uvarint("tagged field count")
        for i in range(count):
            self.uvarint(f"tag of tagged field #{i}")
            size = self.uvarint(f"size of tagged field #{i}")
            self._take(size, f"data of tagged field #{i}")

    def end(self) -> None:
        left = len(self.buf) - self.pos
        if left:
            raise self.fail(f"{left} unexpected trailing byte{'s' if left != 1 else ''}")


def decode_key(data: bytes) -> OffsetCommitKey | GroupMetadataKey | OtherKey:
    """Decode a ``__consumer_offsets`` record key.

    Key type 0 or 1 -> :class:`OffsetCommitKey`; 2 -> :class:`GroupMetadataKey`; 3..15 ->
    :class:`OtherKey` (the rest of the key is not parsed). Anything else, truncated fields,
    invalid UTF-8 or trailing bytes -> :class:`CorruptRecordError`.
    """
    r = _Reader(data, "__consumer_offsets key")
    version = r.int16("record type")
    if version in _KEY_OFFSET_COMMIT:
        r.what = f"OffsetCommitKey v{version}"
        group = r.string("group")
        topic = r.string("topic")
        partition = r.int32("partition")
        r.end()
        return OffsetCommitKey(group, topic, partition)
    if version == _KEY_GROUP_METADATA:
        r.what = f"GroupMetadataKey v{version}"
        group = r.string("group")
        r.end()
        return GroupMetadataKey(group)
    if version in _KEY_OTHER:
        return OtherKey(version)
    raise r.fail(f"unknown record type {version}", at=0)


def decode_offset_commit_value(data: bytes) -> dict:
    """Decode an OffsetCommitValue of version 0..4.

    Returns ``{"offset", "leader_epoch", "metadata", "commit_timestamp", "expire_timestamp"}``;
    fields the version lacks take their schema defaults (-1, and "" for metadata). Version 4 is
    flexible (compact string, trailing tagged fields, all skipped as unknown).
    """
    r = _Reader(data, "OffsetCommitValue")
    version = r.int16("version")
    if not 0 <= version <= _VALUE_OFFSET_COMMIT_MAX:
        raise r.fail(f"unsupported version {version} (readable: 0..{_VALUE_OFFSET_COMMIT_MAX})", at=0)
    r.what = f"OffsetCommitValue v{version}"
    flexible = version >= _VALUE_OFFSET_COMMIT_FIRST_FLEXIBLE
    offset = r.int64("offset")
    leader_epoch = r.int32("leaderEpoch") if version >= 3 else -1
    metadata = r.compact_string("metadata") if flexible else r.string("metadata")
    commit_timestamp = r.int64("commitTimestamp")
    expire_timestamp = r.int64("expireTimestamp") if version == 1 else -1
    if flexible:
        r.skip_tagged_fields()
    r.end()
    return {
        "offset": offset,
        "leader_epoch": leader_epoch,
        "metadata": metadata,
        "commit_timestamp": commit_timestamp,
        "expire_timestamp": expire_timestamp,
    }


def _check_group_value(value: bytes) -> None:
    """A group metadata value is not interpreted here; it must at least carry its int16 version."""
    r = _Reader(value, "GroupMetadataValue")
    version = r.int16("version")
    if version < 0:
        raise r.fail(f"negative version {version}", at=0)


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, object] | None:
    """Classify one record read back from ``__consumer_offsets``.

    - offset commit: ``("offset", OffsetCommit)``, or ``("offset_delete", OffsetCommitKey)`` for a
      tombstone (value None);
    - group metadata: ``("group", group)``, or ``("group_delete", group)`` for a tombstone (the
      value's members are not decoded);
    - record types 3..15: None (skip);
    - a null key or malformed bytes: :class:`CorruptRecordError`.
    """
    if key is None:
        raise CorruptRecordError("__consumer_offsets record has a null key")
    k = decode_key(key)
    if isinstance(k, OffsetCommitKey):
        if value is None:
            return ("offset_delete", k)
        v = decode_offset_commit_value(value)
        return ("offset", OffsetCommit(k.group, k.topic, k.partition, **v))
    if isinstance(k, GroupMetadataKey):
        if value is None:
            return ("group_delete", k.group)
        _check_group_value(value)
        return ("group", k.group)
    return None
