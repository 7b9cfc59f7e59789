"""One segment of a partition log: ``<base>.log`` plus its ``.index`` and ``.timeindex``.

The active segment appends through a compiled SegmentAppender; closed segments are read-only.
Reads map the ``.log`` file and hand out FileSlices. Thread safety: the PartitionLog serialises
appends, rolls and truncation; reads may run concurrently with one append.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kstore import _core
from kstore.errors import CorruptRecordError, KafkaStorageError
from kstore.log import quarantine
from kstore.log.fileslice import FileSlice, SegmentFile
from kstore.log.checkpoint import writer_holds_lock
from kstore.log.index import (
    OFFSET_ENTRY,
    TIME_ENTRY,
    IndexFile,
    check_offset_index,
    check_time_index,
)

log = logging.getLogger("kstore.log")

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SCAN_CHUNK = 1 << 20  # batches per scan call during recovery (bounds memory)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Segment:
    def __init__(self, directory: Path, base_offset: int, config: dict[str, Any]) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.config = config
        name = segment_name(base_offset)
        self.log_path = directory / f"{name}.log"
        self.offset_index = IndexFile(directory / f"{name}.index", OFFSET_ENTRY)
        self.time_index = IndexFile(directory / f"{name}.timeindex", TIME_ENTRY)
        self.appender: _core.SegmentAppender | None = None
        self._wfd = -1
        self._file: SegmentFile | None = None
        self._map: mmap.mmap | None = None
        self._map_size = 0
        self._map_lock = threading.Lock()
        self._size = 0
        self._indexes_checked = False
        self.cut: CutReport | None = None  # what the last recover() cut
        self._max_ts: tuple[int, int] | None = None  # (max timestamp, its offset) once known
        # Damage found by reads: (byte, size, max_last) -> (next good batch, last bad offset),
        # so that a reader retrying at a damaged batch does not rescan the bytes after it.
        self._damage: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.next_offset: int | None = None  # known for the last segment
        self._maps: list[mmap.mmap] = []  # mappings handed to slices (closed before truncation)
        # Read-only opens (another process writes): no writes, indexes read with pread.
        self.read_only = False
        self.ro_complete = False
        self.ro_inode = -1  # read-only: the file this object reads (compaction swaps files)

    # -- state ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Committed bytes: what readers may see."""
        a = self.appender
        return a.size if a is not None else self._size

    @property
    def is_active(self) -> bool:
        return self.appender is not None

    def __repr__(self) -> str:
        return f"<Segment {self.log_path.name} size={self.size}{' active' if self.is_active else ''}>"

    # -- creation, loading --------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, config: dict[str, Any]) -> "Segment":
        """A new, empty, active segment. Stale files with the same name are replaced."""
        seg = cls(directory, base_offset, config)
        for p in (seg.log_path, seg.offset_index.path, seg.time_index.path):
            if p.exists():
                p.unlink()
        seg.log_path.touch()
        seg.offset_index.path.touch()
        seg.time_index.path.touch()
        seg.next_offset = base_offset
        seg._indexes_checked = True
        try:
            seg.activate(_core.SegmentAppender(-1, base_offset, 0, base_offset,
                                               config["index.interval.bytes"]))
        except BaseException:
            seg.abandon()  # no fd left open behind a refused creation
            raise
        return seg

    @classmethod
    def load(cls, directory: Path, base_offset: int, config: dict[str, Any]) -> "Segment":
        """An existing, closed segment; indexes are opened on first use. Raises SegmentGone
        when its file is not there (a reader beside a writer: retention or compaction took
        it after the directory was listed)."""
        seg = cls(directory, base_offset, config)
        try:
            seg._size = os.path.getsize(seg.log_path)
        except FileNotFoundError:
            raise SegmentGone(f"segment {seg.log_path} is gone") from None
        return seg

    def activate(self, appender: _core.SegmentAppender) -> None:
        """Make this the active segment, appending through ``appender`` (state already set)."""
        try:
            self._wfd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise KafkaStorageError(f"cannot open {self.log_path} for appending: {exc}") from exc
        max_bytes = self.config["segment.index.bytes"]
        self.offset_index.open_writable(max_bytes, self.offset_index.entries)
        self.time_index.open_writable(max_bytes, self.time_index.entries)
        appender.set_fd(self._wfd)
        appender.attach_indexes(self.offset_index.mm, self.offset_index.entries,
                                self.time_index.mm, self.time_index.entries)
        appender.attach_index_files(self.offset_index.fd, self.time_index.fd,
                                    self.offset_index.entries, self.time_index.entries)
        self.appender = appender
        self._indexes_checked = True

    def attach_active(self, tail: _core.SharedTail) -> None:
        """Become the active segment of a shared tail another process set up: append state
        and index entries come from the tail and the files, nothing is scanned or cut."""
        try:
            self._wfd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise KafkaStorageError(f"cannot open {self.log_path} for appending: {exc}") from exc
        try:
            max_bytes = self.config["segment.index.bytes"]
            self.offset_index.open_shared(max_bytes, tail.offset_persisted)
            self.time_index.open_shared(max_bytes, tail.time_persisted)
            app = _core.SegmentAppender(self._wfd, self.base_offset, 0, self.base_offset,
                                        self.config["index.interval.bytes"])
            app.attach_indexes(self.offset_index.mm, self.offset_index.entries,
                               self.time_index.mm, self.time_index.entries)
            app.attach_index_files(self.offset_index.fd, self.time_index.fd,
                                   self.offset_index.entries, self.time_index.entries)
            app.load_shared(tail)
        except BaseException:
            self.abandon()
            raise
        self.appender = app
        self.next_offset = None
        self._indexes_checked = True

    def detach_shared(self, next_offset: int | None) -> None:
        """Another process rolled past this segment (or rebuilt it): stop appending to it here
        without writing anything (the process that closed it trimmed its indexes); reads go on
        from its files."""
        try:
            self._size = os.path.getsize(self.log_path)
        except FileNotFoundError:
            self._size = self.size
        self.next_offset = next_offset
        self.abandon()
        self._indexes_checked = False

    def open_active(self) -> None:
        """Reopen the last segment after a clean shutdown without scanning it: the state comes
        from the last index entries and the few batches after the last offset-index entry."""
        self._ensure_indexes()
        size = os.path.getsize(self.log_path)
        pos = 0
        last = self.offset_index.last_entry()
        if last is not None:
            pos = last[1]
        tail = _scan_file(self.log_path, pos, size, check_crc=False) if size else None
        if tail is not None and (not tail.ok or (size and len(tail) == 0)):
            raise _NeedsRecovery(f"tail of {self.log_path.name} does not parse: {tail.error}")
        app = _core.SegmentAppender(-1, self.base_offset, size, self.base_offset,
                                    self.config["index.interval.bytes"],
                                    int(os.path.getmtime(self.log_path) * 1000))
        next_offset = self.base_offset
        max_ts, max_off = -1, -1
        t_last = self.time_index.last_entry()
        if t_last is not None:
            max_ts, max_off = t_last[0], self.base_offset + t_last[1]
        first_ts = -1
        if tail is not None and len(tail):
            next_offset = int(tail.last_offsets[-1]) + 1
            i = int(np.argmax(tail.max_timestamps))
            if tail.max_timestamps[i] > max_ts:
                max_ts, max_off = int(tail.max_timestamps[i]), int(tail.last_offsets[i])
            first_ts = _first_batch_max_timestamp(self.log_path)
        app.restore_state(size - pos if last is not None else size, max_ts, max_off, first_ts)
        app.set_next_offset(next_offset)
        self.next_offset = next_offset
        self.activate(app)

    def deactivate(self) -> None:
        """Stop being active: final time-index entry, trim the indexes, close the write fd."""
        app = self.appender
        if app is None:
            return
        app.final_time_entry()
        app.persist_indexes()
        self.offset_index.entries = app.offset_entries
        self.time_index.entries = app.time_entries
        self._size = app.size
        self.next_offset = app.next_offset
        self._max_ts = (app.max_timestamp, app.offset_of_max_timestamp)
        app.detach_indexes()
        self.appender = None
        self.offset_index.trim()
        self.time_index.trim()
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1

    # -- recovery -----------------------------------------------------------------------------

    def recover(self, active: bool,
                before_cut: Callable[[], None] | None = None) -> tuple[int, str | None]:
        """Rebuild both indexes from the .log, truncating at the first invalid or partial batch.

        Returns (bytes cut, why); ``self.cut`` says more (position, offsets, side file). The cut
        bytes are first copied to a side file (``quarantine.keep_bytes``), except a partial
        write at the end of the ``active`` segment and bytes that are all zero; ``before_cut``
        runs after that copy and before the file shrinks (the log moves later segments away).
        The segment is left active (appending) when ``active``.
        """
        self.close_files()
        self._damage.clear()
        size = os.path.getsize(self.log_path)
        self.offset_index.reset()
        self.time_index.reset()
        max_bytes = self.config["segment.index.bytes"]
        self.offset_index.open_writable(max_bytes, 0)
        self.time_index.open_writable(max_bytes, 0)
        app = _core.SegmentAppender(-1, self.base_offset, 0, self.base_offset,
                                    self.config["index.interval.bytes"],
                                    int(os.path.getmtime(self.log_path) * 1000))
        app.attach_indexes(self.offset_index.mm, 0, self.time_index.mm, 0)
        app.attach_index_files(self.offset_index.fd, self.time_index.fd, 0, 0)
        why = None
        torn = False
        self.cut = None
        if size:
            with open(self.log_path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                start = 0
                while start < size:
                    res = _core.scan(mm, start, size, True, True, SCAN_CHUNK)
                    bad = np.nonzero((res.base_offsets < self.base_offset) |
                                     (res.last_offsets - self.base_offset > INT32_MAX))[0]
                    if bad.size:
                        head = _core.scan(mm, start, size, True, True, int(bad[0])) if bad[0] else None
                        why = (f"batch at byte {int(_first(bad, start, mm, size))} has offsets outside "
                               f"segment {self.base_offset}")
                        if head is not None:
                            app.track_scanned(head)
                        break
                    app.track_scanned(res)
                    if not res.ok:
                        why = str(res.error)
                        torn = res.torn
                        break
                    if res.valid_end == start:
                        break
                    start = res.valid_end
                del res
        valid = app.size
        cut = size - valid
        if cut:
            partial = active and torn and quarantine.is_partial_write(
                self.log_path, valid, size, app.next_offset, self.config)
            if torn and not partial:
                why = (f"the batch at byte {valid} runs past the end of the file but is not a "
                       f"half-written next batch (a damaged header): {why}")
            side = None if partial else quarantine.keep_bytes(self.log_path, valid, size)
            self.cut = CutReport(valid, cut, app.next_offset,
                                 quarantine.last_offset_in(self.log_path, valid, size),
                                 side, partial)
            if before_cut is not None:
                before_cut()
            with open(self.log_path, "r+b") as w:
                w.truncate(valid)
                os.fsync(w.fileno())
            if why is None:
                why = "partial batch at the end"
        if not active:
            app.final_time_entry()
        app.persist_indexes()
        app.detach_indexes()
        self.offset_index.entries = app.offset_entries
        self.time_index.entries = app.time_entries
        self._size = valid
        self.next_offset = app.next_offset
        self._max_ts = (app.max_timestamp, app.offset_of_max_timestamp)
        self._indexes_checked = True
        if active:
            self.activate(app)
        else:
            self.offset_index.trim()
            self.time_index.trim()
        return cut, why

    def _ensure_indexes(self) -> None:
        """Map a closed segment's indexes; rebuild them if they do not make sense."""
        if self._indexes_checked:
            return
        with self._map_lock:
            if self._indexes_checked:
                return
            if self.read_only:
                self._ro_load_indexes()
                self._indexes_checked = True
                return
            self.offset_index.open_readonly()
            self.time_index.open_readonly()
            problem = self._index_problem()
            if problem:
                log.warning("rebuilding indexes of %s: %s", self.log_path, problem)
                self._rebuild_indexes()
            self._indexes_checked = True

    # -- read-only (another process is the writer) ---------------------------------------------

    def _ro_load_indexes(self) -> None:
        """Snapshot the indexes with pread: the writer may trim or grow them at any time, and a
        mapping of a file that shrinks can fault; a copy cannot. Only entries that rise and
        point inside the committed data count."""
        for idx in (self.offset_index, self.time_index):
            idx.load_snapshot()
        while self.offset_index.entries:
            if self.offset_index.entry(self.offset_index.entries - 1)[1] < self._size:
                break
            self.offset_index.entries -= 1
        self._ro_indexed_size = self._size

    def ro_open_tail(self) -> None:
        """Read-only open of the last segment: scan from its last index entry to the end."""
        self._ro_load_indexes_guarded(0)
        last = self.offset_index.last_entry()
        self._size = last[1] if last is not None else 0
        self.next_offset = None
        self.ro_advance()
        if self.next_offset is None and self._size > 0:
            # The last entry points at a torn batch (the writer died mid-write, the index got
            # there first): count the whole batches from the start instead.
            self._size = 0
            self.ro_advance()

    def _ro_load_indexes_guarded(self, size: int) -> None:
        self._size = os.path.getsize(self.log_path)
        self._ro_load_indexes()
        self._indexes_checked = True

    def ro_advance(self) -> None:
        """Count the whole, valid batches appended since the last look (CRC-checked)."""
        try:
            size = os.path.getsize(self.log_path)
        except FileNotFoundError:
            return
        start = self._size
        if size > start:
            try:
                res = _scan_file(self.log_path, start, size, check_crc=True)
            except FileNotFoundError:
                return  # deleted meanwhile: the next refresh drops this segment
            if res is not None and len(res):
                # next_offset first: a reader takes size, then the offset bound (read()).
                self.next_offset = int(res.last_offsets[-1]) + 1
                self._size = res.valid_end
                if self._size - getattr(self, "_ro_indexed_size", 0) > (1 << 20):
                    self._indexes_checked = False  # pick up the writer's newer index entries
        if self.next_offset is None and self._size == 0:
            self.next_offset = self.base_offset

    def verify_indexes(self, scans: list[_core.ScanResult], first_bad: int | None = None) -> list[str]:
        """Problems with this segment's ``.index`` and ``.timeindex`` files as they are on disk,
        given scans of its data (``index.check_offset_index`` and ``check_time_index`` say what
        is checked). Each problem names its index file first; the data is not at fault and
        ``PartitionLog.repair_indexes`` rebuilds the file. Entries at or past a corrupt batch
        (``first_bad``) are not judged: what they point at is already reported. Never raises
        for a damaged or missing file, never changes anything."""
        if scans:
            positions = np.concatenate([r.positions for r in scans])
            bases = np.concatenate([r.base_offsets for r in scans])
            lasts = np.concatenate([r.last_offsets for r in scans])
            max_ts = np.concatenate([r.max_timestamps for r in scans])
        else:
            positions = bases = lasts = max_ts = np.zeros(0, dtype=np.int64)
        end = self.size if first_bad is None else first_bad
        # A writer in another process may be appending to the last segment: what it has not
        # finished (an entry past the data we scanned, a file not created yet) is not damage.
        in_flight = first_bad is not None or (
            self.read_only and not self.ro_complete and writer_holds_lock(self.directory))
        problems = []
        for problem in (
                check_offset_index(self.offset_index.path, self.base_offset, positions, bases,
                                   lasts, end, in_flight),
                check_time_index(self.time_index.path, self.base_offset, bases, lasts, max_ts,
                                 in_flight)):
            if problem is not None:
                problems.append(problem)
        if problems and self.read_only and _inode(self.log_path) != self.ro_inode:
            return []  # deleted or swapped (retention, compaction) while we looked: not damage
        return problems

    def _index_problem(self) -> str | None:
        size = os.path.getsize(self.log_path)
        for idx in (self.offset_index, self.time_index):
            if not idx.path.exists():
                return f"{idx.path.name} is missing"
            flen = os.path.getsize(idx.path)
            if flen % idx.entry_size:
                return f"{idx.path.name} is {flen} bytes, not a multiple of {idx.entry_size}"
            if idx.valid_entries_in_file() != idx.entries:
                return f"{idx.path.name} holds entries that do not rise"
        last = self.offset_index.last_entry()
        if last is not None and last[1] >= max(size, 1):
            return f"{self.offset_index.path.name} points at byte {last[1]} past the log's {size}"
        return None

    def _rebuild_indexes(self) -> None:
        """Rebuild a closed segment's indexes from its data, which is trusted (clean state)."""
        max_bytes = self.config["segment.index.bytes"]
        self.offset_index.reset()
        self.time_index.reset()
        self.offset_index.open_writable(max_bytes, 0)
        self.time_index.open_writable(max_bytes, 0)
        app = _core.SegmentAppender(-1, self.base_offset, 0, self.base_offset,
                                    self.config["index.interval.bytes"])
        app.attach_indexes(self.offset_index.mm, 0, self.time_index.mm, 0)
        app.attach_index_files(self.offset_index.fd, self.time_index.fd, 0, 0)
        size = os.path.getsize(self.log_path)
        res = _scan_file(self.log_path, 0, size, check_crc=False)
        if res is not None:
            app.track_scanned(res)
        app.final_time_entry()
        app.persist_indexes()
        app.detach_indexes()
        self.offset_index.entries = app.offset_entries
        self.time_index.entries = app.time_entries
        self.offset_index.trim()
        self.time_index.trim()
        self._max_ts = (app.max_timestamp, app.offset_of_max_timestamp)

    # -- reads --------------------------------------------------------------------------------

    def _mapping(self, size: int) -> mmap.mmap:
        m = self._map
        if m is not None and self._map_size >= size:
            return m
        with self._map_lock:
            if self._map is not None and self._map_size >= size:
                return self._map
            if self._file is None:
                try:
                    self._file = SegmentFile(self.log_path)
                except FileNotFoundError:
                    raise SegmentGone(
                        f"segment {self.log_path} is missing (deleted outside kstore); its "
                        f"offsets from {self.base_offset} cannot be read") from None
            full = os.fstat(self._file.fd).st_size
            # Map only what is committed: a read-only process must never touch bytes the
            # writer could still cut (a torn tail), and the active segment keeps growing.
            m = mmap.mmap(self._file.fd, size if self.read_only else max(full, size),
                          access=mmap.ACCESS_READ)
            # Forget mappings nobody else holds any more (list + loop variable + argument).
            self._maps = [x for x in self._maps if sys.getrefcount(x) > 3] + [m]
            self._map = m
            self._map_size = len(m)
            return m

    def ensure_unmapped_or_keep(self) -> None:
        """Forget this segment's mappings without closing them: slices already handed out
        keep reading the old (renamed, later unlinked) file, which stays valid."""
        with self._map_lock:
            self._maps = []
            self._map = None
            self._map_size = 0

    def ensure_unmapped(self) -> None:
        """Close every mapping of the .log; refuse while a view over it is still exported.
        Slices that held a closed mapping raise ValueError instead of touching cut pages."""
        with self._map_lock:
            for m in self._maps:
                try:
                    m.close()
                except BufferError:
                    raise KafkaStorageError(
                        f"views over {self.log_path.name} are still alive; release them "
                        f"(memoryview.release(), drop Batch and Columns objects) first") from None
            self._maps = []
            self._map = None
            self._map_size = 0

    def _start_position(self, offset: int) -> int:
        app = self.appender
        idx = self.offset_index
        if app is not None:
            if idx.mm is None or app.offset_entries == 0:
                return 0
            _, _, pos = _core.offset_index_lookup(idx.mm, app.offset_entries, offset - self.base_offset)
            return pos
        self._ensure_indexes()
        return idx.lookup(offset - self.base_offset)[2]

    def read(self, offset: int, max_bytes: int, max_offset: int,
             end_offset: int | None = None, every_header: bool = False) -> FileSlice | None:
        """Whole batches from the one holding ``offset`` (or the first after it), within
        ``max_bytes`` (the first batch always counts) and below ``max_offset``.
        ``end_offset`` bounds the offsets this segment may hold (the next segment's base).

        Every header walked is checked (batch.h, "checked reads"): a slice ends before a
        damaged batch, and a read that starts at one raises CorruptRecordError naming the
        file, byte and the offsets the damage covers. A read for offsets past it skips it.
        Reads over 64 KiB jump through the offset index and check the headers near their end,
        unless ``every_header`` (bytes that leave the process unchecked by anyone, as a Fetch
        to a client that may not check CRCs, must not carry a damaged header in mid-span).
        """
        size = self.size
        if size == 0:
            return None
        if self.read_only and self._file is not None and os.fstat(self._file.fd).st_size < size:
            # A writer's recovery cut this file below what this reader knew (damage it moved
            # to a side file): touching the mapping past the new end would be SIGBUS.
            raise SegmentGone(f"segment {self.log_path} was cut by a writer's recovery to "
                              f"{os.fstat(self._file.fd).st_size} bytes; reading it afresh")
        max_last = self._max_last(end_offset)  # after size: appends only raise it
        pos = self._start_position(offset)
        mm = self._mapping(size)
        app = self.appender
        idx = self.offset_index
        entries = app.offset_entries if app is not None else idx.entries
        min_base = self.base_offset
        while True:
            start, before = self._find_checked(mm, offset, pos, size, max_last, min_base)
            if start >= size:
                return None
            n, last_pos, rc = _core.read_span(mm, start, max_bytes, max_offset, size,
                                              idx.mm if entries and not every_header else None,
                                              entries,
                                              self.base_offset, max_last)
            if not (rc and n and self._blame_previous(mm, size, last_pos, start + n, rc,
                                                      max_last)):
                break
            # The batch before the damaged header is the bad one (its length or offsets were
            # damaged, so the walk went wrong after it): the slice ends before it.
            header = start + n
            n = last_pos - start
            last_pos = -1
            if n:
                break
            lo = before + 1
            resume, hi = self._damage_end(mm, size, start, lo, max_last)
            if offset <= hi:
                raise self._corrupt(mm, size, start, lo, max_last, rc, header)
            # Its damaged offsets only seemed to hold ``offset``: look on after the damage.
            if resume >= size:
                return None
            pos, min_base = resume, hi + 1
        if n == 0:
            return None
        assert self._file is not None
        base = int.from_bytes(mm[start:start + 8], "big")
        fs = FileSlice(self._file, start, n, mm, base)
        if last_pos >= 0:
            # The last batch's header gives the next offset without walking the others.
            fs._next = (int.from_bytes(mm[last_pos:last_pos + 8], "big")
                        + int.from_bytes(mm[last_pos + 23:last_pos + 27], "big") + 1)
        return fs

    def _max_last(self, end_offset: int | None) -> int:
        """The largest offset this segment may hold."""
        if end_offset is not None:
            return end_offset - 1
        app = self.appender
        if app is not None:
            return app.next_offset - 1
        if self.next_offset is not None:
            return self.next_offset - 1
        return INT64_MAX

    def _find_checked(self, mm: mmap.mmap, offset: int, pos: int, size: int,
                      max_last: int, min_base: int) -> tuple[int, int]:
        """(position of the first batch holding ``offset`` or later, ``size`` when none; the
        last offset before it), every header on the way checked. Damage below ``offset`` is
        stepped over; damage at it raises."""
        from_index = pos > 0 and min_base == self.base_offset
        while True:
            rc, found, prev_pos, prev_last = _core.read_find(mm, offset, pos, size, min_base,
                                                             max_last)
            if rc == 0:
                return found, prev_last
            if from_index:
                # The walk began at an index entry, which may itself be stale: judge the data
                # by a walk from the segment's start.
                pos, from_index = 0, False
                continue
            bad, lo = found, prev_last + 1
            if prev_pos < size and self._blame_previous(mm, size, prev_pos, found, rc, max_last):
                bad, lo = prev_pos, int.from_bytes(mm[prev_pos:prev_pos + 8], "big")
            resume, hi = self._damage_end(mm, size, bad, lo, max_last)
            if offset <= hi:
                raise self._corrupt(mm, size, bad, lo, max_last, rc, found)
            if resume >= size:
                return size, hi
            pos, min_base = resume, hi + 1

    def _blame_previous(self, mm: mmap.mmap, size: int, prev: int, bad: int, rc: int,
                        max_last: int) -> bool:
        """Whether the damage found at byte ``bad`` lies in the good-looking batch before it,
        at ``prev``: its CRC fails (a damaged length sent the walk astray), or the two overlap
        in offsets (the base offset is outside the CRC) and the later one agrees with the
        batch after it, so the earlier one's base offset must be the damaged one."""
        if not _core.batch_crc_ok(mm, prev, size):
            return True
        if rc != _core.ERR_OFFSET or not _core.batch_crc_ok(mm, bad, size):
            return False
        last = (int.from_bytes(mm[bad:bad + 8], "big")
                + int.from_bytes(mm[bad + 23:bad + 27], "big"))
        after = bad + 12 + int.from_bytes(mm[bad + 8:bad + 12], "big")
        if after >= size:
            return last == max_last
        rc2, found, _, _ = _core.read_find(mm, last + 1, after, size, last + 1, max_last)
        return rc2 == 0 and found == after and int.from_bytes(mm[after:after + 8], "big") == last + 1

    def _damage_end(self, mm: mmap.mmap, size: int, bad: int, lo: int,
                    max_last: int) -> tuple[int, int]:
        """(position of the next good batch, last offset the damage covers) for damage at
        byte ``bad``: the offsets below the next good batch, or all up to ``max_last``."""
        key = (bad, size, max_last)
        cached = self._damage.get(key)
        if cached is not None:
            return cached
        resume = _core.resync(mm, bad, size, lo, max_last)
        hi = int.from_bytes(mm[resume:resume + 8], "big") - 1 if resume < size else max_last
        if len(self._damage) > 64:
            self._damage.clear()
        self._damage[key] = (resume, hi)
        return resume, hi

    def _corrupt(self, mm: mmap.mmap, size: int, bad: int, lo: int, max_last: int, rc: int,
                 found: int) -> CorruptRecordError:
        _, hi = self._damage_end(mm, size, bad, lo, max_last)
        why = (_core.read_error_text(rc) if bad == found else
               f"it does not agree with the batch after it, at byte {found} "
               f"({_core.read_error_text(rc)})")
        span = f"offsets {lo}..{hi}" if hi > lo else f"offset {lo}"
        exc = CorruptRecordError(
            f"corrupt batch at byte {bad} of {self.log_path}: {why}; {span} cannot be read. "
            f"Seek to {hi + 1} to read on past the damage (`kstore consume --offset {hi + 1}`); "
            f"`kstore verify` lists every damaged batch")
        return exc.locate(path=str(self.log_path), position=bad, offset=lo, last_offset=hi)

    def find_time(self, timestamp: int, min_offset: int = 0) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after ``min_offset`` (the log start)
        with timestamp >= ``timestamp``, or None. The time index only says where to start
        scanning: records of the batch it points into that share the timestamp count too."""
        size = self.size
        if size == 0:
            return None
        app = self.appender
        if app is not None:
            entries = app.time_entries
            slot, _, rel = (_core.time_index_lookup(self.time_index.mm, entries, timestamp)
                            if entries and self.time_index.mm is not None else (-1, -1, 0))
        else:
            self._ensure_indexes()
            slot, _, rel = self.time_index.lookup(timestamp)
        start_offset = self.base_offset + rel if slot >= 0 else self.base_offset
        pos = self._start_position(start_offset)
        mm = self._mapping(size)
        while True:
            pos = _core.find_timestamp(mm, timestamp, pos, size)
            if pos >= size:
                return None
            batch = _core.read_batch(mm, pos)
            for r in batch.records():
                if r.timestamp >= timestamp and r.offset >= min_offset:
                    return r.offset, r.timestamp
            pos += batch.size

    @property
    def max_timestamp(self) -> tuple[int, int]:
        """(largest timestamp in the segment, its offset), (-1, -1) when none."""
        app = self.appender
        if app is not None:
            return app.max_timestamp, app.offset_of_max_timestamp
        if self._max_ts is None:
            self._ensure_indexes()
            last = self.time_index.last_entry()
            self._max_ts = (last[0], self.base_offset + last[1]) if last else (-1, -1)
        return self._max_ts

    def last_modified_ms(self) -> int:
        return int(os.path.getmtime(self.log_path) * 1000)

    # -- durability and closing ----------------------------------------------------------------

    def flush(self) -> None:
        if self.appender is not None:
            self.appender.persist_indexes()
        if self._wfd >= 0:
            os.fsync(self._wfd)
        else:
            fd = os.open(self.log_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.offset_index.flush()
        self.time_index.flush()

    def truncate_to(self, offset: int) -> int:
        """Drop every batch whose base offset >= ``offset`` (whole batches only); the segment is
        active afterwards. Returns the new size."""
        self._ensure_indexes()
        size = self.size
        mm_pos = 0
        if size:
            with open(self.log_path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                pos = _core.find_offset(mm, offset, 0, size)
                # keep a batch that straddles offset only if it starts below it
                if pos < size and int.from_bytes(mm[pos:pos + 8], "big") < offset:
                    pos += int.from_bytes(mm[pos + 8:pos + 12], "big") + 12
                mm_pos = pos
        was_active = self.is_active
        if was_active:
            self.deactivate()
        self.close_files()
        with open(self.log_path, "r+b") as w:
            w.truncate(mm_pos)
            os.fsync(w.fileno())
        self.recover(active=True)
        return mm_pos

    def close_files(self) -> None:
        """Release the read mapping and fd (slices already handed out keep their own)."""
        with self._map_lock:
            self._map = None
            self._map_size = 0
            self._file = None

    def close(self) -> None:
        if self.is_active:
            self.deactivate()
        self.offset_index.close()
        self.time_index.close()
        self.close_files()

    def paths(self) -> list[Path]:
        """The segment's files: .log, .index, .timeindex."""
        return [self.log_path, self.offset_index.path, self.time_index.path]

    def abandon(self) -> None:
        """Release every fd and mapping without writing anything (a close that failed, e.g.
        on a full disk). Index entries not yet persisted are lost; recovery rebuilds them."""
        app = self.appender
        if app is not None:
            app.detach_indexes()
            self.appender = None
        if self._wfd >= 0:
            try:
                os.close(self._wfd)
            except OSError:
                pass
            self._wfd = -1
        for idx in (self.offset_index, self.time_index):
            try:
                idx.close()
            except OSError:
                idx.fd = -1
                idx.mm = None
        self.close_files()

    def rename_deleted(self) -> list[Path]:
        """Rename the files to ``*.deleted`` (readers holding fds or maps keep working)."""
        self.close()
        out = []
        txnindex = self.log_path.with_suffix(".txnindex")
        for p in (self.log_path, self.offset_index.path, self.time_index.path, txnindex):
            if p.exists():
                q = p.with_name(p.name + ".deleted")
                os.replace(p, q)
                out.append(q)
        return out


@dataclass(frozen=True)
class CutReport:
    """What ``Segment.recover`` cut: bytes [position, position + size) of the segment, holding
    offsets from ``first_offset`` (the next offset the log hands out) up to ``last_offset`` as
    far as readable headers say (None: none readable). ``side_file`` holds exactly those bytes
    (None when they were a ``partial_write`` or all zero)."""

    position: int
    size: int
    first_offset: int
    last_offset: int | None
    side_file: Path | None
    partial_write: bool


class _NeedsRecovery(Exception):
    pass


class SegmentGone(KafkaStorageError, register=False):
    """A segment's file is not there. Beside a writer that is routine (retention deleted it,
    compaction merged it): the PartitionLog refreshes and reads on, or raises
    OffsetOutOfRangeError when the offset went with it."""


def _scan_file(path: Path, start: int, size: int, check_crc: bool) -> _core.ScanResult | None:
    if size <= start:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
        res = _core.scan(mm, start, size, check_crc, True)
    return res


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


def _first_batch_max_timestamp(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(_core.HEADER_SIZE)
    if len(head) < _core.HEADER_SIZE:
        return -1
    return int.from_bytes(head[35:43], "big", signed=True)


def _first(bad: np.ndarray, start: int, mm: mmap.mmap, size: int) -> int:
    res = _core.scan(mm, start, size, False, False, int(bad[0]) + 1)
    return int(res.positions[-1]) if len(res) else start
