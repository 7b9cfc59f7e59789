"""The kstore command line (kstore.cli): every command, its main options, exit codes (0 ok,
1 usage error, 2 data error, 130 produce interrupted), JSON output, and the behaviours that need
real processes (Ctrl-C during produce, consume --follow beside a writer)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import kstore
from kstore import records
from kstore.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _readable(f, timeout: float) -> bool:
    """poll, not select: select refuses descriptors >= 1024 (a long test run opens many)."""
    p = select.poll()
    p.register(f.fileno(), select.POLLIN | select.POLLHUP)
    return bool(p.poll(timeout * 1000))


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.exit_code = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Ran exit={self.exit_code} stderr={self.stderr[-500:]!r}>"


def run(data: Path, *args: str, input: bytes | str | None = None, env: dict | None = None):
    """Run `python -m kstore --data DATA ARGS` as a real process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.run([sys.executable, "-m", "kstore", "--data", str(data), *args],
                          input=input if input is not None else b"", capture_output=True,
                          env=full_env, timeout=120)
    return Ran(proc)


def count_records(data: Path, topic: str) -> int:
    with kstore.open(data, read_only=True) as store:
        return sum(store.partition(topic, p).log_end_offset - store.partition(topic, p).log_start_offset
                   for p in range(store.partitions_for(topic)))


def segment(data: Path, topic: str, partition: int = 0) -> Path:
    return data / f"{topic}-{partition}" / f"{0:020d}.log"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "kstore-data"


@pytest.fixture
def filled(data: Path) -> Path:
    """A store with topic 'events' (1 partition) of several batches: 3000 keyed lines."""
    assert run(data, "topics", "create", "events").exit_code == 0
    lines = "".join(f"user-{i % 7}:event number {i:05d} " + "x" * 40 + "\n" for i in range(3000))
    r = run(data, "produce", "events", "--key-separator", ":", input=lines)
    assert r.exit_code == 0, r.stderr
    return data


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("KSTORE_DATA", None)
    return env


# ==============================================================================================
# Usage and exit codes


def test_help_version_and_python_dash_m(data: Path) -> None:
    r = run(data, "--help")
    assert r.exit_code == 0
    for cmd in ("bench", "topics", "produce", "consume", "groups", "dump-log", "verify", "maintenance"):
        assert cmd in r.stdout
    assert run(data, "--version").stdout.strip().endswith(kstore.__version__)
    for cmd in (["bench"], ["topics", "list"], ["topics", "create"], ["topics", "describe"],
                ["topics", "delete"], ["topics", "alter"], ["produce"], ["consume"], ["groups", "list"],
                ["groups", "describe"], ["groups", "reset-offsets"], ["dump-log"], ["verify"],
                ["maintenance"]):
        h = run(data, *cmd, "--help")
        assert h.exit_code == 0 and "--data" in h.stdout or cmd == ["dump-log"], cmd
    p = subprocess.run([sys.executable, "-m", "kstore", "topics", "--help"], capture_output=True,
                       env=subprocess_env(), timeout=60, check=False)
    assert p.returncode == 0 and b"create" in p.stdout


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["consume"],                                            # missing TOPIC
    ["consume", "t", "--no-such-option"],
    ["topics", "create", "t", "--config", "no.such.key=1"],  # bad config key
    ["topics", "create", "t", "--config", "retention.ms=soon"],  # bad config value
    ["topics", "create", "t", "--config", "retention.ms"],   # not key=value
    ["topics", "create", "bad/name"],                        # bad topic name
    ["topics", "create", "t", "--partitions", "0"],
    ["consume", "t", "--offset", "3", "--timestamp", "5"],   # two start positions
    ["consume", "t", "--format", "%q"],                      # unknown format token
    ["produce", "t", "--null-delimited", "--delimiter", ","],
    ["groups", "reset-offsets", "g", "--to-earliest", "--to-latest"],
    ["bench", "--records", "0"],
])
def test_usage_errors_exit_1(data: Path, args: list[str]) -> None:
    r = run(data, *args)
    assert r.exit_code == 1, (args, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error says what is wrong on stderr"
    assert r.stdout == ""


def test_bad_config_key_names_the_known_keys(data: Path) -> None:
    r = run(data, "topics", "create", "t", "--config", "retention.msec=5")
    assert r.exit_code == 1
    assert "retention.msec" in r.stderr and "retention.ms" in r.stderr
    assert not (data / "kstore.json").exists() or "t" not in json.loads((data / "kstore.json").read_text())["topics"]


def test_unknown_topic_exits_2_and_says_what_to_do(filled: Path) -> None:
    for args in (["consume", "nope"], ["topics", "describe", "nope"], ["topics", "delete", "nope"],
                 ["topics", "alter", "nope", "--config", "retention.ms=5"],
                 ["groups", "reset-offsets", "g", "--topic", "nope", "--to-earliest"]):
        r = run(filled, *args)
        assert r.exit_code == 2, (args, r.stderr)
        assert "nope" in r.stderr and "kstore topics" in r.stderr
    r = run(filled, "produce", "nope", input="a\n")
    assert r.exit_code == 2 and "kstore topics create nope" in r.stderr
    r = run(filled, "consume", "events", "--partition", "7")
    assert r.exit_code == 2 and "partition 7" in r.stderr


def test_missing_data_directory_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    for args in (["topics", "list"], ["consume", "t"], ["verify"], ["groups", "list"], ["maintenance"]):
        r = run(missing, *args)
        assert r.exit_code == 2, args
        assert "no kstore data directory" in r.stderr and "--data" in r.stderr
    assert not missing.exists(), "read commands must not create the directory"


def test_data_dir_from_env_and_per_command_option(tmp_path: Path) -> None:
    runner = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    r = runner.invoke(main, ["topics", "create", "t1"], env={"KSTORE_DATA": str(a)})
    assert r.exit_code == 0 and (a / "kstore.json").exists()
    r = runner.invoke(main, ["topics", "create", "t2", "--data", str(b)], env={"KSTORE_DATA": str(a)})
    assert r.exit_code == 0 and (b / "kstore.json").exists()
    r = runner.invoke(main, ["topics", "list", "--json"], env={"KSTORE_DATA": str(a)})
    assert [t["topic"] for t in json.loads(r.stdout)] == ["t1"]


# ==============================================================================================
# topics


def test_topics_create_list_describe_alter_delete(data: Path) -> None:
    r = run(data, "topics", "create", "clicks", "--partitions", "3",
            "--config", "retention.ms=86400000", "-c", "cleanup.policy=delete")
    assert r.exit_code == 0, r.stderr
    assert run(data, "topics", "create", "clicks").exit_code == 2          # exists
    assert run(data, "topics", "create", "clicks", "--if-not-exists").exit_code == 0

    listed = json.loads(run(data, "topics", "list", "--json").stdout)
    assert listed == [{"topic": "clicks", "partitions": 3, "records": 0, "size_bytes": 0,
                       "config": {"cleanup.policy": "delete", "retention.ms": 86400000}}]
    table = run(data, "topics", "list").stdout
    assert "clicks" in table and "retention.ms=86400000" in table

    d = json.loads(run(data, "topics", "describe", "clicks", "--json").stdout)
    assert d["partitions"] == 3 and d["config"]["retention.ms"] == 86400000
    assert d["resolved_config"]["segment.bytes"] == 1073741824
    text = run(data, "topics", "describe", "clicks", "--all-config").stdout
    assert "PartitionCount: 3" in text and "segment.bytes=1073741824" in text

    r = run(data, "topics", "alter", "clicks", "--config", "retention.bytes=1000000",
            "--delete-config", "retention.ms", "--partitions", "5")
    assert r.exit_code == 0, r.stderr
    d = json.loads(run(data, "topics", "describe", "clicks", "--json").stdout)
    assert d["partitions"] == 5 and d["config"] == {"cleanup.policy": "delete", "retention.bytes": 1000000}
    assert run(data, "topics", "alter", "clicks", "--partitions", "2").exit_code == 1   # only grow
    assert run(data, "topics", "alter", "clicks").exit_code == 1                        # nothing to do
    assert run(data, "topics", "alter", "clicks", "--delete-config", "nope").exit_code == 1

    assert run(data, "topics", "delete", "clicks").exit_code == 0
    assert json.loads(run(data, "topics", "list", "--json").stdout) == []
    assert run(data, "topics", "delete", "clicks").exit_code == 2
    assert run(data, "topics", "delete", "clicks", "--if-exists").exit_code == 0


# ==============================================================================================
# produce and consume


def test_produce_consume_round_trip_with_key_separator_and_format(data: Path) -> None:
    run(data, "topics", "create", "t", "--partitions", "2")
    r = run(data, "produce", "t", "-K", "=", input="k1=alpha\nk2=beta\nno separator here\nk1=gamma=x\n")
    assert r.exit_code == 0 and "wrote 4 records" in r.stderr
    # Default: each value and a newline, as kcat does.
    r = run(data, "consume", "t")
    assert r.exit_code == 0
    assert sorted(r.stdout.splitlines()) == ["alpha", "beta", "gamma=x", "no separator here"]
    r = run(data, "consume", "t", "--format", r"%k\t%v\n")
    assert sorted(r.stdout.splitlines()) == ["\tno separator here", "k1\talpha", "k1\tgamma=x", "k2\tbeta"]
    # Records with the same key stay in order in one partition.
    rows = [json.loads(line) for line in run(data, "consume", "t", "--json").stdout.splitlines()]
    assert len(rows) == 4
    k1 = [x for x in rows if x["key"] == "k1"]
    assert [x["value"] for x in k1] == ["alpha", "gamma=x"] and k1[0]["partition"] == k1[1]["partition"]
    assert {x["topic"] for x in rows} == {"t"} and all(isinstance(x["timestamp"], int) for x in rows)
    assert [x["key"] for x in rows if x["value"] == "no separator here"] == [None]
    # Every format token.
    r = run(data, "consume", "t", "--partition", str(k1[0]["partition"]), "--max", "1",
            "--format", "%t|%p|%o|%k|%v|%K|%S|%%|%T\n")
    t, p, o, k, v, klen, vlen, pct, ts = r.stdout.rstrip("\n").split("|")
    assert (t, p, o, k, v, klen, vlen, pct) == ("t", str(k1[0]["partition"]), "0", "k1", "alpha", "2", "5", "%")
    assert int(ts) == k1[0]["timestamp"]


def test_consume_start_positions_and_max(data: Path) -> None:
    run(data, "topics", "create", "t")
    run(data, "produce", "t", input="".join(f"v{i}\n" for i in range(10)))
    assert run(data, "consume", "t", "--max", "3").stdout == "v0\nv1\nv2\n"
    assert run(data, "consume", "t", "--offset", "7").stdout == "v7\nv8\nv9\n"
    assert run(data, "consume", "t", "-o", "-2").stdout == "v8\nv9\n"
    assert run(data, "consume", "t", "--offset", "end").stdout == ""
    assert run(data, "consume", "t", "--offset", "99").stdout == ""          # clamped to the end
    assert run(data, "consume", "t", "--from-beginning", "--max", "1").stdout == "v0\n"
    assert run(data, "consume", "t", "--timestamp", "yesterday-ish").exit_code == 1


def test_consume_from_timestamp(data: Path) -> None:
    run(data, "topics", "create", "t")
    base = 1_700_000_000_000
    with kstore.open(data, retention_check_interval_ms=0) as store:
        p = store.producer(linger_ms=0)
        for i in range(10):
            p.send("t", b"v%d" % i, timestamp=base + 1000 * i)
            p.flush()  # one batch per record
    assert run(data, "consume", "t", "--timestamp", str(base + 4500)).stdout == "v5\nv6\nv7\nv8\nv9\n"
    assert run(data, "consume", "t", "--timestamp", str(base + 8000)).stdout == "v8\nv9\n"
    assert run(data, "consume", "t", "--timestamp", str(base + 10**6)).stdout == ""
    iso = datetime.datetime.fromtimestamp((base + 9000) / 1000, datetime.UTC).isoformat()
    assert run(data, "consume", "t", "--timestamp", iso).stdout == "v9\n"


def test_consume_from_timestamp_shared_by_a_batch(data: Path) -> None:
    run(data, "topics", "create", "t")
    with kstore.open(data, retention_check_interval_ms=0) as store:
        store.producer(linger_ms=0).send_many("t", [b"v%d" % i for i in range(10)],
                                              timestamps=[1_700_000_000_000] * 10)
    assert run(data, "consume", "t", "--timestamp", "1700000000000").stdout.count("\n") == 10


def test_produce_null_delimited_file_and_partition(data: Path, tmp_path: Path) -> None:
    run(data, "topics", "create", "t", "--partitions", "3")
    f = tmp_path / "in.bin"
    f.write_bytes(b"one\nline\x00two\x00\x00three")          # NUL-delimited, newlines inside
    r = run(data, "produce", "t", "--file", str(f), "--null-delimited", "--partition", "2")
    assert r.exit_code == 0 and "wrote 4 records" in r.stderr
    rows = [json.loads(x) for x in run(data, "consume", "t", "--json").stdout.splitlines()]
    assert [x["value"] for x in rows] == ["one\nline", "two", "", "three"]
    assert {x["partition"] for x in rows} == {2}
    r = run(data, "produce", "t", "--file", str(f), "-0", "--skip-empty", "-z", "lz4")
    assert r.exit_code == 0 and "wrote 3 records" in r.stderr
    assert run(data, "produce", "t", "--file", str(tmp_path / "missing")).exit_code == 1
    assert run(data, "produce", "t", "--partition", "3", input="x\n").exit_code == 2


def test_consume_json_encodes_binary_values_as_base64(data: Path) -> None:
    run(data, "topics", "create", "t")
    with kstore.open(data, retention_check_interval_ms=0) as store:
        p = store.producer(linger_ms=0)
        p.send("t", b"\xff\xfe", key=b"k", headers=[("h", b"v")])
        p.send("t", None, key=b"tomb")
        p.flush()
    rows = [json.loads(x) for x in run(data, "consume", "t", "--json").stdout.splitlines()]
    assert rows[0]["value_encoding"] == "base64" and rows[0]["value"] == "//4="
    assert rows[0]["headers"] == {"h": "v"}
    assert rows[1]["value"] is None and rows[1]["key"] == "tomb"
    assert run(data, "consume", "t", "--format", "%h|%S\n").stdout == "h=v|2\n|-1\n"


# ==============================================================================================
# groups


def test_group_consume_commits_and_groups_commands(filled: Path) -> None:
    r = run(filled, "consume", "events", "--group", "etl", "--max", "1000")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1000
    # The next run of the group goes on from the commit.
    r = run(filled, "consume", "events", "--group", "etl", "--max", "1")
    assert r.stdout == "event number 01000 " + "x" * 40 + "\n"

    assert json.loads(run(filled, "groups", "list", "--json").stdout) == [
        {"group": "etl", "topics": ["events"], "partitions": 1, "lag": 1999}]
    d = json.loads(run(filled, "groups", "describe", "etl", "--json").stdout)
    assert d["partitions"][0]["committed"] == 1001 and d["partitions"][0]["lag"] == 1999
    assert "1,999" in run(filled, "groups", "describe", "etl").stdout
    assert run(filled, "groups", "describe", "nobody").exit_code == 2

    r = run(filled, "groups", "reset-offsets", "etl", "--to-offset", "10", "--dry-run", "--json")
    assert json.loads(r.stdout)["partitions"] == [{"topic": "events", "partition": 0, "old": 1001, "new": 10}]
    assert json.loads(run(filled, "groups", "describe", "etl", "--json").stdout)["partitions"][0]["committed"] == 1001
    # Without --execute, as Kafka's tool: the plan is printed and nothing changes.
    r = run(filled, "groups", "reset-offsets", "etl", "--to-offset", "10")
    assert r.exit_code == 0 and "dry run" in r.stdout and "--execute" in r.stderr
    assert json.loads(run(filled, "groups", "describe", "etl", "--json").stdout)["partitions"][0]["committed"] == 1001
    r = run(filled, "groups", "reset-offsets", "etl", "--to-offset", "10", "--json")
    assert json.loads(r.stdout)["dry_run"] is True
    assert json.loads(run(filled, "groups", "describe", "etl", "--json").stdout)["partitions"][0]["committed"] == 1001
    assert run(filled, "groups", "reset-offsets", "etl", "--to-offset", "1", "--dry-run",
               "--execute").exit_code == 1
    r = run(filled, "groups", "reset-offsets", "etl", "--to-offset", "10", "--execute")
    assert r.exit_code == 0 and "offsets reset" in r.stdout
    assert run(filled, "consume", "events", "-G", "etl", "--max", "1").stdout.startswith("event number 00010")
    run(filled, "groups", "reset-offsets", "etl", "--to-latest", "--execute")
    assert run(filled, "consume", "events", "-G", "etl").stdout == ""
    run(filled, "groups", "reset-offsets", "etl", "--shift-by", "-5", "--execute")
    assert len(run(filled, "consume", "events", "-G", "etl").stdout.splitlines()) == 5
    r = run(filled, "groups", "reset-offsets", "new-group", "--topic", "events", "--to-earliest",
            "--execute")
    assert r.exit_code == 0
    assert json.loads(run(filled, "groups", "describe", "new-group", "--json").stdout)["partitions"][0]["committed"] == 0
    assert run(filled, "groups", "reset-offsets", "ghost", "--to-earliest").exit_code == 2


# ==============================================================================================
# Read-only commands beside a writer; writing commands refused


def test_writing_commands_work_beside_another_writer(filled: Path) -> None:
    """The default store is shared: producers, topic changes, group consumers, maintenance and
    offset resets run while a program embedding kstore writes to the same directory."""
    with kstore.open(filled, retention_check_interval_ms=0) as store:   # another writer
        p = store.producer(linger_ms=0)
        p.send("events", b"fresh", key=b"k")
        p.flush()
        for args, stdin in ((["produce", "events"], "from-cli\n"), (["topics", "create", "more"], None),
                            (["consume", "events", "--group", "g", "-e"], None),
                            (["maintenance"], None),
                            (["groups", "reset-offsets", "g", "--topic", "events", "--to-earliest",
                              "--execute"], None)):
            r = run(filled, *args, input=stdin)
            assert r.exit_code == 0, (args, r.stderr)
        p.send("events", b"after", key=b"k")
        p.flush()
        # Another process too, while this one keeps the store open.
        proc = subprocess.run([sys.executable, "-m", "kstore", "--data", str(filled), "produce",
                               "events"], input=b"from-process\n", capture_output=True,
                              env=subprocess_env(), timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "more" in store.topics()  # made by the CLI, seen here
        values = [r.value for p_ in range(store.partitions_for("events"))
                  for r in store.partition("events", p_).read_records(0)]
        for v in (b"fresh", b"from-cli", b"after", b"from-process"):
            assert values.count(v) == 1, v


def test_locked_directory(filled: Path) -> None:
    with kstore.open(filled, retention_check_interval_ms=0, exclusive=True) as store:
        p = store.producer(linger_ms=0)
        p.send("events", b"fresh", key=b"k")
        p.flush()
        for args, stdin in ((["produce", "events"], "x\n"), (["topics", "create", "more"], None),
                            (["consume", "events", "--group", "g"], None), (["maintenance"], None),
                            (["groups", "reset-offsets", "g", "--topic", "events", "--to-earliest",
                              "--execute"], None),
                            (["bench", "--records", "10"], None)):
            r = run(filled, *args, input=stdin)
            assert r.exit_code == 2, args
            assert "open for writing by another process" in r.stderr and "read-only" in r.stderr
        # The same from another process (fcntl locks are per process as well).
        proc = subprocess.run([sys.executable, "-m", "kstore", "--data", str(filled), "produce",
                               "events"], input=b"x\n", capture_output=True, env=subprocess_env(),
                              timeout=60, check=False)
        assert proc.returncode == 2 and b"open for writing by another process" in proc.stderr
        # Read-only commands work beside it and see its records.
        r = run(filled, "consume", "events", "--offset", "-1")
        assert r.exit_code == 0 and r.stdout == "fresh\n"
        assert run(filled, "topics", "describe", "events").exit_code == 0
        assert run(filled, "topics", "list").exit_code == 0
        assert run(filled, "verify").exit_code == 0
        assert run(filled, "dump-log", str(segment(filled, "events"))).exit_code == 0


# ==============================================================================================
# dump-log and verify


def corrupt_second_batch(seg: Path) -> int:
    """Flip one byte inside the second batch; return that batch's position."""
    raw = bytearray(seg.read_bytes())
    batches = list(records.iter_batches(bytes(raw)))
    assert len(batches) >= 3
    pos = batches[1].position
    raw[pos + 100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    return pos


def test_dump_log_shows_batches_and_crc_status(filled: Path) -> None:
    seg = segment(filled, "events")
    r = run(filled, "dump-log", str(seg))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"Dumping {seg}" and lines[1] == "Log starting offset: 0"
    batch_lines = [x for x in lines if x.startswith("baseOffset:")]
    assert len(batch_lines) >= 3 and all(x.endswith("isvalid: true") for x in batch_lines)
    assert "baseOffset: 0 " in batch_lines[0] and "compresscodec: none" in batch_lines[0]
    assert "position: 0 CreateTime: " in batch_lines[0]
    r = run(filled, "dump-log", str(seg), "--print-data")
    assert "| offset: 0 CreateTime: " in r.stdout and "key: user-0 payload: event number 00000" in r.stdout
    rows = [json.loads(x) for x in run(filled, "dump-log", str(seg), "--json").stdout.splitlines()]
    assert sum(x["count"] for x in rows) == 3000 and all(x["is_valid"] for x in rows)
    idx = run(filled, "dump-log", str(seg.with_suffix(".index")))
    assert idx.exit_code == 0 and "position:" in idx.stdout
    tidx = run(filled, "dump-log", str(seg.with_suffix(".timeindex")))
    assert tidx.exit_code == 0 and "timestamp:" in tidx.stdout
    assert run(filled, "dump-log", str(filled / "kstore.json")).exit_code == 1
    assert run(filled, "dump-log", str(filled / "missing.log")).exit_code == 1


def test_dump_log_flags_a_corrupt_batch(filled: Path) -> None:
    seg = segment(filled, "events")
    pos = corrupt_second_batch(seg)
    r = run(filled, "dump-log", str(seg))
    assert r.exit_code == 2
    batch_lines = [x for x in r.stdout.splitlines() if x.startswith("baseOffset:")]
    assert [x.endswith("isvalid: false") for x in batch_lines].count(True) == 1
    assert f"position: {pos} " in next(x for x in batch_lines if x.endswith("isvalid: false"))
    assert f"batch at position {pos}" in r.stderr and "CRC" in r.stderr
    # A torn tail: the file ends inside a batch.
    seg.write_bytes(seg.read_bytes()[:-10])
    r = run(filled, "dump-log", str(seg))
    assert r.exit_code == 2 and "not a whole batch" in r.stderr


def test_verify_ok_then_corrupt_segment_exits_2_with_position(filled: Path) -> None:
    r = run(filled, "verify")
    assert r.exit_code == 0, r.stderr
    assert "events-0" in r.stdout and "ok" in r.stdout
    report = json.loads(run(filled, "verify", "--json").stdout)
    assert report["ok"] and report["partitions"][0]["batches"] >= 3
    seg = segment(filled, "events")
    pos = corrupt_second_batch(seg)
    r = run(filled, "verify")
    assert r.exit_code == 2
    assert "CORRUPT" in r.stdout
    assert str(seg) in r.stderr and f"batch at byte {pos}" in r.stderr and "CRC" in r.stderr
    assert "index" not in r.stderr.split("found:")[1].split("The bytes")[0]   # no follow-on noise
    report = json.loads(CliRunner().invoke(main, ["verify", str(filled), "--json"]).stdout)
    assert not report["ok"] and len(report["problems"]) == 1


def test_verify_reports_every_bad_batch_and_a_damaged_header(filled: Path) -> None:
    seg = segment(filled, "events")
    raw = bytearray(seg.read_bytes())
    pos = [b.position for b in records.iter_batches(bytes(raw))]
    assert len(pos) >= 5
    raw[pos[1] + 100] ^= 1
    raw[pos[3] + 100] ^= 1
    raw[pos[4] + 8:pos[4] + 12] = (5).to_bytes(4, "big")      # batch length: nonsense
    seg.write_bytes(bytes(raw))
    r = run(filled, "verify")
    assert r.exit_code == 2
    for p in pos[1], pos[3], pos[4]:
        assert f"batch at byte {p}" in r.stderr
    assert f"bytes from byte {pos[4]} on could not be checked" in r.stderr
    # Consuming stops at the first bad batch, says so and points at verify.
    r = run(filled, "consume", "events")
    assert r.exit_code == 2 and "kstore verify" in r.stderr and "CRC" in r.stderr


def test_verify_torn_tail_is_a_warning(filled: Path) -> None:
    seg = segment(filled, "events")
    seg.write_bytes(seg.read_bytes()[:-7])
    r = run(filled, "verify")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "incomplete batch" in r.stderr


def test_read_only_consume_of_a_torn_tail_sees_the_whole_batches(data: Path) -> None:
    run(data, "topics", "create", "e")
    run(data, "produce", "e", input="".join(f"{i}\n" for i in range(30000)))
    seg = segment(data, "e")
    seg.write_bytes(seg.read_bytes()[:-7])
    from kstore.records import scan

    whole = int(scan(seg.read_bytes()).record_counts.sum())  # every batch but the torn last one
    assert 0 < whole < 30000
    assert len(run(data, "consume", "e").stdout.splitlines()) == whole


def test_verify_positional_data_argument(filled: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["--data", str(tmp_path / "elsewhere"), "verify", str(filled)])
    assert r.exit_code == 0, r.stderr


# ==============================================================================================
# maintenance


def test_maintenance_runs_retention_and_reports(data: Path) -> None:
    run(data, "topics", "create", "small", "--config", "segment.bytes=4096",
        "--config", "retention.bytes=8192", "--config", "file.delete.delay.ms=0")
    run(data, "produce", "small", input="".join(f"record {i:06d} " + "y" * 50 + "\n" for i in range(1000)))
    before = json.loads(run(data, "topics", "describe", "small", "--json").stdout)["partition_info"][0]
    assert before["segments"] > 4
    r = run(data, "maintenance", "--json")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["partitions"]
    assert rows[0]["partition"] == "small-0" and rows[0]["deleted_segments"] > 0
    assert rows[0]["reason"] == "size"
    after = json.loads(run(data, "topics", "describe", "small", "--json").stdout)["partition_info"][0]
    assert after["log_start_offset"] == rows[0]["log_start_offset"] > 0
    assert after["segments"] == before["segments"] - rows[0]["deleted_segments"]
    r = run(data, "maintenance")
    assert r.exit_code == 0 and "nothing to delete" in r.stderr


# ==============================================================================================
# Real processes: Ctrl-C during produce, consume --follow


def wait_until(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_ctrl_c_during_produce_keeps_every_acknowledged_record(data: Path) -> None:
    run(data, "topics", "create", "t", "--partitions", "2")
    proc = subprocess.Popen([sys.executable, "-m", "kstore", "--data", str(data), "produce", "t",
                             "-K", ","], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env())
    try:
        sent = 0
        for burst in range(5):
            proc.stdin.write(b"".join(b"k%d,value %d\n" % (i, i) for i in range(sent, sent + 2000)))
            proc.stdin.flush()
            sent += 2000
        proc.stdin.write(b"k-partial,this line has no newline yet")
        proc.stdin.flush()
        wait_until(lambda: (data / "t-0").exists() and count_records(data, "t") >= sent)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    assert f"interrupted: {sent:,} records were written" in err, err
    assert count_records(data, "t") == sent
    values = run(data, "consume", "t").stdout.splitlines()
    assert sorted(values, key=lambda v: int(v.split()[1])) == [f"value {i}" for i in range(sent)]
    assert run(data, "verify").exit_code == 0


def test_ctrl_c_in_the_middle_of_a_stream_reports_the_exact_count(data: Path) -> None:
    """SIGINT while input pours in (most likely during a send): the count printed is the
    count on disk, and no record is half-written."""
    run(data, "topics", "create", "t", "--partitions", "3")
    proc = subprocess.Popen([sys.executable, "-m", "kstore", "--data", str(data), "produce", "t"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    block = b"".join(b"line %06d of a long stream\n" % i for i in range(100_000))

    def feed() -> None:
        try:
            while True:
                proc.stdin.write(block)
        except (BrokenPipeError, ValueError, OSError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: (data / "t-0").exists() and count_records(data, "t") >= 300_000)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stderr.close()
    reported = int(err.split("interrupted: ")[1].split(" records")[0].replace(",", ""))
    assert reported >= 300_000 and count_records(data, "t") == reported
    assert run(data, "verify").exit_code == 0


def test_consume_follow_sees_new_records_and_stops_on_ctrl_c(data: Path) -> None:
    run(data, "topics", "create", "t")
    run(data, "produce", "t", input="before\n")
    proc = subprocess.Popen([sys.executable, "-m", "kstore", "consume", "t", "--follow",
                             "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env())
    got = b""

    def read_until(text: bytes) -> None:
        nonlocal got
        deadline = time.monotonic() + 15
        while text not in got:
            assert time.monotonic() < deadline, got
            ready = _readable(proc.stdout, 0.1)
            if ready:
                got += os.read(proc.stdout.fileno(), 65536)

    try:
        read_until(b"before\n")
        with kstore.open(data, retention_check_interval_ms=0) as store:  # a writer beside it
            p = store.producer(linger_ms=0)
            p.send("t", b"after")
            p.flush()
            read_until(b"after\n")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert got == b"before\nafter\n"


# ==============================================================================================
# bench


def test_bench_small_json(data: Path) -> None:
    r = run(data, "bench", "--records", "20000", "--json", "--partitions", "3")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["records"] == 20000 and res["partitions"] == 3 and res["value_size"] == 100
    assert res["verified"] == {"count": True, "crc": True, "indexes": True, "exactly_once": True}
    assert set(res["phases"]) == {"produce", "consume_records", "consume_columnar", "verify", "os_write"}
    for ph in res["phases"].values():
        assert ph["records_per_s"] > 0 and ph["mb_per_s"] > 0 and ph["ratio_to_os_write"] > 0
    assert res["phases"]["os_write"]["ratio_to_os_write"] == 1.0
    assert res["log_bytes"] > 20000 * 110
    assert count_records(data, "kstore-bench") == 20000
    assert not (data / ".bench-os-write.tmp").exists()


def test_bench_table_with_compression_and_no_keep(data: Path) -> None:
    r = run(data, "bench", "--records", "5000", "--compression", "zstd", "--value-size", "40",
            "--no-keep")
    assert r.exit_code == 0, r.stderr
    for phase in ("produce (send_many)", "consume (Record objects)", "consume (numpy columns)",
                  "plain os.write, same bytes", "vs os.write", "records/s", "MB/s"):
        assert phase in r.stdout
    assert "every event exactly once" in r.stdout
    assert json.loads(run(data, "topics", "list", "--json").stdout) == []


def test_consume_isolation_level_read_committed_skips_aborted_and_stops_at_the_lso(tmp_path):
    data = tmp_path / "d"
    with kstore.open(data) as s:
        s.create_topic("tx", 1)
        plain = s.producer(linger_ms=0)
        tx = s.producer(transactional_id="cli", linger_ms=0)
        for i, commit in enumerate((True, False, True)):
            tx.begin_transaction()
            tx.send("tx", b"txn-%d" % i, partition=0)
            plain.send("tx", b"plain-%d" % i, partition=0)
            plain.flush()
            (tx.commit_transaction if commit else tx.abort_transaction)()
        tx.begin_transaction()
        tx.send("tx", b"open", partition=0)
        tx.flush()
        plain.send("tx", b"after-open", partition=0)  # past the LSO: not readable committed
        plain.flush()
        tx._txn = None  # noqa: SLF001 - leave the transaction open on disk
    everything = run(data, "consume", "tx").stdout.split()
    assert sorted(everything) == sorted(["txn-0", "plain-0", "txn-1", "plain-1", "txn-2",
                                         "plain-2", "open", "after-open"])
    r = run(data, "consume", "tx", "--isolation-level", "read_committed")
    assert r.exit_code == 0, r.stderr  # exits at the LSO, no wait for the open transaction
    cut = everything.index("open")  # the LSO: the open transaction's first record
    assert r.stdout.split() == [v for v in everything[:cut] if v != "txn-1"]
