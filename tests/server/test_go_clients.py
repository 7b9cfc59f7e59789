"""Go clients of older protocol versions against ``kstore serve`` (issue 18): segmentio kafka-go
(Produce v2 with message format v1, Fetch v2, ListOffsets v1) and Sarama under several
Config.Version settings, built offline from Debian's Go packages (golang-go,
golang-github-segmentio-kafka-go-dev, golang-github-shopify-sarama-dev; .ci/run installs them).

The programs are ours, in tests/go/: each step prints ``ok <step>`` and a failure ``FAIL <step>:
<why>`` with exit status 1. They build in GOPATH mode against /usr/share/gocode (no module
download, no network); Go's build cache ($GOCACHE, ~/.cache/go-build by default) makes a rebuild
take about a second. One server for the module; each client run uses its own topics and group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import ROOT
from .conftest import KServer

GOPATH = Path("/usr/share/gocode")
PACKAGES = {
    "kafkago": GOPATH / "src/github.com/segmentio/kafka-go",
    "sarama": GOPATH / "src/github.com/Shopify/sarama",
}
RUN_TIMEOUT = 150.0  # seconds a client program may take (a guard against hangs)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="", CGO_ENABLED="1")
    return env


@pytest.fixture(scope="module")
def go_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed (Debian: apt-get install golang-go)")
    out = tmp_path_factory.mktemp("go")
    bins = {}
    for name, pkg in PACKAGES.items():
        if not pkg.is_dir():
            pytest.skip(f"{pkg} is missing: apt-get install golang-github-segmentio-kafka-go-dev "
                        f"golang-github-shopify-sarama-dev")
        start = time.monotonic()
        res = subprocess.run(["go", "build", "-o", str(out / name), f"./tests/go/{name}"],
                             cwd=ROOT, env=go_env(), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"go build {name} failed:\n{res.stderr}"
        print(f"go build {name}: {time.monotonic() - start:.1f} s")
        bins[name] = out / name
    return bins


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> KServer:
    tmp = tmp_path_factory.mktemp("goserve")
    srv = KServer(tmp / "data", [], None, tmp, "goserver")
    srv.start()
    yield srv
    srv.stop(check=False)
    print(f"==== server log ====\n{srv.log}")
    srv.check_log(srv.log)
    assert srv.returncodes == [0]


def run_go(binary: Path, *args: str) -> str:
    try:
        res = subprocess.run([str(binary), *args], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{binary.name} {' '.join(args)} did not finish in {RUN_TIMEOUT:.0f} s:\n"
                    f"{exc.stdout}\n{exc.stderr}")
    out = res.stdout
    assert res.returncode == 0 and "FAIL" not in out, (
        f"{binary.name} {' '.join(args)} exited {res.returncode}:\n{out}\n{res.stderr[-5000:]}")
    return out


def test_kafka_go_writer_each_codec_reader_group_and_conn(go_bins, server):
    out = run_go(go_bins["kafkago"], server.bootstrap, "kgo")
    for step in ("writer none", "writer gzip", "writer snappy", "writer lz4",
                 "reader group 80", "conn"):
        assert f"ok {step}\n" in out, out


# Sarama 1.22 (Debian bookworm) knows Kafka versions up to 2.2.0 ("newest"); 2.8.0 parses and
# is used as given, and behaves as its newest.
@pytest.mark.parametrize("version", ["0.11.0.0", "1.0.0", "2.1.0", "2.8.0", "newest"])
def test_sarama_producers_group_rebalance_and_admin(go_bins, server, version):
    out = run_go(go_bins["sarama"], server.bootstrap, version, "s" + version.replace(".", ""))
    for step in ("cluster admin", "sync producer", "async producer", "idempotent producer",
                 "consumer group rebalance", "describe consumer groups", "list consumer groups",
                 "list consumer group offsets", "consumer"):
        assert f"ok {step}\n" in out, out
