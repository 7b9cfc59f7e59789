"""The log cleaner: compaction of ``cleanup.policy=compact`` logs (kafka-storage.md 5.2).

    from kstore.cleaner import clean_log
    result = clean_log(log, now_ms)               # None when the log is not dirty enough
    result = clean_log(log, now_ms, force=True)   # whatever the dirty ratio

What it does, as Kafka's LogCleaner:

* Range. Only closed segments, and only offsets below the first uncleanable offset: the active
  segment's base, or the base of the first dirty segment whose largest timestamp is newer than
  ``now - min.compaction.lag.ms`` (when that is > 0). The dirty part starts at the offset in
  ``<data dir>/cleaner-offset-checkpoint`` (the log start offset if missing or out of range).
* When. ``dirty_ratio`` = dirty bytes / (clean + dirty bytes) must exceed
  ``min.cleanable.dirty.ratio``, or a dirty segment's first batch must be older than
  ``max.compaction.lag.ms``; ``force=True`` skips both checks.
* Map. Key -> last offset over the dirty range. Keys are hashed to 128 bits (two 64-bit
  hashes computed in numpy, BLAKE2b for keys over 64 bytes), as Kafka keys its map by MD5;
  distinct keys of the same length up to 8 bytes never share a hash. If two keys ever shared
  the first hash, the one the map does not hold is simply never compacted: such a collision
  costs space, never a latest value.
* Rewrite. Every closed segment from the log start to the end of the range is rewritten: a
  record with a key survives when no later offset of the same key is in the map, a tombstone
  (null value) also only until its batch's delete horizon. Records with a null key are kept.
  A batch keeps its codec, producer id/epoch/base sequence, leader epoch, base offset and last
  offset delta (offsets are never renumbered: batches get gaps); a batch whose records all
  survive and that needs no horizon is copied byte for byte; a batch left with no record is
  dropped, except the last batch of each output file, which stays as an empty batch so that the
  file still ends where the segments it replaces ended. The first time a batch holding a
  tombstone is rewritten it gets attribute bit 6 and ``baseTimestamp = now +
  delete.retention.ms``; record timestamp deltas are recomputed so absolute timestamps do not
  change.
* Transactions (Kafka's rules). Records of aborted transactions are dropped whatever their
  key, and never enter the map. A transaction marker (control batch) stays while any record of
  its transaction does; once none is left, the first pass that sees it gives it the delete
  horizon (bit 6, ``baseTimestamp = now + delete.retention.ms``; the marker's own record is
  kept, its timestamp shifting with the base), and the first pass after the horizon drops it.
  Nothing at or above the last stable offset (an open transaction) is cleaned.
* Files. Consecutive segments are merged while their cleaned size stays within
  ``segment.bytes`` (and their relative offsets and indexes fit); each output is written to
  ``<base>.log.cleaned``, fsynced, and swapped in by ``PartitionLog.replace_segments`` (crash
  safe: a crash leaves either the old segments or the new ones). The checkpoint then records
  the end of the cleaned range.

Only logs whose ``cleanup.policy`` contains ``compact`` are cleaned. While the log is being
appended to, the cleaner pauses now and then to leave the GIL to producers (see ``_Pacer``).

The hot path has no Python object per record: batches are decoded into numpy columns by the
compiled core, and the records of rebuilt batches are re-encoded with vectorised varints.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kstore import _core
from kstore.errors import CorruptRecordError, UnsupportedCompressionTypeError
from kstore.log import PartitionLog, SegmentInfo
from kstore.log.checkpoint import CLEANER_OFFSET, CheckpointFile

log = logging.getLogger("kstore.cleaner")

__all__ = ["CleanResult", "clean_log", "dirty_ratio", "first_dirty_offset",
           "first_uncleanable_offset"]

HEADER_SIZE = 61
ATTR_CODEC = 0x07
ATTR_LOG_APPEND_TIME = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_DELETE_HORIZON = 0x40
INT32_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1
#: Uncompressed batches are decoded this many bytes at a time (bounds the numpy arrays).
CHUNK_BYTES = 1 << 20
_IOV_MAX = 1024
#: Decoded columns and key hashes of the dirty segments kept from the map pass for the rewrite.
CACHE_BYTES = 256 << 20

_HEADER = struct.Struct(">qiibIhiqqqhii")
_HDR_DTYPE = np.dtype([
    ("base_offset", ">i8"), ("batch_length", ">i4"), ("leader_epoch", ">i4"), ("magic", "i1"),
    ("crc", ">u4"), ("attributes", ">i2"), ("last_offset_delta", ">i4"),
    ("base_timestamp", ">i8"), ("max_timestamp", ">i8"), ("producer_id", ">i8"),
    ("producer_epoch", ">i2"), ("base_sequence", ">i4"), ("records_count", ">i4"),
])
assert _HEADER.size == HEADER_SIZE == _HDR_DTYPE.itemsize


@dataclass(frozen=True)
class CleanResult:
    cleaned_segments: int  # original segments rewritten (merged outputs count each input)
    bytes_before: int  # their size
    bytes_after: int  # the size of what replaced them
    records_removed: int
    first_dirty_offset: int  # where the dirty range started
    seconds: float


# =============================================================================================
# Range and ratio


def _checkpoint(log_: PartitionLog) -> CheckpointFile:
    return CheckpointFile.for_path(log_.directory.parent / CLEANER_OFFSET)


def first_dirty_offset(log_: PartitionLog) -> int:
    """The cleaner checkpoint of this log, or the log start offset if missing or out of range."""
    start = log_.log_start_offset
    ck = _checkpoint(log_).get((log_.topic, log_.partition))
    if ck is None or ck < start or ck > log_.log_end_offset:
        return start
    return ck


def _bounds(log_: PartitionLog) -> tuple[list[SegmentInfo], list[int], int]:
    """(closed segments, the offset each ends at, the active segment's base), from one
    snapshot of the segment list. Its last segment counts as active even if a roll closed it
    meanwhile: the next look will take it."""
    segs = log_.segments()
    if not segs:
        return [], [], log_.log_end_offset
    return segs[:-1], [s.base_offset for s in segs[1:]], segs[-1].base_offset


def _largest_timestamp(info: SegmentInfo) -> int:
    if info.max_timestamp >= 0:
        return info.max_timestamp
    try:
        return int(info.path.stat().st_mtime * 1000)
    except FileNotFoundError:
        return -1


def first_uncleanable_offset(log_: PartitionLog, now_ms: int | None = None,
                             first_dirty: int | None = None) -> int:
    """The active segment's base, or (with ``now_ms`` and ``min.compaction.lag.ms`` > 0) the
    base of the first dirty segment holding a record newer than ``now - lag``, or the last
    stable offset (the oldest open transaction), whichever is lowest."""
    closed, ends, limit = _bounds(log_)
    limit = min(limit, log_.last_stable_offset())
    lag = log_.config["min.compaction.lag.ms"]
    if now_ms is not None and lag > 0:
        if first_dirty is None:
            first_dirty = first_dirty_offset(log_)
        for info, end in zip(closed, ends, strict=True):
            if end <= first_dirty:
                continue
            if _largest_timestamp(info) > now_ms - lag:
                limit = min(limit, max(info.base_offset, first_dirty))
                break
    return limit


def dirty_ratio(log: PartitionLog, first_dirty: int, *, now_ms: int | None = None) -> float:
    """Kafka's cleanable ratio: bytes of closed segments holding dirty offsets (below the first
    uncleanable offset) over those plus the bytes of the clean segments before them."""
    closed, ends, _ = _bounds(log)
    limit = first_uncleanable_offset(log, now_ms, first_dirty)
    clean = dirty = 0
    start = log.log_start_offset
    for info, end in zip(closed, ends, strict=True):
        if end <= start:
            continue
        if end <= first_dirty:
            clean += info.size
        elif info.base_offset < limit:
            dirty += info.size
    total = clean + dirty
    return dirty / total if total else 0.0


def _compaction_overdue(log_: PartitionLog, now_ms: int, first_dirty: int, limit: int) -> bool:
    """max.compaction.lag.ms: a dirty segment's first batch is older than now - max lag."""
    max_lag = log_.config["max.compaction.lag.ms"]
    if max_lag >= LONG_MAX:
        return False
    closed, ends, _ = _bounds(log_)
    for info, end in zip(closed, ends, strict=True):
        if end <= first_dirty or info.base_offset >= limit or info.size < HEADER_SIZE:
            continue
        try:
            with open(info.path, "rb") as f:
                head = f.read(HEADER_SIZE)
        except FileNotFoundError:
            continue
        ts = int.from_bytes(head[35:43], "big", signed=True)
        if ts >= 0 and ts < now_ms - max_lag:
            return True
    return False


# =============================================================================================
# Hashing keys without a Python object per key

_U = np.uint64
_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _fmix_a(h: np.ndarray) -> np.ndarray:
    h ^= h >> _U(33)
    h *= _U(0xFF51AFD7ED558CCD)
    h ^= h >> _U(33)
    h *= _U(0xC4CEB9FE1A85EC53)
    h ^= h >> _U(33)
    return h


def _fmix_b(h: np.ndarray) -> np.ndarray:
    h ^= h >> _U(27)
    h *= _U(0x3C79AC492BA7B653)
    h ^= h >> _U(33)
    h *= _U(0x1C69B3F74AC4AE35)
    h ^= h >> _U(27)
    return h


def _padded(data: np.ndarray) -> np.ndarray:
    if len(data) >= 8:
        return data
    out = np.zeros(8, np.uint8)
    out[:len(data)] = data
    return out


#: Keys longer than this are hashed one by one with BLAKE2b (128 bits), shorter ones in numpy.
LONG_KEY = 64


def _hash_keys(data: np.ndarray, pos: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each key ``data[pos:pos+length]`` (lengths >= 0).

    Keys of up to LONG_KEY bytes are read 8 bytes at a time through an unaligned uint64 view
    of ``data``, all keys at once; every step is a bijection of the state, so keys of the same
    length up to 8 bytes never collide. Longer keys go through BLAKE2b, one call each."""
    long_ = np.flatnonzero(length > LONG_KEY)
    if len(long_):
        short = np.flatnonzero(length <= LONG_KEY)
        h1 = np.empty(len(pos), np.uint64)
        h2 = np.empty(len(pos), np.uint64)
        h1[short], h2[short] = _hash_short(data, pos[short], length[short])
        mv = data.data
        digests = b"".join(hashlib.blake2b(mv[p:p + n], digest_size=16).digest()
                           for p, n in zip(pos[long_].tolist(), length[long_].tolist(),
                                           strict=True))
        both = np.frombuffer(digests, "<u8").reshape(-1, 2)
        h1[long_], h2[long_] = both[:, 0], both[:, 1]
        return h1, h2
    return _hash_short(data, pos, length)


def _hash_short(data: np.ndarray, pos: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(pos)
    data = _padded(data)
    words = np.ndarray((len(data) - 7,), "<u8", buffer=data, strides=(1,))
    lim = len(data) - 8
    ln = length.astype(np.int64)
    h1 = ln.astype(np.uint64) * _U(0x9E3779B97F4A7C15)
    h1 ^= _U(0x243F6A8885A308D3)
    h2 = ln.astype(np.uint64) * _U(0xD6E8FEB86659FD93)
    h2 ^= _U(0x13198A2E03707344)
    if n == 0:
        return h1, h2
    lmax = int(ln.max())
    lmin = int(ln.min())
    maxw = (lmax + 7) // 8
    pmax = int(pos.max()) + lmax
    for j in range(maxw):
        if lmin > 8 * j:
            idx = None
            p = pos + 8 * j if j else pos
        else:
            idx = np.flatnonzero(ln > 8 * j)
            p = pos[idx] + 8 * j
        if pmax - 1 > lim:  # a read could run past the buffer: read earlier and shift
            c = np.minimum(p, lim)
            w = words[c]
            w >>= ((p - c) * 8).astype(np.uint64)
        else:
            w = words[p]
        if lmin == lmax:
            if lmax - 8 * j < 8:
                w &= _MASKS[lmax - 8 * j]
        else:
            rem = (ln if idx is None else ln[idx]) - 8 * j
            if int(rem.min()) < 8:
                w &= _MASKS[np.minimum(rem, 8)]
        _pace()
        if idx is None:
            h1 ^= w
            h1 *= _U(0x165667B19E3779F9)
            h1 ^= h1 >> _U(29)
            h2 += w
            h2 *= _U(0x94D049BB133111EB)
            h2 ^= h2 >> _U(31)
        else:
            a = h1[idx] ^ w
            a *= _U(0x165667B19E3779F9)
            a ^= a >> _U(29)
            h1[idx] = a
            b = h2[idx] + w
            b *= _U(0x94D049BB133111EB)
            b ^= b >> _U(31)
            h2[idx] = b
    return _fmix_a(h1), _fmix_b(h2)


class _OffsetMap:
    """key -> last offset: sorted unique first hashes, each with the second hash and the last
    offset of the key that holds it.

    Two keys with the same first hash share an entry, which holds the second hash of the one
    with the later offset: the other key's records then never match, so they are all kept.
    """

    def __init__(self) -> None:
        self.h1 = np.empty(0, np.uint64)
        self.h2 = np.empty(0, np.uint64)
        self.off = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.h1)

    def add(self, h1: np.ndarray, h2: np.ndarray, off: np.ndarray,
            per_record: bool = False) -> np.ndarray | None:
        """Add entries in offset order; offsets must be above every offset already added.

        With ``per_record`` (on an empty map) also return, for each entry, the last offset of
        its key (-1 where a first-hash collision hides the key): a lookup of every added key
        without searching."""
        if not len(h1):
            return np.empty(0, np.int64) if per_record else None
        order = np.argsort(h1)
        _pace()
        s = h1[order]
        bound = np.empty(len(s), bool)
        bound[0] = True
        np.not_equal(s[1:], s[:-1], out=bound[1:])
        starts = np.flatnonzero(bound)
        # Offsets rise with the index: the largest index of each key holds its last offset.
        pick = np.maximum.reduceat(order, starts)
        nh1, nh2, noff = s[starts], h2[pick], off[pick]
        latest = None
        if per_record:
            assert not len(self.h1)
            group = np.cumsum(bound) - 1
            ok = h2[order] == nh2[group]
            latest = np.empty(len(h1), np.int64)
            latest[order] = np.where(ok, noff[group], -1)
        if not len(self.h1):
            self.h1, self.h2, self.off = nh1, nh2, noff
            return latest
        i = np.minimum(np.searchsorted(nh1, self.h1), len(nh1) - 1)
        stay = nh1[i] != self.h1
        oh1, oh2, ooff = self.h1[stay], self.h2[stay], self.off[stay]
        total = len(oh1) + len(nh1)
        at_old = np.arange(len(oh1)) + np.searchsorted(nh1, oh1)
        at_new = np.arange(len(nh1)) + np.searchsorted(oh1, nh1)
        m1 = np.empty(total, np.uint64)
        m2 = np.empty(total, np.uint64)
        mo = np.empty(total, np.int64)
        m1[at_old], m2[at_old], mo[at_old] = oh1, oh2, ooff
        m1[at_new], m2[at_new], mo[at_new] = nh1, nh2, noff
        self.h1, self.h2, self.off = m1, m2, mo
        return None

    def lookup(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """The last offset of each key, -1 for keys the map does not hold."""
        n = len(self.h1)
        if not n or not len(h1):
            return np.full(len(h1), -1, np.int64)
        # Searching in sorted order walks the map once instead of jumping around it.
        order = np.argsort(h1)
        i = np.empty(len(h1), np.int64)
        i[order] = np.searchsorted(self.h1, h1[order])
        np.minimum(i, n - 1, out=i)
        found = (self.h1[i] == h1) & (self.h2[i] == h2)
        return np.where(found, self.off[i], -1)


# =============================================================================================
# Reading segments


class _Source:
    """A closed segment's file, mapped read-only, with every batch's header parsed."""

    def __init__(self, info: SegmentInfo, end: int,
                 aborted: list[tuple[int, int, int]] | None = None) -> None:
        self.info = info
        self.end = end  # the offset the segment ends at (the next segment's base)
        size = info.size
        self.mm: mmap.mmap | None = None
        if size:
            with open(info.path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            res = _core.scan(self.mm, 0, size, True, True)
            if not res.ok or res.valid_end != size:
                raise CorruptRecordError(
                    f"{info.path} does not scan cleanly ({res.error}); not compacting it")
            self.buf = np.frombuffer(self.mm, np.uint8)
            self.positions = res.positions.astype(np.int64)
            self.sizes = res.sizes.astype(np.int64)
            self.counts = res.record_counts.astype(np.int64)
            rows = self.buf[self.positions[:, None] + np.arange(HEADER_SIZE)]
            self.hdr = np.ascontiguousarray(rows).view(_HDR_DTYPE).reshape(-1)
        else:
            self.buf = np.empty(0, np.uint8)
            self.positions = self.sizes = self.counts = np.empty(0, np.int64)
            self.hdr = np.empty(0, _HDR_DTYPE)
        self.attributes = self.hdr["attributes"].astype(np.int64)
        # Data batches of aborted transactions: dropped, whatever their keys.
        self.aborted = np.zeros(len(self.positions), bool)
        if aborted:
            data = (self.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL)) == ATTR_TRANSACTIONAL
            pids = self.hdr["producer_id"].astype(np.int64)
            bases = self.hdr["base_offset"].astype(np.int64)
            for pid, first, last in aborted:
                self.aborted |= data & (pids == pid) & (bases >= first) & (bases <= last)
        self.cached: list[_Chunk] | None = None  # decoded in the map pass, reused to rewrite

    def __len__(self) -> int:
        return len(self.positions)

    def chunks(self) -> Iterator[_Chunk]:
        """The batches in order: runs of uncompressed batches (up to CHUNK_BYTES), single
        compressed batches, single control batches (opaque)."""
        if self.cached is not None:
            yield from self.cached
            return
        nb = len(self)
        attrs = self.attributes
        special = (attrs & (ATTR_CODEC | ATTR_CONTROL)) != 0
        i = 0
        while i < nb:
            if attrs[i] & ATTR_CONTROL:
                yield _Chunk.opaque(self, i)
                i += 1
            elif attrs[i] & ATTR_CODEC:
                yield _Chunk.compressed(self, i)
                i += 1
            else:
                j = i + 1
                start = int(self.positions[i])
                while j < nb and not special[j] and \
                        self.positions[j] + self.sizes[j] - start <= CHUNK_BYTES:
                    j += 1
                yield _Chunk.plain(self, i, j)
                i = j


class _Chunk:
    """Batches [b0, b1) of a source whose records are decoded into columns over ``data``."""

    src: _Source
    b0: int
    b1: int
    data: np.ndarray
    off: np.ndarray
    ts: np.ndarray
    kpos: np.ndarray
    klen: np.ndarray
    vpos: np.ndarray
    vlen: np.ndarray
    rb: np.ndarray
    latest: np.ndarray | None
    opaque_: bool
    compressed_: bool

    @classmethod
    def _new(cls, src: _Source, b0: int, b1: int) -> _Chunk:
        ch = cls.__new__(cls)
        ch.src, ch.b0, ch.b1 = src, b0, b1
        ch.opaque_ = ch.compressed_ = False
        ch.latest = None  # per keyed record: the last offset of its key, from the map pass
        return ch

    @classmethod
    def opaque(cls, src: _Source, i: int) -> _Chunk:
        ch = cls._new(src, i, i + 1)
        ch.opaque_ = True
        ch.data = src.buf
        z = np.empty(0, np.int64)
        ch.off = ch.ts = ch.kpos = ch.vpos = z
        ch.klen = ch.vlen = np.empty(0, np.int32)
        ch.rb = z
        return ch

    @classmethod
    def plain(cls, src: _Source, b0: int, b1: int) -> _Chunk:
        ch = cls._new(src, b0, b1)
        start = int(src.positions[b0])
        end = int(src.positions[b1 - 1] + src.sizes[b1 - 1])
        cols = _core.columns(src.mm, start, end, False)
        ch._take(cols, src.buf)
        return ch

    @classmethod
    def compressed(cls, src: _Source, i: int) -> _Chunk:
        ch = cls._new(src, i, i + 1)
        ch.compressed_ = True
        batch = _core.read_batch(src.mm, int(src.positions[i]))
        cols = batch.columns(False)
        del batch
        data = np.frombuffer(cols.data, np.uint8) if len(cols.data) else np.zeros(0, np.uint8)
        ch._take(cols, data)
        return ch

    def _take(self, cols: _core.Columns, data: np.ndarray) -> None:
        self.data = data
        self.off = cols.offsets
        self.ts = cols.timestamps
        self.kpos = cols.key_positions
        self.klen = cols.key_lengths
        self.vpos = cols.value_positions
        self.vlen = cols.value_lengths
        counts = self.src.counts[self.b0:self.b1]
        self.rb = np.repeat(np.arange(self.b1 - self.b0), counts)

    def keyed(self) -> np.ndarray:
        return np.flatnonzero(self.klen >= 0)

    def hashes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices of the records with a key, their two key hashes), computed once."""
        h = getattr(self, "_hashes", None)
        if h is None:
            ki = self.keyed()
            h = self._hashes = (ki, *_hash_keys(self.data, self.kpos[ki], self.klen[ki]))
        return h

    def nbytes(self) -> int:
        return 64 * len(self.off) + 64 + (len(self.data) if self.compressed_ else 0)


# =============================================================================================
# Vectorised record encoding


def _zigzag(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.int64)
    return (x.view(np.uint64) << _U(1)) ^ (x >> 63).view(np.uint64)


def _varint_sizes(v: np.ndarray) -> np.ndarray:
    s = np.ones(len(v), np.int64)
    for k in range(1, 10):
        big = v >= _U(1 << (7 * k))
        if not big.any():
            break
        s += big
    return s


def _put_varints(out: np.ndarray, dst: np.ndarray, v: np.ndarray, size: np.ndarray) -> None:
    """Write each unsigned LEB128 ``v[i]`` (``size[i]`` bytes) at ``out[dst[i]]``."""
    maxs = int(size.max()) if len(size) else 0
    for k in range(maxs):
        if k == 0:
            sel_dst, sel_v, sel_s = dst, v, size
        else:
            m = size > k
            sel_dst, sel_v, sel_s = dst[m], v[m], size[m]
        byte = (sel_v >> _U(7 * k)) & _U(0x7F)
        byte |= np.where(sel_s > k + 1, _U(0x80), _U(0))
        out[sel_dst + k] = byte


def _read_varints(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(zigzag-decoded value, size) of the varint at each position (data already validated)."""
    val = np.zeros(len(pos), np.uint64)
    size = np.zeros(len(pos), np.int64)
    more = np.ones(len(pos), bool)
    last = len(data) - 1
    for k in range(10):
        if not more.any():
            break
        byte = data[np.minimum(pos + k, last)].astype(np.uint64)
        val |= np.where(more, (byte & _U(0x7F)) << _U(7 * k), _U(0))
        size += more
        more &= byte >= _U(0x80)
    signed = (val >> _U(1)).view(np.int64) ^ -(val & _U(1)).view(np.int64)
    return signed, size


def _headers_end(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Where the headers that start at each position (with their count) end: one step per
    header index, all records at once."""
    count, size = _read_varints(data, pos)
    cur = pos + size
    for j in range(int(count.max()) if len(count) else 0):
        act = np.flatnonzero(count > j)
        p = cur[act]
        klen, ks = _read_varints(data, p)
        p = p + ks + klen
        vlen, vs = _read_varints(data, p)
        cur[act] = p + vs + np.maximum(vlen, 0)
    return cur


_arange = np.arange(1 << 16, dtype=np.int64)


def _iota(n: int) -> np.ndarray:
    global _arange
    if len(_arange) < n:
        _arange = np.arange(max(n, 2 * len(_arange)), dtype=np.int64)
    return _arange[:n]


def _gather_runs(src: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``src[starts[i]:starts[i]+lengths[i]]``."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.uint8)
    excl = np.cumsum(lengths) - lengths
    idx = np.repeat(starts - excl, lengths)
    idx += _iota(total)
    return src.take(idx)


def _encode_records(ch: _Chunk, sel: np.ndarray, base_ts: np.ndarray,
                    base_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-encode the records ``sel`` (indices into the chunk, in order) with timestamp deltas
    against ``base_ts`` of their batch and their offset deltas kept. Returns the records
    areas, back to back, and the records bytes per batch of the chunk."""
    nb = ch.b1 - ch.b0
    if not len(sel):
        return np.empty(0, np.uint8), np.zeros(nb, np.int64)
    data = ch.data
    rb = ch.rb[sel]
    kpos = ch.kpos[sel]
    klen = ch.klen[sel].astype(np.int64)
    vend = ch.vpos[sel] + np.maximum(ch.vlen[sel], 0)
    # The record ends after its header count: one 0 byte when it has no headers.
    rec_end = vend + 1
    with_headers = np.flatnonzero(data[vend] != 0)
    if len(with_headers):
        rec_end[with_headers] = _headers_end(data, vend[with_headers])
    tail = rec_end - kpos  # key bytes, value length, value, headers: copied as they are
    zts = _zigzag(ch.ts[sel] - base_ts[rb])
    zod = _zigzag(ch.off[sel] - base_off[rb])
    zkl = _zigzag(np.where(klen < 0, -1, klen))
    s_ts, s_od, s_kl = _varint_sizes(zts), _varint_sizes(zod), _varint_sizes(zkl)
    body = 1 + s_ts + s_od + s_kl + tail
    zbody = _zigzag(body)
    s_body = _varint_sizes(zbody)
    hsize = s_body + 1 + s_ts + s_od + s_kl
    n = len(sel)
    hbuf = np.zeros(int(hsize.sum()), np.uint8)
    p = np.cumsum(hsize) - hsize
    _put_varints(hbuf, p, zbody, s_body)
    p = p + s_body + 1  # the attributes byte stays 0
    _put_varints(hbuf, p, zts, s_ts)
    p += s_ts
    _put_varints(hbuf, p, zod, s_od)
    p += s_od
    _put_varints(hbuf, p, zkl, s_kl)
    _pace()
    # Interleave record headers and copied tails: one gather from [data region | headers].
    lo = int(kpos.min())
    hi = int(rec_end.max())
    region = np.concatenate([data[lo:hi], hbuf])
    starts = np.empty(2 * n, np.int64)
    lengths = np.empty(2 * n, np.int64)
    starts[0::2] = (hi - lo) + (np.cumsum(hsize) - hsize)
    lengths[0::2] = hsize
    starts[1::2] = kpos - lo
    lengths[1::2] = tail
    areas = _gather_runs(region, starts, lengths)
    per_batch = np.bincount(rb, weights=hsize + tail, minlength=nb).astype(np.int64)
    return areas, per_batch


# =============================================================================================
# Compression (the framing of kstore._core, kafka-storage.md 2.2)


def _compress(codec: int, data: bytes | memoryview) -> bytes:
    if codec == 1:
        return zlib.compress(data, -1, 31)
    if codec == 3:
        import lz4.frame  # type: ignore[import-untyped]
        return lz4.frame.compress(data, compression_level=0, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                                  block_linked=False, content_checksum=False, store_size=False)
    if codec == 4:
        import zstandard
        return zstandard.ZstdCompressor(level=3).compress(data)
    if codec == 2:
        import cramjam
        mv = memoryview(data)
        parts = [b"\x82SNAPPY\x00", b"\x00\x00\x00\x01\x00\x00\x00\x01"]
        start = 0
        while True:
            block = bytes(cramjam.snappy.compress_raw(mv[start:start + 32768]))
            parts.append(len(block).to_bytes(4, "big"))
            parts.append(block)
            start += 32768
            if start >= len(mv):
                break
        return b"".join(parts)
    raise UnsupportedCompressionTypeError(f"unknown compression codec id {codec}")


def _batch_bytes(base_offset: int, leader_epoch: int, attributes: int, last_offset_delta: int,
                 base_ts: int, max_ts: int, producer_id: int, producer_epoch: int,
                 base_sequence: int, count: int, area: bytes | memoryview) -> list:
    """A sealed RecordBatch v2 as [header, records] (kafka-storage.md 1.1)."""
    hdr = bytearray(_HEADER.pack(base_offset, HEADER_SIZE - 12 + len(area), leader_epoch, 2, 0,
                                 attributes, last_offset_delta, base_ts, max_ts, producer_id,
                                 producer_epoch, base_sequence, count))
    crc = _core.crc32c(area, _core.crc32c(memoryview(hdr)[21:]))
    struct.pack_into(">I", hdr, 17, crc)
    return [hdr, area] if len(area) else [hdr]


# =============================================================================================
# Cleaning one segment


@dataclass
class _Output:
    """A cleaned segment: ``pieces`` to write; ``tail`` the empty batch that ends it when its
    last batch lost every record (written only if this segment ends its output file)."""

    source: _Source
    pieces: list
    size: int
    tail: list
    tail_size: int
    batches: int
    removed: int
    changed: bool


def _clean_segment(src: _Source, omap: _OffsetMap, now_ms: int, horizon: int,
                   retained: dict[int, bool] | None = None) -> _Output:
    """Rewrite one segment. ``retained``: per producer id, whether its current transaction
    kept a record so far (carried from segment to segment in offset order)."""
    if retained is None:
        retained = {}
    nb = len(src)
    hdr = src.hdr
    attrs = src.attributes
    base_offsets = hdr["base_offset"].astype(np.int64)
    base_ts_all = hdr["base_timestamp"].astype(np.int64)
    has_horizon = (attrs & ATTR_DELETE_HORIZON) != 0
    attrs_l = attrs.tolist()
    hbase, hepoch, hlod, hmax, hpid, hpepoch, hseq = (
        hdr[f].tolist() for f in ("base_offset", "leader_epoch", "last_offset_delta",
                                  "max_timestamp", "producer_id", "producer_epoch",
                                  "base_sequence"))
    pieces: list = []
    size = 0
    removed = 0
    changed = False
    kept_batches = 0
    copy_from = -1  # start of a run of batches copied as they are
    mv = memoryview(src.mm) if src.mm is not None else None
    last_kept = -1  # index of the last batch written (copied or rebuilt)

    def flush_copy(upto: int) -> None:
        nonlocal copy_from, size
        if copy_from >= 0:
            assert mv is not None
            a = int(src.positions[copy_from])
            b = int(src.positions[upto - 1] + src.sizes[upto - 1])
            pieces.append(mv[a:b])
            size += b - a
            copy_from = -1

    for ch in src.chunks():
        _pace()
        b0, b1 = ch.b0, ch.b1
        n = b1 - b0
        if ch.opaque_:
            if attrs_l[b0] & ATTR_TRANSACTIONAL and not retained.pop(hpid[b0], False):
                # The marker of a transaction with no record left.
                if has_horizon[b0] and now_ms >= base_ts_all[b0]:
                    flush_copy(b0)
                    removed += int(src.counts[b0])
                    changed = True
                    continue
                if not has_horizon[b0]:
                    flush_copy(b0)
                    pos = int(src.positions[b0])
                    marker = src.buf[pos + HEADER_SIZE:pos + int(src.sizes[b0])].tobytes()
                    pieces += _batch_bytes(hbase[b0], hepoch[b0],
                                           attrs_l[b0] | ATTR_DELETE_HORIZON, hlod[b0], horizon,
                                           hmax[b0], hpid[b0], hpepoch[b0], hseq[b0],
                                           int(src.counts[b0]), marker)
                    size += HEADER_SIZE + len(marker)
                    changed = True
                    kept_batches += 1
                    last_kept = b0
                    continue
            if copy_from < 0:
                copy_from = b0
            kept_batches += 1
            last_kept = b0
            continue
        rb = ch.rb
        keep = np.ones(len(ch.off), bool)
        if len(omap):
            ki, h1, h2 = ch.hashes()
            latest = ch.latest
            if latest is None:
                latest = omap.lookup(h1, h2)
                _pace()
            else:
                below = np.flatnonzero(latest == -2)
                if len(below):
                    latest = latest.copy()
                    latest[below] = omap.lookup(h1[below], h2[below])
            keep[ki[latest > ch.off[ki]]] = False
        tomb = ch.klen >= 0
        tomb &= ch.vlen < 0
        hh = has_horizon[b0:b1]
        if tomb.any():
            expired = tomb & hh[rb] & (now_ms >= base_ts_all[b0:b1][rb])
            keep &= ~expired
            kept_tomb = np.bincount(rb[keep & tomb], minlength=n) > 0
        else:
            kept_tomb = np.zeros(n, bool)
        ab = src.aborted[b0:b1]
        if ab.any():
            keep &= ~ab[rb]
        counts = src.counts[b0:b1]
        nk = np.bincount(rb[keep], minlength=n) if len(rb) else np.zeros(n, np.int64)
        for i in np.flatnonzero(attrs[b0:b1] & ATTR_TRANSACTIONAL).tolist():
            pid = hpid[b0 + i]
            retained[pid] = retained.get(pid, False) or bool(nk[i] > 0)
        needs_horizon = kept_tomb & ~hh
        rebuild = ((nk < counts) | needs_horizon) & (nk > 0)
        drop = nk == 0
        removed += int(counts.sum() - nk.sum())
        if not rebuild.any() and not drop.any():
            if copy_from < 0:
                copy_from = b0
            kept_batches += n
            last_kept = b1 - 1
            continue
        changed = True
        # New base timestamps: the horizon, or the first kept record's timestamp.
        sel = np.flatnonzero(keep & rebuild[rb])
        first_ts = np.full(n, -1, np.int64)
        max_kept = np.full(n, -1, np.int64)
        if len(sel):
            rsel = rb[sel]
            starts = np.flatnonzero(np.r_[True, rsel[1:] != rsel[:-1]])
            first_ts[rsel[starts]] = ch.ts[sel[starts]]
            max_kept[rsel[starts]] = np.maximum.reduceat(ch.ts[sel], starts)
        new_base = np.where(needs_horizon, horizon, np.where(hh, base_ts_all[b0:b1], first_ts))
        areas, area_len = _encode_records(ch, sel, new_base, base_offsets[b0:b1])
        _pace()
        area_at = (np.cumsum(area_len) - area_len).tolist()
        area_len_l = area_len.tolist()
        rebuild_l = rebuild.tolist()
        drop_l = drop.tolist()
        horizon_l = needs_horizon.tolist()
        base_l = new_base.tolist()
        max_l = max_kept.tolist()
        nk_l = nk.tolist()
        for i in range(n):
            if not i & 31:
                _pace()
            b = b0 + i
            if drop_l[i]:
                flush_copy(b)
                continue
            if not rebuild_l[i]:
                if copy_from < 0:
                    copy_from = b
                kept_batches += 1
                last_kept = b
                continue
            flush_copy(b)
            a = area_at[i]
            area = areas[a:a + area_len_l[i]]
            attr = attrs_l[b] | (ATTR_DELETE_HORIZON if horizon_l[i] else 0)
            codec = attr & ATTR_CODEC
            area_bytes = _compress(codec, area.data) if codec else area.data
            max_ts = hmax[b] if attr & ATTR_LOG_APPEND_TIME else max_l[i]
            batch = _batch_bytes(hbase[b], hepoch[b], attr, hlod[b], base_l[i], max_ts,
                                 hpid[b], hpepoch[b], hseq[b], nk_l[i], area_bytes)
            pieces += batch
            size += HEADER_SIZE + len(area_bytes)
            kept_batches += 1
            last_kept = b
    flush_copy(nb)
    tail: list = []
    tail_size = 0
    if nb and last_kept != nb - 1:
        # The last batch lost every record: an empty batch keeps the file's end where it was.
        b = nb - 1
        attr = attrs_l[b] & (ATTR_LOG_APPEND_TIME | ATTR_TRANSACTIONAL | ATTR_CONTROL)
        tail = _batch_bytes(hbase[b], hepoch[b], attr, hlod[b], -1, hmax[b], hpid[b],
                            hpepoch[b], hseq[b], 0, b"")
        tail_size = HEADER_SIZE
    return _Output(src, pieces, size, tail, tail_size, kept_batches + (1 if tail else 0),
                   removed, changed)


# =============================================================================================
# Writing and swapping


def _write_all(fd: int, pieces: list) -> None:
    for i in range(0, len(pieces), _IOV_MAX):
        # Every piece is a 1-D buffer of bytes (bytes, mmap slice, uint8 array data).
        chunk = pieces[i:i + _IOV_MAX]
        while chunk:
            n = os.writev(fd, chunk)
            while chunk and n >= memoryview(chunk[0]).nbytes:
                n -= memoryview(chunk[0]).nbytes
                chunk.pop(0)
            if chunk and n:
                chunk[0] = memoryview(chunk[0])[n:]


class _Group:
    """Consecutive cleaned segments written into one ``<base>.log.cleaned``. Nothing is
    written while the group is a single segment that cleaning left unchanged."""

    def __init__(self, directory: Path, first: _Output) -> None:
        self.base = first.source.info.base_offset
        self.path = directory / f"{self.base:020d}.log.cleaned"
        self.fd = -1
        self.outputs: list[_Output] = []
        self.size = 0
        self.batches = 0
        self.add(first)

    def fits(self, out: _Output, config: dict) -> bool:
        size = self.size + out.size + out.tail_size
        if size > config["segment.bytes"]:
            return False
        if out.source.end - 1 - self.base > INT32_MAX:
            return False
        batches = self.batches + out.batches
        entries = min(batches, size // max(config["index.interval.bytes"], 1) + 1)
        return entries * 12 <= config["segment.index.bytes"]

    def needed(self) -> bool:
        return len(self.outputs) > 1 or self.outputs[0].changed

    def add(self, out: _Output) -> None:
        self.outputs.append(out)
        self.size += out.size
        self.batches += out.batches - (1 if out.tail else 0)
        if self.needed():
            self._write_pending()

    def _write_pending(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for out in self.outputs:
            if out.pieces:
                _write_all(self.fd, out.pieces)
                out.pieces = []  # written: let the buffers and mappings go

    def finish(self) -> None:
        """Write the last segment's tail, fsync and close (only when the group is needed)."""
        if not self.needed():
            return
        self._write_pending()
        last = self.outputs[-1]
        if last.tail:
            _write_all(self.fd, last.tail)
            self.size += last.tail_size
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


class _Pacer:
    """Lets producers run while the cleaner works.

    A cleaner thread busy with Python and numpy for milliseconds on end holds the GIL: every
    producer append that released it for its write then waits up to the interpreter's switch
    interval (5 ms) to get it back. So, while the log (or, for a Store's partition, any
    partition of the store) is being appended to, the cleaner sleeps after every ``every``
    seconds or more of work, long enough to keep its running time to ``share`` of the wall
    clock. With no appends in between it never sleeps. Both are class attributes, to tune
    (``every = inf``: never pause).
    """

    every = 0.001
    share = 0.2  # of the time, at most, while producers append

    def __init__(self, log_: PartitionLog) -> None:
        self.log = log_
        self.last = time.perf_counter()
        self.mark = self._activity()
        self.paused = 0.0

    def _activity(self) -> tuple[int, int]:
        sig = getattr(self.log, "_signal", None)  # a Store's DataSignal: moves on every append
        return self.log.log_end_offset, getattr(sig, "version", 0)

    def __call__(self) -> None:
        t = time.perf_counter()
        worked = t - self.last
        if worked < self.every:
            return
        now = self._activity()
        if now != self.mark:
            self.mark = now
            pause = min(worked * (1 - self.share) / self.share, 0.05)
            time.sleep(pause)
            self.paused += pause
        self.last = time.perf_counter()


_tls = threading.local()


def _pace() -> None:
    p = getattr(_tls, "pace", None)
    if p is not None:
        p()


_locks: weakref.WeakKeyDictionary[PartitionLog, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _lock_for(log_: PartitionLog) -> threading.Lock:
    with _locks_guard:
        lk = _locks.get(log_)
        if lk is None:
            lk = _locks[log_] = threading.Lock()
        return lk


# =============================================================================================
# Entry point


def clean_log(log: PartitionLog, now_ms: int, *, force: bool = False) -> CleanResult | None:
    """Compact the closed segments of ``log`` once (see the module docstring).

    Returns None when there was nothing to do: the policy is not ``compact``, nothing is
    dirty, or (without ``force``) the dirty ratio is at most ``min.cleanable.dirty.ratio`` and
    no dirty segment is older than ``max.compaction.lag.ms``. One cleaning at a time per log.
    """
    if "compact" not in log.config["cleanup.policy"]:
        return None
    with _lock_for(log):
        outer = getattr(_tls, "pace", None)
        _tls.pace = _Pacer(log)
        try:
            return _clean(log, now_ms, force)
        finally:
            _tls.pace = outer


def _clean(log_: PartitionLog, now_ms: int, force: bool) -> CleanResult | None:
    started = time.perf_counter()
    cfg = log_.config
    first_dirty = first_dirty_offset(log_)
    limit = first_uncleanable_offset(log_, now_ms, first_dirty)
    closed, ends, _ = _bounds(log_)
    start = log_.log_start_offset
    # Whole segments only: the range ends at a segment boundary at or below the limit.
    todo = [(info, end) for info, end in zip(closed, ends, strict=True)
            if start < end <= limit]
    if not todo:
        return None
    if limit <= first_dirty and not force:
        return None
    if not force:
        ratio = dirty_ratio(log_, first_dirty, now_ms=now_ms)
        if ratio <= cfg["min.cleanable.dirty.ratio"] and \
                not _compaction_overdue(log_, now_ms, first_dirty, limit):
            return None
    end_of_range = max(limit, first_dirty)
    aborted = [(a.producer_id, a.first_offset, a.last_offset)
               for a in log_.aborted_transactions(start, limit)]
    # 1. The offset map over the dirty range. While the decoded dirty segments fit in
    # CACHE_BYTES they are kept for the rewrite, and the map is built in one sort that also
    # gives each dirty record the last offset of its key (no lookups for them later).
    omap = _OffsetMap()
    sources: dict[int, _Source] = {}
    cache_left = CACHE_BYTES
    parts: list[tuple[_Chunk, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]] = []
    all_cached = True

    def add_parts() -> None:
        if parts:
            omap.add(np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
                     np.concatenate([p[4] for p in parts]))
            parts.clear()

    try:
        for info, end in todo:
            if end <= first_dirty:
                continue
            src = _Source(info, end, aborted)
            sources[info.base_offset] = src
            keep: list[_Chunk] | None = []
            for ch in src.chunks():
                _pace()
                if keep is not None:
                    if ch.nbytes() <= cache_left:
                        cache_left -= ch.nbytes()
                        keep.append(ch)
                    else:
                        keep = None
                        all_cached = False
                if ch.opaque_:
                    continue
                ki, h1, h2 = ch.hashes()
                m = None
                if first_dirty > info.base_offset:
                    m = ch.off[ki] >= first_dirty
                if src.aborted[ch.b0:ch.b1].any():
                    live = ~src.aborted[ch.b0:ch.b1][ch.rb[ki]]
                    m = live if m is None else m & live
                if m is not None:
                    ki, h1, h2 = ki[m], h1[m], h2[m]
                if len(ki):
                    parts.append((ch, m, h1, h2, ch.off[ki]))
            src.cached = keep
            if not all_cached:
                add_parts()  # one segment at a time from now on
        if all_cached and parts:
            latest: np.ndarray | None = omap.add(np.concatenate([p[2] for p in parts]),
                              np.concatenate([p[3] for p in parts]),
                              np.concatenate([p[4] for p in parts]), per_record=True)
            assert latest is not None
            at = 0
            for ch, m, h1, _, _ in parts:
                got = latest[at:at + len(h1)]
                at += len(h1)
                if m is None:
                    ch.latest = got
                else:
                    ch.latest = np.full(len(m), -2, np.int64)  # -2: below the dirty range
                    ch.latest[m] = got
            parts.clear()
        add_parts()
    except FileNotFoundError:
        log.info("%s: a segment went away while building the offset map; try again later",
                 log_.directory)
        return None
    # 2. Rewrite from the log start to the end of the range, group by group.
    horizon = now_ms + cfg["delete.retention.ms"]
    retained: dict[int, bool] = {}  # producer id -> its transaction has records left
    cleaned = before = after = removed = 0
    group: _Group | None = None
    done_all = True

    def swap(g: _Group) -> bool:
        nonlocal cleaned, before, after, removed
        try:
            g.finish()
            if not g.needed():
                return True
            bases = [o.source.info.base_offset for o in g.outputs]
            log_.replace_segments(bases, [g.path])
        except ValueError as exc:
            # The segments changed under us (retention, truncation): leave them.
            log.info("%s: not swapping cleaned segments %s: %s", log_.directory,
                     [o.source.info.base_offset for o in g.outputs], exc)
            g.abandon()
            return False
        except BaseException:
            g.abandon()
            raise
        cleaned += len(g.outputs)
        removed += sum(o.removed for o in g.outputs)
        before += sum(o.source.info.size for o in g.outputs)
        after += g.size
        return True

    try:
        for info, end in todo:
            got_src = sources.pop(info.base_offset, None)
            src = got_src if got_src is not None else _Source(info, end, aborted)
            out = _clean_segment(src, omap, now_ms, horizon, retained)
            src.cached = None  # the decoded columns are not needed any more
            if group is not None and group.fits(out, cfg):
                group.add(out)
                continue
            if group is not None and not swap(group):
                group = None
                done_all = False
                break
            group = _Group(log_.directory, out)
        if group is not None and done_all:
            g, group = group, None
            done_all = swap(g)
    except FileNotFoundError:
        log.info("%s: a segment went away while cleaning; try again later", log_.directory)
        done_all = False
    finally:
        if group is not None:
            group.abandon()
    if done_all:
        _checkpoint(log_).update({(log_.topic, log_.partition): end_of_range})
    return CleanResult(cleaned, before, after, removed, first_dirty,
                       time.perf_counter() - started)
