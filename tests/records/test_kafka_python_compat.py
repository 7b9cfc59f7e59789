"""kstore and kafka-python's record classes read each other's batches, for every codec."""

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from kstore.records import CODECS, BatchBuilder, codec_id, iter_batches

SHAPES = {
    "plain": [(1700000000000 + i, None, b"value-%d" % i, []) for i in range(50)],
    "keys": [(1700000000000 + i, b"key-%d" % i, b"v" * (i * 7), []) for i in range(50)],
    "headers": [
        (1700000000000 - i, b"k%d" % i if i % 3 else None, None if i % 5 == 0 else b"x" * i,
         [("trace", b"abc"), ("empty", b""), ("n", None)][: i % 4])
        for i in range(50)
    ],
    "big": [(0, b"key", bytes(range(256)) * 400, [])] * 3,
}


def _kafka_python_can(codec):
    if codec == "none":
        return True
    try:
        DefaultRecordBatchBuilder(2, codec_id(codec), False, -1, -1, -1, 1 << 20)._assert_has_codec(codec_id(codec))
    except Exception:
        return False
    return True


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kafka_python_reads_kstore(codec, shape):
    recs = SHAPES[shape]
    b = BatchBuilder(compression=codec)
    for ts, k, v, h in recs:
        assert b.append(v, key=k, headers=h, timestamp=ts)
    raw = b.build()
    theirs = DefaultRecordBatch(bytearray(raw))
    assert theirs.validate_crc()
    assert theirs.compression_type == codec_id(codec)
    got = [(r.timestamp, r.key, r.value, [tuple(x) for x in r.headers]) for r in theirs]
    assert got == [(ts, k, v, [tuple(x) for x in h]) for ts, k, v, h in recs]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kstore_reads_kafka_python(codec, shape):
    if not _kafka_python_can(codec):
        pytest.skip(f"kafka-python has no {codec} codec installed here")
    recs = SHAPES[shape]
    if any(h and any(v is None for _, v in h) for _, _, _, h in recs):
        recs = [(ts, k, v, [(hk, hv or b"") for hk, hv in h]) for ts, k, v, h in recs]
    kb = DefaultRecordBatchBuilder(2, codec_id(codec), False, -1, -1, -1, 1 << 24)
    for i, (ts, k, v, h) in enumerate(recs):
        if k is None and v is None:
            v = b""
        assert kb.append(i, ts, k, v, h) is not None
    raw = bytes(kb.build())
    (batch,) = list(iter_batches(raw))
    batch.validate(deep=True)
    got = [(r.timestamp, r.key, r.value, list(r.headers)) for r in batch.records()]
    exp = [(ts, k, b"" if (k is None and v is None) else v, [tuple(x) for x in h])
           for ts, k, v, h in recs]
    assert got == exp
    if codec == "none":
        # Same records, same bytes (kafka-python writes leader epoch 0, which sits outside the CRC).
        b = BatchBuilder(partition_leader_epoch=0)
        for ts, k, v, h in recs:
            b.append(b"" if (k is None and v is None) else v, key=k, headers=h, timestamp=ts)
        assert b.build() == raw
