"""Exactly-once through ``kstore serve`` with Kafka transactions: a consume-transform-produce
loop (confluent-kafka: a read_committed consumer of ``in``, a transactional producer to ``out``
that commits its input offsets with send_offsets_to_transaction) is SIGKILLed at seeded random
moments, 22 times, and restarted each time; when it finally runs to the end, ``out`` read
read_committed holds each input exactly once, in order.

Each restart's init_transactions bumps the producer epoch and aborts what the killed process
left open, so its half-written output and its uncommitted input offsets vanish together.

The loop is ``_txn_loop_app.py`` (a script with only confluent-kafka to import, so that a
restart costs little).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server._txn_loop_app import RECORDS

SEED = 20261203
KILLS = 22
APP = Path(__file__).with_name("_txn_loop_app.py")


def test_loop_killed_at_random_yields_each_input_once(kserver):
    ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    from tests.server.test_transactions import read_all

    srv = kserver("--group-initial-rebalance-delay-ms", "0")
    plain = ck.Producer({"bootstrap.servers": srv.bootstrap})
    for i in range(RECORDS):
        plain.produce("in", value=b"%d" % i, partition=0)
    assert plain.flush(30) == 0
    rng = random.Random(SEED)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(APP), srv.bootstrap]
    starts = []
    kills = 0
    while True:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            line = proc.stdout.readline()  # "ready <offset>" (or EOF if it failed)
            assert line.startswith(b"ready"), f"the loop did not start: {line!r}"
            starts.append(int(line.split()[1]))
            if kills < KILLS:
                # After 0-3 transactions, at a random moment of the next one (or of the pause
                # between them): every kill finds the loop at work.
                for _ in range(rng.randrange(4)):
                    if not proc.stdout.readline().startswith(b"committed"):
                        break
                time.sleep(rng.uniform(0.0, 0.02))
                proc.kill()
                proc.wait(30)
                kills += 1
                continue
            out, _ = proc.communicate(timeout=60)  # runs to the end
            assert proc.returncode == 0 and b"done" in out, (proc.returncode, out)
            break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    # The kills landed at many points of the input (the loop made progress between them).
    assert len(set(starts)) > KILLS // 3, starts
    got = read_all(srv.bootstrap, "out", "read_committed")
    assert got == [b"out-%d" % i for i in range(RECORDS)]
    every = read_all(srv.bootstrap, "out", "read_uncommitted")
    assert len(every) >= RECORDS  # aborted output is in the log, and skipped above
