"""CRC-32C against the crc32c package, murmur2 against Java's and librdkafka's vectors, and the
codec over every kind of buffer."""

import array
import mmap
import os
import random

import crc32c as crc32c_pkg
import numpy as np
import pytest

from kstore.records import BatchBuilder, columns, crc32c, iter_batches, murmur2, murmur2_partition, scan


def test_crc32c_matches_package_on_random_inputs():
    rng = random.Random(1)
    sizes = [0, 1, 7, 8, 9, 255, 256, 767, 768, 769, 24575, 24576, 24577, 100_000, 1 << 20]
    sizes += [rng.randrange(0, 200_000) for _ in range(100)]
    for n in sizes:
        data = os.urandom(n)
        assert crc32c(data) == crc32c_pkg.crc32c(data), n
        # misaligned views and continuation
        off = rng.randrange(0, 8)
        mv = memoryview(data)[off:]
        assert crc32c(mv) == crc32c_pkg.crc32c(bytes(mv))
        cut = rng.randrange(0, n + 1)
        assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c_pkg.crc32c(data)


JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"": 275646681,
    b"a": -1563381124,
    b"abcd": -1323649548,
    b"kafka": -798503068,
    b"key-1": 193331640,
    b"user-42": 1459644460,
    b"order:2024-10-25:000017": -1189570937,
    b"\xff" * 7: -71293549,
    "héllo-世界".encode(): -946624936,
}
LIBRDKAFKA = {
    b"giberish123456789": 0x8F552B0C,
    b"1234": 0x9FC97B14,
    b"234": 0xE7C009CA,
    b"34": 0x873930DA,
    b"4": 0x5A4B5CA1,
    b"PreAmbleWillBeRemoved,ThePrePartThatIs": 0x78424F1C,
    b"kafka": 0xD067CF64,
}


@pytest.mark.parametrize("key,expected", sorted(JAVA.items()))
def test_murmur2_java_vectors(key, expected):
    assert murmur2(key) == expected


@pytest.mark.parametrize("key,expected", sorted(LIBRDKAFKA.items()))
def test_murmur2_librdkafka_vectors(key, expected):
    assert murmur2(key) & 0xFFFFFFFF == expected


@pytest.mark.parametrize("key,p3,p6,p12", [
    (b"", 0, 3, 9), (b"a", 1, 4, 4), (b"abc", 0, 3, 3), (b"abcd", 2, 2, 8), (b"kafka", 1, 4, 4),
    (b"key-1", 0, 0, 0), (b"user-42", 1, 4, 4), (b"order:2024-10-25:000017", 0, 3, 3),
    (b"\xff" * 7, 1, 1, 7), ("héllo-世界".encode(), 1, 4, 4),
])
def test_murmur2_partition_table(key, p3, p6, p12):
    assert [murmur2_partition(key, n) for n in (3, 6, 12)] == [p3, p6, p12]


def _batches():
    b = BatchBuilder()
    b.append_many([b"v%d" % i for i in range(10)], keys=[b"k"] * 10)
    return b.build() * 1


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "mmap", "array", "numpy"])
def test_decoding_accepts_any_buffer(kind, tmp_path):
    raw = _batches()
    if kind == "bytes":
        buf = raw
    elif kind == "bytearray":
        buf = bytearray(raw)
    elif kind == "memoryview":
        buf = memoryview(b"xx" + raw)[2:]
    elif kind == "array":
        buf = array.array("B", raw)
    elif kind == "numpy":
        buf = np.frombuffer(raw, dtype=np.uint8)
    else:
        path = tmp_path / "seg.log"
        path.write_bytes(raw)
        f = open(path, "rb")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (batch,) = list(iter_batches(buf))
    assert [r.value for r in batch.records()] == [b"v%d" % i for i in range(10)]
    assert columns(buf).values() == [b"v%d" % i for i in range(10)]
    assert len(scan(buf)) == 1
    assert bytes(batch.raw()) == raw
    if kind == "mmap":
        # The view pins the mapping: closing it under a live Batch is refused, not a crash.
        with pytest.raises(BufferError):
            buf.close()
        del batch
        import gc

        gc.collect()
        buf.close()
        f.close()


def test_columns_are_zero_copy_for_uncompressed():
    raw = bytearray(_batches())
    cols = columns(raw)
    assert cols.data is raw
    assert bytes(cols.value(3)) == b"v3"
    assert cols.key(0).obj is raw
