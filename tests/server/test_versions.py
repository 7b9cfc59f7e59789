"""The API versions kstore advertises: those of a Kafka 3.x broker (the schemas' validVersions in
../shared/kafka-spec, from before Kafka 4.0 dropped the old ones) for every API it implements,
except where a reason is written below; and every advertised version is answered by the broker
(issue 18). The codec of each version is checked against kafka-python in test_protocol.py.
"""

from __future__ import annotations

import pytest

from kstore.server import protocol
from tests.server.protocol_values import VARIANTS, make_value

from ..conftest import SHARED
from .test_legacy import client, produce, srv, v2  # noqa: F401  (fixtures: one server here)

# Kafka 3.x's range for each API kstore implements, and where kstore stops short, why.
KAFKA_3 = {
    0: (0, 11), 1: (0, 17), 2: (0, 10), 3: (0, 12), 8: (0, 9), 9: (0, 9), 10: (0, 6),
    11: (0, 9), 12: (0, 4), 13: (0, 5), 14: (0, 5), 15: (0, 5), 16: (0, 5), 17: (0, 1),
    18: (0, 4), 19: (0, 7), 20: (0, 6), 21: (0, 2), 22: (0, 5), 23: (0, 4), 32: (0, 4),
    33: (0, 2), 36: (0, 2), 37: (0, 3), 42: (0, 2), 44: (0, 1), 60: (0, 1),
    # The transaction APIs (issue 17), as the schemas give them.
    24: (0, 5), 25: (0, 4), 26: (0, 5), 28: (0, 4), 65: (0, 0), 66: (0, 1),
}
SHORT_OF_KAFKA = {
    # Fetch v13+ names topics by id only (KIP-516); kstore's topics have no ids, so a client
    # that switched to ids could not fetch. Metadata v10+ answers the all-zero id ("none").
    1: 12,
    # v4+ of the transaction APIs is KIP-890's transaction version 2 (server-side verification,
    # epoch bumps on every commit); AddPartitionsToTxn v4+ is broker-to-broker. The transactional
    # clients kstore is tested with (librdkafka, quixstreams) speak v0-v3.
    24: 3, 25: 3, 26: 3, 28: 3,
}


def test_advertised_versions_are_kafka_3s():
    served = protocol.supported_versions()
    want = {k: (lo, SHORT_OF_KAFKA.get(k, hi)) for k, (lo, hi) in KAFKA_3.items()}
    assert served == want


def test_kafka_3_ranges_are_the_schemas():
    spec = SHARED / "kafka-spec" / "message"
    if not spec.is_dir():
        pytest.skip(f"{spec} is absent (set KSTORE_SHARED to the shared/ folder)")
    import json
    import re

    for key, (lo, hi) in KAFKA_3.items():
        name = protocol.api_name(key)
        text = (spec / f"{name}Request.json").read_text()
        text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("//"))
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", json.loads(text)["validVersions"])
        assert m and (int(m[1]), int(m[2] or m[1])) == (lo, hi), name


# SASL messages to a server without SASL: not part of this check.
_CLOSES = {17, 36}


@pytest.mark.parametrize("key", sorted(set(KAFKA_3) - _CLOSES))
def test_every_advertised_version_is_answered(srv, key):
    """Each version, with generated values (empty arrays, nulls), gets a response of its own
    layout on a connection that stays usable."""
    lo, hi = protocol.supported_versions()[key]
    for version in range(lo, hi + 1):
        body = make_value(key, False, version, VARIANTS[3])
        if key == 0:
            body["acks"] = -1
        with srv.client() as c:
            corr = c.send(key, version, body)
            if key in _CLOSES:
                continue
            res = c.recv(key, version, corr)
            assert isinstance(res, dict)
            assert c.call(18, 0, {})["error_code"] == 0, (key, version)


def test_list_offsets_earliest_local_and_latest_tiered(srv, client):
    assert produce(client, "tiers", v2([(None, b"a"), (None, b"b")]), 9)["error_code"] == 0

    def call(version, ts):
        res = client.call(2, version, {"replica_id": -1, "topics": [{"name": "tiers", "partitions": [
            {"partition_index": 0, "timestamp": ts, "current_leader_epoch": -1}]}]})
        p = res["topics"][0]["partitions"][0]
        return p["error_code"], p["offset"]

    assert call(8, -4) == (0, 0)  # no tiered storage: the local log starts at the log start
    assert call(9, -5) == (0, -1)  # nothing tiered
    assert call(10, -1) == (0, 2)
    assert call(7, -4)[0] == 42  # before v8, -4 means nothing


def test_metadata_v12_topic_ids(srv, client):
    assert produce(client, "ids", v2([(None, b"a")]), 9)["error_code"] == 0
    res = client.call(3, 12, {"topics": [{"name": "ids", "topic_id": bytes(16)},
                                         {"name": None, "topic_id": b"\x07" * 16}],
                              "allow_auto_topic_creation": False,
                              "include_topic_authorized_operations": False})
    named, by_id = res["topics"]
    assert (named["error_code"], named["topic_id"], len(named["partitions"])) == (0, bytes(16), 1)
    assert by_id["error_code"] == 100


def test_delete_topics_v6_by_name_and_by_id(srv, client):
    assert produce(client, "gone", v2([(None, b"a")]), 9)["error_code"] == 0
    res = client.call(20, 6, {"topics": [{"name": "gone", "topic_id": bytes(16)},
                                         {"name": None, "topic_id": b"\x01" * 16}],
                              "timeout_ms": 1000})
    assert [r["error_code"] for r in res["responses"]] == [0, 100]
    assert "gone" not in srv.call_soon(srv.store.topics)


def test_find_coordinator_v6_share_key_is_not_available(client):
    res = client.call(10, 6, {"key_type": 2, "coordinator_keys": ["g:t:0"]})
    (c,) = res["coordinators"]
    assert c["error_code"] == 15 and "share" in c["error_message"]


def test_api_versions_v3_lists_them(client):
    res = client.call(18, 3, {"client_software_name": "t", "client_software_version": "1"})
    got = {k["api_key"]: (k["min_version"], k["max_version"]) for k in res["api_keys"]}
    assert got == protocol.supported_versions()
