# Included by _core.pyx: the compiled half of a log segment (append path and index search).

from posix.uio cimport iovec, writev
from posix.unistd cimport ftruncate, pwrite
from libc.errno cimport errno, EINTR
from libc.string cimport strerror

cdef extern from "<limits.h>":
    enum:
        IOV_MAX

#: append() outcomes other than 0 (written): why the segment must roll first.
ROLL_SIZE = 1
ROLL_TIME = 2
ROLL_INDEX_FULL = 3
ROLL_OFFSET_OVERFLOW = 4
cdef int64_t _INT32_MAX = 0x7fffffff
# Reads larger than this jump through the offset index (span_with_index, read_span); smaller
# ones walk, and so check, every batch header.
cdef Py_ssize_t _JUMP_MIN_BYTES = 65536
INDEX_JUMP_MIN_BYTES = _JUMP_MIN_BYTES


def offset_index_lookup(buf, Py_ssize_t entries, int64_t relative_offset):
    """Slot of the largest .index entry whose relative offset <= relative_offset (-1: none),
    with that entry: ``(slot, relative_offset, position)``."""
    cdef Pinned p = _pin(buf)
    cdef int64_t slot
    if entries * KS_OFFSET_INDEX_ENTRY > p.length:
        raise ValueError(f"{entries} entries do not fit in an index of {p.length} bytes")
    if relative_offset < 0:
        return (-1, 0, 0)
    if relative_offset > 0xffffffff:
        relative_offset = 0xffffffff
    slot = ks_offset_index_lookup(p.ptr, entries, <uint32_t>relative_offset)
    if slot < 0:
        return (-1, 0, 0)
    return (slot, ks_load_be32(p.ptr + slot * KS_OFFSET_INDEX_ENTRY),
            ks_load_be32(p.ptr + slot * KS_OFFSET_INDEX_ENTRY + 4))


def time_index_lookup(buf, Py_ssize_t entries, int64_t timestamp):
    """``(slot, timestamp, relative_offset)`` of the largest .timeindex entry with ts <= timestamp."""
    cdef Pinned p = _pin(buf)
    cdef int64_t slot
    if entries * KS_TIME_INDEX_ENTRY > p.length:
        raise ValueError(f"{entries} entries do not fit in a time index of {p.length} bytes")
    slot = ks_time_index_lookup(p.ptr, entries, timestamp)
    if slot < 0:
        return (-1, -1, 0)
    return (slot, <int64_t>ks_load_be64(p.ptr + slot * KS_TIME_INDEX_ENTRY),
            ks_load_be32(p.ptr + slot * KS_TIME_INDEX_ENTRY + 8))


def index_valid_entries(buf, Py_ssize_t entries, bint time_index=False):
    """How many leading entries of a possibly zero-padded index are real."""
    cdef Pinned p = _pin(buf)
    if time_index:
        return ks_time_index_valid_entries(p.ptr, min(entries, p.length // KS_TIME_INDEX_ENTRY))
    return ks_offset_index_valid_entries(p.ptr, min(entries, p.length // KS_OFFSET_INDEX_ENTRY))


def index_entry(buf, Py_ssize_t slot, bint time_index=False):
    """Entry ``slot`` of an index as a tuple of ints."""
    cdef Pinned p = _pin(buf)
    if time_index:
        if (slot + 1) * KS_TIME_INDEX_ENTRY > p.length or slot < 0:
            raise IndexError(slot)
        return (<int64_t>ks_load_be64(p.ptr + slot * KS_TIME_INDEX_ENTRY),
                ks_load_be32(p.ptr + slot * KS_TIME_INDEX_ENTRY + 8))
    if (slot + 1) * KS_OFFSET_INDEX_ENTRY > p.length or slot < 0:
        raise IndexError(slot)
    return (ks_load_be32(p.ptr + slot * KS_OFFSET_INDEX_ENTRY),
            ks_load_be32(p.ptr + slot * KS_OFFSET_INDEX_ENTRY + 4))


cdef str _NULL_KEY = ("compacted topic cannot accept a record without a key (INVALID_RECORD): "
                      "give every record a key, or use cleanup.policy=delete")


cdef int _check_records(Pinned src, Py_ssize_t pos, Py_ssize_t size, int32_t count,
                        int16_t attributes, bint require_keys=False) except -1:
    """Deep check of one producer batch: records parse, count matches, deltas run 0..n-1."""
    cdef int codec = attributes & KS_ATTR_COMPRESSION_MASK
    cdef size_t err_pos = 0
    cdef int rc
    cdef Pinned area
    cdef Py_ssize_t start = pos + KS_BATCH_HEADER_SIZE
    if codec == KS_CODEC_NONE:
        rc = ks_records_check(src.ptr + start, size - KS_BATCH_HEADER_SIZE, count, 1,
                              require_keys, &err_pos)
        if rc != KS_OK:
            if rc == KS_ERR_NULL_KEY:
                raise errors.InvalidRecordError(
                    f"{_NULL_KEY} (record at byte {start + <Py_ssize_t>err_pos})")
            if rc == KS_ERR_OFFSET:
                raise errors.InvalidRecordError(
                    f"batch at byte {pos}: record offset deltas must run 0..{count - 1} "
                    f"(the fault is at byte {start + <Py_ssize_t>err_pos})")
            raise _error(rc, start + <Py_ssize_t>err_pos, f"batch at byte {pos}")
        return 0
    area = _pin(_decompress(codec, src.ptr + start, size - KS_BATCH_HEADER_SIZE,
                            DEFAULT_MAX_DECOMPRESSED_BYTES, start))
    rc = ks_records_check(area.ptr, area.length, count, 1, require_keys, &err_pos)
    if rc == KS_ERR_NULL_KEY:
        raise errors.InvalidRecordError(f"{_NULL_KEY} ({CODECS[codec]} batch at byte {pos})")
    if rc == KS_ERR_OFFSET:
        raise errors.InvalidRecordError(
            f"batch at byte {pos}: record offset deltas must run 0..{count - 1}")
    if rc != KS_OK:
        raise _error(rc, start, f"{CODECS[codec]} batch at byte {pos}")
    return 0


cdef int _write_all(int fd, iovec *iov, int n) noexcept nogil:
    """writev until every byte is out; returns 0, or the errno of the failure."""
    cdef ssize_t done
    while n > 0:
        done = writev(fd, iov, min(n, <int>IOV_MAX))
        if done < 0:
            if errno == EINTR:
                continue
            return errno
        while n > 0 and done >= <ssize_t>iov[0].iov_len:
            done -= iov[0].iov_len
            iov += 1
            n -= 1
        if n > 0 and done > 0:
            iov[0].iov_base = <char *>iov[0].iov_base + done
            iov[0].iov_len -= done
    return 0


cdef Pinned _pin_fast(object obj):
    """_pin without the buffer protocol for bytes (immutable: nothing to hold)."""
    cdef Pinned p
    if PyBytes_CheckExact(obj):
        p = Pinned.__new__(Pinned)
        p.obj = obj
        p.ptr = <const uint8_t *>PyBytes_AS_STRING(obj)
        p.length = PyBytes_GET_SIZE(obj)
        return p
    return _pin(obj)


@cython.final
cdef class SegmentAppender:
    """Append path of one active segment: validates, stamps and writes batches, keeps the
    sparse indexes. Not thread-safe: the PartitionLog serialises appends under its lock.

    The index files are writable mmaps handed in by the Python Segment (``attach_indexes``);
    ``detach_indexes`` drops them so they can be trimmed and closed.
    """
    cdef readonly int fd
    cdef readonly int64_t base_offset
    cdef readonly int64_t size
    cdef readonly int64_t next_offset
    cdef readonly int64_t index_interval
    cdef readonly int64_t bytes_since_index
    cdef readonly int64_t max_timestamp
    cdef readonly int64_t offset_of_max_timestamp
    cdef readonly int64_t first_batch_timestamp
    cdef readonly int64_t created_ms
    cdef readonly Py_ssize_t offset_entries
    cdef readonly Py_ssize_t offset_max_entries
    cdef readonly Py_ssize_t time_entries
    cdef readonly Py_ssize_t time_max_entries
    cdef readonly int64_t last_time_entry
    # results of the last append
    cdef readonly int64_t last_first_offset
    cdef readonly int64_t last_last_offset
    cdef readonly int64_t last_max_timestamp
    cdef readonly int64_t last_offset_of_max_timestamp
    cdef readonly Py_ssize_t last_batches
    cdef readonly Py_ssize_t last_bytes
    cdef Pinned oidx
    cdef Pinned tidx
    # The entries live in anonymous memory; these files get them with pwrite, every
    # PERSIST_EVERY entries and on persist_indexes(). Storing each entry through a shared
    # mapping of the file cost a page fault per entry (0.85 us per 16 KiB batch here).
    cdef int ofd
    cdef int tfd
    cdef readonly Py_ssize_t offset_persisted
    cdef readonly Py_ssize_t time_persisted
    cdef ks_scan_out scan
    cdef ks_buf headers
    cdef ks_buf iovs

    def __cinit__(self):
        memset(&self.scan, 0, sizeof(self.scan))
        memset(&self.headers, 0, sizeof(self.headers))
        memset(&self.iovs, 0, sizeof(self.iovs))

    def __dealloc__(self):
        ks_scan_out_free(&self.scan)
        ks_buf_free(&self.headers)
        ks_buf_free(&self.iovs)

    def __init__(self, int fd, int64_t base_offset, int64_t size=0, int64_t next_offset=-1,
                 int64_t index_interval=4096, int64_t created_ms=-1):
        self.fd = fd
        self.ofd = -1
        self.tfd = -1
        self.base_offset = base_offset
        self.size = size
        self.next_offset = base_offset if next_offset < 0 else next_offset
        self.index_interval = index_interval
        self.bytes_since_index = 0
        self.max_timestamp = -1
        self.offset_of_max_timestamp = -1
        self.first_batch_timestamp = -1
        self.last_time_entry = -1
        self.created_ms = _now_ms() if created_ms < 0 else created_ms

    def attach_indexes(self, offset_index, Py_ssize_t offset_entries, time_index,
                       Py_ssize_t time_entries):
        """Use these writable buffers (mmaps of .index / .timeindex) holding that many entries."""
        self.oidx = _pin(offset_index, True)
        self.tidx = _pin(time_index, True)
        self.offset_entries = offset_entries
        self.offset_max_entries = self.oidx.length // KS_OFFSET_INDEX_ENTRY
        self.time_entries = time_entries
        self.time_max_entries = self.tidx.length // KS_TIME_INDEX_ENTRY
        if time_entries > 0:
            self.last_time_entry = <int64_t>ks_load_be64(self.tidx.ptr + (time_entries - 1) * KS_TIME_INDEX_ENTRY)

    def set_fd(self, int fd):
        self.fd = fd

    def set_next_offset(self, int64_t next_offset):
        self.next_offset = next_offset

    def attach_index_files(self, int offset_fd, int time_fd, Py_ssize_t offset_persisted,
                           Py_ssize_t time_persisted):
        """Persist entries to these files; the first ``*_persisted`` entries are already there."""
        self.ofd = offset_fd
        self.tfd = time_fd
        self.offset_persisted = offset_persisted
        self.time_persisted = time_persisted

    cdef int _persist_one(self, int fd, Pinned buf, Py_ssize_t done, Py_ssize_t entries,
                          Py_ssize_t size) except -1:
        cdef const uint8_t *p = buf.ptr + done * size
        cdef Py_ssize_t left = (entries - done) * size
        cdef Py_ssize_t at = done * size
        cdef ssize_t n
        while left > 0:
            n = pwrite(fd, p, left, at)
            if n < 0:
                if errno == EINTR:
                    continue
                raise errors.KafkaStorageError(
                    f"writing index entries of segment {self.base_offset:020d} failed: "
                    f"{strerror(errno).decode()}")
            p += n
            at += n
            left -= n
        return 0

    def persist_indexes(self):
        """Write the entries not yet in the index files."""
        self._persist()

    cdef int _persist(self) except -1:
        if self.ofd >= 0 and self.oidx is not None and self.offset_entries > self.offset_persisted:
            self._persist_one(self.ofd, self.oidx, self.offset_persisted, self.offset_entries,
                              KS_OFFSET_INDEX_ENTRY)
            self.offset_persisted = self.offset_entries
        if self.tfd >= 0 and self.tidx is not None and self.time_entries > self.time_persisted:
            self._persist_one(self.tfd, self.tidx, self.time_persisted, self.time_entries,
                              KS_TIME_INDEX_ENTRY)
            self.time_persisted = self.time_entries
        return 0

    def detach_indexes(self):
        self.oidx = None
        self.tidx = None
        self.ofd = -1
        self.tfd = -1

    def restore_state(self, int64_t bytes_since_index, int64_t max_timestamp,
                      int64_t offset_of_max_timestamp, int64_t first_batch_timestamp):
        """Set the running state of a reopened segment (from its last index entries)."""
        self.bytes_since_index = bytes_since_index
        self.max_timestamp = max_timestamp
        self.offset_of_max_timestamp = offset_of_max_timestamp
        self.first_batch_timestamp = first_batch_timestamp

    # -- shared tails (several processes append to one partition: csrc/shared.h) ----------

    cdef int _pread_entries(self, int fd, Pinned buf, Py_ssize_t start, Py_ssize_t end,
                            Py_ssize_t size) except -1:
        cdef uint8_t *p = <uint8_t *>buf.ptr + start * size
        cdef Py_ssize_t left = (end - start) * size
        cdef Py_ssize_t at = start * size
        cdef ssize_t n
        while left > 0:
            n = pread(fd, p, left, at)
            if n < 0 and errno == EINTR:
                continue
            if n <= 0:
                raise errors.KafkaStorageError(
                    f"reading index entries of segment {self.base_offset:020d} another process "
                    f"wrote failed: {strerror(errno).decode() if n < 0 else 'file too short'}")
            p += n
            at += n
            left -= n
        return 0

    def load_shared(self, SharedTail st):
        """Take over the state another process published for this (same) active segment:
        sizes, offsets, index bookkeeping and the index entries it added (from the files, and
        from the shared pending entries not yet in them)."""
        cdef ks_tail *t = st.t
        cdef Py_ssize_t oe = t.offset_entries, op = t.offset_persisted
        cdef Py_ssize_t te = t.time_entries, tp = t.time_persisted
        if oe > self.offset_max_entries or te > self.time_max_entries or op > oe or tp > te:
            raise errors.KafkaStorageError(
                f"the shared tail of segment {self.base_offset:020d} names {oe} offset and "
                f"{te} time index entries, more than its index holds")
        if self.oidx is not None:
            if self.offset_entries < op:
                self._pread_entries(self.ofd, self.oidx, self.offset_entries, op, KS_OFFSET_INDEX_ENTRY)
            memcpy(<uint8_t *>self.oidx.ptr + op * KS_OFFSET_INDEX_ENTRY, &t.offset_pending[0],
                   (oe - op) * KS_OFFSET_INDEX_ENTRY)
        if self.tidx is not None:
            if self.time_entries < tp:
                self._pread_entries(self.tfd, self.tidx, self.time_entries, tp, KS_TIME_INDEX_ENTRY)
            memcpy(<uint8_t *>self.tidx.ptr + tp * KS_TIME_INDEX_ENTRY, &t.time_pending[0],
                   (te - tp) * KS_TIME_INDEX_ENTRY)
        self.offset_entries = oe
        self.offset_persisted = op
        self.time_entries = te
        self.time_persisted = tp
        self.size = t.size
        self.next_offset = t.next_offset
        self.bytes_since_index = t.bytes_since_index
        self.max_timestamp = t.max_timestamp
        self.offset_of_max_timestamp = t.offset_of_max_timestamp
        self.first_batch_timestamp = t.first_batch_timestamp
        self.created_ms = t.created_ms
        self.last_time_entry = t.last_time_entry

    def publish(self, SharedTail st, int64_t leo, int64_t recovery_point, int64_t last_flush_ms):
        """Store this segment's append state in the shared tail and move its ``seq`` (the caller
        holds the tail's lock). Index entries beyond what the shared area can carry go to the
        files first."""
        cdef ks_tail *t = st.t
        cdef int64_t pid = getpid()
        if (self.offset_entries - self.offset_persisted > KS_TAIL_PENDING
                or self.time_entries - self.time_persisted > KS_TAIL_PENDING):
            self._persist()
        if self.oidx is not None:
            memcpy(&t.offset_pending[0], self.oidx.ptr + self.offset_persisted * KS_OFFSET_INDEX_ENTRY,
                   (self.offset_entries - self.offset_persisted) * KS_OFFSET_INDEX_ENTRY)
        if self.tidx is not None:
            memcpy(&t.time_pending[0], self.tidx.ptr + self.time_persisted * KS_TIME_INDEX_ENTRY,
                   (self.time_entries - self.time_persisted) * KS_TIME_INDEX_ENTRY)
        t.active_base = self.base_offset
        t.offset_entries = self.offset_entries
        t.offset_persisted = self.offset_persisted
        t.time_entries = self.time_entries
        t.time_persisted = self.time_persisted
        t.size = self.size
        t.next_offset = leo
        t.bytes_since_index = self.bytes_since_index
        t.max_timestamp = self.max_timestamp
        t.offset_of_max_timestamp = self.offset_of_max_timestamp
        t.first_batch_timestamp = self.first_batch_timestamp
        t.created_ms = self.created_ms
        t.last_time_entry = self.last_time_entry
        t.recovery_point = recovery_point
        t.last_flush_ms = last_flush_ms
        t.appends += 1
        if t.last_pid != pid:
            t.takeovers += 1
            t.last_pid = pid
        t.seq += 1
        return t.seq

    @property
    def offset_index_full(self):
        return self.offset_entries >= self.offset_max_entries

    @property
    def time_index_full(self):
        # one slot stays free for the final entry written at roll and close
        return self.time_entries >= self.time_max_entries - 1

    cdef inline void _track(self, int64_t position, int64_t size, int64_t last_offset,
                            int64_t max_ts) noexcept:
        """Index bookkeeping for one batch written at position (Kafka's LogSegment.append)."""
        cdef uint8_t *e
        if max_ts > self.max_timestamp:
            self.max_timestamp = max_ts
            self.offset_of_max_timestamp = last_offset
        if self.first_batch_timestamp < 0 and position == 0:
            self.first_batch_timestamp = max_ts
        if self.bytes_since_index > self.index_interval:
            if self.oidx is not None and self.offset_entries < self.offset_max_entries:
                e = <uint8_t *>self.oidx.ptr + self.offset_entries * KS_OFFSET_INDEX_ENTRY
                ks_store_be32(e, <uint32_t>(last_offset - self.base_offset))
                ks_store_be32(e + 4, <uint32_t>position)
                self.offset_entries += 1
            self._time_entry(self.max_timestamp, self.offset_of_max_timestamp, False)
            self.bytes_since_index = 0
        self.bytes_since_index += size

    cdef void _time_entry(self, int64_t ts, int64_t offset, bint force) noexcept:
        cdef uint8_t *e
        if self.tidx is None or ts <= self.last_time_entry:
            return
        if self.time_entries >= self.time_max_entries - (0 if force else 1):
            return
        e = <uint8_t *>self.tidx.ptr + self.time_entries * KS_TIME_INDEX_ENTRY
        ks_store_be64(e, <uint64_t>ts)
        ks_store_be32(e + 8, <uint32_t>(offset - self.base_offset))
        self.time_entries += 1
        self.last_time_entry = ts

    def final_time_entry(self):
        """Force the (max timestamp, offset) entry in, as Kafka does on roll and close."""
        if self.max_timestamp >= 0:
            self._time_entry(self.max_timestamp, self.offset_of_max_timestamp, True)

    def track_scanned(self, ScanResult res):
        """Rebuild the indexes from a scan of the segment (recovery): every batch in order."""
        cdef Py_ssize_t i, n = len(res.positions)
        cdef const int64_t *pos = <const int64_t *>cnp.PyArray_DATA(res.positions)
        cdef const int64_t *last = <const int64_t *>cnp.PyArray_DATA(res.last_offsets)
        cdef const int64_t *mts = <const int64_t *>cnp.PyArray_DATA(res.max_timestamps)
        cdef const int32_t *sizes = <const int32_t *>cnp.PyArray_DATA(res.sizes)
        for i in range(n):
            self._track(pos[i], sizes[i], last[i], mts[i])
            self.size = pos[i] + sizes[i]
            self.next_offset = last[i] + 1

    def append(self, buf, int64_t next_offset, int64_t log_append_time=-1,
               int32_t partition_leader_epoch=0, bint deep=True,
               int64_t max_message_bytes=1048588, int64_t segment_bytes=1073741824,
               int64_t segment_ms=604800000, int64_t now_ms=-1, bint verify_crc=True,
               bint require_keys=False):
        return self._append(buf, next_offset, log_append_time, partition_leader_epoch, deep,
                            max_message_bytes, segment_bytes, segment_ms, now_ms, verify_crc,
                            require_keys)

    cdef int _append(self, object buf, int64_t next_offset, int64_t log_append_time,
                     int32_t partition_leader_epoch, bint deep, int64_t max_message_bytes,
                     int64_t segment_bytes, int64_t segment_ms, int64_t now_ms,
                     bint verify_crc=True, bint require_keys=False) except -1:
        """Validate the batches in ``buf``, give them offsets from ``next_offset`` and write them
        at the end of the segment with one writev. ``buf`` itself is never modified.

        Returns 0 when written (results in ``last_*``), or a ROLL_* reason when the segment must
        roll first (nothing written). Raises CorruptRecordError / InvalidRecordError /
        RecordTooLargeError on bad batches, KafkaStorageError when the disk refuses (the
        segment is cut back to its size before the call, so no partial batch stays).
        """
        cdef Pinned src = _pin_fast(buf)
        cdef size_t valid_end = 0, err_pos = 0
        cdef int rc
        cdef Py_ssize_t i, n
        cdef int64_t total, off, in_max_ts = -1, ts, last
        cdef uint8_t *h
        cdef uint32_t crc
        cdef iovec *iov
        cdef int64_t start_size = self.size
        cdef int err
        if src.length == 0:
            raise errors.InvalidRecordError("nothing to append: the buffer is empty")
        self.scan.n = 0
        if src.length >= 65536:
            with nogil:
                rc = ks_scan(src.ptr, src.length, 0, verify_crc, 0, 0, &self.scan, &valid_end,
                             &err_pos)
        else:
            rc = ks_scan(src.ptr, src.length, 0, verify_crc, 0, 0, &self.scan, &valid_end, &err_pos)
        if rc == KS_ERR_NOMEM:
            raise MemoryError()
        if rc != KS_OK:
            raise _error(rc, err_pos, _detail_at(src.ptr, src.length, valid_end, rc))
        n = self.scan.n
        total = 0
        for i in range(n):
            if self.scan.size[i] > max_message_bytes:
                raise errors.RecordTooLargeError(
                    f"batch at byte {self.scan.position[i]} is {self.scan.size[i]} bytes, over "
                    f"max.message.bytes={max_message_bytes}")
            if self.scan.records_count[i] == 0:
                raise errors.InvalidRecordError(
                    f"batch at byte {self.scan.position[i]} holds no records")
            if deep and self.scan.last_offset[i] - self.scan.base_offset[i] + 1 != self.scan.records_count[i]:
                raise errors.InvalidRecordError(
                    f"batch at byte {self.scan.position[i]}: lastOffsetDelta "
                    f"{self.scan.last_offset[i] - self.scan.base_offset[i]} does not match its "
                    f"{self.scan.records_count[i]} records (a producer's batch has no gaps)")
            if deep:
                _check_records(src, self.scan.position[i], self.scan.size[i],
                               self.scan.records_count[i],
                               <int16_t>ks_load_be16(src.ptr + self.scan.position[i] + KS_BATCH_ATTRIBUTES_OFFSET),
                               require_keys)
            total += self.scan.size[i]
            ts = self.scan.max_timestamp[i]
            if ts > in_max_ts:
                in_max_ts = ts
        last = next_offset + (self.scan.last_offset[n - 1] - self.scan.base_offset[n - 1])
        for i in range(n - 1):
            last += self.scan.last_offset[i] - self.scan.base_offset[i] + 1
        if log_append_time >= 0:
            in_max_ts = log_append_time
        # Roll checks, in Kafka's order (LogSegment.shouldRoll).
        if total > segment_bytes:
            raise errors.RecordListTooLargeError(
                f"{total} bytes in one append exceed segment.bytes={segment_bytes}")
        if self.size > 0 and self.size > segment_bytes - total:
            return ROLL_SIZE
        if self.size > 0:
            if self.first_batch_timestamp >= 0:
                if in_max_ts - self.first_batch_timestamp > segment_ms:
                    return ROLL_TIME
            elif (_now_ms() if now_ms < 0 else now_ms) - self.created_ms > segment_ms:
                return ROLL_TIME
        if self.offset_index_full or self.time_index_full:
            return ROLL_INDEX_FULL
        if last - self.base_offset > _INT32_MAX or next_offset < self.base_offset:
            return ROLL_OFFSET_OVERFLOW
        # Stamp copies of the headers; the bodies go out from the caller's buffer untouched.
        self.headers.len = 0
        if ks_buf_reserve(&self.headers, n * KS_BATCH_HEADER_SIZE) != KS_OK:
            raise MemoryError()
        self.iovs.len = 0
        if ks_buf_reserve(&self.iovs, 2 * n * sizeof(iovec)) != KS_OK:
            raise MemoryError()
        iov = <iovec *>self.iovs.data
        if True:
            off = next_offset
            for i in range(n):
                h = self.headers.data + i * KS_BATCH_HEADER_SIZE
                memcpy(h, src.ptr + self.scan.position[i], KS_BATCH_HEADER_SIZE)
                ks_store_be64(h + KS_BATCH_BASE_OFFSET_OFFSET, <uint64_t>off)
                ks_store_be32(h + KS_BATCH_LEADER_EPOCH_OFFSET, <uint32_t>partition_leader_epoch)
                if log_append_time >= 0:
                    ks_store_be16(h + KS_BATCH_ATTRIBUTES_OFFSET,
                                  ks_load_be16(h + KS_BATCH_ATTRIBUTES_OFFSET) | KS_ATTR_TIMESTAMP_TYPE)
                    ks_store_be64(h + KS_BATCH_MAX_TIMESTAMP_OFFSET, <uint64_t>log_append_time)
                    crc = ks_crc32c(0, h + KS_BATCH_ATTRIBUTES_OFFSET,
                                    KS_BATCH_HEADER_SIZE - KS_BATCH_ATTRIBUTES_OFFSET)
                    crc = ks_crc32c(crc, src.ptr + self.scan.position[i] + KS_BATCH_HEADER_SIZE,
                                    self.scan.size[i] - KS_BATCH_HEADER_SIZE)
                    ks_store_be32(h + KS_BATCH_CRC_OFFSET, crc)
                iov[2 * i].iov_base = h
                iov[2 * i].iov_len = KS_BATCH_HEADER_SIZE
                iov[2 * i + 1].iov_base = <void *>(src.ptr + self.scan.position[i] + KS_BATCH_HEADER_SIZE)
                iov[2 * i + 1].iov_len = self.scan.size[i] - KS_BATCH_HEADER_SIZE
                off += self.scan.last_offset[i] - self.scan.base_offset[i] + 1
            if total >= 16384:
                with nogil:
                    err = _write_all(self.fd, iov, <int>(2 * n))
            else:
                err = _write_all(self.fd, iov, <int>(2 * n))
        if err != 0:
            # Never leave a partial batch behind: cut the file back to where it was.
            ftruncate(self.fd, start_size)
            raise errors.KafkaStorageError(
                f"write to segment {self.base_offset:020d}.log failed at position {start_size}: "
                f"{strerror(err).decode()} (errno {err}); nothing from this append was kept")
        # Index bookkeeping and the results.
        self.last_first_offset = next_offset
        self.last_max_timestamp = -1
        self.last_offset_of_max_timestamp = -1
        off = next_offset
        for i in range(n):
            last = off + self.scan.last_offset[i] - self.scan.base_offset[i]
            ts = log_append_time if log_append_time >= 0 else self.scan.max_timestamp[i]
            if ts > self.last_max_timestamp:
                self.last_max_timestamp = ts
                self.last_offset_of_max_timestamp = last
            self._track(self.size, self.scan.size[i], last, ts)
            self.size += self.scan.size[i]
            off = last + 1
        self.next_offset = off
        self.last_last_offset = off - 1
        self.last_batches = n
        self.last_bytes = total
        if (self.offset_entries - self.offset_persisted >= 128
                or self.time_entries - self.time_persisted >= 128):
            self._persist()
        return 0


@cython.final
cdef class AppendPath:
    """The per-append bookkeeping of a PartitionLog, compiled: log end offset, LogAppendTime,
    the flush policy. ``append`` returns ``(first, last, log_append_time)`` or, when the active
    segment must roll first, the ROLL_* reason as an int (nothing written). The caller holds
    the log's lock."""
    cdef public SegmentAppender appender
    cdef public int64_t leo
    cdef public int64_t recovery_point
    cdef public int64_t last_flush_ms
    cdef public int64_t max_message_bytes
    cdef public int64_t segment_bytes
    cdef public int64_t segment_ms
    cdef public int64_t flush_messages
    cdef public int64_t flush_ms
    cdef public bint log_append_time
    cdef public object clock
    cdef public bint needs_flush
    cdef public bint require_keys

    def __init__(self, SegmentAppender appender, int64_t leo):
        self.appender = appender
        self.leo = leo
        self.clock = None
        self.flush_messages = 0x7fffffffffffffff
        self.flush_ms = 0x7fffffffffffffff

    def configure(self, dict config, clock):
        self.max_message_bytes = config["max.message.bytes"]
        self.segment_bytes = config["segment.bytes"]
        self.segment_ms = config["segment.ms"]
        if "compact" in config["cleanup.policy"]:
            self.segment_ms = min(self.segment_ms, config["max.compaction.lag.ms"])
        self.flush_messages = config["flush.messages"]
        self.flush_ms = config["flush.ms"]
        self.log_append_time = config["message.timestamp.type"] == "LogAppendTime"
        self.require_keys = "compact" in config["cleanup.policy"]
        self.clock = clock

    def append(self, buf, bint deep, bint verify_crc=True):
        cdef int64_t now = _now_ms() if self.clock is None else self.clock()
        cdef int64_t lat = now if self.log_append_time else -1
        cdef SegmentAppender app = self.appender
        cdef int rc = app._append(buf, self.leo, lat, 0, deep, self.max_message_bytes,
                                  self.segment_bytes, self.segment_ms, now, verify_crc,
                                  self.require_keys)
        if rc:
            return rc
        self.leo = app.next_offset
        self.needs_flush = (self.leo - self.recovery_point >= self.flush_messages
                            or now - self.last_flush_ms >= self.flush_ms)
        return (app.last_first_offset, app.last_last_offset, lat)


def span_with_index(buf, Py_ssize_t start, Py_ssize_t max_bytes, int64_t max_offset,
                    Py_ssize_t end, index, Py_ssize_t entries, int64_t base_offset):
    """Whole batches from ``start`` within ``max_bytes`` and below ``max_offset``, like
    span_batches, but jumping through the offset index to the entry nearest the byte limit so
    that only the headers near the end of the span are read: walking every header of a 64 MiB
    slice faulted in a page per batch, and sendfile of the log ran at 0.89x of plain sendfile.
    Returns ``(length, position of the last batch)``."""
    cdef Pinned src = _pin(buf)
    cdef Pinned idx
    cdef size_t last_pos = start, stop, frm = start
    cdef int64_t slot, limit
    cdef uint32_t rel, epos
    if end < 0 or end > src.length:
        end = src.length
    if index is not None and entries > 0 and max_bytes > _JUMP_MIN_BYTES:
        idx = _pin(index)
        limit = min(<int64_t>end, <int64_t>start + max_bytes)
        slot = ks_offset_index_floor_position(idx.ptr, entries, <uint32_t>min(limit, 0xffffffff))
        # Step back one entry: that batch ends where the next indexed one starts, within the
        # limit, so the walk from it always takes at least one batch.
        slot -= 1
        if slot >= 0:
            rel = ks_load_be32(idx.ptr + slot * KS_OFFSET_INDEX_ENTRY)
            epos = ks_load_be32(idx.ptr + slot * KS_OFFSET_INDEX_ENTRY + 4)
            # The entry's batch ends at offset base + rel; every batch before it is lower, so
            # skipping them cannot skip past max_offset.
            if epos > <uint32_t>start and base_offset + rel < max_offset:
                frm = epos
    with nogil:
        stop = ks_span_batches_from(src.ptr, end, start, frm, max_bytes, max_offset, &last_pos)
    if frm > <size_t>start and stop == frm:
        # Nothing fitted after the jump point: the span ends just before it.
        with nogil:
            stop = ks_span_batches_from(src.ptr, end, start, start, frm - start, max_offset, &last_pos)
    return stop - start, last_pos


# Checked reads (batch.h "checked reads"): a read meets a damaged header as an error, never as
# the end of the segment.

def read_find(buf, int64_t target, Py_ssize_t start, Py_ssize_t end, int64_t min_base,
              int64_t max_last):
    """Checked ``find_offset``: ``(rc, position, prev_position, prev_last)``. ``rc`` is 0 with
    ``position`` the first batch whose last offset >= target (``end`` when none), or the error
    code of the batch at ``position``; ``prev_*`` describe the good batch before it."""
    cdef Pinned src = _pin(buf)
    cdef size_t found = 0, prev_pos = 0
    cdef int64_t prev_last = 0
    cdef int rc
    if end < 0 or end > src.length:
        end = src.length
    if start < 0 or start > end:
        raise ValueError(f"start {start} is outside the buffer of {end} bytes")
    with nogil:
        rc = ks_read_find(src.ptr, end, start, target, min_base, max_last, &found, &prev_pos,
                          &prev_last)
    return rc, found, prev_pos, prev_last


def read_span(buf, Py_ssize_t start, Py_ssize_t max_bytes, int64_t max_offset, Py_ssize_t end,
              index, Py_ssize_t entries, int64_t base_offset, int64_t max_last):
    """Checked ``span_with_index`` from the (already checked) batch at ``start``: returns
    ``(length, position of the last batch, rc)`` where rc is 0, or the error code of the batch
    the span stopped at (``start + length``); the bytes before it are whole, good headers."""
    cdef Pinned src = _pin(buf)
    cdef Pinned idx
    cdef size_t last_pos = start, stop = start, frm = start, second, found, prev_pos
    cdef int64_t slot, limit, jump_min = base_offset, prev_last
    cdef uint32_t rel, epos
    cdef int rc
    if end < 0 or end > src.length:
        end = src.length
    if start < 0 or start + KS_BATCH_HEADER_SIZE > end:
        raise ValueError(f"no batch header at {start} in a buffer of {end} bytes")
    if index is not None and entries > 0 and max_bytes > _JUMP_MIN_BYTES:
        # As span_with_index: jump through the offset index near the byte limit.
        idx = _pin(index)
        limit = min(<int64_t>end, <int64_t>start + max_bytes)
        slot = ks_offset_index_floor_position(idx.ptr, entries, <uint32_t>min(limit, 0xffffffff))
        slot -= 1
        if slot >= 0:
            rel = ks_load_be32(idx.ptr + slot * KS_OFFSET_INDEX_ENTRY)
            epos = ks_load_be32(idx.ptr + slot * KS_OFFSET_INDEX_ENTRY + 4)
            if epos > <uint32_t>start and <size_t>epos < <size_t>end and base_offset + rel < max_offset:
                frm = epos
                # Batches past the one at start begin after its last offset.
                jump_min = (<int64_t>ks_load_be64(src.ptr + start + KS_BATCH_BASE_OFFSET_OFFSET)
                            + <int32_t>ks_load_be32(src.ptr + start + KS_BATCH_LAST_OFFSET_DELTA_OFFSET)
                            + 1)
    if frm > <size_t>start:
        # The header after the first batch is checked even so: a first batch whose offsets
        # were damaged shows only there, and it must not lead a slice.
        second = start + KS_BATCH_LOG_OVERHEAD + <int32_t>ks_load_be32(src.ptr + start + KS_BATCH_LENGTH_OFFSET)
        if second < <size_t>end:
            rc = ks_read_find(src.ptr, end, second, INT64_MIN, jump_min, max_last, &found,
                              &prev_pos, &prev_last)
            if rc != KS_OK:
                return second - start, start, rc
    with nogil:
        rc = ks_read_span(src.ptr, end, start, frm, jump_min, max_bytes, max_offset, max_last,
                          &stop, &last_pos)
    if frm > <size_t>start and stop == frm:
        # Nothing fitted after the jump point, or the index entry does not point at a good
        # batch: walk from start, trusting only the data.
        with nogil:
            rc = ks_read_span(src.ptr, end, start, start, base_offset, max_bytes, max_offset,
                              max_last, &stop, &last_pos)
    return stop - start, last_pos, rc


def resync(buf, Py_ssize_t bad, Py_ssize_t end, int64_t min_base, int64_t max_last):
    """The position of the first whole, CRC-valid batch after the damaged one at ``bad`` whose
    offsets lie in [min_base, max_last], or ``end``. Reads every byte: error paths only."""
    cdef Pinned src = _pin(buf)
    cdef size_t found
    if end < 0 or end > src.length:
        end = src.length
    if bad < 0 or bad > end:
        raise ValueError(f"position {bad} is outside the buffer of {end} bytes")
    with nogil:
        found = ks_resync(src.ptr, end, bad, min_base, max_last)
    return found


def batch_crc_ok(buf, Py_ssize_t position, Py_ssize_t end=-1):
    """Whether the batch at ``position`` is whole and matches its CRC."""
    cdef Pinned src = _pin(buf)
    cdef ks_batch_header h
    cdef size_t size, at
    if end < 0 or end > src.length:
        end = src.length
    if position < 0 or position >= end:
        return False
    return ks_batch_check(src.ptr + position, end - position, 1, &h, &size, &at) == KS_OK


def read_error_text(int rc):
    """Words for a read_find/read_span error code."""
    if rc == KS_ERR_OFFSET:
        return "offsets out of order or outside the segment"
    if rc == KS_ERR_TRUNCATED:
        return "the batch runs past the end of the segment (length field damaged or file cut)"
    return _rc_text(rc)
