"""`kstore serve` over a __consumer_offsets holding garbage records: one such record used to make
every group connection fail (JoinGroup, OffsetFetch, ListGroups all raised from the offsets
replay). Now the garbage is skipped with a warning and a consumer group joins, resumes from its
good commits and commits again. (Produce to the internal topic: 17, in test_broker.py.)"""

from __future__ import annotations

import pytest

import kstore
from tests.server.test_kafka_python import group_member, in_thread, poll_records
from tests.test_internal_topics import GARBAGE, GROUP, _fill_with_garbage

kafka = pytest.importorskip("kafka", reason="kafka-python is not installed")
from kafka import KafkaAdminClient, TopicPartition


def test_serve_group_join_over_garbage_in_consumer_offsets(kserver, tmp_path):
    data = tmp_path / "d"
    bad = _fill_with_garbage(data)
    srv = kserver("--group-initial-rebalance-delay-ms", "0", data=data)
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]

    def group_round():
        admin = KafkaAdminClient(bootstrap_servers=srv.bootstrap, request_timeout_ms=10000)
        try:
            groups = admin.list_groups()
            offsets = admin.list_group_offsets({GROUP: None})
        finally:
            admin.close()
        c = group_member(srv.bootstrap, "t", GROUP)
        try:
            before = {tp.partition: c.committed(tp) for tp in tps}
            got = poll_records(c, 3, settle=0.5)
            c.commit()
            after = {tp.partition: c.committed(tp) for tp in tps}
        finally:
            c.close()
        return groups, offsets, before, got, after

    groups, offsets, before, got, after = in_thread(group_round, timeout=90)
    assert sorted(g["group_id"] if isinstance(g, dict) else g[0] for g in groups) == ["g", "h"]
    offsets = offsets.get(GROUP, offsets)
    assert {tp.partition: om.offset for tp, om in offsets.items()} == {0: 8, 1: 9}
    assert before == {0: 8, 1: 9}
    assert sorted((r.partition, r.offset) for r in got) == [(0, 8), (0, 9), (1, 9)]
    assert after == {0: 10, 1: 10}
    # one warning per bad record in the server log (it replays once)
    warned = [ln for ln in srv.log.splitlines() if "skipping the record at offset" in ln]
    assert len(warned) == len(bad) >= len(GARBAGE), "\n".join(warned)

    srv.stop()
    with kstore.open(data, retention_check_interval_ms=0) as s:
        assert s.committed(GROUP, "t", 0) == 10 and s.committed(GROUP, "t", 1) == 10
        assert s.committed("h", "t", 0) == 4
