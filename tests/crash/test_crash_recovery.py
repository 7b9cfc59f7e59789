"""Crash recovery: SIGKILL a real writer process, reopen, and find every acknowledged record
byte-identical (SQLite crash9.test, leveldb fault_injection_test); then torn and corrupt tails
made by hand (leveldb log_test: ShrinkSize, IncrementByte, trailing garbage).

The writer (``_workload.py``) appends a deterministic log: the content of every offset, and the
size and codec of every batch, follow from the offset alone, so the parent can check any record
without having seen it written, including batches written after the last acknowledgement.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kstore.errors import CorruptRecordError
from kstore.log import PartitionLog
from kstore.log.partition import CLEAN_SHUTDOWN_MARKER
from kstore.records import HEADER_SIZE, scan

from . import _workload as wl

WORKLOAD = Path(wl.__file__)
SEED = 20240601
CHILD_MAX_SECONDS = 20.0  # the child gives up (and the test fails) if nobody kills it


# ---------------------------------------------------------------------------------------------
# Helpers


class Child:
    """One writer process; its stdout is drained by a thread so it never blocks on the pipe."""

    def __init__(self, directory: Path, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(directory), str(CHILD_MAX_SECONDS)],
            stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: list[bytes] = []
        self.imported = threading.Event()
        self.first_ack = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                break  # cannot happen with one write per line; never count half a line
            self.lines.append(line)
            if line == b"start\n":
                self.imported.set()
            elif not line.startswith(b"open "):
                self.first_ack.set()
        self.imported.set()
        self.first_ack.set()

    def kill(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # a zombie still has its pid: no race
            self.proc.wait()
        self._reader.join()
        self._stderr.close()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()  # also when a wait above failed: never leave a writer running

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def open_offset(self) -> int | None:
        for line in self.lines:
            if line.startswith(b"open "):
                return int(line.split()[1])
        return None

    @property
    def acks(self) -> list[int]:
        out = []
        for line in self.lines:
            if line == b"start\n" or line.startswith(b"open "):
                continue
            assert line != b"timeout\n", "the writer ran to its deadline without being killed"
            out.append(int(line))
        return out


_expected_raw: dict[int, bytes] = {}


def expected_raw(base_offset: int) -> bytes:
    raw = _expected_raw.get(base_offset)
    if raw is None:
        raw = _expected_raw[base_offset] = wl.build_batch(base_offset)
    return raw


def check_records(log: PartitionLog, end: int, start: int = 0) -> None:
    """Batches [start, end) are exactly the workload's: offsets in order without gaps or
    duplicates, each record's key, value, headers and timestamp as generated, and each batch
    byte-identical to the one the writer built (but for the base offset and leader epoch, which
    the log assigns; gzip batches carry a time in their header, so only their records count)."""
    offset = start
    while offset < end:
        fs = log.read(offset, max_bytes=1 << 20, max_offset=end)
        assert len(fs) > 0, f"nothing read at offset {offset} (log end {log.log_end_offset})"
        for batch in fs.batches():
            base = batch.base_offset
            assert base == offset, f"batch at offset {base}, expected one at {offset}"
            n = wl.batch_records(base)
            assert batch.record_count == n and batch.last_offset == base + n - 1, base
            if wl.batch_codec(base) != "gzip":
                raw, want = bytes(batch.raw()), expected_raw(base)
                assert raw[8:12] == want[8:12] and raw[16:] == want[16:], (
                    f"batch at offset {base} differs from the one written")
            for r in batch.records():
                key, value, headers, ts = wl.record(offset)
                assert r.offset == offset
                got = (r.key, r.value, tuple(r.headers), r.timestamp)
                assert got == (key, value, headers, ts), f"record {offset} differs"
                offset += 1
    assert offset == end


def write_workload(directory: Path, config: dict, batches: int) -> int:
    """Append ``batches`` workload batches to a fresh log and close it cleanly; returns its end."""
    with PartitionLog.open(directory, config) as log:
        base = 0
        for _ in range(batches):
            _, last, _ = log.append_batch(wl.build_batch(base))
            base = last + 1
        return log.log_end_offset


def last_log(directory: Path) -> Path:
    return sorted(directory.glob("*.log"))[-1]


def batches_in(path: Path):
    data = path.read_bytes()
    res = scan(data)
    assert res.ok, res.error
    return data, res


# ---------------------------------------------------------------------------------------------
# SIGKILL


@pytest.mark.slow
def test_sigkill_writer_loses_no_acknowledged_record(tmp_path):
    """25 writers, each killed 0-50 ms into appending (some during a roll: a segment is
    256 KiB); after each, a writer open must run recovery and find every acknowledged record,
    and the batches written but not yet acknowledged, intact and in order."""
    rng = random.Random(SEED)
    directory = tmp_path / "crash-0"
    end = 0  # log end after the last check
    acked_total = 0
    for i in range(25):
        with Child(directory, tmp_path / f"writer-{i}.stderr") as child:
            assert child.first_ack.wait(30), "writer did not start"
            time.sleep(rng.uniform(0, 0.05))
        assert child.proc.returncode == -signal.SIGKILL, child.stderr()
        acks = child.acks
        assert child.open_offset == end, (
            f"iteration {i}: the writer reopened at {child.open_offset}, the log ended at {end}")
        assert acks, f"iteration {i}: no acknowledgement before the kill\n{child.stderr()}"
        assert acks[0] >= end
        assert all(b > a for a, b in zip(acks, acks[1:], strict=False)), acks
        acked_total += len(acks)

        log = PartitionLog.open(directory, wl.CONFIG)
        try:
            assert log.recovery is not None
            assert log.recovery.clean is False, f"iteration {i}: {log.recovery}"
            assert log.recovery.scanned_segments >= 1, log.recovery
            assert log.log_start_offset == 0
            new_end = log.log_end_offset
            assert new_end > acks[-1], (
                f"iteration {i}: acknowledged offset {acks[-1]} lost; log end {new_end} "
                f"({log.recovery})")
            check_records(log, new_end)
            assert log.verify() == []
        finally:
            log.close()
        end = new_end

    segments = sorted(directory.glob("*.log"))
    assert len(segments) >= 5, f"too few rolls to test kills around them: {segments}"
    assert acked_total > 25

    with PartitionLog.open(directory, wl.CONFIG) as log:
        assert log.recovery.clean is True
        assert log.recovery.scanned_segments == 0
        assert log.recovery.truncated_bytes == 0
        assert log.log_end_offset == end
        check_records(log, end)


def test_sigkill_repeatedly_without_clean_close_or_parent_recovery(tmp_path):
    """Writers killed one after another, each reopening the crashed log itself: some are killed
    during their own recovery, some while appending after recovering a torn tail. A read-only
    open between kills already sees every acknowledged record; one writer open at the end
    recovers and finds them all."""
    rng = random.Random(SEED + 1)
    directory = tmp_path / "crash-0"
    acked = -1
    opened = 0
    for i in range(12):
        with Child(directory, tmp_path / f"writer-{i}.stderr") as child:
            if i % 2:
                # From just before PartitionLog.open: most of these land in recovery (which
                # rebuilds and fsyncs indexes, some ms a segment), the rest in the first appends.
                assert child.imported.wait(30), "writer did not start"
                time.sleep(rng.uniform(0, 0.04))
            else:
                assert child.first_ack.wait(30), "writer did not start"
                time.sleep(rng.uniform(0, 0.03))
        assert child.proc.returncode == -signal.SIGKILL, child.stderr()
        if child.open_offset is not None:
            opened += 1
            assert child.open_offset > acked, (
                f"iteration {i}: the writer recovered the log to {child.open_offset}, "
                f"but {acked} was acknowledged")
        if child.acks:
            acked = child.acks[-1]

        reader = PartitionLog.open(directory, wl.CONFIG, read_only=True)
        try:
            assert reader.log_end_offset > acked
            check_records(reader, acked + 1)
        finally:
            reader.close()
        assert not (directory / CLEAN_SHUTDOWN_MARKER).exists()

    assert acked >= 0 and opened >= 6
    with PartitionLog.open(directory, wl.CONFIG) as log:
        assert log.recovery.clean is False
        end = log.log_end_offset
        assert end > acked
        check_records(log, end)
        assert log.verify() == []


# ---------------------------------------------------------------------------------------------
# Torn and corrupt tails, by hand

SMALL = {"segment.bytes": 16384}


def _damage_last_batch(directory: Path, how: str, rng: random.Random) -> tuple[int, int, int]:
    """Damage the last segment's tail; returns (expected log end, bytes recovery must cut,
    expected length of the file afterwards)."""
    path = last_log(directory)
    data, res = batches_in(path)
    assert len(res) >= 2, "the last segment needs an intact batch before the damaged one"
    pos, size = int(res.positions[-1]), int(res.sizes[-1])
    last_base = int(res.base_offsets[-1])
    if how == "cut_mid_batch":
        keep = pos + size // 2
        os.truncate(path, keep)
        return last_base, size // 2, pos
    if how == "flipped_byte":
        at = pos + HEADER_SIZE + (size - HEADER_SIZE) // 2
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes([data[at] ^ 0x01]))
        return last_base, size, pos
    if how.startswith("garbage_"):
        if how == "garbage_random":
            junk = rng.randbytes(100)
        elif how == "garbage_zeros":
            junk = bytes(4096)  # what a preallocated or half-flushed file shows after a crash
        elif how == "garbage_header_only":
            junk = data[pos:pos + HEADER_SIZE]  # a batch header whose body never arrived
        else:  # garbage_stale_batch: a whole, valid copy of the last batch (offsets go back)
            junk = data[pos:pos + size]
        with open(path, "ab") as f:
            f.write(junk)
        return int(res.last_offsets[-1]) + 1, len(junk), len(data)
    raise AssertionError(how)


@pytest.mark.parametrize("how", [
    "cut_mid_batch", "flipped_byte", "garbage_random", "garbage_zeros", "garbage_header_only",
    "garbage_stale_batch",
])
def test_torn_or_corrupt_tail_is_cut_at_the_damaged_batch(tmp_path, how):
    directory = tmp_path / "torn-0"
    end = write_workload(directory, SMALL, 60)
    segments_before = sorted(directory.glob("*.log"))
    assert len(segments_before) >= 3
    expected_end, cut, new_len = _damage_last_batch(directory, how, random.Random(SEED))
    path = last_log(directory)
    len_before = path.stat().st_size
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()

    with PartitionLog.open(directory, SMALL) as log:
        assert log.recovery.clean is False
        assert log.recovery.truncated_bytes == cut, log.recovery
        assert log.recovery.reason, log.recovery
        assert log.log_end_offset == expected_end
        assert path.stat().st_size == new_len == len_before - cut
        assert sorted(directory.glob("*.log")) == segments_before
        check_records(log, expected_end)
        assert log.verify() == []
        # The log goes on from the cut with the same sequence.
        _, last, _ = log.append_batch(wl.build_batch(expected_end))
        check_records(log, last + 1)
    assert expected_end <= end

    with PartitionLog.open(directory, SMALL) as log:
        assert log.recovery.clean is True
        check_records(log, log.log_end_offset)
        assert log.verify() == []


@pytest.mark.parametrize("marker", ["clean_shutdown", "marker_removed"])
def test_flipped_byte_in_old_segment_is_reported_never_returned(tmp_path, marker):
    directory = tmp_path / "rot-0"
    end = write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    assert len(logs) >= 3
    old = logs[0]
    data, res = batches_in(old)
    assert len(res) >= 3
    i = len(res) // 2
    pos, size, base = int(res.positions[i]), int(res.sizes[i]), int(res.base_offsets[i])
    at = pos + HEADER_SIZE + (size - HEADER_SIZE) // 2
    with open(old, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x10]))
    if marker == "marker_removed":
        (directory / CLEAN_SHUTDOWN_MARKER).unlink()

    with PartitionLog.open(directory, SMALL) as log:
        # Recovery starts at the recovery point (the log end): the old segment stays as it is.
        assert log.log_end_offset == end
        assert old.stat().st_size == len(data)
        problems = log.verify()
        assert problems, "verify() missed a flipped byte"
        assert any(str(old) in p for p in problems), problems
        assert not any(str(logs[-1]) in p for p in problems), problems
        with pytest.raises(CorruptRecordError):
            log.read(base).records()
        with pytest.raises(CorruptRecordError):
            log.read(base + wl.batch_records(base) - 1).records()
        # The batches around it are still served, one at a time.
        prev = int(res.base_offsets[i - 1])
        assert [b.base_offset for b in log.read(prev, max_bytes=1).batches()] == [prev]
        nxt = int(res.base_offsets[i + 1])
        check_records(log, nxt + wl.batch_records(nxt), start=nxt)
        check_records(log, end, start=int(logs[1].stem))
