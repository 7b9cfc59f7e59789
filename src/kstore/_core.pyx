# cython: language_level=3, embedsignature=True
"""Compiled core of kstore: RecordBatch v2 encoding and decoding, CRC-32C, scans, murmur2.

The byte work happens in C (csrc/); this module pins Python buffers, calls it, and turns C
error codes into kstore.errors exceptions carrying the byte position of the fault.
"""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX, INT64_MIN
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_CheckExact
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_CheckExact
from cpython.ref cimport PyObject
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

cimport cython
cimport numpy as cnp

import threading
import zlib

import numpy as np
from bisect import bisect_right as _bisect_right
import lz4.frame
import zstandard
import cramjam

from kstore import errors

cnp.import_array()
ks_crc32c_init()

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1
    void Py_XDECREF(PyObject *o)
    void Py_INCREF(PyObject *o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    int PyBUF_READ

HEADER_SIZE = KS_BATCH_HEADER_SIZE
LOG_OVERHEAD = KS_BATCH_LOG_OVERHEAD
ERR_TRUNCATED = KS_ERR_TRUNCATED  # error codes of scan()/read_find()/read_span()
ERR_OFFSET = KS_ERR_OFFSET
TIMESTAMP_CREATE = 0
TIMESTAMP_LOG_APPEND = 1
#: Default ceiling on the decompressed size of one batch: a guard against zip bombs.
DEFAULT_MAX_DECOMPRESSED_BYTES = 128 * 1024 * 1024
#: Default ceiling on one built batch, before compression (Kafka's max.message.bytes is 1 MiB).
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
cdef dict _CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4,
                        None: 0, "uncompressed": 0}
cdef bytes _XERIAL_MAGIC = b"\x82SNAPPY\x00"
cdef int _XERIAL_HEADER = 16
cdef Py_ssize_t _XERIAL_BLOCK = 32 * 1024
cdef tuple _EMPTY = ()

_tls = threading.local()


def codec_id(compression):
    """Kafka's codec id (0-4) for a compression name; raises UnsupportedCompressionTypeError."""
    try:
        return _CODEC_IDS[compression]
    except (KeyError, TypeError):
        raise errors.UnsupportedCompressionTypeError(
            f"unknown compression {compression!r}: use one of {', '.join(CODECS)}") from None


cdef inline int64_t _now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


def now_ms():
    """Wall-clock time in milliseconds, as Kafka timestamps count it."""
    return _now_ms()


# ---------------------------------------------------------------------------------------------
# Buffers


@cython.no_gc
cdef class Pinned:
    """Holds a buffer export of ``obj`` for as long as this object lives."""

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False

    def __len__(self):
        return self.length


cdef Pinned _pin(object obj, bint writable=False):
    cdef Pinned p
    if isinstance(obj, Pinned):
        return <Pinned>obj
    p = Pinned.__new__(Pinned)
    PyObject_GetBuffer(obj, &p.view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    p.held = True
    p.obj = obj
    p.ptr = <const uint8_t *>p.view.buf
    p.length = p.view.len
    return p


def pin(obj, writable=False):
    """Pin a buffer (bytes, bytearray, memoryview, mmap, array, numpy) for repeated calls."""
    return _pin(obj, writable)


# ---------------------------------------------------------------------------------------------
# Errors


cdef str _rc_text(int rc):
    if rc == KS_ERR_TRUNCATED:
        return "truncated: the buffer ends inside a batch"
    if rc == KS_ERR_MAGIC:
        return "unsupported magic: only RecordBatch v2 (magic 2) is supported"
    if rc == KS_ERR_CRC:
        return "CRC-32C mismatch"
    if rc == KS_ERR_LENGTH:
        return "batch length field is smaller than a batch header"
    if rc == KS_ERR_VARINT:
        return "varint longer than 5 bytes (or varlong longer than 10)"
    if rc == KS_ERR_RECORD:
        return "record fields disagree with the record length"
    if rc == KS_ERR_COUNT:
        return "records count disagrees with the records in the batch"
    if rc == KS_ERR_CODEC:
        return "unknown compression codec id"
    if rc == KS_ERR_OFFSET:
        return "offsets out of order or out of range"
    if rc == KS_ERR_NOMEM:
        return "out of memory"
    return f"error {rc}"


cdef object _error(int rc, Py_ssize_t position, str detail=None):
    cdef str msg = f"{_rc_text(rc)} at byte {position}"
    if detail:
        msg = f"{msg} ({detail})"
    if rc == KS_ERR_NOMEM:
        return MemoryError(msg)
    if rc == KS_ERR_CODEC:
        return errors.UnsupportedCompressionTypeError(msg)
    return errors.CorruptRecordError(msg)


cdef str _detail_at(const uint8_t *base, Py_ssize_t length, Py_ssize_t batch_pos, int rc):
    """Extra words for an error in the batch at batch_pos: the stored and computed CRC, magic."""
    cdef const uint8_t *b = base + batch_pos
    cdef Py_ssize_t size
    if rc == KS_ERR_CRC:
        size = <Py_ssize_t>ks_load_be32(b + KS_BATCH_LENGTH_OFFSET) + KS_BATCH_LOG_OVERHEAD
        return (f"batch at byte {batch_pos}: stored 0x{ks_load_be32(b + KS_BATCH_CRC_OFFSET):08x}, "
                f"computed 0x{ks_crc32c(0, b + KS_BATCH_ATTRIBUTES_OFFSET, size - KS_BATCH_ATTRIBUTES_OFFSET):08x}")
    if rc == KS_ERR_MAGIC:
        return f"found magic {<int8_t>b[KS_BATCH_MAGIC_OFFSET]}"
    if rc == KS_ERR_TRUNCATED:
        return f"batch at byte {batch_pos}, buffer of {length} bytes"
    return f"batch at byte {batch_pos}"


# ---------------------------------------------------------------------------------------------
# Small functions


def crc32c(data, uint32_t crc=0):
    """CRC-32C of a bytes-like object, continuing from ``crc``. Releases the GIL over 64 KiB."""
    cdef Pinned p = _pin(data)
    cdef uint32_t out
    if p.length >= 65536:
        with nogil:
            out = ks_crc32c(crc, p.ptr, p.length)
    else:
        out = ks_crc32c(crc, p.ptr, p.length)
    return out


def crc32c_hardware():
    """True when CRC-32C runs on the SSE4.2 instruction."""
    return bool(ks_crc32c_hw())


def murmur2(data):
    """Kafka's murmur2 hash of ``data`` as a signed 32-bit int (Java's Utils.murmur2)."""
    cdef Pinned p = _pin(data)
    return ks_murmur2(p.ptr, p.length)


def partitions_for_keys(keys, int num_partitions, str partitioner="murmur2"):
    """Partition of every key as an int32 array: ``murmur2`` (Java's: (murmur2 & 0x7fffffff)
    % n) or ``consistent`` (librdkafka's: crc32 % n). None keys get -1 (the caller picks)."""
    cdef _Col ks
    cdef Py_ssize_t i
    cdef const uint8_t *kp
    cdef Py_ssize_t kn
    cdef Py_buffer view
    cdef int held
    cdef cnp.ndarray out
    cdef int32_t *o
    cdef bint crc = partitioner in ("consistent", "consistent_random")
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    keep = _column(keys, &ks, "keys")
    out = np.empty(max(ks.n, 0), dtype=np.int32)
    o = <int32_t *>cnp.PyArray_DATA(out)
    for i in range(ks.n):
        held = _col_get(&ks, i, &kp, &kn, &view)
        try:
            if kn < 0:
                o[i] = -1
            elif crc:
                o[i] = <int32_t>(zlib.crc32(PyMemoryView_FromMemory(<char *>kp, kn, PyBUF_READ)) % num_partitions)
            else:
                o[i] = (<uint32_t>ks_murmur2(kp, kn) & 0x7fffffff) % num_partitions
        finally:
            if held:
                PyBuffer_Release(&view)
    return out


def murmur2_partition(key, int num_partitions):
    """``(murmur2(key) & 0x7fffffff) % num_partitions``: the Java client's keyed partition."""
    cdef Pinned p = _pin(key)
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return (<uint32_t>ks_murmur2(p.ptr, p.length) & 0x7fffffff) % num_partitions


# ---------------------------------------------------------------------------------------------
# Compression (framing per kafka-storage.md section 2.2)


cdef object _zstd_compressor(level):
    cache = getattr(_tls, "zstd", None)
    if cache is None:
        cache = _tls.zstd = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=3 if level is None else level)
    return c


cdef object _zstd_decompressor():
    # Creating one per batch (with its context) took a third of the zstd decode time.
    d = getattr(_tls, "zstd_d", None)
    if d is None:
        d = _tls.zstd_d = zstandard.ZstdDecompressor()
    return d


cdef object _compress(int codec, object data, object level):
    """Compress the records area ``data`` (a buffer) with Kafka's framing for ``codec``."""
    cdef Py_ssize_t n, start
    if codec == KS_CODEC_GZIP:
        return zlib.compress(data, -1 if level is None else level, 31)
    if codec == KS_CODEC_LZ4:
        # Java consumers refuse linked blocks; no content size, as the Java producer writes.
        return lz4.frame.compress(data, compression_level=0 if level is None else level,
                                  block_size=lz4.frame.BLOCKSIZE_MAX64KB, block_linked=False,
                                  content_checksum=False, store_size=False)
    if codec == KS_CODEC_ZSTD:
        return _zstd_compressor(level).compress(data)
    if codec == KS_CODEC_SNAPPY:
        # xerial framing, as snappy-java writes it: every Kafka client reads it.
        mv = memoryview(data)
        n = len(mv)
        parts = [_XERIAL_MAGIC, b"\x00\x00\x00\x01\x00\x00\x00\x01"]
        start = 0
        while start < n or start == 0:
            block = cramjam.snappy.compress_raw(mv[start:start + _XERIAL_BLOCK])
            parts.append(len(block).to_bytes(4, "big"))
            parts.append(block)
            start += _XERIAL_BLOCK
            if start >= n:
                break
        return b"".join(parts)
    raise errors.UnsupportedCompressionTypeError(f"unknown compression codec id {codec}")


cdef object _bomb(Py_ssize_t limit, Py_ssize_t position, str codec):
    return errors.DecompressionLimitError(
        f"{codec} records at byte {position} inflate past the limit of {limit} bytes; "
        f"raise max_decompressed_bytes if the batch is genuine")


cdef Py_ssize_t _snappy_raw_length(const uint8_t *p, Py_ssize_t n) except -2:
    """The uncompressed length a raw snappy block declares (its leading uvarint), -1 if bad."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef Py_ssize_t i
    for i in range(min(n, 5)):
        v |= <uint64_t>(p[i] & 0x7f) << shift
        if not p[i] & 0x80:
            return <Py_ssize_t>v
        shift += 7
    return -1


cdef object _decompress(int codec, const uint8_t *p, Py_ssize_t n, Py_ssize_t limit,
                        Py_ssize_t position):
    """Decompress a records area. Raises CorruptRecordError (or the limit error) on bad input."""
    cdef object data = PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ)
    cdef Py_ssize_t total, declared, chunk, off
    cdef list parts
    try:
        if codec == KS_CODEC_GZIP:
            parts = []
            total = 0
            while True:
                d = zlib.decompressobj(31)
                out = d.decompress(data, limit - total + 1)
                total += len(out)
                if total > limit or d.unconsumed_tail:
                    raise _bomb(limit, position, "gzip")
                if not d.eof:
                    raise errors.CorruptRecordError(
                        f"gzip records at byte {position} end before the gzip stream does")
                parts.append(out)
                data = d.unused_data
                if not data:
                    break
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if codec == KS_CODEC_LZ4:
            # Bounded steps: python-lz4 allocates max_length up front, and asking for the whole
            # limit (128 MiB) per batch made decoding five times slower than the library.
            parts = []
            total = 0
            chunk = min(limit + 1, max(<Py_ssize_t>(1 << 18), 8 * n))
            while True:
                d = lz4.frame.LZ4FrameDecompressor()
                out = d.decompress(data, max_length=chunk)
                while True:
                    total += len(out)
                    if total > limit:
                        raise _bomb(limit, position, "lz4")
                    parts.append(out)
                    if d.eof or d.needs_input:
                        break
                    out = d.decompress(b"", max_length=min(chunk, limit - total + 1))
                if not d.eof:
                    raise errors.CorruptRecordError(
                        f"lz4 records at byte {position} end before the lz4 frame does")
                data = d.unused_data
                if not data:
                    break
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if codec == KS_CODEC_ZSTD:
            dctx = _zstd_decompressor()
            declared = zstandard.frame_content_size(data)
            if declared > limit:
                raise _bomb(limit, position, "zstd")
            if declared >= 0:
                # Known size: decompress frame by frame, each bounded by its own header.
                parts = []
                total = 0
                while True:
                    d = dctx.decompressobj()
                    out = d.decompress(data)
                    total += len(out)
                    if total > limit:
                        raise _bomb(limit, position, "zstd")
                    if not d.eof:
                        raise errors.CorruptRecordError(
                            f"zstd records at byte {position} end before the zstd frame does")
                    parts.append(out)
                    data = d.unused_data
                    if not data:
                        break
                    declared = zstandard.frame_content_size(data)
                    if declared < 0 or total + declared > limit:
                        raise _bomb(limit, position, "zstd")
                return parts[0] if len(parts) == 1 else b"".join(parts)
            # Unknown size (Java and librdkafka frames): read in bounded steps.
            parts = []
            total = 0
            chunk = min(limit + 1, max(<Py_ssize_t>65536, 8 * n))
            reader = dctx.stream_reader(data, read_across_frames=True)
            while True:
                out = reader.read(chunk)
                if not out:
                    break
                total += len(out)
                if total > limit:
                    raise _bomb(limit, position, "zstd")
                parts.append(out)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if codec == KS_CODEC_SNAPPY:
            if n >= _XERIAL_HEADER and data[:8] == _XERIAL_MAGIC:
                parts = []
                total = 0
                off = _XERIAL_HEADER
                while off < n:
                    if n - off < 4:
                        raise errors.CorruptRecordError(
                            f"snappy (xerial) chunk header cut short at byte {position + off}")
                    chunk = <Py_ssize_t>ks_load_be32(p + off)
                    off += 4
                    if chunk < 0 or chunk > n - off:
                        raise errors.CorruptRecordError(
                            f"snappy (xerial) chunk of {chunk} bytes at byte {position + off - 4} "
                            f"runs past the batch")
                    declared = _snappy_raw_length(p + off, chunk)
                    if declared < 0:
                        raise errors.CorruptRecordError(
                            f"snappy block at byte {position + off} has a bad length prefix")
                    total += declared
                    if total > limit:
                        raise _bomb(limit, position, "snappy")
                    parts.append(cramjam.snappy.decompress_raw(data[off:off + chunk]))
                    off += chunk
                if len(parts) == 1:
                    return parts[0]
                return b"".join([bytes(x) for x in parts])
            declared = _snappy_raw_length(p, n)
            if declared < 0:
                raise errors.CorruptRecordError(
                    f"snappy block at byte {position} has a bad length prefix")
            if declared > limit:
                raise _bomb(limit, position, "snappy")
            return cramjam.snappy.decompress_raw(data)
    except errors.KStoreError:
        raise
    except Exception as exc:  # the codec libraries raise their own types on corrupt input
        raise errors.CorruptRecordError(
            f"{CODECS[codec]} records at byte {position} do not decompress: {exc}") from None
    raise errors.UnsupportedCompressionTypeError(
        f"unknown compression codec id {codec} in batch at byte {position}")


# ---------------------------------------------------------------------------------------------
# Records


@cython.no_gc
cdef class Record:
    """One decoded record. ``headers`` is a tuple of ``(str, bytes | None)`` pairs.

    ``topic`` and ``partition`` are filled in by consumers; the codec leaves them None and -1.
    Records are not tracked by the cyclic garbage collector (their fields are bytes, str and
    tuples, which cannot lead back to them): with millions of them alive, collections took a
    fifth of a consumer's time.
    """

    def __init__(self, offset=0, timestamp=-1, key=None, value=None, headers=(),
                 timestamp_type=0, topic=None, partition=-1):
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = tuple((str(k), None if v is None else bytes(v)) for k, v in headers)
        self.timestamp_type = timestamp_type
        self.topic = topic
        self.partition = partition

    def __repr__(self):
        where = "" if self.topic is None else f"topic={self.topic!r}, partition={self.partition}, "
        return (f"Record({where}offset={self.offset}, timestamp={self.timestamp}, "
                f"key={self.key!r}, value={self.value!r}, headers={self.headers!r})")

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        cdef Record o = <Record>other
        return (self.offset == o.offset and self.timestamp == o.timestamp
                and self.timestamp_type == o.timestamp_type and self.key == o.key
                and self.value == o.value and self.headers == o.headers
                and self.topic == o.topic and self.partition == o.partition)

    __hash__ = None

    def __reduce__(self):
        return (Record, (self.offset, self.timestamp, self.key, self.value, self.headers,
                         self.timestamp_type, self.topic, self.partition))


cdef tuple _parse_headers(const uint8_t *area, size_t end, size_t pos, int32_t count,
                          Py_ssize_t position):
    cdef list out = []
    cdef int32_t i, kl, vl
    cdef size_t kp, vp
    cdef int rc
    for i in range(count):
        rc = ks_header_parse(area, end, &pos, &kl, &kp, &vl, &vp)
        if rc != KS_OK:  # the record was parsed before, so this cannot fail; keep it honest
            raise _error(rc, position + <Py_ssize_t>pos)
        key = PyUnicode_DecodeUTF8(<const char *>area + kp, kl, "surrogateescape")
        if vl < 0:
            out.append((key, None))
        else:
            out.append((key, PyBytes_FromStringAndSize(<const char *>area + vp, vl)))
    return tuple(out)


@cython.no_gc
cdef class Columns:
    """Decoded records of one or more batches as numpy arrays over one buffer.

    ``data`` holds the record bytes (the source buffer itself for uncompressed batches, so
    nothing was copied); key i is ``data[key_positions[i]:key_positions[i] + key_lengths[i]]``
    and a length of -1 means null. ``offsets`` and ``timestamps`` are int64.
    """
    def __len__(self):
        return len(self.offsets)

    def value(self, Py_ssize_t i):
        """Record i's value as a zero-copy memoryview (None for null)."""
        cdef int64_t n = self.value_lengths[i]
        if n < 0:
            return None
        cdef int64_t start = self.value_positions[i]
        return memoryview(self.data)[start:start + n]

    def key(self, Py_ssize_t i):
        """Record i's key as a zero-copy memoryview (None for null)."""
        cdef int64_t n = self.key_lengths[i]
        if n < 0:
            return None
        cdef int64_t start = self.key_positions[i]
        return memoryview(self.data)[start:start + n]

    def values(self):
        """Every value as bytes (copies), None for nulls."""
        return _slices(self.data, self.value_positions, self.value_lengths)

    def keys(self):
        """Every key as bytes (copies), None for nulls."""
        return _slices(self.data, self.key_positions, self.key_lengths)


cdef list _slices(object data, cnp.ndarray positions, cnp.ndarray lengths):
    cdef Pinned p = _pin(data)
    cdef const int64_t *pos = <const int64_t *>cnp.PyArray_DATA(positions)
    cdef const int32_t *lens = <const int32_t *>cnp.PyArray_DATA(lengths)
    cdef Py_ssize_t i, n = len(positions)
    cdef list out = [None] * n
    for i in range(n):
        if lens[i] >= 0:
            out[i] = PyBytes_FromStringAndSize(<const char *>p.ptr + pos[i], lens[i])
    return out


# ---------------------------------------------------------------------------------------------
# Batches


@cython.no_gc
cdef class Batch:
    """A zero-copy view of one RecordBatch v2 inside a buffer.

    The buffer stays pinned (an mmap cannot be closed, a bytearray not resized) while the
    view lives. Header fields are read once; ``validate()`` checks sizes and the CRC;
    ``records()`` and ``columns()`` decode (and decompress) the records.
    """

    @property
    def base_offset(self):
        return self.h.base_offset

    @property
    def last_offset_delta(self):
        return self.h.last_offset_delta

    @property
    def last_offset(self):
        return self.h.base_offset + self.h.last_offset_delta

    @property
    def next_offset(self):
        return self.h.base_offset + self.h.last_offset_delta + 1

    @property
    def batch_length(self):
        return self.h.batch_length

    @property
    def partition_leader_epoch(self):
        return self.h.partition_leader_epoch

    @property
    def magic(self):
        return self.h.magic

    @property
    def crc(self):
        return self.h.crc

    @property
    def attributes(self):
        return self.h.attributes

    @property
    def record_count(self):
        return self.h.records_count

    @property
    def first_timestamp(self):
        return self.h.base_timestamp

    @property
    def base_timestamp(self):
        return self.h.base_timestamp

    @property
    def max_timestamp(self):
        return self.h.max_timestamp

    @property
    def producer_id(self):
        return self.h.producer_id

    @property
    def producer_epoch(self):
        return self.h.producer_epoch

    @property
    def base_sequence(self):
        return self.h.base_sequence

    @property
    def compression(self):
        return CODECS[self.h.attributes & KS_ATTR_COMPRESSION_MASK]

    @property
    def compression_id(self):
        return self.h.attributes & KS_ATTR_COMPRESSION_MASK

    @property
    def timestamp_type(self):
        return 1 if self.h.attributes & KS_ATTR_TIMESTAMP_TYPE else 0

    @property
    def is_transactional(self):
        return bool(self.h.attributes & KS_ATTR_TRANSACTIONAL)

    @property
    def is_control(self):
        return bool(self.h.attributes & KS_ATTR_CONTROL)

    @property
    def has_delete_horizon(self):
        return bool(self.h.attributes & KS_ATTR_DELETE_HORIZON)

    def __len__(self):
        return self.h.records_count

    def __repr__(self):
        return (f"<Batch offsets {self.h.base_offset}..{self.last_offset} "
                f"records={self.h.records_count} {self.compression} size={self.size} "
                f"at byte {self.position}>")

    def raw(self):
        """The batch bytes as a zero-copy memoryview of the source buffer."""
        return memoryview(self.source.obj).cast("B")[self.position:self.position + self.size]

    def __bytes__(self):
        return PyBytes_FromStringAndSize(<const char *>self.source.ptr + self.position, self.size)

    def compute_crc(self):
        return ks_crc32c(0, self.source.ptr + self.position + KS_BATCH_ATTRIBUTES_OFFSET,
                         self.size - KS_BATCH_ATTRIBUTES_OFFSET)

    def validate(self, bint deep=False, Py_ssize_t max_decompressed_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES):
        """Check sizes and the CRC; with ``deep``, also decode every record (decompressing).

        Raises CorruptRecordError naming the byte position of the fault.
        """
        cdef ks_batch_header h
        cdef size_t size, at
        cdef int rc
        cdef const uint8_t *b = self.source.ptr + self.position
        if self.size >= 1 << 16:
            with nogil:
                rc = ks_batch_check(b, self.size, 1, &h, &size, &at)
        else:
            rc = ks_batch_check(b, self.size, 1, &h, &size, &at)
        if rc != KS_OK:
            raise _error(rc, self.position + <Py_ssize_t>at,
                         _detail_at(self.source.ptr, self.source.length, self.position, rc))
        if deep:
            self._columns_into(None, 0, max_decompressed_bytes, False)

    cdef tuple _area(self, Py_ssize_t limit):
        """(holder, pointer as int, length, position base) of the decompressed records."""
        cdef int codec = self.h.attributes & KS_ATTR_COMPRESSION_MASK
        cdef Py_ssize_t start = self.position + KS_BATCH_HEADER_SIZE
        cdef Py_ssize_t n = self.size - KS_BATCH_HEADER_SIZE
        if codec == KS_CODEC_NONE:
            return (self.source, start, n)
        data = _decompress(codec, self.source.ptr + start, n, limit, start)
        return (_pin(data), 0, -1)

    def records(self, bint check_crc=True,
                Py_ssize_t max_decompressed_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES,
                str topic=None, int partition=-1, int64_t min_offset=-1):
        """Decode every record into a list of Record objects (keys and values are copied).
        ``topic``/``partition`` are stored in each Record; records below ``min_offset`` are
        skipped (a fetch may start inside a batch)."""
        cdef ks_record r
        cdef size_t pos = 0, start
        cdef int rc
        cdef int32_t i, count = self.h.records_count
        cdef Record rec
        cdef Pinned holder
        cdef Py_ssize_t base, n
        cdef const uint8_t *area
        cdef bint log_append = (self.h.attributes & KS_ATTR_TIMESTAMP_TYPE) != 0
        cdef int ts_type = 1 if log_append else 0
        cdef int64_t base_ts = self.h.base_timestamp, max_ts = self.h.max_timestamp
        cdef int64_t base_offset = self.h.base_offset
        cdef list out
        if check_crc:
            self.validate()
        holder, base, n = self._area(max_decompressed_bytes)
        if n < 0:
            n = holder.length
        area = holder.ptr + base
        if count > n // KS_RECORD_MIN_SIZE:
            raise _error(KS_ERR_COUNT, self.position + KS_BATCH_RECORDS_COUNT_OFFSET,
                         f"{count} records cannot fit in {n} bytes")
        out = []
        for i in range(count):
            start = pos
            rc = ks_record_parse(area, n, &pos, &r)
            if rc != KS_OK:
                if rc == KS_ERR_TRUNCATED:
                    raise _error(KS_ERR_COUNT, self._err_pos(base, start),
                                 f"record {i} of {count} is missing or cut short")
                raise _error(rc, self._err_pos(base, pos), f"record {i} of {count}")
            if base_offset + r.offset_delta < min_offset:
                continue
            rec = Record.__new__(Record)
            rec.offset = base_offset + r.offset_delta
            rec.timestamp = max_ts if log_append else <int64_t>(<uint64_t>base_ts + <uint64_t>r.timestamp_delta)
            rec.timestamp_type = ts_type
            rec.key = None if r.key_length < 0 else PyBytes_FromStringAndSize(<const char *>area + r.key_pos, r.key_length)
            rec.value = None if r.value_length < 0 else PyBytes_FromStringAndSize(<const char *>area + r.value_pos, r.value_length)
            rec.headers = _EMPTY if r.header_count == 0 else _parse_headers(area, r.end_pos, r.headers_pos, r.header_count, self._err_pos(base, 0))
            rec.topic = topic
            rec.partition = partition
            out.append(rec)
        if pos != <size_t>n:
            raise _error(KS_ERR_COUNT, self._err_pos(base, pos),
                         f"{n - <Py_ssize_t>pos} bytes left after {count} records")
        return out

    cdef Py_ssize_t _err_pos(self, Py_ssize_t base, size_t pos):
        # Positions inside a decompressed area are reported relative to the batch's records.
        if self.h.attributes & KS_ATTR_COMPRESSION_MASK:
            return self.position + KS_BATCH_HEADER_SIZE
        return base + <Py_ssize_t>pos

    cdef object _columns_into(self, Columns cols, Py_ssize_t at, Py_ssize_t limit, bint keep,
                              int64_t shift=0):
        """Parse the records; write columns at index ``at`` of cols when given, with positions
        relative to the records area (compressed) or the source buffer, plus ``shift``.
        Returns the holder of the records area."""
        cdef Pinned holder
        cdef Py_ssize_t base, n
        cdef size_t err_pos = 0
        cdef int rc
        cdef int64_t *offs = NULL
        cdef int64_t *tss = NULL
        cdef int64_t *kp = NULL
        cdef int32_t *kl = NULL
        cdef int64_t *vp = NULL
        cdef int32_t *vl = NULL
        cdef int64_t pos_base = 0
        holder, base, n = self._area(limit)
        if n < 0:
            n = holder.length
        if cols is not None:
            offs = <int64_t *>cnp.PyArray_DATA(cols.offsets) + at
            tss = <int64_t *>cnp.PyArray_DATA(cols.timestamps) + at
            kp = <int64_t *>cnp.PyArray_DATA(cols.key_positions) + at
            kl = <int32_t *>cnp.PyArray_DATA(cols.key_lengths) + at
            vp = <int64_t *>cnp.PyArray_DATA(cols.value_positions) + at
            vl = <int32_t *>cnp.PyArray_DATA(cols.value_lengths) + at
            pos_base = base + shift
        rc = ks_records_columns(holder.ptr + base, n, self.h.records_count, self.h.base_offset,
                                self.h.base_timestamp, self.h.max_timestamp,
                                (self.h.attributes & KS_ATTR_TIMESTAMP_TYPE) != 0, pos_base,
                                offs, tss, kp, kl, vp, vl, &err_pos)
        if rc != KS_OK:
            raise _error(rc, self._err_pos(base, err_pos), f"batch at byte {self.position}")
        return holder

    def columns(self, bint check_crc=True,
                Py_ssize_t max_decompressed_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES):
        """Decode the records into numpy columns (see Columns); no Python object per record."""
        if check_crc:
            self.validate()
        _check_count(self, max_decompressed_bytes)
        cdef Columns cols = _new_columns(self.h.records_count)
        holder = self._columns_into(cols, 0, max_decompressed_bytes, True)
        cols.data = holder.obj
        return cols


cdef int _check_count(Batch b, Py_ssize_t max_decompressed_bytes) except -1:
    """Refuse a records count that the batch's records area cannot hold, before columns are
    sized by it (the fuzzer found a 140-byte compacted lz4 batch claiming 1.6 G records: 12 GiB
    of columns). Compressed records are bounded by the decompression limit; records() makes
    the same check on the bytes it decodes."""
    cdef Py_ssize_t room = b.size - KS_BATCH_HEADER_SIZE
    if b.h.attributes & KS_ATTR_COMPRESSION_MASK:
        room = max_decompressed_bytes
    if b.h.records_count < 0 or b.h.records_count > room // KS_RECORD_MIN_SIZE:
        raise errors.CorruptRecordError(
            f"batch at byte {b.position}: records count {b.h.records_count} cannot fit in "
            f"{room} bytes of records (each takes at least {<int>KS_RECORD_MIN_SIZE})")
    return 0


cdef Columns _new_columns(Py_ssize_t n):
    cdef Columns c = Columns.__new__(Columns)
    c.offsets = np.empty(n, dtype=np.int64)
    c.timestamps = np.empty(n, dtype=np.int64)
    c.key_positions = np.empty(n, dtype=np.int64)
    c.key_lengths = np.empty(n, dtype=np.int32)
    c.value_positions = np.empty(n, dtype=np.int64)
    c.value_lengths = np.empty(n, dtype=np.int32)
    return c


cdef Batch _batch_at(Pinned src, Py_ssize_t pos, bint allow_partial):
    """The batch at pos after structural checks (no CRC), or None at a tolerated partial tail."""
    cdef Batch b
    cdef ks_batch_header h
    cdef size_t size, at
    cdef int rc = ks_batch_check(src.ptr + pos, src.length - pos, 0, &h, &size, &at)
    if rc != KS_OK:
        if rc == KS_ERR_TRUNCATED and allow_partial:
            return None
        raise _error(rc, pos + <Py_ssize_t>at, _detail_at(src.ptr, src.length, pos, rc))
    b = Batch.__new__(Batch)
    b.source = src
    b.position = pos
    b.size = size
    b.h = h
    return b


@cython.no_gc
cdef class BatchIterator:
    cdef Pinned src
    cdef Py_ssize_t pos
    cdef Py_ssize_t end
    cdef bint allow_partial

    def __iter__(self):
        return self

    def __next__(self):
        cdef Batch b
        if self.pos >= self.end:
            raise StopIteration
        b = _batch_at(self.src, self.pos, self.allow_partial)
        if b is None:
            self.pos = self.end
            raise StopIteration
        self.pos += b.size
        return b


def iter_batches(buf, Py_ssize_t start=0, Py_ssize_t end=-1, bint allow_partial=False):
    """Iterate the batches in ``buf[start:end]`` as zero-copy Batch views.

    Structure (lengths, magic, counts) is checked as it goes; CRCs are checked by
    ``Batch.validate()``, ``records()`` and ``columns()``. A batch cut short by the end of the
    buffer raises CorruptRecordError, or ends the iteration when ``allow_partial`` (a fetch
    response may end with a partial batch).
    """
    cdef BatchIterator it = BatchIterator.__new__(BatchIterator)
    it.src = _pin(buf)
    if end < 0 or end > it.src.length:
        end = it.src.length
    if start < 0 or start > end:
        raise ValueError(f"start {start} is outside the buffer of {it.src.length} bytes")
    it.pos = start
    it.end = end
    it.allow_partial = allow_partial
    return it


def read_batch(buf, Py_ssize_t position=0):
    """The one batch at ``position`` in ``buf`` (structure checked, CRC not)."""
    cdef Pinned src = _pin(buf)
    if position < 0 or position >= src.length:
        raise ValueError(f"position {position} is outside the buffer of {src.length} bytes")
    return _batch_at(src, position, False)


def columns(buf, Py_ssize_t start=0, Py_ssize_t end=-1, bint check_crc=True,
            Py_ssize_t max_decompressed_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES,
            bint data_only=False, aborted=None):
    """Decode every batch in ``buf[start:end]`` into one Columns.

    Uncompressed batches are not copied: ``data`` is ``buf`` and positions are absolute. If any
    batch is compressed, ``data`` is a new buffer holding every batch's decompressed records.

    ``data_only``: leave out control batches (transaction markers), which are never records
    of the application's. ``aborted``: a sequence of (producer id, first offset, last offset)
    of aborted transactions; transactional batches of such a producer within such a range are
    left out (a read_committed reader's view).
    """
    cdef list batches = list(iter_batches(buf, start, end))
    cdef Batch b
    if data_only or aborted:
        index = _aborted_index(aborted) if aborted else None
        batches = [b for b in batches if not _left_out(b, data_only, index)]
    cdef Py_ssize_t total = 0, at = 0, k, n
    cdef bint compressed = False
    cdef Columns cols
    cdef size_t vsize, vat
    cdef ks_batch_header vh
    cdef int rc
    for b in batches:
        _check_count(b, max_decompressed_bytes)
        total += b.h.records_count
        if b.h.attributes & KS_ATTR_COMPRESSION_MASK:
            compressed = True
    cols = _new_columns(total)
    if not compressed:
        for b in batches:
            # CRC and parse one batch at a time, while it is still in cache: two passes over
            # the whole buffer ran at half the speed on inputs larger than the cache.
            if check_crc:
                rc = ks_batch_check(b.source.ptr + b.position, b.size, 1, &vh, &vsize, &vat)
                if rc != KS_OK:
                    raise _error(rc, b.position + <Py_ssize_t>vat,
                                 _detail_at(b.source.ptr, b.source.length, b.position, rc))
            b._columns_into(cols, at, max_decompressed_bytes, True)
            at += b.h.records_count
        cols.data = buf if not isinstance(buf, Pinned) else (<Pinned>buf).obj
        return cols
    parts = []
    cdef int64_t base = 0
    for b in batches:
        if check_crc:
            rc = ks_batch_check(b.source.ptr + b.position, b.size, 1, &vh, &vsize, &vat)
            if rc != KS_OK:
                raise _error(rc, b.position + <Py_ssize_t>vat,
                             _detail_at(b.source.ptr, b.source.length, b.position, rc))
        n = b.h.records_count
        # Positions are written relative to the joined buffer directly.
        if b.h.attributes & KS_ATTR_COMPRESSION_MASK:
            holder = b._columns_into(cols, at, max_decompressed_bytes, True, base)
            piece = holder.obj
        else:
            holder = b._columns_into(cols, at, max_decompressed_bytes, True,
                                     base - (b.position + KS_BATCH_HEADER_SIZE))
            piece = PyBytes_FromStringAndSize(<const char *>b.source.ptr + b.position + KS_BATCH_HEADER_SIZE,
                                              b.size - KS_BATCH_HEADER_SIZE)
        parts.append(piece)
        base += len(piece)
        at += n
    cols.data = b"".join(parts)
    return cols


def _aborted_index(aborted):
    """{producer id: (first offsets, last offsets)} sorted, from (pid, first, last) tuples: a
    producer's aborted transactions never overlap, so one bisection finds the candidate."""
    by_pid = {}
    for pid, first, last in sorted(aborted):
        firsts, lasts = by_pid.setdefault(pid, ([], []))
        firsts.append(first)
        lasts.append(last)
    return by_pid


def _in_aborted(index, int64_t pid, int64_t base_offset):
    """Whether a transactional data batch of ``pid`` at ``base_offset`` was aborted."""
    got = index.get(pid)
    if got is None:
        return False
    firsts, lasts = got
    i = _bisect_right(firsts, base_offset) - 1
    return i >= 0 and base_offset <= lasts[i]


cdef bint _left_out(Batch b, bint data_only, index):
    if not b.h.attributes & KS_ATTR_TRANSACTIONAL:
        return False
    if b.h.attributes & KS_ATTR_CONTROL:
        return data_only
    return index is not None and _in_aborted(index, b.h.producer_id, b.h.base_offset)


# ---------------------------------------------------------------------------------------------
# Scanning


@cython.no_gc
cdef class ScanResult:
    """What ``scan`` found: per-batch numpy arrays, where the valid prefix ends, and why."""
    cdef readonly cnp.ndarray positions
    cdef readonly cnp.ndarray base_offsets
    cdef readonly cnp.ndarray last_offsets
    cdef readonly cnp.ndarray max_timestamps
    cdef readonly cnp.ndarray sizes
    cdef readonly cnp.ndarray record_counts
    cdef readonly Py_ssize_t valid_end
    cdef readonly Py_ssize_t error_position
    cdef readonly int error_code
    cdef readonly object error

    @property
    def torn(self):
        """True when the walk stopped at a batch cut short by the end of the buffer."""
        return self.error_code == KS_ERR_TRUNCATED

    @property
    def ok(self):
        return self.error_code == KS_OK

    def __len__(self):
        return len(self.positions)

    def __repr__(self):
        return (f"<ScanResult batches={len(self.positions)} valid_end={self.valid_end} "
                f"error={self.error!r}>")


cdef cnp.ndarray _array_from(void *data, size_t n, object dtype, size_t itemsize):
    cdef cnp.ndarray a = np.empty(n, dtype=dtype)
    if n:
        memcpy(cnp.PyArray_DATA(a), data, n * itemsize)
    return a


def scan(buf, Py_ssize_t start=0, Py_ssize_t end=-1, bint check_crc=True,
         bint check_offsets=True, Py_ssize_t max_batches=0):
    """Walk consecutive batches in C (GIL released), validating each.

    Returns a ScanResult with positions, base/last offsets, max timestamps, sizes and record
    counts of every valid batch, ``valid_end`` (the length of the valid prefix) and, when the
    walk stopped early, ``error`` (a CorruptRecordError, not raised) and ``torn``.
    """
    cdef Pinned src = _pin(buf)
    cdef ks_scan_out out
    cdef size_t valid_end = 0, err_pos = 0
    cdef int rc
    cdef ScanResult res = ScanResult.__new__(ScanResult)
    if end < 0 or end > src.length:
        end = src.length
    if start < 0 or start > end:
        raise ValueError(f"start {start} is outside the buffer of {src.length} bytes")
    memset(&out, 0, sizeof(out))
    try:
        with nogil:
            rc = ks_scan(src.ptr, end, start, check_crc, check_offsets, max_batches, &out,
                         &valid_end, &err_pos)
        if rc == KS_ERR_NOMEM:
            raise MemoryError("out of memory while scanning batches")
        res.positions = _array_from(out.position, out.n, np.int64, 8)
        res.base_offsets = _array_from(out.base_offset, out.n, np.int64, 8)
        res.last_offsets = _array_from(out.last_offset, out.n, np.int64, 8)
        res.max_timestamps = _array_from(out.max_timestamp, out.n, np.int64, 8)
        res.sizes = _array_from(out.size, out.n, np.int32, 4)
        res.record_counts = _array_from(out.records_count, out.n, np.int32, 4)
    finally:
        ks_scan_out_free(&out)
    res.valid_end = valid_end
    res.error_code = rc
    res.error_position = err_pos
    res.error = None if rc == KS_OK else _error(
        rc, err_pos, _detail_at(src.ptr, end, valid_end, rc) if rc != KS_ERR_OFFSET else None)
    return res


def validate_all(buf, Py_ssize_t start=0, Py_ssize_t end=-1):
    """Check every batch in ``buf[start:end]`` (sizes, magic, CRC, offsets) without keeping
    per-batch results; raise CorruptRecordError at the first fault. Returns the batch count."""
    cdef Pinned src = _pin(buf)
    cdef size_t valid_end = 0, err_pos = 0, n = 0
    cdef int rc
    cdef ks_scan_out out
    if end < 0 or end > src.length:
        end = src.length
    memset(&out, 0, sizeof(out))
    with nogil:
        rc = ks_scan(src.ptr, end, start, 1, 0, 0, NULL, &valid_end, &err_pos)
    if rc != KS_OK:
        raise _error(rc, err_pos, _detail_at(src.ptr, end, valid_end, rc))
    return valid_end - start


def find_offset(buf, int64_t target, Py_ssize_t start=0, Py_ssize_t end=-1):
    """Position of the first batch at or after ``start`` whose last offset >= target (headers
    only), or ``end`` when there is none."""
    cdef Pinned src = _pin(buf)
    cdef size_t found
    if end < 0 or end > src.length:
        end = src.length
    with nogil:
        ks_find_offset(src.ptr, end, start, target, &found)
    return found


cdef inline bint _txn_varint(const uint8_t *p, size_t end, size_t *pos, int64_t *out) noexcept nogil:
    """A zigzag varint at pos (advanced past it); False when it runs past end or is too long."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while pos[0] < end and shift < 64:
        b = p[pos[0]]
        pos[0] += 1
        v |= <uint64_t>(b & 0x7F) << shift
        if b < 0x80:
            out[0] = <int64_t>(v >> 1) ^ -<int64_t>(v & 1)
            return True
        shift += 7
    return False


def txn_batches(buf, Py_ssize_t start=0, Py_ssize_t end=-1):
    """The transactional batches with records among the whole batches of ``buf[start:end]``,
    headers only: ``([(base_offset, last_offset, producer_id, kind)], next_offset)`` where kind
    is -1 for data, the marker type (0 ABORT, 1 COMMIT, ...) for a control batch, -2 for a
    control batch whose record this does not read (compressed, or odd: decode it in Python);
    next_offset is the offset after the last whole batch (-1: none). For kstore.log.txn's scan
    of a partition, which needs a Python object per transactional batch only."""
    cdef Pinned src = _pin(buf)
    cdef const uint8_t *b
    cdef const uint8_t *p = src.ptr
    cdef size_t pos = start, size, q, rend
    cdef uint16_t attrs
    cdef int64_t base, last = -1, v, klen
    cdef int kind
    out = []
    if end < 0 or end > src.length:
        end = src.length
    while pos + KS_BATCH_HEADER_SIZE <= <size_t>end:
        b = p + pos
        size = <size_t>ks_load_be32(b + KS_BATCH_LENGTH_OFFSET) + KS_BATCH_LOG_OVERHEAD
        if size < KS_BATCH_HEADER_SIZE or pos + size > <size_t>end:
            break
        if b[KS_BATCH_MAGIC_OFFSET] != KS_BATCH_MAGIC:
            raise errors.CorruptRecordError(
                f"batch at byte {pos}: magic {b[KS_BATCH_MAGIC_OFFSET]}, expected 2")
        base = <int64_t>ks_load_be64(b + KS_BATCH_BASE_OFFSET_OFFSET)
        last = base + <int32_t>ks_load_be32(b + KS_BATCH_LAST_OFFSET_DELTA_OFFSET)
        attrs = ks_load_be16(b + KS_BATCH_ATTRIBUTES_OFFSET)
        if attrs & 0x10 and <int32_t>ks_load_be32(b + KS_BATCH_RECORDS_COUNT_OFFSET) != 0:
            kind = -1
            if attrs & 0x20:
                kind = -2
                # One uncompressed record: length, attributes, timestamp delta, offset delta,
                # key length 4, key = version (int16) and type (int16).
                q = KS_BATCH_HEADER_SIZE
                rend = size
                if (attrs & 0x07) == 0 and _txn_varint(b, rend, &q, &v) and q + 1 <= rend:
                    q += 1
                    if (_txn_varint(b, rend, &q, &v) and _txn_varint(b, rend, &q, &v)
                            and _txn_varint(b, rend, &q, &klen) and klen >= 4 and q + 4 <= rend):
                        kind = <int16_t>ks_load_be16(b + q + 2)
                        if kind < 0:
                            kind = -2
            out.append((base, last, <int64_t>ks_load_be64(b + KS_BATCH_PRODUCER_ID_OFFSET), kind))
        pos += size
    return out, (last + 1 if last >= 0 else -1)


def find_timestamp(buf, int64_t target, Py_ssize_t start=0, Py_ssize_t end=-1):
    """Position of the first batch at or after ``start`` whose max timestamp >= target."""
    cdef Pinned src = _pin(buf)
    cdef size_t found
    if end < 0 or end > src.length:
        end = src.length
    with nogil:
        ks_find_timestamp(src.ptr, end, start, target, &found)
    return found


def span_batches(buf, Py_ssize_t start, Py_ssize_t max_bytes, int64_t max_offset=INT64_MAX,
                 Py_ssize_t end=-1):
    """Bytes of whole batches from ``start`` within ``max_bytes`` (the first batch always
    counts) whose base offset is below ``max_offset``."""
    cdef Pinned src = _pin(buf)
    cdef size_t n
    if end < 0 or end > src.length:
        end = src.length
    with nogil:
        n = ks_span_batches(src.ptr, end, start, max_bytes, max_offset)
    return n


def stamp_batches(buf, int64_t next_offset, int64_t log_append_time=-1,
                  int32_t partition_leader_epoch=-1, bint set_leader_epoch=False):
    """Assign offsets to the validated batches in writable ``buf``, in place.

    Each batch's base offset becomes the next free offset (outside the CRC, so no new CRC).
    With ``log_append_time`` >= 0 the batches become LogAppendTime: attribute bit 3 is set,
    max timestamp is the append time, and the CRC is recomputed. Returns
    ``(first_offset, last_offset, max_timestamp, offset_of_max_timestamp, batch_count)``.
    """
    cdef Pinned src = _pin(buf, True)
    cdef uint8_t *p = <uint8_t *>src.ptr
    cdef Py_ssize_t pos = 0, size
    cdef int64_t first = next_offset, last = next_offset - 1
    cdef int64_t max_ts = -1, max_ts_offset = -1, ts
    cdef int32_t delta
    cdef int16_t attrs
    cdef Py_ssize_t count = 0
    with nogil:
        while pos < src.length:
            size = <Py_ssize_t>ks_load_be32(p + pos + KS_BATCH_LENGTH_OFFSET) + KS_BATCH_LOG_OVERHEAD
            delta = <int32_t>ks_load_be32(p + pos + KS_BATCH_LAST_OFFSET_DELTA_OFFSET)
            ks_store_be64(p + pos + KS_BATCH_BASE_OFFSET_OFFSET, <uint64_t>next_offset)
            if set_leader_epoch:
                ks_store_be32(p + pos + KS_BATCH_LEADER_EPOCH_OFFSET, <uint32_t>partition_leader_epoch)
            if log_append_time >= 0:
                attrs = <int16_t>((p[pos + KS_BATCH_ATTRIBUTES_OFFSET] << 8) | p[pos + KS_BATCH_ATTRIBUTES_OFFSET + 1])
                attrs |= KS_ATTR_TIMESTAMP_TYPE
                ks_store_be16(p + pos + KS_BATCH_ATTRIBUTES_OFFSET, <uint16_t>attrs)
                ks_store_be64(p + pos + KS_BATCH_MAX_TIMESTAMP_OFFSET, <uint64_t>log_append_time)
                ks_batch_update_crc(p + pos, size)
            ts = <int64_t>ks_load_be64(p + pos + KS_BATCH_MAX_TIMESTAMP_OFFSET)
            last = next_offset + delta
            if ts > max_ts:
                max_ts = ts
                max_ts_offset = last
            next_offset = last + 1
            pos += size
            count += 1
    return first, last, max_ts, max_ts_offset, count


# ---------------------------------------------------------------------------------------------
# Building batches


cdef int _item(PyObject *o, const uint8_t **p, Py_ssize_t *n, Py_buffer *view,
               str what="value") except -1:
    """Pointer and length of a value; -1 length for None. Returns 1 when view must be released.
    ``what`` names the argument in the TypeError."""
    cdef object obj = <object>o
    cdef int held = 0
    if obj is None:
        p[0] = NULL
        n[0] = -1
    elif PyBytes_CheckExact(obj):
        p[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
        n[0] = PyBytes_GET_SIZE(obj)
    elif PyUnicode_CheckExact(obj):
        p[0] = <const uint8_t *>PyUnicode_AsUTF8AndSize(obj, n)
    else:
        try:
            PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
        except TypeError:
            raise TypeError(f"{what} must be bytes-like, str or None, not {type(obj).__name__}") from None
        held = 1
        p[0] = <const uint8_t *>view.buf
        n[0] = view.len
    if n[0] > 0x7fffffff:
        if held:
            PyBuffer_Release(view)
        raise errors.RecordTooLargeError(f"a {what} of {n[0]} bytes does not fit in a record")
    return held


cdef object _column(object values, _Col *c, str what):
    """Fill c from one of the accepted forms; returns an object that must stay alive."""
    cdef cnp.ndarray arr, offs
    c.kind = 0
    c.n = -1
    c.is_key = what == "keys"
    if values is None:
        return None
    if PyList_CheckExact(values) or (PyTuple_CheckExact(values) and not (
            len(values) == 2 and isinstance(values[1], np.ndarray))):
        c.kind = 1
        c.seq = <PyObject *>values
        c.n = len(values)
        return values
    if isinstance(values, tuple):
        data, offs = values
        offs = np.ascontiguousarray(offs, dtype=np.int64)
        src = _pin(data)
        c.n = len(offs) - 1
        if c.n < 0:
            raise ValueError(f"{what}: offsets need n + 1 entries")
        o = <const int64_t *>cnp.PyArray_DATA(offs)
        # Each record's pair of offsets is checked when it is read (_col_get): a pass over
        # every offset here cost more than the encode when send_many works in chunks.
        c.data_len = src.length
        c.kind = 3
        c.base = src.ptr
        c.offs = o
        return (src, offs)
    if isinstance(values, np.ndarray):
        arr = values
        if arr.ndim != 2 or arr.dtype != np.uint8:
            raise TypeError(f"{what}: a numpy array must be 2-D uint8 (one fixed-width row per record)")
        arr = np.ascontiguousarray(arr)
        c.kind = 2
        c.base = <const uint8_t *>cnp.PyArray_DATA(arr)
        c.width = arr.shape[1]
        c.n = arr.shape[0]
        return arr
    values = list(values)
    c.kind = 1
    c.seq = <PyObject *>values
    c.n = len(values)
    return values


cdef inline int _col_get(_Col *c, Py_ssize_t i, const uint8_t **p, Py_ssize_t *n,
                         Py_buffer *view) except -1:
    if c.kind == 1:
        if PyList_CheckExact(<object>c.seq):
            return _item(PyList_GET_ITEM(<object>c.seq, i), p, n, view, "a key" if c.is_key else "a value")
        return _item(PyTuple_GET_ITEM(<object>c.seq, i), p, n, view, "a key" if c.is_key else "a value")
    if c.kind == 2:
        p[0] = c.base + i * c.width
        n[0] = c.width
    elif c.kind == 3:
        if c.offs[i] < 0 or c.offs[i + 1] < c.offs[i] or c.offs[i + 1] > c.data_len:
            raise ValueError(f"offsets {c.offs[i]}..{c.offs[i + 1]} of record {i} do not lie "
                             f"within the {c.data_len}-byte data (they must rise from 0)")
        p[0] = c.base + c.offs[i]
        n[0] = c.offs[i + 1] - c.offs[i]
    else:
        p[0] = NULL
        n[0] = -1
    return 0


cdef extern from *:
    void __builtin_prefetch(const void *addr)

cdef enum:
    _PREFETCH = 8


cdef inline void _prefetch_item(_Col *c, Py_ssize_t j) noexcept:
    cdef const char *o
    if c.kind == 1 and PyList_CheckExact(<object>c.seq):
        o = <const char *>PyList_GET_ITEM(<object>c.seq, j)
        __builtin_prefetch(o)
        __builtin_prefetch(o + 64)
        __builtin_prefetch(o + 128)


cdef class BatchBuilder:
    """Builds one RecordBatch v2 in a growable C buffer, then seals it with ``build()``.

    No Python object is kept per record: keys, values and headers are encoded as they are
    appended. ``append`` returns False (and adds nothing) once the batch would pass
    ``max_batch_bytes``; the first record is always accepted. Not thread-safe.
    """

    def __cinit__(self):
        self.out = NULL
        self.data = NULL
        self.length = self.cap = self.start = 0
        memset(&self.scratch, 0, sizeof(self.scratch))

    def __init__(self, compression="none", int64_t base_offset=0, timestamp_type="create",
                 int64_t producer_id=-1, int producer_epoch=-1, int32_t base_sequence=-1,
                 bint transactional=False, Py_ssize_t max_batch_bytes=DEFAULT_MAX_BATCH_BYTES,
                 compression_level=None, int32_t partition_leader_epoch=-1):
        self.codec = codec_id(compression)
        if timestamp_type in ("create", 0, "CreateTime"):
            self.log_append = False
        elif timestamp_type in ("log_append", 1, "LogAppendTime"):
            self.log_append = True
        else:
            raise ValueError(f"timestamp_type must be 'create' or 'log_append', not {timestamp_type!r}")
        if max_batch_bytes < KS_BATCH_HEADER_SIZE:
            raise ValueError(f"max_batch_bytes must be at least {KS_BATCH_HEADER_SIZE}")
        if not -32768 <= producer_epoch <= 32767:
            raise ValueError(f"producer_epoch {producer_epoch} does not fit in int16")
        self.compression_level = compression_level
        self.base_offset = base_offset
        self.producer_id = producer_id
        self.producer_epoch = <int16_t>producer_epoch
        self.base_sequence = base_sequence
        self.transactional = transactional
        self.partition_leader_epoch = partition_leader_epoch
        self.max_batch_bytes = max_batch_bytes
        self.sealed = False
        self.length = 0
        self._begin()

    def __dealloc__(self):
        Py_XDECREF(self.out)
        self.out = NULL
        ks_buf_free(&self.scratch)

    @property
    def count(self):
        """Records appended to the current batch so far."""
        return self.count

    @property
    def size(self):
        """Bytes of the current batch so far, before compression (header included)."""
        return self.length - self.start

    @property
    def compression(self):
        return CODECS[self.codec]

    def __len__(self):
        return self.count

    cdef int _reserve(self, size_t extra) except -1:
        cdef size_t cap
        if self.cap - self.length >= extra:
            return 0
        cap = max(self.cap * 2, self.length + extra, <size_t>256)
        if self.out == NULL:
            o = PyBytes_FromStringAndSize(NULL, cap)
            Py_INCREF(<PyObject *>o)
            self.out = <PyObject *>o
            del o
        else:
            _PyBytes_Resize(&self.out, cap)
        self.data = <uint8_t *>PyBytes_AS_STRING(<object>self.out)
        self.cap = cap
        return 0

    cdef int _begin(self) except -1:
        """Start a new batch at the end of the buffer (reserve its header)."""
        self._reserve(KS_BATCH_HEADER_SIZE)
        self.start = self.length
        self.length += KS_BATCH_HEADER_SIZE
        self.count = 0
        return 0

    cdef int _seal(self) except -1:
        """Compress the current batch if asked, write its header and CRC in place."""
        cdef ks_batch_header h
        cdef Pinned cp
        cdef size_t area = self.length - self.start - KS_BATCH_HEADER_SIZE
        h.base_offset = self.base_offset
        h.partition_leader_epoch = self.partition_leader_epoch
        h.magic = KS_BATCH_MAGIC
        h.attributes = self.codec | (KS_ATTR_TIMESTAMP_TYPE if self.log_append else 0) | (
            KS_ATTR_TRANSACTIONAL if self.transactional else 0)
        h.last_offset_delta = self.count - 1
        h.base_timestamp = self.base_timestamp
        h.max_timestamp = self.max_timestamp
        h.producer_id = self.producer_id
        h.producer_epoch = self.producer_epoch
        h.base_sequence = self.base_sequence
        h.records_count = self.count
        if self.codec != KS_CODEC_NONE:
            view = PyMemoryView_FromMemory(<char *>self.data + self.start + KS_BATCH_HEADER_SIZE,
                                           area, PyBUF_READ)
            packed = _compress(self.codec, view, self.compression_level)
            view.release()
            cp = _pin(packed)
            self.length = self.start + KS_BATCH_HEADER_SIZE
            self._reserve(cp.length)
            memcpy(self.data + self.length, cp.ptr, cp.length)
            self.length += cp.length
        h.batch_length = <int32_t>(self.length - self.start - KS_BATCH_LOG_OVERHEAD)
        ks_batch_write_header(self.data + self.start, &h)
        return 0

    cdef bytes _take(self):
        """Hand the buffer out as bytes (no copy); the builder is done."""
        _PyBytes_Resize(&self.out, self.length)
        result = <bytes>self.out
        Py_XDECREF(self.out)
        self.out = NULL
        self.data = NULL
        self.sealed = True
        return result

    cdef int _check_open(self) except -1:
        if self.sealed:
            raise errors.InvalidRecordError("this BatchBuilder was already built; start a new one")
        return 0

    cdef int _add(self, const uint8_t *kp, Py_ssize_t kn, const uint8_t *vp, Py_ssize_t vn,
                  int64_t ts, const uint8_t *hp, size_t hn, int32_t hcount) except -1:
        """Append one record; returns 0 when the batch is full, 1 when added."""
        cdef size_t body, size
        cdef int64_t delta
        if self.count == 0:
            self.base_timestamp = ts
            self.max_timestamp = ts
        elif self.count == 0x7fffffff:
            return 0
        delta = <int64_t>(<uint64_t>ts - <uint64_t>self.base_timestamp)
        size = ks_record_size(delta, self.count, <int32_t>kn, <int32_t>vn, hcount, hn, &body)
        if self.count > 0 and self.length - self.start + size > self.max_batch_bytes:
            return 0
        if body > 0x7fffffff:
            raise errors.RecordTooLargeError(f"a record of {body} bytes does not fit in a batch")
        if self.cap - self.length < size:
            self._reserve(size)
        ks_record_write(self.data + self.length, body, delta, self.count, kp, <int32_t>kn,
                        vp, <int32_t>vn, hcount, hp, hn)
        self.length += size
        self.count += 1
        if ts > self.max_timestamp:
            self.max_timestamp = ts
        return 1

    cdef int _encode_headers(self, object headers, size_t *hn, int32_t *hcount) except -1:
        cdef Py_ssize_t kn, vn
        cdef const uint8_t *vp
        cdef const char *kp
        cdef Py_buffer view
        cdef size_t need
        cdef int held
        self.scratch.len = 0
        hcount[0] = 0
        for item in headers:
            try:
                hkey, hval = item
            except (TypeError, ValueError):
                raise TypeError(f"each header must be a (key, value) pair, not {item!r}") from None
            if isinstance(hkey, str):
                hkey = (<str>hkey).encode("utf-8", "surrogateescape")
            elif not isinstance(hkey, (bytes, bytearray, memoryview)):
                raise TypeError(f"a header key must be str or bytes, not {type(hkey).__name__}")
            hkey = bytes(hkey)
            kn = len(hkey)
            kp = PyBytes_AS_STRING(hkey)
            held = _item(<PyObject *>hval, &vp, &vn, &view, "a header value")
            try:
                need = ks_header_size(kn, <int32_t>vn)
                if ks_buf_reserve(&self.scratch, need) != KS_OK:
                    raise MemoryError()
                ks_header_write(self.scratch.data + self.scratch.len, <const uint8_t *>kp, kn, vp,
                                <int32_t>vn)
                self.scratch.len += need
                hcount[0] += 1
            finally:
                if held:
                    PyBuffer_Release(&view)
        hn[0] = self.scratch.len
        return 0

    def append(self, value, key=None, headers=None, timestamp=None):
        """Append one record. Returns False, adding nothing, when the batch is full.

        ``value`` and ``key``: bytes-like, str (UTF-8) or None. ``headers``: iterable of
        ``(str, bytes | None)``. ``timestamp``: milliseconds, default now.
        """
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kn, vn
        cdef Py_buffer kview, vview
        cdef int64_t ts = _now_ms() if timestamp is None else timestamp
        cdef size_t hn = 0
        cdef int32_t hcount = 0
        cdef int added
        self._check_open()
        if headers:
            self._encode_headers(headers, &hn, &hcount)
        cdef int kheld, vheld
        kheld = _item(<PyObject *>key, &kp, &kn, &kview, "key")
        try:
            vheld = _item(<PyObject *>value, &vp, &vn, &vview, "value")
            try:
                added = self._add(kp, kn, vp, vn, ts, self.scratch.data, hn, hcount)
            finally:
                if vheld:
                    PyBuffer_Release(&vview)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        return added == 1

    cdef Py_ssize_t _append_range(self, _Col *vals, _Col *keys, object timestamps,
                                  Py_ssize_t start, Py_ssize_t stop,
                                  const int64_t *indices=NULL) except -1:
        cdef Py_ssize_t i, j
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kn, vn
        cdef Py_buffer kview, vview
        cdef int64_t now = _now_ms(), ts
        cdef const int64_t *tsp = NULL
        cdef cnp.ndarray tsa
        cdef int kheld, vheld
        if timestamps is not None:
            tsa = timestamps
            tsp = <const int64_t *>cnp.PyArray_DATA(tsa)
        for i in range(start, stop):
            j = indices[i] if indices != NULL else i
            if i + _PREFETCH < stop:
                # Lists of separately allocated objects make the encoder wait on memory for
                # every record (1M scattered values: 70 ns each); fetching a few ahead
                # overlaps those misses.
                _prefetch_item(vals, indices[i + _PREFETCH] if indices != NULL else i + _PREFETCH)
                _prefetch_item(keys, indices[i + _PREFETCH] if indices != NULL else i + _PREFETCH)
            ts = tsp[j] if tsp != NULL else now
            kheld = _col_get(keys, j, &kp, &kn, &kview)
            try:
                vheld = _col_get(vals, j, &vp, &vn, &vview)
                try:
                    if not self._add(kp, kn, vp, vn, ts, NULL, 0, 0):
                        return i - start
                finally:
                    if vheld:
                        PyBuffer_Release(&vview)
            finally:
                if kheld:
                    PyBuffer_Release(&kview)
        return stop - start

    def append_many(self, values, keys=None, timestamps=None):
        """Append many records at once; returns how many fit (the rest need a new builder).

        ``values`` (and ``keys``): a list of bytes-like/None, a 2-D uint8 numpy array of
        fixed-width values, or ``(data, offsets)`` with n + 1 int64 offsets into ``data``.
        ``timestamps``: None (now), or a sequence / int64 array of milliseconds.
        """
        cdef _Col vals, ks
        self._check_open()
        keep_v = _column(values, &vals, "values")
        keep_k = _column(keys, &ks, "keys")
        if ks.kind != 0 and ks.n != vals.n:
            raise ValueError(f"{ks.n} keys for {vals.n} values")
        tsa = _timestamps(timestamps, vals.n)
        return self._append_range(&vals, &ks, tsa, 0, vals.n)

    def build(self):
        """Seal the batch (compress, header, CRC-32C) and return its bytes. Once only."""
        self._check_open()
        if self.count == 0:
            raise errors.InvalidRecordError("cannot build a batch with no records")
        self._seal()
        return self._take()


cdef object _timestamps(object timestamps, Py_ssize_t n):
    if timestamps is None:
        return None
    tsa = np.ascontiguousarray(timestamps, dtype=np.int64)
    if tsa.ndim != 1 or len(tsa) != n:
        raise ValueError(f"{len(tsa)} timestamps for {n} values")
    return tsa


cdef size_t _estimate(_Col *c):
    """Bytes of data in a column: exact for arrays, a guess for lists."""
    cdef Py_ssize_t i
    cdef size_t total = 0
    cdef PyObject *item
    if c.kind == 2:
        return <size_t>(c.n * c.width)
    if c.kind == 3:
        return <size_t>(c.offs[c.n] - c.offs[0]) if c.n > 0 else 0
    if c.kind == 1 and c.n > 0 and PyList_CheckExact(<object>c.seq):
        # Guess from the first item: a second pass over every object costs more than it saves.
        item = PyList_GET_ITEM(<object>c.seq, 0)
        if PyBytes_CheckExact(<object>item):
            return <size_t>(PyBytes_GET_SIZE(<object>item) * c.n)
    return 0


def encode_batches(values, keys=None, timestamps=None, *, compression="none",
                   Py_ssize_t max_batch_bytes=16384, int64_t base_offset=0, indices=None,
                   **builder_args):
    """Encode many records into consecutive batches of at most ``max_batch_bytes`` each
    (before compression), returned as one bytes object ready for ``append_batches``.

    Accepts the same forms as ``BatchBuilder.append_many``. Base offsets count up from
    ``base_offset`` so the result reads as a contiguous run.
    """
    cdef _Col vals, ks
    cdef Py_ssize_t i = 0, added, count
    cdef BatchBuilder b
    cdef const int64_t *idx = NULL
    cdef cnp.ndarray ind
    keep_v = _column(values, &vals, "values")
    keep_k = _column(keys, &ks, "keys")
    if ks.kind != 0 and ks.n != vals.n:
        raise ValueError(f"{ks.n} keys for {vals.n} values")
    tsa = _timestamps(timestamps, vals.n)
    count = vals.n
    if indices is not None:
        # Only these records, in this order (a partition's share of a send_many).
        ind = np.ascontiguousarray(indices, dtype=np.int64)
        if len(ind) and (ind.min() < 0 or ind.max() >= vals.n):
            raise IndexError(f"indices must lie in [0, {vals.n})")
        idx = <const int64_t *>cnp.PyArray_DATA(ind)
        count = len(ind)
    if count == 0:
        return b""
    b = BatchBuilder(compression, base_offset, max_batch_bytes=max_batch_bytes, **builder_args)
    # Reserve the whole output once: growing it by doubling cost a third of the encode time
    # in copies made by realloc.
    # Reserve the whole output once (a subset by indices: its share of the estimate); growing
    # it by doubling cost a third of the encode time in realloc copies.
    b._reserve(<size_t>((_estimate(&vals) + _estimate(&ks)) * (<double>count / vals.n)) +
               <size_t>count * 12 + (<size_t>count // 16 + 1) * KS_BATCH_HEADER_SIZE)
    # Every batch is written straight into one buffer; nothing is copied or joined afterwards.
    while True:
        added = b._append_range(&vals, &ks, tsa, i, count, idx)
        i += added
        b._seal()
        if i >= count:
            break
        b.base_offset = base_offset + i
        b._begin()
    return b._take()


include "_shared.pxi"
include "_segment.pxi"
include "_producer.pxi"
