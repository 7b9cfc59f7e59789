# The shared tail of a partition log (csrc/shared.h): the state several processes appending to
# one partition keep in a small mapped file, under a robust process-shared mutex.

from posix.unistd cimport pread
from libc.string cimport strerror

cdef extern from "shared.h":
    ctypedef struct ks_tail:
        uint64_t magic
        uint64_t layout
        uint64_t session
        uint64_t seq
        int64_t deleted
        int64_t active_base
        int64_t size
        int64_t next_offset
        int64_t log_start
        int64_t recovery_point
        int64_t last_flush_ms
        int64_t segments_gen
        int64_t bytes_since_index
        int64_t max_timestamp
        int64_t offset_of_max_timestamp
        int64_t first_batch_timestamp
        int64_t created_ms
        int64_t last_time_entry
        int64_t offset_entries
        int64_t time_entries
        int64_t offset_persisted
        int64_t time_persisted
        int64_t appends
        int64_t takeovers
        int64_t last_pid
        int64_t repairs
        uint8_t offset_pending[1]
        uint8_t time_pending[1]
    uint64_t KS_TAIL_MAGIC
    int KS_TAIL_PENDING
    int KS_TAIL_OWNER_DIED
    int KS_TAIL_FILE_SIZE
    int ks_tail_init(ks_tail *t) nogil
    int ks_tail_lock(ks_tail *t) nogil
    int ks_tail_unlock(ks_tail *t) nogil
    int ks_tail_busy(ks_tail *t) nogil

cdef extern from "<unistd.h>":
    int getpid() nogil

TAIL_FILE_SIZE = KS_TAIL_FILE_SIZE
TAIL_PENDING = KS_TAIL_PENDING


@cython.final
cdef class SharedTail:
    """A mapped ks_tail (``mm``: a writable mmap of at least TAIL_FILE_SIZE bytes).

    ``lock()`` blocks without the GIL and returns True when the previous owner died holding
    the lock (the caller rebuilds the state from the files before using it). Fields are read
    and written through the properties; ``publish`` (on the SegmentAppender) stores the append
    state and moves ``seq``."""
    cdef Pinned buf
    cdef ks_tail *t
    cdef readonly bint held

    def __init__(self, mm):
        self.buf = _pin(mm, True)
        if self.buf.length < <Py_ssize_t>sizeof(ks_tail) or KS_TAIL_FILE_SIZE < <int>sizeof(ks_tail):
            raise ValueError(f"a shared tail needs {sizeof(ks_tail)} bytes, not {self.buf.length}")
        self.t = <ks_tail *>self.buf.ptr

    def init(self, uint64_t session):
        """Make a fresh mutex and zero state (only when no other process maps the file)."""
        cdef int rc = ks_tail_init(self.t)
        if rc:
            raise OSError(rc, f"cannot initialise a process-shared mutex: {strerror(rc).decode()}")
        self.t.session = session

    def mark_valid(self):
        self.t.magic = KS_TAIL_MAGIC

    @property
    def valid(self):
        return self.t.magic == KS_TAIL_MAGIC and self.t.layout == sizeof(ks_tail)

    def lock(self):
        cdef int rc
        if self.t == NULL:
            raise errors.ClosedError("this shared tail was released (its log is closed)")
        with nogil:
            rc = ks_tail_lock(self.t)
        if rc == KS_TAIL_OWNER_DIED:
            self.held = True
            self.t.repairs += 1
            return True
        if rc:
            raise errors.KafkaStorageError(f"cannot lock a partition's shared tail: "
                                           f"{strerror(rc).decode()}")
        self.held = True
        return False

    def busy(self):
        """Whether someone holds the lock right now (a hint for choosing what to append
        first; it may change at once)."""
        return self.t != NULL and ks_tail_busy(self.t) != 0

    def unlock(self):
        self.held = False
        ks_tail_unlock(self.t)

    def release(self):
        """Drop the buffer export (the mmap can close)."""
        self.t = NULL
        self.buf = None

    def bump(self):
        self.t.seq += 1
        return self.t.seq

    @property
    def seq(self):
        # Read without the log's lock (readers, the store's watcher): a released tail is -1.
        cdef ks_tail *t = self.t
        return -1 if t == NULL else t.seq

    @property
    def session(self):
        return self.t.session

    @property
    def deleted(self):
        return self.t.deleted

    @deleted.setter
    def deleted(self, int64_t v):
        self.t.deleted = v

    @property
    def active_base(self):
        return self.t.active_base

    @active_base.setter
    def active_base(self, int64_t v):
        self.t.active_base = v

    @property
    def size(self):
        return self.t.size

    @property
    def next_offset(self):
        return self.t.next_offset

    @property
    def log_start(self):
        return self.t.log_start

    @log_start.setter
    def log_start(self, int64_t v):
        self.t.log_start = v

    @property
    def recovery_point(self):
        return self.t.recovery_point

    @recovery_point.setter
    def recovery_point(self, int64_t v):
        self.t.recovery_point = v

    @property
    def last_flush_ms(self):
        return self.t.last_flush_ms

    @property
    def segments_gen(self):
        return self.t.segments_gen

    @segments_gen.setter
    def segments_gen(self, int64_t v):
        self.t.segments_gen = v

    @property
    def offset_persisted(self):
        return self.t.offset_persisted

    @property
    def time_persisted(self):
        return self.t.time_persisted

    def stats(self):
        return {"appends": self.t.appends, "takeovers": self.t.takeovers,
                "repairs": self.t.repairs, "seq": self.t.seq}
