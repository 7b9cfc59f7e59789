"""Records of Kafka's ``__transaction_state`` topic: the transaction coordinator's log.

Key (TransactionLogKey v0): int16 version 0 | string transactional_id.
Value (TransactionLogValue v0): int16 version 0 | int64 producer_id | int16 producer_epoch |
int32 transaction_timeout_ms | int8 transaction_status | array (int32 count, -1 null) of
{string topic | array of int32 partition} | int64 transaction_last_update_timestamp_ms |
int64 transaction_start_timestamp_ms. Strings are int16 length + UTF-8. A null value is a
tombstone. The topic has 50 partitions (transaction.state.log.num.partitions); a transactional
id lives on ``Utils.abs(hashCode) % 50``, as a group does in ``__consumer_offsets``.

Worked example: id "t1", producer 1000 epoch 2, timeout 60000, Ongoing (1), partitions
orders-[0, 3], updated and started at 1700000000000:
key   ``0000 0002 7431``
value ``0000 00000000000003e8 0002 0000ea60 01 00000001 0006 6f7264657273 00000002 00000000
00000003 0000018bcfe56800 0000018bcfe56800``.

kafka-spec has no schema for these records (they are broker-internal); the layout is Kafka's
``TransactionLog.json`` v0 as it stands in Kafka 3.x.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field

from kstore.errors import CorruptRecordError
from kstore.offsets import group_partition

TXN_TOPIC = "__transaction_state"
TXN_PARTITIONS = 50
TXN_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 104857600,
                    "compression.type": "producer"}

_H = struct.Struct(">h")
_I = struct.Struct(">i")
_VALUE_HEAD = struct.Struct(">hqhib")
_TIMES = struct.Struct(">qq")


class TxnStatus(enum.IntEnum):
    """Kafka's TransactionState ids, as stored."""

    EMPTY = 0
    ONGOING = 1
    PREPARE_COMMIT = 2
    PREPARE_ABORT = 3
    COMPLETE_COMMIT = 4
    COMPLETE_ABORT = 5
    DEAD = 6
    PREPARE_EPOCH_FENCE = 7

    @property
    def kafka_name(self) -> str:
        """The name DescribeTransactions/ListTransactions use (Kafka's TransactionState.name)."""
        return "".join(w.capitalize() for w in self.name.split("_"))


@dataclass
class TxnMetadata:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    status: TxnStatus = TxnStatus.EMPTY
    partitions: set[tuple[str, int]] = field(default_factory=set)
    last_update_ms: int = -1
    start_ms: int = -1


@functools.lru_cache(maxsize=4096)
def txn_partition(transactional_id: str) -> int:
    """The __transaction_state partition of an id (Java's String.hashCode, so 2 writes per
    transaction would hash it in Python each time: cached)."""
    return group_partition(transactional_id, TXN_PARTITIONS)


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 32767:
        raise ValueError(f"string of {len(b)} bytes is too long for an int16 length")
    return _H.pack(len(b)) + b


def encode_key(transactional_id: str) -> bytes:
    return _H.pack(0) + _string(transactional_id)


def encode_value(m: TxnMetadata) -> bytes:
    out = [_VALUE_HEAD.pack(0, m.producer_id, m.producer_epoch, m.timeout_ms, int(m.status))]
    by_topic: dict[str, list[int]] = {}
    for t, p in sorted(m.partitions):
        by_topic.setdefault(t, []).append(p)
    out.append(_I.pack(len(by_topic)))
    for t, parts in by_topic.items():
        out.append(_string(t))
        out.append(_I.pack(len(parts)))
        out.append(struct.pack(f">{len(parts)}i", *parts))
    out.append(_TIMES.pack(m.last_update_ms, m.start_ms))
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.data):
            raise CorruptRecordError(f"{self.what} ends at byte {len(self.data)}, inside a "
                                     f"field at byte {self.pos}")
        v = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return v

    def string(self) -> str:
        (n,) = self.take(_H)
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptRecordError(f"{self.what}: string length {n} at byte {self.pos - 2} "
                                     f"does not fit")
        s = self.data[self.pos:self.pos + n].decode("utf-8", "strict")
        self.pos += n
        return s


def decode_key(data: bytes) -> str:
    r = _Reader(data, "__transaction_state key")
    (version,) = r.take(_H)
    if version != 0:
        raise CorruptRecordError(f"__transaction_state key version {version} is unknown")
    return r.string()


def decode_value(transactional_id: str, data: bytes) -> TxnMetadata:
    r = _Reader(data, "__transaction_state value")
    version, pid, epoch, timeout, status = r.take(_VALUE_HEAD)
    if version != 0:
        raise CorruptRecordError(f"__transaction_state value version {version} is not 0 "
                                 f"(transactional id {transactional_id!r})")
    parts: set[tuple[str, int]] = set()
    (n,) = r.take(_I)
    for _ in range(max(n, 0)):
        t = r.string()
        (k,) = r.take(_I)
        for _ in range(max(k, 0)):
            parts.add((t, r.take(_I)[0]))
    last, start = r.take(_TIMES)
    try:
        st = TxnStatus(status)
    except ValueError:
        raise CorruptRecordError(f"__transaction_state: status {status} of {transactional_id!r} "
                                 f"is unknown") from None
    return TxnMetadata(transactional_id, pid, epoch, timeout, st, parts, last, start)
