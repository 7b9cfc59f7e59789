"""Consumer groups across processes on one data directory (kstore.localgroups): range
assignment among members of several processes, rebalancing when a member joins, leaves or is
SIGKILLed (its lock goes with it), the rebalance barrier (a partition is read by one member at
a time, a slow member that is alive keeps its partitions), group names with any character,
and the Consumer and Store on top: commits other processes append are seen, members of every
process are listed."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import kstore
from kstore import errors, localgroups, offsets
from kstore.localgroups import GroupMember, range_assign

DEADLINE = 20.0  # seconds before a test calls the group hung (never a timing assertion)
COUNTS = {"t": 4}
GROUP = "g/ü *..\\x"  # slashes, dots, spaces, non-ASCII: hashed in file names


def partitions_for(topic):
    if topic not in COUNTS:
        raise errors.UnknownTopicOrPartitionError(topic)
    return COUNTS[topic]


def _member_main(data_dir, group, member_id, status_path, stop, pause, session_ms):
    """A member process: follow the group, hold the claims of its partitions (letting go of
    revoked ones first), and write what it sees to ``status_path`` after every change."""
    m = GroupMember(data_dir, group, member_id, partitions_for, session_timeout_ms=session_ms)
    m.join(["t"])
    last = None
    while not stop.is_set():
        if pause.is_set():  # slow: neither polls nor lets go (but its process lives)
            time.sleep(0.01)
            continue
        gen, mine = m.refresh()
        m.release([tp for tp in list(m._claims) if tp not in mine])
        for tp in mine:
            m.claim(tp)
        now = (gen, sorted(mine), sorted(m._claims))
        if now != last:
            tmp = status_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"generation": gen, "assigned": now[1], "held": now[2]}, f)
            os.replace(tmp, status_path)
            last = now
        time.sleep(0.005)
    m.leave()


class Members:
    """Member processes of one group, started with fork (no member exists in the parent
    when it forks, so none shares a lock with a child)."""

    def __init__(self, data_dir: Path, group: str = GROUP, session_ms: int = 1000) -> None:
        self.ctx = mp.get_context("fork")
        self.data_dir, self.group, self.session_ms = str(data_dir), group, session_ms
        self.procs: dict[str, tuple] = {}

    def start(self, mid: str) -> None:
        stop, pause = self.ctx.Event(), self.ctx.Event()
        status = os.path.join(self.data_dir, f"status-{mid}.json")
        p = self.ctx.Process(target=_member_main, daemon=True,
                             args=(self.data_dir, self.group, mid, status, stop, pause,
                                   self.session_ms))
        p.start()
        self.procs[mid] = (p, stop, pause, status)

    def status(self, mid):
        try:
            with open(self.procs[mid][3]) as f:
                d = json.load(f)
        except (OSError, ValueError):
            return None
        return {"generation": d["generation"], "assigned": [tuple(x) for x in d["assigned"]],
                "held": [tuple(x) for x in d["held"]]}

    def kill(self, mid):
        p = self.procs.pop(mid)[0]
        os.kill(p.pid, signal.SIGKILL)
        p.join(DEADLINE)

    def stop(self, mid):
        p, stop, _, _ = self.procs.pop(mid)
        stop.set()
        p.join(DEADLINE)
        assert p.exitcode == 0

    def settled(self, members):
        """Until the given live members hold exactly their range assignment of one generation."""
        want = range_assign({m: ["t"] for m in members}, COUNTS)
        end = time.monotonic() + DEADLINE
        while True:
            st = {m: self.status(m) for m in members}
            if all(s is not None and s["held"] == want[m] == s["assigned"] for m, s in st.items()) \
                    and len({s["generation"] for s in st.values()}) == 1:
                return st
            assert time.monotonic() < end, f"the group never settled on {want}: {st}"
            time.sleep(0.01)

    def close(self):
        for mid in list(self.procs):
            self.kill(mid)


@pytest.fixture
def members(tmp_path):
    m = Members(tmp_path)
    yield m
    m.close()


def test_range_assign_is_kafkas():
    out = range_assign({"b": ["t", "u"], "a": ["t"], "c": ["t", "u"]}, {"t": 7, "u": 2, "v": 3})
    assert out == {"a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4), ("u", 0)],
                   "c": [("t", 5), ("t", 6), ("u", 1)]}
    assert range_assign({"a": ["gone"]}, {}) == {"a": []}


def test_three_processes_split_partitions_and_rebalance_on_join_and_leave(members, tmp_path):
    for mid in ("m1", "m2", "m3"):
        members.start(mid)
    st = members.settled(["m1", "m2", "m3"])
    assert sorted(len(s["held"]) for s in st.values()) == [1, 1, 2]
    live = localgroups.live_members(tmp_path, GROUP)
    assert sorted(live) == ["m1", "m2", "m3"]
    assert {m: len({i["pid"] for i in [live[m]]}) for m in live} == {"m1": 1, "m2": 1, "m3": 1}
    assert localgroups.list_groups(tmp_path) == [GROUP]
    members.stop("m2")  # a clean leave
    members.settled(["m1", "m3"])
    members.start("m4")  # a join
    members.settled(["m1", "m3", "m4"])
    for mid in ("m1", "m3", "m4"):
        members.stop(mid)
    assert localgroups.live_members(tmp_path, GROUP) == {}
    assert localgroups.list_groups(tmp_path) == []


def test_sigkilled_member_is_dropped_and_its_partitions_go_to_the_others(members, tmp_path):
    for mid in ("m1", "m2", "m3"):
        members.start(mid)
    before = members.settled(["m1", "m2", "m3"])
    lock = localgroups.group_dir(tmp_path, GROUP) / "members" / (
        localgroups._hash("m2") + ".lock")
    assert lock.exists()
    members.kill("m2")  # no leave(): only the kernel knows it died
    after = members.settled(["m1", "m3"])
    assert after["m1"]["generation"] > before["m1"]["generation"]
    assert sorted(localgroups.live_members(tmp_path, GROUP)) == ["m1", "m3"]
    assert not lock.exists(), "the dead member's lock file was not cleaned up"
    assert "m2" not in localgroups.read_state(localgroups.group_dir(tmp_path, GROUP))["members"]


def test_slow_member_keeps_its_partitions_and_the_barrier_holds(members, tmp_path):
    """A member that stops polling for longer than its session timeout is alive: it stays in
    the group and keeps its partitions until it lets go; the new owner cannot read them
    before. Two holders of one partition never coexist."""
    members.session_ms = 100
    members.start("slow")
    members.settled(["slow"])
    members.procs["slow"][2].set()  # pause: it holds all 4 claims and stops looking
    other = GroupMember(tmp_path, GROUP, "zz-new", partitions_for, session_timeout_ms=100)
    try:
        other.join(["t"])
        gen, mine = other.refresh()
        assert mine == [("t", 2), ("t", 3)]
        time.sleep(0.5)  # five session timeouts
        for _ in range(3):
            gen2, mine2 = other.refresh()
            assert (gen2, mine2) == (gen, mine)  # nobody was dropped
            assert not any(other.claim(tp) for tp in mine)  # still held by the slow owner
            time.sleep(0.12)
        assert sorted(localgroups.live_members(tmp_path, GROUP)) == ["slow", "zz-new"]
        members.procs["slow"][2].clear()  # it polls again, sees the rebalance, lets go
        end = time.monotonic() + DEADLINE
        while not all(other.claim(tp) for tp in mine):
            assert time.monotonic() < end, "the slow member never let go"
            time.sleep(0.01)
        while (st := members.status("slow")) is None or st["held"] != [("t", 0), ("t", 1)]:
            assert time.monotonic() < end, st
            time.sleep(0.01)
    finally:
        other.leave()


def test_claims_exclude_each_other_in_one_process_too(tmp_path):
    a = GroupMember(tmp_path, "g", "a", partitions_for)
    b = GroupMember(tmp_path, "g", "b", partitions_for)
    a.join(["t"])
    b.join(["t"])
    assert a.claim(("t", 0)) and a.claim(("t", 0))
    assert not b.claim(("t", 0))
    a.release([("t", 0)])
    assert b.claim(("t", 0))
    a.leave()
    assert b.refresh()[1] == [("t", p) for p in range(4)]
    b.leave()


def test_group_names_with_any_character_are_kept_apart(tmp_path):
    names = ["a/b", "a_b", "..", "", "x\x00y", "ü" * 300]
    ms = [GroupMember(tmp_path, n, f"m{i}", partitions_for) for i, n in enumerate(names)]
    for m in ms:
        m.join(["t"])
    assert localgroups.list_groups(tmp_path) == sorted(names)
    for m in ms:  # each alone in its group: all four partitions
        assert m.refresh()[1] == [("t", p) for p in range(4)]
        m.leave()


def test_damaged_state_file_is_rebuilt_from_the_live_members(tmp_path):
    a = GroupMember(tmp_path, "g", "a", partitions_for, session_timeout_ms=10)
    b = GroupMember(tmp_path, "g", "b", partitions_for, session_timeout_ms=10)
    a.join(["t"])
    b.join(["t"])
    (localgroups.group_dir(tmp_path, "g") / "state.json").write_bytes(b'{"generation": 3, "mem')
    end = time.monotonic() + DEADLINE
    while True:
        time.sleep(0.02)
        _, pa = a.refresh()
        _, pb = b.refresh()
        if pa == [("t", 0), ("t", 1)] and pb == [("t", 2), ("t", 3)]:
            break
        assert time.monotonic() < end, (pa, pb)
    a.leave()
    b.leave()


# ---------------------------------------------------------------------------------------------
# Consumer and Store on top (one process: a second writable Store of one directory waits for
# the shared mode of issue 14)


def fill(store, topic, n):
    with store.producer(linger_ms=60_000) as p:
        for part in range(store.partitions_for(topic)):
            for i in range(n):
                p.send(topic, b"v%d-%d" % (part, i), partition=part)


def test_bad_session_timeout(tmp_path):
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t")
        for bad in (0, -1, 1.5, True, "10"):
            with pytest.raises(errors.InvalidSessionTimeoutError):
                s.consumer(group="g", topics=["t"], session_timeout_ms=bad)


def test_consumers_of_one_store_meet_in_the_group_files(tmp_path):
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", partitions=4)
        fill(s, "t", 5)
        a = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest",
                       session_timeout_ms=2000)
        b = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
        live = localgroups.live_members(s.path, "g")
        assert sorted(live) == sorted([a.member_id, b.member_id])
        assert {tuple(tp) for m in live.values() for tp in m["assignment"]} == \
            {("t", p) for p in range(4)}
        desc = s.describe_group("g")
        assert desc["state"] == "Stable"
        assert sorted(m["member_id"] for m in desc["members"]) == sorted(live)
        assert all(m["pid"] == os.getpid() for m in desc["members"])
        got = []
        for c in (a, b):
            while recs := c.poll(timeout=0):
                got += [(r.partition, r.offset) for r in recs]
        assert sorted(got) == [(p, o) for p in range(4) for o in range(5)]
        a.close()
        assert b.assignment() == {("t", p) for p in range(4)}
        b.close()
        assert s.describe_group("g")["members"] == []


def test_a_consumer_sees_a_partition_of_a_member_in_another_process(tmp_path):
    """A member of another process leaves: the consumer takes its partitions over (the
    waiting poll looks at the group, not only at its own data signal)."""
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", partitions=4)
        fill(s, "t", 3)
        ctx = mp.get_context("fork")
        stop, pause = ctx.Event(), ctx.Event()
        status = str(tmp_path / "status.json")
        p = ctx.Process(target=_member_main, daemon=True,
                        args=(str(s.path), "g", "0-first", status, stop, pause, 1000))
        p.start()
        try:
            end = time.monotonic() + DEADLINE
            while not os.path.exists(status):
                assert time.monotonic() < end
                time.sleep(0.01)
            c = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest")
            end = time.monotonic() + DEADLINE
            while c.assignment() != {("t", 2), ("t", 3)}:
                assert time.monotonic() < end, c.assignment()
                c.poll(timeout=0.05)
            os.kill(p.pid, signal.SIGKILL)
            p.join(DEADLINE)
            got = []
            end = time.monotonic() + DEADLINE
            while len(got) < 12:
                assert time.monotonic() < end, got
                got += [(r.partition, r.offset) for r in c.poll(timeout=1.0)]
            assert sorted(got) == [(q, o) for q in range(4) for o in range(3)]
            c.close()
        finally:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(DEADLINE)


def test_store_sees_commits_appended_behind_its_cache(tmp_path):
    """Another process's commit lands in __consumer_offsets without going through this
    Store: committed() must replay it (here the append goes straight to the log)."""
    with kstore.open(tmp_path / "d") as s:
        s.create_topic("t", partitions=2)
        fill(s, "t", 10)
        s.commit_offsets("g", {("t", 0): (3, "", 0)})
        assert s.committed("g", "t", 0) == 3
        for group, off in (("g", 7), ("other", 5)):
            lg = s.partition(offsets.OFFSETS_TOPIC, offsets.group_partition(group))
            b = kstore._core.BatchBuilder()
            b.append(offsets.encode_offset_commit_value(off, 0, "", 1), timestamp=1,
                     key=offsets.encode_offset_commit_key(group, "t", 0))
            lg.append_batch(b.build(), validate_records=False, verify_crc=False, _internal=True)
        end = time.monotonic() + DEADLINE
        while s.committed("other", "t", 0) is None:  # a new partition folder: found within 100 ms
            assert time.monotonic() < end
            time.sleep(0.02)
        assert s.committed("g", "t", 0) == 7
        assert s.committed("other", "t", 0) == 5
        assert s.groups() == ["g", "other"]


def _join_many(data_dir, mid, barrier, n):
    barrier.wait(DEADLINE)
    for i in range(n):
        m = GroupMember(data_dir, f"new-{i}", mid, partitions_for)
        m.join(["t"])
        m.leave()


def test_processes_creating_one_group_at_once_do_not_trip_over_each_other(tmp_path):
    """Regression: the group's name file was written (name.tmp + rename) before taking the
    group lock, so two processes creating the group at once could lose the rename race and
    fail to join with KafkaStorageError."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_join_many, args=(str(tmp_path), f"m{i}", barrier, 40))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(DEADLINE * 2)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert all(localgroups.read_state(localgroups.group_dir(tmp_path, f"new-{i}"))["members"] == {}
               for i in range(40))


def test_offsets_of_a_group_live_in_another_process_do_not_expire(tmp_path):
    """KIP-211: commits of a group with members never expire, also when the members live in
    another process (this Store only knows them through the group files)."""
    now = [1_000]
    with kstore.open(tmp_path / "d", clock=lambda: now[0], retention_check_interval_ms=0,
                     offsets_retention_minutes=1) as s:
        s.create_topic("t", partitions=4)
        fill(s, "t", 2)
        s.commit_offsets("live", {("t", 0): (1, "", 0)})
        s.commit_offsets("gone", {("t", 0): (1, "", 0)})
        ctx = mp.get_context("fork")
        stop, pause = ctx.Event(), ctx.Event()
        status = str(tmp_path / "status.json")
        p = ctx.Process(target=_member_main, daemon=True,
                        args=(str(s.path), "live", "m", status, stop, pause, 1000))
        p.start()
        try:
            end = time.monotonic() + DEADLINE
            while not os.path.exists(status):
                assert time.monotonic() < end
                time.sleep(0.01)
            c = s.consumer(group="mine", topics=["t"])  # this process uses groups too
            now[0] += 120_000
            assert s.expire_offsets() == {"gone": [("t", 0)]}
            assert s.committed("live", "t", 0) == 1
            c.close()
        finally:
            stop.set()
            p.join(DEADLINE)


# ---------------------------------------------------------------------------------------------
# Stores in several processes (shared mode)


def _consumer_main(data_dir, log_path, stop):
    """A consumer process: polls a few records at a time, logs what it got ("D p:o ...") and,
    after committing, the committed positions ("C p:o ...")."""
    s = kstore.open(data_dir, retention_check_interval_ms=0)
    c = s.consumer(group="g", topics=["t"], auto_offset_reset="earliest", max_poll_records=10,
                   auto_commit_interval_ms=60_000, session_timeout_ms=1000)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while not stop.is_set():
        recs = c.poll(timeout=0.05)
        if not recs:
            continue
        os.write(fd, ("D " + " ".join(f"{r.partition}:{r.offset}" for r in recs) + "\n").encode())
        c.commit()
        last = {r.partition: r.offset + 1 for r in recs}
        os.write(fd, ("C " + " ".join(f"{p}:{o}" for p, o in last.items()) + "\n").encode())
        time.sleep(0.01)  # slow enough to be killed in the middle
    c.close()
    s.close()


def _read_log(path):
    delivered, committed = [], {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return delivered, committed
    for line in text.splitlines():
        kind, *items = line.split()
        pairs = [tuple(int(x) for x in it.split(":")) for it in items]
        if kind == "D":
            delivered += pairs
        else:
            for p, o in pairs:
                committed[p] = max(committed.get(p, 0), o)
    return delivered, committed


def test_three_store_processes_one_sigkilled_every_committed_record_once(tmp_path):
    data = tmp_path / "d"
    per_part = 300
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t", partitions=4)
        fill(s, "t", per_part)
    ctx = mp.get_context("fork")  # no Store is open in the parent when it forks
    stop = ctx.Event()
    logs = {n: str(tmp_path / f"{n}.log") for n in ("a", "b", "victim")}
    procs = {n: ctx.Process(target=_consumer_main, args=(str(data), logs[n], stop), daemon=True)
             for n in logs}
    for p in procs.values():
        p.start()
    everything = {(p, o) for p in range(4) for o in range(per_part)}
    try:
        end = time.monotonic() + DEADLINE
        while Path(logs["victim"]).exists() is False or \
                Path(logs["victim"]).read_text().count("\nC ") < 3:
            assert time.monotonic() < end, "the victim never got partitions"
            time.sleep(0.005)
        os.kill(procs["victim"].pid, signal.SIGKILL)
        procs["victim"].join(DEADLINE)
        end = time.monotonic() + DEADLINE * 2
        while True:
            got = set(_read_log(logs["a"])[0]) | set(_read_log(logs["b"])[0]) | \
                set(_read_log(logs["victim"])[0])
            if got >= everything:
                break
            assert time.monotonic() < end, f"{len(everything - got)} records never delivered"
            time.sleep(0.02)
        stop.set()
        for n in ("a", "b"):
            procs[n].join(DEADLINE)
            assert procs[n].exitcode == 0
    finally:
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(DEADLINE)
    (da, _), (db, _) = _read_log(logs["a"]), _read_log(logs["b"])
    dv, cv = _read_log(logs["victim"])
    assert dv and cv, "the victim consumed nothing before it was killed"
    survivors = da + db
    assert len(survivors) == len(set(survivors)), "a survivor's record was delivered twice"
    assert set(survivors) | set(dv) == everything
    for d in (da, db, dv):  # per-partition order in each process
        for p in range(4):
            offs = [o for q, o in d if q == p]
            assert offs == sorted(offs)
    # What the victim committed is never delivered again; only what it read after its last
    # commit may be.
    again = {(p, o) for p, o in dv if (p, o) in set(survivors)}
    assert all(o >= cv.get(p, 0) for p, o in again), sorted(again)[:5]
    # The survivors took over the victim's partitions where its commits stood.
    for p, o in cv.items():
        assert (p, o) in set(survivors) or o == per_part
    with kstore.open(data, retention_check_interval_ms=0) as s:
        assert [s.committed("g", "t", p) for p in range(4)] == [per_part] * 4
        assert s.describe_group("g")["members"] == []


def test_maintenance_in_a_store_without_consumers_keeps_offsets_of_a_live_group(tmp_path):
    """Offset expiry (KIP-211) in a process with no consumer of its own: a group whose member
    lives elsewhere is active, so its old commits stay; once it is gone they expire."""
    now = [10_000_000]
    path = tmp_path / "d"
    with kstore.open(path, clock=lambda: now[0], offsets_retention_minutes=1,
                     retention_check_interval_ms=0) as s:
        s.create_topic("t")
        s.commit_offsets("g", {("t", 0): (0, "", 0)})
        member = localgroups.GroupMember(path, "g", "elsewhere-1", s.partitions_for)
        member.join(["t"])  # a member of another process, as far as this Store can tell
        now[0] += 10 * 60_000
        assert s.expire_offsets() == {}
        assert s.committed("g", "t", 0) == 0
        member.close()
        assert s.expire_offsets() == {"g": [("t", 0)]}
