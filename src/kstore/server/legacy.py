"""Message formats v0 and v1 (magic 0 and 1) for clients that speak Produce v0-v2 and Fetch
v0-v3, as a Kafka 3.x broker serves them (kafka-storage.md section 1.3).

The log stays all RecordBatch v2. ``up_convert`` turns a produced v0/v1 message set into one v2
batch (as Kafka's ``LogValidator`` does: one batch for the whole set, the wrapper's codec kept,
offsets assigned by the log on append, timestamps kept, -1 for magic 0); ``down_convert`` turns
fetched v2 batches into the message set the fetch version implies (Fetch v0-v1: magic 0, v2-v3:
magic 1), within the fetch's byte limit, one wrapper message per compressed batch with the
batch's codec (Kafka's ``RecordsUtil.downConvert``).

Each entry of a message set::

    offset int64 | size int32 | crc uint32 | magic int8 | attributes int8
    | timestamp int64 (v1 only) | key int32-length bytes (-1: null) | value int32-length bytes

The CRC is CRC-32 (IEEE) from the magic byte to the end of the entry. A compressed entry (codec
in attributes bits 0-2) holds a whole inner message set, compressed, as its value; in v1 the
inner offsets are relative (0..n-1) and the wrapper's offset is the last inner offset.

Both directions are Python, record by record: only clients of message formats from before
Kafka 0.11 take this path, and the measured cost (tests/server/test_legacy.py prints it beside
the sendfile fetch of the same records) is what they pay; Kafka's own down-conversion is also
a copy through the JVM heap, which is why it never uses sendfile for converted data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import cramjam
import lz4.frame

from kstore import _core
from kstore.errors import (
    CorruptRecordError,
    InvalidRecordError,
    UnsupportedCompressionTypeError,
)

__all__ = ["down_convert", "is_legacy", "message_format_for_fetch", "parse_message_set",
           "up_convert"]

_ENTRY = struct.Struct(">qiIbb")  # offset, size, crc, magic, attributes: 18 bytes
_OFFSET_SIZE = struct.Struct(">qi")
_TIMESTAMP = struct.Struct(">q")
_LENGTH = struct.Struct(">i")
LOG_OVERHEAD = 12  # offset + size, in front of every entry of every magic
_MIN_SIZE = {0: 14, 1: 22}  # crc + magic + attributes (+ timestamp) + two lengths
_CODEC_MASK = 0x07
_LOG_APPEND_TIME = 0x08  # v1 attributes bit 3
NO_TIMESTAMP = -1
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
_CODEC_NAMES = {0: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4"}
# The inflated size a produced wrapper may reach (the same bound as the C batch decoder's).
MAX_DECOMPRESSED_BYTES = 128 * 1024 * 1024
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024


def message_format_for_fetch(version: int) -> int:
    """The magic a Fetch of ``version`` can read: 0 before v2, 1 for v2-v3, 2 from v4."""
    return 0 if version < 2 else 1 if version < 4 else 2


# ==============================================================================================
# Parsing (produce side)


def _entries(buf: memoryview, what: str) -> Iterator[tuple[int, int, int, int, memoryview]]:
    """(offset, magic, attributes, timestamp, key..value bytes) of each entry, CRC checked.
    A torn or short entry, a bad CRC or a magic other than 0/1 raises CorruptRecordError."""
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < LOG_OVERHEAD + _MIN_SIZE[0]:
            raise CorruptRecordError(f"{what}: {end - pos} bytes at byte {pos} cannot hold a "
                                     f"message (a torn message set)")
        offset, size, crc, magic, attrs = _ENTRY.unpack_from(buf, pos)
        if magic not in (0, 1):
            raise CorruptRecordError(f"{what}: message at byte {pos} has magic {magic}; a "
                                     f"message set of format v0/v1 holds magic 0 or 1 only")
        if size < _MIN_SIZE[magic] or size > end - pos - LOG_OVERHEAD:
            raise CorruptRecordError(f"{what}: message at byte {pos} claims {size} bytes, "
                                     f"{end - pos - LOG_OVERHEAD} follow (minimum "
                                     f"{_MIN_SIZE[magic]} for magic {magic})")
        body = buf[pos + LOG_OVERHEAD + 4:pos + LOG_OVERHEAD + size]  # magic .. end
        if zlib.crc32(body) != crc:
            raise CorruptRecordError(f"{what}: message at byte {pos} (offset {offset}) fails "
                                     f"its CRC-32: stored {crc:#010x}, computed "
                                     f"{zlib.crc32(body):#010x}; the client must resend it")
        ts = NO_TIMESTAMP
        head = 2
        if magic == 1:
            (ts,) = _TIMESTAMP.unpack_from(body, 2)
            head = 10
        yield offset, magic, attrs, ts, body[head:]
        pos += LOG_OVERHEAD + size


def _key_value(kv: memoryview, what: str) -> tuple[bytes | None, bytes | None]:
    out: list[bytes | None] = []
    pos = 0
    for name in ("key", "value"):
        if len(kv) - pos < 4:
            raise CorruptRecordError(f"{what}: the message ends inside its {name} length")
        (n,) = _LENGTH.unpack_from(kv, pos)
        pos += 4
        if n < -1 or n > len(kv) - pos:
            raise CorruptRecordError(f"{what}: {name} length {n} with {len(kv) - pos} bytes left")
        if n == -1:
            out.append(None)
        else:
            out.append(bytes(kv[pos:pos + n]))
            pos += n
    if pos != len(kv):
        raise CorruptRecordError(f"{what}: {len(kv) - pos} bytes after the value")
    return out[0], out[1]


def parse_message_set(data: Any) -> tuple[int, int, int, list[tuple[int, int, bytes | None,
                                                                      bytes | None]]]:
    """A produced v0/v1 message set as (magic, codec, timestamp type, records), each record
    (offset, timestamp, key, value) with compressed wrappers opened. Raises CorruptRecordError
    (CRC, sizes, a wrapper inside a wrapper), UnsupportedCompressionTypeError (a codec format
    v0/v1 does not have) and InvalidRecordError (magics mixed in one set)."""
    buf = memoryview(data).cast("B")
    magic = -1
    codec = 0
    ts_type = 0
    records: list[tuple[int, int, bytes | None, bytes | None]] = []
    for offset, m, attrs, ts, kv in _entries(buf, "produced message set"):
        if magic == -1:
            magic = m
        elif m != magic:
            raise InvalidRecordError(f"a produced message set mixes magic {magic} and {m}")
        c = attrs & _CODEC_MASK
        if m == 1 and attrs & _LOG_APPEND_TIME:
            ts_type = 1
        key, value = _key_value(kv, "produced message")
        if c == 0:
            records.append((offset, ts, key, value))
            continue
        if value is None:
            raise CorruptRecordError(f"compressed wrapper message at offset {offset} has no value")
        codec = c
        inner = decompress(c, value, m)
        for i_offset, i_magic, i_attrs, i_ts, i_kv in _entries(memoryview(inner),
                                                                 "compressed message set"):
            if i_attrs & _CODEC_MASK:
                raise CorruptRecordError("a compressed message inside a compressed message")
            if i_magic != m:
                raise InvalidRecordError(f"wrapper of magic {m} holds a message of magic "
                                         f"{i_magic}")
            i_key, i_value = _key_value(i_kv, "compressed message")
            records.append((i_offset, ts if ts_type == 1 else i_ts, i_key, i_value))
    if magic == -1:
        raise CorruptRecordError("an empty message set")
    return magic, codec, ts_type, records


def up_convert(data: Any) -> bytes:
    """One RecordBatch v2 (base offset 0: the log assigns offsets on append) holding the
    records of a produced v0/v1 message set, compressed with the codec its wrappers used.
    Raises as ``parse_message_set``."""
    magic, codec, ts_type, records = parse_message_set(data)
    b = _core.BatchBuilder(compression=_CODEC_NAMES[codec], timestamp_type=ts_type,
                           max_batch_bytes=2**31 - 1)
    for _, ts, key, value in records:
        b.append(value, key, None, ts if magic == 1 else NO_TIMESTAMP)
    return b.build()


# ==============================================================================================
# Codecs of wrapper messages


def decompress(codec: int, data: bytes, magic: int) -> bytes:
    try:
        if codec == GZIP:
            out = _gunzip(data)
        elif codec == SNAPPY:
            out = _unsnappy(data)
        elif codec == LZ4:
            out = lz4.frame.decompress(_lz4_fix_v0_checksum(data) if magic == 0 else data)
        else:
            raise UnsupportedCompressionTypeError(
                f"codec {codec} does not exist in message format v{magic} (gzip 1, snappy 2, "
                f"lz4 3); send zstd in RecordBatch v2 (Produce v7+)")
    except (zlib.error, RuntimeError, ValueError, cramjam.DecompressionError) as exc:
        if isinstance(exc, UnsupportedCompressionTypeError):
            raise
        raise CorruptRecordError(f"a {_CODEC_NAMES[codec]} wrapper message does not "
                                 f"decompress: {exc}") from None
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise CorruptRecordError(f"a wrapper message inflates past {MAX_DECOMPRESSED_BYTES} "
                                 f"bytes")
    return out


def _gunzip(data: bytes) -> bytes:
    """Every gzip member (Java's reader accepts concatenated members)."""
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=31)
        out += d.decompress(rest, MAX_DECOMPRESSED_BYTES + 1 - len(out))
        if d.unconsumed_tail:
            raise CorruptRecordError(f"a gzip wrapper message inflates past "
                                     f"{MAX_DECOMPRESSED_BYTES} bytes")
        if not d.eof:
            raise CorruptRecordError("a gzip wrapper message is truncated")
        rest = d.unused_data
    return bytes(out)


def _unsnappy(data: bytes) -> bytes:
    """Xerial framing (Java's snappy-java) or one raw block (librdkafka)."""
    if len(data) < 16 or data[:8] != _XERIAL_HEADER[:8]:
        return bytes(cramjam.snappy.decompress_raw(data))
    out = bytearray()
    pos = 16
    while pos < len(data):
        if len(data) - pos < 4:
            raise CorruptRecordError("a snappy (xerial) chunk length is torn")
        (n,) = _LENGTH.unpack_from(data, pos)
        pos += 4
        if n < 0 or n > len(data) - pos:
            raise CorruptRecordError(f"a snappy (xerial) chunk of {n} bytes, "
                                     f"{len(data) - pos} left")
        out += bytes(cramjam.snappy.decompress_raw(data[pos:pos + n]))
        if len(out) > MAX_DECOMPRESSED_BYTES:
            break
        pos += n
    return bytes(out)


def _snappy_xerial(data: bytes) -> bytes:
    """Xerial framing, as Java clients and Kafka's own down-conversion write it."""
    out = bytearray(_XERIAL_HEADER)
    for i in range(0, len(data), _XERIAL_BLOCK):
        block = bytes(cramjam.snappy.compress_raw(data[i:i + _XERIAL_BLOCK]))
        out += _LENGTH.pack(len(block)) + block
    return bytes(out)


def _xxh32(data: bytes, seed: int = 0) -> int:
    """XXH32 of a short input (< 16 bytes: an LZ4 frame descriptor)."""
    p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    m = 0xFFFFFFFF
    assert len(data) < 16

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & m

    h = (seed + p5 + len(data)) & m
    i = 0
    while i + 4 <= len(data):
        (w,) = struct.unpack_from("<I", data, i)
        h = (rotl((h + w * p3) & m, 17) * p4) & m
        i += 4
    for b in data[i:]:
        h = (rotl((h + b * p5) & m, 11) * p1) & m
    h ^= h >> 15
    h = (h * p2) & m
    h ^= h >> 13
    h = (h * p3) & m
    h ^= h >> 16
    return h


def _lz4_descriptor_end(data: bytes) -> int:
    if len(data) < 7 or data[:4] != b"\x04\x22\x4d\x18":
        raise CorruptRecordError("an lz4 wrapper message is not an LZ4 frame (bad magic)")
    return 6 + (8 if data[4] & 0x08 else 0)  # FLG, BD, content size if flagged


def _lz4_fix_v0_checksum(data: bytes) -> bytes:
    """KAFKA-3160: clients of magic 0 computed the frame header checksum over the magic too.
    Kafka accepts either on magic 0 input; LZ4F accepts only the proper one."""
    end = _lz4_descriptor_end(data)
    if len(data) <= end:
        raise CorruptRecordError("an lz4 wrapper message ends inside its frame header")
    proper = (_xxh32(data[4:end]) >> 8) & 0xFF
    return data if data[end] == proper else data[:end] + bytes([proper]) + data[end + 1:]


def compress(codec: int, data: bytes, magic: int) -> bytes:
    if codec == GZIP:
        c = zlib.compressobj(wbits=31)
        return c.compress(data) + c.flush()
    if codec == SNAPPY:
        return _snappy_xerial(data)
    if codec == LZ4:
        out = lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                                 block_linked=False, content_checksum=False, store_size=False)
        if magic == 0:  # Kafka writes the KAFKA-3160 checksum for magic 0, which v0 readers expect
            end = _lz4_descriptor_end(out)
            out = out[:end] + bytes([(_xxh32(out[:end]) >> 8) & 0xFF]) + out[end + 1:]
        return out
    raise AssertionError(codec)


# ==============================================================================================
# Down-conversion (fetch side)


_HEAD_V0 = struct.Struct(">bbi")  # magic, attributes, key length
_HEAD_V1 = struct.Struct(">bbqi")  # magic, attributes, timestamp, key length
_OFFSET_SIZE_CRC = struct.Struct(">qiI")


def _message(offset: int, magic: int, attrs: int, ts: int, key: bytes | None,
             value: bytes | None) -> bytes:
    """One v0/v1 message, CRC-32 computed (per record: kept to a few C calls)."""
    head = (_HEAD_V1.pack(magic, attrs, ts, -1 if key is None else len(key)) if magic == 1
            else _HEAD_V0.pack(magic, attrs, -1 if key is None else len(key)))
    body = b"".join((head, key or b"", _LENGTH.pack(-1 if value is None else len(value)),
                     value or b""))
    return _OFFSET_SIZE_CRC.pack(offset, len(body) + 4, zlib.crc32(body)) + body


def down_convert(data: Any, magic: int, fetch_offset: int, max_bytes: int) -> bytes:
    """The v2 batches in ``data`` (a fetched span, CRC-checked by the caller) as a message set
    of ``magic`` (0 or 1): records before ``fetch_offset`` and control batches dropped, headers
    dropped (formats v0/v1 have none), a compressed batch as one wrapper message of its codec.
    At most ``max_bytes`` of whole messages, but always the first one (KIP-74: a client must be
    able to make progress past a message larger than its limit). Raises
    UnsupportedCompressionTypeError for a zstd batch (Kafka answers fetches below v10 so)."""
    out = bytearray()
    for batch in _core.iter_batches(data):
        if batch.is_control:
            continue
        if batch.compression_id == ZSTD:
            raise UnsupportedCompressionTypeError(
                f"the batch at offset {batch.base_offset} is zstd-compressed, which message "
                f"format v{magic} cannot carry; fetch with Fetch v10 or later")
        append_time = batch.timestamp_type == 1
        attrs_ts = _LOG_APPEND_TIME if append_time and magic == 1 else 0
        recs = [r for r in batch.records() if r.offset >= fetch_offset]
        if not recs:
            continue
        if batch.compression_id == 0:
            pieces = [_message(r.offset, magic, attrs_ts,
                               batch.max_timestamp if append_time else r.timestamp,
                               r.key, r.value) for r in recs]
        else:
            first = recs[0].offset
            inner = b"".join(
                _message(r.offset - first if magic == 1 else r.offset, magic, 0,
                         batch.max_timestamp if append_time else r.timestamp, r.key, r.value)
                for r in recs)
            wrapper_ts = batch.max_timestamp if magic == 1 else NO_TIMESTAMP
            pieces = [_message(recs[-1].offset, magic, batch.compression_id | attrs_ts,
                               wrapper_ts, None,
                               compress(batch.compression_id, inner, magic))]
        for piece in pieces:
            if out and len(out) + len(piece) > max_bytes:
                return bytes(out)
            out += piece
    return bytes(out)


def is_legacy(records: memoryview, version: int) -> bool:
    """Whether the records of a Produce of ``version`` are a v0/v1 message set: the magic is at
    byte 16 in every format. Only Produce v0-v2 may carry one (v3+ is INVALID_RECORD)."""
    return version <= 2 and len(records) > 16 and records[16] in (0, 1)


# ==============================================================================================
# ListOffsets v0


def old_style_offsets(lg: Any, timestamp: int, max_num_offsets: int, now_ms: int) -> list[int]:
    """ListOffsets v0's answer (Kafka's legacy ``fetchOffsetsBefore``): the base offsets of the
    segments last modified at or before ``timestamp``, newest first, plus the log end offset
    when the active segment holds data, at most ``max_num_offsets`` of them. -1 (latest) starts
    at the log end, -2 (earliest) answers the log start offset."""
    start = lg.log_start_offset
    points = [(max(seg.base_offset, start), seg.last_modified_ms()) for seg in lg._segments]
    if not points or lg._segments[-1].size > 0:
        points.append((lg.log_end_offset, now_ms))
    if timestamp == -1:
        first = len(points) - 1
    elif timestamp == -2:
        first = 0
    else:
        first = -1
        for i, (_, modified) in enumerate(points):
            if modified <= timestamp:
                first = i
    out: list[int] = []
    for off, _ in points[first::-1] if first >= 0 else ():
        if len(out) >= max_num_offsets:
            break
        if not out or out[-1] != off:
            out.append(off)
    return out
