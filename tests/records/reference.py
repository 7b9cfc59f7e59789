"""A small pure-Python RecordBatch v2 reference, written independently of the C core.

Used only by tests: the compiled codec must agree with it, with kafka-python, and with the
captured vectors. Only uncompressed records areas are built here; compression goes through the
same libraries the clients use.
"""

import struct

import crc32c


def zigzag_varint(n: int) -> bytes:
    # Java computes deltas in 64-bit longs, which wrap: so must the reference.
    n = ((n + 2**63) % 2**64) - 2**63
    u = (n << 1) ^ (n >> 63)
    u &= (1 << 64) - 1
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def encode_record(offset_delta, ts_delta, key, value, headers):
    body = bytearray(b"\x00")
    body += zigzag_varint(ts_delta)
    body += zigzag_varint(offset_delta)
    body += zigzag_varint(-1) if key is None else zigzag_varint(len(key)) + key
    body += zigzag_varint(-1) if value is None else zigzag_varint(len(value)) + value
    body += zigzag_varint(len(headers))
    for hk, hv in headers:
        hk = hk.encode()
        body += zigzag_varint(len(hk)) + hk
        body += zigzag_varint(-1) if hv is None else zigzag_varint(len(hv)) + hv
    return zigzag_varint(len(body)) + bytes(body)


def encode_batch(records, base_offset=0, leader_epoch=-1, attributes=0, producer_id=-1,
                 producer_epoch=-1, base_sequence=-1, area=None):
    """records: list of (timestamp, key, value, headers). area overrides the records bytes."""
    first_ts = records[0][0]
    max_ts = max(r[0] for r in records)
    if area is None:
        area = b"".join(
            encode_record(i, ts - first_ts, k, v, h) for i, (ts, k, v, h) in enumerate(records)
        )
    body = struct.pack(
        ">hiqqqhii", attributes, len(records) - 1, first_ts, max_ts, producer_id,
        producer_epoch, base_sequence, len(records),
    ) + area
    crc = crc32c.crc32c(body)
    return struct.pack(">qiibI", base_offset, len(body) + 9, leader_epoch, 2, crc) + body
