"""Codec throughput against baselines measured in the same run.

    python -m pytest benchmarks/test_bench_codec.py --benchmark-enable --benchmark-only
    python benchmarks/report.py .benchmarks/codec.json      # medians and ratios per group

Workload (issue 3): 100-byte values, 16 KiB batches, uncompressed unless the test names a codec.
"""

import crc32c as crc32c_pkg
import lz4.frame
import numpy as np
import pytest
import zstandard
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from kstore.records import BatchBuilder, columns, encode_batches, iter_batches, validate_all

BATCH = 16384
N = 100_000


def kafka_python_encode(values, keys=None, codec=0):
    out = []
    b = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, BATCH)
    off = 0
    for i, v in enumerate(values):
        k = None if keys is None else keys[i]
        if b.append(off, 1700000000000, k, v, []) is None:
            out.append(bytes(b.build()))
            b = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, BATCH)
            off = 0
            b.append(off, 1700000000000, k, v, [])
        off += 1
    out.append(bytes(b.build()))
    return out


# ---- encode ------------------------------------------------------------------------------

@pytest.mark.benchmark(group="encode: append_many from a list, 100k records")
def test_encode_append_many_kstore(benchmark, values_100k):
    raw = benchmark(encode_batches, values_100k, max_batch_bytes=BATCH)
    assert sum(b.record_count for b in iter_batches(raw)) == N


@pytest.mark.benchmark(group="encode: append_many from a list, 100k records")
def test_encode_append_many_keys_kstore(benchmark, values_100k, keys_100k):
    benchmark(encode_batches, values_100k, keys_100k, max_batch_bytes=BATCH)


@pytest.mark.benchmark(group="encode: append_many from a list, 100k records")
def test_encode_append_many_numpy_offsets_kstore(benchmark, values_100k):
    data = b"".join(values_100k)
    offsets = np.zeros(len(values_100k) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values_100k], out=offsets[1:])
    benchmark(encode_batches, (data, offsets), max_batch_bytes=BATCH)


@pytest.mark.benchmark(group="encode: append_many from a list, 100k records")
def test_encode_list_join_floor(benchmark, values_100k):
    """Reading every value of the list once (b"".join): the floor for any list encoder."""
    benchmark(b"".join, values_100k)


@pytest.mark.benchmark(group="encode: append_many from a list, 100k records")
def test_encode_baseline_kafka_python(benchmark, values_100k):
    benchmark.pedantic(kafka_python_encode, (values_100k,), rounds=3, iterations=1)


def append_loop(values):
    out = []
    b = BatchBuilder(max_batch_bytes=BATCH)
    append = b.append
    for v in values:
        if not append(v):
            out.append(b.build())
            b = BatchBuilder(max_batch_bytes=BATCH)
            append = b.append
            append(v)
    out.append(b.build())
    return out


@pytest.mark.benchmark(group="encode: per-record append, 100k records")
def test_encode_append_kstore(benchmark, values_100k):
    benchmark(append_loop, values_100k)


@pytest.mark.benchmark(group="encode: per-record append, 100k records")
def test_encode_append_baseline_kafka_python(benchmark, values_100k):
    benchmark.pedantic(kafka_python_encode, (values_100k,), rounds=3, iterations=1)


# ---- validate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def log_64mib(values_100k):
    one = encode_batches(values_100k, max_batch_bytes=BATCH)
    reps = (64 << 20) // len(one) + 1
    buf = bytearray(one * reps)
    return bytes(buf)


@pytest.mark.benchmark(group="validate: 64 MiB of 16 KiB batches")
def test_validate_64mib_kstore(benchmark, log_64mib):
    benchmark(validate_all, log_64mib)


@pytest.mark.benchmark(group="validate: 64 MiB of 16 KiB batches")
def test_validate_baseline_crc32c_package_whole_buffer(benchmark, log_64mib):
    benchmark(crc32c_pkg.crc32c, log_64mib)


# ---- decode ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def log_100k(values_100k, keys_100k):
    return encode_batches(values_100k, keys_100k, max_batch_bytes=BATCH)


def kstore_records(buf):
    n = 0
    for b in iter_batches(buf):
        n += len(b.records())
    return n


def kafka_python_records(buf):
    n = 0
    pos = 0
    mv = memoryview(buf)
    while pos < len(buf):
        size = int.from_bytes(buf[pos + 8:pos + 12], "big") + 12
        for r in DefaultRecordBatch(mv[pos:pos + size]):
            r.value
            n += 1
        pos += size
    return n


@pytest.mark.benchmark(group="decode: 100k records")
def test_decode_columns_kstore(benchmark, log_100k):
    cols = benchmark(columns, log_100k)
    assert len(cols) == N


@pytest.mark.benchmark(group="decode: 100k records")
def test_decode_records_kstore(benchmark, log_100k):
    assert benchmark(kstore_records, log_100k) == N


@pytest.mark.benchmark(group="decode: 100k records")
def test_decode_baseline_kafka_python(benchmark, log_100k):
    assert benchmark.pedantic(kafka_python_records, (log_100k,), rounds=3, iterations=1) == N


# ---- compression: batch codec vs the compression library on the same bytes ---------------

def records_areas(values):
    raw = encode_batches(values, max_batch_bytes=BATCH)
    return [bytes(b.raw()[61:]) for b in iter_batches(raw)]


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.benchmark(group="compress: encode 100k records in 16 KiB batches")
def test_compress_encode_kstore(benchmark, codec, values_100k):
    benchmark(encode_batches, values_100k, max_batch_bytes=BATCH, compression=codec)


@pytest.mark.benchmark(group="compress: encode 100k records in 16 KiB batches")
def test_compress_encode_baseline_lz4_package(benchmark, values_100k):
    areas = records_areas(values_100k)
    f = lambda: [lz4.frame.compress(a, block_linked=False, store_size=False) for a in areas]  # noqa: E731
    benchmark(f)


@pytest.mark.benchmark(group="compress: encode 100k records in 16 KiB batches")
def test_compress_encode_baseline_zstd_package(benchmark, values_100k):
    areas = records_areas(values_100k)
    c = zstandard.ZstdCompressor(level=3)
    benchmark(lambda: [c.compress(a) for a in areas])


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.benchmark(group="compress: decode (columns) 100k records")
def test_compress_decode_kstore(benchmark, codec, values_100k):
    raw = encode_batches(values_100k, max_batch_bytes=BATCH, compression=codec)
    assert len(benchmark(columns, raw)) == N


@pytest.mark.benchmark(group="compress: decode (columns) 100k records")
def test_compress_decode_baseline_lz4_package(benchmark, values_100k):
    raw = encode_batches(values_100k, max_batch_bytes=BATCH, compression="lz4")
    frames = [bytes(b.raw()[61:]) for b in iter_batches(raw)]
    benchmark(lambda: [lz4.frame.decompress(f) for f in frames])


@pytest.mark.benchmark(group="compress: decode (columns) 100k records")
def test_compress_decode_baseline_zstd_package(benchmark, values_100k):
    raw = encode_batches(values_100k, max_batch_bytes=BATCH, compression="zstd")
    frames = [bytes(b.raw()[61:]) for b in iter_batches(raw)]
    d = zstandard.ZstdDecompressor()
    benchmark(lambda: [d.decompress(f) for f in frames])
