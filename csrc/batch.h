/*
 * Kafka RecordBatch v2 (magic 2): every byte offset and size of the format lives here.
 * See ../shared/docs/kafka-storage.md section 1 for the layout with a worked example.
 *
 * Portable C99, no Python.h. Functions return KS_OK (0) or a negative KS_ERR_* code; where a
 * function takes `size_t *err_pos`, it stores the byte position (relative to the buffer it was
 * given) at which the fault was found. Nothing here allocates except the ks_buf and ks_scan_out
 * helpers, which use malloc/realloc and are safe to call without the GIL.
 */
#ifndef KS_BATCH_H
#define KS_BATCH_H

#include <stddef.h>
#include <stdint.h>

/* Header field positions (all big-endian). */
#define KS_BATCH_BASE_OFFSET_OFFSET        0
#define KS_BATCH_LENGTH_OFFSET             8
#define KS_BATCH_LOG_OVERHEAD              12 /* base offset + batch length */
#define KS_BATCH_LEADER_EPOCH_OFFSET       12
#define KS_BATCH_MAGIC_OFFSET              16
#define KS_BATCH_CRC_OFFSET                17
#define KS_BATCH_ATTRIBUTES_OFFSET         21 /* the CRC covers from here to the end */
#define KS_BATCH_LAST_OFFSET_DELTA_OFFSET  23
#define KS_BATCH_BASE_TIMESTAMP_OFFSET     27
#define KS_BATCH_MAX_TIMESTAMP_OFFSET      35
#define KS_BATCH_PRODUCER_ID_OFFSET        43
#define KS_BATCH_PRODUCER_EPOCH_OFFSET     51
#define KS_BATCH_BASE_SEQUENCE_OFFSET      53
#define KS_BATCH_RECORDS_COUNT_OFFSET      57
#define KS_BATCH_HEADER_SIZE               61
/* batchLength counts the bytes after the length field: a header-only batch has 49. */
#define KS_BATCH_MIN_LENGTH_FIELD          (KS_BATCH_HEADER_SIZE - KS_BATCH_LOG_OVERHEAD)
#define KS_BATCH_MAGIC                     2

/* Attribute bits. */
#define KS_ATTR_COMPRESSION_MASK           0x07
#define KS_ATTR_TIMESTAMP_TYPE             0x08 /* 1 = LogAppendTime */
#define KS_ATTR_TRANSACTIONAL              0x10
#define KS_ATTR_CONTROL                    0x20
#define KS_ATTR_DELETE_HORIZON             0x40

#define KS_CODEC_NONE    0
#define KS_CODEC_GZIP    1
#define KS_CODEC_SNAPPY  2
#define KS_CODEC_LZ4     3
#define KS_CODEC_ZSTD    4
#define KS_CODEC_MAX     4

/* The smallest record: length, attributes, timestamp delta, offset delta, key length, value
 * length and header count, one byte each. Used to reject absurd record counts early. */
#define KS_RECORD_MIN_SIZE                 7
/* 5 (length) + 1 (attributes) + 10 (timestamp delta) + 5 (offset delta) */
#define KS_RECORD_MAX_OVERHEAD             21
#define KS_VARINT_MAX_BYTES                5
#define KS_VARLONG_MAX_BYTES               10

/* Error codes. */
#define KS_OK               0
#define KS_ERR_TRUNCATED   (-1)  /* the buffer ends inside a batch or record */
#define KS_ERR_MAGIC       (-2)  /* magic byte is not 2 */
#define KS_ERR_CRC         (-3)  /* stored CRC-32C differs from the computed one */
#define KS_ERR_LENGTH      (-4)  /* batch length field too small or inconsistent */
#define KS_ERR_VARINT      (-5)  /* varint longer than 5 bytes / varlong longer than 10 */
#define KS_ERR_RECORD      (-6)  /* a record's fields disagree with its length, or a negative size */
#define KS_ERR_COUNT       (-7)  /* records count disagrees with the records present */
#define KS_ERR_CODEC       (-8)  /* unknown compression codec id */
#define KS_ERR_NOMEM       (-9)
#define KS_ERR_OFFSET      (-10) /* offsets not increasing, or lastOffsetDelta inconsistent */
#define KS_ERR_TOO_LARGE   (-11) /* a field does not fit in its type */
#define KS_ERR_NULL_KEY    (-12) /* a record without a key where keys are required (compaction) */

typedef struct {
    int64_t base_offset;
    int32_t batch_length;
    int32_t partition_leader_epoch;
    int8_t  magic;
    uint32_t crc;
    int16_t attributes;
    int32_t last_offset_delta;
    int64_t base_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int16_t producer_epoch;
    int32_t base_sequence;
    int32_t records_count;
} ks_batch_header;

/* One record, as positions into the records area it was parsed from. */
typedef struct {
    int8_t  attributes;
    int64_t timestamp_delta;
    int32_t offset_delta;
    int32_t key_length;      /* -1 = null */
    size_t  key_pos;
    int32_t value_length;    /* -1 = null */
    size_t  value_pos;
    int32_t header_count;
    size_t  headers_pos;     /* first byte of the first header */
    size_t  end_pos;         /* first byte after the record */
} ks_record;

/* ---- big-endian helpers ---- */
static inline uint16_t ks_load_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t ks_load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint64_t ks_load_be64(const uint8_t *p) {
    return ((uint64_t)ks_load_be32(p) << 32) | ks_load_be32(p + 4);
}
static inline void ks_store_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void ks_store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void ks_store_be64(uint8_t *p, uint64_t v) {
    ks_store_be32(p, (uint32_t)(v >> 32)); ks_store_be32(p + 4, (uint32_t)v);
}

/* ---- header ---- */

/* Parse the 61-byte header at buf (len bytes available). Checks only that 61 bytes are there. */
int ks_batch_parse_header(const uint8_t *buf, size_t len, ks_batch_header *h);

/* Write a full header. crc is computed over buf[21 .. 12 + batch_length). */
void ks_batch_write_header(uint8_t *buf, const ks_batch_header *h);

/* Recompute the CRC of a complete batch in place (after changing bytes >= 21). */
void ks_batch_update_crc(uint8_t *batch, size_t size);

/*
 * Check the batch at buf[0..len): log overhead, length field, magic, CRC (when check_crc),
 * record count against lastOffsetDelta. Does not look at the records. On success *size is the
 * whole batch size (12 + batchLength). KS_ERR_TRUNCATED means the batch runs past len.
 */
int ks_batch_check(const uint8_t *buf, size_t len, int check_crc, ks_batch_header *h,
                   size_t *size, size_t *err_pos);

/* ---- records ---- */

/* Parse the record at area[*pos] (area has len bytes). On success fills r and sets *pos past it. */
int ks_record_parse(const uint8_t *area, size_t len, size_t *pos, ks_record *r);

/* Parse the header at area[*pos] inside a record ending at end. Lengths -1 = null value. */
int ks_header_parse(const uint8_t *area, size_t end, size_t *pos, int32_t *key_length,
                    size_t *key_pos, int32_t *value_length, size_t *value_pos);

/*
 * Walk `count` records in area[0..len) and require that they end exactly at len.
 * Writes per-record columns when the arrays are not NULL. offsets[i] = base_offset + offsetDelta,
 * timestamps[i] = base_timestamp + timestampDelta, or max_timestamp for LogAppendTime batches.
 * Positions are relative to area plus pos_base. On error *err_pos is relative to area.
 */
int ks_records_columns(const uint8_t *area, size_t len, int32_t count, int64_t base_offset,
                       int64_t base_timestamp, int64_t log_append_timestamp, int use_log_append,
                       int64_t pos_base, int64_t *offsets, int64_t *timestamps, int64_t *key_pos,
                       int32_t *key_len, int64_t *value_pos, int32_t *value_len, size_t *err_pos);

/*
 * Check that `count` records parse and end exactly at len; with `sequential`, that their offset
 * deltas run 0, 1, ..., count - 1 as a producer writes them (KS_ERR_OFFSET otherwise).
 */
int ks_records_check(const uint8_t *area, size_t len, int32_t count, int sequential,
                     int require_keys, size_t *err_pos);

/* Encoded size of one record with the given parts (headers already encoded, headers_size bytes). */
size_t ks_record_size(int64_t timestamp_delta, int32_t offset_delta, int32_t key_length,
                      int32_t value_length, int32_t header_count, size_t headers_size,
                      size_t *body_size);

/* Write one record at out (which must have ks_record_size bytes). Returns the end pointer. */
uint8_t *ks_record_write(uint8_t *out, size_t body_size, int64_t timestamp_delta,
                         int32_t offset_delta, const uint8_t *key, int32_t key_length,
                         const uint8_t *value, int32_t value_length, int32_t header_count,
                         const uint8_t *headers, size_t headers_size);

/* Encode one header entry at out; returns end pointer. out needs ks_header_size bytes. */
size_t ks_header_size(size_t key_length, int32_t value_length);
uint8_t *ks_header_write(uint8_t *out, const uint8_t *key, size_t key_length,
                         const uint8_t *value, int32_t value_length);

/* ---- growable buffer ---- */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} ks_buf;

int ks_buf_reserve(ks_buf *b, size_t extra);
void ks_buf_free(ks_buf *b);

/* ---- scanning a run of batches (log recovery, index rebuild) ---- */
typedef struct {
    int64_t *position;
    int64_t *base_offset;
    int64_t *last_offset;
    int64_t *max_timestamp;
    int32_t *size;
    int32_t *records_count;
    size_t n;
    size_t cap;
} ks_scan_out;

void ks_scan_out_free(ks_scan_out *o);

/*
 * Walk consecutive batches in buf from start. For each valid batch append an entry to out
 * (out may be NULL to only validate). Stops at the end of the buffer (KS_OK), a batch that runs
 * past the end (KS_ERR_TRUNCATED: a torn tail) or the first invalid batch (its error code).
 * *valid_end is the position after the last valid batch; *err_pos the position of the fault.
 * When check_offsets, each batch must start above the previous batch's last offset.
 * max_batches (0 = no limit) stops the walk after that many batches with KS_OK.
 */
int ks_scan(const uint8_t *buf, size_t len, size_t start, int check_crc, int check_offsets,
            size_t max_batches, ks_scan_out *out, size_t *valid_end, size_t *err_pos);

/*
 * Find the first batch at or after position start whose last offset >= target, reading headers
 * only (no CRC). *found_pos is its position, or len when no batch qualifies.
 * A batch running past len ends the search as not found.
 */
int ks_find_offset(const uint8_t *buf, size_t len, size_t start, int64_t target, size_t *found_pos);

/* Same, for the first batch whose max timestamp >= target. */
int ks_find_timestamp(const uint8_t *buf, size_t len, size_t start, int64_t target,
                      size_t *found_pos);

/*
 * Starting at the batch at start, add whole batches while the total stays <= max_bytes
 * (the first batch always counts, however large) and their base offset is < max_offset.
 * Returns the number of bytes. Reads headers only.
 */
size_t ks_span_batches(const uint8_t *buf, size_t len, size_t start, size_t max_bytes,
                       int64_t max_offset);

/*
 * Like ks_span_batches, but the walk starts at `from` (a batch boundary at or after start,
 * e.g. found through the offset index) instead of at start, so the headers between are not
 * read. Returns the end position of the span and sets *last_pos to the start of its last batch
 * (start itself when the span holds one batch).
 */
size_t ks_span_batches_from(const uint8_t *buf, size_t len, size_t start, size_t from,
                            size_t max_bytes, int64_t max_offset, size_t *last_pos);

/* ---- checked reads ---- */
/*
 * Reads trust no header they walk. Each batch must pass ks_batch_check (without the CRC: the
 * consumer checks it, as Kafka's does), lie wholly inside len, and hold offsets within
 * [min_base, max_last] that rise from batch to batch. A walk that meets a batch failing these
 * stops there with its error code. Before these, a damaged length ended the walk as if the
 * segment ended there, and every reader skipped the rest of the segment without a word.
 */

/*
 * The first batch from start whose last offset >= target: KS_OK with *found_pos its position,
 * or len when the walk ends exactly at len (offsets past the segment's data, e.g. after
 * compaction). An error code with *found_pos at the failing batch otherwise. *prev_pos and
 * *prev_last describe the last good batch walked before *found_pos (len and min_base - 1 when
 * none).
 */
int ks_read_find(const uint8_t *buf, size_t len, size_t start, int64_t target, int64_t min_base,
                 int64_t max_last, size_t *found_pos, size_t *prev_pos, int64_t *prev_last);

/*
 * ks_span_batches_from with the checks above, walking from `from` (batches from there on must
 * start at min_base or later). *end is where the span stops; the return code says why it
 * stopped: KS_OK (the end, max_bytes or max_offset) or the error of the batch at *end.
 */
int ks_read_span(const uint8_t *buf, size_t len, size_t start, size_t from, int64_t min_base,
                 size_t max_bytes, int64_t max_offset, int64_t max_last, size_t *end,
                 size_t *last_pos);

/*
 * After a batch at `from` whose header cannot be trusted: the first position past it where a
 * whole batch with offsets in [min_base, max_last] and a matching CRC starts, or len. Reads
 * every byte up to there: for error paths only.
 */
size_t ks_resync(const uint8_t *buf, size_t len, size_t from, int64_t min_base, int64_t max_last);

#endif
