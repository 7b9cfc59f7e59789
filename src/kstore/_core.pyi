"""Type stubs for the compiled core (kstore._core)."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Buffer = bytes | bytearray | memoryview | Any  # anything with the buffer protocol

HEADER_SIZE: int
LOG_OVERHEAD: int
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
    def records(self, check_crc: bool = True, max_decompressed_bytes: int = ...) -> list[Record]: ...
    def columns(self, check_crc: bool = True, max_decompressed_bytes: int = ...) -> Columns: ...

def iter_batches(buf: Buffer, start: int = 0, end: int = -1, allow_partial: bool = False) -> Iterator[Batch]: ...
def read_batch(buf: Buffer, position: int = 0) -> Batch: ...
def columns(buf: Buffer, start: int = 0, end: int = -1, check_crc: bool = True, max_decompressed_bytes: int = ...) -> Columns: ...

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
