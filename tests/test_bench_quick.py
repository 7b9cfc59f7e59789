"""Quick mode of the benchmark suites, so they cannot rot: the peer comparison with a tiny N
and one run (whichever peers are installed), `kstore bench --compare`, the server benchmarks
(benchmarks/test_bench_server.py, one round at a tiny N, then benchmarks/report.py on their
JSON), and every asv benchmark class's setup plus each timing method once with a small
workload (called directly, without asv)."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kstore import peers
from kstore.cli import main

from .conftest import need

ROOT = Path(__file__).resolve().parent.parent
N = 2000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    lines: list[str] = []
    rep = peers.run(N, 1, root=root, log=lines.append)
    rep.log_lines = lines
    assert list(root.iterdir()) == []  # the temporary data folder is removed
    return rep


def test_peers_table_has_kstore_floor_and_sqlite(report):
    rows = report.rows()
    got = {(r["peer"], r["phase"]) for r in rows}
    for want in [("kstore", "write"), ("kstore", "read"), ("kstore", "columnar"),
                 ("os.write log", "write"), ("os.write log", "read"),
                 ("SQLite", "write"), ("SQLite", "read")]:
        assert want in got
    for r in rows:
        assert r["records"] == N and r["records_per_s"] > 0 and r["mb_per_s"] > 0
        assert r["records_per_s_min"] <= r["records_per_s"] <= r["records_per_s_max"]
    assert all(r["ratio_to_kstore"] == 1.0 for r in rows if r["peer"] == "kstore")
    rendered = peers.markdown(report)
    assert "| write | kstore |" in rendered and "| read | SQLite |" in rendered
    from rich.console import Console
    console = Console(record=True, width=140)
    console.print(peers.table(report))
    assert "os.write log" in console.export_text()


def test_peers_installed_ones_ran_and_missing_ones_say_why(report):
    ran = {r["peer"] for r in report.rows()}
    skipped = dict(report.skipped)
    for name in peers.PEERS:
        assert (name in ran) != (name in skipped), name
    if importlib.util.find_spec("redis") is None:  # without the [bench] extra
        assert skipped["Redis Streams"] == ("redis (the Python client) is not installed "
                                            "(pip install 'kstore[bench]')")
    elif shutil.which("redis-server") is None:
        assert "redis-server is not installed" in skipped["Redis Streams"]
    for why in skipped.values():
        assert "kstore[bench]" in why or "redis-server" in why


def test_missing_peer_package_is_skipped_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb now raises ImportError
    lines: list[str] = []
    rep = peers.run(300, 1, peers=["LMDB"], root=tmp_path, log=lines.append)
    assert {r["peer"] for r in rep.rows()} == {"kstore"}
    assert rep.skipped == [("LMDB", "lmdb is not installed (pip install 'kstore[bench]')")]
    assert "skipped LMDB: lmdb is not installed (pip install 'kstore[bench]')" in lines


def test_kstore_does_not_import_peers():
    import subprocess
    code = ("import sys, kstore, kstore.cli; bad = [m for m in ('kstore.peers', 'lmdb', 'redis', "
            "'persistqueue', 'diskcache', 'matplotlib', 'kafka') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_peers_plot_is_written(report, tmp_path):
    need("matplotlib")
    out = peers.plot(report, tmp_path / "peers.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_benchmarks_peers_script(tmp_path, monkeypatch, capsys):
    need("matplotlib")
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    assert mod.main(["--records", "500", "--runs", "1", "--peers", "os.write log,SQLite",
                     "--plot", "p.png", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["peer"] for r in out["results"]} == {"kstore", "os.write log", "SQLite"}
    assert (tmp_path / "p.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_cli_bench_compare(tmp_path, monkeypatch):
    need("matplotlib")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["bench", "--compare", "--records", "500", "--runs", "1",
                                    "--plot", "c.png", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"kstore", "os.write log", "SQLite"} <= {r["peer"] for r in out["results"]}
    assert (tmp_path / "c.png").exists()
    assert "kstore.peers" in sys.modules  # the CLI uses the installed module, not benchmarks/
    assert not any(m.startswith("benchmarks") and "peers" in m for m in sys.modules)


def test_cli_plot_needs_compare(tmp_path):
    res = CliRunner().invoke(main, ["--data", str(tmp_path / "d"), "bench", "--plot", "x.png"])
    assert res.exit_code == 1 and "--compare" in res.output  # usage errors exit 1 here


# ---- benchmarks/test_bench_server.py at a tiny N -------------------------------------------

SERVER_BENCHES = {
    "confluent": ["test_serve_produce_confluent_acks_1", "test_serve_produce_confluent_acks_all",
                  "test_serve_consume_confluent_assign", "test_serve_consume_confluent_group"],
    "kafka": ["test_serve_consume_kafka_python"],
    "redis": ["test_serve_produce_baseline_redis_xadd", "test_serve_consume_baseline_redis_xrange",
              "test_serve_consume_baseline_redis_xread"],
    None: ["test_serve_produce_raw_pipelined", "test_serve_fetch_baseline_os_sendfile"],
}


def _installed(what):
    if what is None:
        return True
    if what == "redis":
        return importlib.util.find_spec("redis") is not None and bool(shutil.which("redis-server"))
    return importlib.util.find_spec(what + "_kafka" if what == "confluent" else what) is not None


def _bench_env() -> dict[str, str]:
    """This environment less pytest-xdist's worker variables: pytest-benchmark turns itself off
    in a process that looks like an xdist worker (and the runs below pass -n 0 for addopts' -n)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}


def test_server_benchmarks_quick(tmp_path, capsys):
    """Every server benchmark once at N records (the installed clients' ones), then the
    report with its ratios; the data folders and servers are gone afterwards."""
    out = tmp_path / "server.json"
    env = {**_bench_env(), "KSTORE_BENCH_RECORDS": str(N), "KSTORE_BENCH_ROUNDS": "1",
           "KSTORE_BENCH_DIR": str(tmp_path), "KSTORE_SERVER_FETCH_MB": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_bench_server.py"),
         "--benchmark-only", f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider", "-rs",
         "-n", "0"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    ran = {b["name"] for b in data["benchmarks"]}
    for what, names in SERVER_BENCHES.items():
        for name in names:
            assert (name in ran) == _installed(what), (name, res.stdout[-2000:])
    if _installed("confluent"):
        assert "test_serve_fetch_sendfile" in ran
    for b in data["benchmarks"]:
        extra = b["extra_info"]
        assert b["stats"]["rounds"] >= 1 and "load_1m" in extra
        assert extra.get("records", N) == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.json"]
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    capsys.readouterr()
    report.main(str(out))
    text = capsys.readouterr().out
    assert "## server produce" in text and "## server fetch" in text
    assert "x vs os_sendfile" in text
    if _installed("redis"):
        assert "x vs redis_xadd" in text and "x vs redis_xrange" in text


# ---- benchmarks/test_bench_multiprocess.py at a tiny N ----------------------------------------

def test_multiprocess_benchmarks_quick(tmp_path):
    """1, 2 and 4 writer processes (and the exclusive baseline) once each at a tiny N, and
    Producer.send per record shared and exclusive: every record lands and the throughput (and
    the 2/1, 4/1 ratios) are reported; the data folders are gone afterwards."""
    out = tmp_path / "mp.json"
    env = {**_bench_env(), "KSTORE_BENCH_RECORDS": str(N), "KSTORE_BENCH_ROUNDS": "1",
           "KSTORE_BENCH_DIR": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_bench_multiprocess.py"),
         "--benchmark-only", f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", "-n", "0"],  # in file order: 1-shared before the 2/1 and 4/1 ratios
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    benches = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    runs = {b["processes"]: b for b in benches
            if b["mode"] == "shared" and b["workload"] == "send_many"}
    assert sorted(runs) == [1, 2, 4]
    assert all(r["records_per_s_median"] > 0 for r in runs.values())
    assert all(runs[n]["ratio_to_1_shared"] > 0 for n in (2, 4))
    separate = [b for b in benches if b["mode"] == "separate"]
    assert [b["processes"] for b in separate] == [2] and separate[0]["records_per_s_median"] > 0
    own = [b for b in benches if b["mode"] == "shared-own-topics"]
    assert [b["processes"] for b in own] == [2] and own[0]["records_per_s_median"] > 0
    sends = {b["mode"]: b for b in benches if b["workload"] == "send"}
    assert sorted(sends) == ["exclusive", "shared"]
    assert all(b["records_per_s_median"] > 0 and b["processes"] == 1 for b in sends.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mp.json"]


# ---- asv suite, each benchmark once ---------------------------------------------------------

def _load_asv_module():
    path = ROOT / "benchmarks" / "asv" / "bench_kstore.py"
    spec = importlib.util.spec_from_file_location("kstore_asv_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ASV = _load_asv_module()
CLASSES = [c for _, c in inspect.getmembers(ASV, inspect.isclass)
           if c.__module__ == ASV.__name__ and not c.__name__.startswith("_")]


def test_asv_covers_the_issue():
    names = {c.__name__ for c in CLASSES}
    assert {"Codec", "LogAppend", "LogRead", "Producer", "Consumer", "Recovery",
            "Compaction", "Serve"} <= names
    methods = {m for c in CLASSES for m in dir(c) if m.startswith(("time_", "track_"))}
    assert {"time_encode", "time_decode_records", "time_sendfile", "time_send",
            "time_send_many", "time_iterate", "time_poll_batches",
            "time_open_after_unclean_close", "time_clean_log", "time_produce",
            "time_consume"} <= methods


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_asv_benchmark_once(cls, tmp_path, monkeypatch):
    monkeypatch.setattr(ASV, "ROOT", tmp_path)
    monkeypatch.setattr(ASV, "MB", 1)  # tiny parameters
    params = getattr(cls, "params", None)
    if params is None:
        combos = [()]
    elif params and isinstance(params[0], list):
        combos = list(itertools.product(*params))
    else:
        combos = [(p,) for p in params]
    if cls.__name__ == "Codec":  # every codec, the small record size only
        combos = [c for c in combos if c[1] == 100]
    for args in combos:
        for name in sorted(m for m in dir(cls) if m.startswith(("time_", "track_"))):
            obj = cls()
            try:
                obj.setup(*args)
            except NotImplementedError as exc:  # asv's way to skip (a missing client)
                pytest.skip(str(exc))
            try:
                getattr(obj, name)(*args)
            finally:
                obj.teardown(*args) if hasattr(obj, "teardown") else None
    assert list(tmp_path.iterdir()) == []


# ---- benchmarks/test_bench_mirror.py and test_bench_connect.py at a tiny N -------------------

def test_mirror_and_connect_benchmarks_quick(tmp_path):
    """The mirror both ways (whole batches and record by record) beside the bare confluent-kafka
    baseline, and send_many / poll_batches through kstore.connect beside embedded, once each at
    a tiny N: every run moved every record (each benchmark checks its count)."""
    need("confluent_kafka", "test")
    out = tmp_path / "mirror.json"
    env = {**_bench_env(), "KSTORE_BENCH_RECORDS": str(N), "KSTORE_BENCH_ROUNDS": "1",
           "KSTORE_BENCH_DIR": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_bench_mirror.py"),
         str(ROOT / "benchmarks" / "test_bench_connect.py"), "--benchmark-only",
         f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-n", "0"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    ran = {b["name"] for b in json.loads(out.read_text())["benchmarks"]}
    assert ran == {"test_mirror_store_to_serve[batches]", "test_mirror_store_to_serve[per_record]",
                   "test_mirror_baseline_bare_confluent_produce",
                   "test_mirror_serve_to_store[batches]", "test_mirror_serve_to_store[per_record]",
                   "test_connect_send_many[embedded]", "test_connect_send_many[cluster]",
                   "test_connect_poll_batches[embedded]", "test_connect_poll_batches[cluster]"}
