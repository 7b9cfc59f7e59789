# cython: language_level=3
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.buffer cimport Py_buffer
from cpython.ref cimport PyObject
cimport numpy as cnp


cdef extern from "crc32c.h" nogil:
    void ks_crc32c_init()
    uint32_t ks_crc32c(uint32_t crc, const uint8_t *data, size_t len)
    int ks_crc32c_hw()


cdef extern from "murmur2.h" nogil:
    int32_t ks_murmur2(const uint8_t *data, size_t len)


cdef extern from "index.h" nogil:
    enum:
        KS_OFFSET_INDEX_ENTRY
        KS_TIME_INDEX_ENTRY
    int64_t ks_offset_index_lookup(const uint8_t *index, size_t entries, uint32_t relative_offset)
    int64_t ks_time_index_lookup(const uint8_t *index, size_t entries, int64_t timestamp)
    int64_t ks_offset_index_floor_position(const uint8_t *index, size_t entries, uint32_t position)
    size_t ks_offset_index_valid_entries(const uint8_t *index, size_t entries)
    size_t ks_time_index_valid_entries(const uint8_t *index, size_t entries)


cdef extern from "batch.h" nogil:
    enum:
        KS_BATCH_BASE_OFFSET_OFFSET
        KS_BATCH_LENGTH_OFFSET
        KS_BATCH_LOG_OVERHEAD
        KS_BATCH_LEADER_EPOCH_OFFSET
        KS_BATCH_MAGIC_OFFSET
        KS_BATCH_CRC_OFFSET
        KS_BATCH_ATTRIBUTES_OFFSET
        KS_BATCH_LAST_OFFSET_DELTA_OFFSET
        KS_BATCH_BASE_TIMESTAMP_OFFSET
        KS_BATCH_MAX_TIMESTAMP_OFFSET
        KS_BATCH_PRODUCER_ID_OFFSET
        KS_BATCH_PRODUCER_EPOCH_OFFSET
        KS_BATCH_BASE_SEQUENCE_OFFSET
        KS_BATCH_RECORDS_COUNT_OFFSET
        KS_BATCH_HEADER_SIZE
        KS_BATCH_MAGIC
        KS_ATTR_COMPRESSION_MASK
        KS_ATTR_TIMESTAMP_TYPE
        KS_ATTR_TRANSACTIONAL
        KS_ATTR_CONTROL
        KS_ATTR_DELETE_HORIZON
        KS_CODEC_NONE
        KS_CODEC_GZIP
        KS_CODEC_SNAPPY
        KS_CODEC_LZ4
        KS_CODEC_ZSTD
        KS_RECORD_MIN_SIZE
        KS_RECORD_MAX_OVERHEAD
        KS_OK
        KS_ERR_TRUNCATED
        KS_ERR_MAGIC
        KS_ERR_CRC
        KS_ERR_LENGTH
        KS_ERR_VARINT
        KS_ERR_RECORD
        KS_ERR_COUNT
        KS_ERR_CODEC
        KS_ERR_NOMEM
        KS_ERR_OFFSET
        KS_ERR_TOO_LARGE
        KS_ERR_NULL_KEY

    ctypedef struct ks_batch_header:
        int64_t base_offset
        int32_t batch_length
        int32_t partition_leader_epoch
        int8_t magic
        uint32_t crc
        int16_t attributes
        int32_t last_offset_delta
        int64_t base_timestamp
        int64_t max_timestamp
        int64_t producer_id
        int16_t producer_epoch
        int32_t base_sequence
        int32_t records_count

    ctypedef struct ks_record:
        int8_t attributes
        int64_t timestamp_delta
        int32_t offset_delta
        int32_t key_length
        size_t key_pos
        int32_t value_length
        size_t value_pos
        int32_t header_count
        size_t headers_pos
        size_t end_pos

    ctypedef struct ks_buf:
        uint8_t *data
        size_t len
        size_t cap

    ctypedef struct ks_scan_out:
        int64_t *position
        int64_t *base_offset
        int64_t *last_offset
        int64_t *max_timestamp
        int32_t *size
        int32_t *records_count
        size_t n
        size_t cap

    uint16_t ks_load_be16(const uint8_t *p)
    uint32_t ks_load_be32(const uint8_t *p)
    uint64_t ks_load_be64(const uint8_t *p)
    void ks_store_be32(uint8_t *p, uint32_t v)
    void ks_store_be64(uint8_t *p, uint64_t v)
    void ks_store_be16(uint8_t *p, uint16_t v)
    int ks_batch_parse_header(const uint8_t *buf, size_t len, ks_batch_header *h)
    void ks_batch_write_header(uint8_t *buf, const ks_batch_header *h)
    void ks_batch_update_crc(uint8_t *batch, size_t size)
    int ks_batch_check(const uint8_t *buf, size_t len, int check_crc, ks_batch_header *h,
                       size_t *size, size_t *err_pos)
    int ks_records_check(const uint8_t *area, size_t len, int32_t count, int sequential,
                         int require_keys, size_t *err_pos)
    int ks_record_parse(const uint8_t *area, size_t len, size_t *pos, ks_record *r)
    int ks_header_parse(const uint8_t *area, size_t end, size_t *pos, int32_t *key_length,
                        size_t *key_pos, int32_t *value_length, size_t *value_pos)
    int ks_records_columns(const uint8_t *area, size_t len, int32_t count, int64_t base_offset,
                           int64_t base_timestamp, int64_t log_append_timestamp,
                           int use_log_append, int64_t pos_base, int64_t *offsets,
                           int64_t *timestamps, int64_t *key_pos, int32_t *key_len,
                           int64_t *value_pos, int32_t *value_len, size_t *err_pos)
    size_t ks_record_size(int64_t timestamp_delta, int32_t offset_delta, int32_t key_length,
                          int32_t value_length, int32_t header_count, size_t headers_size,
                          size_t *body_size)
    uint8_t *ks_record_write(uint8_t *out, size_t body_size, int64_t timestamp_delta,
                             int32_t offset_delta, const uint8_t *key, int32_t key_length,
                             const uint8_t *value, int32_t value_length, int32_t header_count,
                             const uint8_t *headers, size_t headers_size)
    size_t ks_header_size(size_t key_length, int32_t value_length)
    uint8_t *ks_header_write(uint8_t *out, const uint8_t *key, size_t key_length,
                             const uint8_t *value, int32_t value_length)
    int ks_buf_reserve(ks_buf *b, size_t extra)
    void ks_buf_free(ks_buf *b)
    void ks_scan_out_free(ks_scan_out *o)
    int ks_scan(const uint8_t *buf, size_t len, size_t start, int check_crc, int check_offsets,
                size_t max_batches, ks_scan_out *out, size_t *valid_end, size_t *err_pos)
    int ks_find_offset(const uint8_t *buf, size_t len, size_t start, int64_t target,
                       size_t *found_pos)
    int ks_find_timestamp(const uint8_t *buf, size_t len, size_t start, int64_t target,
                          size_t *found_pos)
    size_t ks_span_batches(const uint8_t *buf, size_t len, size_t start, size_t max_bytes,
                           int64_t max_offset)
    size_t ks_span_batches_from(const uint8_t *buf, size_t len, size_t start, size_t walk_from,
                                size_t max_bytes, int64_t max_offset, size_t *last_pos)
    int ks_read_find(const uint8_t *buf, size_t len, size_t start, int64_t target,
                     int64_t min_base, int64_t max_last, size_t *found_pos, size_t *prev_pos,
                     int64_t *prev_last)
    int ks_read_span(const uint8_t *buf, size_t len, size_t start, size_t walk_from,
                     int64_t min_base, size_t max_bytes, int64_t max_offset, int64_t max_last,
                     size_t *end, size_t *last_pos)
    size_t ks_resync(const uint8_t *buf, size_t len, size_t walk_from, int64_t min_base,
                     int64_t max_last)


cdef class Pinned:
    """A buffer export held open: the source cannot be resized or unmapped while it lives."""
    cdef Py_buffer view
    cdef bint held
    cdef readonly object obj
    cdef const uint8_t *ptr
    cdef Py_ssize_t length


cdef class Record:
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp
    cdef readonly int timestamp_type
    cdef readonly object key
    cdef readonly object value
    cdef readonly tuple headers
    cdef public str topic
    cdef public int partition


cdef struct _Col:
    int kind               # 0: all null, 1: list/tuple, 2: 2-D fixed width, 3: data + offsets
    PyObject *seq
    const uint8_t *base
    Py_ssize_t width
    const int64_t *offs
    Py_ssize_t n
    Py_ssize_t data_len
    int is_key


cdef class Columns:
    cdef readonly object data
    cdef readonly cnp.ndarray offsets
    cdef readonly cnp.ndarray timestamps
    cdef readonly cnp.ndarray key_positions
    cdef readonly cnp.ndarray key_lengths
    cdef readonly cnp.ndarray value_positions
    cdef readonly cnp.ndarray value_lengths


cdef class Batch:
    cdef readonly Pinned source
    cdef readonly Py_ssize_t position
    cdef readonly Py_ssize_t size
    cdef ks_batch_header h
    cdef tuple _area(self, Py_ssize_t limit)
    cdef Py_ssize_t _err_pos(self, Py_ssize_t base, size_t pos)
    cdef object _columns_into(self, Columns cols, Py_ssize_t at, Py_ssize_t limit, bint keep,
                              int64_t shift=*)


cdef class BatchBuilder:
    # The batches are built inside a bytes object owned only by this builder (refcount 1), grown
    # with _PyBytes_Resize and handed out by build() without a copy.
    cdef PyObject *out
    cdef uint8_t *data
    cdef size_t length
    cdef size_t cap
    cdef size_t start
    cdef int codec
    cdef object compression_level
    cdef int64_t base_offset
    cdef int64_t base_timestamp
    cdef int64_t max_timestamp
    cdef int32_t count
    cdef bint log_append
    cdef bint transactional
    cdef bint sealed
    cdef int64_t producer_id
    cdef int16_t producer_epoch
    cdef int32_t base_sequence
    cdef int32_t partition_leader_epoch
    cdef size_t max_batch_bytes
    cdef ks_buf scratch
    cdef int _check_open(self) except -1
    cdef int _reserve(self, size_t extra) except -1
    cdef int _seal(self) except -1
    cdef int _begin(self) except -1
    cdef bytes _take(self)
    cdef int _add(self, const uint8_t *kp, Py_ssize_t kn, const uint8_t *vp, Py_ssize_t vn,
                  int64_t ts, const uint8_t *hp, size_t hn, int32_t hcount) except -1
    cdef int _encode_headers(self, object headers, size_t *hn, int32_t *hcount) except -1
    cdef Py_ssize_t _append_range(self, _Col *vals, _Col *keys, object timestamps,
                                  Py_ssize_t start, Py_ssize_t stop,
                                  const int64_t *indices=*) except -1
