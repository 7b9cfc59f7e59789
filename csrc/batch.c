#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "varint.h"

int ks_batch_parse_header(const uint8_t *b, size_t len, ks_batch_header *h)
{
    if (len < KS_BATCH_HEADER_SIZE)
        return KS_ERR_TRUNCATED;
    h->base_offset = (int64_t)ks_load_be64(b + KS_BATCH_BASE_OFFSET_OFFSET);
    h->batch_length = (int32_t)ks_load_be32(b + KS_BATCH_LENGTH_OFFSET);
    h->partition_leader_epoch = (int32_t)ks_load_be32(b + KS_BATCH_LEADER_EPOCH_OFFSET);
    h->magic = (int8_t)b[KS_BATCH_MAGIC_OFFSET];
    h->crc = ks_load_be32(b + KS_BATCH_CRC_OFFSET);
    h->attributes = (int16_t)ks_load_be16(b + KS_BATCH_ATTRIBUTES_OFFSET);
    h->last_offset_delta = (int32_t)ks_load_be32(b + KS_BATCH_LAST_OFFSET_DELTA_OFFSET);
    h->base_timestamp = (int64_t)ks_load_be64(b + KS_BATCH_BASE_TIMESTAMP_OFFSET);
    h->max_timestamp = (int64_t)ks_load_be64(b + KS_BATCH_MAX_TIMESTAMP_OFFSET);
    h->producer_id = (int64_t)ks_load_be64(b + KS_BATCH_PRODUCER_ID_OFFSET);
    h->producer_epoch = (int16_t)ks_load_be16(b + KS_BATCH_PRODUCER_EPOCH_OFFSET);
    h->base_sequence = (int32_t)ks_load_be32(b + KS_BATCH_BASE_SEQUENCE_OFFSET);
    h->records_count = (int32_t)ks_load_be32(b + KS_BATCH_RECORDS_COUNT_OFFSET);
    return KS_OK;
}

void ks_batch_update_crc(uint8_t *batch, size_t size)
{
    uint32_t crc = ks_crc32c(0, batch + KS_BATCH_ATTRIBUTES_OFFSET, size - KS_BATCH_ATTRIBUTES_OFFSET);
    ks_store_be32(batch + KS_BATCH_CRC_OFFSET, crc);
}

void ks_batch_write_header(uint8_t *b, const ks_batch_header *h)
{
    ks_store_be64(b + KS_BATCH_BASE_OFFSET_OFFSET, (uint64_t)h->base_offset);
    ks_store_be32(b + KS_BATCH_LENGTH_OFFSET, (uint32_t)h->batch_length);
    ks_store_be32(b + KS_BATCH_LEADER_EPOCH_OFFSET, (uint32_t)h->partition_leader_epoch);
    b[KS_BATCH_MAGIC_OFFSET] = (uint8_t)h->magic;
    ks_store_be16(b + KS_BATCH_ATTRIBUTES_OFFSET, (uint16_t)h->attributes);
    ks_store_be32(b + KS_BATCH_LAST_OFFSET_DELTA_OFFSET, (uint32_t)h->last_offset_delta);
    ks_store_be64(b + KS_BATCH_BASE_TIMESTAMP_OFFSET, (uint64_t)h->base_timestamp);
    ks_store_be64(b + KS_BATCH_MAX_TIMESTAMP_OFFSET, (uint64_t)h->max_timestamp);
    ks_store_be64(b + KS_BATCH_PRODUCER_ID_OFFSET, (uint64_t)h->producer_id);
    ks_store_be16(b + KS_BATCH_PRODUCER_EPOCH_OFFSET, (uint16_t)h->producer_epoch);
    ks_store_be32(b + KS_BATCH_BASE_SEQUENCE_OFFSET, (uint32_t)h->base_sequence);
    ks_store_be32(b + KS_BATCH_RECORDS_COUNT_OFFSET, (uint32_t)h->records_count);
    ks_batch_update_crc(b, (size_t)h->batch_length + KS_BATCH_LOG_OVERHEAD);
}

int ks_batch_check(const uint8_t *buf, size_t len, int check_crc, ks_batch_header *h,
                   size_t *size, size_t *err_pos)
{
    *err_pos = 0;
    if (len < KS_BATCH_LOG_OVERHEAD)
        return KS_ERR_TRUNCATED;
    int32_t batch_length = (int32_t)ks_load_be32(buf + KS_BATCH_LENGTH_OFFSET);
    /* The magic decides how to read the rest (a v0/v1 entry can be shorter than a v2 header),
     * so look at it first, as soon as it is there. */
    if (len > KS_BATCH_MAGIC_OFFSET && batch_length > KS_BATCH_MAGIC_OFFSET - KS_BATCH_LOG_OVERHEAD &&
        buf[KS_BATCH_MAGIC_OFFSET] != KS_BATCH_MAGIC) {
        *err_pos = KS_BATCH_MAGIC_OFFSET;
        return KS_ERR_MAGIC;
    }
    if (batch_length < KS_BATCH_MIN_LENGTH_FIELD) {
        *err_pos = KS_BATCH_LENGTH_OFFSET;
        return KS_ERR_LENGTH;
    }
    size_t total = (size_t)batch_length + KS_BATCH_LOG_OVERHEAD;
    if (total > len) {
        *err_pos = len;
        return KS_ERR_TRUNCATED;
    }
    ks_batch_parse_header(buf, len, h);
    if (check_crc) {
        uint32_t crc = ks_crc32c(0, buf + KS_BATCH_ATTRIBUTES_OFFSET, total - KS_BATCH_ATTRIBUTES_OFFSET);
        if (crc != h->crc) {
            *err_pos = KS_BATCH_CRC_OFFSET;
            return KS_ERR_CRC;
        }
    }
    if (h->records_count < 0) {
        *err_pos = KS_BATCH_RECORDS_COUNT_OFFSET;
        return KS_ERR_COUNT;
    }
    if (h->last_offset_delta < 0) {
        *err_pos = KS_BATCH_LAST_OFFSET_DELTA_OFFSET;
        return KS_ERR_OFFSET;
    }
    /* Compaction may leave fewer records than offsets, never more. */
    if ((int64_t)h->records_count > (int64_t)h->last_offset_delta + 1) {
        *err_pos = KS_BATCH_RECORDS_COUNT_OFFSET;
        return KS_ERR_COUNT;
    }
    if ((h->attributes & KS_ATTR_COMPRESSION_MASK) > KS_CODEC_MAX) {
        *err_pos = KS_BATCH_ATTRIBUTES_OFFSET;
        return KS_ERR_CODEC;
    }
    if (h->base_offset < 0 || h->base_offset > INT64_MAX - h->last_offset_delta) {
        *err_pos = KS_BATCH_BASE_OFFSET_OFFSET;
        return KS_ERR_OFFSET;
    }
    *size = total;
    return KS_OK;
}

int ks_header_parse(const uint8_t *a, size_t end, size_t *pos, int32_t *key_length,
                    size_t *key_pos, int32_t *value_length, size_t *value_pos)
{
    int rc;
    int32_t kl, vl;
    if ((rc = ks_read_varint(a, end, pos, &kl)) != KS_OK)
        return rc;
    if (kl < 0 || (size_t)kl > end - *pos)
        return kl < 0 ? KS_ERR_RECORD : KS_ERR_TRUNCATED;
    *key_pos = *pos;
    *key_length = kl;
    *pos += (size_t)kl;
    if ((rc = ks_read_varint(a, end, pos, &vl)) != KS_OK)
        return rc;
    if (vl < 0) {
        vl = -1;
        *value_pos = *pos;
    } else {
        if ((size_t)vl > end - *pos)
            return KS_ERR_TRUNCATED;
        *value_pos = *pos;
        *pos += (size_t)vl;
    }
    *value_length = vl;
    return KS_OK;
}

int ks_record_parse(const uint8_t *a, size_t len, size_t *pos, ks_record *r)
{
    int rc;
    int32_t length;
    size_t p = *pos, end;

    if ((rc = ks_read_varint(a, len, &p, &length)) != KS_OK)
        return rc;
    if (length < 6) /* attributes + 5 one-byte varints */
        return KS_ERR_RECORD;
    if ((size_t)length > len - p)
        return KS_ERR_TRUNCATED;
    end = p + (size_t)length;
    r->attributes = (int8_t)a[p++];
    if ((rc = ks_read_varlong(a, end, &p, &r->timestamp_delta)) != KS_OK)
        goto fail;
    if ((rc = ks_read_varint(a, end, &p, &r->offset_delta)) != KS_OK)
        goto fail;
    if ((rc = ks_read_varint(a, end, &p, &r->key_length)) != KS_OK)
        goto fail;
    if (r->key_length < 0) {
        r->key_length = -1; /* Java reads any negative length as null */
    } else if ((size_t)r->key_length > end - p) {
        rc = KS_ERR_RECORD;
        goto fail;
    }
    r->key_pos = p;
    if (r->key_length > 0)
        p += (size_t)r->key_length;
    if ((rc = ks_read_varint(a, end, &p, &r->value_length)) != KS_OK)
        goto fail;
    if (r->value_length < 0) {
        r->value_length = -1;
    } else if ((size_t)r->value_length > end - p) {
        rc = KS_ERR_RECORD;
        goto fail;
    }
    r->value_pos = p;
    if (r->value_length > 0)
        p += (size_t)r->value_length;
    if ((rc = ks_read_varint(a, end, &p, &r->header_count)) != KS_OK)
        goto fail;
    /* Each header takes at least two bytes, which bounds the loop by the record length. */
    if (r->header_count < 0 || (size_t)r->header_count > (end - p) / 2) {
        rc = KS_ERR_RECORD;
        goto fail;
    }
    r->headers_pos = p;
    for (int32_t i = 0; i < r->header_count; i++) {
        int32_t kl, vl;
        size_t kp, vp;
        if ((rc = ks_header_parse(a, end, &p, &kl, &kp, &vl, &vp)) != KS_OK)
            goto fail;
    }
    if (p != end) {
        rc = KS_ERR_RECORD;
        goto fail;
    }
    r->end_pos = end;
    *pos = end;
    return KS_OK;
fail:
    /* Inside the declared length, running out of bytes means the fields disagree with it. */
    if (rc == KS_ERR_TRUNCATED)
        rc = KS_ERR_RECORD;
    *pos = p;
    return rc;
}

/* The one walk over a records area: parse `count` records, apply the producer checks asked
 * for, and fill whichever columns are given. */
static int walk_records(const uint8_t *area, size_t len, int32_t count, int sequential,
                        int require_keys, int64_t base_offset, int64_t base_timestamp,
                        int64_t log_append_timestamp, int use_log_append, int64_t pos_base,
                        int64_t *offsets, int64_t *timestamps, int64_t *key_pos,
                        int32_t *key_len, int64_t *value_pos, int32_t *value_len,
                        size_t *err_pos)
{
    size_t pos = 0;
    ks_record r;
    if (count < 0 || (size_t)count > len / KS_RECORD_MIN_SIZE) {
        *err_pos = 0;
        return KS_ERR_COUNT;
    }
    for (int32_t i = 0; i < count; i++) {
        size_t start = pos;
        int rc = ks_record_parse(area, len, &pos, &r);
        if (rc != KS_OK) {
            *err_pos = rc == KS_ERR_TRUNCATED ? start : pos;
            return rc == KS_ERR_TRUNCATED ? KS_ERR_COUNT : rc;
        }
        if (sequential && r.offset_delta != i) {
            *err_pos = start;
            return KS_ERR_OFFSET;
        }
        if (require_keys && r.key_length < 0) {
            *err_pos = start;
            return KS_ERR_NULL_KEY;
        }
        if (offsets)
            offsets[i] = base_offset + r.offset_delta;
        if (timestamps)
            timestamps[i] = use_log_append ? log_append_timestamp
                                           : (int64_t)((uint64_t)base_timestamp + (uint64_t)r.timestamp_delta);
        if (key_pos) {
            key_pos[i] = pos_base + (int64_t)r.key_pos;
            key_len[i] = r.key_length;
        }
        if (value_pos) {
            value_pos[i] = pos_base + (int64_t)r.value_pos;
            value_len[i] = r.value_length;
        }
    }
    if (pos != len) {
        *err_pos = pos;
        return KS_ERR_COUNT;
    }
    return KS_OK;
}

int ks_records_columns(const uint8_t *area, size_t len, int32_t count, int64_t base_offset,
                       int64_t base_timestamp, int64_t log_append_timestamp, int use_log_append,
                       int64_t pos_base, int64_t *offsets, int64_t *timestamps, int64_t *key_pos,
                       int32_t *key_len, int64_t *value_pos, int32_t *value_len, size_t *err_pos)
{
    return walk_records(area, len, count, 0, 0, base_offset, base_timestamp,
                        log_append_timestamp, use_log_append, pos_base, offsets, timestamps,
                        key_pos, key_len, value_pos, value_len, err_pos);
}

int ks_records_check(const uint8_t *area, size_t len, int32_t count, int sequential,
                     int require_keys, size_t *err_pos)
{
    return walk_records(area, len, count, sequential, require_keys, 0, 0, 0, 0, 0, NULL, NULL,
                        NULL, NULL, NULL, NULL, err_pos);
}

size_t ks_record_size(int64_t timestamp_delta, int32_t offset_delta, int32_t key_length,
                      int32_t value_length, int32_t header_count, size_t headers_size,
                      size_t *body_size)
{
    size_t body = 1 + ks_varlong_size(timestamp_delta) + ks_varint_size(offset_delta) +
                  ks_varint_size(key_length) + (key_length > 0 ? (size_t)key_length : 0) +
                  ks_varint_size(value_length) + (value_length > 0 ? (size_t)value_length : 0) +
                  ks_varint_size(header_count) + headers_size;
    *body_size = body;
    return ks_varint_size((int32_t)body) + body;
}

uint8_t *ks_record_write(uint8_t *p, size_t body_size, int64_t timestamp_delta,
                         int32_t offset_delta, const uint8_t *key, int32_t key_length,
                         const uint8_t *value, int32_t value_length, int32_t header_count,
                         const uint8_t *headers, size_t headers_size)
{
    p = ks_write_varint(p, (int32_t)body_size);
    *p++ = 0; /* attributes */
    p = ks_write_varlong(p, timestamp_delta);
    p = ks_write_varint(p, offset_delta);
    p = ks_write_varint(p, key_length);
    if (key_length > 0) {
        memcpy(p, key, (size_t)key_length);
        p += key_length;
    }
    p = ks_write_varint(p, value_length);
    if (value_length > 0) {
        memcpy(p, value, (size_t)value_length);
        p += value_length;
    }
    p = ks_write_varint(p, header_count);
    if (headers_size) {
        memcpy(p, headers, headers_size);
        p += headers_size;
    }
    return p;
}

size_t ks_header_size(size_t key_length, int32_t value_length)
{
    return ks_varint_size((int32_t)key_length) + key_length + ks_varint_size(value_length) +
           (value_length > 0 ? (size_t)value_length : 0);
}

uint8_t *ks_header_write(uint8_t *p, const uint8_t *key, size_t key_length, const uint8_t *value,
                         int32_t value_length)
{
    p = ks_write_varint(p, (int32_t)key_length);
    memcpy(p, key, key_length);
    p += key_length;
    p = ks_write_varint(p, value_length);
    if (value_length > 0) {
        memcpy(p, value, (size_t)value_length);
        p += value_length;
    }
    return p;
}

int ks_buf_reserve(ks_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return KS_OK;
    size_t need = b->len + extra;
    if (need < b->len)
        return KS_ERR_NOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return KS_ERR_NOMEM;
        cap *= 2;
    }
    uint8_t *data = realloc(b->data, cap);
    if (!data)
        return KS_ERR_NOMEM;
    b->data = data;
    b->cap = cap;
    return KS_OK;
}

void ks_buf_free(ks_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void ks_scan_out_free(ks_scan_out *o)
{
    free(o->position);
    free(o->base_offset);
    free(o->last_offset);
    free(o->max_timestamp);
    free(o->size);
    free(o->records_count);
    memset(o, 0, sizeof(*o));
}

static int scan_out_grow(ks_scan_out *o)
{
    size_t cap = o->cap ? o->cap * 2 : 1024;
#define GROW(field, type)                                           \
    do {                                                            \
        type *p = realloc(o->field, cap * sizeof(type));            \
        if (!p)                                                     \
            return KS_ERR_NOMEM;                                    \
        o->field = p;                                               \
    } while (0)
    GROW(position, int64_t);
    GROW(base_offset, int64_t);
    GROW(last_offset, int64_t);
    GROW(max_timestamp, int64_t);
    GROW(size, int32_t);
    GROW(records_count, int32_t);
#undef GROW
    o->cap = cap;
    return KS_OK;
}

int ks_scan(const uint8_t *buf, size_t len, size_t start, int check_crc, int check_offsets,
            size_t max_batches, ks_scan_out *out, size_t *valid_end, size_t *err_pos)
{
    size_t pos = start, n = 0;
    int64_t next_offset = INT64_MIN;
    int rc = KS_OK;
    *valid_end = start;
    *err_pos = start;
    while (pos < len) {
        ks_batch_header h;
        size_t size, at;
        if (max_batches && n == max_batches)
            break;
        rc = ks_batch_check(buf + pos, len - pos, check_crc, &h, &size, &at);
        if (rc != KS_OK) {
            *err_pos = pos + at;
            return rc;
        }
        if (check_offsets && h.base_offset < next_offset) {
            *err_pos = pos + KS_BATCH_BASE_OFFSET_OFFSET;
            return KS_ERR_OFFSET;
        }
        next_offset = h.base_offset + h.last_offset_delta + 1;
        if (out) {
            if (out->n == out->cap && scan_out_grow(out) != KS_OK)
                return KS_ERR_NOMEM;
            out->position[out->n] = (int64_t)pos;
            out->base_offset[out->n] = h.base_offset;
            out->last_offset[out->n] = h.base_offset + h.last_offset_delta;
            out->max_timestamp[out->n] = h.max_timestamp;
            out->size[out->n] = (int32_t)size;
            out->records_count[out->n] = h.records_count;
            out->n++;
        }
        pos += size;
        n++;
        *valid_end = pos;
    }
    return KS_OK;
}

/* Read the size of the batch at pos; 0 when it is incomplete or malformed. */
static size_t batch_size_at(const uint8_t *buf, size_t len, size_t pos)
{
    if (len - pos < KS_BATCH_HEADER_SIZE)
        return 0;
    int32_t bl = (int32_t)ks_load_be32(buf + pos + KS_BATCH_LENGTH_OFFSET);
    if (bl < KS_BATCH_MIN_LENGTH_FIELD)
        return 0;
    size_t size = (size_t)bl + KS_BATCH_LOG_OVERHEAD;
    return size > len - pos ? 0 : size;
}

int ks_find_offset(const uint8_t *buf, size_t len, size_t start, int64_t target, size_t *found_pos)
{
    size_t pos = start;
    while (pos < len) {
        size_t size = batch_size_at(buf, len, pos);
        if (!size)
            break;
        int64_t base = (int64_t)ks_load_be64(buf + pos + KS_BATCH_BASE_OFFSET_OFFSET);
        int32_t delta = (int32_t)ks_load_be32(buf + pos + KS_BATCH_LAST_OFFSET_DELTA_OFFSET);
        if (base + delta >= target) {
            *found_pos = pos;
            return KS_OK;
        }
        pos += size;
    }
    *found_pos = len;
    return KS_OK;
}

int ks_find_timestamp(const uint8_t *buf, size_t len, size_t start, int64_t target,
                      size_t *found_pos)
{
    size_t pos = start;
    while (pos < len) {
        size_t size = batch_size_at(buf, len, pos);
        if (!size)
            break;
        int64_t max_ts = (int64_t)ks_load_be64(buf + pos + KS_BATCH_MAX_TIMESTAMP_OFFSET);
        if (max_ts >= target) {
            *found_pos = pos;
            return KS_OK;
        }
        pos += size;
    }
    *found_pos = len;
    return KS_OK;
}

size_t ks_span_batches(const uint8_t *buf, size_t len, size_t start, size_t max_bytes,
                       int64_t max_offset)
{
    size_t last_pos;
    return ks_span_batches_from(buf, len, start, start, max_bytes, max_offset, &last_pos) - start;
}

size_t ks_span_batches_from(const uint8_t *buf, size_t len, size_t start, size_t from,
                            size_t max_bytes, int64_t max_offset, size_t *last_pos)
{
    size_t pos = from;
    *last_pos = start; /* refined as batches at or after `from` are taken */
    while (pos < len) {
        size_t size = batch_size_at(buf, len, pos);
        if (!size)
            break;
        int64_t base = (int64_t)ks_load_be64(buf + pos + KS_BATCH_BASE_OFFSET_OFFSET);
        if (base >= max_offset)
            break;
        if (pos > start && pos - start + size > max_bytes)
            break;
        *last_pos = pos;
        pos += size;
    }
    return pos;
}

/* ---- checked reads ---- */

/* The batch at pos, checked as a read must check it (see batch.h). */
static int read_check(const uint8_t *buf, size_t len, size_t pos, int64_t min_base,
                      int64_t max_last, ks_batch_header *h, size_t *size)
{
    size_t at;
    int rc = ks_batch_check(buf + pos, len - pos, 0, h, size, &at);
    if (rc != KS_OK)
        return rc;
    if (h->base_offset < min_base || h->base_offset + h->last_offset_delta > max_last)
        return KS_ERR_OFFSET;
    return KS_OK;
}

int ks_read_find(const uint8_t *buf, size_t len, size_t start, int64_t target, int64_t min_base,
                 int64_t max_last, size_t *found_pos, size_t *prev_pos, int64_t *prev_last)
{
    size_t pos = start, size;
    ks_batch_header h;
    *prev_pos = len;
    *prev_last = min_base - 1;
    while (pos < len) {
        int rc = read_check(buf, len, pos, *prev_last + 1, max_last, &h, &size);
        if (rc != KS_OK) {
            *found_pos = pos;
            return rc;
        }
        if (h.base_offset + h.last_offset_delta >= target) {
            *found_pos = pos;
            return KS_OK;
        }
        *prev_pos = pos;
        *prev_last = h.base_offset + h.last_offset_delta;
        pos += size;
    }
    *found_pos = len;
    return KS_OK;
}

int ks_read_span(const uint8_t *buf, size_t len, size_t start, size_t from, int64_t min_base,
                 size_t max_bytes, int64_t max_offset, int64_t max_last, size_t *end,
                 size_t *last_pos)
{
    size_t pos = from, size;
    ks_batch_header h;
    int rc = KS_OK;
    *last_pos = start;
    while (pos < len) {
        rc = read_check(buf, len, pos, min_base, max_last, &h, &size);
        if (rc != KS_OK)
            break;
        if (h.base_offset >= max_offset)
            break;
        if (pos > start && pos - start + size > max_bytes)
            break;
        *last_pos = pos;
        min_base = h.base_offset + h.last_offset_delta + 1;
        pos += size;
    }
    *end = pos;
    return rc;
}

size_t ks_resync(const uint8_t *buf, size_t len, size_t from, int64_t min_base, int64_t max_last)
{
    for (size_t p = from + 1; p + KS_BATCH_HEADER_SIZE <= len; p++) {
        /* Cheap filters first: most positions fail on the magic byte. */
        if (buf[p + KS_BATCH_MAGIC_OFFSET] != KS_BATCH_MAGIC)
            continue;
        ks_batch_header h;
        size_t size, at;
        if (read_check(buf, len, p, min_base, max_last, &h, &size) != KS_OK)
            continue;
        if (ks_batch_check(buf + p, len - p, 1, &h, &size, &at) == KS_OK)
            return p;
    }
    return len;
}
