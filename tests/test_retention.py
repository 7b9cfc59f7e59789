"""Delete-based retention, delete_records and background maintenance, on a controllable clock."""

import threading

import pytest

import kstore
from kstore import errors
from kstore.records import BatchBuilder

DAY = 86_400_000


class Clock:
    def __init__(self, now=1_700_000_000_000):
        self.now = now

    def __call__(self):
        return self.now


def batch(n, start, ts, size=60):
    b = BatchBuilder()
    for i in range(n):
        b.append(b"%d" % (start + i) + b"v" * size, key=b"k%d" % (start + i), timestamp=ts)
    return b.build()


def fill(lg, batches, per=5, ts=lambda i: 0):
    for i in range(batches):
        lg.append_batch(batch(per, i * per, ts(i)))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = kstore.open(tmp_path / "data", clock=clock, retention_check_interval_ms=0)
    yield s
    s.close()


CFG = {"segment.bytes": 2000, "file.delete.delay.ms": 0}


def test_time_retention_deletes_oldest_segments_and_stops_at_the_first_to_keep(store, clock):
    store.create_topic("t", config={**CFG, "retention.ms": DAY})
    lg = store.partition("t", 0)
    now = clock.now
    # first 40 batches two days old, then 20 fresh ones
    fill(lg, 60, ts=lambda i: now - 2 * DAY if i < 40 else now)
    segs = lg.segments()
    old = [s for s in segs if s.max_timestamp < now - DAY]
    assert len(old) >= 3
    report = store.run_maintenance()
    assert report["t-0"].reason == "time"
    assert report["t-0"].deleted_segments == len(old)
    assert lg.log_start_offset == lg.segments()[0].base_offset
    assert all(s.max_timestamp == now for s in lg.segments() if s.size)
    with pytest.raises(errors.OffsetOutOfRangeError):
        lg.read(0)
    assert lg.read_records(lg.log_start_offset)[0].offset == lg.log_start_offset
    assert store.run_maintenance() == {}  # nothing more expires


def test_a_future_timestamp_blocks_every_later_segment(store, clock):
    store.create_topic("t", config={**CFG, "retention.ms": DAY})
    lg = store.partition("t", 0)
    now = clock.now
    fill(lg, 40, ts=lambda i: now + DAY if 8 <= i < 12 else now - 3 * DAY)
    before = [s.base_offset for s in lg.segments()]
    store.run_maintenance()
    first_kept = lg.segments()[0]
    assert first_kept.max_timestamp == now + DAY  # everything after it is kept too
    assert [s.base_offset for s in lg.segments()] == [b for b in before if b >= first_kept.base_offset]


def test_everything_expired_rolls_and_keeps_an_empty_active_segment(store, clock):
    store.create_topic("t", config={**CFG, "retention.ms": DAY})
    lg = store.partition("t", 0)
    fill(lg, 30, ts=lambda i: clock.now)
    clock.now += 2 * DAY
    store.run_maintenance()
    segs = lg.segments()
    assert len(segs) == 1 and segs[0].size == 0
    assert lg.log_start_offset == lg.log_end_offset == 150
    assert lg.append_batch(batch(1, 150, clock.now)) == (150, 150, -1)


def test_size_retention_keeps_at_least_the_limit(store):
    store.create_topic("t", config={**CFG, "retention.bytes": 5000, "retention.ms": -1})
    lg = store.partition("t", 0)
    fill(lg, 60)
    total = lg.size_bytes
    store.run_maintenance()
    assert lg.size_bytes >= 5000
    assert lg.size_bytes < 5000 + 2000 + lg.segments()[-1].size  # no whole removable segment left
    assert lg.size_bytes < total


def test_compact_only_topics_get_no_time_or_size_retention(store, clock):
    store.create_topic("t", config={**CFG, "retention.ms": 1, "cleanup.policy": "compact"})
    lg = store.partition("t", 0)
    fill(lg, 30, ts=lambda i: clock.now - DAY)
    assert store.run_maintenance() == {}


def test_delete_records(store):
    store.create_topic("t", partitions=2, config=CFG)
    lg = store.partition("t", 0)
    fill(lg, 40)
    out = store.delete_records({("t", 0): 77})
    assert out == {("t", 0): 77}
    assert lg.log_start_offset == 77
    assert lg.segments()[0].base_offset <= 77 < (lg.segments()[1].base_offset if len(lg.segments()) > 1 else 10**9)
    with pytest.raises(errors.OffsetOutOfRangeError, match=r"\[77, 200\)"):
        lg.read(76)
    assert lg.read_records(77)[0].offset == 77
    c = store.consumer(topics=["t"], auto_offset_reset="earliest")
    first = c.poll(timeout=1, max_records=1)
    assert first[0].offset == 77  # records below the start are skipped even inside its batch
    c.close()
    with pytest.raises(errors.OffsetOutOfRangeError):
        store.delete_records({("t", 0): 10_000})
    assert store.delete_records({("t", 1): -1}) == {("t", 1): 0}
    assert store.delete_records({("t", 0): 50}) == {("t", 0): 77}  # never lowered


def test_bad_retention_values_name_the_key(store):
    for key, bad in (("retention.ms", -2), ("retention.ms", "soon"), ("retention.bytes", "1e9"),
                     ("retention.bytes", -7)):
        with pytest.raises(errors.InvalidConfigError, match=key):
            store.create_topic("x", config={key: bad})
    with pytest.raises(errors.InvalidConfigError, match="log.retention.check.interval.ms"):
        kstore.open(store.path / "other", retention_check_interval_ms=-1)


def test_background_maintenance_runs_and_stops(tmp_path, clock):
    ran = threading.Event()
    s = kstore.open(tmp_path / "bg", clock=clock, retention_check_interval_ms=20)
    s.create_topic("t", config={**CFG, "retention.ms": DAY})
    lg = s.partition("t", 0)
    fill(lg, 30, ts=lambda i: clock.now - 2 * DAY)
    assert lg.wait_for(0)
    for _ in range(500):
        if lg.log_start_offset > 0:
            ran.set()
            break
        threading.Event().wait(0.01)
    assert ran.is_set(), "the maintenance thread did not apply retention"
    t = s._maintenance_thread
    s.close()
    assert not t.is_alive()


def test_a_segment_deleted_by_hand_under_a_running_store(store):
    store.create_topic("t", config={**CFG, "retention.ms": -1})
    lg = store.partition("t", 0)
    fill(lg, 40)
    segs = lg.segments()
    victim = segs[1]
    victim.path.unlink()  # someone removes a closed segment that was never read
    store.run_maintenance()  # must not crash
    tail = [s for s in lg.segments() if s.size][-1].base_offset
    assert lg.read_records(tail)[0].offset == tail  # the rest still reads
    with pytest.raises(errors.KafkaStorageError, match="missing"):
        lg.read(victim.base_offset)
    assert any(victim.path.name in p and "missing" in p for p in lg.verify())


def test_committed_offsets_expire_for_groups_without_members(tmp_path, clock):
    s = kstore.open(tmp_path / "d", clock=clock, retention_check_interval_ms=0,
                    offsets_retention_minutes=60)
    s.create_topic("t", partitions=2)
    p = s.producer(linger_ms=0)
    for i in range(4):
        p.send("t", b"v", partition=i % 2)
    c = s.consumer(group="live", topics=["t"], auto_offset_reset="earliest")
    c.poll(timeout=1)
    c.commit()
    s.commit_offsets("gone", {("t", 0): (1, "", 0)})
    clock.now += 59 * 60_000
    assert s.run_maintenance().get("expired_offsets") is None  # not yet
    clock.now += 2 * 60_000
    report = s.run_maintenance()
    assert report["expired_offsets"] == {"gone": [("t", 0)]}  # "live" has a member
    assert "gone" not in s.groups() and s.committed("gone", "t", 0) is None
    c.close()
    s.close()
    with kstore.open(tmp_path / "d", clock=clock, retention_check_interval_ms=0) as s2:
        assert s2.committed("gone", "t", 0) is None  # the tombstone is on disk
        assert s2.committed("live", "t", 0) == 2


def test_run_maintenance_compacts_compacted_topics(store, clock):
    store.create_topic("c", config={"cleanup.policy": "compact", "segment.bytes": 2000,
                                    "min.cleanable.dirty.ratio": 0.1})
    with store.producer(linger_ms=0) as p:
        for i in range(400):
            p.send("c", b"value-%d" % i, key=b"key-%d" % (i % 10))
    lg = store.partition("c", 0)
    lg.roll()
    before = lg.size_bytes
    report = store.run_maintenance()
    assert "c-0 compaction" in report
    assert lg.size_bytes < before / 3
    latest = {}
    off = lg.log_start_offset
    while off < lg.log_end_offset:
        fs = lg.read(off, 1 << 20)
        for r in fs.records():
            latest[r.key] = r.value
        off = fs.next_offset
    assert latest == {b"key-%d" % k: b"value-%d" % (390 + k) for k in range(10)}


def _delete_topic_mid_pass(monkeypatch, store, victim):
    """Make the next maintenance pass reach ``victim``'s log and then see it deleted by another
    thread (as the server's DeleteTopics does) before retention touches it: the real
    enforce_retention then meets a closed log (ClosedError)."""
    import kstore.retention

    real = kstore.retention.enforce_retention
    deleted = threading.Event()

    def racing(lg, now):
        if lg.topic == victim and not deleted.is_set():
            t = threading.Thread(target=store.delete_topic, args=(victim,))
            t.start()
            t.join()
            assert lg.closed
            deleted.set()
        return real(lg, now)

    monkeypatch.setattr(kstore.retention, "enforce_retention", racing)
    return deleted


def test_a_topic_deleted_mid_pass_is_skipped_and_the_other_partitions_are_maintained(
        store, clock, monkeypatch, caplog):
    for name in ("a", "doomed", "z", "broken"):
        store.create_topic(name, config={**CFG, "retention.ms": DAY})
        fill(store.partition(name, 0), 30, ts=lambda i: clock.now - 2 * DAY)
    deleted = _delete_topic_mid_pass(monkeypatch, store, "doomed")
    import kstore.retention

    racing = kstore.retention.enforce_retention

    def failing(lg, now):  # any other failure of one partition: logged, the pass goes on
        if lg.topic == "broken":
            raise RuntimeError("disk on fire")
        return racing(lg, now)

    monkeypatch.setattr(kstore.retention, "enforce_retention", failing)
    report = store.run_maintenance()
    assert deleted.is_set()
    assert sorted(report) == ["a-0", "z-0"]
    assert "doomed" not in store.topics()
    assert store.partition("a", 0).log_start_offset > 0
    assert store.partition("z", 0).log_start_offset > 0
    assert any("broken-0" in r.getMessage() for r in caplog.records)


def test_background_maintenance_survives_a_topic_deleted_mid_pass(tmp_path, clock, monkeypatch):
    """The maintenance thread used to take the ClosedError of the deleted topic's log for the
    store's own close and return: retention, compaction and offset expiry then stopped for
    good. It must keep running and apply retention on its next passes."""
    s = kstore.open(tmp_path / "bg", clock=clock, retention_check_interval_ms=0)
    try:
        s.create_topic("doomed", config={**CFG, "retention.ms": DAY})
        s.create_topic("t", config={**CFG, "retention.ms": DAY})
        fill(s.partition("doomed", 0), 30, ts=lambda i: clock.now - 2 * DAY)
        deleted = _delete_topic_mid_pass(monkeypatch, s, "doomed")
        # Start the thread by hand on this store (interval 20 ms), as __init__ would.
        s.retention_check_interval_ms = 20
        s._maintenance_thread = threading.Thread(target=s._maintenance_loop, daemon=True)
        s._maintenance_thread.start()
        assert deleted.wait(10), "the maintenance pass never reached the doomed topic"
        lg = s.partition("t", 0)
        fill(lg, 30, ts=lambda i: clock.now - 2 * DAY)  # data that expires after the race
        for _ in range(500):
            if lg.log_start_offset > 0:
                break
            threading.Event().wait(0.01)
        assert s._maintenance_thread.is_alive(), "the maintenance thread died"
        assert lg.log_start_offset > 0, "retention stopped after the topic was deleted"
    finally:
        t = s._maintenance_thread
        s.close()
    assert t is not None and not t.is_alive()
