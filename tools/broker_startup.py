"""Measure the pytest broker fixtures (kstore.pytest_plugin) on a generated 100-test suite.

    python tools/broker_startup.py [--tests 100] [--runs 3]

Each generated test produces one record with confluent-kafka (to a topic it names, auto-created
by the broker), waits for the acknowledgement and reads it back with ``wait_for``. Three ways to
give the tests a broker, each run as its own ``pytest`` subprocess:

- ``function``: the ``kafka_broker`` fixture, a fresh data directory and server per test;
- ``session``: ``kafka_broker_session``, one server for all (not isolated);
- ``session+cleanup``: one server, and after each test every topic it made and every group
  offset deleted (the "fresh topics per test" alternative to a fresh server).

Printed per way: the suite's wall time (the pytest process, start to exit) and, per test, the
time from the start of the fixture's setup to the first acknowledged produce (median, p90).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFTEST = '''
import json, os, time
import pytest

WAY = os.environ["KSTORE_BENCH_WAY"]
OUT = os.environ["KSTORE_BENCH_OUT"]
TIMES = []


@pytest.fixture
def t0():
    return time.perf_counter()


@pytest.fixture
def broker(t0, request):
    if WAY == "function":
        yield request.getfixturevalue("kafka_broker")
        return
    b = request.getfixturevalue("kafka_broker_session")
    yield b
    if WAY == "session+cleanup":
        store = b.store
        for topic in store.topics():
            store.delete_topic(topic)
        for group in store.groups():
            store.delete_group_offsets(group)


def pytest_sessionfinish(session):
    with open(OUT, "w") as f:
        json.dump(TIMES, f)
'''

TEST = '''
import time
import pytest
from confluent_kafka import Producer

from conftest import TIMES


@pytest.mark.parametrize("i", range({n}))
def test_produce_and_read_back(t0, broker, i):
    p = Producer({{"bootstrap.servers": broker.bootstrap_servers}})
    p.produce(f"topic-{{i}}", b"value-%d" % i)
    assert p.flush(30) == 0
    TIMES.append(time.perf_counter() - t0)
    assert [r.value for r in broker.wait_for(f"topic-{{i}}", 1)] == [b"value-%d" % i]
'''


def run(way: str, n: int, work: Path) -> tuple[float, list[float]]:
    out = work / f"times-{way}.json"
    env = {"KSTORE_BENCH_WAY": way, "KSTORE_BENCH_OUT": str(out)}
    import os

    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(work)], cwd=work,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{way}: pytest failed\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return wall, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tests", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kstore-fixture-bench-") as tmp:
        work = Path(tmp)
        (work / "conftest.py").write_text(CONFTEST)
        (work / "test_suite.py").write_text(TEST.format(n=args.tests))
        for way in ("function", "session", "session+cleanup"):
            walls, firsts = [], []
            for _ in range(args.runs):
                wall, times = run(way, args.tests, work)
                walls.append(wall)
                firsts.extend(times)
            firsts.sort()
            p90 = firsts[int(0.9 * (len(firsts) - 1))]
            print(f"{way:16s} {args.tests}-test suite wall {statistics.median(walls):.2f} s "
                  f"(runs: {', '.join(f'{w:.2f}' for w in walls)}); fixture setup to first "
                  f"produce acked: median {1000 * statistics.median(firsts):.1f} ms, "
                  f"p90 {1000 * p90:.1f} ms (n={len(firsts)})")


if __name__ == "__main__":
    main()
