"""A batch header's record count sizes the numpy columns before any record is decoded: a count
no batch of that size can hold must be refused as corrupt, not allocated. The coverage fuzzer
found a 140-byte compacted lz4 batch claiming 1.6 G records (12 GiB of columns: out of memory
under ASan; a plain process only survives because numpy's np.empty is not touched yet). The
decoding runs in a subprocess whose address space is capped at 4 GiB, so the allocation fails
there as it did under the fuzzer."""

import base64
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from kstore.records import BatchBuilder

FUZZER_INPUT = (
    "AAAAAAAAAAAAAACM/////wIcmfjMAGNoYXNlcgBXUG9ydG9wAGI0ODIuNDRxADZ0cnUoAFAiYmV0YSkA1WxwaGEiXX0A"
    "1AEABgZuACMztG4AFjNuAFZsb2dpbmsAOUt5b2sAXzIzNi4wawACMWRlbGwAQW9tZWdsAEUeAAgISAGFNAEA3AEACgoB"
    "FiNFClOJalpcFEEnm0w=")

DECODE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    from kstore import errors
    from kstore.records import columns, iter_batches
    raw = sys.stdin.buffer.read()
    out = []
    for call in (lambda: [b.columns(check_crc=False, max_decompressed_bytes=1 << 20)
                          for b in iter_batches(raw)],
                 lambda: columns(raw, check_crc=False, max_decompressed_bytes=1 << 20),
                 lambda: [b.records(check_crc=False, max_decompressed_bytes=1 << 20)
                          for b in iter_batches(raw)]):
        try:
            call()
            out.append("decoded")
        except errors.CorruptRecordError:
            out.append("corrupt")
        except MemoryError:
            out.append("MemoryError")
    print(" ".join(out))
""")


# ASan (make sanitize preloads it) reserves terabytes of shadow address space, so the cap
# cannot be set under it; there the fuzzer (make fuzz) is the check.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
pytestmark = pytest.mark.skipif(UNDER_ASAN, reason="an address-space cap cannot apply under "
                                "ASan; make fuzz covers this input there")


def _decode(raw: bytes) -> str:
    done = subprocess.run([sys.executable, "-c", DECODE], input=raw, capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode().strip()


def _compacted_with_count(codec: str, count: int) -> bytes:
    """A batch whose header claims ``count`` records, marked as cleaned (attribute bit 6, a
    delete horizon), where fewer records than lastOffsetDelta + 1 are allowed. CRC left stale:
    the decoders are called with check_crc=False, as the fuzzer calls them."""
    b = BatchBuilder(compression=codec)
    for i in range(3):
        b.append(b"v%d" % i, key=b"k")
    raw = bytearray(b.build())
    attrs = struct.unpack_from(">h", raw, 21)[0] | 0x40
    struct.pack_into(">h", raw, 21, attrs)
    struct.pack_into(">i", raw, 23, count + 5)  # lastOffsetDelta: room for the count
    struct.pack_into(">i", raw, 57, count)
    return bytes(raw)


def test_the_fuzzers_input_is_corrupt_not_out_of_memory():
    assert _decode(base64.b64decode(FUZZER_INPUT)) == "corrupt corrupt corrupt"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_a_record_count_the_bytes_cannot_hold_is_corrupt(codec):
    assert _decode(_compacted_with_count(codec, 400_000_000)) == "corrupt corrupt corrupt"
