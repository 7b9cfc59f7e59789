"""Type stubs for the compiled core (kstore._core)."""

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Buffer = bytes | bytearray | memoryview | Any  # anything with the buffer protocol

HEADER_SIZE: int
LOG_OVERHEAD: int
ERR_TRUNCATED: int
ERR_OFFSET: int
INDEX_JUMP_MIN_BYTES: int
TIMESTAMP_CREATE: int
TIMESTAMP_LOG_APPEND: int
DEFAULT_MAX_DECOMPRESSED_BYTES: int
DEFAULT_MAX_BATCH_BYTES: int
CODECS: tuple[str, ...]

def codec_id(compression: str | None) -> int: ...
def now_ms() -> int: ...
def crc32c(data: Buffer, crc: int = 0) -> int: ...
def crc32c_hardware() -> bool: ...
def murmur2(data: Buffer) -> int: ...
def murmur2_partition(key: Buffer, num_partitions: int) -> int: ...

class Pinned:
    obj: Any
    def __len__(self) -> int: ...

def pin(obj: Buffer, writable: bool = False) -> Pinned: ...

class Record:
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    topic: str | None
    partition: int
    def __init__(
        self,
        offset: int = 0,
        timestamp: int = -1,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Iterable[tuple[str, bytes | None]] = (),
        timestamp_type: int = 0,
        topic: str | None = None,
        partition: int = -1,
    ) -> None: ...

class Columns:
    data: Any
    offsets: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    key_positions: npt.NDArray[np.int64]
    key_lengths: npt.NDArray[np.int32]
    value_positions: npt.NDArray[np.int64]
    value_lengths: npt.NDArray[np.int32]
    def __len__(self) -> int: ...
    def value(self, i: int) -> memoryview | None: ...
    def key(self, i: int) -> memoryview | None: ...
    def values(self) -> list[bytes | None]: ...
    def keys(self) -> list[bytes | None]: ...

class Batch:
    source: Pinned
    position: int
    size: int
    base_offset: int
    last_offset_delta: int
    last_offset: int
    next_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    compression: str
    compression_id: int
    timestamp_type: int
    is_transactional: bool
    is_control: bool
    has_delete_horizon: bool
    def __len__(self) -> int: ...
    def raw(self) -> memoryview: ...
    def __bytes__(self) -> bytes: ...
    def compute_crc(self) -> int: ...
    def validate(self, deep: bool = False, max_decompressed_bytes: int = ...) -> None: ...
    def records(self, check_crc: bool = True, max_decompressed_bytes: int = ..., topic: str | None = None, partition: int = -1, min_offset: int = -1) -> list[Record]: ...
    def columns(self, check_crc: bool = True, max_decompressed_bytes: int = ...) -> Columns: ...

def iter_batches(buf: Buffer, start: int = 0, end: int = -1, allow_partial: bool = False) -> Iterator[Batch]: ...
def read_batch(buf: Buffer, position: int = 0) -> Batch: ...
def _aborted_index(aborted: Iterable[tuple[int, int, int]]) -> dict[int, tuple[list[int], list[int]]]: ...
def _in_aborted(index: dict[int, tuple[list[int], list[int]]], pid: int, base_offset: int) -> bool: ...
def columns(buf: Buffer, start: int = 0, end: int = -1, check_crc: bool = True, max_decompressed_bytes: int = ..., data_only: bool = False, aborted: Sequence[tuple[int, int, int]] | None = None) -> Columns: ...

class ScanResult:
    positions: npt.NDArray[np.int64]
    base_offsets: npt.NDArray[np.int64]
    last_offsets: npt.NDArray[np.int64]
    max_timestamps: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int32]
    record_counts: npt.NDArray[np.int32]
    valid_end: int
    error_position: int
    error_code: int
    error: Exception | None
    torn: bool
    ok: bool
    def __len__(self) -> int: ...

def scan(buf: Buffer, start: int = 0, end: int = -1, check_crc: bool = True, check_offsets: bool = True, max_batches: int = 0) -> ScanResult: ...
def validate_all(buf: Buffer, start: int = 0, end: int = -1) -> int: ...
def find_offset(buf: Buffer, target: int, start: int = 0, end: int = -1) -> int: ...
def txn_batches(buf: Buffer, start: int = 0, end: int = -1) -> tuple[list[tuple[int, int, int, int]], int]: ...
def find_timestamp(buf: Buffer, target: int, start: int = 0, end: int = -1) -> int: ...
def span_batches(buf: Buffer, start: int, max_bytes: int, max_offset: int = ..., end: int = -1) -> int: ...
def stamp_batches(buf: Buffer, next_offset: int, log_append_time: int = -1, partition_leader_epoch: int = -1, set_leader_epoch: bool = False) -> tuple[int, int, int, int, int]: ...

ValuesLike = Sequence[Buffer | str | None] | npt.NDArray[np.uint8] | tuple[Buffer, npt.NDArray[np.int64]]

class BatchBuilder:
    count: int
    size: int
    compression: str
    def __init__(
        self,
        compression: str | None = "none",
        base_offset: int = 0,
        timestamp_type: str | int = "create",
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        transactional: bool = False,
        max_batch_bytes: int = ...,
        compression_level: int | None = None,
        partition_leader_epoch: int = -1,
    ) -> None: ...
    def __len__(self) -> int: ...
    def append(
        self,
        value: Buffer | str | None,
        key: Buffer | str | None = None,
        headers: Iterable[tuple[str | bytes, Buffer | None]] | None = None,
        timestamp: int | None = None,
    ) -> bool: ...
    def append_many(self, values: ValuesLike, keys: ValuesLike | None = None, timestamps: Sequence[int] | npt.NDArray[np.int64] | None = None) -> int: ...
    def build(self) -> bytes: ...

def encode_batches(
    values: ValuesLike,
    keys: ValuesLike | None = None,
    timestamps: Sequence[int] | npt.NDArray[np.int64] | None = None,
    *,
    compression: str | None = "none",
    max_batch_bytes: int = 16384,
    base_offset: int = 0,
    **builder_args: Any,
) -> bytes: ...

def partitions_for_keys(keys: ValuesLike, num_partitions: int, partitioner: str = "murmur2") -> npt.NDArray[np.int32]: ...
def max_record_size(values: ValuesLike, keys: ValuesLike | None = None) -> int: ...

# ---- segment append path and index search (kstore.log uses these) ----

ROLL_SIZE: int
ROLL_TIME: int
ROLL_INDEX_FULL: int
ROLL_OFFSET_OVERFLOW: int

def offset_index_lookup(buf: Buffer, entries: int, relative_offset: int) -> tuple[int, int, int]: ...
def time_index_lookup(buf: Buffer, entries: int, timestamp: int) -> tuple[int, int, int]: ...
def index_valid_entries(buf: Buffer, entries: int, time_index: bool = False) -> int: ...
def index_entry(buf: Buffer, slot: int, time_index: bool = False) -> tuple[int, int]: ...
def span_with_index(buf: Buffer, start: int, max_bytes: int, max_offset: int, end: int, index: Buffer | None, entries: int, base_offset: int) -> tuple[int, int]: ...
def read_find(buf: Buffer, target: int, start: int, end: int, min_base: int, max_last: int) -> tuple[int, int, int, int]: ...
def read_span(buf: Buffer, start: int, max_bytes: int, max_offset: int, end: int, index: Buffer | None, entries: int, base_offset: int, max_last: int) -> tuple[int, int, int]: ...
def resync(buf: Buffer, bad: int, end: int, min_base: int, max_last: int) -> int: ...
def batch_crc_ok(buf: Buffer, position: int, end: int = -1) -> bool: ...
def read_error_text(rc: int) -> str: ...

TAIL_FILE_SIZE: int
TAIL_PENDING: int
SHARED_OWNER_DIED: int
SHARED_STALE: int
SHARED_SLOW: int

class SharedTail:
    held: bool
    valid: bool
    seq: int
    session: int
    deleted: int
    active_base: int
    size: int
    next_offset: int
    log_start: int
    recovery_point: int
    last_flush_ms: int
    segments_gen: int
    offset_persisted: int
    time_persisted: int
    def __init__(self, mm: Buffer) -> None: ...
    def init(self, session: int) -> None: ...
    def mark_valid(self) -> None: ...
    def lock(self) -> bool: ...
    def unlock(self) -> None: ...
    def busy(self) -> bool: ...
    def release(self) -> None: ...
    def bump(self) -> int: ...
    def stats(self) -> dict[str, int]: ...

class SegmentAppender:
    def load_shared(self, st: SharedTail) -> None: ...
    def publish(self, st: SharedTail, leo: int, recovery_point: int, last_flush_ms: int) -> int: ...
    fd: int
    base_offset: int
    size: int
    next_offset: int
    index_interval: int
    bytes_since_index: int
    max_timestamp: int
    offset_of_max_timestamp: int
    first_batch_timestamp: int
    created_ms: int
    offset_entries: int
    offset_max_entries: int
    time_entries: int
    time_max_entries: int
    offset_persisted: int
    time_persisted: int
    last_time_entry: int
    last_first_offset: int
    last_last_offset: int
    last_max_timestamp: int
    last_offset_of_max_timestamp: int
    last_batches: int
    last_bytes: int
    offset_index_full: bool
    time_index_full: bool
    def __init__(self, fd: int, base_offset: int, size: int = 0, next_offset: int = -1, index_interval: int = 4096, created_ms: int = -1) -> None: ...
    def attach_indexes(self, offset_index: Buffer, offset_entries: int, time_index: Buffer, time_entries: int) -> None: ...
    def attach_index_files(self, offset_fd: int, time_fd: int, offset_persisted: int, time_persisted: int) -> None: ...
    def persist_indexes(self) -> None: ...
    def detach_indexes(self) -> None: ...
    def set_fd(self, fd: int) -> None: ...
    def set_next_offset(self, next_offset: int) -> None: ...
    def restore_state(self, bytes_since_index: int, max_timestamp: int, offset_of_max_timestamp: int, first_batch_timestamp: int) -> None: ...
    def final_time_entry(self) -> None: ...
    def track_scanned(self, res: ScanResult) -> None: ...
    def append(self, buf: Buffer, next_offset: int, log_append_time: int = -1, partition_leader_epoch: int = 0, deep: bool = True, max_message_bytes: int = ..., segment_bytes: int = ..., segment_ms: int = ..., now_ms: int = -1, verify_crc: bool = True, require_keys: bool = False) -> int: ...

class AppendPath:
    appender: SegmentAppender
    leo: int
    recovery_point: int
    last_flush_ms: int
    max_message_bytes: int
    segment_bytes: int
    segment_ms: int
    flush_messages: int
    flush_ms: int
    log_append_time: bool
    require_keys: bool
    clock: Any
    needs_flush: bool
    tail: SharedTail | None
    seen_seq: int
    def __init__(self, appender: SegmentAppender, leo: int) -> None: ...
    def append_shared(self, buf: Buffer, deep: bool, verify_crc: bool = True) -> tuple[int, int, int] | int: ...
    def configure(self, config: dict[str, Any], clock: Any) -> None: ...
    def append(self, buf: Buffer, deep: bool, verify_crc: bool = True) -> tuple[int, int, int] | int: ...

# ---- producer hot path (kstore.producer.Producer subclasses it) ----

class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int

class ProducerCore:
    _on_pending: Callable[[], Any] | None
    _txn: Any
    _transactional: bool
    store: Any
    batch_size: int
    linger_ms: int
    partitioner: str
    compression: str | None
    closed: bool
    pending_records: int
    def _setup(self, store: Any, batch_size: int, linger_ms: int, compression: str | None, partitioner: str) -> None: ...
    def send(self, topic: str, value: Buffer | str | None, key: Buffer | str | None = None, headers: Iterable[tuple[str | bytes, Buffer | None]] | None = None, timestamp: int | None = None, partition: int | None = None, on_delivery: Any = None) -> int: ...
    def flush(self) -> None: ...
    def _flush_topic(self, topic: str) -> None: ...
    def _expire(self, linger_ms: int) -> int: ...
    def _mark_closed(self) -> None: ...
