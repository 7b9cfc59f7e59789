# Included by _core.pyx: the producer's hot path (send), compiled.

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from libc.stdint cimport uint32_t

import random as _random
from collections import namedtuple

RecordMetadata = namedtuple("RecordMetadata", "topic partition offset timestamp")

cdef int _P_MURMUR2 = 0
cdef int _P_CONSISTENT_RANDOM = 1
cdef int _P_CONSISTENT = 2
cdef int _P_RANDOM = 3


@cython.final
cdef class _TopicState:
    cdef str name
    cdef int num_partitions
    cdef list logs
    cdef list builders
    cdef list callbacks
    cdef list opened_ms
    cdef int64_t max_message_bytes
    cdef object codec
    cdef bint require_keys
    cdef int sticky
    cdef int64_t sticky_bytes


cdef class ProducerCore:
    """Per-partition BatchBuilders behind one lock; ``send`` appends a record to its
    partition's builder and, when the builder reaches ``batch_size``, seals it and appends it to
    the partition log. Nothing per record is kept unless ``on_delivery`` is given."""
    cdef PyThread_type_lock _lock
    cdef dict _topics
    cdef readonly object store
    cdef readonly int64_t batch_size
    cdef readonly int64_t linger_ms
    cdef int _partitioner
    cdef readonly str partitioner
    cdef readonly object compression
    cdef readonly bint closed
    cdef object _rng
    cdef readonly int64_t pending_records
    cdef object _epoch
    # Called (once) when a batch starts while the linger thread sleeps with nothing pending.
    cdef public object _on_pending
    # A transactional producer's hook (kstore.producer._Transaction) while a transaction is
    # open, else None; _transactional: sends outside a transaction are refused.
    cdef public object _txn
    cdef public bint _transactional

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    def _setup(self, store, int64_t batch_size, int64_t linger_ms, compression, str partitioner):
        self.store = store
        self._topics = {}
        self.batch_size = batch_size
        self.linger_ms = linger_ms
        self.compression = compression
        self.partitioner = partitioner
        self._partitioner = {"murmur2": _P_MURMUR2, "murmur2_random": _P_MURMUR2,
                             "consistent_random": _P_CONSISTENT_RANDOM,
                             "consistent": _P_CONSISTENT, "random": _P_RANDOM}[partitioner]
        self._rng = _random.Random()
        self.closed = False
        self._epoch = store.topic_epoch

    cdef inline void _acquire(self) noexcept:
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)

    cdef _TopicState _state(self, str topic):
        cdef _TopicState st
        cdef int n
        if self.store.topic_epoch != self._epoch:
            self._refresh()
        st = self._topics.get(topic)
        if st is not None and st.num_partitions == len(st.logs):
            return st
        info = self.store._producer_topic(topic)  # (num_partitions, max.message.bytes, codec)
        n = info[0]
        if st is None:
            st = _TopicState.__new__(_TopicState)
            st.name = topic
            st.builders = []
            st.callbacks = []
            st.opened_ms = []
            st.sticky = -1
            st.sticky_bytes = 0
            self._topics[topic] = st
        st.num_partitions = n
        st.max_message_bytes = info[1]
        st.require_keys = info[3]
        # A topic codec other than 'producer' wins, as Kafka's broker recompresses to it.
        st.codec = info[2] if info[2] is not None else (self.compression or "none")
        st.logs = [None] * n
        while len(st.builders) < n:
            st.builders.append(None)
            st.callbacks.append(None)
            st.opened_ms.append(0)
        return st

    cdef int _refresh(self) except -1:
        """Topics changed in the store: seal what is pending for topics that still exist (with
        the config they were built under), drop state of deleted ones (their pending records
        fail: callbacks get the error), and look every topic up again on next use."""
        cdef _TopicState st
        cdef int p
        self._epoch = self.store.topic_epoch
        for name, st in list(self._topics.items()):
            try:
                self.store._producer_topic(name)
                alive = True
            except errors.UnknownTopicOrPartitionError as exc:
                alive = False
                err = exc
            for p in range(len(st.builders)):
                if st.builders[p] is None:
                    continue
                if alive and p < len(st.logs):
                    self._seal(st, p)
                else:
                    self.pending_records -= st.builders[p].count
                    cbs = st.callbacks[p]
                    st.builders[p] = None
                    st.callbacks[p] = None
                    if cbs:
                        for cb, i, ts in cbs:
                            cb(err, None)
            del self._topics[name]
        return 0

    cdef object _log(self, _TopicState st, int p):
        log = st.logs[p]
        if log is None:
            log = st.logs[p] = self.store.partition(st.name, p)
        return log

    cdef int _choose(self, _TopicState st, const uint8_t *kp, Py_ssize_t kn, object key,
                     Py_ssize_t size) except -2:
        cdef int n = st.num_partitions
        cdef int part = -1
        if self._partitioner == _P_MURMUR2:
            if kn >= 0:
                part = <int>((<uint32_t>ks_murmur2(kp, kn) & 0x7fffffff) % n)
        elif self._partitioner == _P_CONSISTENT_RANDOM:
            if kn > 0:
                part = <int>(zlib.crc32(PyMemoryView_FromMemory(<char *>kp, kn, PyBUF_READ)) % n)
        elif self._partitioner == _P_CONSISTENT:
            part = <int>(zlib.crc32(PyMemoryView_FromMemory(<char *>kp, max(kn, 0), PyBUF_READ)) % n) if kn > 0 else 0
        if part >= 0:
            return part
        # Sticky: stay on one partition for about batch_size bytes, then move (KIP-480).
        if st.sticky < 0 or st.sticky >= n or st.sticky_bytes >= self.batch_size:
            part = self._rng.randrange(n)
            if n > 1 and part == st.sticky:
                part = (part + 1 + self._rng.randrange(n - 1)) % n
            st.sticky = part
            st.sticky_bytes = 0
        st.sticky_bytes += size
        return st.sticky

    def send(self, str topic, value, key=None, headers=None, timestamp=None, partition=None,
             on_delivery=None):
        """Queue one record for ``topic``. Returns the partition it went to. The record is in
        the log (page cache) once its batch is sealed: at ``batch_size``, after ``linger_ms``,
        or on ``flush()``. Raises RecordTooLargeError for a record over max.message.bytes."""
        cdef _TopicState st
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kn, vn
        cdef Py_buffer kview, vview
        cdef int kheld = 0, vheld = 0, p
        cdef int64_t ts
        cdef size_t hn = 0
        cdef int32_t hcount = 0
        cdef BatchBuilder b
        if topic is None:
            raise TypeError("topic must be a str")
        self._acquire()
        try:
            if self.closed:
                raise errors.ClosedError("send on a closed producer")
            st = self._state(topic)
            kheld = _item(<PyObject *>key, &kp, &kn, &kview, "key")
            vheld = _item(<PyObject *>value, &vp, &vn, &vview, "value")
            if kn < 0 and st.require_keys:
                raise errors.InvalidRecordError(f"topic {topic!r}: {_NULL_KEY}")
            if partition is None:
                p = self._choose(st, kp, kn, key, (kn if kn > 0 else 0) + (vn if vn > 0 else 0) + 8)
            else:
                p = partition
                if p < 0 or p >= st.num_partitions:
                    raise errors.UnknownTopicOrPartitionError(
                        f"partition {p} does not exist: topic {topic!r} has {st.num_partitions}")
            ts = _now_ms() if timestamp is None else timestamp
            b = st.builders[p]
            if b is None:
                b = self._new_builder(st, p)
            if headers:
                b._encode_headers(headers, &hn, &hcount)
            if not b._add(kp, kn, vp, vn, ts, b.scratch.data, hn, hcount):
                self._seal(st, p)
                b = self._new_builder(st, p)
                if headers:
                    b._encode_headers(headers, &hn, &hcount)
                b._add(kp, kn, vp, vn, ts, b.scratch.data, hn, hcount)
            if <int64_t>(b.length - b.start) > st.max_message_bytes:
                # Only a lone oversized record gets here (the builder takes a first record
                # whatever its size): drop the builder, refuse the record.
                size = b.length - b.start
                st.builders[p] = None
                raise errors.RecordTooLargeError(
                    f"a record of about {size} bytes exceeds max.message.bytes="
                    f"{st.max_message_bytes} of topic {topic!r}")
            self.pending_records += 1
            if on_delivery is not None:
                cbs = st.callbacks[p]
                if cbs is None:
                    cbs = st.callbacks[p] = []
                cbs.append((on_delivery, b.count - 1, ts))
            if <int64_t>(b.length - b.start) >= self.batch_size:
                self._seal(st, p)
            elif self.linger_ms == 0:
                self._seal(st, p)
            return p
        finally:
            if kheld:
                PyBuffer_Release(&kview)
            if vheld:
                PyBuffer_Release(&vview)
            PyThread_release_lock(self._lock)

    cdef BatchBuilder _new_builder(self, _TopicState st, int p):
        # Never build a batch the topic would refuse (Kafka's producer keeps batches under
        # max.message.bytes too): a lone record over it is refused at send.
        cdef BatchBuilder b
        cdef Py_ssize_t most = max(min(self.batch_size, st.max_message_bytes), KS_BATCH_HEADER_SIZE)
        if self._txn is not None:
            # Per batch, not per record: the partition joins the transaction, and the batch
            # carries the producer's id, epoch and next sequence.
            pid, epoch, seq = self._txn.batch_header(st.name, p)
            b = BatchBuilder(st.codec, 0, producer_id=pid, producer_epoch=epoch,
                             base_sequence=seq, transactional=True, max_batch_bytes=most)
        elif self._transactional:
            raise errors.InvalidTxnStateError(
                "this producer is transactional: call begin_transaction() before sending")
        else:
            b = BatchBuilder(st.codec, 0, max_batch_bytes=most)
        st.builders[p] = b
        st.opened_ms[p] = _now_ms()
        if self._on_pending is not None:
            cb, self._on_pending = self._on_pending, None
            cb()
        return b

    cdef int _seal(self, _TopicState st, int p) except -1:
        """Build the partition's batch and append it to the log; run delivery callbacks."""
        cdef BatchBuilder b = st.builders[p]
        cdef int64_t n
        if b is None or b.count == 0:
            st.builders[p] = None
            return 0
        n = b.count
        st.builders[p] = None
        cbs = st.callbacks[p]
        st.callbacks[p] = None
        raw = b.build()
        self.pending_records -= n
        try:
            if self._txn is not None:
                first, last, lat = self._txn.append(st.name, p, self._log(st, p), raw, n)
            else:
                first, last, lat = self._log(st, p).append_batch(raw, validate_records=False,
                                                                 verify_crc=False)
        except errors.KStoreError as exc:
            if cbs:
                for cb, i, ts in cbs:
                    cb(exc, None)
                return 0
            raise type(exc)(f"{exc} ({n} records for {st.name}-{p} were not written)") from exc
        if cbs:
            for cb, i, ts in cbs:
                cb(None, RecordMetadata(st.name, p, first + i, lat if lat >= 0 else ts))
        return 0

    def flush(self):
        """Seal every pending batch and append it to its log."""
        cdef _TopicState st
        cdef int p
        self._acquire()
        try:
            for st in list(self._topics.values()):
                for p in range(len(st.builders)):
                    if st.builders[p] is not None:
                        self._seal(st, p)
        finally:
            PyThread_release_lock(self._lock)

    def _flush_topic(self, str topic):
        cdef _TopicState st
        cdef int p
        self._acquire()
        try:
            st = self._topics.get(topic)
            if st is not None:
                for p in range(len(st.builders)):
                    if st.builders[p] is not None:
                        self._seal(st, p)
        finally:
            PyThread_release_lock(self._lock)

    def _expire(self, int64_t linger_ms):
        """Seal the batches whose first record waited ``linger_ms`` (the linger thread).
        Returns milliseconds until the next one is due (or -1 when none is pending)."""
        cdef _TopicState st
        cdef int p
        cdef int64_t now = _now_ms(), due = -1, left
        self._acquire()
        try:
            for st in list(self._topics.values()):
                for p in range(len(st.builders)):
                    if st.builders[p] is None:
                        continue
                    left = st.opened_ms[p] + linger_ms - now
                    if left <= 0:
                        self._seal(st, p)
                    elif due < 0 or left < due:
                        due = left
        finally:
            PyThread_release_lock(self._lock)
        return due

    def _mark_closed(self):
        self._acquire()
        self.closed = True
        PyThread_release_lock(self._lock)


def max_record_size(values, keys=None):
    """Upper bound of the encoded size of the largest record (key + value + overhead) in the
    given columns (lists, 2-D arrays or (data, offsets)): send_many checks it against
    max.message.bytes before writing anything."""
    cdef _Col vals, ks
    cdef Py_ssize_t i, best = 0, size, kn, vn
    cdef const uint8_t *p
    cdef Py_buffer view
    cdef int held
    keep_v = _column(values, &vals, "values")
    keep_k = _column(keys, &ks, "keys")
    for i in range(vals.n):
        if i + _PREFETCH < vals.n:
            _prefetch_item(&vals, i + _PREFETCH)
            _prefetch_item(&ks, i + _PREFETCH)
        held = _col_get(&vals, i, &p, &vn, &view)
        if held:
            PyBuffer_Release(&view)
        held = _col_get(&ks, i, &p, &kn, &view)
        if held:
            PyBuffer_Release(&view)
        size = max(vn, 0) + max(kn, 0)
        if size > best:
            best = size
    return best + KS_RECORD_MAX_OVERHEAD + 3 * 5 + KS_BATCH_HEADER_SIZE
