"""Damage inside a closed segment is never silent on the read path (issue 13, items 1 and 2).

Each field of one batch's header is damaged by hand, or the segment's file is cut inside the
batch (tests/log/damage.py). Every reader then delivers every record before the damage, raises
CorruptRecordError at it naming the file, the byte and the offsets it covers, and reads on
after ``seek(last_offset + 1)``: PartitionLog.read with FileSlice, Consumer.poll,
Consumer.poll_batches, iteration, and ``kstore consume``. Before, a damaged length (or a cut
file) made the read walk stop as if the segment ended there, and every reader skipped the rest
of the segment with no error (1,300 records vanished; ``kstore consume`` exited 0). A log with
legitimate gaps in its offsets (compaction) still reads clean.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import kstore
from kstore.cli import main
from kstore.consumer import CHECKED_READ_BYTES
from kstore.errors import CorruptRecordError, UnsupportedCompressionTypeError
from kstore.log import PartitionLog
from tests.log import damage as D

TOPIC = "t"
DAMAGE = (CorruptRecordError, UnsupportedCompressionTypeError)
# Reads up to this size walk every header; larger ones jump through the offset index and walk
# only the headers near their end (Kafka's walk none), which the consumer makes up for.
CHECKED = CHECKED_READ_BYTES


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("pristine") / "data"
    D.build(data, [TOPIC])
    return data


@pytest.fixture(params=D.DAMAGES)
def damaged(request, pristine, tmp_path) -> tuple[Path, D.Damage]:
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    return data, D.damage(data, TOPIC, request.param)


def _check_records(recs) -> list[int]:
    offsets = [r.offset for r in recs]
    for r in recs:
        assert r.value == D.value(r.offset), r.offset
    return offsets


def _expected(dmg: D.Damage) -> list[int]:
    return [o for o in range(dmg.end) if not dmg.lo <= o <= dmg.hi]


def _check_error(exc: CorruptRecordError, dmg: D.Damage) -> None:
    assert (exc.offset, exc.last_offset) == (dmg.lo, dmg.hi), str(exc)
    assert (exc.topic, exc.partition) == (TOPIC, 0)
    assert exc.path == str(dmg.path) and exc.position == dmg.position, str(exc)
    assert exc.code == 2
    msg = str(exc)
    assert dmg.path.name in msg and f"byte {dmg.position}" in msg, msg
    assert f"{dmg.lo}..{dmg.hi}" in msg and f"{dmg.hi + 1}" in msg, msg


# ---------------------------------------------------------------------------------------------
# PartitionLog.read and FileSlice


def test_log_read_raises_at_the_damage_and_reads_on_past_it(damaged):
    data, dmg = damaged
    with PartitionLog.open(data / f"{TOPIC}-0", read_only=True) as lg:
        # As a consumer walks the log: decode batch by batch, keep what decodes, read on from
        # there. A slice ends before structural damage (or holds a batch whose CRC fails);
        # the read that starts at the damage raises with its range.
        got, errors, offset = [], [], 0
        while offset < lg.log_end_offset:
            try:
                fs = lg.read(offset, max_bytes=CHECKED)
            except CorruptRecordError as exc:
                errors.append(exc)
                offset = exc.last_offset + 1
                continue
            recs = []
            try:
                for b in fs.batches():
                    recs += [r for r in b.records() if r.offset >= offset]
            except DAMAGE as exc:
                if not recs:  # the damaged batch comes first: only the CRC tells
                    assert not dmg.structural, exc
                    errors.append(exc)
                    offset = dmg.hi + 1
                    continue
            assert recs, offset
            got += _check_records(recs)
            offset = recs[-1].offset + 1
        assert got == _expected(dmg)
        assert len(errors) == 1
        if dmg.structural:
            _check_error(errors[0], dmg)
        else:
            assert "CRC" in str(errors[0]), str(errors[0])


def test_log_read_at_each_damaged_offset(damaged):
    data, dmg = damaged
    with PartitionLog.open(data / f"{TOPIC}-0", read_only=True) as lg:
        for offset in range(dmg.lo, dmg.hi + 1):
            if dmg.structural:
                for max_bytes in (1, CHECKED):
                    with pytest.raises(CorruptRecordError) as info:
                        lg.read(offset, max_bytes=max_bytes)
                    _check_error(info.value, dmg)
            else:
                fs = lg.read(offset, max_bytes=1)
                batch = next(iter(fs.batches()))
                assert (fs.position, batch.base_offset) == (dmg.position, dmg.base)
                with pytest.raises(CorruptRecordError, match="CRC"):
                    batch.records()
        # Every readable offset is found, with its own batch first, whatever max_bytes.
        for offset in _expected(dmg):
            for max_bytes in (1, CHECKED):
                fs = lg.read(offset, max_bytes=max_bytes)
                first = next(iter(fs.batches()))
                assert first.base_offset <= offset <= first.last_offset, (offset, max_bytes)
                if dmg.structural:  # and the slice ends before the damage
                    assert not (fs.file.path == str(dmg.path)
                                and fs.position <= dmg.position < fs.position + len(fs))


def test_writer_reads_the_same(damaged):
    """The writer's own reads (a closed segment, indexes checked on first use) agree."""
    data, dmg = damaged
    with kstore.open(data, retention_check_interval_ms=0) as store:
        lg = store.partition(TOPIC, 0)
        if dmg.structural:
            with pytest.raises(CorruptRecordError) as info:
                lg.read(dmg.lo, max_bytes=CHECKED)
            _check_error(info.value, dmg)
        fs = lg.read(dmg.hi + 1)
        assert next(iter(fs.batches())).base_offset == dmg.hi + 1


def test_compacted_gaps_are_not_damage(tmp_path):
    """Offsets missing between batches and between segments (compaction, deleted records)
    read as they are: checked reads flag only what does not parse."""
    D.build(tmp_path / "data", ["g"])
    # Rewrite the files with gaps: keep every third batch, as a cleaner would.
    kept: list[int] = []
    for path in sorted((tmp_path / "data" / "g-0").glob("*.log")):
        raw = path.read_bytes()
        res = kstore.records.scan(raw)
        parts = []
        for i in range(len(res)):
            if i % 3 == 1:
                p, n = int(res.positions[i]), int(res.sizes[i])
                parts.append(raw[p:p + n])
                kept += range(int(res.base_offsets[i]), int(res.last_offsets[i]) + 1)
        path.write_bytes(b"".join(parts))
        for ext in (".index", ".timeindex"):
            path.with_suffix(ext).unlink()
    with PartitionLog.open(tmp_path / "data" / "g-0", read_only=True) as lg:
        for max_bytes in (1, CHECKED, 1 << 20):
            seen, offset = [], 0
            while offset < lg.log_end_offset:
                fs = lg.read(offset, max_bytes=max_bytes)
                if not len(fs):
                    break
                recs = [r for b in fs.batches() for r in b.records() if r.offset >= offset]
                assert all(r.value == D.value(r.offset) for r in recs)
                seen += [r.offset for r in recs]
                offset = fs.next_offset
            assert seen == kept
        # A read inside a gap lands on the next batch, never an error.
        for gap in range(lg.log_end_offset):
            fs = lg.read(gap, max_bytes=1)
            first = next(iter(fs.batches()))
            assert first.base_offset == min(o for o in kept if o >= gap) // D.BATCH * D.BATCH


# ---------------------------------------------------------------------------------------------
# Consumer


def _consume(consumer, dmg: D.Damage, columns: bool = False) -> tuple[list[int], list]:
    got, errors = [], []
    for _ in range(10_000):
        try:
            if columns:
                parts = consumer.poll_batches(timeout=0)
                recs = None
                offs = [int(o) for pc in parts for o in pc.offsets]
                for pc in parts:
                    assert pc.values() == [D.value(int(o)) for o in pc.offsets]
            else:
                recs = consumer.poll(timeout=0, max_records=10_000)
                offs = _check_records(recs)
        except CorruptRecordError as exc:
            errors.append(exc)
            consumer.seek(TOPIC, 0, exc.last_offset + 1)
            continue
        if not offs and consumer.position(TOPIC, 0) >= dmg.end:
            break
        got += offs
    return got, errors


@pytest.mark.parametrize("how", ["poll", "poll_batches"])
def test_consumer_delivers_all_before_the_damage_then_raises_with_its_range(damaged, how):
    data, dmg = damaged
    with kstore.open(data, read_only=True) as store:
        c = store.consumer(auto_offset_reset="earliest")
        c.assign([(TOPIC, 0)])
        got, errors = _consume(c, dmg, columns=how == "poll_batches")
        assert got == _expected(dmg)
        assert len(errors) == 1
        _check_error(errors[0], dmg)


def test_consumer_iteration_raises_and_resumes(damaged):
    data, dmg = damaged
    with kstore.open(data, read_only=True) as store:
        c = store.consumer(auto_offset_reset="earliest")
        c.assign([(TOPIC, 0)])
        # Iteration waits for new records at the end: a broken read must not hang the run.
        guard = threading.Timer(30, c.wakeup)
        guard.start()
        got = []
        with pytest.raises(CorruptRecordError) as info:
            for r in c:
                got.append(r.offset)
        assert got == list(range(dmg.lo))
        guard.cancel()
        _check_error(info.value, dmg)
        c.seek(TOPIC, 0, info.value.last_offset + 1)
        guard = threading.Timer(30, c.wakeup)
        guard.start()
        for r in c:
            assert r.value == D.value(r.offset)
            got.append(r.offset)
            if r.offset == dmg.end - 1:
                break
        guard.cancel()
        assert got == _expected(dmg)


def test_good_batches_in_the_fetch_window_are_delivered(pristine, tmp_path):
    """Item 2: a fetch window of good batches then a damaged one. Before, poll returned none of
    them (the whole window failed to decode) and `kstore consume -c 100` printed nothing."""
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    dmg = D.damage(data, TOPIC, "crc", victim=8)
    segment_base = int(dmg.path.name[:-4])
    with kstore.open(data, read_only=True) as store:
        c = store.consumer(auto_offset_reset="earliest")
        c.assign([(TOPIC, 0)])
        c.seek(TOPIC, 0, segment_base)
        recs = c.poll(timeout=0, max_records=10_000)
        assert _check_records(recs) == list(range(segment_base, dmg.lo))
        print(f"{len(recs)} of {dmg.lo - segment_base} valid records before the bad batch delivered")
        with pytest.raises(CorruptRecordError) as info:
            c.poll(timeout=0)
        _check_error(info.value, dmg)
        c.seek(TOPIC, 0, info.value.last_offset + 1)
        assert c.poll(timeout=0)[0].offset == dmg.hi + 1
    r = CliRunner().invoke(main, ["--data", str(data), "consume", TOPIC, "-c", "100"])
    lines = r.stdout.splitlines()
    assert lines == [D.value(o).decode() for o in range(100)], r.stdout[-300:]
    assert r.exit_code == 0


# ---------------------------------------------------------------------------------------------
# kstore consume


def test_kstore_consume_prints_the_good_records_then_fails_naming_the_range(damaged):
    data, dmg = damaged
    r = CliRunner().invoke(main, ["--data", str(data), "consume", TOPIC])
    assert r.exit_code == 2, r.output
    assert r.stdout.splitlines() == [D.value(o).decode() for o in range(dmg.lo)]
    err = r.stderr
    assert dmg.path.name in err and f"byte {dmg.position}" in err, err
    assert f"{dmg.lo}..{dmg.hi}" in err, err
    assert f"--partition 0 --offset {dmg.hi + 1}" in err, err
    # The command it gives reads the rest.
    r = CliRunner().invoke(main, ["--data", str(data), "consume", TOPIC, "--partition", "0",
                                  "--offset", str(dmg.hi + 1)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [D.value(o).decode() for o in range(dmg.hi + 1, dmg.end)]


def test_kstore_consume_process_on_a_segment_cut_by_hand(tmp_path):
    """The issue's case, in a real process: 100,000 records, a closed segment truncated by
    hand. Before: `kstore consume` printed 97,225 of them and exited 0. Now it prints every
    record before the cut, then exits 2 naming the file, the byte and the offsets lost."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    n = 100_000
    with kstore.open(data, retention_check_interval_ms=0) as store:
        store.create_topic("big", 1, config={"segment.bytes": 256 * 1024})
        lg = store.partition("big", 0)
        for i in range(0, n, 1000):
            lg.append_many([b"%d" % o for o in range(i, i + 1000)])
    logs = sorted((data / "big-0").glob("*.log"))
    victim = logs[len(logs) // 2]
    res = kstore.records.scan(victim.read_bytes())
    k = len(res) // 2
    cut = int(res.positions[k]) + int(res.sizes[k]) // 3
    first_lost = int(res.base_offsets[k])
    next_base = int(logs[len(logs) // 2 + 1].name[:-4])
    os.truncate(victim, cut)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    out = subprocess.run([sys.executable, "-m", "kstore", "--data", str(data), "consume", "big"],
                         capture_output=True, timeout=120, env=env, check=False)
    printed = out.stdout.splitlines()
    assert out.returncode == 2, out.stderr.decode()
    assert printed == [b"%d" % i for i in range(first_lost)]
    err = out.stderr.decode()
    assert victim.name in err and f"byte {int(res.positions[k])}" in err, err
    assert f"{first_lost}..{next_base - 1}" in err and f"--offset {next_base}" in err, err
    print(f"kstore consume printed {len(printed):,} of {n:,} records, then: {err.strip()[:300]}")
