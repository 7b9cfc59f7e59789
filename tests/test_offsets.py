"""kstore.offsets: the __consumer_offsets group -> partition rule and the coordinator record codecs.

Vectors come from kafka-storage.md section 7 (7.1 partition vectors checked against Java 17; 7.2
byte vectors derived from the JSON schemas). Values of versions 0, 1, 2 and 4 are built here by
hand from the OffsetCommitValue.json layout. As an independent check, kafka-python's schema-driven
``ApiData`` class is pointed at the shared JSON schemas and must agree with kstore in both
directions (skipped if the schemas or that class are unavailable).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import struct
import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstore.errors import CorruptRecordError, InvalidRequestError
from kstore.offsets import (
    OFFSETS_PARTITIONS,
    OFFSETS_TOPIC,
    GroupMetadataKey,
    OffsetCommit,
    OffsetCommitKey,
    OtherKey,
    decode_key,
    decode_offset_commit_value,
    decode_record,
    encode_group_metadata_key,
    encode_offset_commit_key,
    encode_offset_commit_value,
    group_partition,
    java_string_hash,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("KSTORE_SHARED", ROOT.parent / "shared"))
SCHEMAS = SHARED / "kafka-spec" / "group-coordinator"

INT_MIN = -(2**31)

# --- section 7.2 vectors: group my-group, topic orders, partition 3, offset 12345, epoch 7,
# --- metadata "", commit timestamp 1700000000000
KEY_V1_HEX = "0001 0008 6d792d67726f7570 0006 6f7264657273 00000003"
VALUE_V3_HEX = "0003 0000000000003039 00000007 0000 0000018bcfe56800"
GROUP_KEY_HEX = "0002 0008 6d792d67726f7570"


def unhex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


# --------------------------------------------------------------------------- hand-built layouts


def s16(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def compact(text: str) -> bytes:
    raw = text.encode()
    return uvarint(len(raw) + 1) + raw


def tagged(fields: list[tuple[int, bytes]]) -> bytes:
    return uvarint(len(fields)) + b"".join(uvarint(t) + uvarint(len(d)) + d for t, d in fields)


def value_v0(offset, metadata, ts, version=0):  # v2 has the v0 layout
    return struct.pack(">hq", version, offset) + s16(metadata) + struct.pack(">q", ts)


def value_v1(offset, metadata, ts, expire):
    return struct.pack(">hq", 1, offset) + s16(metadata) + struct.pack(">qq", ts, expire)


def value_v3(offset, epoch, metadata, ts):
    return struct.pack(">hqi", 3, offset, epoch) + s16(metadata) + struct.pack(">q", ts)


def value_v4(offset, epoch, metadata, ts, tags=()):
    return (struct.pack(">hqi", 4, offset, epoch) + compact(metadata) + struct.pack(">q", ts)
            + tagged(list(tags)))


def key_v(version, group, topic, partition):
    return struct.pack(">h", version) + s16(group) + s16(topic) + struct.pack(">i", partition)


# --------------------------------------------------------------------------- 7.1 group -> partition


def test_topic_constants():
    assert OFFSETS_TOPIC == "__consumer_offsets"
    assert OFFSETS_PARTITIONS == 50


@pytest.mark.parametrize(
    "group, h, partition",
    [
        ("my-group", -1906497762, 12),
        ("console-consumer-12345", 158455506, 6),
        ("grüße", 98768023, 23),
        ("", 0, 0),
    ],
)
def test_doc_partition_vectors(group, h, partition):
    assert java_string_hash(group) == h
    assert group_partition(group) == partition
    assert group_partition(group, 50) == partition


def test_abs_is_not_the_producer_mask():
    # The producer's `& 0x7fffffff` would send "my-group" to 36, not 12.
    h = java_string_hash("my-group")
    assert (h & 0x7FFFFFFF) % 50 == 36
    assert group_partition("my-group") == 12


def test_hash_counts_utf16_code_units():
    # U+1F600 is the surrogate pair D83D DE00 in Java: 0xD83D * 31 + 0xDE00.
    assert java_string_hash("\U0001F600") == 0xD83D * 31 + 0xDE00 == 1772899
    assert java_string_hash("a") == 97
    assert java_string_hash("ab") == 97 * 31 + 98


def _ascii_string_with_hash(target: int, length: int = 7) -> str:
    """Construct a printable ASCII string whose Java hash is ``target``.

    The hash is sum(c_i * 31**(n-1-i)) mod 2**32. With c_i = 33 + d_i, d_i in 0..30, the string
    is a base-31 number offset by a constant; pick the lift of ``target`` mod 2**32 that lands in
    range and read its base-31 digits.
    """
    base = sum(33 * 31**j for j in range(length))
    want = target % 2**32
    for k in range(64):
        rest = want + k * 2**32 - base
        if 0 <= rest < 31**length:
            break
    else:  # pragma: no cover
        raise AssertionError("no lift in range")
    digits = []
    for _ in range(length):
        rest, d = divmod(rest, 31)
        digits.append(chr(33 + d))
    return "".join(reversed(digits))


def test_int_min_hash_maps_to_partition_zero():
    constructed = _ascii_string_with_hash(INT_MIN)
    assert constructed.isascii() and constructed.isprintable()
    # Well-known strings whose String.hashCode() is Integer.MIN_VALUE.
    for s in (constructed, "polygenelubricants", "GydZG_", "DESIGNING WORKHOUSES"):
        assert java_string_hash(s) == INT_MIN, s
        assert group_partition(s) == 0, s
        assert abs(INT_MIN) % 50 == 48  # what a naive Python abs() would give
        for n in (1, 7, 50, 64, 1000):
            assert group_partition(s, n) == 0


@pytest.mark.parametrize("target", [INT_MIN, -1, 1, 2**31 - 1, -1906497762, 12345])
def test_constructed_strings_hit_their_hash(target):
    assert java_string_hash(_ascii_string_with_hash(target)) == target


def test_group_partition_rejects_bad_partition_count():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            group_partition("g", bad)


def _reference_hash(s: str) -> int:
    """A second, independent String.hashCode: explicit surrogate split, signed wrap at the end."""
    h = 0
    for ch in s:
        cp = ord(ch)
        units = [cp] if cp < 0x10000 else [0xD800 + ((cp - 0x10000) >> 10),
                                           0xDC00 + ((cp - 0x10000) & 0x3FF)]
        for u in units:
            h = h * 31 + u
    h %= 2**32
    return h - 2**32 if h >= 2**31 else h


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.integers(min_value=1, max_value=10_000))
def test_hash_and_partition_properties(s, n):
    h = java_string_hash(s)
    assert h == _reference_hash(s)
    assert INT_MIN <= h < 2**31
    p = group_partition(s, n)
    assert 0 <= p < n
    assert p == (0 if h == INT_MIN else abs(h)) % n


# --------------------------------------------------------------------------- 7.2 byte vectors


def test_doc_key_v1_vector():
    raw = encode_offset_commit_key("my-group", "orders", 3)
    assert len(raw) == 24
    assert raw == unhex(KEY_V1_HEX)
    assert decode_key(raw) == OffsetCommitKey("my-group", "orders", 3)


def test_doc_value_v3_vector():
    raw = encode_offset_commit_value(12345, 7, "", 1700000000000)
    assert len(raw) == 24
    assert raw == unhex(VALUE_V3_HEX)
    assert decode_offset_commit_value(raw) == {
        "offset": 12345, "leader_epoch": 7, "metadata": "",
        "commit_timestamp": 1700000000000, "expire_timestamp": -1,
    }


def test_doc_group_metadata_key_vector():
    raw = encode_group_metadata_key("my-group")
    assert raw == unhex(GROUP_KEY_HEX)
    assert decode_key(raw) == GroupMetadataKey("my-group")


def test_doc_vectors_through_decode_record():
    kind, commit = decode_record(unhex(KEY_V1_HEX), unhex(VALUE_V3_HEX))
    assert kind == "offset"
    assert commit == OffsetCommit("my-group", "orders", 3, 12345, 7, "", 1700000000000, -1)
    assert decode_record(unhex(KEY_V1_HEX), None) == (
        "offset_delete", OffsetCommitKey("my-group", "orders", 3))
    assert decode_record(unhex(GROUP_KEY_HEX), None) == ("group_delete", "my-group")
    # The group value is not interpreted, only its version prefix is required.
    assert decode_record(unhex(GROUP_KEY_HEX), b"\x00\x03" + b"\x00" * 20) == ("group", "my-group")


def test_offset_commit_defaults():
    c = OffsetCommit("g", "t", 0, 5)
    assert (c.leader_epoch, c.metadata, c.commit_timestamp, c.expire_timestamp) == (-1, "", -1, -1)
    with pytest.raises(AttributeError):
        c.offset = 6  # frozen


# --------------------------------------------------------------------------- every readable version


def test_key_v0_has_the_v1_layout():
    assert decode_key(key_v(0, "my-group", "orders", 3)) == OffsetCommitKey("my-group", "orders", 3)
    assert key_v(1, "my-group", "orders", 3) == unhex(KEY_V1_HEX)


def test_value_v0():
    raw = value_v0(42, "meta", 1600000000000)
    assert raw == unhex("0000 000000000000002a 0004 6d657461 00000174876e8000")
    assert decode_offset_commit_value(raw) == {
        "offset": 42, "leader_epoch": -1, "metadata": "meta",
        "commit_timestamp": 1600000000000, "expire_timestamp": -1,
    }


def test_value_v1_carries_expire_timestamp():
    raw = value_v1(42, "m", 1600000000000, 1600086400000)
    assert len(raw) == 2 + 8 + 2 + 1 + 8 + 8
    assert decode_offset_commit_value(raw) == {
        "offset": 42, "leader_epoch": -1, "metadata": "m",
        "commit_timestamp": 1600000000000, "expire_timestamp": 1600086400000,
    }
    kind, commit = decode_record(encode_offset_commit_key("g", "t", 0), raw)
    assert kind == "offset" and commit.expire_timestamp == 1600086400000


def test_value_v2_has_the_v0_layout():
    raw = value_v0(-1, "", 0, version=2)
    assert raw[:2] == b"\x00\x02"
    assert decode_offset_commit_value(raw) == {
        "offset": -1, "leader_epoch": -1, "metadata": "",
        "commit_timestamp": 0, "expire_timestamp": -1,
    }


def test_value_v3_hand_built_matches_encoder():
    assert value_v3(12345, 7, "", 1700000000000) == encode_offset_commit_value(12345, 7, "", 1700000000000)
    assert value_v3(1, -1, "héllo", 2) == encode_offset_commit_value(1, -1, "héllo", 2)


def test_value_v4_flexible_with_tagged_fields():
    tags = [(0, b"\xaa\xbb\xcc"), (5, b""), (300, b"x" * 200)]
    raw = value_v4(12345, 7, "meta", 1700000000000, tags)
    # int16 4 | int64 | int32 | 05 'meta' | int64 | count 03 | 00 03 aabbcc | 05 00 | ac02 c801 x*200
    expected = unhex("0004 0000000000003039 00000007 05 6d657461 0000018bcfe56800 03"
                     " 00 03 aabbcc  05 00  ac02 c801") + b"x" * 200
    assert raw == expected
    assert decode_offset_commit_value(raw) == {
        "offset": 12345, "leader_epoch": 7, "metadata": "meta",
        "commit_timestamp": 1700000000000, "expire_timestamp": -1,
    }


def test_value_v4_empty_tag_section_and_empty_metadata():
    raw = value_v4(0, -1, "", -1)
    assert raw == unhex("0004 0000000000000000 ffffffff 01 ffffffffffffffff 00")
    assert decode_offset_commit_value(raw) == {
        "offset": 0, "leader_epoch": -1, "metadata": "",
        "commit_timestamp": -1, "expire_timestamp": -1,
    }


@pytest.mark.parametrize("version", range(3, 16))
def test_other_record_kinds_are_skipped(version):
    raw = struct.pack(">h", version) + b"\x00\x05hello\x00\x00\x00\x07garbage"
    assert decode_key(raw) == OtherKey(version)
    assert decode_record(raw, b"anything") is None
    assert decode_record(raw, None) is None
    assert decode_key(struct.pack(">h", version)) == OtherKey(version)


# --------------------------------------------------------------------------- round trips


names = st.text(max_size=80)
int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(names, names, int32s, int64s, int32s, st.text(max_size=200), int64s)
def test_roundtrip_offset_commit(group, topic, partition, offset, epoch, metadata, ts):
    key = encode_offset_commit_key(group, topic, partition)
    value = encode_offset_commit_value(offset, epoch, metadata, ts)
    assert decode_key(key) == OffsetCommitKey(group, topic, partition)
    assert value == value_v3(offset, epoch, metadata, ts)
    assert decode_record(key, value) == (
        "offset", OffsetCommit(group, topic, partition, offset, epoch, metadata, ts, -1))
    assert decode_record(key, None) == ("offset_delete", OffsetCommitKey(group, topic, partition))


@settings(max_examples=200, deadline=None)
@given(names)
def test_roundtrip_group_key(group):
    key = encode_group_metadata_key(group)
    assert key == b"\x00\x02" + s16(group)
    assert decode_key(key) == GroupMetadataKey(group)
    assert decode_record(key, None) == ("group_delete", group)


tag_lists = st.lists(st.tuples(st.integers(0, 2**31 - 1), st.binary(max_size=300)), max_size=5)


@settings(max_examples=200, deadline=None)
@given(int64s, int32s, st.text(max_size=200), int64s, int64s, tag_lists)
def test_every_value_version_decodes(offset, epoch, metadata, ts, expire, tags):
    def dv(**kw):
        base = {"offset": offset, "leader_epoch": -1, "metadata": metadata,
                "commit_timestamp": ts, "expire_timestamp": -1}
        base.update(kw)
        return base

    assert decode_offset_commit_value(value_v0(offset, metadata, ts)) == dv()
    assert decode_offset_commit_value(value_v1(offset, metadata, ts, expire)) == dv(expire_timestamp=expire)
    assert decode_offset_commit_value(value_v0(offset, metadata, ts, version=2)) == dv()
    assert decode_offset_commit_value(value_v3(offset, epoch, metadata, ts)) == dv(leader_epoch=epoch)
    assert decode_offset_commit_value(value_v4(offset, epoch, metadata, ts, tags)) == dv(leader_epoch=epoch)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_corrupt_record(data):
    for fn in (decode_key, decode_offset_commit_value):
        try:
            fn(data)
        except CorruptRecordError:
            pass
    try:
        decode_record(data, data)
    except CorruptRecordError:
        pass


@settings(max_examples=200, deadline=None)
@given(names, st.text(max_size=30), int32s, st.data())
def test_every_truncation_of_a_valid_record_is_corrupt(group, topic, partition, data):
    key = encode_offset_commit_key(group, topic, partition)
    cut = data.draw(st.integers(0, len(key) - 1))
    with pytest.raises(CorruptRecordError, match="at byte"):
        decode_key(key[:cut])
    value = data.draw(st.sampled_from([
        value_v0(1, topic, 2), value_v1(1, topic, 2, 3), value_v3(1, 2, topic, 3),
        value_v4(1, 2, topic, 3, [(1, b"abc")]),
    ]))
    cut = data.draw(st.integers(0, len(value) - 1))
    with pytest.raises(CorruptRecordError, match="at byte"):
        decode_offset_commit_value(value[:cut])


# --------------------------------------------------------------------------- errors


def test_corrupt_record_error_is_a_value_error():
    assert issubclass(CorruptRecordError, ValueError)


@pytest.mark.parametrize("cut", range(24))
def test_truncated_doc_key(cut):
    with pytest.raises(CorruptRecordError, match=r"at byte \d+"):
        decode_key(unhex(KEY_V1_HEX)[:cut])


@pytest.mark.parametrize("cut", range(24))
def test_truncated_doc_value(cut):
    with pytest.raises(CorruptRecordError, match=r"at byte \d+"):
        decode_offset_commit_value(unhex(VALUE_V3_HEX)[:cut])


def test_truncation_messages_name_field_and_position():
    key = unhex(KEY_V1_HEX)
    with pytest.raises(CorruptRecordError, match=r"partition.*at byte 20"):
        decode_key(key[:22])
    with pytest.raises(CorruptRecordError, match=r"string topic.*at byte 14"):
        decode_key(key[:16])
    value = unhex(VALUE_V3_HEX)
    with pytest.raises(CorruptRecordError, match=r"commitTimestamp.*at byte 16"):
        decode_offset_commit_value(value[:20])
    with pytest.raises(CorruptRecordError, match=r"leaderEpoch.*at byte 10"):
        decode_offset_commit_value(value[:11])


@pytest.mark.parametrize("version", [99, 16, -1, -32768, 32767])
def test_unknown_key_version(version):
    raw = struct.pack(">h", version) + s16("g") + s16("t") + b"\x00\x00\x00\x00"
    with pytest.raises(CorruptRecordError, match=rf"unknown record type {version} at byte 0"):
        decode_key(raw)
    with pytest.raises(CorruptRecordError):
        decode_record(raw, None)


@pytest.mark.parametrize("version", [5, 99, -1])
def test_unknown_value_version(version):
    raw = struct.pack(">hq", version, 1) + s16("") + struct.pack(">q", 2)
    with pytest.raises(CorruptRecordError, match=rf"version {version}.*at byte 0"):
        decode_offset_commit_value(raw)


@pytest.mark.parametrize("length", [-1, -2, -32768])
def test_negative_string_lengths_in_key(length):
    neg = struct.pack(">h", length)
    with pytest.raises(CorruptRecordError, match=r"group.*at byte 2"):
        decode_key(b"\x00\x01" + neg + s16("t") + b"\x00\x00\x00\x00")
    with pytest.raises(CorruptRecordError, match=r"topic.*at byte 5"):
        decode_key(b"\x00\x01" + s16("g") + neg + b"\x00\x00\x00\x00")
    with pytest.raises(CorruptRecordError, match=r"group.*at byte 2"):
        decode_key(b"\x00\x02" + neg)


@pytest.mark.parametrize("length", [-1, -2, -32768])
def test_negative_metadata_length(length):
    for version in (0, 1, 2):
        raw = struct.pack(">hqh", version, 1, length) + b"\x00" * 16
        with pytest.raises(CorruptRecordError, match=r"metadata.*at byte 10"):
            decode_offset_commit_value(raw)
    raw = struct.pack(">hqih", 3, 1, 0, length) + b"\x00" * 8
    with pytest.raises(CorruptRecordError, match=r"metadata.*at byte 14"):
        decode_offset_commit_value(raw)


def test_v4_null_compact_metadata():
    raw = struct.pack(">hqi", 4, 1, 0) + b"\x00" + struct.pack(">q", 2) + b"\x00"
    with pytest.raises(CorruptRecordError, match=r"metadata is null at byte 14"):
        decode_offset_commit_value(raw)


def test_v4_bad_varints_and_tags():
    head = struct.pack(">hqi", 4, 1, 0)
    tail = struct.pack(">q", 2)
    with pytest.raises(CorruptRecordError, match="longer than 5 bytes"):
        decode_offset_commit_value(head + b"\x81\x80\x80\x80\x80\x00" + tail + b"\x00")
    with pytest.raises(CorruptRecordError, match="truncated unsigned varint"):
        decode_offset_commit_value(head + b"\x81")
    with pytest.raises(CorruptRecordError, match="exceeds 32 bits"):
        decode_offset_commit_value(head + b"\x01" + tail + b"\xff\xff\xff\xff\x7f")
    with pytest.raises(CorruptRecordError, match="tagged field count"):
        decode_offset_commit_value(head + b"\x01" + tail)  # section missing
    with pytest.raises(CorruptRecordError, match=r"data of tagged field #0.*at byte 26"):
        decode_offset_commit_value(head + b"\x01" + tail + b"\x01\x07\x05abc")
    with pytest.raises(CorruptRecordError, match=r"tagged field #1"):
        decode_offset_commit_value(head + b"\x01" + tail + b"\x02\x07\x01z")
    with pytest.raises(CorruptRecordError, match="exceeds 32767"):
        decode_offset_commit_value(head + uvarint(40000) + b"x" * 40000 + tail + b"\x00")


def test_trailing_bytes_are_corrupt():
    with pytest.raises(CorruptRecordError, match=r"1 unexpected trailing byte at byte 24"):
        decode_key(unhex(KEY_V1_HEX) + b"\x00")
    with pytest.raises(CorruptRecordError, match=r"trailing bytes at byte 24"):
        decode_offset_commit_value(unhex(VALUE_V3_HEX) + b"\x00\x00")
    with pytest.raises(CorruptRecordError, match="trailing"):
        decode_key(unhex(GROUP_KEY_HEX) + b"\x00")
    with pytest.raises(CorruptRecordError, match="trailing"):
        decode_offset_commit_value(value_v4(1, 2, "", 3) + b"\x00")


def test_invalid_utf8():
    with pytest.raises(CorruptRecordError, match=r"group is not valid UTF-8.*at byte 6"):
        decode_key(b"\x00\x01\x00\x03ab\xff" + s16("t") + b"\x00\x00\x00\x00")
    with pytest.raises(CorruptRecordError, match="metadata is not valid UTF-8"):
        decode_offset_commit_value(struct.pack(">hqh", 0, 1, 1) + b"\xc3" + struct.pack(">q", 2))


def test_decode_record_errors():
    with pytest.raises(CorruptRecordError, match="null key"):
        decode_record(None, b"\x00\x03")
    with pytest.raises(CorruptRecordError):
        decode_record(unhex(KEY_V1_HEX), b"\x00")  # garbage value
    with pytest.raises(CorruptRecordError):
        decode_record(unhex(GROUP_KEY_HEX), b"")  # group value without its version
    with pytest.raises(CorruptRecordError):
        decode_record(unhex(GROUP_KEY_HEX), b"\xff\xff")
    with pytest.raises(CorruptRecordError):
        decode_record(b"\x00", None)


def test_accepts_bytes_like():
    assert decode_key(bytearray(unhex(KEY_V1_HEX))) == OffsetCommitKey("my-group", "orders", 3)
    assert decode_offset_commit_value(memoryview(unhex(VALUE_V3_HEX)))["offset"] == 12345
    with pytest.raises(TypeError):
        decode_key("0001")


def test_encoder_rejects_unrepresentable_arguments():
    with pytest.raises(InvalidRequestError, match="partition"):
        encode_offset_commit_key("g", "t", 2**31)
    with pytest.raises(InvalidRequestError, match="offset"):
        encode_offset_commit_value(2**63, -1, "", 0)
    with pytest.raises(InvalidRequestError, match="leader_epoch"):
        encode_offset_commit_value(0, -(2**31) - 1, "", 0)
    with pytest.raises(InvalidRequestError, match="32767"):
        encode_group_metadata_key("x" * 32768)
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        encode_offset_commit_value(0, -1, "\ud800", 0)
    with pytest.raises(TypeError):
        encode_offset_commit_key(b"g", "t", 0)
    assert len(encode_group_metadata_key("x" * 32767)) == 2 + 2 + 32767


# --------------------------------------------------------------------------- kafka-python cross-check


@pytest.fixture(scope="module")
def kp(tmp_path_factory):
    """kafka-python's ApiData classes built from the shared coordinator JSON schemas."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"coordinator JSON schemas not found at {SCHEMAS}")
    try:
        from kafka.protocol.api_data import ApiData
    except ImportError:
        pytest.skip("this kafka-python has no kafka.protocol.api_data.ApiData")
    pkg_name = "kstore_xcheck_coordinator_schemas"
    root = tmp_path_factory.mktemp("schemas")
    pkg = root / pkg_name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("OffsetCommitKey", "OffsetCommitValue", "GroupMetadataKey"):
        shutil.copy(SCHEMAS / f"{name}.json", pkg / f"{name}.json")
    sys.path.insert(0, str(root))
    try:
        importlib.import_module(pkg_name)
        classes = {
            name: types.new_class(name, (ApiData,), {"load_json": pkg_name})
            for name in ("OffsetCommitKey", "OffsetCommitValue", "GroupMetadataKey")
        }
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(pkg_name, None)
    return classes


def test_kafka_python_doc_vectors(kp):
    K, V, G = kp["OffsetCommitKey"], kp["OffsetCommitValue"], kp["GroupMetadataKey"]
    assert K(group="my-group", topic="orders", partition=3).encode(version=1) == unhex(KEY_V1_HEX)
    assert V(offset=12345, leader_epoch=7, metadata="",
             commit_timestamp=1700000000000).encode(version=3) == unhex(VALUE_V3_HEX)
    assert G(group="my-group").encode(version=2) == unhex(GROUP_KEY_HEX)


@settings(max_examples=150, deadline=None)
@given(names, names, int32s, int64s, int32s, st.text(max_size=100), int64s, int64s)
def test_kafka_python_agrees(kp, group, topic, partition, offset, epoch, metadata, ts, expire):
    K, V, G = kp["OffsetCommitKey"], kp["OffsetCommitValue"], kp["GroupMetadataKey"]
    # kstore -> kafka-python
    theirs = K.decode(encode_offset_commit_key(group, topic, partition))
    assert (theirs.version, theirs.group, theirs.topic, theirs.partition) == (1, group, topic, partition)
    theirs = V.decode(encode_offset_commit_value(offset, epoch, metadata, ts))
    assert (theirs.version, theirs.offset, theirs.leader_epoch, theirs.metadata,
            theirs.commit_timestamp) == (3, offset, epoch, metadata, ts)
    assert G.decode(encode_group_metadata_key(group)).group == group
    # kafka-python -> kstore, every key and value version
    for kv in (0, 1):
        raw = K(group=group, topic=topic, partition=partition).encode(version=kv)
        assert raw == key_v(kv, group, topic, partition)
        assert decode_key(raw) == OffsetCommitKey(group, topic, partition)
    assert decode_key(G(group=group).encode(version=2)) == GroupMetadataKey(group)
    for vv in range(5):
        fields = {"offset": offset, "metadata": metadata, "commit_timestamp": ts}
        if vv >= 3:
            fields["leader_epoch"] = epoch
        if vv == 1:
            fields["expire_timestamp"] = expire
        raw = V(**fields).encode(version=vv)
        got = decode_offset_commit_value(raw)
        assert got == {
            "offset": offset,
            "leader_epoch": epoch if vv >= 3 else -1,
            "metadata": metadata,
            "commit_timestamp": ts,
            "expire_timestamp": expire if vv == 1 else -1,
        }, vv


@settings(max_examples=100, deadline=None)
@given(int64s, int32s, st.text(max_size=50), int64s, tag_lists)
def test_kafka_python_reads_hand_built_v4(kp, offset, epoch, metadata, ts, tags):
    # Tags must be ascending and distinct on the wire (KIP-482); kafka-python keeps them as unknown.
    tags = sorted({t: d for t, d in tags}.items())
    raw = value_v4(offset, epoch, metadata, ts, tags)
    theirs = kp["OffsetCommitValue"].decode(raw)
    assert (theirs.version, theirs.offset, theirs.leader_epoch, theirs.metadata,
            theirs.commit_timestamp) == (4, offset, epoch, metadata, ts)
    assert decode_offset_commit_value(raw)["leader_epoch"] == epoch
