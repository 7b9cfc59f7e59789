"""IncrementalAlterConfigs (API 44) on ``kstore serve``: SET, DELETE, APPEND and SUBTRACT change
only the keys named (AlterConfigs replaces the whole set), validate_only, and each resource's own
error, as Kafka answers them; then confluent-kafka's AdminClient.incremental_alter_configs,
kafka-python's DescribeConfigs reading the result, and kstore.connect's alter_topic_config
taking this path instead of its AlterConfigs fallback. One server for the module: each test
works on topics of its own.
"""

from __future__ import annotations

import uuid

import pytest

from tests.server.conftest import KServer
from tests.server.rawclient import RawClient

CREATE_TOPICS, DESCRIBE_CONFIGS, ALTER_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 19, 32, 33, 44
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
TOPIC, BROKER = 2, 4
VERSIONS = (0, 1)  # v1 is flexible
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("incalter")
    s = KServer(d / "data", [], None, d, "server")
    s.start()
    yield s
    s.stop(check=False)
    KServer.check_log(s.log)


@pytest.fixture
def client(srv):
    with RawClient(srv.port) as c:
        yield c


def topic(client, **configs: str) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    res = client.call(CREATE_TOPICS, 5, {"timeout_ms": 5000, "validate_only": False, "topics": [
        {"name": name, "num_partitions": 1, "replication_factor": 1, "assignments": [],
         "configs": [{"name": k, "value": v} for k, v in configs.items()]}]})
    assert res["topics"][0]["error_code"] == 0, res
    return name


def own_config(client, name: str) -> dict[str, str]:
    """The topic's own settings (config_source 1, DYNAMIC_TOPIC_CONFIG), as DescribeConfigs
    reports them; every other key is at its default."""
    res = client.call(DESCRIBE_CONFIGS, 4, {"include_synonyms": False,
                                            "include_documentation": False, "resources": [
        {"resource_type": TOPIC, "resource_name": name, "configuration_keys": None}]})
    (r,) = res["results"]
    assert r["error_code"] == 0, r
    return {c["name"]: c["value"] for c in r["configs"] if c["config_source"] == 1}


def alter(client, resources, *, version: int = 1, validate_only: bool = False) -> list[dict]:
    """resources: [(type, name, [(key, op, value)])]; returns the per-resource answers."""
    res = client.call(INCREMENTAL_ALTER_CONFIGS, version, {"validate_only": validate_only,
                                                           "resources": [
        {"resource_type": t, "resource_name": n,
         "configs": [{"name": k, "config_operation": op, "value": v} for k, op, v in ops]}
        for t, n, ops in resources]})
    out = res["responses"]
    assert [(r["resource_type"], r["resource_name"]) for r in out] == [
        (t, n) for t, n, _ in resources]
    return out


def alter_one(client, name: str, *ops, version: int = 1, validate_only: bool = False) -> dict:
    (r,) = alter(client, [(TOPIC, name, list(ops))], version=version, validate_only=validate_only)
    return r


# ==============================================================================================
# Operations


@pytest.mark.parametrize("version", VERSIONS)
def test_set_changes_only_the_keys_named(client, version):
    t = topic(client, **{"retention.ms": "1000", "segment.bytes": "1048576"})
    r = alter_one(client, t, ("cleanup.policy", SET, "compact"), ("retention.ms", SET, "2000"),
                  version=version)
    assert (r["error_code"], r["error_message"]) == (0, None)
    # AlterConfigs would have returned segment.bytes to its default: not this one.
    assert own_config(client, t) == {"retention.ms": "2000", "segment.bytes": "1048576",
                                     "cleanup.policy": "compact"}


@pytest.mark.parametrize("version", VERSIONS)
def test_delete_returns_the_key_to_its_default_and_keeps_the_rest(client, version):
    t = topic(client, **{"retention.ms": "1000", "cleanup.policy": "compact"})
    r = alter_one(client, t, ("retention.ms", DELETE, None), version=version)
    assert r["error_code"] == 0
    assert own_config(client, t) == {"cleanup.policy": "compact"}
    res = client.call(DESCRIBE_CONFIGS, 4, {"include_synonyms": False,
                                            "include_documentation": False, "resources": [
        {"resource_type": TOPIC, "resource_name": t, "configuration_keys": ["retention.ms"]}]})
    (c,) = res["results"][0]["configs"]
    assert (c["value"], c["config_source"]) == ("604800000", 5)  # Kafka's default, as default


def test_delete_of_a_key_not_set_or_not_known_changes_nothing(client):
    # Kafka: deleting what is not set is not an error (the value, if any, is ignored too).
    t = topic(client, **{"retention.ms": "1000"})
    r = alter_one(client, t, ("segment.ms", DELETE, None), ("no.such.key", DELETE, "x"))
    assert r["error_code"] == 0
    assert own_config(client, t) == {"retention.ms": "1000"}


def test_append_and_subtract_work_on_the_list_cleanup_policy(client):
    t = topic(client)
    # Not set: APPEND starts from the default, "delete".
    assert alter_one(client, t, ("cleanup.policy", APPEND, "compact"))["error_code"] == 0
    assert own_config(client, t) == {"cleanup.policy": "compact,delete"}
    # An item already there is not added twice; one not there is not an error to subtract.
    assert alter_one(client, t, ("cleanup.policy", APPEND, "delete"))["error_code"] == 0
    assert alter_one(client, t, ("cleanup.policy", SUBTRACT, "nothing"))["error_code"] == 0
    assert own_config(client, t) == {"cleanup.policy": "compact,delete"}
    assert alter_one(client, t, ("cleanup.policy", SUBTRACT, "delete"))["error_code"] == 0
    assert own_config(client, t) == {"cleanup.policy": "compact"}
    # Subtracting the last item leaves no valid policy: refused by the same rule as SET "".
    r = alter_one(client, t, ("cleanup.policy", SUBTRACT, "compact"))
    assert r["error_code"] == 40 and "cleanup.policy" in r["error_message"]
    assert alter_one(client, t, ("cleanup.policy", SET, ""))["error_code"] == 40
    # APPEND of several items at once, and of a value outside the list's choices.
    t2 = topic(client, **{"cleanup.policy": "compact"})
    assert alter_one(client, t2, ("cleanup.policy", APPEND, "delete,compact"))["error_code"] == 0
    assert own_config(client, t2) == {"cleanup.policy": "compact,delete"}
    r = alter_one(client, t2, ("cleanup.policy", APPEND, "shred"))
    assert r["error_code"] == 40 and "shred" in r["error_message"]
    assert own_config(client, t2) == {"cleanup.policy": "compact,delete"}


@pytest.mark.parametrize("op", [APPEND, SUBTRACT])
@pytest.mark.parametrize("key, value", [("retention.ms", "1000"), ("compression.type", "lz4"),
                                        ("no.such.key", "x")])
def test_append_or_subtract_on_a_config_that_is_no_list_is_invalid_config(client, op, key, value):
    t = topic(client, **{"retention.ms": "5000"})
    r = alter_one(client, t, (key, op, value), ("segment.ms", SET, "60000"))
    assert r["error_code"] == 40
    assert key in r["error_message"] and "not a list" in r["error_message"]
    assert own_config(client, t) == {"retention.ms": "5000"}  # nothing of the resource applied


# ==============================================================================================
# validate_only and errors


@pytest.mark.parametrize("version", VERSIONS)
def test_validate_only_checks_and_changes_nothing(client, version):
    t = topic(client, **{"retention.ms": "1000"})
    ok = alter_one(client, t, ("retention.ms", DELETE, None), ("cleanup.policy", APPEND, "compact"),
                   version=version, validate_only=True)
    assert ok["error_code"] == 0
    bad = alter_one(client, t, ("retention.ms", SET, "soon"), version=version, validate_only=True)
    assert bad["error_code"] == 40 and "retention.ms" in bad["error_message"]
    missing = alter_one(client, "no-such-topic", ("retention.ms", SET, "1"), version=version,
                        validate_only=True)
    assert missing["error_code"] == 3
    assert own_config(client, t) == {"retention.ms": "1000"}


@pytest.mark.parametrize("version", VERSIONS)
def test_each_resource_gets_its_own_error(client, version):
    good, bad = topic(client), topic(client, **{"retention.ms": "1000"})
    out = alter(client, [
        (TOPIC, good, [("retention.ms", SET, "3000")]),
        (TOPIC, "no-such-topic", [("retention.ms", SET, "3000")]),
        # A valid key beside an invalid one: neither applied.
        (TOPIC, bad, [("segment.ms", SET, "60000"), ("retention.ms", SET, "-7")]),
        (TOPIC, "__consumer_offsets", [("retention.ms", SET, "1")]),
        (BROKER, "1", [("num.partitions", SET, "3")]),  # as AlterConfigs answers it
        (3, "g", [("x", SET, "1")]),  # a group resource
    ], version=version)
    codes = [r["error_code"] for r in out]
    assert codes == [0, 3, 40, 17, 42, 42]
    assert out[0]["error_message"] is None
    assert all(r["error_message"] for r in out[1:])
    assert "-7" in out[2]["error_message"]
    assert own_config(client, good) == {"retention.ms": "3000"}
    assert own_config(client, bad) == {"retention.ms": "1000"}


def test_unknown_key_set_is_invalid_config(client):
    t = topic(client)
    r = alter_one(client, t, ("no.such.key", SET, "1"))
    assert r["error_code"] == 40 and "no.such.key" in r["error_message"]


@pytest.mark.parametrize("case", ["resource twice", "key twice", "null value", "unknown operation"])
def test_malformed_resource_is_invalid_request(client, case):
    t = topic(client, **{"retention.ms": "1000"})
    other = topic(client)
    if case == "resource twice":  # both entries refused, the other resource served
        out = alter(client, [(TOPIC, t, [("retention.ms", SET, "1")]),
                             (TOPIC, other, [("retention.ms", SET, "2000")]),
                             (TOPIC, t, [("segment.ms", SET, "60000")])])
        assert [r["error_code"] for r in out] == [42, 0, 42]
        assert own_config(client, other) == {"retention.ms": "2000"}
    else:
        ops = {"key twice": [("retention.ms", SET, "1"), ("retention.ms", DELETE, None)],
               "null value": [("segment.ms", SET, "60000"), ("retention.ms", SET, None)],
               "unknown operation": [("retention.ms", 4, "1")]}[case]
        out = alter(client, [(TOPIC, t, ops)])
        assert out[0]["error_code"] == 42 and "retention.ms" in out[0]["error_message"]
    assert own_config(client, t) == {"retention.ms": "1000"}


# ==============================================================================================
# Clients


def test_confluent_incremental_alter_configs_seen_by_kafka_pythons_describe_configs(srv):
    ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    kp_admin = pytest.importorskip("kafka.admin", reason="kafka-python is not installed")
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
    )

    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    t = f"ck-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(t, 1, config={"retention.ms": "1000",
                                                "segment.bytes": "1048576"})])[t].result(TIMEOUT)

    def incremental(*entries, validate_only=False):
        res = ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=op) for k, op, v in entries])
        return admin.incremental_alter_configs([res], validate_only=validate_only,
                                               request_timeout=TIMEOUT)[res]

    def modified() -> dict[str, str]:
        kp = kp_admin.KafkaAdminClient(bootstrap_servers=srv.bootstrap, request_timeout_ms=10000)
        try:
            got = kp.describe_configs([kp_admin.ConfigResource(kp_admin.ConfigResourceType.TOPIC,
                                                               t)])
        finally:
            kp.close()
        configs = got["topic"][t]
        # The list config says so (what clients check before APPEND or SUBTRACT).
        assert all((c["config_type"] == "LIST") == (k == "cleanup.policy")
                   for k, c in configs.items())
        return {k: c["value"] for k, c in configs.items()}

    incremental(("retention.ms", AlterConfigOpType.DELETE, None),
                ("cleanup.policy", AlterConfigOpType.APPEND, "compact"),
                ("segment.ms", AlterConfigOpType.SET, "60000")).result(TIMEOUT)
    want = {"segment.bytes": "1048576", "cleanup.policy": "compact,delete", "segment.ms": "60000"}
    assert modified() == want
    incremental(("cleanup.policy", AlterConfigOpType.SUBTRACT, "delete"),
                validate_only=True).result(TIMEOUT)
    assert modified() == want
    with pytest.raises(ck.KafkaException) as ei:
        incremental(("retention.ms", AlterConfigOpType.SUBTRACT, "1")).result(TIMEOUT)
    err = ei.value.args[0]
    assert err.code() == ck.KafkaError.INVALID_CONFIG and "not a list" in err.str()
    assert modified() == want


class _NoAlterConfigs:
    """An AdminClient whose AlterConfigs (the whole-set replacement) fails the test."""

    def __init__(self, admin) -> None:
        self._admin = admin

    def __getattr__(self, name: str):
        if name == "alter_configs":
            raise AssertionError("kstore.connect fell back to AlterConfigs")
        return getattr(self._admin, name)


def test_connect_alter_topic_config_is_one_incremental_change(srv):
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    import kstore

    t = f"kc-{uuid.uuid4().hex[:8]}"
    with kstore.connect(f"kafka://{srv.bootstrap}") as store:
        store.create_topic(t, 1, config={"retention.ms": 1000, "cleanup.policy": "compact"})
        real, store._admin = store._admin, _NoAlterConfigs(store._admin)
        try:
            store.alter_topic_config(t, {"retention.ms": None, "segment.ms": 60000})
        finally:
            store._admin = real
        assert store.describe_topic(t)["config"] == {"cleanup.policy": "compact",
                                                     "segment.ms": 60000}
