"""The worked examples of kafka-storage.md sections 1.2 and 2.2 reproduce byte for byte."""

import cramjam

from kstore import _core
from kstore.records import BatchBuilder, iter_batches, read_batch

THREE_RECORDS = bytes.fromhex(
    "000000000000000000000055ffffffff02ffebe6e40000000000020000018bcfe568000000018bcfe56805"
    "ffffffffffffffffffffffffffff0000000314000000046b31047631001e000a02010a68656c6c6f0202"
    "68027810000604046b330100"
)
AT_42_IDEMPOTENT = bytes.fromhex(
    "000000000000002a000000550000000502436b41f50000000000020000018bcfe568000000018bcfe56805"
    "00000000000003e80000000000070000000314000000046b31047631001e000a02010a68656c6c6f0202"
    "68027810000604046b330100"
)
LZ4_BATCH = bytes.fromhex(
    "000000000000000000000064ffffffff022642b62d0003000000020000018bcfe568000000018bcfe56805"
    "ffffffffffffffffffffffffffff0000000304224d186040822400008014000000046b31047631001e000a"
    "02010a68656c6c6f020268027810000604046b33010000000000"
)
RECORDS_AREA = THREE_RECORDS[61:]
SNAPPY_RAW = bytes.fromhex(
    "248c14000000046b31047631001e000a02010a68656c6c6f020268027810000604046b330100"
)


def build_three(**kwargs):
    b = BatchBuilder(**kwargs)
    assert b.append(b"v1", key=b"k1", timestamp=1700000000000)
    assert b.append(b"hello", headers=[("h", b"x")], timestamp=1700000000005)
    assert b.append(None, key=b"k3", timestamp=1700000000003)
    return b.build()


def test_three_record_batch_is_byte_exact():
    raw = build_three()
    assert raw == THREE_RECORDS
    batch = read_batch(raw)
    assert batch.crc == 0xFFEBE6E4
    assert batch.compute_crc() == 0xFFEBE6E4


def test_three_record_batch_decodes():
    (batch,) = list(iter_batches(THREE_RECORDS))
    batch.validate(deep=True)
    recs = batch.records()
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs] == [
        (0, 1700000000000, b"k1", b"v1", ()),
        (1, 1700000000005, None, b"hello", (("h", b"x"),)),
        (2, 1700000000003, b"k3", None, ()),
    ]


def test_idempotent_batch_at_offset_42_is_byte_exact():
    raw = build_three(base_offset=42, producer_id=1000, producer_epoch=0, base_sequence=7,
                      partition_leader_epoch=5)
    assert raw == AT_42_IDEMPOTENT
    batch = read_batch(raw)
    batch.validate()
    assert [r.offset for r in batch.records()] == [42, 43, 44]
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (1000, 0, 7)


def test_lz4_batch_is_byte_exact():
    # lz4 stores the 36-byte block uncompressed (it would not shrink), as in the doc.
    assert build_three(compression="lz4") == LZ4_BATCH
    batch = read_batch(LZ4_BATCH)
    assert batch.crc == 0x2642B62D
    assert [r.value for r in batch.records()] == [b"v1", b"hello", None]


def test_snappy_raw_and_xerial_framings_decode():
    assert bytes(cramjam.snappy.compress_raw(RECORDS_AREA)) == SNAPPY_RAW
    xerial = bytes.fromhex("82534e41505059000000000100000001") + len(SNAPPY_RAW).to_bytes(4, "big") + SNAPPY_RAW
    for payload in (SNAPPY_RAW, xerial):
        raw = _with_payload(THREE_RECORDS, payload, codec=2)
        assert [r.value for r in read_batch(raw).records()] == [b"v1", b"hello", None]


def test_snappy_written_as_xerial():
    raw = build_three(compression="snappy")
    assert raw[61:69] == b"\x82SNAPPY\x00"
    assert [r.key for r in read_batch(raw).records()] == [b"k1", None, b"k3"]


def _with_payload(batch, payload, codec):
    import struct

    import crc32c

    head = bytearray(batch[:61])
    struct.pack_into(">i", head, 8, 61 - 12 + len(payload))
    struct.pack_into(">h", head, 21, codec)
    body = bytes(head[21:]) + payload
    struct.pack_into(">I", head, 17, crc32c.crc32c(body))
    return bytes(head) + payload


def test_crc32c_check_value():
    assert _core.crc32c(b"123456789") == 0xE3069283
