"""The same program through ``kstore.connect`` (to ``kstore serve`` on loopback) and through
``kstore.open`` (embedded), measured in one run (issue 15's closing figures).

    python -m pytest benchmarks/test_bench_connect.py --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

Workload: N values of 100 bytes (``kstore.peers.make_workload``), no keys, one partition, lz4
(the producer's ``compression="lz4"``). KSTORE_BENCH_RECORDS sets N (default 1,000,000),
KSTORE_BENCH_ROUNDS the rounds (default 5). The server is ``python -m kstore serve`` in its own
process (as in test_bench_server.py); the client is this process.

- send_many: ``producer.send_many(topic, values)`` into a new topic each round; it returns
  when every record is stored (embedded) or acknowledged (cluster: batches encoded in C and
  sent by kstore's idempotent batch producer, batch.size 1 MB).
- poll_batches: a consumer assigned to a topic holding the N records, ``poll_batches`` until
  all came (numpy columns; on the cluster librdkafka hands over one Message per record, which
  ``kstore.cluster`` turns into columns).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

import kstore
from benchmarks.test_bench_server import ServeProcess, with_load
from kstore.peers import make_workload

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "1000000"))
ROUNDS = int(os.environ.get("KSTORE_BENCH_ROUNDS", "5"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))
SEND = "connect send_many: 100-byte values, lz4, records/s"
POLL = "connect poll_batches: N records, records/s"
BATCH_BYTES = 1 << 20


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-connect-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def values():
    return make_workload(N)[1]


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def store(request, workdir):
    if request.param == "embedded":
        s = kstore.open(workdir / "embedded", retention_check_interval_ms=0)
        yield s
        s.close()
        return
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    srv = ServeProcess(workdir / "served")
    s = kstore.connect(f"kafka://{srv.bootstrap}")
    yield s
    s.close()
    srv.stop()


def _info(benchmark, store, values):
    benchmark.extra_info["records"] = len(values)
    benchmark.extra_info["bytes"] = sum(map(len, values))
    benchmark.extra_info["backend"] = "cluster" if isinstance(store, kstore.ClusterStore) else "embedded"


@pytest.mark.benchmark(group=SEND)
def test_connect_send_many(benchmark, store, values):
    _info(benchmark, store, values)
    producer = store.producer(compression="lz4", batch_size=BATCH_BYTES)

    def setup():
        topic = f"send-{uuid.uuid4().hex[:8]}"
        store.create_topic(topic, 1)
        return (topic,), {}

    def run(topic):
        assert producer.send_many(topic, values) == len(values)

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    producer.close()


@pytest.fixture(scope="module")
def filled(store, values):
    topic = f"poll-{uuid.uuid4().hex[:8]}"
    store.create_topic(topic, 1)
    with store.producer(compression="lz4", batch_size=BATCH_BYTES) as p:
        p.send_many(topic, values)
    return topic


@pytest.mark.benchmark(group=POLL)
def test_connect_poll_batches(benchmark, store, filled, values):
    _info(benchmark, store, values)
    n = len(values)

    def setup():
        c = store.consumer(group=None, auto_offset_reset="earliest")
        c.assign([(filled, 0)])
        return (c,), {}

    def run(c):
        got = 0
        while got < n:
            batches = c.poll_batches(timeout=10.0)
            if not batches:
                raise AssertionError(f"no records for 10 s after {got} of {n}")
            got += sum(len(b) for b in batches)
        assert got == n
        c.close()

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
