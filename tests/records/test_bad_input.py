"""Malformed batches raise a kstore error naming the byte position: never a crash, a hang, or
garbage returned as data. Faults are made the way leveldb's log_test makes them: shrink the
buffer, change a byte, then (where the fault should get past the CRC) fix the checksum."""

import random
import struct
import zlib

import pytest

from kstore import errors
from kstore.records import (
    CODECS,
    BatchBuilder,
    columns,
    iter_batches,
    read_batch,
    scan,
    validate_all,
)

from .reference import encode_batch, zigzag_varint


def good_batch(codec="none", n=5):
    b = BatchBuilder(compression=codec)
    for i in range(n):
        b.append(b"value-%d" % i, key=b"key-%d" % i, headers=[("h", b"x")], timestamp=1000 + i)
    return b.build()


def fix_crc(raw):
    import crc32c

    raw = bytearray(raw)
    struct.pack_into(">I", raw, 17, crc32c.crc32c(bytes(raw[21:])))
    return bytes(raw)


def decode_everything(raw, **kw):
    out = []
    for b in iter_batches(raw):
        b.validate()
        out.append(b.records(**kw))
        b.columns(**kw)
    return out


def assert_positioned(exc_info):
    assert "byte" in str(exc_info.value), str(exc_info.value)


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_buffer_at_every_length(codec):
    raw = good_batch(codec)
    for cut in range(1, len(raw)):
        with pytest.raises(errors.CorruptRecordError) as ei:
            decode_everything(raw[:cut])
        assert_positioned(ei)
        res = scan(raw[:cut])
        assert res.torn and res.valid_end == 0 and len(res) == 0


def test_partial_tail_tolerated_only_when_asked():
    raw = good_batch() + good_batch()[:30]
    assert len(list(iter_batches(raw, allow_partial=True))) == 1
    with pytest.raises(errors.CorruptRecordError, match="truncated"):
        list(iter_batches(raw))


@pytest.mark.parametrize("magic", [0, 1, 3])
def test_wrong_magic_says_only_v2(magic):
    raw = bytearray(good_batch())
    raw[16] = magic
    with pytest.raises(errors.CorruptRecordError, match=r"only RecordBatch v2.*byte 16.*found magic " + str(magic)):
        list(iter_batches(bytes(raw)))
    assert scan(bytes(raw)).error_code != 0


def test_legacy_v0_message_reports_magic_not_length():
    # A v0 message: offset, size 14+, crc, magic 0 ... shorter than a v2 header.
    v0 = struct.pack(">qiIbbii", 0, 14, 0, 0, 0, -1, 0)
    with pytest.raises(errors.CorruptRecordError, match="only RecordBatch v2"):
        list(iter_batches(v0))


def test_bad_crc_rejected_by_validate_records_and_columns():
    raw = bytearray(good_batch())
    raw[-1] ^= 0xFF
    (batch,) = list(iter_batches(bytes(raw)))
    for call in (batch.validate, batch.records, batch.columns):
        with pytest.raises(errors.CorruptRecordError, match=r"CRC-32C mismatch at byte 17.*stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}"):
            call()
    with pytest.raises(errors.CorruptRecordError, match="CRC"):
        columns(bytes(raw))
    with pytest.raises(errors.CorruptRecordError, match="CRC"):
        validate_all(good_batch() + bytes(raw))
    res = scan(good_batch() + bytes(raw))
    assert len(res) == 1 and not res.torn and "CRC" in str(res.error)


def test_length_overflowing_buffer():
    raw = bytearray(good_batch())
    struct.pack_into(">i", raw, 8, 0x7FFFFFF0)
    with pytest.raises(errors.CorruptRecordError, match="truncated"):
        list(iter_batches(bytes(raw)))


def test_length_below_header_size():
    raw = bytearray(good_batch())
    struct.pack_into(">i", raw, 8, 20)
    with pytest.raises(errors.CorruptRecordError, match="smaller than a batch header at byte 8"):
        list(iter_batches(bytes(raw)))


def test_records_count_above_records():
    raw = bytearray(good_batch(n=5))
    struct.pack_into(">i", raw, 57, 5)
    struct.pack_into(">i", raw, 23, 9)  # room in lastOffsetDelta for more records
    struct.pack_into(">i", raw, 57, 6)
    raw = fix_crc(raw)
    (b,) = list(iter_batches(raw))
    with pytest.raises(errors.CorruptRecordError, match="records count") as ei:
        b.records()
    assert_positioned(ei)
    with pytest.raises(errors.CorruptRecordError, match="records count"):
        b.columns()


def test_records_count_below_records():
    raw = bytearray(good_batch(n=5))
    struct.pack_into(">i", raw, 57, 4)
    raw = fix_crc(raw)
    (b,) = list(iter_batches(raw))
    with pytest.raises(errors.CorruptRecordError, match="records count"):
        b.records()
    with pytest.raises(errors.CorruptRecordError, match="records count"):
        b.columns()


def test_records_count_above_last_offset_delta():
    raw = bytearray(good_batch(n=5))
    struct.pack_into(">i", raw, 57, 7)
    with pytest.raises(errors.CorruptRecordError, match="records count.*byte 57"):
        list(iter_batches(fix_crc(raw)))


def test_absurd_records_count_is_rejected_before_allocating():
    raw = bytearray(good_batch(n=5))
    struct.pack_into(">i", raw, 23, 0x7FFFFFFE)
    struct.pack_into(">i", raw, 57, 0x7FFFFFFF)
    (b,) = list(iter_batches(fix_crc(raw)))
    with pytest.raises(errors.CorruptRecordError, match="cannot fit"):
        b.records()
    with pytest.raises(errors.CorruptRecordError, match="records count"):
        b.columns()


def test_negative_records_count():
    raw = bytearray(good_batch(n=5))
    struct.pack_into(">i", raw, 57, -1)
    with pytest.raises(errors.CorruptRecordError, match="byte 57"):
        list(iter_batches(fix_crc(raw)))


def _batch_with_area(area, count=1):
    rec = [(1000, b"k", b"v", [])] * count
    return encode_batch(rec, area=area)


def test_varint_longer_than_five_bytes():
    area = b"\xff\xff\xff\xff\xff\x01" + b"\x00" * 10
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError, match=r"varint longer than 5 bytes.* at byte 61"):
        b.records()


def test_varlong_longer_than_ten_bytes():
    body = b"\x00" + b"\xff" * 10 + b"\x01" + b"\x00\x01\x01\x00"
    area = zigzag_varint(len(body)) + body
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError, match="varint"):
        b.records()


def test_key_length_past_record_end():
    body = b"\x00\x00\x00" + zigzag_varint(500) + b"abc" + b"\x01\x00"
    area = zigzag_varint(len(body)) + body
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError, match="record fields disagree"):
        b.records()
    with pytest.raises(errors.CorruptRecordError, match="record fields disagree"):
        b.columns()


def test_record_length_past_area_end():
    area = zigzag_varint(400) + b"\x00" * 20
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError):
        b.records()


@pytest.mark.parametrize("header_count", [-1, 1000])
def test_bad_header_count(header_count):
    body = b"\x00\x00\x00\x01\x01" + zigzag_varint(header_count)
    area = zigzag_varint(len(body)) + body
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError, match="record fields disagree"):
        b.records()


def test_negative_header_key_length():
    body = b"\x00\x00\x00\x01\x01" + zigzag_varint(1) + zigzag_varint(-1) + zigzag_varint(-1)
    area = zigzag_varint(len(body)) + body
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError):
        b.records()


def test_record_shorter_than_its_fields():
    body = b"\x00\x00\x00\x01\x01\x00"
    area = zigzag_varint(len(body) + 3) + body + b"\x00\x00\x00"
    (b,) = list(iter_batches(_batch_with_area(area)))
    with pytest.raises(errors.CorruptRecordError, match="record fields disagree"):
        b.records()


@pytest.mark.parametrize("codec_id", [5, 6, 7])
def test_unknown_codec_id(codec_id):
    raw = bytearray(good_batch())
    struct.pack_into(">h", raw, 21, codec_id)
    with pytest.raises(errors.UnsupportedCompressionTypeError, match="byte 21"):
        list(iter_batches(fix_crc(raw)))
    assert errors.UnsupportedCompressionTypeError.code == 76


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_decompression_bomb_is_refused(codec):
    b = BatchBuilder(compression=codec, max_batch_bytes=8 << 20)
    for _ in range(4):
        b.append(bytes(1 << 20))  # 4 MiB of zeros compress to almost nothing
    raw = b.build()
    assert len(raw) < 300_000
    (batch,) = list(iter_batches(raw))
    with pytest.raises(errors.DecompressionLimitError, match="limit of 65536 bytes") as ei:
        batch.records(max_decompressed_bytes=65536)
    assert ei.value.code == 2
    with pytest.raises(errors.DecompressionLimitError):
        batch.columns(max_decompressed_bytes=65536)
    assert len(batch.records()) == 4  # within the default limit it decodes


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_corrupt_compressed_payload(codec):
    raw = bytearray(good_batch(codec, n=50))
    mid = 61 + (len(raw) - 61) // 2
    for i in range(mid, mid + 8):
        raw[i] ^= 0x5A
    (b,) = list(iter_batches(fix_crc(raw)))
    with pytest.raises(errors.CorruptRecordError) as ei:
        b.records()
    assert_positioned(ei)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_payload_cut_short(codec):
    raw = good_batch(codec, n=50)
    cut = bytearray(raw[:-7])
    struct.pack_into(">i", cut, 8, len(cut) - 12)
    (b,) = list(iter_batches(fix_crc(cut)))
    with pytest.raises(errors.CorruptRecordError):
        b.records()


def test_gzip_with_two_members_decodes():
    raw = good_batch("none", n=4)
    area = raw[61:]
    two = zlib.compress(area[:20], 6, 31) + zlib.compress(area[20:], 6, 31)
    patched = bytearray(raw[:61]) + two
    struct.pack_into(">i", patched, 8, len(patched) - 12)
    struct.pack_into(">h", patched, 21, 1)
    (b,) = list(iter_batches(fix_crc(patched)))
    assert [r.value for r in b.records()] == [b"value-%d" % i for i in range(4)]


@pytest.mark.parametrize("codec", CODECS)
def test_random_byte_faults_never_crash(codec):
    """Flip random bytes (fixing the CRC half the time): decoding either gives records or raises
    a KStoreError."""
    rng = random.Random(codec)
    raw = good_batch(codec, n=20)
    for _ in range(400):
        buf = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        if rng.random() < 0.5:
            buf = bytearray(fix_crc(buf))
        try:
            decode_everything(bytes(buf), max_decompressed_bytes=1 << 20)
        except errors.KStoreError:
            pass
        scan(bytes(buf))


def test_builder_rejects_bad_arguments():
    with pytest.raises(errors.UnsupportedCompressionTypeError, match="brotli"):
        BatchBuilder(compression="brotli")
    with pytest.raises(ValueError):
        BatchBuilder(timestamp_type="wall")
    b = BatchBuilder()
    with pytest.raises(TypeError, match="bytes-like"):
        b.append(12345)
    with pytest.raises(TypeError, match="pair"):
        b.append(b"v", headers=[("only-key",)])
    with pytest.raises(errors.InvalidRecordError, match="no records"):
        BatchBuilder().build()
    b.append(b"v")
    b.build()
    with pytest.raises(errors.InvalidRecordError, match="already built"):
        b.append(b"v")
    with pytest.raises(ValueError, match="3 keys for 2 values"):
        BatchBuilder().append_many([b"a", b"b"], keys=[b"1", b"2", b"3"])
    with pytest.raises(ValueError, match="timestamps"):
        BatchBuilder().append_many([b"a", b"b"], timestamps=[1])


def test_read_batch_position_checked():
    with pytest.raises(ValueError, match="outside"):
        read_batch(good_batch(), 10_000)


@pytest.mark.parametrize("offsets", [[0, 5, 3, 8], [0, 4, 8, 99], [-1, 2, 4, 6]])
def test_data_offsets_that_do_not_rise_within_the_data(offsets):
    import numpy as np

    from kstore.records import encode_batches

    with pytest.raises(ValueError, match="do not lie within the 8-byte data"):
        encode_batches((b"abcdefgh", np.array(offsets, dtype=np.int64)))
    with pytest.raises(ValueError, match="do not lie within"):
        BatchBuilder().append_many((b"abcdefgh", np.array(offsets, dtype=np.int64)))
