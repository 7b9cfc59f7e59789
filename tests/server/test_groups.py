"""The classic group coordinator (kstore.server.groups): JoinGroup with MEMBER_ID_REQUIRED and
the initial delay, the protocol vote, SyncGroup parking, Heartbeat per state, LeaveGroup,
session / rebalance / sync timeouts, static membership, OffsetCommit checks and the round trip
through the store (and a reopened store), OffsetFetch v8, List/Describe/DeleteGroups, close().

Requests are dicts shaped as the codec delivers them: every field of the schema, snake_case.
Timeouts are tens of milliseconds, so the timers really fire and the file stays fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import kstore
from kstore.server.groups import GroupCoordinator

DELAY_MS = 20  # group.initial.rebalance.delay.ms in these tests
SESSION_MS = 5000  # long enough never to expire unless a test wants it to
REBALANCE_MS = 5000
HOST = "/127.0.0.1"
INT32_MIN = -(1 << 31)

# Kafka error codes
OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION, OFFSET_METADATA_TOO_LARGE = 1, 3, 12
COORDINATOR_NOT_AVAILABLE, ILLEGAL_GENERATION, INCONSISTENT_GROUP_PROTOCOL = 15, 22, 23
INVALID_GROUP_ID, UNKNOWN_MEMBER_ID, INVALID_SESSION_TIMEOUT = 24, 25, 26
REBALANCE_IN_PROGRESS, NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND = 27, 68, 69
MEMBER_ID_REQUIRED, FENCED_INSTANCE_ID = 79, 82


# ---------------------------------------------------------------------------------------------
# Requests, with every field of their schema


def join_req(group: str = "g", member_id: str = "", *, instance: str | None = None,
             session: int = SESSION_MS, rebalance: int = REBALANCE_MS,
             protocols: tuple[tuple[str, bytes], ...] = (("range", b"sub"),),
             protocol_type: str = "consumer") -> dict[str, Any]:
    return {"group_id": group, "session_timeout_ms": session, "rebalance_timeout_ms": rebalance,
            "member_id": member_id, "group_instance_id": instance, "protocol_type": protocol_type,
            "protocols": [{"name": n, "metadata": memoryview(m)} for n, m in protocols],
            "reason": None}


def sync_req(member_id: str, generation: int, group: str = "g", *,
             assignments: dict[str, bytes] | None = None, instance: str | None = None,
             protocol_type: str | None = None, protocol_name: str | None = None) -> dict[str, Any]:
    return {"group_id": group, "generation_id": generation, "member_id": member_id,
            "group_instance_id": instance, "protocol_type": protocol_type,
            "protocol_name": protocol_name,
            "assignments": [{"member_id": m, "assignment": a}
                            for m, a in (assignments or {}).items()]}


def hb_req(member_id: str, generation: int, group: str = "g",
           instance: str | None = None) -> dict[str, Any]:
    return {"group_id": group, "generation_id": generation, "member_id": member_id,
            "group_instance_id": instance}


def leave_req(group: str = "g", member_id: str = "",
              members: list[tuple[str, str | None]] | None = None) -> dict[str, Any]:
    return {"group_id": group, "member_id": member_id,
            "members": [{"member_id": m, "group_instance_id": i, "reason": None}
                        for m, i in members or []]}


def commit_req(group: str, offsets: dict[tuple[str, int], Any], *, generation: int = -1,
               member_id: str = "", instance: str | None = None) -> dict[str, Any]:
    """offsets: {(topic, partition): offset or (offset, metadata, leader_epoch)}."""
    topics: dict[str, list[dict[str, Any]]] = {}
    for (t, p), v in offsets.items():
        off, meta, epoch = v if isinstance(v, tuple) else (v, "", -1)
        topics.setdefault(t, []).append({"partition_index": p, "committed_offset": off,
                                         "committed_leader_epoch": epoch,
                                         "commit_timestamp": -1, "committed_metadata": meta})
    return {"group_id": group, "generation_id_or_member_epoch": generation,
            "member_id": member_id, "group_instance_id": instance, "retention_time_ms": -1,
            "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]}


def fetch_req(group: str, topics: dict[str, list[int]] | None) -> dict[str, Any]:
    return {"group_id": group, "require_stable": False, "groups": [],
            "topics": None if topics is None else [
                {"name": t, "partition_indexes": ps} for t, ps in topics.items()]}


def commit_errors(resp: dict[str, Any]) -> dict[tuple[str, int], int]:
    return {(t["name"], p["partition_index"]): p["error_code"]
            for t in resp["topics"] for p in t["partitions"]}


def fetched(resp_topics: list[dict[str, Any]]) -> dict[tuple[str, int], tuple]:
    return {(t["name"], p["partition_index"]): (p["committed_offset"], p["metadata"],
                                                 p["committed_leader_epoch"], p["error_code"])
            for t in resp_topics for p in t["partitions"]}


# ---------------------------------------------------------------------------------------------
# Fixtures and flows


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "data", retention_check_interval_ms=0)
    s.create_topic("t", partitions=3)
    with s.producer(linger_ms=0) as p:
        for i in range(10):
            for part in range(3):
                p.send("t", b"v%d" % i, partition=part)
    yield s
    s.close()


def coordinator(store: Any, **kw: Any) -> GroupCoordinator:
    kw.setdefault("initial_rebalance_delay_ms", DELAY_MS)
    kw.setdefault("min_session_timeout_ms", 10)
    return GroupCoordinator(store, **kw)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario on a fresh loop; a hang fails the test instead of blocking the suite."""
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 5)
    asyncio.run(bounded())


async def join_v5(co: GroupCoordinator, client: str, **kw: Any) -> str:
    """The v4+ first step: member id "" gets MEMBER_ID_REQUIRED with the id to rejoin with."""
    r = await co.join_group(join_req(**kw), 5, client, HOST)
    assert r["error_code"] == MEMBER_ID_REQUIRED
    assert r["member_id"].startswith(client + "-")
    assert r["generation_id"] == -1 and r["members"] == []
    return r["member_id"]


async def form_group(co: GroupCoordinator, clients: list[str], **kw: Any) -> list[dict]:
    """Members join together (v5 flow); returns their JoinGroup responses in client order."""
    ids = [await join_v5(co, c, **kw) for c in clients]
    return list(await asyncio.gather(*(
        co.join_group(join_req(member_id=m, **kw), 5, c, HOST) for m, c in zip(ids, clients))))


async def stable_group(co: GroupCoordinator, clients: list[str],
                       **kw: Any) -> tuple[int, str, list[str]]:
    """A group through JoinGroup and SyncGroup; returns (generation, leader, member ids)."""
    joined = await form_group(co, clients, **kw)
    gen, leader = joined[0]["generation_id"], joined[0]["leader"]
    ids = [r["member_id"] for r in joined]
    given = {m: m.encode() for m in ids}
    syncs = await asyncio.gather(*(
        co.sync_group(sync_req(m, gen, assignments=given if m == leader else None), 3)
        for m in ids))
    assert [s["error_code"] for s in syncs] == [0] * len(ids)
    return gen, leader, ids


def state_of(co: GroupCoordinator, group: str = "g") -> str:
    return co.describe_groups({"groups": [group], "include_authorized_operations": False},
                              0)["groups"][0]["group_state"]


# ---------------------------------------------------------------------------------------------
# JoinGroup


def test_two_members_join_with_member_id_required_and_only_the_leader_gets_members(store):
    async def scenario() -> None:
        co = coordinator(store)
        a = await join_v5(co, "ca")
        b = await join_v5(co, "cb")
        assert a != b
        ra, rb = await asyncio.gather(
            co.join_group(join_req(member_id=a, protocols=(("range", b"A"),)), 5, "ca", HOST),
            co.join_group(join_req(member_id=b, protocols=(("range", b"B"),)), 5, "cb", HOST))
        assert (ra["error_code"], rb["error_code"]) == (0, 0)
        assert ra["generation_id"] == rb["generation_id"] == 1
        assert ra["leader"] == rb["leader"] == a  # the first to join leads
        assert (ra["member_id"], rb["member_id"]) == (a, b)
        assert ra["protocol_name"] == rb["protocol_name"] == "range"
        assert [(m["member_id"], bytes(m["metadata"])) for m in ra["members"]] == [
            (a, b"A"), (b, b"B")]
        assert rb["members"] == []
        assert state_of(co) == "CompletingRebalance"
        await co.close()
    run(scenario)


def test_protocol_vote_among_the_protocols_every_member_supports(store):
    async def scenario() -> None:
        co = coordinator(store)
        prefs = [(("sticky", b"s1"), ("range", b"r1"), ("roundrobin", b"o1")),
                 (("roundrobin", b"o2"), ("range", b"r2")),
                 (("roundrobin", b"o3"), ("range", b"r3"))]
        ids = [await join_v5(co, f"c{i}") for i in range(3)]
        rs = await asyncio.gather(*(
            co.join_group(join_req(member_id=m, protocols=p), 5, f"c{i}", HOST)
            for i, (m, p) in enumerate(zip(ids, prefs))))
        # sticky is not common; c0 votes range, c1 and c2 vote roundrobin.
        assert {r["protocol_name"] for r in rs} == {"roundrobin"}
        leader = next(r for r in rs if r["members"])
        assert [bytes(m["metadata"]) for m in leader["members"]] == [b"o1", b"o2", b"o3"]
        # A member sharing no protocol with everyone, or of another protocol type, is refused.
        bad = await co.join_group(join_req(protocols=(("sticky", b""),)), 5, "x", HOST)
        assert bad["error_code"] == INCONSISTENT_GROUP_PROTOCOL
        bad = await co.join_group(join_req(protocol_type="connect"), 5, "x", HOST)
        assert bad["error_code"] == INCONSISTENT_GROUP_PROTOCOL
        await co.close()
    run(scenario)


def test_join_validation_errors(store):
    async def scenario() -> None:
        co = coordinator(store, min_session_timeout_ms=100, max_session_timeout_ms=1000)
        assert (await co.join_group(join_req(session=99), 5, "c", HOST))["error_code"] == \
            INVALID_SESSION_TIMEOUT
        assert (await co.join_group(join_req(session=1001), 5, "c", HOST))["error_code"] == \
            INVALID_SESSION_TIMEOUT
        r = await co.join_group(join_req(group="", session=500), 5, "c", HOST)
        assert r["error_code"] == INVALID_GROUP_ID
        r = await co.join_group(join_req(group="nobody", member_id="ghost", session=500), 5, "c",
                                HOST)
        assert (r["error_code"], r["member_id"]) == (UNKNOWN_MEMBER_ID, "ghost")
        # Before v7 protocol_name is a non-nullable string: "" in error answers, never None.
        assert r["protocol_name"] == ""
        r = await co.join_group(join_req(group="nobody", member_id="ghost", session=500), 7, "c",
                                HOST)
        assert r["protocol_name"] is None
        await co.close()
    run(scenario)


def test_v0_join_adds_the_member_at_once_and_its_rebalance_timeout_is_the_session(store):
    async def scenario() -> None:
        co = coordinator(store)
        r = await co.join_group(join_req(session=300, rebalance=-1), 0, "a", HOST)
        assert r["error_code"] == 0 and r["generation_id"] == 1  # no MEMBER_ID_REQUIRED
        a = r["member_id"]
        assert a.startswith("a-") and r["leader"] == a
        assert [m["member_id"] for m in r["members"]] == [a]
        s = await co.sync_group(sync_req(a, 1, assignments={a: b"x"}), 0)
        assert (s["error_code"], s["assignment"]) == (0, b"x")
        # A second member: the rebalance waits for a (which keeps heartbeating but does not
        # rejoin) as long as the v0 rebalance timeout, i.e. the 300 ms session timeout,
        # whatever the dict's rebalance_timeout_ms says (v0 has no such field).
        start = time.monotonic()
        b_join = asyncio.ensure_future(co.join_group(join_req(session=300, rebalance=REBALANCE_MS),
                                                     0, "b", HOST))
        await asyncio.sleep(0)
        while not b_join.done() and time.monotonic() - start < 2:
            assert co.heartbeat(hb_req(a, 1), 0)["error_code"] == REBALANCE_IN_PROGRESS
            await asyncio.sleep(0.05)
        rb = await b_join
        assert 0.25 <= time.monotonic() - start < 1.5
        assert rb["generation_id"] == 2 and [m["member_id"] for m in rb["members"]] == [
            rb["member_id"]]
        assert co.heartbeat(hb_req(a, 1), 0)["error_code"] == UNKNOWN_MEMBER_ID
        await co.close()
    run(scenario)


def test_initial_delay_gathers_members_joining_an_empty_group_into_one_generation(store):
    async def scenario() -> None:
        co = coordinator(store, initial_rebalance_delay_ms=200)
        start = time.monotonic()
        first = asyncio.ensure_future(co.join_group(join_req(), 0, "a", HOST))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(co.join_group(join_req(), 0, "b", HOST))
        ra, rb = await asyncio.gather(first, second)
        # b arrived inside a's delay, which then ran once more: both in generation 1.
        assert time.monotonic() - start >= 0.38
        assert ra["generation_id"] == rb["generation_id"] == 1
        assert len(ra["members"]) == 2 and rb["members"] == []
        await co.close()
    run(scenario)


def test_pending_member_holds_the_rebalance_until_its_session_expires(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, _ = await stable_group(co, ["a"])
        await join_v5(co, "b", session=150)  # told its id; never comes back
        start = time.monotonic()
        r = await co.join_group(join_req(member_id=a), 5, "a", HOST)  # leader: rebalance
        assert time.monotonic() - start >= 0.12
        assert r["generation_id"] == gen + 1 and [m["member_id"] for m in r["members"]] == [a]
        await co.close()
    run(scenario)


def test_new_member_joining_a_stable_group_makes_the_others_rejoin(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, _ = await stable_group(co, ["a"])
        b = await join_v5(co, "b")
        assert state_of(co) == "Stable"  # a pending member does not rebalance yet
        b_join = asyncio.ensure_future(co.join_group(join_req(member_id=b), 5, "b", HOST))
        await asyncio.sleep(0.02)
        assert not b_join.done()
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
        ra = await co.join_group(join_req(member_id=a), 5, "a", HOST)
        rb = await b_join
        assert ra["generation_id"] == rb["generation_id"] == gen + 1
        assert ra["leader"] == a and len(ra["members"]) == 2
        await co.close()
    run(scenario)


# ---------------------------------------------------------------------------------------------
# SyncGroup and Heartbeat


def test_followers_park_until_the_leader_syncs_and_omitted_members_get_empty_bytes(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await form_group(co, ["a", "b", "c"])
        gen, leader = rs[0]["generation_id"], rs[0]["leader"]
        a, b, c = (r["member_id"] for r in rs)
        fb = asyncio.ensure_future(co.sync_group(sync_req(b, gen), 3))
        fc = asyncio.ensure_future(co.sync_group(sync_req(c, gen), 5))
        await asyncio.sleep(0.05)
        assert not fb.done() and not fc.done()
        assert state_of(co) == "CompletingRebalance"
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == 0
        ra = await co.sync_group(sync_req(leader, gen, assignments={a: b"for-a", b: b"for-b",
                                                                     "stranger": b"?"}), 3)
        assert (ra["error_code"], ra["assignment"]) == (0, b"for-a")
        sb, sc = await asyncio.gather(fb, fc)
        assert (sb["error_code"], sb["assignment"]) == (0, b"for-b")
        assert (sc["error_code"], sc["assignment"]) == (0, b"")  # left out by the leader
        assert (sc["protocol_type"], sc["protocol_name"]) == ("consumer", "range")  # v5
        assert state_of(co) == "Stable"
        # In Stable a SyncGroup answers at once with the stored assignment.
        again = await co.sync_group(sync_req(b, gen), 3)
        assert (again["error_code"], again["assignment"]) == (0, b"for-b")
        await co.close()
    run(scenario)


def test_sync_errors(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, _ = await stable_group(co, ["a"])
        assert (await co.sync_group(sync_req("ghost", gen), 3))["error_code"] == UNKNOWN_MEMBER_ID
        assert (await co.sync_group(sync_req(a, gen, group="nobody"), 3))["error_code"] == \
            UNKNOWN_MEMBER_ID
        assert (await co.sync_group(sync_req(a, gen + 1), 3))["error_code"] == ILLEGAL_GENERATION
        r = await co.sync_group(sync_req(a, gen, protocol_type="consumer",
                                         protocol_name="roundrobin"), 5)
        assert r["error_code"] == INCONSISTENT_GROUP_PROTOCOL
        r = await co.sync_group(sync_req(a, gen, protocol_type="connect"), 5)
        assert r["error_code"] == INCONSISTENT_GROUP_PROTOCOL
        r = await co.sync_group(sync_req(a, gen, protocol_type="consumer", protocol_name="range"),
                                5)
        assert r["error_code"] == 0
        # PreparingRebalance: a new member is waiting (a's rejoin is not in yet).
        b = await join_v5(co, "b")
        b_join = asyncio.ensure_future(co.join_group(join_req(member_id=b), 5, "b", HOST))
        await asyncio.sleep(0)
        assert (await co.sync_group(sync_req(a, gen), 3))["error_code"] == REBALANCE_IN_PROGRESS
        await co.join_group(join_req(member_id=a), 5, "a", HOST)
        await b_join
        await co.close()
    run(scenario)


def test_heartbeat_answers_per_state(store):
    async def scenario() -> None:
        co = coordinator(store)
        assert co.heartbeat(hb_req("x", 0, group="nobody"), 0)["error_code"] == UNKNOWN_MEMBER_ID
        assert co.heartbeat(hb_req("x", 0, group=""), 0)["error_code"] == INVALID_GROUP_ID
        rs = await form_group(co, ["a", "b"])
        gen = rs[0]["generation_id"]
        a, b = (r["member_id"] for r in rs)
        assert state_of(co) == "CompletingRebalance"
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == 0
        assert co.heartbeat(hb_req(b, gen - 1), 4)["error_code"] == ILLEGAL_GENERATION
        assert co.heartbeat(hb_req("ghost", gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        await asyncio.gather(co.sync_group(sync_req(a, gen, assignments={}), 3),
                             co.sync_group(sync_req(b, gen), 3))
        assert state_of(co) == "Stable"
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == 0
        assert co.leave_group(leave_req(member_id=b), 0)["error_code"] == 0
        assert state_of(co) == "PreparingRebalance"
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        assert co.leave_group(leave_req(member_id=a), 2)["error_code"] == 0
        assert state_of(co) == "Empty"
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        await co.close()
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == COORDINATOR_NOT_AVAILABLE
    run(scenario)


# ---------------------------------------------------------------------------------------------
# LeaveGroup and the timeouts


def test_leave_rebalances_and_the_remaining_member_rejoins_into_the_next_generation(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, (_, b) = await stable_group(co, ["a", "b"])
        assert co.leave_group(leave_req(member_id=b), 1)["error_code"] == 0
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
        r = await co.join_group(join_req(member_id=a), 5, "a", HOST)
        assert (r["error_code"], r["generation_id"], r["leader"]) == (0, gen + 1, a)
        assert [m["member_id"] for m in r["members"]] == [a]
        assert co.leave_group(leave_req(member_id="ghost"), 0)["error_code"] == UNKNOWN_MEMBER_ID
        # The last member leaving empties the group, one generation on; offsets stay.
        await co.sync_group(sync_req(a, gen + 1, assignments={a: b""}), 3)
        assert co.offset_commit(commit_req("g", {("t", 0): 4}, generation=gen + 1, member_id=a),
                                2)["topics"][0]["partitions"][0]["error_code"] == 0
        assert co.leave_group(leave_req(member_id=a), 0)["error_code"] == 0
        assert state_of(co) == "Empty"
        assert store.committed("g", "t", 0) == 4
        r = await co.join_group(join_req(), 0, "c", HOST)
        assert r["generation_id"] == gen + 3
        await co.close()
    run(scenario)


def test_leave_v3_batch_with_errors_per_member_and_removal_by_instance_id(store):
    async def scenario() -> None:
        co = coordinator(store)
        ids = await asyncio.gather(
            co.join_group(join_req(instance="i1"), 5, "a", HOST),
            co.join_group(join_req(instance="i2"), 5, "b", HOST),
            co.join_group(join_req(instance="i3"), 5, "c", HOST))
        m1, m2, m3 = (r["member_id"] for r in ids)
        assert m1.startswith("i1-")  # static members are named after their instance id
        r = co.leave_group(leave_req(members=[("", "i2"), ("ghost", None), (m1, "i3"),
                                              (m3, "i3"), ("", "nope")]), 3)
        assert r["error_code"] == 0
        assert [(m["member_id"], m["group_instance_id"], m["error_code"]) for m in r["members"]] \
            == [("", "i2", 0), ("ghost", None, UNKNOWN_MEMBER_ID), (m1, "i3", FENCED_INSTANCE_ID),
                (m3, "i3", 0), ("", "nope", UNKNOWN_MEMBER_ID)]
        d = co.describe_groups({"groups": ["g"], "include_authorized_operations": False}, 4)
        assert [m["member_id"] for m in d["groups"][0]["members"]] == [m1]
        r = co.leave_group(leave_req(group="nobody", members=[("x", None)]), 3)
        assert r["error_code"] == 0 and r["members"][0]["error_code"] == UNKNOWN_MEMBER_ID
        assert m2 not in str(d)
        await co.close()
    run(scenario)


def test_session_expiry_removes_the_silent_member_and_heartbeats_keep_the_other(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, (_, b) = await stable_group(co, ["a", "b"], session=250)
        codes = []
        for _ in range(12):  # 0.6 s: over two sessions' worth
            await asyncio.sleep(0.05)
            codes.append(co.heartbeat(hb_req(a, gen), 4)["error_code"])
        assert codes[0] == 0 and codes[-1] == REBALANCE_IN_PROGRESS
        assert set(codes) == {0, REBALANCE_IN_PROGRESS}
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        r = await co.join_group(join_req(member_id=a, session=250), 5, "a", HOST)
        assert r["generation_id"] == gen + 1 and [m["member_id"] for m in r["members"]] == [a]
        await co.close()
    run(scenario)


def test_members_parked_in_join_or_sync_outlive_their_session_timeout(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, (_, b) = await stable_group(co, ["a", "b"], session=200)
        # a (the leader) rejoins and waits in JoinGroup while b takes 0.3 s to follow.
        a_join = asyncio.ensure_future(co.join_group(join_req(member_id=a, session=200), 5, "a",
                                                     HOST))
        for _ in range(6):
            await asyncio.sleep(0.05)
            assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
        rb = await co.join_group(join_req(member_id=b, session=200), 5, "b", HOST)
        ra = await a_join
        assert (ra["error_code"], rb["error_code"]) == (0, 0)
        assert ra["generation_id"] == gen + 1 and len(ra["members"]) == 2
        # Now b waits in SyncGroup while the leader takes 0.3 s to assign.
        b_sync = asyncio.ensure_future(co.sync_group(sync_req(b, gen + 1), 3))
        for _ in range(6):
            await asyncio.sleep(0.05)
            assert co.heartbeat(hb_req(a, gen + 1), 4)["error_code"] == 0
        await co.sync_group(sync_req(a, gen + 1, assignments={b: b"B"}), 3)
        sb = await b_sync
        assert (sb["error_code"], sb["assignment"]) == (0, b"B")
        await co.close()
    run(scenario)


def test_rebalance_timeout_removes_members_that_did_not_rejoin(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, (_, b) = await stable_group(co, ["a", "b"], rebalance=200)
        start = time.monotonic()
        a_join = asyncio.ensure_future(co.join_group(join_req(member_id=a, rebalance=200), 5,
                                                     "a", HOST))
        await asyncio.sleep(0)
        while not a_join.done():  # b stays alive but ignores the hint to rejoin
            assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
            await asyncio.sleep(0.03)
        r = a_join.result()
        assert time.monotonic() - start >= 0.18
        assert r["generation_id"] == gen + 1 and [m["member_id"] for m in r["members"]] == [a]
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        await co.close()
    run(scenario)


def test_members_that_never_sync_are_removed_and_the_group_rebalances(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await form_group(co, ["a", "b"], rebalance=300)
        gen, a, b = rs[0]["generation_id"], rs[0]["member_id"], rs[1]["member_id"]
        assert rs[0]["leader"] == a
        r = await co.sync_group(sync_req(a, gen, assignments={a: b"1", b: b"2"}), 3)
        assert r["error_code"] == 0
        for _ in range(2):
            await asyncio.sleep(0.05)
            assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == 0
        await asyncio.sleep(0.3)  # past the rebalance timeout: b never synced
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == REBALANCE_IN_PROGRESS
        assert co.heartbeat(hb_req(b, gen), 4)["error_code"] == UNKNOWN_MEMBER_ID
        await co.close()
    run(scenario)


# ---------------------------------------------------------------------------------------------
# Static membership (KIP-345)


def test_static_member_restart_replaces_its_id_without_rebalance_and_fences_the_old_id(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await asyncio.gather(co.join_group(join_req(instance="i1"), 5, "a", HOST),
                                  co.join_group(join_req(instance="i2"), 5, "b", HOST))
        gen = rs[0]["generation_id"]
        old, other = rs[0]["member_id"], rs[1]["member_id"]
        assert rs[0]["leader"] == old
        await asyncio.gather(
            co.sync_group(sync_req(old, gen, instance="i1",
                                   assignments={old: b"A", other: b"B"}), 3),
            co.sync_group(sync_req(other, gen, instance="i2"), 3))
        # The leader restarts: same instance id, member id "".
        r = await co.join_group(join_req(instance="i1"), 5, "a2", HOST)
        new = r["member_id"]
        assert r["error_code"] == 0 and new != old and new.startswith("i1-")
        assert r["generation_id"] == gen  # no rebalance
        assert r["leader"] == old and r["members"] == []  # so it does not reassign
        assert state_of(co) == "Stable"
        assert co.heartbeat(hb_req(other, gen, instance="i2"), 4)["error_code"] == 0
        assert co.heartbeat(hb_req(old, gen, instance="i1"), 4)["error_code"] == \
            FENCED_INSTANCE_ID
        assert co.heartbeat(hb_req(new, gen, instance="i1"), 4)["error_code"] == 0
        s = await co.sync_group(sync_req(new, gen, instance="i1"), 3)
        assert (s["error_code"], s["assignment"]) == (0, b"A")
        s = await co.sync_group(sync_req(old, gen, instance="i1"), 3)
        assert s["error_code"] == FENCED_INSTANCE_ID
        r = await co.join_group(join_req(member_id=old, instance="i1"), 5, "a", HOST)
        assert r["error_code"] == FENCED_INSTANCE_ID
        c = co.offset_commit(commit_req("g", {("t", 0): 1}, generation=gen, member_id=old,
                                        instance="i1"), 7)
        assert commit_errors(c) == {("t", 0): FENCED_INSTANCE_ID}
        c = co.offset_commit(commit_req("g", {("t", 0): 1}, generation=gen, member_id=new,
                                        instance="i1"), 7)
        assert commit_errors(c) == {("t", 0): 0}
        await co.close()
    run(scenario)


def test_static_member_rejoining_with_another_protocol_rebalances(store):
    async def scenario() -> None:
        co = coordinator(store)
        both = (("range", b"r"), ("roundrobin", b"o"))
        r = await co.join_group(join_req(instance="i1", protocols=both), 5, "a", HOST)
        gen, old = r["generation_id"], r["member_id"]
        assert r["protocol_name"] == "range"
        await co.sync_group(sync_req(old, gen, assignments={old: b"x"}), 3)
        r = await co.join_group(join_req(instance="i1", protocols=(("roundrobin", b"o2"),)), 5,
                                "a", HOST)
        assert r["error_code"] == 0 and r["generation_id"] == gen + 1
        assert r["protocol_name"] == "roundrobin" and r["leader"] == r["member_id"] != old
        await co.close()
    run(scenario)


# ---------------------------------------------------------------------------------------------
# OffsetCommit and OffsetFetch


def test_simple_commit_round_trip_visible_to_the_store_and_after_reopen(tmp_path, store):
    async def scenario() -> None:
        co = coordinator(store)
        r = co.offset_commit(commit_req("etl", {("t", 0): (5, "meta", 7), ("t", 2): (10, None, -1)}),
                             6)
        assert commit_errors(r) == {("t", 0): 0, ("t", 2): 0}
        assert store.committed("etl", "t", 0) == 5 and store.committed("etl", "t", 2) == 10
        f = co.offset_fetch(fetch_req("etl", {"t": [0, 1, 2]}), 5)
        assert f["error_code"] == 0
        assert fetched(f["topics"]) == {("t", 0): (5, "meta", 7, 0), ("t", 1): (-1, "", -1, 0),
                                        ("t", 2): (10, "", -1, 0)}
        f = co.offset_fetch(fetch_req("etl", None), 7)  # null topics: all committed
        assert list(fetched(f["topics"])) == [("t", 0), ("t", 2)]
        # v0 commits carry no generation: still a simple commit.
        r = co.offset_commit(commit_req("etl", {("t", 1): 3}), 0)
        assert commit_errors(r) == {("t", 1): 0}
        await co.close()
    run(scenario)
    store.close()
    with kstore.open(tmp_path / "data", retention_check_interval_ms=0) as again:
        assert [again.committed("etl", "t", p) for p in range(3)] == [5, 3, 10]

        async def reread() -> None:
            co = coordinator(again)
            f = co.offset_fetch(fetch_req("etl", {"t": [0]}), 1)
            assert fetched(f["topics"]) == {("t", 0): (5, "meta", 7, 0)}
            await co.close()
        run(reread)


def test_commit_errors_per_partition_and_the_valid_ones_committed(store):
    async def scenario() -> None:
        co = coordinator(store)
        r = co.offset_commit(commit_req("g1", {
            ("t", 0): 2, ("t", 3): 1, ("nope", 0): 1, ("t", 1): (1, "m" * 4097, -1),
            ("t", 2): -1}), 8)
        assert commit_errors(r) == {("t", 0): 0, ("t", 3): UNKNOWN_TOPIC_OR_PARTITION,
                                    ("nope", 0): UNKNOWN_TOPIC_OR_PARTITION,
                                    ("t", 1): OFFSET_METADATA_TOO_LARGE,
                                    ("t", 2): OFFSET_OUT_OF_RANGE}
        assert store.committed("g1", "t", 0) == 2
        assert [store.committed("g1", "t", p) for p in (1, 2)] == [None, None]
        # Past the log end: taken, as Kafka takes it (kstore answered OFFSET_OUT_OF_RANGE).
        end = store.partition("t", 2).log_end_offset
        r = co.offset_commit(commit_req("g1", {("t", 2): end + 1, ("t", 1): 10**12}), 8)
        assert commit_errors(r) == {("t", 2): 0, ("t", 1): 0}
        assert [store.committed("g1", "t", p) for p in (1, 2)] == [10**12, end + 1]
        assert "nope" not in store.topics()  # a commit never creates a topic
        # Unknown group with a generation: a stale member; nothing is committed.
        r = co.offset_commit(commit_req("g2", {("t", 0): 1}, generation=3, member_id="m"), 2)
        assert commit_errors(r) == {("t", 0): ILLEGAL_GENERATION}
        r = co.offset_commit(commit_req("g2", {("t", 0): 1}, member_id="m"), 2)
        assert commit_errors(r) == {("t", 0): UNKNOWN_MEMBER_ID}
        r = co.offset_commit(commit_req("", {("t", 0): 1}), 2)
        assert commit_errors(r) == {("t", 0): INVALID_GROUP_ID}
        assert store.committed("g2", "t", 0) is None
        await co.close()
        r = co.offset_commit(commit_req("g1", {("t", 0): 1}), 2)
        assert commit_errors(r) == {("t", 0): COORDINATOR_NOT_AVAILABLE}
        assert store.committed("g1", "t", 0) == 2
    run(scenario)


def test_commit_checks_membership_generation_and_state(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await form_group(co, ["a", "b"])
        gen, a, b = rs[0]["generation_id"], rs[0]["member_id"], rs[1]["member_id"]

        def commit(**kw: Any) -> int:
            return commit_errors(co.offset_commit(commit_req("g", {("t", 0): 1}, **kw), 2))[
                ("t", 0)]
        assert commit(generation=gen, member_id=b) == REBALANCE_IN_PROGRESS  # CompletingRebalance
        await asyncio.gather(co.sync_group(sync_req(a, gen, assignments={}), 3),
                             co.sync_group(sync_req(b, gen), 3))
        assert commit(generation=gen, member_id=b) == 0
        assert commit(generation=gen + 1, member_id=b) == ILLEGAL_GENERATION
        assert commit(generation=gen, member_id="ghost") == UNKNOWN_MEMBER_ID
        assert commit() == UNKNOWN_MEMBER_ID  # a group with members takes no simple commits
        assert commit(generation=-1, member_id=b) == ILLEGAL_GENERATION
        co.leave_group(leave_req(member_id=a), 0)  # -> PreparingRebalance: commits still allowed
        assert state_of(co) == "PreparingRebalance"
        assert commit(generation=gen, member_id=b) == 0
        co.leave_group(leave_req(member_id=b), 0)
        assert state_of(co) == "Empty"
        assert commit() == 0
        assert commit(generation=gen, member_id=b) == UNKNOWN_MEMBER_ID
        await co.close()
    run(scenario)


def test_commit_restarts_the_session(store):
    async def scenario() -> None:
        co = coordinator(store)
        gen, a, _ = await stable_group(co, ["a"], session=250)
        for _ in range(8):  # 0.4 s of commits and no heartbeat
            await asyncio.sleep(0.05)
            r = co.offset_commit(commit_req("g", {("t", 0): 1}, generation=gen, member_id=a), 2)
            assert commit_errors(r) == {("t", 0): 0}
        assert co.heartbeat(hb_req(a, gen), 4)["error_code"] == 0
        await co.close()
    run(scenario)


def test_offset_fetch_v8_batches_groups(store):
    async def scenario() -> None:
        co = coordinator(store)
        co.offset_commit(commit_req("g1", {("t", 0): 3, ("t", 1): 4}), 2)
        co.offset_commit(commit_req("g2", {("t", 2): (7, "x", 0)}), 8)
        f = co.offset_fetch({"group_id": "", "topics": [], "require_stable": True, "groups": [
            {"group_id": "g1", "member_id": None, "member_epoch": -1, "topics": None},
            {"group_id": "g2", "member_id": None, "member_epoch": -1,
             "topics": [{"name": "t", "partition_indexes": [1, 2]}]},
            {"group_id": "nobody", "member_id": None, "member_epoch": -1, "topics": None},
        ]}, 8)
        assert [g["group_id"] for g in f["groups"]] == ["g1", "g2", "nobody"]
        assert [g["error_code"] for g in f["groups"]] == [0, 0, 0]
        assert fetched(f["groups"][0]["topics"]) == {("t", 0): (3, "", -1, 0),
                                                     ("t", 1): (4, "", -1, 0)}
        assert fetched(f["groups"][1]["topics"]) == {("t", 1): (-1, "", -1, 0),
                                                     ("t", 2): (7, "x", 0, 0)}
        assert f["groups"][2]["topics"] == []
        await co.close()
        f = co.offset_fetch(fetch_req("g1", {"t": [0]}), 1)
        assert fetched(f["topics"])[("t", 0)][3] == COORDINATOR_NOT_AVAILABLE
    run(scenario)


# ---------------------------------------------------------------------------------------------
# ListGroups, DescribeGroups, DeleteGroups


def test_list_groups_with_members_commits_only_and_state_filter(store):
    async def scenario() -> None:
        co = coordinator(store)
        await stable_group(co, ["a"])
        r = await co.join_group(join_req(group="gone"), 0, "c", HOST)
        co.leave_group(leave_req(group="gone", member_id=r["member_id"]), 0)
        co.offset_commit(commit_req("simple", {("t", 0): 1}), 2)
        r = co.list_groups({"states_filter": []}, 4)
        assert r["error_code"] == 0
        assert [(g["group_id"], g["protocol_type"], g["group_state"]) for g in r["groups"]] == [
            ("g", "consumer", "Stable"), ("gone", "consumer", "Empty"), ("simple", "", "Empty")]
        r = co.list_groups({"states_filter": ["stable", "PreparingRebalance"]}, 4)
        assert [g["group_id"] for g in r["groups"]] == ["g"]
        r = co.list_groups({"states_filter": ["Stable"]}, 0)  # no filter before v4
        assert len(r["groups"]) == 3
        await co.close()
    run(scenario)


def test_describe_groups(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await form_group(co, ["a", "b"], protocols=(("range", b"sub"), ("rr", b"o")))
        gen, a, b = rs[0]["generation_id"], rs[0]["member_id"], rs[1]["member_id"]
        req = {"groups": ["g", "nobody", "simple"], "include_authorized_operations": True}
        d = co.describe_groups(req, 5)["groups"][0]
        assert (d["group_state"], d["protocol_data"]) == ("CompletingRebalance", "")
        assert [m["member_metadata"] for m in d["members"]] == [b"", b""]
        await asyncio.gather(co.sync_group(sync_req(a, gen, assignments={a: b"A", b: b"B"}), 3),
                             co.sync_group(sync_req(b, gen), 3))
        co.offset_commit(commit_req("simple", {("t", 0): 1}), 2)
        g, nobody, simple = co.describe_groups(req, 5)["groups"]
        assert (g["error_code"], g["group_id"], g["group_state"], g["protocol_type"],
                g["protocol_data"], g["authorized_operations"]) == (
            0, "g", "Stable", "consumer", "range", INT32_MIN)
        assert [(m["member_id"], m["group_instance_id"], m["client_id"], m["client_host"],
                 m["member_metadata"], m["member_assignment"]) for m in g["members"]] == [
            (a, None, "a", HOST, b"sub", b"A"), (b, None, "b", HOST, b"sub", b"B")]
        assert (nobody["error_code"], nobody["group_state"], nobody["members"]) == (0, "Dead", [])
        assert (simple["error_code"], simple["group_state"], simple["protocol_type"]) == (
            0, "Empty", "")
        assert "authorized_operations" not in co.describe_groups(req, 2)["groups"][0]
        await co.close()
    run(scenario)


def test_delete_groups(tmp_path, store):
    async def scenario() -> None:
        co = coordinator(store)
        await stable_group(co, ["a"])
        co.offset_commit(commit_req("simple", {("t", 0): 1, ("t", 1): 2}), 2)
        r = await co.join_group(join_req(group="left"), 0, "c", HOST)
        co.leave_group(leave_req(group="left", member_id=r["member_id"]), 0)
        res = co.delete_groups({"groups_names": ["g", "nobody", "simple", "left"]}, 2)
        assert [(x["group_id"], x["error_code"]) for x in res["results"]] == [
            ("g", NON_EMPTY_GROUP), ("nobody", GROUP_ID_NOT_FOUND), ("simple", 0), ("left", 0)]
        assert store.committed("simple", "t", 0) is None
        assert store.committed("simple", "t", 1) is None
        names = [x["group_id"] for x in co.list_groups({"states_filter": []}, 4)["groups"]]
        assert names == ["g"]
        res = co.delete_groups({"groups_names": ["simple"]}, 0)
        assert res["results"][0]["error_code"] == GROUP_ID_NOT_FOUND
        await co.close()
    run(scenario)
    store.close()
    with kstore.open(tmp_path / "data", retention_check_interval_ms=0) as again:
        assert again.committed("simple", "t", 0) is None and "simple" not in again.groups()


# ---------------------------------------------------------------------------------------------
# close()


def test_close_answers_parked_joins_and_syncs(store):
    async def scenario() -> None:
        co = coordinator(store)
        rs = await form_group(co, ["a", "b"])
        gen, b = rs[0]["generation_id"], rs[1]["member_id"]
        parked_sync = asyncio.ensure_future(co.sync_group(sync_req(b, gen), 3))
        slow = coordinator(store, initial_rebalance_delay_ms=60_000)
        parked_join = asyncio.ensure_future(slow.join_group(join_req(), 0, "c", HOST))
        await asyncio.sleep(0.02)
        assert not parked_sync.done() and not parked_join.done()
        await co.close()
        await slow.close()
        assert parked_sync.done() and parked_join.done()
        assert parked_sync.result()["error_code"] == COORDINATOR_NOT_AVAILABLE
        assert parked_join.result()["error_code"] == COORDINATOR_NOT_AVAILABLE
        r = await co.join_group(join_req(), 5, "d", HOST)
        assert r["error_code"] == COORDINATOR_NOT_AVAILABLE
        assert co.list_groups({"states_filter": []}, 4)["error_code"] == COORDINATOR_NOT_AVAILABLE
    run(scenario)


# ---------------------------------------------------------------------------------------------
# The contract with the codec: requests as it decodes them, responses it can encode


def test_requests_and_responses_pass_through_the_wire_codec(store):
    protocol = pytest.importorskip("kstore.server.protocol")

    def wire(api: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        return protocol.decode(api, False, version, protocol.encode_bytes(api, False, version, body))

    def back(api: int, version: int, resp: dict[str, Any]) -> dict[str, Any]:
        return protocol.decode(api, True, version, protocol.encode_bytes(api, True, version, resp))

    JOIN, HEARTBEAT, LEAVE, SYNC, COMMIT, FETCH, DESCRIBE, LIST, DELETE = \
        11, 12, 13, 14, 8, 9, 15, 16, 42

    async def scenario() -> None:
        co = coordinator(store)
        for jv, sv in ((7, 5), (0, 0), (5, 3)):
            g = f"g{jv}"
            body = {"group_id": g, "session_timeout_ms": SESSION_MS,
                    "rebalance_timeout_ms": REBALANCE_MS, "member_id": "",
                    "protocol_type": "consumer", "protocols": [{"name": "range", "metadata": b"s"}]}
            r = back(JOIN, jv, await co.join_group(wire(JOIN, jv, body), jv, "c", HOST))
            if r["error_code"] == MEMBER_ID_REQUIRED:
                body["member_id"] = r["member_id"]
                r = back(JOIN, jv, await co.join_group(wire(JOIN, jv, body), jv, "c", HOST))
            assert r["error_code"] == 0 and r["protocol_name"] == "range"
            assert [bytes(m["metadata"]) for m in r["members"]] == [b"s"]
            m, gen = r["member_id"], r["generation_id"]
            s = back(SYNC, sv, await co.sync_group(wire(SYNC, sv, {
                "group_id": g, "generation_id": gen, "member_id": m,
                "assignments": [{"member_id": m, "assignment": b"asg"}]}), sv))
            assert (s["error_code"], bytes(s["assignment"])) == (0, b"asg")
            for hv in (0, 4):
                h = back(HEARTBEAT, hv, co.heartbeat(wire(HEARTBEAT, hv, {
                    "group_id": g, "generation_id": gen, "member_id": m}), hv))
                assert h["error_code"] == 0
            for cv in (0, 2, 8):
                c = back(COMMIT, cv, co.offset_commit(wire(COMMIT, cv, {
                    "group_id": g, "generation_id_or_member_epoch": gen, "member_id": m,
                    "topics": [{"name": "t", "partitions": [
                        {"partition_index": 0, "committed_offset": 2 + cv,
                         "committed_leader_epoch": 9, "committed_metadata": "md"}]}]}), cv))
                # v0 carries no member: a simple commit to a group with members is refused.
                assert c["topics"][0]["partitions"][0]["error_code"] == (
                    UNKNOWN_MEMBER_ID if cv == 0 else 0)
            for fv in (1, 5, 7):
                f = back(FETCH, fv, co.offset_fetch(wire(FETCH, fv, {
                    "group_id": g, "topics": [{"name": "t", "partition_indexes": [0, 1]}]}), fv))
                got = {p["partition_index"]: (p["committed_offset"], p["metadata"])
                       for p in f["topics"][0]["partitions"]}
                assert got == {0: (10, "md"), 1: (-1, "")}
                if fv >= 5:
                    assert f["topics"][0]["partitions"][0]["committed_leader_epoch"] == 9
            f = back(FETCH, 8, co.offset_fetch(wire(FETCH, 8, {
                "groups": [{"group_id": g, "topics": None}]}), 8))
            assert f["groups"][0]["topics"][0]["partitions"][0]["committed_offset"] == 10
            for dv in (0, 5):
                d = back(DESCRIBE, dv, co.describe_groups(wire(DESCRIBE, dv, {"groups": [g]}), dv))
                assert d["groups"][0]["group_state"] == "Stable"
                assert bytes(d["groups"][0]["members"][0]["member_assignment"]) == b"asg"
            for lv in (0, 4):
                listed = back(LIST, lv, co.list_groups(wire(LIST, lv, {}), lv))
                assert g in [x["group_id"] for x in listed["groups"]]
            out = back(LEAVE, 0, co.leave_group(wire(LEAVE, 0, {"group_id": g, "member_id": m}),
                                                0))
            assert out["error_code"] == 0
            out = back(LEAVE, 5, co.leave_group(wire(LEAVE, 5, {
                "group_id": g, "members": [{"member_id": m}]}), 5))
            assert out["error_code"] == 0
            assert out["members"][0]["error_code"] == UNKNOWN_MEMBER_ID  # already gone
            d = back(DELETE, 2, co.delete_groups(wire(DELETE, 2, {"groups_names": [g]}), 2))
            assert d["results"][0]["error_code"] == 0
        await co.close()
    run(scenario)


def test_offsets_of_a_group_with_live_members_do_not_expire(tmp_path):
    """Offsets expiry (offsets.retention.minutes) skips groups with members; the coordinator's
    members live outside the Store, so the server registers its group_activity."""
    now = [10_000_000]
    store = kstore.open(tmp_path / "d", retention_check_interval_ms=0, offsets_retention_minutes=1,
                        clock=lambda: now[0])
    store.create_topic("t", partitions=1)
    store.partition("t", 0).append(b"x")

    async def scenario() -> None:
        co = coordinator(store)
        store.group_activity_hooks.append(co.group_activity)
        gen, leader, ids = await stable_group(co, ["ca"])
        resp = co.offset_commit(commit_req("g", {("t", 0): 1}, generation=gen, member_id=leader), 2)
        assert commit_errors(resp) == {("t", 0): 0}
        assert co.offset_commit(commit_req("idle", {("t", 0): 1}), 2)["topics"][0]["partitions"][0][
            "error_code"] == 0
        now[0] += 120_000  # both commits are older than the retention now
        assert store.expire_offsets() == {"idle": [("t", 0)]}
        assert store.committed("g", "t", 0) == 1
        co.leave_group(leave_req("g", leader), 1)
        assert store.expire_offsets() == {}  # Empty for no time yet
        now[0] += 60_000
        assert store.expire_offsets() == {"g": [("t", 0)]}
        await co.close()
    try:
        run(scenario)
    finally:
        store.close()


DAY_MS = 86_400_000


def test_offsets_of_a_group_expire_only_once_it_has_been_empty_for_the_retention(tmp_path):
    """KIP-211: the offsets of a group using group management expire once the group has been
    Empty for offsets.retention.minutes, however old the commits are. librdkafka does not commit
    unchanged offsets, so on an idle topic the last commit is days old while the group is
    alive; when its consumers stop (a deploy) the offsets must not vanish at once."""
    now = [1_700_000_000_000]
    store = kstore.open(tmp_path / "d", retention_check_interval_ms=0,
                        offsets_retention_minutes=24 * 60, clock=lambda: now[0])
    store.create_topic("t", partitions=1)
    store.partition("t", 0).append(b"x")

    async def scenario() -> None:
        co = coordinator(store)
        store.group_activity_hooks.append(co.group_activity)
        gen, leader, _ = await stable_group(co, ["ca"])
        resp = co.offset_commit(commit_req("g", {("t", 0): 1}, generation=gen, member_id=leader), 2)
        assert commit_errors(resp) == {("t", 0): 0}
        now[0] += 2 * DAY_MS - 60_000  # the consumers idle along, committing nothing new
        assert store.expire_offsets() == {}
        assert co.leave_group(leave_req("g", leader), 1)["error_code"] == 0
        assert state_of(co) == "Empty"
        now[0] += 60_000  # Empty for a minute; the commit is two days old
        assert store.expire_offsets() == {}
        assert store.committed("g", "t", 0) == 1
        now[0] += DAY_MS - 60_000 - 1  # Empty for a day less 1 ms
        assert store.expire_offsets() == {}
        now[0] += 1
        assert store.expire_offsets() == {"g": [("t", 0)]}
        assert store.committed("g", "t", 0) is None
        await co.close()
    try:
        run(scenario)
    finally:
        store.close()


def test_groups_the_coordinator_never_saw_keep_their_offsets_until_its_start_plus_retention(
        tmp_path):
    """After a restart no group has members until its consumers rejoin; a group the new
    coordinator has not seen counts as active when the coordinator started, so the restart
    never expires offsets within the retention (standalone consumers included)."""
    now = [1_700_000_000_000]
    path = tmp_path / "d"
    with kstore.open(path, retention_check_interval_ms=0, clock=lambda: now[0]) as before:
        before.create_topic("t", partitions=1)
        before.partition("t", 0).append(b"x")
        before.commit_offsets("g", {("t", 0): (1, "", -1)})
    now[0] += 3 * DAY_MS  # the server was down, or the group idle, for three days
    store = kstore.open(path, retention_check_interval_ms=0, offsets_retention_minutes=24 * 60,
                        clock=lambda: now[0])

    async def scenario() -> None:
        co = coordinator(store)
        store.group_activity_hooks.append(co.group_activity)
        assert co.group_activity() == ({}, now[0])
        assert store.expire_offsets() == {}  # the first maintenance pass after the restart
        now[0] += DAY_MS - 1
        assert store.expire_offsets() == {}
        assert store.committed("g", "t", 0) == 1
        now[0] += 1
        assert store.expire_offsets() == {"g": [("t", 0)]}
        await co.close()
    try:
        run(scenario)
    finally:
        store.close()


def test_group_activity_reports_members_pending_joins_and_when_groups_became_empty(store):
    now = [5_000_000]
    store._clock = lambda: now[0]

    async def scenario() -> None:
        co = coordinator(store)
        assert co.group_activity() == ({}, 5_000_000)
        _, leader, _ = await stable_group(co, ["a"])
        await join_v5(co, "p", group="joining")  # told its id, not back yet
        now[0] += 1000
        assert co.group_activity() == ({"g": 5_001_000, "joining": 5_001_000}, 5_000_000)
        co.leave_group(leave_req("g", leader), 1)
        now[0] += 1000
        acts, floor = co.group_activity()
        assert (acts["g"], floor) == (5_001_000, 5_000_000)  # Empty since the leave
        await co.close()
        assert co.group_activity() == ({}, 5_000_000)
    run(scenario)


def test_refused_joins_of_new_group_ids_leave_no_group_behind(store):
    """A JoinGroup refused by validation must not create its group: ListGroups would show an
    Empty group per random group id forever. Neither may a v4+ join told MEMBER_ID_REQUIRED
    whose client never comes back (unless the group has commits)."""
    async def scenario() -> None:
        co = coordinator(store, min_session_timeout_ms=100, max_session_timeout_ms=1000)
        for version in (0, 4, 5):
            for i, req in enumerate((
                    join_req(group=f"noproto-{version}", session=500, protocols=()),
                    join_req(group=f"notype-{version}", session=500, protocol_type=""),
                    join_req(group=f"nulltype-{version}", session=500, protocol_type=None),
                    join_req(group=f"short-{version}", session=99),
                    join_req(group=f"long-{version}", session=1001))):
                r = await co.join_group(req, version, "c", HOST)
                assert r["error_code"] in (INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT), \
                    (version, i, r)
        assert co.list_groups({"states_filter": []}, 4)["groups"] == []
        # v4+: MEMBER_ID_REQUIRED, and the client never rejoins (or leaves while pending).
        await join_v5(co, "gone", group="pending", session=100)
        assert [g["group_id"] for g in co.list_groups({"states_filter": []}, 4)["groups"]] == [
            "pending"]
        left = await join_v5(co, "left", group="left-pending", session=500)
        assert co.leave_group({"group_id": "left-pending", "members": [
            {"member_id": left, "group_instance_id": None, "reason": None}]}, 3)[
            "members"][0]["error_code"] == 0
        # A group with commits stays (Empty) when its pending member expires.
        co.offset_commit(commit_req("committed", {("t", 0): 1}), 2)
        await join_v5(co, "c", group="committed", session=100)
        await asyncio.sleep(0.25)
        assert [(g["group_id"], g["group_state"]) for g in co.list_groups(
            {"states_filter": []}, 4)["groups"]] == [("committed", "Empty")]
        assert state_of(co, "pending") == "Dead"
        # The group is made afresh by the next valid join.
        r = await co.join_group(join_req(group="pending", session=500), 0, "c", HOST)
        assert r["error_code"] == 0 and r["generation_id"] == 1
        await co.close()
    run(scenario)
