/* Kafka's murmur2 (seed 0x9747b28c) as the Java client and librdkafka compute it. */
#ifndef KS_MURMUR2_H
#define KS_MURMUR2_H
#include <stddef.h>
#include <stdint.h>
int32_t ks_murmur2(const uint8_t *data, size_t len);
#endif
