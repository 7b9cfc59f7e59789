"""PartitionLog under bad input and faults: batches that fail their checks leave the log as it
was; reads out of range say what the range is; damaged or missing index files are rebuilt;
a truncated segment is recovered; a full disk, a read-only directory and a second writer give
KafkaStorageError (or LogLockedError) with a message, never a crash or a damaged log.

Faults are made by hand, as leveldb's log_test makes them (ShrinkSize, IncrementByte); the
ones that need another process (file-size limit, another user, another writer) run a child
with ``sys.executable -c``.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kstore import errors
from kstore.log import PartitionLog
from kstore.log.partition import CLEAN_SHUTDOWN_MARKER
from kstore.records import BatchBuilder, scan

ROOT = Path(__file__).resolve().parents[2]
TS0 = 1_700_000_000_000
SEED = 7


# ---------------------------------------------------------------------------------------------
# A log whose every offset has known content


def expected(offset: int) -> tuple[bytes, bytes, int]:
    """(key, value, timestamp) of the record at ``offset``."""
    return b"k%d" % offset, b"v%d-" % offset + b"x" * (offset * 13 % 200), TS0 + offset


def make_batch(base: int, n: int = 5, pad: int = 0) -> bytes:
    """Records ``base .. base + n - 1`` as one batch (``pad`` adds bytes to each value)."""
    b = BatchBuilder()
    for off in range(base, base + n):
        key, value, ts = expected(off)
        b.append(value + b"p" * pad, key=key, timestamp=ts)
    return b.build()


def fill(log: PartitionLog, batches: int, n: int = 5) -> list[tuple[int, int]]:
    """Append ``batches`` batches; returns their (base, last) offsets."""
    spans = []
    for _ in range(batches):
        base = log.log_end_offset
        first, last, _ = log.append_batch(make_batch(base, n))
        assert first == base
        spans.append((first, last))
    return spans


def check_all(log: PartitionLog, spans: list[tuple[int, int]], pad: int = 0) -> None:
    """Every batch is found by its first, middle and last offset, and holds what was written."""
    for base, last in spans:
        for target in (base, (base + last) // 2, last):
            got = list(log.read(target, max_bytes=1).batches())
            assert len(got) == 1, target
            assert (got[0].base_offset, got[0].last_offset) == (base, last), target
        records = got[0].records()
        assert [r.offset for r in records] == list(range(base, last + 1))
        for r in records:
            key, value, ts = expected(r.offset)
            assert (r.key, r.value, r.timestamp) == (key, value + b"p" * pad, ts), r.offset


def sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}


def segment_files(directory: Path, ext: str) -> list[Path]:
    return sorted(directory.glob(f"*.{ext}"))


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that can import this test module's helpers."""
    prelude = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
    proc = subprocess.run([sys.executable, "-c", prelude + script, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def child_report(proc: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Bad batches


def _damaged(raw: bytes, fault: str) -> bytes:
    b = bytearray(raw)
    if fault == "crc_field":
        b[17] ^= 0xFF
    elif fault == "body_byte":
        b[-3] ^= 0x01
    elif fault == "header_byte":
        b[24] ^= 0x40  # inside lastOffsetDelta: covered by the CRC
    elif fault == "magic_1":
        b[16] = 1
    elif fault == "magic_3":
        b[16] = 3
    else:
        raise AssertionError(fault)
    return bytes(b)


@pytest.mark.parametrize("fault", ["crc_field", "body_byte", "header_byte", "magic_1", "magic_3"])
def test_corrupt_batch_is_refused_and_log_unchanged(tmp_path, fault):
    d = tmp_path / "bad-0"
    with PartitionLog.open(d, {"segment.bytes": 4096}) as log:
        spans = fill(log, 20)
        leo, before = log.log_end_offset, sizes(d)
        bad = _damaged(make_batch(leo), fault)
        with pytest.raises(errors.CorruptRecordError) as ei:
            log.append_batch(bad)
        assert ei.value.code == 2
        # The same inside a multi-batch append: a good batch before the bad one is not kept.
        with pytest.raises(errors.CorruptRecordError):
            log.append_batches(make_batch(leo) + bad)
        assert log.log_end_offset == leo
        assert sizes(d) == before
        # No offset was used up: the next good batch starts at the old end.
        spans += fill(log, 1)
        assert spans[-1][0] == leo
        check_all(log, spans)
        assert log.verify() == []


def test_batch_over_max_message_bytes_is_refused(tmp_path):
    d = tmp_path / "big-0"
    raw = make_batch(0, n=10, pad=300)
    with PartitionLog.open(d, {"max.message.bytes": len(raw) - 1}) as log:
        before = sizes(d)
        with pytest.raises(errors.RecordTooLargeError) as ei:
            log.append_batch(raw)
        assert ei.value.code == 10
        assert "max.message.bytes" in str(ei.value) and str(len(raw)) in str(ei.value)
        assert log.log_end_offset == 0 and sizes(d) == before
    # Kafka's limit is inclusive: a batch of exactly max.message.bytes goes in.
    with PartitionLog.open(d, {"max.message.bytes": len(raw)}) as log:
        assert log.append_batch(raw)[:2] == (0, 9)
        check_all(log, [(0, 9)], pad=300)


def test_read_outside_the_log_names_both_bounds(tmp_path):
    d = tmp_path / "range-0"
    with PartitionLog.open(d, {"segment.bytes": 2048, "file.delete.delay.ms": 0}) as log:
        spans = fill(log, 60)
        log.delete_segments_before(137)
        start, end = log.log_start_offset, log.log_end_offset
        assert start == 137 and end == 300
        for offset in (0, start - 1, end + 1, end + 1000):
            with pytest.raises(errors.OffsetOutOfRangeError) as ei:
                log.read(offset)
            msg = str(ei.value)
            assert ei.value.code == 1
            assert re.search(rf"\b{start}\b", msg) and re.search(rf"\b{end}\b", msg), msg
            assert re.search(rf"\b{offset}\b", msg), msg
        assert len(log.read(end)) == 0  # the log end itself is a valid, empty read
        check_all(log, [(b, last) for b, last in spans if b >= 140])
        assert log.read(start).records()[0].offset <= start


# ---------------------------------------------------------------------------------------------
# Damaged files on disk


@pytest.mark.parametrize("marker", ["marker_removed", "marker_kept"])
def test_segment_cut_mid_batch_is_recovered(tmp_path, marker):
    d = tmp_path / "cut-0"
    with PartitionLog.open(d, {"segment.bytes": 4096}) as log:
        spans = fill(log, 40)
    last_log = segment_files(d, "log")[-1]
    data = last_log.read_bytes()
    res = scan(data)
    assert res.ok and len(res) >= 2
    pos, size = int(res.positions[-1]), int(res.sizes[-1])
    os.truncate(last_log, pos + size // 3)
    if marker == "marker_removed":
        (d / CLEAN_SHUTDOWN_MARKER).unlink()
    with PartitionLog.open(d, {"segment.bytes": 4096}) as log:
        assert log.recovery.clean is False
        assert log.recovery.truncated_bytes == size // 3
        assert last_log.stat().st_size == pos
        assert log.log_end_offset == spans[-1][0]
        check_all(log, spans[:-1])
        assert log.verify() == []
        spans[-1:] = fill(log, 3)
        check_all(log, spans)
        assert log.verify() == []


INDEX_FAULTS = [
    "index_past_data",       # rising entries that point beyond the .log (a cut .log)
    "index_random",          # garbage, a whole number of entries
    "index_random_odd_len",  # garbage, not a whole number of entries
    "index_zeros",           # zero-filled, as a crash leaves a preallocated index
    "index_missing",
    "timeindex_random",
    "timeindex_zeros",
    "timeindex_missing",
    "both_missing",
]

INDEXED = {"segment.bytes": 8192, "index.interval.bytes": 512}


def _damage_index(seg_log: Path, fault: str, rng: random.Random) -> None:
    index = seg_log.with_suffix(".index")
    timeindex = seg_log.with_suffix(".timeindex")
    target = timeindex if fault.startswith("timeindex") else index
    old = target.read_bytes()
    if fault == "index_past_data":
        rel, _ = struct.unpack(">ii", old[-8:])
        end = seg_log.stat().st_size
        target.write_bytes(old + struct.pack(">iiii", rel + 100, end + 8, rel + 200, end + 5000))
    elif fault.endswith("_random"):
        target.write_bytes(rng.randbytes(max(len(old), 96)))
    elif fault.endswith("_random_odd_len"):
        target.write_bytes(rng.randbytes(max(len(old), 96) + 5))
    elif fault.endswith("_zeros"):
        target.write_bytes(bytes(max(len(old), 96)))
    elif fault == "both_missing":
        index.unlink()
        timeindex.unlink()
    elif fault.endswith("_missing"):
        target.unlink()
    else:
        raise AssertionError(fault)


@pytest.mark.parametrize("which", ["closed_segment", "last_segment"])
@pytest.mark.parametrize("fault", INDEX_FAULTS)
def test_damaged_or_missing_index_is_rebuilt(tmp_path, fault, which):
    """After a clean shutdown the files are trusted, but not blindly: the last segment's
    indexes are checked on open, a closed segment's on its first read. Either way a bad index
    is rebuilt from the data and reads find every batch."""
    d = tmp_path / "idx-0"
    with PartitionLog.open(d, INDEXED) as log:
        spans = fill(log, 70, n=4)
    logs = segment_files(d, "log")
    assert len(logs) >= 3
    originals = {p.name: p.read_bytes() for p in d.iterdir()
                 if p.suffix in (".index", ".timeindex")}
    seg_log = logs[0] if which == "closed_segment" else logs[-1]
    assert len(originals[seg_log.with_suffix(".index").name]) >= 16, "want several index entries"
    _damage_index(seg_log, fault, random.Random(SEED))

    with PartitionLog.open(d, INDEXED) as log:
        assert log.recovery.clean is True
        check_all(log, spans)
        for base, _ in spans[::7]:
            assert log.offset_for_time(TS0 + base) == base
        assert log.verify() == []
        more = fill(log, 3, n=4)
        check_all(log, more)
        assert log.verify() == []
    for p in (seg_log.with_suffix(".index"), seg_log.with_suffix(".timeindex")):
        assert p.exists(), f"{p.name} was not rebuilt"
    # Rebuilt from the data, the files are the ones the appender wrote (the last segment's
    # offset index has gained entries for the batches appended since).
    for p in (seg_log.with_suffix(".index"), seg_log.with_suffix(".timeindex")):
        if which == "closed_segment":
            assert p.read_bytes() == originals[p.name], p.name
        elif p.suffix == ".index":
            assert p.read_bytes().startswith(originals[p.name]), p.name

    with PartitionLog.open(d, INDEXED) as log:
        check_all(log, spans + more)
        assert log.verify() == []


# ---------------------------------------------------------------------------------------------
# The disk refuses

_FSIZE_CHILD = r"""
import json, os, resource, sys
from kstore.errors import KafkaStorageError
from kstore.log import PartitionLog
from tests.log.test_faults import make_batch

directory, config, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
log = PartitionLog.open(directory, config)
active = log.segments()[-1]
limit = active.size + 100_000
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
out = {"limit": limit, "acks": []}
base = log.log_end_offset
for _ in range(10_000):
    try:
        _, last, _ = log.append_batch(make_batch(base, 8, pad=900))
    except KafkaStorageError as exc:
        out["error"] = [type(exc).__name__, exc.code, str(exc)]
        break
    out["acks"].append(last)
    base = last + 1
try:
    log.append_batch(make_batch(base, 8, pad=900))
    out["again"] = "accepted"
except KafkaStorageError as exc:
    out["again"] = type(exc).__name__
out["size_on_disk"] = os.path.getsize(active.path)
out["size_committed"] = log.segments()[-1].size
if out["acks"]:
    out["read_back"] = [r.offset for r in log.read(out["acks"][-1]).records()][-1]
if mode == "close":
    log.close()
print(json.dumps(out), flush=True)
os._exit(0)  # no clean-up of any kind unless asked to close
"""


@pytest.mark.parametrize("mode", ["close", "exit_without_close"])
def test_file_size_limit_while_appending(tmp_path, mode):
    """RLIMIT_FSIZE makes write() fail with EFBIG (CPython ignores SIGXFSZ) part-way through a
    batch: the append raises KafkaStorageError, keeps nothing of that batch, and the log holds
    exactly the acknowledged batches, whether the writer then closes or just dies."""
    d = tmp_path / "full-0"
    # Small preallocated indexes: they must fit under the limit too.
    config = {"segment.index.bytes": 16384}
    with PartitionLog.open(d, config) as log:
        spans = fill(log, 50)
        start = log.log_end_offset
    proc = run_child(_FSIZE_CHILD, str(d), json.dumps(config), mode)
    out = child_report(proc)
    assert "error" in out, f"never hit the {out['limit']}-byte limit: {out}"
    name, code, msg = out["error"]
    assert name == "KafkaStorageError" and code == 56, out["error"]
    assert "File too large" in msg or "errno 27" in msg, msg
    assert "00000000000000000000.log" in msg, msg
    assert out["again"] == "KafkaStorageError"
    assert out["size_on_disk"] == out["size_committed"] <= out["limit"], out
    acks = out["acks"]
    assert len(acks) >= 5, out
    assert out["read_back"] == acks[-1]

    with PartitionLog.open(d, config) as log:
        assert log.recovery.clean is (mode == "close")
        assert log.recovery.truncated_bytes == 0, log.recovery
        assert log.log_end_offset == acks[-1] + 1
        new = []
        base = start
        for last in acks:
            new.append((base, last))
            base = last + 1
        check_all(log, spans)
        for (base, last) in new:
            records = log.read(base, max_bytes=1).records()
            assert [r.offset for r in records] == list(range(base, last + 1))
            for r in records:
                key, value, ts = expected(r.offset)
                assert (r.key, r.value, r.timestamp) == (key, value + b"p" * 900, ts)
        assert log.verify() == []
        # Without the limit the log goes on.
        assert fill(log, 1)[0][0] == acks[-1] + 1


_NO_WRITE_CHILD = r"""
import json, os, pwd, sys
from kstore.errors import KafkaStorageError, LogLockedError, ReadOnlyError
from kstore.log import PartitionLog
from tests.log.test_faults import make_batch

existing, fresh, drop = sys.argv[1], sys.argv[2], sys.argv[3] == "drop"
if drop:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
out = {"uid": os.geteuid()}
for key, path in (("existing", existing), ("fresh", fresh)):
    try:
        PartitionLog.open(path).close()
        out[key] = ["opened"]
    except LogLockedError as exc:
        out[key] = ["LogLockedError", str(exc)]
    except KafkaStorageError as exc:
        out[key] = [type(exc).__name__, str(exc), exc.code]
ro = PartitionLog.open(existing, read_only=True)
out["ro_end"] = ro.log_end_offset
out["ro_records"] = [[r.offset, r.value.decode()] for r in ro.read(0, max_bytes=1 << 30).records()]
out["ro_verify"] = ro.verify()
try:
    ro.append_batch(make_batch(ro.log_end_offset))
    out["ro_append"] = "accepted"
except ReadOnlyError:
    out["ro_append"] = "ReadOnlyError"
ro.close()
print(json.dumps(out), flush=True)
"""


def test_directory_without_write_permission(tmp_path):
    """A writer open of a directory it may not write raises KafkaStorageError naming it (not a
    crash, not LogLockedError); read_only=True still reads it. Root ignores permission bits, so
    as root the child drops to 'nobody' first."""
    as_root = os.geteuid() == 0
    if as_root:
        pwd.getpwnam("nobody")  # the scenario needs that user
        # pytest's tmp_path is private to root: 'nobody' needs a path it can traverse.
        parent = Path(tempfile.mkdtemp(prefix="kstore-noperm-"))
        os.chmod(parent, 0o755)
    else:
        parent = tmp_path / "noperm"
        parent.mkdir()
    d = parent / "locked-0"
    try:
        with PartitionLog.open(d) as log:
            spans = fill(log, 12)
        before = sizes(d)
        os.chmod(d, 0o555)
        os.chmod(parent, 0o555)
        proc = run_child(_NO_WRITE_CHILD, str(d), str(parent / "fresh-0"),
                         "drop" if as_root else "stay")
        out = child_report(proc)
    finally:
        os.chmod(parent, 0o755)
        if d.exists():
            os.chmod(d, 0o755)
    try:
        assert out["uid"] != 0, "the scenario ran with root's powers: it proves nothing"
        for key, path in (("existing", d), ("fresh", parent / "fresh-0")):
            assert out[key][0] == "KafkaStorageError", out[key]
            assert str(path) in out[key][1], out[key]
            assert out[key][2] == 56
        assert out["ro_end"] == spans[-1][1] + 1
        assert out["ro_records"] == [[off, expected(off)[1].decode()]
                                     for off in range(out["ro_end"])]
        assert out["ro_verify"] == []
        assert out["ro_append"] == "ReadOnlyError"
        # Nothing changed on disk, the clean-shutdown marker included.
        assert sizes(d) == before
        assert (d / CLEAN_SHUTDOWN_MARKER).exists()
        assert not (parent / "fresh-0").exists()
        with PartitionLog.open(d) as log:
            assert log.recovery.clean is True
            check_all(log, spans)
    finally:
        if as_root:
            shutil.rmtree(parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A second writer

_SECOND_WRITER_CHILD = r"""
import json, sys
from kstore.errors import LogLockedError
from kstore.log import PartitionLog

directory = sys.argv[1]
out = {}
try:
    log = PartitionLog.open(directory)
    out["writer"] = "opened"
    out["writer_end"] = log.log_end_offset
    log.close()
except LogLockedError as exc:
    out["writer"] = ["LogLockedError", str(exc), exc.code]
ro = PartitionLog.open(directory, read_only=True)
out["ro_end"] = ro.log_end_offset
out["ro_last"] = ro.read(ro.log_end_offset - 1).records()[-1].offset
ro.close()
print(json.dumps(out), flush=True)
"""


def test_second_writer_is_refused_in_this_and_another_process(tmp_path):
    d = tmp_path / "lock-0"
    log = PartitionLog.open(d, {"segment.bytes": 4096})
    try:
        spans = fill(log, 30)
        before = sizes(d)
        with pytest.raises(errors.LogLockedError) as ei:
            PartitionLog.open(d)
        assert isinstance(ei.value, errors.KafkaStorageError)
        assert str(d) in str(ei.value) and "read_only=True" in str(ei.value)
        assert sizes(d) == before

        # The refused open released nothing of the first writer's lock.
        out = child_report(run_child(_SECOND_WRITER_CHILD, str(d)))
        assert out["writer"][0] == "LogLockedError", out
        assert str(d) in out["writer"][1] and out["writer"][2] == 56
        assert out["ro_end"] == spans[-1][1] + 1 == out["ro_last"] + 1

        # Readers in this process work alongside and follow new appends.
        with PartitionLog.open(d, read_only=True) as ro:
            assert ro.log_end_offset == log.log_end_offset
            spans += fill(log, 5)
            assert ro.log_end_offset == log.log_end_offset
            check_all(ro, spans)
        check_all(log, spans)
        assert log.verify() == []
    finally:
        log.close()

    # Once the writer has closed, another process may write.
    out = child_report(run_child(_SECOND_WRITER_CHILD, str(d)))
    assert out["writer"] == "opened" and out["writer_end"] == spans[-1][1] + 1
    with PartitionLog.open(d) as log:
        assert log.recovery.clean is True
        check_all(log, spans)
