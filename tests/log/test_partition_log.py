"""PartitionLog behaviour: Kafka's file layout, append/read, rolls, indexes, time lookups,
truncation, deletion, waiting, read-only readers, locking and reopening."""

import asyncio
import os
import struct
import threading
import time

import pytest

from kstore import errors
from kstore.log import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, PartitionLog
from kstore.log.checkpoint import read_checkpoint
from kstore.records import BatchBuilder, encode_batches, iter_batches


def batch(n, start=0, ts=None, size=20, **kw):
    b = BatchBuilder(**kw)
    for i in range(n):
        b.append(b"%d" % (start + i) + b"x" * size, key=b"k%d" % (start + i),
                 timestamp=(ts + i) if ts is not None else 1_000_000 + start + i)
    return b.build()


@pytest.fixture
def log(tmp_path):
    lg = PartitionLog.open(tmp_path / "clicks-0")
    yield lg
    lg.close()


def test_layout_matches_kafka(tmp_path):
    with PartitionLog.open(tmp_path / "orders-3") as lg:
        lg.append_batch(batch(3))
        names = sorted(os.listdir(tmp_path / "orders-3"))
    assert "00000000000000000000.log" in names
    assert "00000000000000000000.index" in names
    assert "00000000000000000000.timeindex" in names
    assert read_checkpoint(tmp_path / "recovery-point-offset-checkpoint") == {("orders", 3): 3}
    assert (tmp_path / "orders-3" / "leader-epoch-checkpoint").read_text() == "0\n1\n0 0\n"


def test_worked_example_index_files(tmp_path):
    """kafka-storage.md 3.4: one segment holding the 97-byte batch: .index empty, .timeindex
    one entry (max timestamp, relative offset 2) after close."""
    raw = bytes.fromhex(
        "000000000000000000000055ffffffff02ffebe6e40000000000020000018bcfe568000000018bcfe56805"
        "ffffffffffffffffffffffffffff0000000314000000046b31047631001e000a02010a68656c6c6f0202"
        "68027810000604046b330100")
    d = tmp_path / "t-0"
    with PartitionLog.open(d) as lg:
        assert lg.append_batch(raw) == (0, 2, -1)
    assert (d / "00000000000000000000.index").read_bytes() == b""
    assert (d / "00000000000000000000.timeindex").read_bytes() == bytes.fromhex("0000018bcfe5680500000002")
    stored = (d / "00000000000000000000.log").read_bytes()
    # Offsets and leader epoch are stamped outside the CRC; the rest is the producer's bytes.
    assert stored[:8] == raw[:8] and stored[16:] == raw[16:]
    assert stored[12:16] == b"\x00\x00\x00\x00"


def test_append_assigns_offsets_and_reads_back(log):
    assert log.append_batch(batch(5)) == (0, 4, -1)
    assert log.append_batch(batch(3, 5)) == (5, 7, -1)
    assert log.log_end_offset == 8
    recs = log.read_records(0)
    assert [r.offset for r in recs] == list(range(8))
    assert recs[6].key == b"k6"
    assert [r.offset for r in log.read_records(6)] == [6, 7]


def test_append_does_not_modify_callers_buffer(log):
    raw = bytearray(batch(4))
    before = bytes(raw)
    log.append_batch(raw)
    log.append_batch(raw)
    assert bytes(raw) == before


def test_append_batches_is_one_call_for_many(log):
    raw = encode_batches([b"v%d" % i for i in range(1000)], max_batch_bytes=1024)
    n = sum(1 for _ in iter_batches(raw))
    assert n > 10
    assert log.append_batches(raw) == (0, 999, -1)
    assert [r.value for r in log.read_records(0, max_bytes=1 << 20)] == [b"v%d" % i for i in range(1000)]


def test_read_returns_whole_batches_and_oversized_first_batch(log):
    for i in range(10):
        log.append_batch(batch(10, i * 10, size=100))
    fs = log.read(35, max_bytes=1)  # smaller than one batch: still the whole batch holding 35
    got = list(fs.batches())
    assert len(got) == 1 and got[0].base_offset == 30 and got[0].last_offset == 39
    fs = log.read(35, max_bytes=3 * got[0].size)
    assert [b.base_offset for b in fs.batches()] == [30, 40, 50]
    assert bytes(fs.memoryview()) == fs.read()
    fs = log.read(0, max_offset=20)
    assert [b.base_offset for b in fs.batches()] == [0, 10]


def test_read_at_end_is_empty_and_out_of_range_raises(log):
    log.append_batch(batch(3))
    assert len(log.read(3)) == 0
    with pytest.raises(errors.OffsetOutOfRangeError, match=r"offset 4 .*\[0, 3\)"):
        log.read(4)
    with pytest.raises(errors.OffsetOutOfRangeError):
        log.read(-1)


def test_memoryview_is_zero_copy_over_the_segment_mapping(log):
    log.append_batch(batch(3))
    fs = log.read(0)
    mv = fs.memoryview()
    assert mv.obj is fs._map
    (b,) = list(iter_batches(mv))
    assert [r.offset for r in b.records()] == [0, 1, 2]


def test_sendfile_to_socket(log):
    import socket

    for i in range(50):
        log.append_batch(batch(20, i * 20, size=200))
    fs = log.read(0, max_bytes=1 << 30)
    a, b = socket.socketpair()
    got = bytearray()

    def reader():
        while len(got) < len(fs):
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    a.setblocking(False)  # partial sends and EAGAIN get handled
    assert fs.sendfile(a) == len(fs)
    t.join()
    a.close()
    b.close()
    assert bytes(got) == fs.read()


def test_roll_on_size_and_index_entries(tmp_path):
    cfg = {"segment.bytes": 4096, "index.interval.bytes": 500}
    with PartitionLog.open(tmp_path / "t-0", cfg) as lg:
        for i in range(100):
            lg.append_batch(batch(5, i * 5, size=30))
        segs = lg.segments()
        assert len(segs) > 5
        assert all(s.size <= 4096 for s in segs)
        assert [s.base_offset for s in segs] == sorted(s.base_offset for s in segs)
        for off in (0, 3, 137, 250, 499):
            (b,) = list(iter_batches(lg.read(off, max_bytes=1).memoryview()))
            assert b.base_offset <= off <= b.last_offset
    # closed segments' indexes were trimmed to their entries
    for seg in segs[:-1]:
        name = seg.path.with_suffix(".index")
        assert name.stat().st_size % 8 == 0 and name.stat().st_size < 4096


def test_roll_on_time_follows_record_timestamps(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", {"segment.ms": 1000}) as lg:
        lg.append_batch(batch(2, 0, ts=10_000))
        lg.append_batch(batch(2, 2, ts=10_500))
        assert len(lg.segments()) == 1
        lg.append_batch(batch(2, 4, ts=11_001 + 1000))
        assert [s.base_offset for s in lg.segments()] == [0, 4]


def test_roll_when_index_full(tmp_path):
    cfg = {"segment.index.bytes": 8 * 3, "index.interval.bytes": 0}
    with PartitionLog.open(tmp_path / "t-0", cfg) as lg:
        for i in range(12):
            lg.append_batch(batch(1, i))
        assert len(lg.segments()) > 2
        assert [r.offset for r in lg.read_records(0, 1 << 20)][:1] == [0]


def test_offset_for_time(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", {"segment.bytes": 2000, "index.interval.bytes": 100}) as lg:
        for i in range(60):
            lg.append_batch(batch(5, i * 5, ts=100_000 + i * 50))
        # record j has timestamp 100_000 + (j // 5) * 50 + j % 5
        def expected(t):
            for j in range(300):
                if 100_000 + (j // 5) * 50 + j % 5 >= t:
                    return j
            return None
        for t in (0, 100_000, 100_003, 100_004, 100_026, 101_234, 102_949, 102_954, 103_000):
            assert lg.offset_for_time(t) == expected(t), t
        assert lg.offset_for_time(EARLIEST_TIMESTAMP) == 0
        assert lg.offset_for_time(LATEST_TIMESTAMP) == 300


def test_log_append_time(tmp_path):
    now = [5_000_000]
    with PartitionLog.open(tmp_path / "t-0", {"message.timestamp.type": "LogAppendTime"},
                           clock=lambda: now[0]) as lg:
        assert lg.append_batch(batch(3, ts=1)) == (0, 2, 5_000_000)
        (b,) = list(lg.read(0).batches())
        b.validate()  # the CRC was recomputed
        assert b.timestamp_type == 1 and b.max_timestamp == 5_000_000
        assert [r.timestamp for r in b.records()] == [5_000_000] * 3


def test_truncate_to(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", {"segment.bytes": 1500}) as lg:
        for i in range(40):
            lg.append_batch(batch(5, i * 5))
        lg.truncate_to(103)  # inside batch 100..104: that batch starts below, so it stays
        assert lg.log_end_offset == 105
        lg.truncate_to(100)
        assert lg.log_end_offset == 100
        assert lg.append_batch(batch(2, 100)) == (100, 101, -1)
        assert [r.offset for r in lg.read_records(95)] == [95, 96, 97, 98, 99, 100, 101]
        assert lg.verify() == []
    with PartitionLog.open(tmp_path / "t-0") as lg:
        assert lg.log_end_offset == 102


def test_truncate_refused_while_a_view_is_alive(log):
    log.append_batch(batch(3))
    log.append_batch(batch(3, 3))
    mv = log.read(3).memoryview()
    with pytest.raises(errors.KafkaStorageError, match="still alive"):
        log.truncate_to(3)
    mv.release()
    log.truncate_to(3)
    assert log.log_end_offset == 3


def test_delete_segments_before_and_log_start(tmp_path):
    cfg = {"segment.bytes": 1000, "file.delete.delay.ms": 0}
    with PartitionLog.open(tmp_path / "t-0", cfg) as lg:
        for i in range(30):
            lg.append_batch(batch(5, i * 5))
        bases = [s.base_offset for s in lg.segments()]
        assert lg.delete_segments_before(bases[3] + 1) == 3
        assert lg.log_start_offset == bases[3] + 1
        assert [s.base_offset for s in lg.segments()][0] == bases[3]
        with pytest.raises(errors.OffsetOutOfRangeError):
            lg.read(bases[3])
        assert lg.read_records(bases[3] + 1)[0].offset == bases[3] + 1
        with pytest.raises(errors.OffsetOutOfRangeError, match="past the log end"):
            lg.delete_segments_before(10_000)
        # everything: roll first, keep one empty segment
        lg.delete_segments_before(lg.log_end_offset)
        segs = lg.segments()
        assert len(segs) == 1 and segs[0].size == 0 and segs[0].base_offset == 150
        assert lg.append_batch(batch(1, 150)) == (150, 150, -1)
    assert read_checkpoint(tmp_path / "log-start-offset-checkpoint") == {("t", 0): 150}
    with PartitionLog.open(tmp_path / "t-0") as lg:
        assert lg.log_start_offset == 150


def test_deleted_segment_slice_keeps_working(tmp_path):
    cfg = {"segment.bytes": 1000, "file.delete.delay.ms": 0}
    with PartitionLog.open(tmp_path / "t-0", cfg) as lg:
        for i in range(30):
            lg.append_batch(batch(5, i * 5))
        fs = lg.read(0)
        lg.delete_segments_before(lg.segments()[2].base_offset)
        assert not (tmp_path / "t-0" / "00000000000000000000.log").exists()
        assert [r.offset for r in fs.records()][:2] == [0, 1]


def test_wait_for_wakes_on_append(log):
    assert not log.wait_for(0, timeout=0.01)
    result = []
    t = threading.Thread(target=lambda: result.append(log.wait_for(0, timeout=10)))
    t.start()
    time.sleep(0.05)
    log.append_batch(batch(1))
    t.join(5)
    assert result == [True]


def test_wait_for_async(log):
    async def main():
        assert not await log.wait_for_async(0, timeout=0.01)
        waiter = asyncio.ensure_future(log.wait_for_async(0, timeout=10))
        await asyncio.sleep(0.01)
        threading.Thread(target=log.append_batch, args=(batch(1),)).start()
        return await waiter

    assert asyncio.run(main()) is True


def test_close_wakes_waiters(tmp_path):
    lg = PartitionLog.open(tmp_path / "t-0")
    result = []
    t = threading.Thread(target=lambda: result.append(lg.wait_for(0)))
    t.start()
    time.sleep(0.05)
    lg.close()
    t.join(5)
    assert result == [False]


def test_second_writer_is_refused_reader_allowed(tmp_path):
    with PartitionLog.open(tmp_path / "t-0") as lg:
        lg.append_batch(batch(2))
        with pytest.raises(errors.LogLockedError, match="already open for writing"):
            PartitionLog.open(tmp_path / "t-0")
        with PartitionLog.open(tmp_path / "t-0", read_only=True) as ro:
            assert ro.log_end_offset == 2
            with pytest.raises(errors.ReadOnlyError):
                ro.append_batch(batch(1))


def test_read_only_sees_appends_and_rolls(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", {"segment.bytes": 800}) as lg:
        lg.append_batch(batch(3))
        ro = PartitionLog.open(tmp_path / "t-0", read_only=True)
        assert ro.log_end_offset == 3
        for i in range(1, 20):
            lg.append_batch(batch(3, i * 3))
        assert len(lg.segments()) > 2
        assert ro.log_end_offset == 60
        assert [r.offset for r in ro.read_records(0, 1 << 20)][:3] == [0, 1, 2]
        assert ro.read_records(57)[-1].offset == 59
        assert ro.wait_for(59, timeout=1)
        ro.close()


def test_read_only_never_sees_a_partial_batch(tmp_path):
    d = tmp_path / "t-0"
    with PartitionLog.open(d) as lg:
        lg.append_batch(batch(3))
        ro = PartitionLog.open(d, read_only=True)
        seg = d / "00000000000000000000.log"
        whole = batch(4, 3)
        with open(seg, "ab") as f:  # a writer caught half way through a write
            f.write(whole[:50])
        assert ro.log_end_offset == 3
        assert [r.offset for r in ro.read_records(0)] == [0, 1, 2]
        ro.close()


def test_reopen_after_clean_close_is_fast_and_exact(tmp_path):
    d = tmp_path / "t-0"
    with PartitionLog.open(d, {"segment.bytes": 3000}) as lg:
        for i in range(100):
            lg.append_batch(batch(5, i * 5))
    with PartitionLog.open(d) as lg:
        assert lg.recovery.clean and lg.recovery.scanned_segments == 0
        assert lg.log_end_offset == 500
        assert lg.append_batch(batch(1, 500)) == (500, 500, -1)
        assert lg.verify() == []


def test_flush_messages_advances_recovery_point(tmp_path):
    with PartitionLog.open(tmp_path / "t-0", {"flush.messages": 1}) as lg:
        lg.append_batch(batch(2))
        assert lg.recovery_point == 2
        assert read_checkpoint(tmp_path / "recovery-point-offset-checkpoint")[("t", 0)] == 2
    with PartitionLog.open(tmp_path / "u-0") as lg:
        lg.append_batch(batch(2))
        assert lg.recovery_point == 0  # default: no fsync per append
        lg.flush()
        assert lg.recovery_point == 2


def test_unclean_open_scans_only_from_recovery_point(tmp_path):
    d = tmp_path / "t-0"
    lg = PartitionLog.open(d, {"segment.bytes": 1000})
    for i in range(40):
        lg.append_batch(batch(5, i * 5))
    lg.flush()
    lg.append_batch(batch(5, 200))
    nsegs = len(lg.segments())
    lg._release()  # drop the lock without a clean close: as if the process died
    lg._closed = True
    lg2 = PartitionLog.open(d)
    assert not lg2.recovery.clean
    assert 1 <= lg2.recovery.scanned_segments < nsegs
    assert lg2.log_end_offset == 205
    lg2.close()


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(errors.InvalidConfigError, match="segment.bytes"):
        PartitionLog.open(tmp_path / "t-0", {"segment.bytes": "lots"})
    with pytest.raises(errors.InvalidConfigError, match="no.such.key"):
        PartitionLog.open(tmp_path / "t-0", {"no.such.key": 1})
    with pytest.raises(errors.InvalidConfigError, match="retention.ms must be at least -1"):
        PartitionLog.open(tmp_path / "t-0", {"retention.ms": -5})


def test_closed_log_refuses_use(tmp_path):
    lg = PartitionLog.open(tmp_path / "t-0")
    lg.close()
    with pytest.raises(errors.ClosedError):
        lg.append_batch(batch(1))
    with pytest.raises(errors.ClosedError):
        lg.read(0)


def test_producer_batch_with_offset_gaps_is_rejected(log):
    from tests.records.reference import encode_batch, encode_record

    recs = [(1000, b"k", b"v", []), (1001, b"k", b"v", [])]
    area = encode_record(0, 0, b"k", b"v", []) + encode_record(5, 1, b"k", b"v", [])
    raw = bytearray(encode_batch(recs, area=area))
    with pytest.raises(errors.InvalidRecordError, match="offset deltas"):
        log.append_batch(bytes(raw))
    assert log.log_end_offset == 0
    struct.pack_into(">i", raw, 57, 0)  # and a batch with no records at all
    with pytest.raises(errors.KStoreError):
        log.append_batch(bytes(raw))


def _gappy_batch(last_offset_delta, n=1, ts=1000):
    """A batch whose offsets leave a gap, as compaction leaves them (count < delta + 1)."""
    raw = bytearray(batch(n, ts=ts))
    struct.pack_into(">i", raw, 23, last_offset_delta)
    import crc32c

    struct.pack_into(">I", raw, 17, crc32c.crc32c(bytes(raw[21:])))
    return bytes(raw)


def test_producer_batch_must_not_have_gaps_but_copied_ones_may(log):
    gappy = _gappy_batch(9, n=3)
    with pytest.raises(errors.InvalidRecordError, match="lastOffsetDelta 9 does not match its 3"):
        log.append_batch(gappy)
    assert log.append_batch(gappy, validate_records=False) == (0, 9, -1)
    assert [r.offset for r in log.read_records(0)] == [0, 1, 2]
    assert log.log_end_offset == 10


def test_roll_on_offset_overflow(log):
    # The next batch's last offset would not fit in an int32 relative to the segment base.
    log.append_batch(_gappy_batch(2**31 - 10), validate_records=False)
    assert len(log.segments()) == 1
    log.append_batch(batch(20, 0))
    segs = log.segments()
    assert [s.base_offset for s in segs] == [0, 2**31 - 9]
    assert log.read_records(2**31 - 9)[0].key == b"k0"
    assert log.verify() == []


READER = r"""
import sys, time
from kstore.log import PartitionLog
log = PartitionLog.open(sys.argv[1], read_only=True)
target = int(sys.argv[2])
seen = 0
deadline = time.monotonic() + 30
while seen < target and time.monotonic() < deadline:
    if not log.wait_for(seen, timeout=1):
        continue
    for r in log.read_records(seen, 1 << 20):
        assert r.offset == seen, (r.offset, seen)
        assert r.value == b"%d" % seen + b"x" * 20, r
        seen += 1
print(seen, flush=True)
"""


def test_reader_in_another_process_follows_the_writer(tmp_path):
    import subprocess
    import sys

    d = tmp_path / "t-0"
    n = 3000
    with PartitionLog.open(d, {"segment.bytes": 20_000}) as lg:
        lg.append_batch(batch(1, 0))
        proc = subprocess.Popen([sys.executable, "-c", READER, str(d), str(n)],
                                stdout=subprocess.PIPE, text=True)
        for i in range(1, n, 7):
            lg.append_batch(batch(min(7, n - i), i))
        out, _ = proc.communicate(timeout=60)
        assert len(lg.segments()) > 5
    assert proc.returncode == 0
    assert int(out) == n


def test_read_spans_match_a_plain_walk_of_the_headers(tmp_path):
    """read() jumps through the offset index to the end of a large span; the slice must be
    exactly what walking every header gives (whole batches, max_bytes, max_offset), and its
    next_offset what a scan of the slice gives."""
    import random

    from kstore import _core

    rng = random.Random(5)
    with PartitionLog.open(tmp_path / "t-0", {"index.interval.bytes": 300,
                                               "segment.bytes": 400_000}) as lg:
        off = 0
        for _ in range(600):
            n = rng.randint(1, 12)
            lg.append_batch(batch(n, off, size=rng.choice([5, 50, 400])))
            off += n
        for _ in range(400):
            start = rng.randrange(0, off)
            max_bytes = rng.choice([1, 100, 5000, 70_000, 300_000, 1 << 22])
            max_offset = rng.choice([None, rng.randrange(start, off + 1)])
            fs = lg.read(start, max_bytes, max_offset)
            if len(fs) == 0:
                continue
            mm = fs._map
            seg_size = next(s.size for s in lg.segments() if str(s.path) == fs.file.path)
            limit = off if max_offset is None else max_offset
            want = _core.span_batches(mm, fs.position, max_bytes, limit, seg_size)
            assert len(fs) == want, (start, max_bytes, max_offset)
            res = _core.scan(fs.memoryview(), 0, -1, False, False)
            assert fs.next_offset == int(res.last_offsets[-1]) + 1
            assert res.base_offsets[0] <= start <= res.last_offsets[0] or res.base_offsets[0] > start


def test_swap_builds_new_indexes_outside_the_log_lock(tmp_path, monkeypatch):
    """Producers wait only for the renames of a compaction swap, not for index building."""
    from kstore.log import segment as segmod

    with PartitionLog.open(tmp_path / "t-0", {"segment.bytes": 1000,
                                               "file.delete.delay.ms": 0}) as lg:
        for i in range(30):
            lg.append_batch(batch(5, i * 5))
        old = [s.base_offset for s in lg.closed_segments()[:2]]
        data = b"".join(s.path.read_bytes() for s in lg.closed_segments()[:2])
        cleaned = tmp_path / "t-0" / f"{old[0]:020d}.log.cleaned"
        cleaned.write_bytes(data)
        held = []
        real = segmod.Segment._rebuild_indexes

        def spy(self):
            held.append(lg._lock._is_owned())
            return real(self)

        monkeypatch.setattr(segmod.Segment, "_rebuild_indexes", spy)
        lg.replace_segments(old, [cleaned])
        assert held and not any(held)
        assert lg.verify() == []
        assert [r.offset for r in lg.read_records(0, 1 << 20)][:3] == [0, 1, 2]


def test_sendfile_waits_on_a_socket_whose_descriptor_is_above_1024(log):
    """select() refuses descriptors >= 1024; a server embedding kstore has that many."""
    import resource
    import socket
    import threading

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"cannot raise the open-file limit to 1200 (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    for i in range(40):
        log.append_batch(batch(20, i * 20, size=2000))
    fs = log.read(0, max_bytes=1 << 30)
    a, b = socket.socketpair()
    hi = socket.socket(fileno=os.dup2(a.fileno(), 1100))  # a descriptor above select's limit
    a.close()
    hi.setblocking(False)
    got = bytearray()

    def drain():
        while len(got) < len(fs):
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    try:
        assert fs.sendfile(hi, timeout=10) == len(fs)
    finally:
        t.join(10)
        hi.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert bytes(got) == fs.read()
