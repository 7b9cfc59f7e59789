/*
 * Kafka's sparse segment indexes (kafka-storage.md sections 3.3 and 3.4), big-endian:
 *   .index      8-byte entries: relative offset u32, file position u32
 *   .timeindex 12-byte entries: timestamp i64, relative offset u32
 * Entries increase strictly; lookups return the slot of the largest entry <= target, or -1.
 */
#ifndef KS_INDEX_H
#define KS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define KS_OFFSET_INDEX_ENTRY 8
#define KS_TIME_INDEX_ENTRY 12

int64_t ks_offset_index_lookup(const uint8_t *index, size_t entries, uint32_t relative_offset);
int64_t ks_time_index_lookup(const uint8_t *index, size_t entries, int64_t timestamp);
/* Slot of the largest offset-index entry whose file position <= position, or -1. */
int64_t ks_offset_index_floor_position(const uint8_t *index, size_t entries, uint32_t position);

/*
 * Entries in use in an index file that may hold zero-filled slots past its end (an untrimmed
 * active segment). Every real offset-index entry has a position > 0, because a segment's first
 * append is never indexed; every real time-index entry has relative offset > 0 or is the
 * first. Counts the prefix whose entries rise strictly.
 */
size_t ks_offset_index_valid_entries(const uint8_t *index, size_t entries);
size_t ks_time_index_valid_entries(const uint8_t *index, size_t entries);

#endif
