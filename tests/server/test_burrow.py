"""Burrow (LinkedIn's consumer lag checker, built on Sarama; Debian's ``burrow`` 1.2) reports a
kstore group's lag through its HTTP API (issue 18).

A kafka-go group (tests/go/kafkago) reads and commits 80 records, seven more are produced, and
Burrow, reading ``__consumer_offsets`` and the log end offsets from ``kstore serve``, must report
the group with a total lag of 7 on loopback.

Burrow 1.2 insists on a ZooKeeper ensemble in its configuration, for its own coordination
(notifier locks), not for Kafka: with root-path "/" it makes no ZooKeeper call at start, so the
test points it at a closed loopback port and Burrow keeps retrying that in the background while
it serves lag from Kafka alone.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .test_go_clients import go_bins, run_go, server  # noqa: F401  (fixtures: one server here)

BURROW = shutil.which("Burrow") or "/usr/bin/Burrow"
LAG_TIMEOUT = 90.0  # seconds for Burrow to read the offsets topic and report (a hang guard)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_burrow_reports_the_lag_of_a_group(go_bins, server, tmp_path):  # noqa: F811 (fixtures)
    if not Path(BURROW).exists():
        pytest.skip("Burrow is not installed (Debian: apt-get install burrow)")
    out = run_go(go_bins["kafkago"], server.bootstrap, "lag")
    assert "ok reader group 80\n" in out
    kafka = pytest.importorskip("kafka")
    producer = kafka.KafkaProducer(bootstrap_servers=server.bootstrap)
    for i in range(7):
        producer.send("lag-writer", b"more-%d" % i)
    producer.flush(30)
    producer.close()

    http_port = free_port()
    closed_port = free_port()  # nothing listens: Burrow's ZooKeeper, never needed here
    conf = tmp_path / "burrow"
    conf.mkdir()
    (conf / "burrow.toml").write_text(f"""
[general]
pidfile="{conf}/burrow.pid"
[logging]
level="info"
[zookeeper]
servers=["127.0.0.1:{closed_port}"]
root-path="/"
[client-profile.kstore]
client-id="burrow"
kafka-version="2.1.0"
[cluster.kstore]
class-name="kafka"
servers=["{server.bootstrap}"]
client-profile="kstore"
topic-refresh=2
offset-refresh=1
[consumer.kstore]
class-name="kafka"
cluster="kstore"
servers=["{server.bootstrap}"]
client-profile="kstore"
[httpserver.default]
address="127.0.0.1:{http_port}"
[storage.default]
class-name="inmemory"
workers=2
intervals=10
min-distance=1
""")
    log = (tmp_path / "burrow.log").open("wb")
    proc = subprocess.Popen([BURROW, "--config-dir", str(conf)], cwd=conf, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}/v3/kafka/kstore/consumer/lag-group/lag"
    status = None
    try:
        deadline = time.monotonic() + LAG_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as res:
                    status = json.load(res)["status"]
            except OSError:
                status = None
            if status and status["status"] != "NOTFOUND" and status["totallag"] == 7:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    burrow_log = (tmp_path / "burrow.log").read_text(errors="replace")
    assert status is not None, f"Burrow never answered on {url}:\n{burrow_log[-5000:]}"
    assert status["totallag"] == 7, f"{status}\n{burrow_log[-5000:]}"
    (part,) = status["partitions"]
    assert (part["topic"], part["partition"], part["end"]["offset"], part["current_lag"]) == (
        "lag-writer", 0, 80, 7), status
