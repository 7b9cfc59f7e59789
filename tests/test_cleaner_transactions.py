"""The cleaner and transactions (Kafka's LogCleaner rules, kafka-storage.md 5.2 and 9.3):
aborted records go whatever their key and never shadow a committed value; a marker stays while
its transaction has records, then gets the delete horizon, then goes; nothing at or above the
last stable offset is cleaned."""

from __future__ import annotations

from kstore.cleaner import clean_log, first_uncleanable_offset
from kstore.log import PartitionLog
from kstore.records import BatchBuilder

DAY = 86_400_000
T0 = 1_700_000_000_000
COMPACT = {"cleanup.policy": "compact", "file.delete.delay.ms": 0}


def txn(pid, records, seq=0):
    b = BatchBuilder(producer_id=pid, producer_epoch=0, base_sequence=seq, transactional=True)
    for k, v in records:
        b.append(v, key=k, timestamp=T0)
    return b.build()


def plain(records):
    b = BatchBuilder()
    for k, v in records:
        b.append(v, key=k, timestamp=T0)
    return b.build()


def contents(lg):
    """(key, value) of the data records, and (producer id, has horizon) of the markers."""
    recs, markers = [], []
    off = lg.log_start_offset
    while off < lg.log_end_offset:
        fs = lg.read(off, 1 << 24)
        for b in fs.batches():
            if b.is_control:
                if b.record_count:
                    markers.append((b.producer_id, b.has_delete_horizon))
                continue
            recs += [(r.key, r.value) for r in b.records()]
        off = fs.next_offset
    return recs, markers


def open_log(tmp_path, clock):
    return PartitionLog.open(tmp_path / "t-0", COMPACT, clock=lambda: clock[0])


def test_aborted_records_go_and_their_marker_after_the_horizon(tmp_path):
    clock = [T0]
    with open_log(tmp_path, clock) as lg:
        lg.append_batch(plain([(b"k", b"old")]))
        lg.append_batch(txn(1, [(b"c", b"committed")]))
        lg.append_batch(txn(2, [(b"k", b"aborted"), (b"x", b"aborted-x")]))
        lg.write_marker(1, 0, commit=True)
        lg.write_marker(2, 0, commit=False)
        lg.roll()
        lg.append_batch(plain([(b"z", b"active")]))
        clean_log(lg, T0, force=True)
        recs, markers = contents(lg)
        # The aborted value of k is dropped and did not hide the older committed one.
        assert recs == [(b"k", b"old"), (b"c", b"committed"), (b"z", b"active")]
        # COMMIT: its transaction has a record. ABORT: none left, so the horizon is set.
        assert markers == [(1, False), (2, True)]
        assert lg.last_stable_offset() == lg.log_end_offset
        clean_log(lg, T0 + DAY - 1, force=True)  # before the horizon: still there
        assert contents(lg)[1] == [(1, False), (2, True)]
        clean_log(lg, T0 + DAY + 1, force=True)
        assert contents(lg)[1] == [(1, False)]
    with PartitionLog.open(tmp_path / "t-0", COMPACT) as again:  # state rebuilt after it
        assert again.last_stable_offset() == again.log_end_offset
        assert again.aborted_transactions(0, again.log_end_offset) == []


def test_commit_marker_goes_once_its_records_are_compacted_away(tmp_path):
    clock = [T0]
    with open_log(tmp_path, clock) as lg:
        lg.append_batch(txn(1, [(b"k", b"v1")]))
        lg.write_marker(1, 0, commit=True)
        lg.append_batch(plain([(b"k", b"v2")]))  # supersedes the transaction's only record
        lg.roll()
        lg.append_batch(plain([(b"z", b"active")]))
        clean_log(lg, T0, force=True)
        recs, markers = contents(lg)
        assert recs == [(b"k", b"v2"), (b"z", b"active")]
        assert markers == [(1, True)]
        clean_log(lg, T0 + DAY + 1, force=True)
        assert contents(lg)[1] == []


def test_nothing_at_or_above_the_lso_is_cleaned(tmp_path):
    clock = [T0]
    with open_log(tmp_path, clock) as lg:
        lg.append_batch(plain([(b"k", b"v1")]))
        lg.roll()
        lg.append_batch(txn(7, [(b"t", b"open")]))  # offset 1, left open
        lg.append_batch(plain([(b"k", b"v2")]))
        lg.roll()
        lg.append_batch(plain([(b"k", b"v3")]))
        lg.roll()
        assert lg.last_stable_offset() == 1
        assert first_uncleanable_offset(lg, T0) == 1
        clean_log(lg, T0, force=True)
        # v1 sits below the LSO, but what supersedes it lies above: it is not cleaned.
        assert contents(lg)[0] == [(b"k", b"v1"), (b"t", b"open"), (b"k", b"v2"),
                                   (b"k", b"v3")]
        lg.write_marker(7, 0, commit=False)
        lg.roll()
        lg.append_batch(plain([(b"z", b"active")]))
        clean_log(lg, T0, force=True)
        assert contents(lg)[0] == [(b"k", b"v3"), (b"z", b"active")]
