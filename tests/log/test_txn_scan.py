"""kstore._core.txn_batches, the compiled header walk behind a partition's transaction state:
it must name exactly the batches (and marker types) that decoding every batch in Python names,
for every kind of batch, and hand back what it cannot read rather than guess."""

import random
import struct

import pytest

from kstore import _core, errors
from kstore.log.txn import ABORT, COMMIT, control_type, encode_control_batch
from kstore.records import iter_batches
from tests.log.test_txn import NOW, plain, txn_batch

_CRC = struct.Struct(">I")


def at(raw: bytes, base: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(">q", b, 0, base)
    return bytes(b)


def reseal(b: bytearray) -> bytes:
    _CRC.pack_into(b, 17, _core.crc32c(memoryview(b)[21:]))
    return bytes(b)


def python_view(buf: bytes) -> list[tuple[int, int, int, int]]:
    """The same answer by decoding every batch (what the scan replaced)."""
    out = []
    for b in iter_batches(buf):
        if b.attributes & 0x10 and b.record_count:
            kind = control_type(b) if b.attributes & 0x20 else -1
            out.append((b.base_offset, b.last_offset, b.producer_id, kind))
    return out


def test_a_mixed_log_matches_decoding_every_batch():
    rng = random.Random(3)
    parts, off = [], 0
    for _ in range(300):
        pid = rng.randrange(1, 6)
        what = rng.randrange(4)
        if what == 0:
            raw = plain(rng.randrange(1, 5))
        elif what == 1:
            raw = txn_batch(pid, rng.randrange(1, 9))
        else:
            raw = encode_control_batch(pid, 0, what == 2, rng.randrange(0, 1 << 20), NOW)
        b = _core.read_batch(raw)
        parts.append(at(raw, off))
        off += b.last_offset_delta + 1 + rng.randrange(3)  # gaps, as compaction leaves
    buf = b"".join(parts)
    found, nxt = _core.txn_batches(buf)
    assert found == python_view(buf)
    assert {k for *_, k in found} == {-1, ABORT, COMMIT}
    assert nxt == _core.read_batch(parts[-1]).last_offset + 1
    # From a middle position, and up to a torn last batch: whole batches only.
    mid = sum(len(p) for p in parts[:100])
    torn = len(buf) - 5
    got, nxt = _core.txn_batches(buf, mid, torn)
    assert got == python_view(buf[mid:sum(len(p) for p in parts[:-1])])
    assert nxt == _core.read_batch(parts[-2]).last_offset + 1


def test_batches_it_cannot_read_are_handed_back_not_guessed():
    marker = bytearray(encode_control_batch(7, 0, True, 0, NOW))
    # A compressed control batch (Kafka writes none): -2.
    gz = bytearray(marker)
    gz[22] |= 0x01
    # A marker type that is negative: -2, not taken for data (-1).
    neg = bytearray(marker)
    neg[61 + 5 + 2:61 + 5 + 4] = struct.pack(">h", -1)
    # A key shorter than 4 bytes: -2.
    short = bytearray(marker)
    short[61 + 4] = 2  # key length 1 (zigzag)
    # A varint that never ends inside the batch: -2.
    endless = bytearray(marker)
    endless[61:] = b"\xff" * (len(endless) - 61)
    for bad in (gz, neg, short, endless):
        (got,), _ = _core.txn_batches(reseal(bad))
        assert got == (0, 0, 7, -2)
    (ok,), _ = _core.txn_batches(bytes(marker))
    assert ok == (0, 0, 7, COMMIT)


def test_emptied_and_plain_batches_are_skipped_and_bad_magic_raises():
    empty = bytearray(txn_batch(3, 2))
    struct.pack_into(">i", empty, 57, 0)  # the cleaner keeps an emptied batch's header only
    buf = at(plain(), 0) + at(reseal(empty), 2) + at(txn_batch(4, 1), 5)
    found, nxt = _core.txn_batches(buf)
    assert found == [(5, 5, 4, -1)] and nxt == 6
    assert _core.txn_batches(b"") == ([], -1)
    assert _core.txn_batches(buf[:40]) == ([], -1)
    bad = bytearray(buf)
    bad[len(at(plain(), 0)) + 16] = 1
    with pytest.raises(errors.CorruptRecordError, match="magic 1"):
        _core.txn_batches(bytes(bad))


def test_a_compressed_marker_is_decoded_in_python_by_the_partition_scan(tmp_path):
    from kstore.log import PartitionLog
    from kstore.records import BatchBuilder

    b = BatchBuilder(compression="gzip", producer_id=9, producer_epoch=0, base_sequence=-1,
                     transactional=True)
    b.append(struct.pack(">hi", 0, 0), key=struct.pack(">hh", 0, ABORT), timestamp=NOW)
    marker = bytearray(b.build())
    marker[22] |= 0x20  # control
    marker = reseal(marker)
    (got,), _ = _core.txn_batches(marker)
    assert got[3] == -2
    lg = PartitionLog.open(tmp_path / "t-0")
    try:
        lg.append_batches(txn_batch(9, 3), _internal=True)
        lg.append_batches(marker, _internal=True)
    finally:
        lg.close()
    lg = PartitionLog.open(tmp_path / "t-0")  # a fresh scan of the whole log
    try:
        assert [(a.producer_id, a.first_offset, a.last_offset)
                for a in lg.aborted_transactions(0, 10)] == [(9, 0, 3)]
        assert lg.last_stable_offset() == lg.log_end_offset == 4
    finally:
        lg.close()
