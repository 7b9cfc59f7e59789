/* Zigzag varints as Kafka's records use them (protobuf layout, 7 bits a byte, low group first). */
#ifndef KS_VARINT_H
#define KS_VARINT_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

static inline size_t ks_uvarint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint32_t ks_zigzag32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }
static inline uint64_t ks_zigzag64(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }

static inline size_t ks_varint_size(int32_t v) { return ks_uvarint_size(ks_zigzag32(v)); }
static inline size_t ks_varlong_size(int64_t v) { return ks_uvarint_size(ks_zigzag64(v)); }

static inline uint8_t *ks_write_uvarint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint8_t *ks_write_varint(uint8_t *p, int32_t v) { return ks_write_uvarint(p, ks_zigzag32(v)); }
static inline uint8_t *ks_write_varlong(uint8_t *p, int64_t v) { return ks_write_uvarint(p, ks_zigzag64(v)); }

/* Read an unsigned varint of at most max_bytes bytes from buf[*pos..len). */
static inline int ks_read_uvarint(const uint8_t *buf, size_t len, size_t *pos, int max_bytes,
                                  uint64_t *out)
{
    uint64_t v = 0;
    size_t p = *pos;
    int shift = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p >= len)
            return KS_ERR_TRUNCATED;
        uint8_t b = buf[p++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pos = p;
            *out = v;
            return KS_OK;
        }
        shift += 7;
    }
    return KS_ERR_VARINT;
}

/* Bits past 32 in a 5-byte varint are dropped, as Java's ByteUtils.readVarint drops them. */
static inline int ks_read_varint(const uint8_t *buf, size_t len, size_t *pos, int32_t *out)
{
    uint32_t u;
    if (*pos < len && buf[*pos] < 0x80) { /* one byte: the common case */
        u = buf[(*pos)++];
    } else {
        uint64_t v;
        int rc = ks_read_uvarint(buf, len, pos, KS_VARINT_MAX_BYTES, &v);
        if (rc != KS_OK)
            return rc;
        u = (uint32_t)v;
    }
    *out = (int32_t)((u >> 1) ^ (0u - (u & 1)));
    return KS_OK;
}

static inline int ks_read_varlong(const uint8_t *buf, size_t len, size_t *pos, int64_t *out)
{
    uint64_t u;
    int rc = ks_read_uvarint(buf, len, pos, KS_VARLONG_MAX_BYTES, &u);
    if (rc != KS_OK)
        return rc;
    *out = (int64_t)((u >> 1) ^ (0u - (u & 1)));
    return KS_OK;
}

#endif
