"""`kstore mirror` throughput between a data directory and `kstore serve` on loopback, beside
the client's own ceiling measured in the same run.

    python -m pytest benchmarks/test_bench_mirror.py --benchmark-only \\
        --benchmark-json=out.json && python benchmarks/report.py out.json

Workload: N records (KSTORE_BENCH_RECORDS, default 1,000,000) of ``kstore.peers.make_workload``
(8-16 byte keys, 100-byte values), 4 partitions, written to a data directory with lz4. The
server is ``python -m kstore serve`` in its own process (ServeProcess of test_bench_server), on
a fresh data folder under KSTORE_BENCH_DIR. KSTORE_BENCH_ROUNDS rounds (default 3) each.

- store -> serve: ``Mirror(dir, kafka://...)`` (lz4 at the destination, the stored batches sent
  as they are by kstore's idempotent batch producer, group copy included), and the same with
  ``forward_batches=False`` (record by record through confluent-kafka's idempotent gap-less
  producer); each round starts from an empty destination topic and no checkpoint. Baseline: the same records from the same data directory produced by a bare
  confluent-kafka loop (records read the mirror's way, then ``produce()`` per record with the
  same producer settings and no callbacks): the ceiling of the per-record client path.
- serve -> store: ``Mirror(kafka://..., fresh dir)``, whole batches fetched and appended, and
  with ``forward_batches=False`` (librdkafka's consumer, record by record); the topic filled
  once. Every round checks the record count at the destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import kstore
from kstore import mirror as kmirror
from kstore.peers import make_workload

from .test_bench_server import ServeProcess, with_load

pytest.importorskip("confluent_kafka")

N = int(os.environ.get("KSTORE_BENCH_RECORDS", "1000000"))
ROUNDS = int(os.environ.get("KSTORE_BENCH_ROUNDS", "3"))
ROOT = Path(os.environ.get("KSTORE_BENCH_DIR", "."))
PARTITIONS = 4
TOPIC = "mirror-bench"
TO_SERVE = "mirror store -> kstore serve: 100-byte records, lz4, records/s"
FROM_SERVE = "mirror kstore serve -> store: 100-byte records, records/s"


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kstore-bench-mirror-", dir=ROOT))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def source(workdir):
    keys, values, stamps = make_workload(N)
    path = workdir / "source"
    with kstore.open(path) as s:
        # make_workload's timestamps are old: kept forever here and, the config being
        # copied, at the server too (its retention would otherwise delete them mid-run).
        s.create_topic(TOPIC, PARTITIONS, config={"retention.ms": -1})
        pr = s.producer(linger_ms=0, batch_size=1 << 20, compression="lz4")
        step = N // PARTITIONS + 1
        for p in range(PARTITIONS):
            sl = slice(p * step, (p + 1) * step)
            pr.send_many(TOPIC, values[sl], keys=keys[sl], timestamps=stamps[sl], partition=p)
        pr.flush()
    return path


@pytest.fixture(scope="module")
def server(workdir):
    srv = ServeProcess(workdir / "serve")
    yield srv
    srv.stop()


def _admin(server):
    import confluent_kafka.admin as ca

    return ca.AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 0})


def _drop_topic(server) -> None:
    admin = _admin(server)
    if TOPIC in admin.list_topics(timeout=30).topics:
        admin.delete_topics([TOPIC])[TOPIC].result(30)


def _end(server) -> int:
    from kstore.mirror import _ClusterSide

    side = _ClusterSide(f"kafka://{server.bootstrap}", None, None, 30)
    try:
        return sum(side.ends([(TOPIC, p) for p in range(PARTITIONS)]).values())
    finally:
        side.close()


@pytest.mark.benchmark(group=TO_SERVE)
@pytest.mark.parametrize("forward", [True, False], ids=["batches", "per_record"])
def test_mirror_store_to_serve(benchmark, source, server, forward):
    """The stored batches as they are, or (per_record, --per-record) confluent-kafka's
    produce() for each record."""
    url = f"kafka://{server.bootstrap}"

    def setup():
        _drop_topic(server)
        kmirror.default_checkpoint(source, url).unlink(missing_ok=True)
        return (), {}

    def run():
        st = kmirror.Mirror(source, url, compression="lz4", forward_batches=forward).run()
        assert st.records == N, st

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    assert _end(server) == N
    benchmark.extra_info["records"] = N


@pytest.mark.benchmark(group=TO_SERVE)
def test_mirror_baseline_bare_confluent_produce(benchmark, source, server):
    """The same records, read the same way, through a produce() loop with nothing else."""
    import confluent_kafka as ck
    import confluent_kafka.admin as ca

    side = kmirror._StoreSide(source, False, None)
    chunks = []
    for p in range(PARTITIONS):
        pos = 0
        while True:
            recs, nxt = side.read(TOPIC, p, pos, 100_000)
            if not recs:
                break
            chunks.append((p, recs))
            pos = nxt
    conf = {"bootstrap.servers": server.bootstrap, "enable.idempotence": True,
            "enable.gapless.guarantee": True, "compression.type": "lz4", "linger.ms": 20,
            "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576, "log_level": 0}
    state = {}

    def setup():
        _drop_topic(server)
        admin = _admin(server)  # kept until the result came (its handle ends with it)
        admin.create_topics([ca.NewTopic(TOPIC, PARTITIONS, replication_factor=-1,
                                         config={"retention.ms": "-1"})])[TOPIC].result(30)
        state["p"] = ck.Producer(conf)
        return (), {}

    def run():
        producer = state["p"]
        produce = producer.produce
        for p, recs in chunks:
            for r in recs:
                try:
                    produce(TOPIC, r.value, r.key, p, None, None, r.timestamp, None)
                except BufferError:
                    producer.poll(0.05)
                    produce(TOPIC, r.value, r.key, p, None, None, r.timestamp, None)
            producer.poll(0)
        assert producer.flush(120) == 0

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    side.close()
    assert _end(server) == N
    benchmark.extra_info["records"] = N


@pytest.mark.benchmark(group=FROM_SERVE)
@pytest.mark.parametrize("forward", [True, False], ids=["batches", "per_record"])
def test_mirror_serve_to_store(benchmark, source, server, workdir, forward):
    url = f"kafka://{server.bootstrap}"
    if not _topic_exists(server) or _end(server) != N:  # filled once for both variants
        _drop_topic(server)
        kmirror.default_checkpoint(source, url).unlink(missing_ok=True)
        kmirror.Mirror(source, url).run()
    dest = workdir / "dest"

    def setup():
        shutil.rmtree(dest, ignore_errors=True)
        return (), {}

    def run():
        st = kmirror.Mirror(url, dest, topics=[TOPIC], groups=False,
                            forward_batches=forward).run()
        assert st.records == N, st

    with_load(benchmark, run, setup=setup, rounds=ROUNDS)
    benchmark.extra_info["records"] = N


def _topic_exists(server) -> bool:
    return TOPIC in _admin(server).list_topics(timeout=30).topics
