"""aiokafka (asyncio, its own protocol code) against ``kstore serve``: an idempotent producer
with gzip (InitProducerId, acks=all forced by idempotence), a consumer group that commits, and
the commit seen by a restarted server's embedded Store."""

from __future__ import annotations

import asyncio

import pytest

import kstore

aiokafka = pytest.importorskip("aiokafka", reason="aiokafka is not installed (pip install '.[test]')")

N = 200


def test_idempotent_produce_group_consume_and_commit(kserver):
    srv = kserver("--group-initial-rebalance-delay-ms", "0")

    async def scenario() -> list[tuple[bytes, bytes, int]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=srv.bootstrap,
                                             enable_idempotence=True, compression_type="gzip")
        await producer.start()
        try:
            sent = [await producer.send_and_wait("aio", b"value-%d" % i, key=b"k%d" % i)
                    for i in range(N)]
        finally:
            await producer.stop()
        assert [m.offset for m in sent] == list(range(N))
        consumer = aiokafka.AIOKafkaConsumer(
            "aio", bootstrap_servers=srv.bootstrap, group_id="aio-group",
            auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got: list[tuple[bytes, bytes, int]] = []
        try:
            while len(got) < N:
                batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for msgs in batches.values():
                    got += [(m.key, m.value, m.offset) for m in msgs]
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert got == [(b"k%d" % i, b"value-%d" % i, i) for i in range(N)]
    srv.stop()
    with kstore.open(srv.data, read_only=True) as store:
        assert store.committed("aio-group", "aio", 0) == N
        lg = store.partition("aio", 0)
        batches = list(lg.read(0).batches())
        # The producer's own batches, stored as sent: idempotent (producer id set) and gzip.
        assert all(b.producer_id >= 0 and b.compression == "gzip" for b in batches)
