"""kstore serve killed with SIGKILL: every acknowledged record is there after a restart, and an
idempotent producer's retry of an acknowledged batch is still recognised as a duplicate (its
state is rebuilt from the log), so a retry across the crash never writes a record twice."""

from __future__ import annotations

from kstore import _core
from tests.server.rawclient import RawClient

PRODUCE, FETCH, INIT_PRODUCER_ID = 0, 1, 22


def batch(values, pid, seq):
    b = _core.BatchBuilder(producer_id=pid, producer_epoch=0, base_sequence=seq)
    for v in values:
        b.append(v, key=b"k")
    return b.build()


def produce(c, records):
    res = c.call(PRODUCE, 9, {"acks": -1, "timeout_ms": 1000, "topic_data": [
        {"name": "t", "partition_data": [{"index": 0, "records": records}]}]})
    return res["responses"][0]["partition_responses"][0]


def fetch_all(c):
    res = c.call(FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 24,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": "t", "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                  "fetch_offset": 0, "log_start_offset": -1,
                                                  "partition_max_bytes": 1 << 24}]}],
        "forgotten_topics_data": [], "rack_id": ""})
    p = res["responses"][0]["partitions"][0]
    return [bytes(r.value) for b in _core.iter_batches(p["records"]) for r in b.records()]


def test_sigkill_then_retry_across_the_restart(kserver):
    srv = kserver()
    with RawClient(srv.port) as c:
        pid = c.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "transaction_timeout_ms": 1,
                                           "producer_id": -1, "producer_epoch": -1})["producer_id"]
        acked = []
        for i in range(20):
            r = produce(c, batch([b"r%d-%d" % (i, j) for j in range(3)], pid, 3 * i))
            assert r["error_code"] == 0 and r["base_offset"] == 3 * i
            acked += [b"r%d-%d" % (i, j) for j in range(3)]
    srv.kill()
    srv.start()
    with RawClient(srv.port) as c:
        # The client never saw the answer to its last batch (say) and sends it again.
        dup = produce(c, batch([b"r19-0", b"r19-1", b"r19-2"], pid, 57))
        assert (dup["error_code"], dup["base_offset"]) == (0, 57)
        nxt = produce(c, batch([b"r20-0"], pid, 60))
        assert (nxt["error_code"], nxt["base_offset"]) == (0, 60)
        assert fetch_all(c) == acked + [b"r20-0"]
    srv.wait_log(r"restored producer \d+ on t-0 from the log")
