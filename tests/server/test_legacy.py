"""Clients of message formats v0/v1 and of versions kstore does not serve (issue 18).

kstore.server.legacy against kafka-python's legacy record classes (an independent
implementation of magic 0/1, wrapper compression and the KAFKA-3160 lz4 quirk) in both
directions, every byte of a message damaged, and the broker's Produce v0-v2 / Fetch v0-v3 /
ListOffsets v0 / UNSUPPORTED_VERSION answers through a raw client.
"""

from __future__ import annotations

import logging
import struct

import pytest

from kstore import _core
from kstore.errors import (
    CorruptRecordError,
    InvalidRecordError,
    UnsupportedCompressionTypeError,
)
from kstore.server import legacy, protocol
from tests.server.rawclient import RawClient, ServerThread

legacy_records = pytest.importorskip("kafka.record.legacy_records")
memory_records = pytest.importorskip("kafka.record.memory_records")

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS = 0, 1, 2, 3, 18
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3}
TS = 1_700_000_000_000


def kp_message_set(magic, codec, records, base_offset=0):
    """A v0/v1 message set as kafka-python's producer writes it."""
    b = legacy_records.LegacyRecordBatchBuilder(magic, CODECS[codec], 1 << 20)
    for i, (key, value) in enumerate(records):
        b.append(base_offset + i, TS + i if magic == 1 else None, key, value)
    return bytes(b.build())


def kp_read(data):
    """(offset, timestamp, key, value) of every message, as kafka-python reads them."""
    out = []
    mr = memory_records.MemoryRecords(bytes(data))
    while mr.has_next():
        batch = mr.next_batch()
        for r in batch:
            out.append((r.offset, r.timestamp, r.key, r.value))
    return out


RECORDS = [(b"k0", b"v0"), (None, b"v1" * 50), (b"k2", None), (b"", b"")]


def v2(records, codec="none", base_offset=0, ts_type="create"):
    b = _core.BatchBuilder(compression=codec, base_offset=base_offset, timestamp_type=ts_type)
    for i, (key, value) in enumerate(records):
        b.append(value, key, None, TS + i)
    return b.build()


# ==============================================================================================
# Up-conversion (Produce v0-v2)


@pytest.mark.parametrize("magic", [0, 1])
@pytest.mark.parametrize("codec", list(CODECS))
def test_up_convert_keeps_records_and_codec(magic, codec):
    data = kp_message_set(magic, codec, RECORDS, base_offset=40)
    out = legacy.up_convert(data)
    (batch,) = list(_core.iter_batches(out))
    assert batch.magic == 2 and batch.base_offset == 0 and batch.compression == codec
    got = [(r.offset, r.timestamp, r.key, r.value) for r in batch.records()]
    # Offsets are the log's to assign; magic 0 has no timestamp (-1).
    assert got == [(i, TS + i if magic == 1 else -1, k, v) for i, (k, v) in enumerate(RECORDS)]
    batch.validate(deep=True)


def test_up_convert_of_several_uncompressed_and_compressed_wrappers():
    data = (kp_message_set(1, "gzip", RECORDS[:2]) + kp_message_set(1, "gzip", RECORDS[2:], 2))
    (batch,) = list(_core.iter_batches(legacy.up_convert(data)))
    assert [(r.key, r.value) for r in batch.records()] == RECORDS


def test_lz4_magic0_accepts_the_kafka_3160_checksum_and_the_proper_one():
    data = kp_message_set(0, "lz4", RECORDS)  # kafka-python writes the broken checksum for v0
    frame_at = data.find(b"\x04\x22\x4d\x18")
    assert data[frame_at + 6] == 0x1A  # the KAFKA-3160 value for FLG 60 BD 40
    assert [r.value for r in _core.read_batch(legacy.up_convert(data)).records()] == [
        v for _, v in RECORDS]
    # Kafka writes the same quirk when it down-converts to magic 0.
    down = legacy.down_convert(v2(RECORDS, "lz4"), 0, 0, 1 << 20)
    assert down[down.find(b"\x04\x22\x4d\x18") + 6] == 0x1A
    assert [v for *_, v in kp_read(down)] == [v for _, v in RECORDS]


@pytest.mark.parametrize("magic", [0, 1])
def test_every_damaged_byte_of_a_message_is_refused_or_harmless(magic):
    """Bytes 0-7 (the offset) are the broker's to assign: damage there changes nothing. Every
    other byte is covered by the size or the CRC-32: refused, never stored altered."""
    data = kp_message_set(magic, "none", [(b"key", b"value")])
    want = [(r.key, r.value) for r in _core.read_batch(legacy.up_convert(data)).records()]
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x41
        if i < 8:
            got = [(r.key, r.value) for r in _core.read_batch(legacy.up_convert(bad)).records()]
            assert got == want
            continue
        with pytest.raises((CorruptRecordError, InvalidRecordError)):
            legacy.up_convert(bad)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4"])
def test_damaged_compressed_payload_is_corrupt(codec):
    data = bytearray(kp_message_set(1, codec, RECORDS))
    data[-3] ^= 0xFF  # inside the compressed value: the CRC fails first
    with pytest.raises(CorruptRecordError, match="CRC-32"):
        legacy.up_convert(data)


@pytest.mark.parametrize("cut", [1, 5, 13, 20])
def test_torn_message_set_is_corrupt(cut):
    data = kp_message_set(1, "none", RECORDS)
    with pytest.raises(CorruptRecordError):
        legacy.up_convert(data[:-cut])


def test_codec_that_v0_v1_lack_is_refused():
    msg = legacy._message(0, 1, 4, TS, None, b"zstd?")  # codec 4: zstd is v2-only
    with pytest.raises(UnsupportedCompressionTypeError, match="does not exist"):
        legacy.up_convert(msg)


def test_mixed_magics_are_refused():
    with pytest.raises(InvalidRecordError, match="mixes"):
        legacy.up_convert(kp_message_set(0, "none", RECORDS[:1]) + kp_message_set(1, "none", RECORDS[:1]))


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(legacy, "MAX_DECOMPRESSED_BYTES", 1000)
    data = kp_message_set(1, "gzip", [(None, b"\x00" * 5000)])
    with pytest.raises(CorruptRecordError, match="inflates past"):
        legacy.up_convert(data)


# ==============================================================================================
# Down-conversion (Fetch v0-v3)


@pytest.mark.parametrize("magic", [0, 1])
@pytest.mark.parametrize("codec", list(CODECS))
def test_down_convert_reads_back_in_kafka_python(magic, codec):
    data = v2(RECORDS, codec, base_offset=100) + v2(RECORDS[:2], codec, base_offset=104)
    out = legacy.down_convert(data, magic, 0, 1 << 20)
    want = [(100 + i, TS + i if magic == 1 else None, k, v) for i, (k, v) in enumerate(RECORDS)]
    want += [(104 + i, TS + i if magic == 1 else None, k, v) for i, (k, v) in enumerate(RECORDS[:2])]
    assert kp_read(out) == want
    # The first entry's magic is the one asked for, whatever the codec.
    assert out[16] == magic


@pytest.mark.parametrize("codec", list(CODECS))
def test_down_convert_drops_records_before_the_fetch_offset(codec):
    out = legacy.down_convert(v2(RECORDS, codec, base_offset=10), 1, 12, 1 << 20)
    assert [o for o, *_ in kp_read(out)] == [12, 13]


def test_down_convert_stays_within_max_bytes_in_whole_messages_but_returns_the_first():
    data = v2([(None, b"x" * 100)] * 10)
    one = len(legacy.down_convert(data, 1, 0, 1))  # the first message even over the limit
    assert one > 1 and [o for o, *_ in kp_read(legacy.down_convert(data, 1, 0, 1))] == [0]
    out = legacy.down_convert(data, 1, 0, one * 3 + one // 2)
    assert len(out) == one * 3 and [o for o, *_ in kp_read(out)] == [0, 1, 2]


def test_down_convert_of_log_append_time_batch_sets_the_attribute():
    out = legacy.down_convert(v2(RECORDS[:1], ts_type="log_append"), 1, 0, 1 << 20)
    assert out[17] & 0x08
    ((_, ts, _, _),) = kp_read(out)
    assert ts == TS


def test_down_convert_of_zstd_is_unsupported_compression():
    with pytest.raises(UnsupportedCompressionTypeError, match="Fetch v10"):
        legacy.down_convert(v2(RECORDS, "zstd"), 1, 0, 1 << 20)


# ==============================================================================================
# Through the broker


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerThread(tmp_path_factory.mktemp("legacy") / "data")
    yield s
    s.stop()


@pytest.fixture
def client(srv):
    with srv.client() as c:
        yield c


def produce(client, topic, records, version):
    res = client.call(PRODUCE, version, {"acks": -1, "timeout_ms": 1000, "topic_data": [
        {"name": topic, "partition_data": [{"index": 0, "records": records}]}]})
    return res["responses"][0]["partition_responses"][0]


def fetch(client, topic, offset, version, max_bytes=1 << 20):
    res = client.call(FETCH, version, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": max_bytes,
        "topics": [{"topic": topic, "partitions": [{
            "partition": 0, "fetch_offset": offset, "partition_max_bytes": max_bytes}]}]})
    return res["responses"][0]["partitions"][0]


@pytest.mark.parametrize("version, magic", [(0, 0), (1, 0), (2, 1), (2, 0)])
@pytest.mark.parametrize("codec", list(CODECS))
def test_produce_v0_v2_message_sets_are_stored_as_v2(srv, client, version, magic, codec):
    topic = f"p{version}{magic}{codec}"
    r = produce(client, topic, kp_message_set(magic, codec, RECORDS, base_offset=7), version)
    assert (r["error_code"], r["base_offset"]) == (0, 0)
    r = produce(client, topic, kp_message_set(magic, codec, RECORDS[:1]), version)
    assert (r["error_code"], r["base_offset"]) == (0, 4)
    stored = srv.call_soon(lambda: srv.store.partition(topic, 0).read(0).read())
    batches = list(_core.iter_batches(stored))
    assert [b.magic for b in batches] == [2, 2] and batches[0].compression == codec
    got = [(r.offset, r.timestamp, r.key, r.value) for b in batches for r in b.records()]
    ts = [TS, TS + 1, TS + 2, TS + 3, TS] if magic == 1 else [-1] * 5
    assert got == [(i, ts[i], k, v) for i, (k, v) in enumerate(RECORDS + RECORDS[:1])]
    # Read back in every fetch version, each in its own message format.
    for fv in range(12):
        p = fetch(client, topic, 0, fv)
        assert p["error_code"] == 0 and p["high_watermark"] == 5
        if fv >= 4:
            assert [r.value for b in _core.iter_batches(bytes(p["records"]))
                    for r in b.records()] == [v for _, v in RECORDS + RECORDS[:1]]
            continue
        want_magic = 0 if fv < 2 else 1
        assert bytes(p["records"])[16] == want_magic
        assert [(o, k, v) for o, _, k, v in kp_read(p["records"])] == [
            (i, k, v) for i, (k, v) in enumerate(RECORDS + RECORDS[:1])]


def test_produce_refusals_of_legacy_message_sets(srv, client):
    good = kp_message_set(1, "none", RECORDS)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    assert produce(client, "refused", bytes(bad_crc), 2)["error_code"] == 2
    # Produce v3+ carries RecordBatch v2 only: INVALID_RECORD, as Kafka.
    assert produce(client, "refused", good, 3)["error_code"] == 87
    assert produce(client, "refused", legacy._message(0, 1, 4, TS, None, b"x"), 2)["error_code"] == 76
    assert srv.call_soon(lambda: srv.store.partition("refused", 0).log_end_offset) == 0


def test_fetch_v3_max_bytes_and_zstd(srv, client):
    assert produce(client, "big", v2([(None, b"y" * 1000)] * 5), 9)["error_code"] == 0
    p = fetch(client, "big", 0, 3, max_bytes=2500)
    assert [o for o, *_ in kp_read(p["records"])] == [0, 1] and len(p["records"]) <= 2500
    p = fetch(client, "big", 0, 3, max_bytes=10)  # KIP-74: the first message whole
    assert [o for o, *_ in kp_read(p["records"])] == [0]
    assert produce(client, "z", v2(RECORDS, "zstd"), 9)["error_code"] == 0
    assert fetch(client, "z", 0, 3)["error_code"] == 76
    assert fetch(client, "z", 0, 11)["error_code"] == 0


def test_list_offsets_v0_answers_old_style_offsets(srv, client):
    assert produce(client, "lo", v2(RECORDS), 9)["error_code"] == 0

    def call(ts, n):
        res = client.call(LIST_OFFSETS, 0, {"replica_id": -1, "topics": [{"name": "lo", "partitions": [
            {"partition_index": 0, "timestamp": ts, "max_num_offsets": n}]}]})
        return res["topics"][0]["partitions"][0]

    assert call(-1, 1)["old_style_offsets"] == [4]
    assert call(-1, 10)["old_style_offsets"] == [4, 0]
    assert call(-2, 10)["old_style_offsets"] == [0]
    assert call(0, 10)["old_style_offsets"] == []  # nothing modified before 1970
    assert call(2**62, 10)["old_style_offsets"] == [4, 0]


# ==============================================================================================
# Versions kstore does not serve


def test_unserved_version_is_answered_unsupported_version_in_its_own_layout(srv, client, caplog):
    lo, hi = protocol.supported_versions()[FETCH]
    kv = protocol.known_versions(FETCH)
    assert kv is not None and kv[1] > hi
    version = hi + 1
    body = {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 100,
            "topics": [{"topic": "t", "topic_id": b"\x01" * 16, "partitions": [
                {"partition": 3, "fetch_offset": 0, "partition_max_bytes": 100}]}]}
    with caplog.at_level(logging.INFO, logger="kstore.server"):
        res = client.call(FETCH, version, body)
    assert res["error_code"] == 35
    (t,) = res["responses"]
    assert [(p["partition_index"], p["error_code"]) for p in t["partitions"]] == [(3, 35)]
    assert f"Fetch v{version} is not supported" in caplog.text and "UNSUPPORTED_VERSION" in caplog.text
    # The connection stays usable.
    assert client.call(API_VERSIONS, 0, {})["error_code"] == 0


def test_unserved_produce_version_echoes_every_partition(srv, client, monkeypatch):
    """Produce has no top-level error code: each partition of the request carries it. (The
    server's range narrowed to v8, so that v9 is one it knows the layout of but does not
    serve, whatever the advertised range becomes.)"""
    monkeypatch.setitem(srv.server._versions, PRODUCE, (0, 8))
    res = client.call(PRODUCE, 9, {"acks": -1, "timeout_ms": 1, "topic_data": [
        {"name": "a", "partition_data": [{"index": 0, "records": b""}, {"index": 2, "records": b""}]},
        {"name": "b", "partition_data": [{"index": 1, "records": b""}]}]})
    assert [(t["name"], [(p["index"], p["error_code"]) for p in t["partition_responses"]])
            for t in res["responses"]] == [("a", [(0, 35), (2, 35)]), ("b", [(1, 35)])]
    # acks=0 reads no answer: the connection is closed instead (as for a failed acks=0 append).
    client.send(PRODUCE, 9, {"acks": 0, "timeout_ms": 1, "topic_data": []})
    with pytest.raises(ConnectionError):
        client.recv_frame()


def test_version_beyond_every_schema_still_closes(srv):
    with RawClient(srv.port) as c:
        c.sock.sendall(struct.pack(">ihhih", 10, FETCH, 99, 1, 0))
        with pytest.raises(ConnectionError):
            c.recv_frame()
