"""The log cleaner (kstore.cleaner): compaction against a dict model over random workloads,
tombstones and their delete horizon, the lag and ratio settings, merging within segment.bytes,
the cleaner checkpoint, SIGKILL during cleaning, kafka-python reading the rewritten batches, and
readers crossing the gaps compaction leaves."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kstore import cleaner, errors
from kstore.cleaner import CleanResult, clean_log, dirty_ratio, first_dirty_offset
from kstore.log import PartitionLog
from kstore.log.checkpoint import CLEANER_OFFSET, read_checkpoint
from kstore.records import BatchBuilder, crc32c, iter_batches

DAY = 86_400_000
T0 = 1_700_000_000_000
COMPACT = {"cleanup.policy": "compact", "file.delete.delay.ms": 0}


# ---------------------------------------------------------------------------------------------
# Helpers


def build(records, codec="none", **kw):
    """records: (key, value, timestamp[, headers]) tuples -> one sealed batch."""
    b = BatchBuilder(compression=codec, **kw)
    for r in records:
        k, v, ts = r[:3]
        b.append(v, key=k, timestamp=ts, headers=r[3] if len(r) > 3 else None)
    return b.build()


def append_keyless(lg, raw, config):
    """Append a batch holding null keys, which a compacted topic refuses: as data written
    before the topic's policy became compact (Kafka allows that change)."""
    lg.update_config({**config, "cleanup.policy": "delete"})
    try:
        return lg.append_batch(raw)
    finally:
        lg.update_config(config)


def read_all(lg):
    """(records, batches) of the whole log, reading slice after slice as a consumer does."""
    recs, batches = [], []
    off, end = lg.log_start_offset, lg.log_end_offset
    while off < end:
        fs = lg.read(off, 1 << 20)
        assert len(fs), f"empty read at {off} below the log end {end}"
        for b in fs.batches():
            batches.append(b)
            recs += [r for r in b.records() if r.offset >= off]
        off = fs.next_offset
    return recs, batches


def latest_by_key(recs):
    out = {}
    for r in recs:
        if r.key is not None:
            out[r.key] = r
    return out


def open_log(tmp_path, name="t-0", **config):
    return PartitionLog.open(tmp_path / name, {**COMPACT, **config})


def fill(lg, n_batches, keys=10, per_batch=10, ts0=T0, tombstone_every=0, seed=0, codec="none"):
    """Append ``n_batches`` batches of random keys; returns {key: (offset, value)}."""
    rng = random.Random(seed)
    model = {}
    ts = ts0
    for _ in range(n_batches):
        recs = []
        for _ in range(per_batch):
            k = b"key-%d" % rng.randrange(keys)
            tomb = tombstone_every and rng.randrange(tombstone_every) == 0
            recs.append((k, None if tomb else b"value-%d" % rng.randrange(10**9), ts))
            ts += 1
        base, _, _ = lg.append_batch(build(recs, codec))
        for i, (k, v, _) in enumerate(recs):
            model[k] = (base + i, v)
    return model


def check_latest(lg, model, tombstones_may_go=False):
    recs, _ = read_all(lg)
    got = latest_by_key(recs)
    for k, (off, v) in model.items():
        if v is None and tombstones_may_go and k not in got:
            continue
        assert k in got, f"{k!r} lost"
        assert (got[k].offset, got[k].value) == (off, v), k
    assert set(got) <= set(model)


# ---------------------------------------------------------------------------------------------
# Correctness against a dict, over random workloads


record_st = st.tuples(
    st.one_of(st.none(), st.integers(0, 7)),  # key index (None: null key, 1 in 9)
    st.one_of(st.none(), st.binary(max_size=24)),  # value (None: tombstone)
    st.integers(-5000, 5000),  # timestamp jitter: deltas can go negative
    st.booleans(),  # headers
)
op_st = st.one_of(
    st.tuples(st.just("append"), st.lists(record_st, min_size=1, max_size=8)),
    st.tuples(st.just("roll")),
    st.tuples(st.just("clean")),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=30),
       codec=st.sampled_from(["none", "none", "lz4", "gzip", "zstd", "snappy"]),
       segment_bytes=st.sampled_from([600, 1500, 6000]),
       log_append_time=st.booleans(),
       idempotent=st.booleans())
def test_compaction_matches_a_dict_of_latest_values(tmp_path_factory, ops, codec, segment_bytes,
                                                    log_append_time, idempotent):
    d = tmp_path_factory.mktemp("hyp") / "t-0"
    config = {**COMPACT, "segment.bytes": segment_bytes}
    if log_append_time:
        config["message.timestamp.type"] = "LogAppendTime"
    clock = [T0]
    lg = PartitionLog.open(d, config, clock=lambda: clock[0])
    original = {}  # offset -> (key, value, timestamp, headers) as first read back
    batch_ranges = set()
    model = {}  # key -> (offset, value)
    seq = 0
    now = T0 + 1000
    try:
        for op in ops + [("roll",), ("clean",)]:
            if op[0] == "append":
                recs = []
                for ki, value, jitter, headers in op[1]:
                    key = None if ki is None else b"k%d" % ki
                    hdrs = [("h", b"x" * (ki or 1)), ("n", None)] if headers else None
                    recs.append((key, value, T0 + jitter, hdrs))
                kw = ({"producer_id": 42, "producer_epoch": 3, "base_sequence": seq}
                      if idempotent else {})
                seq += len(recs)
                clock[0] += 1
                raw = build(recs, codec, **kw)
                if any(r[0] is None for r in recs):
                    base, last, _ = append_keyless(lg, raw, config)
                else:
                    base, last, _ = lg.append_batch(raw)
                batch_ranges.add((base, last))
                for r in lg.read_records(base):
                    if r.offset <= last:
                        original[r.offset] = (r.key, r.value, r.timestamp, r.headers)
                        if r.key is not None:
                            model[r.key] = (r.offset, r.value)
            elif op[0] == "roll":
                lg.roll()
            else:
                leo = lg.log_end_offset
                res = clean_log(lg, now, force=True)
                assert lg.log_end_offset == leo
                assert lg.verify() == []
                recs, batches = read_all(lg)
                offsets = [r.offset for r in recs]
                assert offsets == sorted(set(offsets))
                for r in recs:  # every survivor is an original record, timestamp included
                    assert (r.key, r.value, r.timestamp, r.headers) == original[r.offset]
                for b in batches:
                    assert (b.base_offset, b.last_offset) in batch_ranges
                    if idempotent:
                        assert (b.producer_id, b.producer_epoch) == (42, 3)
                    assert b.compression in (codec, "none")
                got = latest_by_key(recs)
                assert {k: (r.offset, r.value) for k, r in got.items()} == model
                # Null keys are never compacted.
                nulls = sorted(o for o, v in original.items() if v[0] is None)
                assert [r.offset for r in recs if r.key is None] == nulls
                if res is not None:
                    # Below the end of the cleaned range, one record per key.
                    end = read_checkpoint(d.parent / CLEANER_OFFSET)[("t", 0)]
                    keys = [r.key for r in recs if r.offset < end and r.key is not None]
                    assert len(keys) == len(set(keys))
                    for b in batches:
                        if b.last_offset < end and any(r.value is None and r.key is not None
                                                       for r in b.records()):
                            assert b.has_delete_horizon and b.base_timestamp == now + DAY
        # Past the horizon, tombstones in cleaned segments go; values stay.
        lg.roll()
        clean_log(lg, now, force=True)
        clean_log(lg, now + DAY, force=True)
        recs, _ = read_all(lg)
        got = latest_by_key(recs)
        for k, (off, v) in model.items():
            if v is None:
                assert k not in got or got[k].offset == off
            else:
                assert (got[k].offset, got[k].value) == (off, v)
        assert not any(r.value is None and r.key is not None for r in recs)
        assert lg.verify() == []
    finally:
        lg.close()
    with PartitionLog.open(d, config) as again:  # and it all reads back after a reopen
        assert again.verify() == []
        assert latest_by_key(read_all(again)[0]) == got


def test_offsets_are_kept_and_batches_get_gaps(tmp_path):
    lg = open_log(tmp_path)
    lg.append_batch(build([(b"a", b"1", T0), (b"b", b"1", T0 + 1), (b"a", b"2", T0 + 2)]))
    lg.append_batch(build([(b"c", b"1", T0 + 3), (b"b", b"2", T0 + 4)]))
    lg.append_batch(build([(b"a", b"3", T0 + 5)]))
    lg.roll()
    res = clean_log(lg, T0, force=True)
    assert isinstance(res, CleanResult) and res.records_removed == 3 and res.cleaned_segments == 1
    recs, batches = read_all(lg)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in recs] == [
        (3, b"c", b"1", T0 + 3), (4, b"b", b"2", T0 + 4), (5, b"a", b"3", T0 + 5)]
    # The first batch lost every record and went; the others keep base and last offsets.
    assert [(b.base_offset, b.last_offset, b.record_count) for b in batches] == [(3, 4, 2), (5, 5, 1)]
    assert batches[0].base_timestamp == T0 + 3  # the first kept record's timestamp
    assert lg.log_end_offset == 6 and lg.verify() == []
    with pytest.raises(errors.OffsetOutOfRangeError):
        lg.read(-1)
    # Reads inside the gap start at the next batch; a read at each offset finds the next record.
    for off in range(6):
        got = lg.read_records(off)
        assert got and got[0].offset == max(off, 3)
    lg.close()


def test_whole_batches_are_copied_byte_for_byte_when_nothing_changes(tmp_path):
    lg = open_log(tmp_path)
    keep = build([(b"x", b"1", T0), (b"y", b"1", T0 + 1)])
    lg.append_batch(build([(b"z", b"old", T0)]))
    lg.append_batch(keep)
    lg.append_batch(build([(b"z", b"new", T0 + 2)]))
    lg.roll()
    clean_log(lg, T0, force=True)
    data = lg.segments()[0].path.read_bytes()
    (b1, b2) = list(iter_batches(data))
    assert bytes(b1.raw())[16:] == keep[16:]  # offset and leader epoch are stamped on append
    assert b1.base_offset == 1 and b2.base_offset == 3
    # A second cleaning finds nothing to change and leaves the files alone.
    inode = os.stat(lg.segments()[0].path).st_ino
    res = clean_log(lg, T0, force=True)
    assert res is not None and res.cleaned_segments == 0
    assert os.stat(lg.segments()[0].path).st_ino == inode
    lg.close()


def test_null_keys_and_headers_survive(tmp_path):
    lg = open_log(tmp_path)
    recs = [(None, b"no key", T0, [("a", b"1")]), (b"k", b"v1", T0 + 1, [("h", b"x" * 300)]),
            (b"k", b"v2", T0 + 2, [("h", None), ("i", b"")]), (None, None, T0 + 3)]
    append_keyless(lg, build(recs), COMPACT)
    lg.roll()
    clean_log(lg, T0, force=True)
    got = [(r.offset, r.key, r.value, r.headers) for r in read_all(lg)[0]]
    assert got == [(0, None, b"no key", (("a", b"1"),)), (2, b"k", b"v2", (("h", None), ("i", b""))),
                   (3, None, None, ())]
    lg.close()


def test_large_keys_and_values_and_many_records(tmp_path):
    lg = open_log(tmp_path)
    rng = random.Random(5)
    model = {}
    for i in range(40):
        recs = []
        for j in range(50):
            k = bytes([rng.randrange(4)]) * rng.choice([1, 8, 9, 100, 1000])
            recs.append((k, os.urandom(rng.randrange(0, 3000)), T0 + i))
        base, _, _ = lg.append_batch(build(recs, "lz4" if i % 3 == 0 else "none"))
        for j, (k, v, _) in enumerate(recs):
            model[k] = (base + j, v)
    lg.roll()
    clean_log(lg, T0, force=True)
    check_latest(lg, model)
    assert lg.verify() == []
    lg.close()


def test_many_records_with_headers(tmp_path):
    lg = open_log(tmp_path)
    rng = random.Random(11)
    model = {}
    for i in range(6):
        recs = []
        for j in range(400):
            hdrs = [(f"h{x}", None if x == 2 else os.urandom(rng.randrange(200)))
                    for x in range(rng.randrange(4))]
            recs.append((b"key-%d" % rng.randrange(300), os.urandom(rng.randrange(100)),
                         T0 + rng.randrange(-10**6, 10**6), hdrs))
        base, _, _ = lg.append_batch(build(recs, "zstd" if i == 3 else "none"))
        for j, r in enumerate(recs):
            model[r[0]] = (base + j, r[1], r[2], tuple(r[3]))
    lg.roll()
    clean_log(lg, T0, force=True)
    got = latest_by_key(read_all(lg)[0])
    assert {k: (r.offset, r.value, r.timestamp, r.headers) for k, r in got.items()} == model
    assert lg.verify() == []
    lg.close()


def test_key_hashes_are_exact_for_short_keys_and_stable_across_buffers():
    rng = random.Random(0)
    for _ in range(200):
        keys = [os.urandom(rng.choice([0, 1, 3, 7, 8, 9, 15, 16, 17, 33, 64, 65, 200]))
                for _ in range(rng.randint(1, 30))]
        buf, pos = b"", []
        for k in keys:
            buf += os.urandom(rng.randint(0, 3))
            pos.append(len(buf))
            buf += k  # the last key ends the buffer: reads past it must not happen
        data = np.frombuffer(buf, np.uint8) if buf else np.zeros(0, np.uint8)
        h1, h2 = cleaner._hash_keys(data, np.array(pos, np.int64),
                                    np.array([len(k) for k in keys], np.int32))
        seen = {}
        for i, k in enumerate(keys):
            alone = cleaner._hash_keys(np.frombuffer(k + bytes(20), np.uint8), np.array([0]),
                                       np.array([len(k)], np.int32))
            assert (alone[0][0], alone[1][0]) == (h1[i], h2[i])
            assert seen.setdefault((int(h1[i]), int(h2[i])), k) == k
    # Same-length keys of up to 8 bytes never share even the first hash.
    keys = np.arange(1 << 16, dtype="<u8").view(np.uint8)
    h1, _ = cleaner._hash_keys(keys, np.arange(0, len(keys), 8), np.full(1 << 16, 8, np.int32))
    assert len(np.unique(h1)) == 1 << 16


def test_first_hash_collisions_cost_space_not_values(tmp_path, monkeypatch):
    real = cleaner._hash_keys

    def weak(data, pos, length):  # 16 possible first hashes: collisions everywhere
        h1, h2 = real(data, pos, length)
        return h1 & np.uint64(15), h2

    monkeypatch.setattr(cleaner, "_hash_keys", weak)
    lg = open_log(tmp_path, **{"segment.bytes": 2000})
    model = fill(lg, 30, keys=100, per_batch=10, tombstone_every=7)
    lg.roll()
    clean_log(lg, T0, force=True)
    model.update(fill(lg, 10, keys=100, per_batch=10, seed=4))
    lg.roll()
    clean_log(lg, T0, force=True)
    check_latest(lg, model)
    assert lg.verify() == []
    lg.close()


# ---------------------------------------------------------------------------------------------
# Tombstones and the delete horizon


def test_tombstone_gets_a_horizon_then_goes_after_it(tmp_path):
    lg = open_log(tmp_path, **{"delete.retention.ms": 1000})
    lg.append_batch(build([(b"a", b"1", T0), (b"b", b"1", T0 + 1)]))
    lg.append_batch(build([(b"a", None, T0 + 5), (b"c", b"1", T0 + 6)]))
    lg.roll()
    now = T0 + 10_000
    res = clean_log(lg, now, force=True)
    assert res.records_removed == 1  # a=1, superseded by the tombstone
    recs, batches = read_all(lg)
    assert [(r.offset, r.key, r.value) for r in recs] == [(1, b"b", b"1"), (2, b"a", None),
                                                          (3, b"c", b"1")]
    tomb_batch = batches[-1]
    assert tomb_batch.has_delete_horizon and tomb_batch.attributes & 0x40
    assert tomb_batch.base_timestamp == now + 1000  # the horizon, in baseTimestamp
    assert [r.timestamp for r in tomb_batch.records()] == [T0 + 5, T0 + 6]  # unchanged
    assert not batches[0].has_delete_horizon
    # Before the horizon: kept (and not given a new horizon).
    clean_log(lg, now + 999, force=True)
    recs, batches = read_all(lg)
    assert (2, None) in [(r.offset, r.value) for r in recs]
    assert batches[-1].base_timestamp == now + 1000
    # At the horizon: gone; its batch keeps the horizon and its other record.
    res = clean_log(lg, now + 1000, force=True)
    assert res.records_removed == 1
    recs, batches = read_all(lg)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in recs] == [
        (1, b"b", b"1", T0 + 1), (3, b"c", b"1", T0 + 6)]
    assert batches[-1].has_delete_horizon and (batches[-1].base_offset, batches[-1].last_offset) == (2, 3)
    assert lg.verify() == []
    lg.close()


def test_tombstone_only_batch_that_empties_stays_as_an_empty_last_batch(tmp_path):
    lg = open_log(tmp_path, **{"delete.retention.ms": 0})
    lg.append_batch(build([(b"a", b"1", T0)]))
    lg.append_batch(build([(b"a", None, T0 + 1), (b"a", None, T0 + 2)]))
    lg.roll()
    lg.append_batch(build([(b"z", b"1", T0 + 3)]))
    clean_log(lg, T0, force=True)  # sets the horizon (now + 0)
    clean_log(lg, T0, force=True)  # now >= horizon: the tombstone goes
    recs, batches = read_all(lg)
    assert [(r.offset, r.key) for r in recs] == [(3, b"z")]
    # The segment's last batch stays, empty, so the segment still ends at offset 2.
    assert [(b.base_offset, b.last_offset, b.record_count, b.base_timestamp) for b in batches] == [
        (1, 2, 0, -1), (3, 3, 1, T0 + 3)]
    assert lg.verify() == []
    lg.close()


def test_tombstone_in_active_segment_is_never_touched(tmp_path):
    lg = open_log(tmp_path, **{"delete.retention.ms": 0})
    lg.append_batch(build([(b"a", b"1", T0)]))
    lg.roll()
    lg.append_batch(build([(b"a", None, T0 + 1)]))
    clean_log(lg, T0 + 5, force=True)
    clean_log(lg, T0 + 10, force=True)
    recs, _ = read_all(lg)
    assert [(r.offset, r.value) for r in recs] == [(0, b"1"), (1, None)]
    lg.close()


# ---------------------------------------------------------------------------------------------
# When to clean and what: lag, ratio, checkpoint, merging


def test_min_compaction_lag_leaves_recent_segments_alone(tmp_path):
    lg = open_log(tmp_path, **{"min.compaction.lag.ms": 60_000, "segment.bytes": 700})
    old = fill(lg, 6, keys=3, ts0=T0)
    lg.roll()
    split = lg.log_end_offset
    fill(lg, 6, keys=3, ts0=T0 + 100_000, seed=1)
    lg.roll()
    now = T0 + 120_000  # the first half is older than the lag, the second is not
    recent_before = [(s.base_offset, s.path.read_bytes()) for s in lg.closed_segments()
                     if s.base_offset >= split]
    res = clean_log(lg, now, force=True)
    assert res is not None and res.cleaned_segments > 0
    assert [(s.base_offset, s.path.read_bytes()) for s in lg.closed_segments()
            if s.base_offset >= split] == recent_before
    ck = read_checkpoint(tmp_path / CLEANER_OFFSET)[("t", 0)]
    assert ck == split
    # Older records of keys written again later survive: the newer ones are not in the map.
    recs, _ = read_all(lg)
    below = [r for r in recs if r.offset < split]
    assert {(r.key, r.offset, r.value) for r in below} == {(k, o, v) for k, (o, v) in old.items()}
    # Once old enough, they go.
    clean_log(lg, T0 + 200_000, force=True)
    keys = [r.key for r in read_all(lg)[0]]
    assert len(keys) == len(set(keys))
    lg.close()


def test_dirty_ratio_threshold_and_force(tmp_path):
    lg = open_log(tmp_path, **{"min.cleanable.dirty.ratio": 0.5, "segment.bytes": 700})
    assert clean_log(lg, T0) is None  # empty log
    model = fill(lg, 10, keys=5)
    lg.roll()
    assert dirty_ratio(lg, first_dirty_offset(lg)) == 1.0
    assert clean_log(lg, T0) is not None
    assert dirty_ratio(lg, first_dirty_offset(lg)) == 0.0
    # A little dirt on a big clean log: below the ratio, nothing happens without force.
    lg.update_config({**COMPACT, "min.cleanable.dirty.ratio": 0.9, "segment.bytes": 700})
    model.update(fill(lg, 1, keys=5, seed=7, ts0=T0 + 1000))
    lg.roll()
    ratio = dirty_ratio(lg, first_dirty_offset(lg))
    assert 0 < ratio <= 0.9
    before = [s.path.read_bytes() for s in lg.segments()]
    assert clean_log(lg, T0) is None
    assert [s.path.read_bytes() for s in lg.segments()] == before
    res = clean_log(lg, T0, force=True)
    assert res is not None and res.records_removed > 0
    check_latest(lg, model)
    lg.close()


def test_max_compaction_lag_forces_a_cleaning_below_the_ratio(tmp_path):
    lg = open_log(tmp_path, **{"min.cleanable.dirty.ratio": 0.99, "max.compaction.lag.ms": 1000})
    fill(lg, 5, keys=3, ts0=T0)
    lg.roll()
    clean_log(lg, T0, force=True)
    fill(lg, 1, keys=3, ts0=T0 + 10, seed=3)
    lg.roll()
    assert dirty_ratio(lg, first_dirty_offset(lg)) < 0.99
    assert clean_log(lg, T0 + 500) is None  # not overdue yet
    assert clean_log(lg, T0 + 5000) is not None
    lg.close()


def test_policy_delete_is_never_compacted(tmp_path):
    lg = PartitionLog.open(tmp_path / "t-0")
    fill(lg, 3, keys=1)
    lg.roll()
    assert clean_log(lg, T0, force=True) is None
    lg.close()


def test_small_cleaned_segments_merge_within_segment_bytes(tmp_path):
    lg = open_log(tmp_path, **{"segment.bytes": 1500})
    model = fill(lg, 40, keys=4, per_batch=5)
    lg.roll()
    n_before = len(lg.closed_segments())
    assert n_before > 5
    res = clean_log(lg, T0, force=True)
    assert res.cleaned_segments == n_before
    after = lg.closed_segments()
    assert len(after) < n_before
    assert all(s.size <= 1500 for s in after)
    check_latest(lg, model)
    # More dirt, with larger values: groups stay within segment.bytes.
    model.update(fill(lg, 40, keys=40, per_batch=5, seed=9, ts0=T0 + 10**6))
    lg.roll()
    clean_log(lg, T0, force=True)
    assert all(s.size <= 1500 for s in lg.closed_segments())
    check_latest(lg, model)
    bases = [s.base_offset for s in lg.segments()]
    assert bases == sorted(bases) and bases[0] == 0
    assert not list((tmp_path / "t-0").glob("*.cleaned")) and not list((tmp_path / "t-0").glob("*.swap"))
    assert lg.verify() == []
    lg.close()


def test_cleaner_checkpoint_is_written_and_used(tmp_path):
    lg = open_log(tmp_path, **{"segment.bytes": 700})
    model = fill(lg, 10, keys=4)
    lg.roll()
    active = lg.segments()[-1].base_offset
    res = clean_log(lg, T0, force=True)
    assert res.first_dirty_offset == 0
    assert read_checkpoint(tmp_path / CLEANER_OFFSET) == {("t", 0): active}
    assert first_dirty_offset(lg) == active
    model.update(fill(lg, 10, keys=4, seed=2))
    lg.roll()
    res = clean_log(lg, T0, force=True)
    assert res.first_dirty_offset == active
    assert read_checkpoint(tmp_path / CLEANER_OFFSET) == {("t", 0): lg.segments()[-1].base_offset}
    check_latest(lg, model)
    # Another partition's entry is kept; a checkpoint beyond the log end counts as missing.
    lg2 = open_log(tmp_path, "u-3")
    fill(lg2, 2, keys=2)
    lg2.roll()
    clean_log(lg2, T0, force=True)
    ck = read_checkpoint(tmp_path / CLEANER_OFFSET)
    assert set(ck) == {("t", 0), ("u", 3)}
    cleaner.CheckpointFile.for_path(tmp_path / CLEANER_OFFSET).update({("u", 3): 10**9})
    assert first_dirty_offset(lg2) == lg2.log_start_offset
    lg.close()
    lg2.close()


@pytest.mark.parametrize("where", ["segment boundary", "inside a segment"])
def test_log_start_offset_is_respected(tmp_path, where):
    lg = open_log(tmp_path, **{"segment.bytes": 700})
    fill(lg, 10, keys=3)
    lg.roll()
    start = lg.segments()[1].base_offset + (3 if where == "inside a segment" else 0)
    lg.delete_segments_before(start)
    assert lg.log_start_offset == start
    model = {}
    for r in read_all(lg)[0]:
        model[r.key] = (r.offset, r.value)
    res = clean_log(lg, T0, force=True)
    assert res.first_dirty_offset == start
    assert lg.log_start_offset == start
    check_latest(lg, model)
    assert lg.verify() == []
    lg.close()


def test_cleaning_while_producers_append(tmp_path):
    lg = open_log(tmp_path, **{"segment.bytes": 2000})
    stop = threading.Event()
    errors = []
    model = {}

    def produce():
        rng = random.Random(3)
        try:
            while not stop.is_set():
                recs = [(b"k%d" % rng.randrange(20), b"v%d" % rng.randrange(10**6), T0)
                        for _ in range(5)]
                base, _, _ = lg.append_batch(build(recs))
                for i, (k, v, _) in enumerate(recs):
                    model[k] = (base + i, v)
        except Exception as exc:  # noqa: BLE001 - any failure is reported below
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    try:
        deadline = time.monotonic() + 1.0
        runs = 0
        while time.monotonic() < deadline:
            if clean_log(lg, T0, force=True) is not None:
                runs += 1
    finally:
        stop.set()
        t.join()
    assert not errors and runs > 0
    check_latest(lg, model)
    assert lg.verify() == []
    lg.close()


def test_segment_deleted_by_retention_during_cleaning_is_left_alone(tmp_path, monkeypatch):
    lg = open_log(tmp_path, **{"segment.bytes": 700})
    fill(lg, 10, keys=3)
    lg.roll()
    real = cleaner._clean_segment
    calls = []

    def racing(src, *a):
        out = real(src, *a)
        if not calls:  # retention removes the first segments while the cleaner works
            lg.delete_segments_before(lg.segments()[2].base_offset)
        calls.append(src)
        return out

    monkeypatch.setattr(cleaner, "_clean_segment", racing)
    clean_log(lg, T0, force=True)
    assert lg.verify() == []
    assert not list((tmp_path / "t-0").glob("*.cleaned"))
    read_all(lg)
    lg.close()


# ---------------------------------------------------------------------------------------------
# Interoperability: kafka-python reads what the cleaner wrote


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_reads_rewritten_batches(tmp_path, codec):
    from kafka.errors import UnsupportedCodecError
    from kafka.record.default_records import DefaultRecordBatch

    lg = open_log(tmp_path)
    for i in range(4):
        recs = [(b"k%d" % (j % 3), None if j == 5 else b"v%d-%d" % (i, j), T0 - 50 + 17 * j,
                 [("h", b"x")] if j % 2 else None) for j in range(6)]
        lg.append_batch(build(recs, codec, producer_id=9, producer_epoch=2, base_sequence=6 * i))
    lg.roll()
    clean_log(lg, T0, force=True)
    raw = lg.segments()[0].path.read_bytes()
    batches = list(iter_batches(raw))
    assert any(b.has_delete_horizon for b in batches)
    for b in batches:
        theirs = DefaultRecordBatch(bytearray(bytes(b.raw())))
        if codec != "none":
            try:
                theirs._assert_has_codec(b.compression_id)
            except UnsupportedCodecError:
                pytest.skip(f"kafka-python has no {codec} codec here")
        assert theirs.validate_crc()
        assert crc32c(bytes(b.raw())[21:]) == b.crc
        assert (theirs.base_offset, theirs.last_offset_delta) == (b.base_offset, b.last_offset_delta)
        assert (theirs.producer_id, theirs.producer_epoch) == (9, 2)
        mine = [(r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
                for r in b.records()]
        got = [(r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
               for r in theirs]
        assert got == mine
    lg.close()


def test_batch_layout_matches_section_1_1(tmp_path):
    """Bytes written by hand in Python: header fields at their offsets, horizon bit 6."""
    lg = open_log(tmp_path, **{"delete.retention.ms": 5})
    lg.append_batch(build([(b"a", b"1", T0), (b"a", None, T0 + 3), (b"b", b"2", T0 + 9)],
                          producer_id=77, producer_epoch=1, base_sequence=4))
    lg.roll()
    clean_log(lg, T0 + 100, force=True)
    raw = lg.segments()[0].path.read_bytes()
    assert int.from_bytes(raw[0:8], "big") == 0  # baseOffset
    assert int.from_bytes(raw[8:12], "big") == len(raw) - 12  # batchLength
    assert raw[16] == 2  # magic
    assert int.from_bytes(raw[17:21], "big") == crc32c(raw[21:])
    assert int.from_bytes(raw[21:23], "big") == 0x40  # attributes: bit 6, no codec
    assert int.from_bytes(raw[23:27], "big") == 2  # lastOffsetDelta kept
    assert int.from_bytes(raw[27:35], "big") == T0 + 105  # baseTimestamp = horizon
    assert int.from_bytes(raw[35:43], "big") == T0 + 9  # maxTimestamp of the kept records
    assert int.from_bytes(raw[43:51], "big") == 77
    assert int.from_bytes(raw[51:53], "big") == 1
    assert int.from_bytes(raw[53:57], "big") == 4
    assert int.from_bytes(raw[57:61], "big") == 2  # recordsCount
    recs = read_all(lg)[0]
    assert [(r.offset, r.timestamp) for r in recs] == [(1, T0 + 3), (2, T0 + 9)]
    lg.close()


# ---------------------------------------------------------------------------------------------
# Readers and gaps


def test_consumer_reads_across_gaps(tmp_path):
    from kstore.consumer import Consumer
    from kstore.store import Store

    s = Store(tmp_path / "data")
    try:
        s.create_topic("c", 1, {"cleanup.policy": "compact", "segment.bytes": 500})
        lg = s.partition("c", 0)
        model = fill(lg, 20, keys=3, per_batch=4)
        lg.roll()
        clean_log(lg, T0, force=True)
        leo = lg.log_end_offset
        survivors = [r.offset for r in read_all(lg)[0]]
        assert len(survivors) < leo
        for start in range(leo):  # from every offset, gap or not, the consumer moves on
            c = Consumer(s, topics=["c"], auto_offset_reset="earliest", max_poll_records=2)
            c.seek("c", 0, start)
            got = []
            for _ in range(4 * leo):
                got += c.poll(timeout=0)
                if c.position("c", 0) >= leo:
                    break
            assert c.position("c", 0) == leo, start
            assert [r.offset for r in got] == [o for o in survivors if o >= start]
            c.close()
        c = Consumer(s, topics=["c"], auto_offset_reset="earliest")
        cols = []
        for _ in range(4 * leo):
            cols += c.poll_batches(timeout=0)
            if c.position("c", 0) >= leo:
                break
        offsets = [int(o) for pc in cols for o in pc.columns.offsets[pc.start:pc.end]]
        assert offsets == survivors
        c.close()
        assert {r.key: (r.offset, r.value) for r in read_all(lg)[0]} == model
    finally:
        s.close()


def test_read_only_reader_sees_compacted_segments(tmp_path):
    lg = open_log(tmp_path, **{"segment.bytes": 400})
    model = fill(lg, 12, keys=30, per_batch=4)
    lg.roll()
    ro = PartitionLog.open(tmp_path / "t-0", read_only=True)
    assert latest_by_key(read_all(ro)[0]).keys() == model.keys()
    clean_log(lg, T0, force=True)  # merges segments into the first one's base
    try:
        got = latest_by_key(read_all(ro)[0])
        assert {k: (r.offset, r.value) for k, r in got.items()} == model
    finally:
        ro.close()
        lg.close()


def test_flush_does_not_fsync_cleaned_segments_again(tmp_path, monkeypatch):
    lg = open_log(tmp_path, **{"segment.bytes": 700})
    fill(lg, 20, keys=3)
    lg.roll()
    clean_log(lg, T0, force=True)
    lg.flush()
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    lg.flush()  # nothing was appended since the last flush
    try:
        assert [p for p in synced if p.endswith(".log")] == []
    finally:
        monkeypatch.undo()
        lg.close()


# ---------------------------------------------------------------------------------------------
# SIGKILL during cleaning


CHILD = textwrap.dedent(r"""
    import os, random, sys, time
    import kstore.log.partition as part
    from kstore.cleaner import clean_log
    from kstore.log import PartitionLog
    from kstore.records import BatchBuilder

    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    real_replace, real_fsync_dir = os.replace, part.fsync_dir

    def slow_replace(a, b):  # widen every step of the swap
        time.sleep(rng.random() * 0.004)
        real_replace(a, b)
        time.sleep(rng.random() * 0.004)

    def slow_fsync_dir(p):
        time.sleep(rng.random() * 0.004)
        real_fsync_dir(p)

    os.replace = slow_replace
    part.fsync_dir = slow_fsync_dir
    config = {"cleanup.policy": "compact", "segment.bytes": 1500, "file.delete.delay.ms": 0,
              "delete.retention.ms": 50}
    log = PartitionLog.open(directory, config)
    now = 1_700_000_000_000
    print("ready", flush=True)
    while True:
        for _ in range(rng.randrange(1, 6)):
            n = log.log_end_offset // 4
            b = BatchBuilder()
            for i in range(4):
                o = n * 4 + i
                key = b"k%d" % ((o * 7919) % 23)
                value = None if o % 11 == 0 else b"v%d" % o
                b.append(value, key=key, timestamp=now)
            log.append_batch(b.build())
        if rng.random() < 0.5:
            log.roll()
        now += 20
        clean_log(log, now, force=True)
""")


def _expected(leo):
    model = {}
    for o in range(leo):
        model[b"k%d" % ((o * 7919) % 23)] = (o, None if o % 11 == 0 else b"v%d" % o)
    return model


@pytest.mark.slow
def test_sigkill_during_cleaning_loses_no_latest_value(tmp_path):
    d = tmp_path / "t-0"
    rng = random.Random(2024)
    mid_swap = 0
    deadline = time.monotonic() + 14
    iterations = 0
    while iterations < 10 and (time.monotonic() < deadline or iterations < 3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(iterations)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()
            time.sleep(rng.uniform(0.05, 0.6))
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read().decode())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        names = os.listdir(d)
        if any(n.endswith((".cleaned", ".swap", ".deleted")) for n in names):
            mid_swap += 1
        with PartitionLog.open(d, COMPACT) as lg:
            assert lg.verify() == []
            leo = lg.log_end_offset
            assert leo % 4 == 0
            recs, _ = read_all(lg)
            got = latest_by_key(recs)
            for k, (off, v) in _expected(leo).items():
                if v is None and k not in got:
                    continue  # a tombstone past its horizon may be gone
                assert k in got, (iterations, k)
                assert (got[k].offset, got[k].value) == (off, v), (iterations, k)
            assert not [n for n in os.listdir(d) if n.endswith((".cleaned", ".swap"))]
        iterations += 1
    print(f"{iterations} kills, {mid_swap} with files in flight")
    assert mid_swap >= 1, "no kill landed while the cleaner had files in flight"
