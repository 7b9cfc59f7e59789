"""Readers in other processes beside a writer whose retention deletes segments (issue 13,
item 5).

A segment removed under a reader is routine: the reader moves to the new log start (as
OFFSET_OUT_OF_RANGE with auto_offset_reset does; with auto_offset_reset="none" it raises
OffsetOutOfRangeError), and ``kstore verify`` reports files deleted while it ran as skipped,
not corrupt. Before, read-only Consumers got raw FileNotFoundError (120 times in a 40 s run)
and verify crashed.

A real writer process appends records whose content follows from their offset, with small
segments, retention.bytes and run_maintenance in a loop; readers and verify run in other
processes for a bounded time. No FileNotFoundError (or any other exception) reaches them, every
record they read is intact, and offsets only rise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kstore
from kstore.errors import OffsetOutOfRangeError

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 6.0  # each reader's run; the writer runs until they are done

WRITER = textwrap.dedent("""
    import sys, time
    import kstore
    from kstore.records import BatchBuilder
    data, stop, delay_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def value(o): return b"v%d-" % o + b"x" * (o * 7 % 50)
    with kstore.open(data, retention_check_interval_ms=0) as store:
        store.create_topic("r", 1, config={"segment.bytes": 4000, "retention.bytes": 12000,
                                            "file.delete.delay.ms": delay_ms})
        lg = store.partition("r", 0)
        print("ready", flush=True)
        import os
        n = 0
        while not os.path.exists(stop):
            b = BatchBuilder()
            base = lg.log_end_offset
            for o in range(base, base + 5):
                b.append(value(o), key=b"k%d" % o)
            lg.append_batch(b.build())
            n += 1
            if n % 4 == 0:
                store.run_maintenance()
            time.sleep(0.0005)
""")

READER = textwrap.dedent("""
    import json, sys, time, traceback
    import kstore
    from kstore.errors import KStoreError
    data, seconds, how = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    def value(o): return b"v%d-" % o + b"x" * (o * 7 % 50)
    out = {"records": 0, "errors": [], "resets": 0, "bad": 0}
    with kstore.open(data, read_only=True) as store:
        c = store.consumer(auto_offset_reset="earliest", fetch_max_bytes=2000)
        c.assign([("r", 0)])
        last = -1
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if how == "slow":  # falls behind: retention overtakes it
                    time.sleep(0.02)
                    recs = [(r.offset, r.value) for r in c.poll(timeout=0.01, max_records=5)]
                elif how == "columns":
                    parts = c.poll_batches(timeout=0.01, max_records=50)
                    recs = [(int(o), v) for pc in parts for o, v in zip(pc.offsets, pc.values())]
                else:
                    recs = [(r.offset, r.value) for r in c.poll(timeout=0.01, max_records=50)]
            except Exception as exc:
                out["errors"].append(f"{type(exc).__name__}: {exc}")
                if len(out["errors"]) > 20:
                    break
                continue
            for o, v in recs:
                if v != value(o) or o <= last:
                    out["bad"] += 1
                if o > last + 1 and last >= 0:
                    out["resets"] += 1  # moved to a new log start past deleted segments
                last = o
            out["records"] += len(recs)
    print(json.dumps(out))
""")

VERIFY = textwrap.dedent("""
    import json, sys, time
    from click.testing import CliRunner
    from kstore.cli import main
    data, seconds = sys.argv[1], float(sys.argv[2])
    out = {"runs": 0, "codes": [], "crashes": [], "skipped": 0, "problems": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = CliRunner().invoke(main, ["verify", data, "--json"])
        out["runs"] += 1
        out["codes"].append(r.exit_code)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            out["crashes"].append(repr(r.exception))
            continue
        try:
            rep = json.loads(r.stdout)
        except ValueError:
            out["crashes"].append(r.output[-500:])
            continue
        out["skipped"] += len(rep.get("skipped", []))
        out["problems"] += rep["problems"]
    print(json.dumps(out))
""")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _run_beside_writer(tmp_path: Path, delay_ms: int, jobs: list[list[str]]) -> list[dict]:
    data = tmp_path / "data"
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(stop), str(delay_ms)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert writer.stdout.readline().strip() == b"ready", writer.stderr.read()
        procs = [subprocess.Popen([sys.executable, "-c", code, str(data), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
                 for code, *args in jobs]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-3000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        stop.touch()
        try:
            writer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, writer.stderr.read().decode()[-3000:]
    with kstore.open(data, read_only=True) as store:
        lg = store.partition("r", 0)
        assert lg.log_start_offset > 0  # retention did delete segments under the readers
    return results


@pytest.mark.parametrize("delay_ms", [0, 50])
def test_readers_and_verify_beside_retention(tmp_path, delay_ms):
    s = str(SECONDS)
    results = _run_beside_writer(tmp_path, delay_ms, [
        [READER, s, "records"], [READER, s, "columns"], [READER, s, "slow"], [VERIFY, s]])
    for r in results[:3]:
        assert r["errors"] == [], r["errors"][:5]
        assert r["bad"] == 0
        assert r["records"] > 0
    # The slow reader was overtaken by retention and moved on to the new log start.
    assert results[2]["resets"] > 0
    v = results[3]
    assert v["crashes"] == [], v["crashes"][:3]
    assert v["problems"] == [], v["problems"][:5]
    assert set(v["codes"]) == {0}, v["codes"]
    assert v["runs"] > 0


def test_deleted_segment_with_auto_offset_reset_none_raises_out_of_range(tmp_path):
    """In one process for determinism: a read-only consumer holds a position in a segment that
    retention then deletes; with auto_offset_reset='none' it gets OffsetOutOfRangeError (never a
    FileNotFoundError), with 'earliest' it moves to the new log start."""
    data = tmp_path / "data"
    with kstore.open(data, retention_check_interval_ms=0) as w:
        w.create_topic("r", 1, config={"segment.bytes": 1000, "file.delete.delay.ms": 0})
        lg = w.partition("r", 0)
        for i in range(100):
            lg.append_many([b"v%d" % (i * 5 + j) for j in range(5)])
        r = kstore.open(data, read_only=True)
        try:
            strict = r.consumer(auto_offset_reset="none")
            strict.assign([("r", 0)])
            strict.seek("r", 0, 0)
            easy = r.consumer(auto_offset_reset="earliest", fetch_max_bytes=100)
            easy.assign([("r", 0)])
            easy.seek("r", 0, 0)
            assert strict.poll(timeout=0, max_records=1)[0].offset == 0
            assert easy.poll(timeout=0, max_records=1)[0].offset == 0
            # The readers have the first segment open and mapped; retention removes it and
            # the ones after it.
            segs = lg.segments()
            assert len(segs) > 5
            third = segs[2].base_offset
            w.alter_topic_config("r", {"retention.bytes": segs[-1].size + segs[-2].size})
            w.run_maintenance()
            start = lg.log_start_offset
            assert start > third
            assert not (data / "r-0" / "00000000000000000000.log").exists()
            # An offset in a segment the readers listed but never opened, deleted since.
            strict.seek("r", 0, third + 1)
            with pytest.raises(OffsetOutOfRangeError):
                strict.poll(timeout=0)
            easy.seek("r", 0, third + 1)
            got = easy.poll(timeout=0)
            assert got and got[0].offset == start
        finally:
            r.close()


def _writer_with_segments(data: Path) -> kstore.Store:
    w = kstore.open(data, retention_check_interval_ms=0)
    w.create_topic("r", 1, config={"segment.bytes": 2000, "file.delete.delay.ms": 0})
    lg = w.partition("r", 0)
    for i in range(60):
        lg.append_many([b"v%d" % (i * 5 + j) for j in range(5)])
    return w


def test_verify_skips_segments_retention_deletes_while_it_runs(tmp_path, monkeypatch):
    """Deterministic: retention runs in the middle of verify's pass (after it listed the
    segments, before it reads the first). The deleted segments are reported as skipped, exit 0."""
    from click.testing import CliRunner

    from kstore import cli

    data = tmp_path / "data"
    w = _writer_with_segments(data)
    try:
        real = cli._scan_segment
        fired = []

        def scan_after_retention(path, base):
            if not fired:
                fired.append(True)
                w.alter_topic_config("r", {"retention.bytes": 4000})
                w.run_maintenance()
            return real(path, base)

        monkeypatch.setattr(cli, "_scan_segment", scan_after_retention)
        r = CliRunner().invoke(cli.main, ["verify", str(data), "--json"])
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["problems"] == []
        assert rep["skipped"] and all("deleted by the writer" in k for k in rep["skipped"])
        assert "00000000000000000000.log" in rep["skipped"][0]
    finally:
        w.close()


def test_verify_still_reports_a_segment_deleted_by_hand(tmp_path, monkeypatch):
    """A middle segment removed outside kstore while verify runs is damage, not retention."""
    from click.testing import CliRunner

    from kstore import cli

    data = tmp_path / "data"
    _writer_with_segments(data).close()
    logs = sorted((data / "r-0").glob("*.log"))
    with kstore.open(data, read_only=True) as store:
        lg = store.partition("r", 0)
        logs[2].unlink()
        problems = lg.verify()
        assert any("missing" in p and logs[2].name in p for p in problems), problems
    real = cli._scan_segment

    def scan_after_unlink(path, base):
        logs[3].unlink(missing_ok=True)
        return real(path, base)

    monkeypatch.setattr(cli, "_scan_segment", scan_after_unlink)
    r = CliRunner().invoke(cli.main, ["verify", str(data)])
    assert r.exit_code == 2, r.output
    assert "missing" in r.stderr and logs[3].name in r.stderr, r.stderr
