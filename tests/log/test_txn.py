"""Transactions in the log (kstore.log.txn): control batches and .txnindex in Kafka's format,
the last stable offset, the aborted list, and their rebuild from the log after a reopen."""

import os
import subprocess
import sys
import time

import pytest

from kstore.log import PartitionLog
from kstore.log.txn import (
    AbortedTxn,
    encode_control_batch,
    read_txnindex,
    txnindex_path,
)
from kstore.records import BatchBuilder, iter_batches

NOW = int(time.time() * 1000)  # old timestamps would roll segments by segment.ms


def txn_batch(pid, n=3, epoch=0, seq=0, transactional=True):
    b = BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                     transactional=transactional)
    for i in range(n):
        b.append(b"p%d-%d" % (pid, seq + i), key=b"k", timestamp=NOW + i)
    return b.build()


def plain(n=2):
    b = BatchBuilder()
    for i in range(n):
        b.append(b"plain%d" % i, timestamp=NOW + i)
    return b.build()


@pytest.fixture
def log(tmp_path):
    lg = PartitionLog.open(tmp_path / "t-0")
    yield lg
    lg.close()


def test_txnindex_entry_is_kafkas_worked_example():
    # kafka-storage.md 3.5: pid 1000, first 100, last 150, LSO 100.
    assert AbortedTxn(1000, 100, 150, 100).to_bytes().hex() == (
        "000000000000000003e8000000000000006400000000000000960000000000000064")


@pytest.mark.parametrize("commit", [True, False])
def test_control_batch_layout(commit):
    raw = encode_control_batch(1000, 3, commit, coordinator_epoch=5, timestamp=1_700_000_000_000)
    (b,) = list(iter_batches(raw))
    b.validate(deep=True)  # CRC over the patched attributes
    assert b.attributes & 0x30 == 0x30 and b.compression == "none"
    assert (b.producer_id, b.producer_epoch, b.base_sequence) == (1000, 3, -1)
    (r,) = b.records()
    assert r.key == bytes.fromhex("0000" + ("0001" if commit else "0000"))
    assert r.value == bytes.fromhex("0000" + "00000005")


def test_control_batch_decodes_with_kafka_python():
    kp = pytest.importorskip("kafka.record.default_records")
    raw = encode_control_batch(42, 1, False, timestamp=1_700_000_000_000)
    b = kp.DefaultRecordBatch(bytearray(raw))
    assert b.validate_crc()
    assert b.is_control_batch and b.is_transactional
    assert (b.producer_id, b.producer_epoch) == (42, 1)
    (r,) = list(b)
    assert bytes(r.key) == b"\x00\x00\x00\x00"  # version 0, ABORT


def test_open_transaction_holds_the_lso(log):
    log.append_batch(plain())                      # 0..1
    assert log.last_stable_offset() == 2
    log.append_batch(txn_batch(7))                 # 2..4 open (pid 7)
    log.append_batch(plain())                      # 5..6
    log.append_batch(txn_batch(8))                 # 7..9 open (pid 8)
    assert log.log_end_offset == 10
    assert log.last_stable_offset() == 2
    m = log.write_marker(7, 0, commit=True)        # 10
    assert m == 10
    assert log.last_stable_offset() == 7
    assert log.aborted_transactions(0, 11) == []
    m = log.write_marker(8, 0, commit=False)       # 11
    assert log.last_stable_offset() == 12
    assert log.aborted_transactions(0, 12) == [AbortedTxn(8, 7, 11, 12)]
    # Ranges: a fetch wholly before the aborted data or after its marker gets nothing.
    assert log.aborted_transactions(0, 7) == []
    assert log.aborted_transactions(12, 20) == []
    assert log.aborted_transactions(11, 12) == [AbortedTxn(8, 7, 11, 12)]
    assert read_txnindex(txnindex_path(log.directory, 0)) == [AbortedTxn(8, 7, 11, 12)]


def test_abort_of_an_empty_transaction_writes_no_entry(log):
    log.append_batch(plain())
    log.write_marker(9, 0, commit=False)
    assert log.aborted_transactions(0, 100) == []
    assert not txnindex_path(log.directory, 0).exists()


def test_lso_of_aborted_entry_is_the_oldest_still_open(log):
    log.append_batch(txn_batch(1))                 # 0..2
    log.append_batch(txn_batch(2))                 # 3..5
    log.write_marker(2, 0, commit=False)           # 6: txn 1 still open from 0
    assert log.aborted_transactions(0, 7) == [AbortedTxn(2, 3, 6, 0)]
    assert log.last_stable_offset() == 0


def test_entry_goes_to_the_segment_of_the_marker(tmp_path):
    with PartitionLog.open(tmp_path / "t-0") as lg:
        lg.append_batch(txn_batch(5))              # 0..2
        lg.roll()
        lg.append_batch(plain())                   # 3..4
        lg.write_marker(5, 0, commit=False)        # 5
        assert not txnindex_path(lg.directory, 0).exists()
        assert read_txnindex(txnindex_path(lg.directory, 3)) == [AbortedTxn(5, 0, 5, 6)]


def test_reopen_rebuilds_state_and_lost_txnindex(tmp_path):
    d = tmp_path / "t-0"
    with PartitionLog.open(d) as lg:
        lg.append_batch(txn_batch(1))              # 0..2
        lg.write_marker(1, 0, commit=False)        # 3
        lg.append_batch(txn_batch(2))              # 4..6 left open
    txnindex_path(d, 0).unlink()                   # as if lost to a crash before its write
    with PartitionLog.open(d) as lg:
        assert lg.last_stable_offset() == 4
        assert lg.aborted_transactions(0, 10) == [AbortedTxn(1, 0, 3, 4)]
        assert read_txnindex(txnindex_path(d, 0)) == [AbortedTxn(1, 0, 3, 4)]
        lg.write_marker(2, 0, commit=True)
        assert lg.last_stable_offset() == 8
    with PartitionLog.open(d, read_only=True) as ro:
        assert ro.last_stable_offset() == 8


def test_torn_txnindex_is_rewritten(tmp_path):
    d = tmp_path / "t-0"
    with PartitionLog.open(d) as lg:
        lg.append_batch(txn_batch(1))
        lg.write_marker(1, 0, commit=False)
    p = txnindex_path(d, 0)
    p.write_bytes(p.read_bytes() + b"\x00" * 10)  # a torn second entry
    with PartitionLog.open(d) as lg:
        lg.last_stable_offset()
    assert p.read_bytes() == AbortedTxn(1, 0, 3, 4).to_bytes()


def test_state_after_sigkill_mid_transaction(tmp_path):
    """A writer killed with a transaction open: the reopened log finds it open (LSO held)
    and a later ABORT closes it."""
    d = tmp_path / "t-0"
    code = f"""
import os, signal
from kstore.log import PartitionLog
from tests.log.test_txn import txn_batch
lg = PartitionLog.open({str(d)!r})
lg.append_batch(txn_batch(3))
lg.write_marker(3, 0, commit=True)
lg.append_batch(txn_batch(4, seq=0))
os.kill(os.getpid(), signal.SIGKILL)
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60)
    assert p.returncode == -9
    with PartitionLog.open(d) as lg:
        assert lg.log_end_offset == 7
        assert lg.last_stable_offset() == 4
        lg.write_marker(4, 0, commit=False)
        assert lg.aborted_transactions(0, 8) == [AbortedTxn(4, 4, 7, 8)]


def test_deleting_segments_drops_their_aborted_entries(tmp_path):
    with PartitionLog.open(tmp_path / "t-0") as lg:
        lg.append_batch(txn_batch(1))
        lg.write_marker(1, 0, commit=False)        # 0..3
        lg.roll()
        lg.append_batch(plain())                   # 4..5
        assert len(lg.aborted_transactions(0, 6)) == 1
        lg.delete_segments_before(4)
        assert lg.aborted_transactions(4, 6) == []
        assert not txnindex_path(lg.directory, 0).exists()


def test_stored_marker_and_txnindex_decode_as_kafkas(log):
    """The bytes on disk, not only the encoder's: kafka-python reads the marker the log
    stored (offset stamped, CRC intact), and the .txnindex holds the 34-byte entry."""
    kp = pytest.importorskip("kafka.record.default_records")
    log.append_batch(txn_batch(77, n=2, epoch=4))
    log.write_marker(77, 4, commit=False)
    raw = (log.directory / "00000000000000000000.log").read_bytes()
    batches = list(iter_batches(raw))
    pos = batches[-1].position
    b = kp.DefaultRecordBatch(bytearray(raw[pos:]))
    assert b.validate_crc() and b.is_control_batch and b.base_offset == 2
    assert (b.producer_id, b.producer_epoch) == (77, 4)
    (r,) = list(b)
    assert bytes(r.key) == b"\x00\x00\x00\x00" and bytes(r.value) == b"\x00\x00\x00\x00\x00\x00"
    assert txnindex_path(log.directory, 0).read_bytes().hex() == (
        "0000" "000000000000004d" "0000000000000000" "0000000000000002" "0000000000000003")
