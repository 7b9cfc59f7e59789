"""Transactions in one partition's log: open transactions, the last stable offset (LSO), the
aborted-transaction list and ``.txnindex`` (kafka-storage.md sections 3.5 and 9.3).

A transaction's data batches carry the isTransactional bit (0x10) and the producer's id; it
ends with a control batch (0x30) holding one record whose key says COMMIT or ABORT. Between its
first batch and its marker the transaction is open, and read_committed readers stop at the
first offset of the oldest open transaction (the LSO). An ABORT of a transaction that wrote
data adds an entry to the aborted list, which read_committed fetches return so that clients
drop the aborted records; on disk the entry goes to the ``.txnindex`` of the segment the marker
landed in.

The state is rebuilt from the log rather than from producer snapshots: ``TxnState`` scans the
batch headers of the log from its start on first use, then only what was appended since its
last look (any process, any writer: the log is the only truth, so a crash, a restart and
appends by other processes need nothing else). Logs never read read_committed and never written
transactionally never pay for it. Headers are walked batch by batch (no record is decoded);
the first use on a large log costs a pass over its headers.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kstore import _core
from kstore.errors import CorruptRecordError, InvalidRecordError

if TYPE_CHECKING:
    from kstore.log.partition import PartitionLog

ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ABORT = 0
COMMIT = 1
_CONTROL_KEY = struct.Struct(">hh")  # version 0, type
_CONTROL_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch
_TXN_ENTRY = struct.Struct(">hqqqq")  # version, producer id, first, last, last stable offset
TXN_ENTRY_SIZE = _TXN_ENTRY.size  # 34
_CRC_OFFSET = 17
_ATTRS_OFFSET = 21
_SCAN_BYTES = 8 << 20


@dataclass(frozen=True)
class AbortedTxn:
    """One ``.txnindex`` entry: an aborted transaction's producer, its first and last offsets
    (the last is the ABORT marker's) and the LSO once it ended."""

    producer_id: int
    first_offset: int
    last_offset: int
    last_stable_offset: int

    def to_bytes(self) -> bytes:
        return _TXN_ENTRY.pack(0, self.producer_id, self.first_offset, self.last_offset,
                               self.last_stable_offset)


def encode_control_batch(producer_id: int, producer_epoch: int, commit: bool,
                         coordinator_epoch: int = 0, timestamp: int | None = None) -> bytes:
    """A COMMIT or ABORT marker as Kafka writes it: a batch with the transactional and control
    bits, base sequence -1, codec none, and one record (key: version 0 and the type; value:
    version 0 and the coordinator epoch)."""
    b = _core.BatchBuilder(producer_id=producer_id, producer_epoch=producer_epoch,
                           base_sequence=-1, transactional=True)
    b.append(_CONTROL_VALUE.pack(0, coordinator_epoch),
             key=_CONTROL_KEY.pack(0, COMMIT if commit else ABORT), timestamp=timestamp)
    raw = bytearray(b.build())
    attrs = int.from_bytes(raw[_ATTRS_OFFSET:_ATTRS_OFFSET + 2], "big") | ATTR_CONTROL
    raw[_ATTRS_OFFSET:_ATTRS_OFFSET + 2] = attrs.to_bytes(2, "big")
    crc = _core.crc32c(memoryview(raw)[_ATTRS_OFFSET:])
    raw[_CRC_OFFSET:_CRC_OFFSET + 4] = crc.to_bytes(4, "big")
    return bytes(raw)


def control_type(batch: _core.Batch) -> int:
    """The marker type of a control batch (0 ABORT, 1 COMMIT, 2.. KRaft's own)."""
    recs = batch.records(check_crc=False)
    if len(recs) != 1 or recs[0].key is None or len(recs[0].key) < 4:
        raise CorruptRecordError(
            f"the control batch at offset {batch.base_offset} does not hold one record with a "
            f"4-byte key")
    return _CONTROL_KEY.unpack_from(recs[0].key, 0)[1]


def read_txnindex(path: Path) -> list[AbortedTxn]:
    """The entries of a ``.txnindex`` file ([] when it does not exist). A torn last entry (a
    crash mid-write) is ignored: recovery writes the index again from the log."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for pos in range(0, len(data) - TXN_ENTRY_SIZE + 1, TXN_ENTRY_SIZE):
        version, pid, first, last, lso = _TXN_ENTRY.unpack_from(data, pos)
        if version != 0:
            raise CorruptRecordError(f"{path}: entry at byte {pos} has version {version}, "
                                     f"not 0; delete the file and reopen to rebuild it")
        out.append(AbortedTxn(pid, first, last, lso))
    return out


def txnindex_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:020d}.txnindex"


class TxnState:
    """The transactions of one partition, as far as the log has been scanned.

    Thread-safe (one lock). ``refresh`` scans what was appended since the last call; the
    queries call it first, so answers cover the whole log as it is at the call."""

    def __init__(self, log: PartitionLog) -> None:
        self._log = log
        self._lock = threading.Lock()
        self.open: dict[int, int] = {}  # producer id -> first offset of its open transaction
        self.aborted: list[AbortedTxn] = []  # by last offset
        self._aborted_lasts: list[int] = []
        self.scanned = -1  # offsets below it are accounted for; -1: never scanned

    def refresh(self) -> None:
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        lg = self._log
        end = lg.log_end_offset
        first_scan = self.scanned < 0
        off = max(self.scanned, lg.log_start_offset)
        while off < end:
            fs = lg.read(off, _SCAN_BYTES)
            if len(fs) == 0:
                break
            # Batch headers are walked in C; Python sees the transactional batches only.
            mv = fs.memoryview()
            found, nxt = _core.txn_batches(mv)
            for base, last, pid, kind in found:
                if last < off:
                    continue
                if kind == -1:
                    self.open.setdefault(pid, base)
                else:
                    if kind == -2:  # a control record C did not read: decode it here
                        b = _core.read_batch(mv, _core.find_offset(mv, base))
                        kind = control_type(b)
                    self._end(pid, kind, last)
            if nxt <= off:
                break
            off = nxt
        self.scanned = max(off, self.scanned)
        if first_scan and not lg.read_only:
            self._rewrite_txnindexes()

    def _rewrite_txnindexes(self) -> None:
        """Recovery: make every segment's ``.txnindex`` say what the log says (an entry lost
        to a crash between a marker and its index write comes back; a torn one goes)."""
        lg = self._log
        bases = [s.base_offset for s in lg._segments]
        want: dict[int, list[AbortedTxn]] = {b: [] for b in bases}
        for a in self.aborted:
            i = max(bisect.bisect_right(bases, a.last_offset) - 1, 0)
            want[bases[i]].append(a)
        for base, entries in want.items():
            path = txnindex_path(lg.directory, base)
            data = b"".join(e.to_bytes() for e in entries)
            try:
                have = path.read_bytes()
            except FileNotFoundError:
                have = b""
            if have == data:
                continue
            if not data:
                path.unlink(missing_ok=True)
                continue
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def note(self, producer_id: int, first_offset: int, last_offset: int,
             marker: int | None = None) -> None:
        """The writer appended a transactional batch (``marker``: None for data, else ABORT or
        COMMIT) at ``[first_offset, last_offset]``: when it directly follows what was
        scanned, account for it without reading it back. Otherwise the next query scans it."""
        with self._lock:
            if self.scanned != first_offset:
                return
            if marker is None:
                self.open.setdefault(producer_id, first_offset)
            else:
                self._end(producer_id, marker, last_offset)
            self.scanned = last_offset + 1

    def _end(self, pid: int, kind: int, marker_offset: int) -> None:
        first = self.open.pop(pid, None)
        if kind == ABORT and first is not None:
            lso = min(self.open.values()) if self.open else marker_offset + 1
            self.aborted.append(AbortedTxn(pid, first, marker_offset, lso))
            self._aborted_lasts.append(marker_offset)

    def last_stable_offset(self) -> int:
        """The first offset of the oldest open transaction, else the log end."""
        with self._lock:
            self._refresh_locked()
            return min(self.open.values()) if self.open else self.scanned

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions that may hold offsets in ``[start, end)``: those whose marker
        is at or after ``start`` and whose first offset is below ``end`` (Kafka's
        collectAbortedTxns)."""
        with self._lock:
            self._refresh_locked()
            i = bisect.bisect_left(self._aborted_lasts, start)
            return [a for a in self.aborted[i:] if a.first_offset < end]

    def open_transactions(self) -> dict[int, int]:
        with self._lock:
            self._refresh_locked()
            return dict(self.open)

    def forget_below(self, offset: int) -> None:
        """Drop aborted entries wholly below the log start (retention, DeleteRecords)."""
        with self._lock:
            i = bisect.bisect_left(self._aborted_lasts, offset)
            if i:
                del self.aborted[:i]
                del self._aborted_lasts[:i]


def write_txnindex_entries(directory: Path, base_offset: int,
                           entries: Iterable[AbortedTxn]) -> None:
    """Append entries to the ``.txnindex`` of the segment at ``base_offset`` (created on the
    first entry, as Kafka's)."""
    data = b"".join(e.to_bytes() for e in entries)
    if not data:
        return
    fd = os.open(txnindex_path(directory, base_offset), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def check_client_batches(mv: memoryview) -> None:
    """Kafka refuses control batches from clients (INVALID_RECORD)."""
    for b in _core.iter_batches(mv):
        if b.attributes & ATTR_CONTROL:
            raise InvalidRecordError(
                f"the batch at offset {b.base_offset} is a control batch: only the "
                f"transaction coordinator writes markers")
