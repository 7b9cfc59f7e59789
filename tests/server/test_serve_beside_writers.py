"""`kstore serve` and embedded writers on one data directory at the same time (shared mode).

A script appends while the server runs: Kafka clients fetch what it wrote (a waiting Fetch is
woken by the other process's append), records produced over the wire reach the script, and the
CLI writes beside both.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import kstore

from .conftest import KCAT, kcat, kstore_cli, wait_until


def test_server_and_an_embedded_writer_share_a_directory(kserver, tmp_path):
    data = tmp_path / "shared"
    with kstore.open(data) as store:
        store.create_topic("events", 2)
        srv = kserver("--partitions", "2", data=data)
        prod = store.producer(linger_ms=0)
        for i in range(50):
            prod.send("events", b"embedded-%d" % i, partition=i % 2)
        prod.flush()
        # A consumer waiting at the end gets records the script appends afterwards.
        got: list[bytes] = []
        waiter = None
        if KCAT is not None:
            def consume() -> None:
                out = kcat(srv, "-C", "-t", "events", "-p", "0", "-o", "25", "-c", "5").stdout
                got.extend(out.splitlines())

            waiter = threading.Thread(target=consume)
            waiter.start()
        out = kcat(srv, "-C", "-t", "events", "-o", "beginning", "-e").stdout.splitlines()
        assert sorted(out) == sorted(b"embedded-%d" % i for i in range(50))
        for i in range(50, 60):
            prod.send("events", b"embedded-%d" % i, partition=0)
        prod.flush()
        if waiter is not None:
            waiter.join(60)
            assert got == [b"embedded-%d" % i for i in range(50, 55)]
        # Over the wire into the same partitions, read back by the script.
        kcat(srv, "-P", "-t", "events", "-p", "1", input=b"wire-1\nwire-2\n")
        lg = store.partition("events", 1)
        wait_until(lambda: lg.log_end_offset == 27, what="the produced records")
        assert [r.value for r in lg.read_records(25)] == [b"wire-1", b"wire-2"]
        # And the CLI, a third writer, beside both.
        kstore_cli("--data", str(data), "topics", "create", "more")
        p = subprocess.run([sys.executable, "-m", "kstore", "--data", str(data), "produce", "events",
                            "-p", "1"], input=b"cli\n", capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert [r.value for r in lg.read_records(27)] == [b"cli"]
        assert "more" in store.topics()
        md = kcat(srv, "-L", "-t", "more").stdout.decode()
        assert 'topic "more"' in md
        srv.stop()
    with kstore.open(data, exclusive=True) as store:  # everyone closed cleanly
        assert store.partition("events", 0).log_end_offset == 35
        assert store.partition("events", 0).recovery.clean
