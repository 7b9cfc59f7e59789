/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as Kafka's RecordBatch v2 uses it.
 * ks_crc32c(0, "123456789", 9) == 0xE3069283. Thread-safe once ks_crc32c_init() has run
 * (it is also called lazily). No allocation, no Python: callable without the GIL.
 */
#ifndef KS_CRC32C_H
#define KS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

void ks_crc32c_init(void);
/* Continue a CRC: pass 0 to start. Returns the finished (final-xored) value. */
uint32_t ks_crc32c(uint32_t crc, const uint8_t *data, size_t len);
/* 1 when the SSE4.2 path is in use. */
int ks_crc32c_hw(void);

#endif
