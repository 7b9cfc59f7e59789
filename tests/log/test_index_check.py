"""Damaged or missing .index/.timeindex files (issue 13 item 4): `kstore verify` checks every
entry against the data, as Kafka's DumpLogSegments does, and reports such damage as
repairable (exit 3, one warning line per file, the command that fixes it) rather than "sound";
`kstore repair-indexes` rebuilds them from the data and verify is clean again.

Every fault of the class is made by hand on a closed and on the active segment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kstore
from kstore.cli import main
from kstore.log import PartitionLog
from kstore.records import BatchBuilder, scan

TOPIC = "idx"
CONFIG = {"segment.bytes": 24000, "index.interval.bytes": 600}
BATCHES = 260


def value(offset: int) -> bytes:
    return b"value-%06d-" % offset + b"v" * (offset * 13 % 90)


def timestamp(offset: int) -> int:
    # Not monotonic: the time index holds the max so far, not the last timestamp.
    return 1_700_000_000_000 + offset * 10 + (offset % 7) * 25


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    with kstore.open(d) as store:
        store.create_topic(TOPIC, config=CONFIG)
        log = store.partition(TOPIC, 0)
        offset = 0
        for i in range(BATCHES):
            b = BatchBuilder()
            for o in range(offset, offset + 1 + i % 4):
                b.append(value(o), key=b"k%d" % (o % 5), timestamp=timestamp(o))
            _, last, _ = log.append_batch(b.build())
            offset = last + 1
    return d


def pdir(data: Path) -> Path:
    return data / f"{TOPIC}-0"


def segment(data: Path, which: str) -> Path:
    logs = sorted(pdir(data).glob("*.log"))
    assert len(logs) >= 3
    return logs[0] if which == "closed" else logs[-1]


def offset_entries(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    return np.frombuffer(raw, dtype=">u4").reshape(-1, 2).astype(np.int64)


def put(path: Path, at: int, raw: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(raw)


def _u32(n: int) -> bytes:
    return int(n).to_bytes(4, "big")


def damage(log_path: Path, fault: str) -> Path:
    """Damage the index files of the segment ``log_path``; returns the file damaged."""
    idx, tidx = log_path.with_suffix(".index"), log_path.with_suffix(".timeindex")
    base = int(log_path.stem)
    res = scan(log_path.read_bytes())
    assert res.ok
    e = offset_entries(idx)
    assert len(e) >= 3, "the segment needs a few index entries"
    n_t = tidx.stat().st_size // 12
    assert n_t >= 3
    if fault == "missing_index":
        idx.unlink()
        return idx
    if fault == "missing_timeindex":
        tidx.unlink()
        return tidx
    if fault == "index_odd_length":
        os.truncate(idx, idx.stat().st_size - 3)
        return idx
    if fault == "timeindex_odd_length":
        os.truncate(tidx, tidx.stat().st_size - 5)
        return tidx
    if fault == "index_out_of_order":
        put(idx, 8, idx.read_bytes()[16:24] + idx.read_bytes()[8:16])
        return idx
    if fault == "index_past_end":
        put(idx, (len(e) - 1) * 8 + 4, _u32(log_path.stat().st_size + 100))
        return idx
    if fault == "index_mid_batch":
        put(idx, 8 + 4, _u32(int(e[1][1]) + 1))
        return idx
    if fault == "index_offset_outside_batch":
        # entry 1 names an offset below the batch it points at, still above entry 0's
        i = int(np.searchsorted(res.positions, e[1][1]))
        wrong = int(res.base_offsets[i]) - 1 - base
        assert wrong > e[0][0]
        put(idx, 8, _u32(wrong))
        return idx
    if fault == "index_zeroed":
        idx.write_bytes(bytes(idx.stat().st_size))
        return idx
    if fault == "timeindex_zeroed":
        tidx.write_bytes(bytes(tidx.stat().st_size))
        return tidx
    if fault == "timeindex_backwards":
        raw = tidx.read_bytes()
        put(tidx, 12, raw[24:32])  # entry 1's timestamp becomes entry 2's ...
        put(tidx, 24, raw[12:20])  # ... and the other way round
        return tidx
    if fault == "timeindex_offset_past_end":
        put(tidx, (n_t - 1) * 12 + 8, _u32(int(res.last_offsets[-1]) - base + 50))
        return tidx
    if fault == "timeindex_wrong_timestamp":
        raw = tidx.read_bytes()
        ts = int.from_bytes(raw[12:20], "big")
        nxt = int.from_bytes(raw[24:32], "big")
        assert nxt > ts + 1
        put(tidx, 12, (ts + 1).to_bytes(8, "big"))  # still rising, but no batch has it
        return tidx
    raise AssertionError(fault)


FAULTS = ["missing_index", "missing_timeindex", "index_odd_length", "timeindex_odd_length",
          "index_out_of_order", "index_past_end", "index_mid_batch",
          "index_offset_outside_batch", "index_zeroed", "timeindex_zeroed",
          "timeindex_backwards", "timeindex_offset_past_end", "timeindex_wrong_timestamp"]


def verify(data: Path) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["verify", str(data)])
    return r.exit_code, r.stdout, r.stderr


def read_all(data: Path) -> list[tuple[int, bytes, int]]:
    out = []
    with kstore.open(data, read_only=True) as store:
        log = store.partition(TOPIC, 0)
        offset = 0
        while offset < log.log_end_offset:
            for r in log.read_records(offset):
                out.append((r.offset, r.value, r.timestamp))
                offset = r.offset + 1
        # lookups by time go through the time index, then the offset index
        for o in (0, 57, offset - 1):
            assert log.offset_for_time(timestamp(o)) <= o
    return out


# ---------------------------------------------------------------------------------------------


def test_sound_log_is_sound(data):
    code, _, err = verify(data)
    assert code == 0, err
    assert "sound" in err and "repairable" not in err
    with kstore.open(data, read_only=True) as store:
        assert store.partition(TOPIC, 0).verify() == []


@pytest.mark.parametrize("which", ["closed", "active"])
@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_index_is_repairable_and_repair_makes_it_sound(data, fault, which):
    log_path = segment(data, which)
    logs_before = {p: p.read_bytes() for p in pdir(data).glob("*.log")}
    records_before = read_all(data)
    damaged = damage(log_path, fault)

    # The log API names the file ...
    with kstore.open(data, read_only=True) as store:
        problems = store.partition(TOPIC, 0).verify()
    assert len(problems) == 1 and problems[0].startswith(f"{damaged}: "), problems
    # ... and the CLI calls it repairable: exit 3, a warning line for the file, the command.
    code, out, err = verify(data)
    assert code == 3, err
    lines = [x for x in err.splitlines() if x.startswith("warning: repairable:")]
    assert len(lines) == 1 and str(damaged) in lines[0], err
    assert f"kstore repair-indexes --data {data}" in err
    assert "CORRUPT" not in out and "REPAIRABLE" in out
    report = json.loads(CliRunner().invoke(main, ["verify", str(data), "--json"]).stdout)
    assert report["ok"] is False and report["problems"] == []
    assert len(report["repairable"]) == 1 and report["repair_command"]

    r = CliRunner().invoke(main, ["repair-indexes", str(data)])
    assert r.exit_code == 0, r.stderr
    assert f"rebuilt: {damaged}" in r.stderr
    code, _, err = verify(data)
    assert code == 0, err
    # The data is untouched and reads the same.
    assert {p: p.read_bytes() for p in pdir(data).glob("*.log")} == logs_before
    assert read_all(data) == records_before
    with kstore.open(data, read_only=True) as store:
        assert store.partition(TOPIC, 0).verify() == []


def test_data_corruption_outranks_index_damage(data):
    damage(segment(data, "closed"), "index_mid_batch")
    log_path = segment(data, "active")
    res = scan(log_path.read_bytes())
    put(log_path, int(res.positions[1]) + 70, b"\xff")
    code, out, err = verify(data)
    assert code == 2 and "CORRUPT" in out
    # repair-indexes fixes what it can and leaves the damaged segment for verify to report.
    r = CliRunner().invoke(main, ["repair-indexes", str(data)])
    assert r.exit_code == 2 and f"skipped: {log_path}" in r.stderr
    code, _, err = verify(data)
    assert code == 2 and "repairable" not in err


def test_repair_refuses_beside_a_writer_and_verify_tolerates_its_writes(data):
    damage(segment(data, "closed"), "index_zeroed")
    with kstore.open(data) as store:  # a writer holds the lock
        log = store.partition(TOPIC, 0)
        r = subprocess.run([sys.executable, "-m", "kstore", "repair-indexes", str(data)],
                           capture_output=True, timeout=60)
        assert r.returncode == 2 and b"is open for writing" in r.stderr, r.stderr
        # verify, read-only beside the writer, still reports the damage as repairable
        r = subprocess.run([sys.executable, "-m", "kstore", "verify", str(data)],
                           capture_output=True, timeout=60)
        assert r.returncode == 3, r.stderr
        b = BatchBuilder()
        b.append(b"more", timestamp=timestamp(10**6))
        log.append_batch(b.build())
    r = subprocess.run([sys.executable, "-m", "kstore", "repair-indexes", str(data)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "kstore", "verify", str(data)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_verify_help_documents_the_exit_codes():
    r = CliRunner().invoke(main, ["verify", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "0 sound" in text and "2 data corruption" in text and "3 the data is sound" in text
    assert "kstore repair-indexes" in text


def test_writer_partition_log_verify_names_the_damaged_index(tmp_path):
    d = tmp_path / "w-0"
    with PartitionLog.open(d, CONFIG) as log:
        for i in range(BATCHES):
            b = BatchBuilder()
            b.append(value(i), timestamp=timestamp(i))
            log.append_batch(b.build())
    damaged = damage(sorted(d.glob("*.log"))[0], "index_mid_batch")
    with PartitionLog.open(d, CONFIG) as log:
        problems = log.verify()
        assert len(problems) == 1 and problems[0].startswith(f"{damaged}: entry 1 ")
        assert "inside a batch" in problems[0]
        rebuilt, skipped = log.repair_indexes()
        assert skipped == [] and len(rebuilt) == 1
        assert log.verify() == []


def test_index_files_deleted_under_a_read_only_verify_are_not_damage(data):
    """Retention deletes a segment (and its indexes) while a read-only verify looks at it: the
    missing index files are not reported as damage (the segment is gone, not broken)."""
    with kstore.open(data, read_only=True) as store:
        ro = store.partition(TOPIC, 0)
        ro.log_end_offset  # noqa: B018  (loads the segments)
        first = ro._segments[0]
        scans = [scan(first.log_path.read_bytes())]
        assert first.verify_indexes(scans) == []
        with kstore.open(data) as writer:
            w = writer.partition(TOPIC, 0)
            w.update_config({"file.delete.delay.ms": 0})
            assert w.delete_segments_before(int(segment(data, "active").stem)) == 2
        assert not first.offset_index.path.exists()
        assert first.verify_indexes(scans) == []
        # The same files missing from a segment that is still there are damage.
        alive = ro._segments[-1]
        alive.time_index.path.unlink()
        alive_scan = [scan(alive.log_path.read_bytes())]
        assert alive.verify_indexes(alive_scan) == [f"{alive.time_index.path}: missing"]


# ---------------------------------------------------------------------------------------------
# Interrupted compaction swaps (found by the index checks: tests/test_cleaner.py's SIGKILL test
# left a cleaned segment's .timeindex beside an original .log)


def _closed_log(tmp_path: Path) -> Path:
    d = tmp_path / "swap-0"
    with PartitionLog.open(d, CONFIG) as log:
        for i in range(BATCHES):
            b = BatchBuilder()
            b.append(value(i), key=b"k", timestamp=timestamp(i))
            log.append_batch(b.build())
    return d


def test_index_swap_without_its_log_swap_does_not_replace_the_index(tmp_path):
    """A crash in the first phase of a swap (the indexes became .swap, the .log did not): the
    swap never happened, so the original segment keeps its own indexes."""
    d = _closed_log(tmp_path)
    first, second = sorted(d.glob("*.log"))[:2]
    originals = {ext: first.with_suffix(ext).read_bytes() for ext in (".index", ".timeindex")}
    for ext in (".index", ".timeindex"):  # some other segment's indexes, as a cleaner's output
        first.with_name(first.stem + ext + ".swap").write_bytes(second.with_suffix(ext).read_bytes())
    with PartitionLog.open(d, CONFIG) as log:
        assert {ext: first.with_suffix(ext).read_bytes() for ext in originals} == originals
        assert not list(d.glob("*.swap"))
        assert log.verify() == []


def test_log_swap_whose_indexes_were_already_renamed_is_completed_with_sound_indexes(tmp_path):
    """A crash in the last phase (the originals are gone, the indexes were renamed from .swap,
    the .log not yet): the open completes the swap and the indexes that came with it stay."""
    d = _closed_log(tmp_path)
    first = sorted(d.glob("*.log"))[0]
    first.rename(first.with_name(first.name + ".swap"))
    with PartitionLog.open(d, CONFIG) as log:
        assert first.exists() and not list(d.glob("*.swap"))
        assert first.with_suffix(".index").stat().st_size > 0
        assert first.with_suffix(".timeindex").stat().st_size > 0
        assert log.verify() == []
