#include "index.h"

#include "batch.h"

int64_t ks_offset_index_lookup(const uint8_t *index, size_t entries, uint32_t target)
{
    /* Binary search for the last entry whose relative offset <= target. */
    size_t lo = 0, hi = entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t rel = ks_load_be32(index + mid * KS_OFFSET_INDEX_ENTRY);
        if (rel <= target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (int64_t)lo - 1;
}

int64_t ks_time_index_lookup(const uint8_t *index, size_t entries, int64_t target)
{
    size_t lo = 0, hi = entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t ts = (int64_t)ks_load_be64(index + mid * KS_TIME_INDEX_ENTRY);
        if (ts <= target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (int64_t)lo - 1;
}

int64_t ks_offset_index_floor_position(const uint8_t *index, size_t entries, uint32_t position)
{
    size_t lo = 0, hi = entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ks_load_be32(index + mid * KS_OFFSET_INDEX_ENTRY + 4) <= position)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (int64_t)lo - 1;
}

size_t ks_offset_index_valid_entries(const uint8_t *index, size_t entries)
{
    uint32_t last_rel = 0, last_pos = 0;
    for (size_t i = 0; i < entries; i++) {
        const uint8_t *e = index + i * KS_OFFSET_INDEX_ENTRY;
        uint32_t rel = ks_load_be32(e), pos = ks_load_be32(e + 4);
        if (pos == 0 || (i > 0 && (rel <= last_rel || pos <= last_pos)))
            return i;
        last_rel = rel;
        last_pos = pos;
    }
    return entries;
}

size_t ks_time_index_valid_entries(const uint8_t *index, size_t entries)
{
    int64_t last_ts = INT64_MIN;
    uint32_t last_rel = 0;
    for (size_t i = 0; i < entries; i++) {
        const uint8_t *e = index + i * KS_TIME_INDEX_ENTRY;
        int64_t ts = (int64_t)ks_load_be64(e);
        uint32_t rel = ks_load_be32(e + 8);
        if (i > 0 && (ts <= last_ts || rel < last_rel))
            return i;
        if (i == 0 && ts == 0 && rel == 0)
            return 0;
        last_ts = ts;
        last_rel = rel;
    }
    return entries;
}
