"""Recovery keeps what it cuts (issue 13 item 3): a corrupt batch in the middle of a segment
makes an unclean open end the log before it, as in Kafka, but the bytes from that batch to the
end of the segment, and every later segment, go to side files (``*.log.corrupt-<position>``)
byte for byte before anything shrinks, and the warning names them.

Logs are written by real writer processes killed with SIGKILL (``_workload.py``) and by
clean writers, then damaged by hand in every field of a batch header and in its body.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kstore
from kstore.log import PartitionLog
from kstore.log.checkpoint import RECOVERY_POINT, CheckpointFile
from kstore.log.partition import CLEAN_SHUTDOWN_MARKER
from kstore.records import HEADER_SIZE, BatchBuilder, scan

from . import _workload as wl
from .test_crash_recovery import SMALL, Child, batches_in, check_records, write_workload

DEADLINE = 30.0

# Each damages the batch at ``pos`` (``size`` bytes) in ``data``; the batch then fails the
# scanner's checks. Byte 12..15 (partition leader epoch) is outside the CRC and not checked,
# as in Kafka: damage there is not corruption recovery can see.
FIELD_DAMAGE = {
    "base_offset_back": lambda data, pos, size: (pos, (0).to_bytes(8, "big")),
    "base_offset_far": lambda data, pos, size: (pos, (2**40).to_bytes(8, "big")),
    "length_huge": lambda data, pos, size: (pos + 8, (2**31 - 1).to_bytes(4, "big")),
    "length_past_segment": lambda data, pos, size: (pos + 8, (len(data) - pos).to_bytes(4, "big")),
    "length_short": lambda data, pos, size: (pos + 8, (size - 12 - 7).to_bytes(4, "big")),
    "length_zero": lambda data, pos, size: (pos + 8, bytes(4)),
    "magic": lambda data, pos, size: (pos + 16, b"\x01"),
    "crc": lambda data, pos, size: (pos + 17, bytes([data[pos + 17] ^ 0xFF])),
    "attributes": lambda data, pos, size: (pos + 21, bytes([data[pos + 21] ^ 0x04])),
    "last_offset_delta": lambda data, pos, size: (pos + 23, bytes([data[pos + 23] ^ 0x01])),
    "records_count": lambda data, pos, size: (pos + 57, bytes([data[pos + 57] ^ 0x01])),
    "body_byte": lambda data, pos, size: (pos + HEADER_SIZE + (size - HEADER_SIZE) // 2,
                                          bytes([data[pos + HEADER_SIZE + (size - HEADER_SIZE) // 2] ^ 0x10])),
    "zeroed_batch": lambda data, pos, size: (pos, bytes(size)),
}


def damage(path: Path, how: str, index: int | None = None) -> tuple[int, int, bytes]:
    """Damage a batch in the middle of ``path``; returns (its position, its base offset, the
    file's bytes from that position on as they are after the damage)."""
    data = path.read_bytes()
    res = scan(data)  # a SIGKILLed writer may have left a torn batch at the end: it stays
    assert len(res) >= 3, "the segment needs batches before and after the damaged one"
    i = len(res) // 2 if index is None else index
    pos, size, base = int(res.positions[i]), int(res.sizes[i]), int(res.base_offsets[i])
    at, new = FIELD_DAMAGE[how](data, pos, size)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(new)
    return pos, base, path.read_bytes()[pos:]


def set_recovery_point(directory: Path, offset: int) -> None:
    topic, _, part = directory.name.rpartition("-")
    CheckpointFile.for_path(directory.parent / RECOVERY_POINT).update({(topic, int(part)): offset})


def side_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".log.corrupt-" in p.name)


def run_child_until(directory: Path, tmp_path: Path, name: str, done) -> Child:
    """A workload writer, SIGKILLed once ``done(child)`` holds (checked every 10 ms)."""
    child = Child(directory, tmp_path / f"{name}.stderr")
    with child:
        deadline = time.monotonic() + DEADLINE
        while not done(child):
            assert child.proc.poll() is None, child.stderr()
            assert time.monotonic() < deadline, "the writer did not get there in time"
            time.sleep(0.01)
    return child


def fill_last_segment(directory: Path, tmp_path: Path) -> None:
    """Writers killed until the last segment holds 3 batches (one may roll just before its
    kill, leaving an empty last segment)."""
    for attempt in range(5):
        run_child_until(directory, tmp_path, f"fill{attempt}",
                        last_segment_batches_at_least(directory, 3))
        if len(scan(sorted(directory.glob("*.log"))[-1].read_bytes())) >= 3:
            return
    raise AssertionError("every writer rolled just before its kill")


def segments_at_least(directory: Path, n: int):
    """``n`` segments there, and the writer acknowledged a batch (on a loaded machine it can
    roll before its first acknowledgement is read)."""
    return lambda child: bool(child.acks) and len(list(directory.glob("*.log"))) >= n


def last_segment_batches_at_least(directory: Path, n: int):
    """The last segment holds ``n`` whole batches (and the writer acknowledged one)."""
    def done(child: Child) -> bool:
        last = sorted(directory.glob("*.log"))[-1:]
        return bool(child.acks) and bool(last) and len(scan(last[0].read_bytes())) >= n
    return done


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(FIELD_DAMAGE))
def test_corrupt_batch_mid_segment_is_moved_to_a_side_file_with_later_segments(tmp_path, how, caplog):
    directory = tmp_path / "side-0"
    end = write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    assert len(logs) >= 4
    victim = logs[1]
    later = {p: p.read_bytes() for p in logs[2:]}
    victim_last = int(scan(victim.read_bytes()).last_offsets[-1])
    pos, bad_base, cut_bytes = damage(victim, how)
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(victim.stem))  # recovery starts at the damaged segment

    with caplog.at_level(logging.WARNING, logger="kstore.log"):
        log = PartitionLog.open(directory, SMALL)
    with log:
        # The log ends before the bad batch, as Kafka's would.
        assert log.log_end_offset == bad_base
        assert victim.stat().st_size == pos
        assert sorted(directory.glob("*.log")) == logs[:2]
        check_records(log, bad_base)
        assert log.verify() == []
        # ... but nothing is destroyed: the cut bytes and the later segments are side files.
        sides = side_files(directory)
        victim_side = victim.with_name(f"{victim.name}.corrupt-{pos}")
        assert victim_side in sides
        assert victim_side.read_bytes() == cut_bytes
        for p, content in later.items():
            moved = p.with_name(f"{p.name}.corrupt-0")
            assert moved.read_bytes() == content
            assert not p.with_suffix(".index").exists() and not p.with_suffix(".timeindex").exists()
        assert len(sides) == 1 + len(later)
        assert log.recovery.side_files == (victim_side, *(p.with_name(f"{p.name}.corrupt-0")
                                                          for p in later))
        assert log.quarantined_files() == sides
        # The warnings say where the bytes went, from which byte, and which offsets.
        text = caplog.text
        assert str(victim_side) in text and f"from byte {pos}" in text
        assert f"offsets {bad_base}..{victim_last} " in text
        for p in later:
            last = int(scan(later[p]).last_offsets[-1])
            assert f"{p.name}.corrupt-0 (offsets {int(p.stem)}..{last}, was {p.name})" in text
        # The log goes on from the cut.
        _, last, _ = log.append_batch(wl.build_batch(bad_base))
        check_records(log, last + 1)
    assert bad_base < end
    # Side files are not segments: clean and unclean reopens and read-only opens ignore them.
    for marker in (True, False):
        if not marker:
            (directory / CLEAN_SHUTDOWN_MARKER).unlink()
            set_recovery_point(directory, 0)
        with PartitionLog.open(directory, SMALL) as log:
            assert log.recovery.truncated_bytes == 0 and log.recovery.side_files == ()
            check_records(log, last + 1)
            with PartitionLog.open(directory, SMALL, read_only=True) as ro:
                assert ro.log_end_offset == last + 1
                assert [s.path for s in ro.segments()] == sorted(directory.glob("*.log"))
    assert side_files(directory) == sides
    assert victim_side.read_bytes() == cut_bytes


@pytest.mark.parametrize("how", ["body_byte", "length_huge", "base_offset_back"])
def test_sigkilled_writer_then_corruption_in_last_segment(tmp_path, how, caplog):
    """A real writer killed mid-stream, a batch damaged in the middle of the segment recovery
    scans; then a second writer (recovering, appending, killed) and the same damage at the same
    byte: the second side file gets its own name, the first is untouched."""
    directory = tmp_path / "killed-0"
    run_child_until(directory, tmp_path, "first", segments_at_least(directory, 3))
    fill_last_segment(directory, tmp_path)
    victim = sorted(directory.glob("*.log"))[-1]
    pos, bad_base, cut_bytes = damage(victim, how, index=1)

    with caplog.at_level(logging.WARNING, logger="kstore.log"):
        log = PartitionLog.open(directory, wl.CONFIG)
    with log:
        assert log.recovery.clean is False
        assert log.log_end_offset == bad_base
        check_records(log, bad_base)
        first_side = victim.with_name(f"{victim.name}.corrupt-{pos}")
        assert log.recovery.side_files == (first_side,)
        assert first_side.read_bytes() == cut_bytes
        assert str(first_side) in caplog.text
    # A second writer recovers (nothing to cut), appends and is killed.
    child = run_child_until(directory, tmp_path, "second",
                            lambda c: bool(c.acks) and len(scan(victim.read_bytes())) >= 3)
    assert child.open_offset == bad_base and child.acks
    pos2, base2, cut2 = damage(victim, how, index=1)
    assert pos2 == pos and base2 == bad_base
    set_recovery_point(directory, int(victim.stem))  # it may have rolled (and fsynced) since
    with PartitionLog.open(directory, wl.CONFIG) as log:
        second_side = first_side.with_name(first_side.name + ".1")
        assert log.recovery.side_files[0] == second_side
        assert second_side.read_bytes() == cut2
        assert first_side.read_bytes() == cut_bytes
        check_records(log, bad_base)
        _, last, _ = log.append_batch(wl.build_batch(bad_base))
        check_records(log, last + 1)


def test_sigkill_torn_tails_leave_no_side_file(tmp_path):
    """The routine crash: whatever a SIGKILL leaves at the end of the log (at most a batch
    whose write it cut short) is cut without a side file, and no acknowledged record is lost."""
    directory = tmp_path / "routine-0"
    acked = -1
    for round_ in range(4):
        child = run_child_until(directory, tmp_path, f"r{round_}",
                                segments_at_least(directory, round_ + 2))
        assert child.acks, child.stderr()
        acked = max(acked, child.acks[-1])
        with PartitionLog.open(directory, wl.CONFIG) as log:
            assert log.recovery.side_files == ()
            assert log.log_end_offset > acked
            check_records(log, log.log_end_offset)
        (directory / CLEAN_SHUTDOWN_MARKER).unlink()  # the next writer recovers as after a crash
    assert side_files(directory) == []


TAILS = {
    # (bytes appended after the last batch or the cut made, whether they must be kept)
    "partial_write": False,     # the next batch, cut short: a write the crash interrupted
    "zeros": False,             # pages never written: nothing to keep
    "header_only_stale": True,  # a header naming an older offset: not this log's next write
    "random": True,
    "stale_whole_batch": True,
    "next_batch_bad_crc": True,  # whole, but damaged: kept
}


@pytest.mark.parametrize("tail", sorted(TAILS))
def test_tail_damage_goes_to_a_side_file_unless_it_is_a_partial_write_or_zeros(tmp_path, tail):
    directory = tmp_path / "tail-0"
    end = write_workload(directory, SMALL, 30)
    path = sorted(directory.glob("*.log"))[-1]
    data, res = batches_in(path)
    nxt = bytearray(wl.build_batch(end))
    nxt[0:8] = end.to_bytes(8, "big")
    if tail == "partial_write":
        junk = bytes(nxt[: len(nxt) // 2])
    elif tail == "zeros":
        junk = bytes(5000)
    elif tail == "header_only_stale":
        junk = data[int(res.positions[-1]):int(res.positions[-1]) + HEADER_SIZE]
    elif tail == "random":
        junk = os.urandom(300)
    elif tail == "stale_whole_batch":
        junk = data[int(res.positions[-1]):]
    else:
        nxt[-1] ^= 0x01
        junk = bytes(nxt)
    with open(path, "ab") as f:
        f.write(junk)
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    with PartitionLog.open(directory, SMALL) as log:
        assert log.log_end_offset == end
        assert log.recovery.truncated_bytes == len(junk)
        assert path.read_bytes() == data
        if TAILS[tail]:
            side = path.with_name(f"{path.name}.corrupt-{len(data)}")
            assert log.recovery.side_files == (side,)
            assert side.read_bytes() == junk
        else:
            assert log.recovery.side_files == ()
            assert side_files(directory) == []
        check_records(log, end)


def test_retention_and_truncation_leave_side_files_alone(tmp_path):
    directory = tmp_path / "keep-0"
    end = write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    _, bad_base, _ = damage(logs[-2], "body_byte")
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(logs[-2].stem))
    with PartitionLog.open(directory, {**SMALL, "file.delete.delay.ms": 0}) as log:
        sides = side_files(directory)
        assert len(sides) == 2
        contents = {p: p.read_bytes() for p in sides}
        assert log.delete_segments_before(int(logs[2].stem)) == 2
        log.truncate_to(bad_base - 1)
        log.roll()
        assert all(".corrupt-" not in str(s.path) for s in log.segments())
    assert bad_base < end
    assert {p: p.read_bytes() for p in side_files(directory)} == contents


def test_dump_log_reads_a_side_file_past_a_damaged_length(tmp_path):
    """`kstore dump-log <side file>` shows the kept batches; a batch whose length field is
    damaged is reported and skipped, and the dump goes on at the next batch that checks out."""
    directory = tmp_path / "dump-0"
    write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    _, bad_base, cut_bytes = damage(logs[-2], "length_huge", index=1)
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(logs[-2].stem))
    with PartitionLog.open(directory, SMALL) as log:
        side, moved = log.recovery.side_files
    assert moved.name == logs[-1].name + ".corrupt-0"
    proc = subprocess.run([sys.executable, "-m", "kstore", "dump-log", "--json", str(side)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    # Every batch after the damaged one is there, CRC-valid, with its offsets and records.
    res = scan(cut_bytes)
    assert not res.ok and res.valid_end == 0
    size = int.from_bytes(wl.build_batch(bad_base)[8:12], "big") + 12
    rest = scan(cut_bytes, size)
    assert rest.ok and len(rest) >= 1
    assert [r["base_offset"] for r in rows] == [int(b) for b in rest.base_offsets]
    assert [r["position"] for r in rows] == [int(p) for p in rest.positions]
    assert all(r["is_valid"] for r in rows)
    assert f"bytes 0..{size}".encode() in proc.stderr, proc.stderr
    text = subprocess.run([sys.executable, "-m", "kstore", "dump-log", "--print-data", str(side)],
                          capture_output=True, timeout=60)
    assert text.returncode == 2
    first = int(rest.base_offsets[0])
    _, value, _, _ = wl.record(first)
    assert f"| offset: {first} ".encode() in text.stdout
    assert b"payload: " + value in text.stdout


def test_verify_lists_side_files_and_stays_sound(tmp_path):
    import kstore
    from click.testing import CliRunner

    from kstore.cli import main

    data = tmp_path / "data"
    with kstore.open(data) as store:
        store.create_topic("q", config=SMALL)
        log = store.partition("q", 0)
        base = 0
        for _ in range(60):
            _, last, _ = log.append_batch(wl.build_batch(base))
            base = last + 1
    directory = data / "q-0"
    logs = sorted(directory.glob("*.log"))
    pos, bad_base, _ = damage(logs[-2], "crc")
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(logs[-2].stem))
    with kstore.open(data) as store:
        assert store.partition("q", 0).log_end_offset == bad_base
    sides = side_files(directory)
    assert len(sides) == 2
    r = CliRunner().invoke(main, ["verify", str(data)])
    assert r.exit_code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("warning: quarantined:")]
    assert len(lines) == 2
    for side, line in zip(sides, lines, strict=True):
        assert str(side) in line and f"kstore dump-log {side}" in line
    report = json.loads(CliRunner().invoke(main, ["verify", str(data), "--json"]).stdout)
    assert report["ok"] and [q.split(" (")[0] for q in report["quarantined"]] == [str(s) for s in sides]
    r = CliRunner().invoke(main, ["dump-log", str(sides[0])])
    assert r.exit_code == 2 and f"at byte {pos}" in r.stdout


CHILD_OPEN_WITH_FSIZE_LIMIT = r"""
import resource, signal, sys
from kstore.errors import KafkaStorageError
from kstore.log import PartitionLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    PartitionLog.open(sys.argv[1], {"segment.bytes": 16384})
except KafkaStorageError as exc:
    print("KafkaStorageError:", exc)
    sys.exit(3)
print("opened")
"""


def test_no_room_for_the_side_file_cuts_nothing(tmp_path):
    """Disk full (RLIMIT_FSIZE in a child) while keeping the cut bytes: the open fails with
    KafkaStorageError saying so, and nothing was cut; with room, the next open recovers."""
    directory = tmp_path / "full-0"
    write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    pos, bad_base, cut_bytes = damage(logs[-2], "crc", index=1)
    assert len(cut_bytes) > 2000
    before = {p.name: p.read_bytes() for p in directory.glob("*.log")}
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(logs[-2].stem))
    proc = subprocess.run([sys.executable, "-c", CHILD_OPEN_WITH_FSIZE_LIMIT, str(directory),
                           "2000"], capture_output=True, timeout=60)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert b"nothing was cut" in proc.stdout and str(logs[-2]).encode() in proc.stdout
    assert {p.name: p.read_bytes() for p in directory.glob("*.log")} == before
    assert side_files(directory) == []
    assert not list(directory.glob("*.tmp"))
    with PartitionLog.open(directory, SMALL) as log:
        assert log.log_end_offset == bad_base
        assert log.recovery.side_files[0].read_bytes() == cut_bytes


@pytest.mark.parametrize("policy", ["compact", "delete"])
def test_cleaner_and_retention_ignore_side_files(tmp_path, policy):
    """A side file that holds whole, valid batches (a moved segment does) is never taken for
    a segment: compaction and retention run beside it and leave it as it is."""
    import kstore

    data = tmp_path / "data"
    config = {"segment.bytes": 4096, "cleanup.policy": policy, "min.cleanable.dirty.ratio": 0.01,
              "file.delete.delay.ms": 0, "retention.bytes": 20000}
    with kstore.open(data) as store:
        store.create_topic("c", config=config)
        log = store.partition("c", 0)
        for i in range(400):
            b = BatchBuilder()
            b.append(b"v%d" % i + b"x" * 40, key=b"k%d" % (i % 10))
            log.append_batch(b.build())
        directory = data / "c-0"
        first = sorted(directory.glob("*.log"))[0]
        side = directory / f"{first.name}.corrupt-0"
        side.write_bytes(first.read_bytes())
        content = side.read_bytes()
        segments_before = len(log.segments())
        report = store.run_maintenance()
        assert report, "maintenance had nothing to do: the test needs it to rewrite segments"
        assert len(log.segments()) < segments_before
        assert all(".corrupt-" not in str(s.path) for s in log.segments())
    assert side.read_bytes() == content
    with kstore.open(data) as store:
        store.run_maintenance()
        assert store.partition("c", 0).quarantined_files() == [side]
    with kstore.open(data, read_only=True) as store:
        assert all(".corrupt-" not in str(s.path) for s in store.partition("c", 0).segments())
    assert side.read_bytes() == content


@pytest.mark.parametrize("state", ["mid_copy", "copied_not_cut", "later_moved_not_cut"])
def test_crash_during_recovery_loses_nothing(tmp_path, state):
    """The states a crash can leave recovery in (SQLite crash9 style, made by hand): a side
    file half copied (.tmp), a side file whole but the segment not cut yet, later segments
    moved but the segment not cut yet. The next open finishes the job and every cut byte is
    in a side file; the half copy is dropped."""
    directory = tmp_path / "again-0"
    write_workload(directory, SMALL, 60)
    logs = sorted(directory.glob("*.log"))
    victim = logs[-3]
    later = {p: p.read_bytes() for p in logs[-2:]}
    pos, bad_base, cut_bytes = damage(victim, "crc")
    (directory / CLEAN_SHUTDOWN_MARKER).unlink()
    set_recovery_point(directory, int(victim.stem))
    side = victim.with_name(f"{victim.name}.corrupt-{pos}")
    if state == "mid_copy":
        side.with_name(side.name + ".tmp").write_bytes(cut_bytes[: len(cut_bytes) // 2])
    else:
        side.write_bytes(cut_bytes)
    if state == "later_moved_not_cut":
        for p in later:
            p.rename(p.with_name(p.name + ".corrupt-0"))
            p.with_suffix(".index").unlink()
            p.with_suffix(".timeindex").unlink()
    with PartitionLog.open(directory, SMALL) as log:
        assert log.log_end_offset == bad_base
        assert victim.stat().st_size == pos
        assert sorted(directory.glob("*.log")) == sorted(p for p in logs if p not in later)
        check_records(log, bad_base)
        _, last, _ = log.append_batch(wl.build_batch(bad_base))
        check_records(log, last + 1)
    assert not list(directory.glob("*.tmp"))
    kept = {p.name: p.read_bytes() for p in side_files(directory)}
    assert kept[side.name] == cut_bytes
    if state != "mid_copy":  # the next recovery copied them again, under the next name
        assert kept[side.name + ".1"] == cut_bytes
    for p, content in later.items():
        assert kept[p.name + ".corrupt-0"] == content
    assert len(kept) == len(later) + (1 if state == "mid_copy" else 2)


READER_BESIDE_RECOVERY = r'''
import subprocess, sys
import kstore
from kstore.errors import CorruptRecordError
data, total = sys.argv[1], int(sys.argv[2])
s = kstore.open(data, read_only=True)
c = s.consumer(auto_offset_reset="earliest")
c.assign([("t", 0)])
seen, bad = 0, None
while True:  # read everything, seeking past the damage as the error says
    try:
        recs = c.poll(timeout=0.1, max_records=100000)
    except CorruptRecordError as e:
        bad = (e.offset, e.last_offset)
        c.seek("t", 0, e.last_offset + 1)
        continue
    if not recs:
        break
    seen += len(recs)
print("first", seen, bad, flush=True)
# A writer opens the store: its recovery cuts the segment this reader has mapped.
w = subprocess.run([sys.executable, "-c", "import kstore, sys\n"
                    "with kstore.open(sys.argv[1]) as s: print(s.partition('t', 0).log_end_offset)",
                    data], capture_output=True, text=True, timeout=120)
assert w.returncode == 0, w.stderr
leo = int(w.stdout)
print("writer", leo, flush=True)
c.seek("t", 0, bad[1] + 50)  # where this reader had read before: past the new end now
got = []
while True:
    recs = c.poll(timeout=0.2, max_records=100000)
    if not recs:
        break
    got += [r.offset for r in recs]
assert got == list(range(leo)), (got[:5], len(got), leo)  # reset to the start, all sound
print("second", len(got), flush=True)
'''


def test_read_only_reader_survives_a_writer_recovery_cutting_its_segment(tmp_path):
    """A read-only reader that read past a damaged batch (seeking past it) keeps its mapping of
    the segment; a writer's recovery then cuts that file in place (the cut bytes go to a side
    file). The reader's next read must not touch the mapping past the new end (SIGBUS killed
    the process before): it reads the segment afresh and moves to the log as it is now."""
    import signal
    import struct

    data = tmp_path / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t", 1, {"segment.bytes": 100000})
        p = s.producer(linger_ms=0)
        for i in range(3000):
            p.send("t", b"x%05d" % i * 10)
            if i % 20 == 19:
                p.flush()
        p.flush()
    (data / "t-0" / CLEAN_SHUTDOWN_MARKER).unlink()  # as after a crash: recovery from 0
    (data / "recovery-point-offset-checkpoint").write_text("0\n1\nt 0 0\n")
    path = sorted((data / "t-0").glob("*.log"))[0]
    raw = bytearray(path.read_bytes())
    starts, pos = [], 0
    while pos < len(raw):
        starts.append(pos)
        pos += 12 + struct.unpack_from(">i", raw, pos + 8)[0]
    victim = starts[len(starts) // 4]
    raw[victim + 70] ^= 0xFF  # a record byte: the CRC fails
    path.write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, "-c", READER_BESIDE_RECOVERY, str(data), "3000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != -signal.SIGBUS, "the reader died of SIGBUS"
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "second" in proc.stdout and side_files(data / "t-0"), proc.stdout
