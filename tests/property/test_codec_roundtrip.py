"""Encode then decode returns the same records, for arbitrary records and every codec, and the
pure-Python reference in tests/records/reference.py agrees byte for byte."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kstore.records import CODECS, BatchBuilder, columns, encode_batches, iter_batches

from ..records import reference

maybe_bytes = st.one_of(st.none(), st.binary(max_size=300))
header = st.tuples(st.text(max_size=20), maybe_bytes)
record = st.tuples(
    st.integers(min_value=-(2**62), max_value=2**62),  # timestamp
    maybe_bytes,  # key
    maybe_bytes,  # value
    st.lists(header, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(record, min_size=1, max_size=30), st.sampled_from(CODECS))
def test_roundtrip_any_codec(records, codec):
    b = BatchBuilder(compression=codec)
    for ts, k, v, h in records:
        assert b.append(v, key=k, headers=h, timestamp=ts)
    raw = b.build()
    (batch,) = list(iter_batches(raw))
    batch.validate(deep=True)
    got = [(r.timestamp, r.key, r.value, list(r.headers)) for r in batch.records()]
    assert got == [(ts, k, v, list(h)) for ts, k, v, h in records]
    cols = batch.columns()
    assert cols.values() == [v for _, _, v, _ in records]
    assert cols.keys() == [k for _, k, _, _ in records]
    assert list(cols.timestamps) == [ts for ts, _, _, _ in records]
    if codec == "none":
        assert raw == reference.encode_batch(records)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=400),
       st.integers(min_value=61, max_value=5000), st.sampled_from(CODECS))
def test_encode_batches_any_split_equals_one_stream(values, max_batch_bytes, codec):
    keys = [b"k%d" % i for i in range(len(values))]
    ts = np.arange(len(values), dtype=np.int64) + 1_000
    raw = encode_batches(values, keys, ts, compression=codec, max_batch_bytes=max_batch_bytes)
    recs = [r for b in iter_batches(raw) for r in b.records()]
    assert [r.value for r in recs] == values
    assert [r.key for r in recs] == keys
    assert [r.offset for r in recs] == list(range(len(values)))
    assert columns(raw).values() == values


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=300))
def test_append_many_forms_agree(width, n):
    rng = np.random.default_rng(n * 1000 + width)
    arr = rng.integers(0, 256, size=(n, width), dtype=np.uint8)
    as_list = [bytes(row) for row in arr]
    data = arr.tobytes()
    offsets = np.arange(n + 1, dtype=np.int64) * width
    outs = []
    for values in (as_list, arr, (data, offsets)):
        b = BatchBuilder()
        assert b.append_many(values, timestamps=np.full(n, 5, dtype=np.int64)) == n
        outs.append(b.build())
    assert outs[0] == outs[1] == outs[2]


def test_timestamp_delta_that_overflows_int64_wraps_like_java():
    """Found by hypothesis in CI: timestamps 2**63 apart. The delta wraps in 64 bits (Java's long
    arithmetic); the decoder adds it back with the same wrap and gets the original timestamps."""
    records = [(-(2**62), None, b"a", []), (2**62, None, b"b", [])]
    b = BatchBuilder()
    for ts, k, v, h in records:
        b.append(v, key=k, headers=h, timestamp=ts)
    raw = b.build()
    assert raw == reference.encode_batch(records)
    (batch,) = list(iter_batches(raw))
    assert [r.timestamp for r in batch.records()] == [-(2**62), 2**62]
