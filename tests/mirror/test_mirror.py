"""kstore mirror between data directories and a `kstore serve` (the stand-in for a cluster):
records and committed offsets byte for byte, compacted sources with gaps, group offset
translation, resuming after SIGKILL and Ctrl-C, --follow, and the errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kstore
from kstore import errors
from kstore.cleaner import clean_log
from kstore.mirror import (
    CHECKPOINT_DIR,
    Checkpoint,
    Mirror,
    add_anchor,
    default_checkpoint,
    translate,
)
from tests.mirror.conftest import commits_of, records_of, server_store
from tests.server.conftest import wait_until

T0 = 1_700_000_000_000
BIN_KEYS = [bytes([i]) for i in range(256)] + [b"", None, bytes(range(256))]


def fill_binary(store: kstore.Store, topic: str, partitions: int) -> None:
    """Every byte value as a key, empty vs null keys and values (tombstones), binary headers
    with null values, timestamps out of order, spread over all partitions."""
    rng = random.Random(7)
    store.create_topic(topic, partitions, config={"retention.ms": 987654321})
    pr = store.producer(linger_ms=0)
    for i, key in enumerate(BIN_KEYS * 2):
        value = None if i % 11 == 0 else (b"" if i % 13 == 0 else rng.randbytes(rng.randrange(1, 300)))
        headers = [] if i % 3 == 0 else [("hé ✓", rng.randbytes(5)), ("n", None), ("", b"\x00")]
        pr.send(topic, value, key, headers, T0 + rng.randrange(-10_000, 10_000), i % partitions)
    pr.flush()


def mirror_cli(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "kstore", "mirror", *args], capture_output=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"kstore mirror {' '.join(args)} exited {done.returncode}:\n"
                    f"{done.stderr.decode(errors='replace')}")
    return done


def spawn_mirror(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kstore", "mirror", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def anchors_progressed(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return any(a[-1][0] > a[0][0] for ps in doc["partitions"].values() for a in ps.values())


# ==============================================================================================
# Round trip


# The stored batches sent as they are (their codec is the destination's), re-encoded (another
# codec) and record by record through confluent-kafka.
@pytest.mark.parametrize("compression,forward", [("none", True), ("lz4", True), ("lz4", False)],
                         ids=["batches", "reencoded", "per_record"])
def test_store_to_serve_and_back_keeps_every_record_and_commit(tmp_path, server, url,
                                                               compression, forward):
    a, b = tmp_path / "a", tmp_path / "b"
    rt = f"rt-{compression}-{forward}"
    with kstore.open(a) as s:
        fill_binary(s, rt, 3)
        s.commit_offsets("etl", {(rt, 0): (5, "méta ✓", -1), (rt, 1): (0, "", -1),
                                 (rt, 2): (s.partition(rt, 2).log_end_offset, "end", -1)})
        s.commit_offsets("other", {(rt, 1): (17, "x", -1)})
    there = Mirror(a, url, topics=[rt], compression=compression, forward_batches=forward).run()
    assert there.records == len(BIN_KEYS) * 2 and there.created_topics == [rt]
    assert there.groups == {"etl": 3, "other": 1} and not there.group_errors
    back = Mirror(url, b, topics=[rt]).run()
    assert back.records == there.records and back.groups == {"etl": 3, "other": 1}
    with kstore.open(a, read_only=True) as sa, kstore.open(b, read_only=True) as sb, \
            server_store(server) as sv:
        for p in range(3):
            want = records_of(sa, rt, p)
            assert records_of(sv, rt, p) == want  # dense source: offsets equal too
            assert records_of(sb, rt, p) == want
        for g in ("etl", "other"):
            assert commits_of(sb, g) == commits_of(sa, g)
            # confluent-kafka-python sends non-empty metadata with a C string's NUL
            # terminator; the cluster keeps it, reading it back cuts it.
            at_server = {tp: c for tp, c in commits_of(sv, g).items() if tp[0] == rt}
            assert at_server == {tp: (off, meta + "\x00" if meta else "")
                                         for tp, (off, meta) in commits_of(sa, g).items()}
        assert sv.describe_topic(rt)["config"]["retention.ms"] == 987654321
        assert sb.describe_topic(rt)["config"]["retention.ms"] == 987654321
        assert sb.partitions_for(rt) == 3
    # Run again: nothing new, nothing twice.
    again = Mirror(a, url, topics=[rt], compression=compression, forward_batches=forward).run()
    assert again.records == 0 and again.resumed_partitions == 3
    with server_store(server) as sv:
        assert sum(len(records_of(sv, rt, p)) for p in range(3)) == there.records
        codecs = {b.compression for p in range(3)
                  for b in sv.partition(rt, p).read(0, 1 << 24).batches()}
        # librdkafka sends a batch uncompressed when lz4 does not make it smaller.
        assert codecs == {compression} if forward else codecs <= {compression, "none"}


def test_store_to_store_and_checkpoint_folder_is_ignored_by_the_store(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with kstore.open(a) as s:
        fill_binary(s, "s2s", 2)
    st = Mirror(a, b, compression="zstd").run()
    assert st.records == len(BIN_KEYS) * 2
    assert Path(st.checkpoint).parent == b / CHECKPOINT_DIR and Path(st.checkpoint).exists()
    with kstore.open(a, read_only=True) as sa, kstore.open(b, read_only=True) as sb:
        assert sb.topics(internal=False) == ["s2s"]
        for p in range(2):
            assert records_of(sb, "s2s", p) == records_of(sa, "s2s", p)
    done = subprocess.run([sys.executable, "-m", "kstore", "verify", str(b)],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()


# ==============================================================================================
# Compacted sources: gaps, tombstones, offset translation, resume counting records


def compacted_source(path: Path, topic: str) -> list[int]:
    """A compacted topic with gaps and tombstones; returns the offsets that remain."""
    with kstore.open(path) as s:
        s.create_topic(topic, 1, config={"cleanup.policy": "compact", "file.delete.delay.ms": 0})
        pr = s.producer(linger_ms=0)
        rng = random.Random(5)
        for i in range(300):
            key = bytes([rng.randrange(80)])
            pr.send(topic, None if i % 17 == 0 else f"v{i}".encode(), key, None, T0 + i, 0)
            if i % 25 == 24:
                pr.flush()
        pr.flush()
        lg = s.partition(topic, 0)
        lg.roll()
        clean_log(lg, T0, force=True)
        pr.send(topic, b"after", b"k", None, T0 + 1000, 0)  # the active segment: no gap
        pr.flush()
        offs = [r[0] for r in records_of(s, topic, 0)]
    assert len(offs) < 300 and offs != list(range(offs[0], offs[0] + len(offs)))
    return offs


def test_compacted_topic_with_gaps_and_tombstones_and_group_translation(tmp_path, server, url):
    a, b = tmp_path / "a", tmp_path / "b"
    offs = compacted_source(a, "cmp")
    end = offs[-1] + 1
    gaps = [o for o in range(end) if o not in set(offs)]
    # Commits before the first record, in gaps, at records, at the end.
    probes = sorted({0, gaps[0], gaps[len(gaps) // 2], gaps[-1], offs[0], offs[len(offs) // 2],
                     offs[-1], end})
    with kstore.open(a) as s:
        for i, x in enumerate(probes):
            s.commit_offsets(f"g{i}", {("cmp", 0): (x, "", -1)})
    st = Mirror(a, url, topics=["cmp"]).run()
    assert st.records == len(offs)
    back = Mirror(url, b, topics=["cmp"]).run()
    assert back.records == len(offs)
    with kstore.open(a, read_only=True) as sa, server_store(server) as sv, \
            kstore.open(b, read_only=True) as sb:
        src = records_of(sa, "cmp", 0)
        dst = records_of(sv, "cmp", 0)
        assert [r[1:] for r in dst] == [r[1:] for r in src]  # keys, tombstones, timestamps
        assert [r[0] for r in dst] == list(range(len(src)))  # renumbered densely
        assert records_of(sb, "cmp", 0) == dst
        assert any(r[2] is None for r in dst)  # tombstones survived
        assert sv.describe_topic("cmp")["config"]["cleanup.policy"] == "compact"
        for i, x in enumerate(probes):
            want = sum(1 for o in offs if o < x)  # the records the group had consumed
            assert commits_of(sv, f"g{i}") == {("cmp", 0): (want, "")}, (x, want)
            assert commits_of(sb, f"g{i}") == {("cmp", 0): (want, "")}, (x, want)


def test_resume_skips_records_that_landed_after_the_checkpoint(tmp_path):
    """A run killed after its chunk landed but before the anchor was written: the next run
    finds k extra records at the destination and skips k source records (not offsets)."""
    a, b = tmp_path / "a", tmp_path / "b"
    offs = compacted_source(a, "cmp")
    st = Mirror(a, b).run()
    cp_path = Path(st.checkpoint)
    doc = json.loads(cp_path.read_text())
    assert doc["partitions"]["cmp"]["0"][-1] == [offs[-1] + 1, len(offs)]
    doc["partitions"]["cmp"]["0"] = [[0, 0]]  # as if no chunk had been acknowledged
    cp_path.write_text(json.dumps(doc))
    again = Mirror(a, b).run()
    assert again.records == 0 and again.skipped_on_resume == len(offs)
    with kstore.open(a) as s:
        s.producer(linger_ms=0).send("cmp", b"new", b"n", None, T0, 0)
        s.flush()
    third = Mirror(a, b).run()
    assert third.records == 1
    with kstore.open(a, read_only=True) as sa, kstore.open(b, read_only=True) as sb:
        assert [r[1:] for r in records_of(sb, "cmp", 0)] == [r[1:] for r in records_of(sa, "cmp", 0)]


def test_anchors_and_translation_match_counting(tmp_path):
    rng = random.Random(3)
    offsets = sorted(rng.sample(range(5000), 1200))  # a source with gaps
    anchors: list[list[int]] = [[0, 0]]
    i = 0
    while i < len(offsets):
        n = rng.randrange(1, 200)
        chunk = offsets[i:i + n]
        i += len(chunk)
        # A chunk may end past its last record (a gap, control records), not past the next.
        src_next = chunk[-1] + 1 + rng.randrange(3)
        if i < len(offsets):
            src_next = min(src_next, offsets[i])
        add_anchor(anchors, src_next, i)
    dense_anchors: list[list[int]] = [[10, 100]]
    for k in range(1, 50):
        add_anchor(dense_anchors, 10 + 7 * k, 100 + 7 * k)
    assert dense_anchors == [[10, 100], [353, 443]]  # a dense run keeps its ends only

    def count(lo: int, hi: int) -> int:
        return sum(1 for o in offsets if lo <= o < hi)

    for x in range(offsets[-1] + 5):
        assert translate(anchors, x, count) == min(count(0, x), len(offsets)), x
    assert translate([], 5, count) is None


# ==============================================================================================
# Kill, Ctrl-C, --follow


def fill_many(path: Path, topic: str, n: int, partitions: int) -> None:
    with kstore.open(path) as s:
        s.create_topic(topic, partitions)
        pr = s.producer(linger_ms=0, batch_size=1 << 16)
        for i in range(n):
            pr.send(topic, i.to_bytes(4, "big") * 25, str(i).encode(), None, T0 + i, i % partitions)
        pr.flush()


def stopped_mid_copy(src: Path, url: str, sig: int, *args: str) -> tuple[subprocess.Popen, bytes]:
    """Run `kstore mirror SRC URL ARGS` and send ``sig`` once its checkpoint shows progress
    (failing if it finished first); returns the process, exited, and its stderr."""
    cp = default_checkpoint(src, url)
    proc = spawn_mirror(str(src), url, *args)
    try:
        wait_until(lambda: anchors_progressed(cp) or proc.poll() is not None, 30,
                   "the checkpoint to show progress")
        assert proc.poll() is None, "the mirror finished before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err


def assert_exact_copy(src: Path, server, topic: str, partitions: int) -> None:
    with kstore.open(src, read_only=True) as sa, server_store(server) as sv:
        for p in range(partitions):
            assert records_of(sv, topic, p) == records_of(sa, topic, p), p


@pytest.mark.parametrize("how", [(), ("--per-record",)], ids=["batches", "per_record"])
def test_resume_after_sigkill_mid_copy_loses_and_repeats_nothing(tmp_path, server, url, how):
    a = tmp_path / "a"
    topic = "kill" + "".join(how)
    fill_many(a, topic, 40_000, 4)
    stopped_mid_copy(a, url, signal.SIGKILL, "--topic", topic, "--max-rate", "20000", *how)
    with server_store(server) as sv:
        landed = sum(sv.partition(topic, p).log_end_offset for p in range(4))
    assert 0 < landed < 40_000
    done = mirror_cli(str(a), url, "--topic", topic, "--json", *how)
    st = json.loads(done.stdout)
    assert st["resumed_partitions"] == 4 and st["records"] == 40_000 - landed
    assert_exact_copy(a, server, topic, 4)


def test_ctrl_c_prints_summary_exits_130_and_resumes(tmp_path, server, url):
    a = tmp_path / "a"
    fill_many(a, "intr", 30_000, 2)
    proc, err = stopped_mid_copy(a, url, signal.SIGINT, "--topic", "intr", "--max-rate", "15000")
    assert proc.returncode == 130, err.decode()
    assert b"interrupted: " in err and b"records in" in err
    first = Checkpoint(default_checkpoint(a, url), str(a.resolve()), url).anchors("intr", 0)
    assert first is not None
    mirror_cli(str(a), url, "--topic", "intr")
    assert_exact_copy(a, server, "intr", 2)


def test_follow_copies_new_records_and_group_offsets_until_sigint(tmp_path, server, url):
    a = tmp_path / "a"
    fill_many(a, "fol", 100, 1)
    proc = spawn_mirror(str(a), url, "--topic", "fol", "--follow")
    try:
        def copied(n: int) -> bool:
            with server_store(server) as sv:
                return "fol" in sv.topics() and sv.partition("fol", 0).log_end_offset >= n

        wait_until(lambda: copied(100) or proc.poll() is not None, 30, "the first 100 records")
        assert proc.poll() is None
        with kstore.open(a) as s:  # a writer beside the mirror
            pr = s.producer(linger_ms=0)
            for i in range(50):
                pr.send("fol", b"late%d" % i, None, None, T0 + i, 0)
            pr.flush()
            s.commit_offsets("late", {("fol", 0): (120, "", -1)})
        wait_until(lambda: copied(150) or proc.poll() is not None, 30, "the 50 new records")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted: 150 records" in err
    assert_exact_copy(a, server, "fol", 1)
    with server_store(server) as sv:
        assert commits_of(sv, "late") == {("fol", 0): (120, "")}  # copied on the way out


# ==============================================================================================
# Errors


def test_partition_count_mismatch_is_an_error_and_copies_nothing(tmp_path, server, url):
    a = tmp_path / "a"
    with kstore.open(a) as s:
        s.create_topic("mm-a", 1)
        s.create_topic("mm-b", 3)
        s.producer(linger_ms=0).send("mm-b", b"x", None, None, T0, 0)
        s.flush()
    import confluent_kafka.admin as ca

    admin = ca.AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 0})
    admin.create_topics([ca.NewTopic("mm-b", 2, replication_factor=-1)])["mm-b"].result(30)
    with pytest.raises(errors.InvalidPartitionsError, match="'mm-b' has 3 partitions at the "
                                                            "source and 2 at the destination"):
        Mirror(a, url, include="mm-.*").run()
    done = mirror_cli(str(a), url, "--include", "mm-.*", check=False)
    assert done.returncode == 2 and b"Nothing was copied" in done.stderr
    with server_store(server) as sv:
        assert "mm-a" not in sv.topics()  # not created either
        assert sv.partition("mm-b", 0).log_end_offset == 0


def test_unreachable_cluster_fails_within_the_timeout(tmp_path):
    import socket

    a = tmp_path / "a"
    fill_many(a, "un", 10, 1)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises((errors.NetworkError, errors.RequestTimedOutError),
                       match="cannot reach the cluster"):
        Mirror(a, f"kafka://127.0.0.1:{port}", timeout=1).run()
    done = mirror_cli(str(a), f"kafka://127.0.0.1:{port}", "--timeout", "1", timeout=30,
                      check=False)
    assert done.returncode == 2 and b"cannot reach the cluster" in done.stderr
    assert b"Traceback" not in done.stderr


def test_unknown_topic_bad_regex_and_a_foreign_checkpoint(tmp_path, url):
    a, b = tmp_path / "a", tmp_path / "b"
    fill_many(a, "t", 3, 1)
    with pytest.raises(errors.UnknownTopicOrPartitionError, match="no topic 'nope'"):
        Mirror(a, b, topics=["nope"]).run()
    with pytest.raises(errors.InvalidConfigError):
        Mirror(a, b, include="(")
    Mirror(a, b).run()
    cp = b / CHECKPOINT_DIR / "mine.json"
    Mirror(a, b / "other", checkpoint=cp).run()
    with pytest.raises(errors.InvalidRequestError, match="belongs to a mirror of"):
        Mirror(a, b, checkpoint=cp).run()
    cp.write_text("{not json")
    with pytest.raises(errors.InvalidRequestError, match="is damaged"):
        Mirror(a, b / "other", checkpoint=cp).run()
    with pytest.raises(errors.InvalidRequestError, match="needs a checkpoint"):
        Mirror(url, url)
    with pytest.raises(errors.UnknownTopicOrPartitionError, match="not a kstore data directory"):
        Mirror(tmp_path / "missing", b).run()


def test_destination_that_lost_records_is_an_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fill_many(a, "lost", 20, 1)
    st = Mirror(a, b).run()
    doc = json.loads(Path(st.checkpoint).read_text())
    doc["partitions"]["lost"]["0"].append([40, 40])  # claims more than b holds
    Path(st.checkpoint).write_text(json.dumps(doc))
    with pytest.raises(errors.InvalidRequestError, match="lost data or was recreated"):
        Mirror(a, b).run()


def test_header_key_with_nul_is_kept_by_batches_and_refused_record_by_record(
        tmp_path, server, url):
    a, b = tmp_path / "a", tmp_path / "b"
    with kstore.open(a) as s:
        s.create_topic("nul", 1)
        s.create_topic("nul2", 1)
        pr = s.producer(linger_ms=0)
        for t in ("nul", "nul2"):
            pr.send(t, b"ok", None, [("plain", b"1")], T0, 0)
            pr.send(t, b"bad", None, [("a\x00b", b"1")], T0, 0)
        pr.flush()
        want = records_of(s, "nul", 0)
    # confluent-kafka (librdkafka) would cut the key at the NUL: refused, not altered.
    with pytest.raises(errors.InvalidRecordError, match="offset 1: a header key holds a NUL"):
        Mirror(a, url, topics=["nul"], forward_batches=False).run()
    # The stored batches sent as they are keep it, as a data directory does.
    Mirror(a, url, topics=["nul2"]).run()
    Mirror(a, b, topics=["nul"]).run()
    with kstore.open(b, read_only=True) as sb, server_store(server) as ss:
        assert records_of(sb, "nul", 0) == want
        assert records_of(ss, "nul2", 0)[1][3] == (("a\x00b", b"1"),)


def test_configs_a_store_does_not_know_are_reported(tmp_path):
    from kstore.mirror import _StoreSide

    side = _StoreSide(tmp_path / "d", True, None)
    try:
        skipped = side.create_topic("c", 2, {"retention.ms": "5000", "confluent.placement": "x",
                                             "max.message.bytes": "-3"})
        assert sorted(skipped) == ["confluent.placement", "max.message.bytes"]
        assert side.store.describe_topic("c")["config"] == {"retention.ms": 5000}
    finally:
        side.close()


def test_default_checkpoint_lives_in_the_data_directory_side(tmp_path):
    # Data directory on either side; the destination's is preferred when both are.
    assert default_checkpoint(tmp_path / "a", "kafka://h:1").parent == tmp_path / "a" / CHECKPOINT_DIR
    assert default_checkpoint("kafka://h:1", tmp_path / "b").parent == tmp_path / "b" / CHECKPOINT_DIR
    assert default_checkpoint(tmp_path / "a", tmp_path / "b").parent == tmp_path / "b" / CHECKPOINT_DIR
    assert os.path.basename(default_checkpoint("kafka://h:1,g:2", tmp_path)) == "from-h_1_g_2.json"


@pytest.mark.parametrize("limit", [{"queue.buffering.max.messages": "7", "linger.ms": "0"},
                                   {"queue.buffering.max.kbytes": "1", "linger.ms": "0"}])
def test_a_full_producer_queue_waits_for_room_and_loses_nothing(tmp_path, server, url, limit):
    """librdkafka's queue full (by messages or by bytes, -X settings win over the mirror's):
    produce waits for deliveries and goes on, every record once."""
    a = tmp_path / "a"
    topic = "full-" + next(iter(limit)).split(".")[-1]
    fill_many(a, topic, 400, 2)
    st = Mirror(a, url, topics=[topic], client_config=limit).run()
    assert st.records == 400
    assert_exact_copy(a, server, topic, 2)


def test_groups_a_cluster_did_not_list_are_an_error_not_none(url):
    """librdkafka's ListConsumerGroups answers with the groups of the brokers that answered
    and an error for the others; a mirror that read only ``valid`` copied no offsets and said
    nothing. (ClusterStore.groups had the same fault: tests/api/test_connect.py.)"""
    import concurrent.futures

    from confluent_kafka import KafkaError

    from kstore.mirror import _ClusterSide

    side = _ClusterSide(url, None, None, timeout=5)
    try:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_result(type("Listed", (), {"valid": [],
                                           "errors": [KafkaError(KafkaError._TIMED_OUT)]})())
        side.admin = type("Admin", (), {"list_consumer_groups": lambda self, **kw: fut})()
        with pytest.raises(errors.RequestTimedOutError, match="listing the groups"):
            side.committed({"t"})
    finally:
        side.close()


# ==============================================================================================
# Transactional sources: what a read_committed reader sees, and nothing else


def transactional_source(path: Path, topic: str) -> list[bytes]:
    """Committed, aborted and (left) open transactions beside plain records on two partitions;
    returns the values a read_committed reader sees, in partition 0 then 1 order."""
    with kstore.open(path) as s:
        s.create_topic(topic, 2)
        plain = s.producer(linger_ms=0)
        tx = s.producer(transactional_id="mirror-src")
        seen: dict[int, list[bytes]] = {0: [], 1: []}
        for t in range(6):
            tx.begin_transaction()
            for p in (0, 1):
                for i in range(3):
                    tx.send(topic, b"t%d-p%d-%d" % (t, p, i), partition=p)
            for p in (0, 1):
                plain.send(topic, b"plain%d-p%d" % (t, p), partition=p)
            plain.flush()
            for p in (0, 1):
                seen[p].append(b"plain%d-p%d" % (t, p))
            if t % 3 == 1:
                tx.abort_transaction()
            else:
                tx.commit_transaction()
                for p in (0, 1):
                    seen[p] += [b"t%d-p%d-%d" % (t, p, i) for i in range(3)]
        # Left open: past the last stable offset, not copied (a later run copies it once it
        # commits).
        tx.begin_transaction()
        tx.send(topic, b"open", partition=0)
        tx.flush()
        with s.consumer(isolation_level="read_committed", auto_offset_reset="earliest") as c:
            c.assign([(topic, 0), (topic, 1)])
            got: dict[int, list[bytes]] = {0: [], 1: []}
            while recs := c.poll(timeout=0):
                for r in recs:
                    got[r.partition].append(r.value)
        assert {p: sorted(v) for p, v in got.items()} == {p: sorted(v) for p, v in seen.items()}
        tx._txn = None  # noqa: SLF001 - closing leaves the transaction open on disk
    with kstore.open(path, read_only=True) as s:
        lg = s.partition(topic, 0)
        assert lg.last_stable_offset() < lg.log_end_offset  # still open
    return got[0] + got[1]


@pytest.mark.parametrize("to_server", [False, True], ids=["to_store", "to_serve"])
def test_aborted_and_open_transactions_are_not_copied_from_a_data_directory(
        tmp_path, to_server, request):
    topic = f"txsrc-{int(to_server)}"
    want = transactional_source(tmp_path / "src", topic)
    if to_server:
        server = request.getfixturevalue("server")
        dst: Any = f"kafka://{server.bootstrap}"
    else:
        dst = tmp_path / "dst"
    st = Mirror(tmp_path / "src", dst, topics=[topic], groups=False).run()
    assert st.records == len(want)
    with (server_store(server) if to_server else kstore.open(dst, read_only=True)) as sb:
        got = [r[2] for p in (0, 1) for r in records_of(sb, topic, p)]
    assert got == want
