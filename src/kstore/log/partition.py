"""PartitionLog: one partition's log on disk in Kafka's layout.

    log = PartitionLog.open("data/clicks-0")
    base, last, _ = log.append_batch(raw_batch)      # sealed RecordBatch v2 bytes
    slice_ = log.read(base)                           # FileSlice: zero-copy, sendfile-able
    log.close()                                       # clean shutdown: next open does not scan

One writer per directory (an fcntl lock on ``<dir>/.lock``), any number of readers: threads of
the writer's process read without locks; other processes open with ``read_only=True`` and see
new batches as they are appended, never a partial one.

Durability: by default an appended batch is in the page cache when ``append_batch`` returns (it
survives the death of the process, not of the machine). ``flush.messages`` and ``flush.ms`` add
fsyncs; ``flush()`` forces one. The recovery point (Kafka's ``recovery-point-offset-checkpoint``
in the parent directory) only advances after an fsync. A clean ``close()`` leaves a marker so
that the next open trusts the files; otherwise the next open re-checks every batch after the
recovery point with the C scanner, rebuilds the indexes, and cuts a torn or corrupt tail, keeping
cut bytes that are not a half-written last batch in side files (``kstore.log.quarantine``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kstore import _core
from kstore.config import resolve_config
from kstore.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidRequestError,
    KafkaStorageError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    UnknownTopicOrPartitionError,
)
from kstore.log import quarantine
from kstore.log.checkpoint import (
    LOG_START_OFFSET,
    RECOVERY_POINT,
    CheckpointFile,
    atomic_write,
    fsync_dir,
    lock_directory,
    lock_shared,
    share_lock,
)
from kstore.log.fileslice import FileSlice
from kstore.log.segment import Segment, SegmentGone, _NeedsRecovery, _scan_file
from kstore.log.txn import (
    ABORT,
    COMMIT,
    AbortedTxn,
    TxnState,
    encode_control_batch,
    write_txnindex_entries,
)
from kstore.topic import is_internal_topic, refuse_internal

log = logging.getLogger("kstore.log")

CLEAN_SHUTDOWN_MARKER = ".kstore_cleanshutdown"
LOCK_FILE = ".lock"
#: The shared tail of a partition several processes append to (csrc/shared.h), mapped by each.
TAIL_FILE = ".kstore-tail"
LEADER_EPOCH_CHECKPOINT = "leader-epoch-checkpoint"
EARLIEST_TIMESTAMP = -2  # ListOffsets: the log start offset
LATEST_TIMESTAMP = -1  # ListOffsets: the log end offset
DEFAULT_MAX_BYTES = 1024 * 1024


def parse_partition_dir(name: str) -> tuple[str, int]:
    """Kafka splits ``<topic>-<partition>`` at the last ``-``; other names map to (name, 0)."""
    topic, sep, part = name.rpartition("-")
    if sep and topic and part.isdigit():
        return topic, int(part)
    return name, 0


@dataclass(frozen=True)
class SegmentInfo:
    base_offset: int
    size: int
    max_timestamp: int
    path: Path
    active: bool


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the log found: ``clean`` (marker present, nothing scanned) or which
    segments were scanned, how many bytes were cut from the tail and why, and the side files
    that hold the cut bytes."""

    clean: bool
    scanned_segments: int
    truncated_bytes: int
    reason: str | None
    seconds: float
    side_files: tuple[Path, ...] = ()  # where the cut bytes went (kstore.log.quarantine)


class PartitionLog:
    """One partition's log. Use ``PartitionLog.open``."""

    def __init__(self, directory: Path, config: dict[str, Any], read_only: bool,
                 clock: Callable[[], int]) -> None:
        self.directory = directory
        self.topic, self.partition = parse_partition_dir(directory.name)
        self.config = config
        self.read_only = read_only
        self._clock = clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._async_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._async_lock = threading.Lock()
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._active: Segment | None = None
        self._ro_leo = 0
        self._fast: _core.AppendPath | None = None  # None when read-only or closed
        self._log_start = 0
        self._ro_recovery_point = 0
        self._lock_fd = -1
        self._closed = False
        self._flush_threads: list[threading.Thread] = []
        self._pending_deletes: list[tuple[float, list[Path]]] = []
        self._delete_timer: threading.Timer | None = None
        self.recovery: RecoveryReport | None = None
        self._txn: TxnState | None = None  # built on first use (kstore.log.txn)
        self._signal: Any = None  # a Store's DataSignal: wakes consumers of any partition
        key = (self.topic, self.partition)
        self._key = key
        # Appends to an internal topic come only from kstore's offsets code (_internal=True).
        self._internal = is_internal_topic(self.topic)
        # Shared mode (several processes append): the mapped tail, its file, what this process
        # last saw of it.
        self._tail: _core.SharedTail | None = None
        self._tail_map: mmap.mmap | None = None
        self._tail_fd = -1
        self._tail_depth = 0
        self._closing = False
        self._seen_gen = -1
        self._rp_file = CheckpointFile.for_path(directory.parent / RECOVERY_POINT)
        self._lso_file = CheckpointFile.for_path(directory.parent / LOG_START_OFFSET)

    # ==========================================================================================
    # Opening

    @classmethod
    def open(cls, directory: str | os.PathLike, config: Mapping[str, Any] | None = None,
             read_only: bool = False, *, clock: Callable[[], int] | None = None,
             shared: bool = False) -> "PartitionLog":
        """Open (creating it unless ``read_only``) the log in ``directory``, e.g. ``clicks-0/``.

        ``config`` uses Kafka's topic config names (``segment.bytes``, ``flush.messages``...).
        ``shared``: other processes (and other shared opens in this one) may append to the
        same log at the same time; appends are serialised by a robust process-shared mutex in
        ``<dir>/.kstore-tail`` (see ``csrc/shared.h``). Without it the log is this open's
        alone. Raises LogLockedError if a writer of the other kind has it open,
        KafkaStorageError when the directory cannot be used.
        """
        directory = Path(directory)
        self = cls(directory, resolve_config(config), read_only, clock or _core.now_ms)
        try:
            if read_only:
                self._open_read_only()
            elif shared:
                self._open_shared()
            else:
                self._open_writer()
        except BaseException:
            self._release()
            raise
        return self

    def _open_writer(self, locked: bool = False) -> None:
        d = self.directory
        if not locked:
            self._lock_fd = lock_directory(d, "log directory")
        if not os.access(d, os.W_OK):
            raise KafkaStorageError(f"log directory {d} is not writable")
        started = time.perf_counter()
        marker = d / CLEAN_SHUTDOWN_MARKER
        clean = marker.exists()
        if clean:
            # Deleted at once, so that a crash from here on counts as unclean next time.
            marker.unlink()
            fsync_dir(d)
        self._remove_leftovers()
        bases = self._segment_bases()
        lso_ck = self._lso_file.get(self._key, 0) or 0
        rp = self._rp_file.get(self._key, 0) or 0
        segs = [Segment.load(d, b, self.config) for b in bases]
        scanned, cut, why = 0, 0, None
        side_files: list[Path] = []
        if segs:
            if clean:
                try:
                    segs[-1].open_active()
                except _NeedsRecovery as exc:
                    log.warning("%s: %s; recovering it", d, exc)
                    clean = False
                    rp = segs[-1].base_offset
            if not clean:
                start = max(bisect.bisect_right(bases, rp) - 1, 0)
                for i in range(start, len(segs)):
                    last = i == len(segs) - 1
                    moved: list[tuple[Path, str]] = []
                    later = segs[i + 1:]

                    def move_later(m: list[tuple[Path, str]] = moved,
                                   s: list[Segment] = later) -> None:
                        m.extend(self._quarantine(s))

                    seg_cut, seg_why = segs[i].recover(active=last, before_cut=move_later)
                    scanned += 1
                    report = segs[i].cut
                    if seg_cut and report is not None:
                        cut, why = seg_cut, seg_why
                        self._log_cut(segs[i], seg_why, moved)
                        if report.side_file is not None:
                            side_files.append(report.side_file)
                        side_files += [side for side, _ in moved]
                        if not last:
                            segs = segs[:i + 1]
                            segs[i].open_active()
                        break
        if segs and segs[-1].next_offset is not None and segs[-1].next_offset < lso_ck:
            log.warning("%s: segments end at %d, below the log start offset %d; removing them",
                        d, segs[-1].next_offset, lso_ck)
            for seg in segs:
                for p in seg.rename_deleted():
                    p.unlink()
            segs = []
        if not segs:
            segs = [Segment.create(d, lso_ck, self.config)]
            self._write_leader_epoch_checkpoint(lso_ck)
            fsync_dir(d)
        self._set_segments(segs)
        self._use_active(segs[-1])
        self._log_start = max(lso_ck, segs[0].base_offset)
        self._recovery_point = self._leo if clean else min(rp, self._leo)
        self.recovery = RecoveryReport(clean, scanned, cut, why, time.perf_counter() - started,
                                       tuple(side_files))

    # ==========================================================================================
    # Shared mode: several processes append (csrc/shared.h)
    #
    # Every process maps <dir>/.kstore-tail and appends under its robust mutex: it locks, brings
    # its view of the active segment up to date when the tail's seq moved (another process
    # appended, rolled, deleted or cleaned segments), appends, publishes, unlocks. The first
    # process to open the partition (no other writer holds <dir>/.lock) recovers it as an
    # exclusive writer does and initialises the tail; later ones attach to it. Opens and closes
    # are serialised by an flock on the tail file. The last process to close writes the
    # clean-shutdown marker. A process that dies holding the mutex is noticed by the next one
    # to lock it (EOWNERDEAD), which rebuilds the tail from the files (_shared_repair).

    def _open_shared(self) -> None:
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            self._tail_fd = os.open(d / TAIL_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise KafkaStorageError(f"cannot use {d} as a log directory: {exc}") from exc
        fcntl.flock(self._tail_fd, fcntl.LOCK_EX)  # one open or close of this log at a time
        try:
            # Under the tail's flock: whether we are first cannot change until we let go. (A
            # failed flock conversion drops the lock held before, so .lock is never probed
            # twice through one fd.)
            self._lock_fd, first = lock_shared(d, "log directory")
            if os.fstat(self._tail_fd).st_size < _core.TAIL_FILE_SIZE:
                # Allocated, not sparse: a store into a mapped hole on a full disk is SIGBUS.
                try:
                    os.posix_fallocate(self._tail_fd, 0, _core.TAIL_FILE_SIZE)
                except OSError as exc:
                    raise KafkaStorageError(
                        f"cannot make {d / TAIL_FILE}: {exc.strerror or exc}; free disk "
                        f"space and retry") from exc
            self._tail_map = mmap.mmap(self._tail_fd, _core.TAIL_FILE_SIZE)
            tail = _core.SharedTail(self._tail_map)
            if first:
                self._open_writer(locked=True)
                tail.init(int.from_bytes(os.urandom(8), "little"))
                tail.log_start = self._log_start
                tail.segments_gen = 1
                self._tail = tail
                assert self._fast is not None
                self._fast.tail = tail
                self._publish()
                tail.mark_valid()
                share_lock(self._lock_fd, d, "log directory")
            else:
                if not tail.valid:
                    raise KafkaStorageError(
                        f"{d / TAIL_FILE} is in use by another process but is not a tail this "
                        f"kstore can share (another version?); close the other writers first")
                self._tail = tail
                if tail.lock():
                    try:
                        self._shared_repair()
                    finally:
                        tail.unlock()
                else:
                    try:
                        self._shared_reload()
                    finally:
                        tail.unlock()
                self.recovery = RecoveryReport(True, 0, 0, None, 0.0)
        finally:
            fcntl.flock(self._tail_fd, fcntl.LOCK_UN)

    @property
    def _seen_seq(self) -> int:
        """The tail's seq as this process last published or took it over (kept by the
        AppendPath, whose fast path publishes without coming back here)."""
        f = self._fast
        return f.seen_seq if f is not None else -1

    @_seen_seq.setter
    def _seen_seq(self, value: int) -> None:
        if self._fast is not None:
            self._fast.seen_seq = value

    def _publish(self, segments_changed: bool = False) -> None:
        """Store this process's view of the tail in the shared tail (the mutex is held)."""
        tail = self._tail
        assert tail is not None and self._active is not None and self._fast is not None
        tail.log_start = self._log_start
        if segments_changed:
            tail.segments_gen = tail.segments_gen + 1
        app = self._active.appender
        assert app is not None
        f = self._fast
        self._seen_seq = app.publish(tail, f.leo, f.recovery_point, f.last_flush_ms)
        self._seen_gen = tail.segments_gen

    def _tail_lock(self) -> None:
        """Hold the shared tail's mutex (reentrant within the thread holding ``_lock``) and be
        up to date with it."""
        tail = self._tail
        assert tail is not None
        if self._tail_depth:
            self._tail_depth += 1
            return
        if tail.lock():
            self._tail_depth = 1
            try:
                self._shared_repair()
            except BaseException:
                self._tail_unlock()
                raise
            return
        self._tail_depth = 1
        if tail.seq != self._seen_seq:
            try:
                self._shared_sync()
            except BaseException:
                self._tail_unlock()
                raise

    def _tail_unlock(self) -> None:
        self._tail_depth -= 1
        if self._tail_depth == 0 and self._tail is not None:
            self._tail.unlock()

    @contextlib.contextmanager
    def _tail_held(self, segments_changed: bool = False) -> Iterator[None]:
        """``_tail_lock``/``_tail_unlock`` around a block (nothing when not shared); with
        ``segments_changed`` the block's changes to closed segments are published."""
        if self._tail is None:
            yield
            return
        self._tail_lock()
        try:
            yield
            if segments_changed and self._active is not None and self._active.appender is not None:
                self._publish(segments_changed=True)
        finally:
            self._tail_unlock()

    def mark_deleted(self) -> None:
        """Shared mode: the topic is being deleted; every process appending to or reading this
        log gets UnknownTopicOrPartitionError from its next append or read."""
        if self._tail is None:
            return
        with self._lock, self._tail_held():
            self._tail.deleted = 1
            self._seen_seq = self._tail.bump()

    def _shared_refresh(self) -> None:
        """Readers: pick up what other processes published (cheap when nothing moved)."""
        tail = self._tail
        if tail is None or tail.seq == self._seen_seq or self._closed:
            return
        with self._lock:
            if self._closed or tail.seq == self._seen_seq:
                return
            self._tail_lock()
            self._tail_unlock()

    def _shared_sync(self) -> None:
        """Under the mutex: take over what other processes published since we last looked."""
        tail = self._tail
        assert tail is not None and self._active is not None and self._fast is not None
        if tail.deleted and not self._closing:
            raise UnknownTopicOrPartitionError(
                f"{self.topic}-{self.partition} was deleted by another process")
        if tail.segments_gen != self._seen_gen or tail.active_base != self._active.base_offset:
            self._shared_reload()
            return
        app = self._active.appender
        assert app is not None
        app.load_shared(tail)
        f = self._fast
        f.leo = tail.next_offset
        f.recovery_point = tail.recovery_point
        f.last_flush_ms = tail.last_flush_ms
        self._log_start = tail.log_start
        self._seen_seq = tail.seq

    def _shared_reload(self) -> None:
        """Under the mutex: rebuild the segment list from the directory and the tail (another
        process rolled, deleted or compacted segments, or rebuilt the tail)."""
        tail = self._tail
        assert tail is not None
        d = self.directory
        active_base = tail.active_base
        old = {s.base_offset: s for s in self._segments}
        old_active = self._active
        segs: list[Segment] = []
        for b in self._segment_bases():
            if b > active_base:
                continue  # a roll that died before publishing: the next repair removes it
            if b == active_base:
                seg = Segment(d, b, self.config)
                seg.attach_active(tail)
                seg.ro_inode = _inode(seg.log_path)
            else:
                seg = old.get(b)  # type: ignore[assignment]
                ino = _inode(d / f"{b:020d}.log")
                if seg is None or seg.is_active or seg.ro_inode != ino:
                    try:
                        seg = Segment.load(d, b, self.config)
                    except SegmentGone:
                        continue
                    seg.ro_inode = ino
            segs.append(seg)
        if not segs or segs[-1].base_offset != active_base:
            raise KafkaStorageError(f"{d}: the active segment {active_base:020d}.log another "
                                    f"process appends to is missing")
        for i in range(len(segs) - 1):
            segs[i].next_offset = segs[i + 1].base_offset
        if old_active is not None and old_active is not segs[-1]:
            old_active.detach_shared(None)
        for b, seg in old.items():
            if seg is not old_active and seg not in segs:
                seg.close_files()
        self._set_segments(segs)
        self._active = None
        self._use_active(segs[-1])
        f = self._fast
        assert f is not None
        f.leo = tail.next_offset
        f.recovery_point = tail.recovery_point
        f.last_flush_ms = tail.last_flush_ms
        self._log_start = max(tail.log_start, segs[0].base_offset)
        self._seen_seq = tail.seq
        self._seen_gen = tail.segments_gen

    def _shared_repair(self) -> None:
        """Under the mutex, which a process died holding (mid-append, mid-roll, mid-delete or
        mid-swap): rebuild the tail from the files as recovery does after a crash. Whole
        batches it wrote stay; a torn one is cut (kept in a side file unless it was a partial
        write at the end); a segment it created but never used is removed."""
        tail = self._tail
        assert tail is not None
        d = self.directory
        started = time.perf_counter()
        for seg in self._segments:
            if seg.is_active:
                seg.detach_shared(None)
            else:
                seg.close_files()
        self._active = None
        self._remove_leftovers()
        bases = self._segment_bases()
        # A roll publishes before anything is written to the new segment: an empty segment past
        # the published active one is a roll that died half way.
        while len(bases) > 1 and bases[-1] > tail.active_base and \
                os.path.getsize(d / f"{bases[-1]:020d}.log") == 0:
            _unlink_all(Segment(d, bases[-1], self.config).paths())
            bases.pop()
        if not bases:
            segs = [Segment.create(d, max(tail.next_offset, tail.log_start), self.config)]
            cut, why = 0, None
        else:
            segs = []
            for b in bases[:-1]:
                try:
                    seg = Segment.load(d, b, self.config)
                except SegmentGone:
                    continue
                seg.ro_inode = _inode(seg.log_path)
                segs.append(seg)
            last = Segment.load(d, bases[-1], self.config)
            cut, why = last.recover(active=True)
            if cut:
                self._log_cut(last, why, [])
            last.ro_inode = _inode(last.log_path)
            segs.append(last)
        for i in range(len(segs) - 1):
            segs[i].next_offset = segs[i + 1].base_offset
        self._set_segments(segs)
        self._use_active(segs[-1])
        f = self._fast
        assert f is not None and segs[-1].appender is not None
        f.leo = segs[-1].appender.next_offset
        f.recovery_point = min(tail.recovery_point, f.leo)
        self._log_start = max(tail.log_start, segs[0].base_offset)
        fsync_dir(d)
        self._publish(segments_changed=True)
        log.warning("%s: a process died while appending; rebuilt the log's tail from the files "
                    "in %.3f s (log end %d%s)", d, time.perf_counter() - started, f.leo,
                    f", cut {cut} bytes: {why}" if cut else "")

    def _close_shared(self) -> list[OSError]:
        """Close in shared mode. The last process out closes the log as an exclusive writer
        does (trimmed indexes, clean-shutdown marker); the others just let go."""
        failures: list[OSError] = []
        tail = self._tail
        assert tail is not None
        self._closing = True
        fcntl.flock(self._tail_fd, fcntl.LOCK_EX)
        try:
            self._tail_lock()
            try:
                deleted = bool(tail.deleted)  # the folder is going: nothing more to write
                if not deleted:
                    try:
                        self.flush()
                    except OSError as exc:
                        failures.append(exc)
                last = not deleted
                try:
                    if last:
                        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    last = False
                if last:
                    for seg in self._segments:
                        try:
                            seg.close()
                        except OSError as exc:
                            failures.append(exc)
                            seg.abandon()
                    if not failures:
                        try:
                            atomic_write(self.directory / CLEAN_SHUTDOWN_MARKER,
                                         b'{"version":0}\n')
                        except OSError as exc:
                            failures.append(exc)
                    # The next open is a first open: it recovers and initialises the tail.
                    self._tail_map[:8] = bytes(8)  # type: ignore[index]
                else:
                    active = self._active
                    if active is not None and active.appender is not None:
                        self._publish()  # index entries this process persisted
                    for seg in self._segments:
                        if seg.is_active:
                            seg.detach_shared(None)
                        else:
                            seg.close_files()
                            seg.offset_index.close()
                            seg.time_index.close()
            finally:
                # Unlocked before the mapping goes: a robust mutex left locked in unmapped
                # memory would break this thread's robust list.
                self._tail_depth = 1
                self._tail_unlock()
                tail.release()
            for _, paths in self._pending_deletes:
                _unlink_all(paths)
        finally:
            self._tail = None
            self._release()  # .lock before the tail's flock: the next opener sees us gone
        return failures

    def _quarantine(self, later: list[Segment]) -> list[tuple[Path, str]]:
        """Recovery cuts the log before ``later``: move their .log files to side files (their
        indexes go) instead of deleting them. Returns (side file, what it holds) for each."""
        moved = []
        for seg in later:
            seg.close()
            last = quarantine.last_offset_in(seg.log_path)
            side = quarantine.keep_segment(seg.log_path)
            for idx in (seg.offset_index.path, seg.time_index.path):
                idx.unlink(missing_ok=True)
            if side is not None:
                moved.append((side, f"{side} (offsets {seg.base_offset}.."
                                    f"{'?' if last is None else last}, was {seg.log_path.name})"))
        fsync_dir(self.directory)
        return moved

    def _log_cut(self, seg: Segment, why: str | None, moved: list[tuple[Path, str]]) -> None:
        c = seg.cut
        assert c is not None
        last = "?" if c.last_offset is None else str(c.last_offset)
        where = (f"{c.size} bytes of {seg.log_path} from byte {c.position} (offsets "
                 f"{c.first_offset}..{last} as far as their headers can be read): {why}")
        if c.side_file is not None:
            log.warning("recovery cut %s; they are kept, byte for byte, in %s", where,
                        c.side_file)
        elif c.partial_write:
            log.warning("recovery cut %s: a batch the crash left half written", where)
        else:
            log.warning("recovery cut %s: every cut byte was zero", where)
        for _, what in moved:
            log.warning("recovery removed the segment after the cut from the log: moved to %s",
                        what)

    def quarantined_files(self) -> list[Path]:
        """Side files holding bytes earlier recoveries cut (see ``kstore.log.quarantine``)."""
        return quarantine.side_files(self.directory)

    def _open_read_only(self) -> None:
        # A partition the writer has not created yet reads as empty until it appears.
        d = self.directory
        segs = []
        for b in self._segment_bases():
            try:
                segs.append(Segment.load(d, b, self.config))
            except SegmentGone:
                continue  # retention or compaction took it since the listing
        for i, seg in enumerate(segs):
            seg.read_only = True
            seg.ro_inode = _inode(seg.log_path)
            if i < len(segs) - 1:
                # Closed by the writer: its size is final; no need to scan it.
                seg.ro_complete = True
                seg.next_offset = segs[i + 1].base_offset
        if segs:
            segs[-1].ro_open_tail()
        self._set_segments(segs)
        lso_ck = self._lso_file.get(self._key, 0) or 0
        self._log_start = max(lso_ck, self._bases[0]) if self._bases else lso_ck
        self._leo = self._log_start
        self._ro_refresh()
        self.recovery = RecoveryReport(False, 0, 0, None, 0.0)

    def _segment_bases(self) -> list[int]:
        bases = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            if self.read_only:
                return []
            raise
        for name in names:
            if name.endswith(".log"):
                stem = name[:-4]
                if stem.isdigit():
                    bases.append(int(stem))
        return sorted(bases)

    def _remove_leftovers(self) -> None:
        """Kafka's load step 2a: drop *.deleted and *.cleaned, finish interrupted swaps, drop
        index files without a .log."""
        d = self.directory
        names = os.listdir(d)
        for n in names:
            if n.endswith(".deleted") or n.endswith(".cleaned") or n.endswith(".tmp"):
                (d / n).unlink(missing_ok=True)
        swaps = sorted(n for n in os.listdir(d) if n.endswith(".swap"))
        # Index .swap files go first and the .log last, so an index .swap without its .log.swap
        # is a swap that never started: it must not replace the original's index (Kafka
        # drops index swap files too).
        log_swaps = {n.split(".")[0] for n in swaps if n.endswith(".log.swap")}
        for n in swaps:
            if n.split(".")[0] not in log_swaps:
                (d / n).unlink(missing_ok=True)
        swaps = [n for n in swaps if n.split(".")[0] in log_swaps]
        if swaps:
            # A finished compaction output (.swap) replaces every original segment whose base
            # lies in the range it covers, [its base, its next offset): Kafka's load step 2a.
            for n in swaps:
                if not n.endswith(".log.swap"):
                    continue
                base = int(n.split(".")[0])
                size = os.path.getsize(d / n)
                res = _scan_file(d / n, 0, size, check_crc=False) if size else None
                end = int(res.last_offsets[-1]) + 1 if res is not None and len(res) else base + 1
                for b in self._segment_bases():
                    if base <= b < end:
                        for ext in (".log", ".index", ".timeindex"):
                            (d / f"{b:020d}{ext}").unlink(missing_ok=True)
            for n in swaps:
                os.replace(d / n, d / n[: -len(".swap")])
            fsync_dir(d)
        logs = {n[:-4] for n in os.listdir(d) if n.endswith(".log")}
        for n in os.listdir(d):
            for ext in (".index", ".timeindex", ".txnindex", ".snapshot"):
                if n.endswith(ext) and n[: -len(ext)] not in logs and ext != ".snapshot":
                    (d / n).unlink(missing_ok=True)

    def _write_leader_epoch_checkpoint(self, start: int) -> None:
        # kstore has one leader epoch, 0, starting at the log start (kafka-storage.md 4.1).
        atomic_write(self.directory / LEADER_EPOCH_CHECKPOINT, f"0\n1\n0 {start}\n".encode())

    def _set_segments(self, segs: list[Segment]) -> None:
        # Readers take these lists without a lock: always replace, never mutate.
        self._segments = list(segs)
        self._bases = [s.base_offset for s in segs]

    # ==========================================================================================
    # State

    @property
    def _leo(self) -> int:
        f = self._fast
        return f.leo if f is not None else self._ro_leo

    @_leo.setter
    def _leo(self, value: int) -> None:
        if self._fast is not None:
            self._fast.leo = value
        else:
            self._ro_leo = value

    @property
    def _recovery_point(self) -> int:
        f = self._fast
        return f.recovery_point if f is not None else self._ro_recovery_point

    @_recovery_point.setter
    def _recovery_point(self, value: int) -> None:
        if self._fast is not None:
            self._fast.recovery_point = value
        else:
            self._ro_recovery_point = value

    def _use_active(self, seg: Segment) -> None:
        """Append to ``seg`` from now on (under the lock)."""
        assert seg.appender is not None
        self._active = seg
        if self._fast is None:
            self._fast = _core.AppendPath(seg.appender, seg.appender.next_offset)
            self._fast.tail = self._tail
            self._fast.configure(self.config, None if self._clock is _core.now_ms else self._clock)
            self._fast.last_flush_ms = self._clock()
        else:
            self._fast.appender = seg.appender

    @property
    def log_start_offset(self) -> int:
        if self._tail is not None:
            self._shared_refresh()
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        """The next offset to be written (also the high watermark: kstore has no replicas)."""
        if self.read_only:
            self._ro_refresh()
        elif self._tail is not None:
            self._shared_refresh()
        return self._leo

    high_watermark = log_end_offset

    @property
    def cached_log_end_offset(self) -> int:
        """The log end as last seen, without looking for new data (a read-only log's
        ``log_end_offset`` rereads the directory): every read so far stayed below it."""
        return self._leo

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def size_bytes(self) -> int:
        if self._tail is not None:
            self._shared_refresh()
        return sum(s.size for s in self._segments)

    @property
    def closed(self) -> bool:
        return self._closed

    def segments(self) -> list[SegmentInfo]:
        if self._tail is not None:
            self._shared_refresh()
        return [SegmentInfo(s.base_offset, s.size, s.max_timestamp[0], s.log_path, s.is_active)
                for s in self._segments]

    def __repr__(self) -> str:
        return (f"<PartitionLog {self.directory} [{self._log_start}, {self._leo}) "
                f"{len(self._segments)} segments{' read-only' if self.read_only else ''}>")

    def __enter__(self) -> "PartitionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"log {self.directory} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"log {self.directory} was opened read_only")

    # ==========================================================================================
    # Appending

    def append_batches(self, buf: Any, *, validate_records: bool = True,
                       verify_crc: bool = True, _internal: bool = False) -> tuple[int, int, int]:
        """Append one sealed RecordBatch v2, or several back to back, in one write.

        ``buf`` is any buffer and is never modified. The batches are validated in C (magic,
        sizes, CRC, and with ``validate_records`` the records, their count and offset deltas),
        given offsets, stamped with LogAppendTime if the topic asks, and written with one
        writev at the end of the active segment; the indexes are updated. Returns
        ``(first_offset, last_offset, log_append_time)`` (-1 for CreateTime topics).
        Raises CorruptRecordError, InvalidRecordError or RecordTooLargeError for bad batches
        (nothing is written), KafkaStorageError when the disk refuses (nothing is kept).

        ``verify_crc=False`` is for batches this process has just encoded itself (the
        Producer, ``append``/``append_many``): sizes, magic and counts are still checked, the
        CRC the encoder computed a moment ago is not recomputed.

        Raises InternalTopicError for a log of an internal topic (``__consumer_offsets``):
        only kstore's offsets code writes there.
        """
        if self._internal and not _internal:
            refuse_internal(self.topic, "append to")
        try:
            with self._lock:
                fast = self._fast
                if fast is None:
                    self._check_writable()
                    raise ClosedError(f"log {self.directory} is closed")
                if self._tail is not None:
                    result: Any = fast.append_shared(buf, validate_records, verify_crc)
                    if result.__class__ is int:
                        # Still locked: the tail needs rebuilding or taking over, or a roll or
                        # flush is due. Finish here.
                        self._tail_depth = 1
                        try:
                            if result == _core.SHARED_OWNER_DIED:
                                self._shared_repair()
                            elif self._tail.seq != self._seen_seq:
                                self._shared_sync()
                            result = self._append_locked(fast, buf, validate_records, verify_crc)
                            self._publish()
                        finally:
                            self._tail_unlock()
                else:
                    result = self._append_locked(fast, buf, validate_records, verify_crc)
        except OSError as exc:
            # A roll's file creation or fsync refused by the disk: the kstore error
            # (KAFKA_STORAGE_ERROR) as for the write itself.
            if isinstance(exc, KafkaStorageError):
                raise
            raise KafkaStorageError(
                f"append to {self.directory} failed: {exc.strerror or exc} (errno "
                f"{exc.errno}); free disk space and retry") from exc
        if self._waiters:
            with self._cond:
                self._cond.notify_all()
        if self._async_waiters:
            self._wake_async()
        sig = self._signal
        if sig is not None:
            # The version moves on every append, waiters or not: a consumer that found nothing
            # and is about to wait compares it and returns (no lost wake-up).
            sig.version += 1
            if sig.waiters:
                sig.notify()
        return result

    def _append_locked(self, fast: _core.AppendPath, buf: Any, validate_records: bool,
                       verify_crc: bool) -> Any:
        result: Any = fast.append(buf, validate_records, verify_crc)
        if result.__class__ is int:
            self._roll(result)  # the same AppendPath now points at the new segment
            result = fast.append(buf, False, False)
            if result.__class__ is int:
                raise InvalidRecordError(
                    f"batches of {len(memoryview(buf))} bytes cannot go into a fresh "
                    f"segment (roll reason {result})")
        if fast.needs_flush:
            try:
                self.flush()
            except OSError as exc:
                # The batches are in the log (readers see them): the append succeeded, and
                # saying otherwise would make a producer's retry store them twice. The
                # recovery point stays where it was; the next flush tries again.
                log.error("%s: offsets %d..%d are appended, but the flush that "
                          "flush.messages/flush.ms asked for failed: %s; they are in the page "
                          "cache, not yet known to be on disk (the next flush retries)",
                          self.directory, result[0], result[1], exc)
        return result

    append_batch = append_batches

    def update_config(self, config: Mapping[str, Any]) -> None:
        """Apply new topic config (Kafka names, already validated) to the next appends and
        segments; existing segments keep their size."""
        with self._lock:
            self.config = resolve_config(config)
            if self._fast is not None:
                self._fast.configure(self.config, None if self._clock is _core.now_ms else self._clock)
            for seg in self._segments:
                seg.config = self.config

    def append(self, value: Any, key: Any = None, headers: Any = None,
               timestamp: int | None = None) -> tuple[int, int, int]:
        """Append one record (a convenience over BatchBuilder)."""
        b = _core.BatchBuilder(compression=self._codec())
        b.append(value, key=key, headers=headers, timestamp=timestamp)
        return self.append_batch(b.build(), validate_records=False, verify_crc=False)

    def append_many(self, values: Any, keys: Any = None, timestamps: Any = None, *,
                    max_batch_bytes: int = 16384) -> tuple[int, int, int]:
        """Append many records, encoded into batches of ``max_batch_bytes`` in one call."""
        raw = _core.encode_batches(values, keys, timestamps, compression=self._codec(),
                                   max_batch_bytes=max_batch_bytes)
        return self.append_batches(raw, validate_records=False, verify_crc=False)

    def _codec(self) -> str:
        c = self.config["compression.type"]
        return "none" if c in ("producer", "uncompressed") else c

    def _roll(self, reason: int = 0) -> None:
        """Close the active segment and start a new one at the log end (under the lock)."""
        old = self._active
        assert old is not None
        if old.size == 0:
            return
        new_base = self._leo
        # The new segment first: when the disk refuses its files (no space, no inodes), the
        # old one is still active and appends carry on once there is room. The other order
        # left a deactivated segment (write fd closed) behind every later append.
        try:
            new = Segment.create(self.directory, new_base, self.config)
        except BaseException:
            _unlink_all(Segment(self.directory, new_base, self.config).paths())
            raise
        try:
            old.deactivate()
        except BaseException:
            new.abandon()
            _unlink_all(new.paths())
            raise
        self._set_segments(self._segments + [new])
        self._use_active(new)
        if self._tail is not None:
            self._publish()  # before anything is written to it: see _shared_repair
        fsync_dir(self.directory)
        # Kafka fsyncs everything below the new segment in the background, then moves the
        # recovery point there; appends do not wait for it.
        t = threading.Thread(target=self._flush_rolled, args=(old, new_base),
                             name=f"kstore-flush-{self.topic}-{self.partition}", daemon=True)
        self._flush_threads = [x for x in self._flush_threads if x.is_alive()] + [t]
        t.start()

    def roll(self) -> None:
        """Start a new active segment now (if the current one holds data)."""
        self._check_writable()
        with self._lock, self._tail_held():
            self._roll()

    def _flush_rolled(self, seg: Segment, upto: int) -> None:
        try:
            seg.flush()
        except (OSError, ValueError) as exc:
            log.warning("%s: background fsync of %s failed: %s", self.directory, seg.log_path, exc)
            return
        with self._lock:
            if self._closed:
                return
            with self._tail_held():
                if upto > self._recovery_point:
                    self._recovery_point = upto
                    try:
                        self._write_recovery_point()
                    except OSError as exc:  # the next flush writes it again
                        log.warning("%s: %s", self.directory, exc)
                    if self._tail is not None:
                        self._publish()

    # ==========================================================================================
    # Durability

    def flush(self) -> None:
        """fsync every segment holding unflushed data, then advance the recovery point."""
        self._check_writable()
        with self._lock, self._tail_held():
            upto = self._leo
            rp = self._recovery_point
            # Only segments holding offsets at or above the recovery point: a segment ends where
            # the next one starts (the active one at the log end).
            all_segs = self._segments
            ends = [n.base_offset for n in all_segs[1:]] + [upto]
            for seg, end in zip(all_segs, ends, strict=True):
                if end > rp:
                    seg.flush()
            if self._fast is not None:
                self._fast.last_flush_ms = self._clock()
            if upto > self._recovery_point:
                self._recovery_point = upto
                self._write_recovery_point()
                if self._tail is not None:
                    self._publish()

    def _write_recovery_point(self) -> None:
        self._rp_file.update({self._key: self._recovery_point})

    # ==========================================================================================
    # Reading

    def read(self, offset: int, max_bytes: int = DEFAULT_MAX_BYTES,
             max_offset: int | None = None, *, every_header: bool = False) -> FileSlice:
        """Whole batches starting with the one that holds ``offset``, up to ``max_bytes`` (a
        first batch larger than that is still returned whole, as Kafka does) and below
        ``max_offset``. Returns an empty slice at the log end. Never blocks appends.
        ``every_header``: check every batch header of the slice, also in reads over 64 KiB
        (which otherwise check those near their end): for bytes sent out unchecked (Fetch).

        Raises OffsetOutOfRangeError below the log start or past the log end.
        """
        self._check_open()
        if self.read_only and offset >= self._leo:
            self._ro_refresh()
        elif self._tail is not None:
            self._shared_refresh()
        for attempt in range(3):
            try:
                return self._read(offset, max_bytes, max_offset, every_header)
            except SegmentGone:
                # Retention or compaction removed a segment after this read picked it: read
                # again from the segments there are now (offsets that went with it are out of
                # range). Only a file removed outside kstore fails three times.
                if attempt == 2:
                    raise
                if self.read_only:
                    self._ro_refresh()
                elif self._tail is not None:
                    self._shared_refresh()
        raise AssertionError("unreachable")

    def _read(self, offset: int, max_bytes: int, max_offset: int | None,
              every_header: bool = False) -> FileSlice:
        lso, leo = self._log_start, self._leo
        if offset < lso or offset > leo:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.directory.name}: the log holds "
                f"[{lso}, {leo})")
        limit = leo if max_offset is None else min(max_offset, leo)
        segs = self._segments
        i = max(bisect.bisect_right(segs, offset, key=_base_offset) - 1, 0)
        for j in range(i, len(segs)):
            seg = segs[j]
            if seg.base_offset >= limit:
                break
            # A segment holds offsets below the next one's base; the last one is bounded by
            # its own log end.
            end = segs[j + 1].base_offset if j + 1 < len(segs) else None
            try:
                fs = seg.read(offset, max_bytes, limit, end, every_header)
            except CorruptRecordError as exc:
                exc.locate(topic=self.topic, partition=self.partition)
                exc.args = (f"{self.topic}-{self.partition}: {exc}",)
                raise
            if fs is not None:
                return fs
        return FileSlice.empty(offset)

    # ==========================================================================================
    # Transactions (kstore.log.txn)

    @property
    def transactions(self) -> TxnState:
        """This log's transactions, built from the log on first use."""
        t = self._txn
        if t is None:
            with self._lock:
                t = self._txn
                if t is None:
                    t = self._txn = TxnState(self)
        return t

    def last_stable_offset(self) -> int:
        """Kafka's LSO: the first offset of the oldest open transaction, else the log end.
        read_committed readers stop there."""
        return self.transactions.last_stable_offset()

    def aborted_transactions(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions that may hold offsets in ``[start, end)`` (a Fetch's
        aborted_transactions)."""
        return self.transactions.aborted_between(start, end)

    def write_marker(self, producer_id: int, producer_epoch: int, commit: bool,
                     coordinator_epoch: int = 0) -> int:
        """Append a COMMIT or ABORT control batch for the producer's transaction here (the
        broker's WriteTxnMarkers) and, for an ABORT of a transaction that wrote data, its
        ``.txnindex`` entry. Returns the marker's offset."""
        raw = encode_control_batch(producer_id, producer_epoch, commit, coordinator_epoch,
                                   self._clock())
        txn = self.transactions
        with self._lock:
            # Brings the state up to the marker (reads nothing when the writer noted its
            # batches), so that the marker itself is noted, not read back.
            txn.refresh()
            first, _, _ = self.append_batches(raw, validate_records=False, verify_crc=False,
                                              _internal=True)
            txn.note(producer_id, first, first, COMMIT if commit else ABORT)
            txn.refresh()  # a no-op unless the marker came after batches not yet scanned
            if not commit and txn.aborted and txn.aborted[-1].last_offset == first:
                seg = self._segments[bisect.bisect_right(self._bases, first) - 1]
                try:
                    write_txnindex_entries(self.directory, seg.base_offset, [txn.aborted[-1]])
                except OSError as exc:  # the marker is in the log: recovery writes it again
                    log.error("%s: the .txnindex entry for the abort at offset %d was not "
                              "written (%s); reopening the log rebuilds it", self.directory,
                              first, exc)
        return first

    def read_records(self, offset: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[_core.Record]:
        """Decoded records from ``offset`` on (a convenience: copies; skips records below it)."""
        return [r for r in self.read(offset, max_bytes).records() if r.offset >= offset]

    def offset_for_time(self, timestamp: int) -> int | None:
        """Kafka ListOffsets: the first offset whose timestamp >= ``timestamp``, or None.
        ``EARLIEST_TIMESTAMP`` (-2) gives the log start, ``LATEST_TIMESTAMP`` (-1) the end."""
        self._check_open()
        if timestamp == EARLIEST_TIMESTAMP:
            return self.log_start_offset
        if timestamp == LATEST_TIMESTAMP:
            return self.log_end_offset
        if self.read_only:
            self._ro_refresh()
        elif self._tail is not None:
            self._shared_refresh()
        for seg in self._segments:
            if seg.max_timestamp[0] < timestamp:
                continue
            found = seg.find_time(timestamp, self._log_start)
            if found is not None and found[0] >= self._log_start:
                return found[0]
        return None

    # ==========================================================================================
    # Waiting

    def wait_for(self, offset: int, timeout: float | None = None) -> bool:
        """Block until the log end passes ``offset`` (a record at ``offset`` exists); returns
        False on timeout or close. Woken by appends in this process; a read-only log in another
        process polls the file with a backoff of up to 10 ms."""
        if self._leo > offset:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.read_only or self._tail is not None:
            # Appends by other processes wake nobody here: look at the file or the shared tail
            # with a backoff (appends in this process are seen at the next look).
            delay = 0.0005
            while not self._closed:
                self._ro_refresh() if self.read_only else self._shared_refresh()
                if self._leo > offset:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                time.sleep(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, 0.01)
            return False
        with self._cond:
            self._waiters += 1
            try:
                while self._leo <= offset and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
        return self._leo > offset

    async def wait_for_async(self, offset: int, timeout: float | None = None) -> bool:
        """``wait_for`` for asyncio: no thread is blocked and nothing polls (in the writer's
        process; a read-only log polls with asyncio.sleep)."""
        if self._leo > offset:
            return True
        if self.read_only or self._tail is not None:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            delay = 0.0005
            while not self._closed:
                self._ro_refresh() if self.read_only else self._shared_refresh()
                if self._leo > offset:
                    return True
                if deadline is not None and loop.time() >= deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.01)
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        entry = (offset, loop, fut)
        with self._async_lock:
            self._async_waiters.append(entry)
        try:
            if self._leo > offset:
                return True
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            return self._leo > offset
        finally:
            with self._async_lock:
                if entry in self._async_waiters:
                    self._async_waiters.remove(entry)

    def _wake_async(self, everyone: bool = False) -> None:
        leo = self._leo
        with self._async_lock:
            ready = [e for e in self._async_waiters if everyone or leo > e[0]]
        for _, loop, fut in ready:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed
                pass

    # ==========================================================================================
    # Truncation and deletion

    def truncate_to(self, offset: int) -> None:
        """Remove every batch at or after ``offset`` (whole batches; a batch that starts below
        ``offset`` is kept). Slices and views over the removed bytes must be released first.
        Raises InternalTopicError for an internal topic."""
        if self._internal:
            refuse_internal(self.topic, "truncate")
        self._check_writable()
        if self._tail is not None:
            # Readers in other processes map the active segment: cutting data they may be
            # reading would kill them with SIGBUS.
            raise InvalidRequestError(
                f"{self.directory}: truncate_to needs the log to itself; open it with "
                f"shared=False (kstore.open(..., exclusive=True))")
        with self._lock:
            if offset >= self._leo:
                return
            if offset < self._log_start:
                raise OffsetOutOfRangeError(
                    f"cannot truncate to {offset}, below the log start {self._log_start}")
            segs = self._segments
            keep = [s for s in segs if s.base_offset < offset] or [segs[0]]
            drop = [s for s in segs if s not in keep]
            for s in drop + [keep[-1]]:
                s.ensure_unmapped()
            for s in drop:
                for p in s.rename_deleted():
                    p.unlink()
            last = keep[-1]
            last.truncate_to(offset)
            self._set_segments(keep)
            self._use_active(last)
            assert last.appender is not None
            self._leo = last.appender.next_offset
            self._recovery_point = min(self._recovery_point, self._leo)
            self._txn = None  # rebuilt from what is left
            self._write_recovery_point()
            fsync_dir(self.directory)

    def delete_segments_before(self, offset: int) -> int:
        """Raise the log start offset to ``offset`` (never lowering it, never past the log end)
        and delete the segments wholly below it. Returns how many segments went. When every
        segment goes, a new empty active segment is rolled first, as Kafka does."""
        self._check_writable()
        with self._lock, self._tail_held(segments_changed=True):
            if offset > self._leo:
                raise OffsetOutOfRangeError(
                    f"cannot move the log start to {offset}, past the log end {self._leo}")
            if offset > self._log_start:
                self._lso_file.update({self._key: offset})  # first: a refusal changes nothing
                self._log_start = offset
            segs = self._segments
            n = 0
            while n < len(segs) - 1 and segs[n + 1].base_offset <= self._log_start:
                n += 1
            if n == len(segs) - 1 and self._log_start >= self._leo and segs[-1].size > 0:
                self._roll()
                segs = self._segments
                n = len(segs) - 1
            if n == 0:
                return 0
            dead, rest = segs[:n], segs[n:]
            self._set_segments(rest)
            self._log_start = max(self._log_start, rest[0].base_offset)
            if self._txn is not None:
                self._txn.forget_below(self._log_start)
            renamed = []
            for s in dead:
                renamed += s.rename_deleted()
            self._schedule_unlink(renamed)
            return n

    def closed_segments(self) -> list[SegmentInfo]:
        """The segments a cleaner may rewrite: every one but the active segment."""
        return [i for i in self.segments() if not i.active]

    def replace_segments(self, old_bases: list[int], cleaned: list[Path]) -> None:
        """Swap compacted segments in for closed ones, crash-safely (Kafka's LogCleaner).

        ``cleaned`` are ``<base>.log.cleaned`` files already written and fsynced, in offset
        order, together covering exactly the offsets of the segments ``old_bases`` (consecutive
        closed segments). Under the log's lock: each ``.cleaned`` becomes ``.swap`` (fsync the
        directory), the old files become ``*.deleted``, each ``.swap`` drops its suffix, and the
        new segments take the old ones' place. A crash at any point leaves either the old
        segments or the new ones: opening the log deletes ``.cleaned`` files and completes a
        swap that reached ``.swap``. Readers holding slices of the old files keep them.
        """
        self._check_writable()
        # Index files for the new segments are built first, under .cleaned names (recovery
        # deletes those), so producers wait only for the renames: building them under the lock
        # held appends up for 3 ms a swap (9 ms at worst).
        built: list[tuple[Path, Path, Path]] = []
        for p in cleaned:
            if not p.name.endswith(".log.cleaned"):
                raise ValueError(f"{p} is not a .log.cleaned file")
            base = int(p.name.split(".")[0])
            tmp = Segment(self.directory, base, self.config)
            tmp.log_path = p
            tmp.offset_index.path = p.with_name(f"{base:020d}.index.cleaned")
            tmp.time_index.path = p.with_name(f"{base:020d}.timeindex.cleaned")
            tmp.offset_index.path.touch()
            tmp.time_index.path.touch()
            tmp._rebuild_indexes()
            tmp.close()
            built.append((p, tmp.offset_index.path, tmp.time_index.path))
        with self._lock, self._tail_held(segments_changed=True):
            segs = self._segments
            idx = {s.base_offset: i for i, s in enumerate(segs)}
            found = [idx.get(b) for b in old_bases]
            pos = [i for i in found if i is not None]
            if (len(pos) != len(found) or not pos
                    or pos != list(range(pos[0], pos[0] + len(pos))) or segs[pos[-1]].is_active):
                for files in built:  # the caller owns the .log.cleaned; these are ours
                    for extra in files[1:]:
                        extra.unlink(missing_ok=True)
                raise ValueError(f"segments {old_bases} are not consecutive closed segments of "
                                 f"{self.directory}")
            swaps = []
            for files in built:
                for p in files[1:] + files[:1]:  # the .log last: it is what marks a swap
                    q = p.with_name(p.name[: -len(".cleaned")] + ".swap")
                    os.replace(p, q)
                    if p is files[0]:
                        swaps.append(q)
            fsync_dir(self.directory)
            dead = [segs[i] for i in pos]
            renamed: list[Path] = []
            for s in dead:
                s.ensure_unmapped_or_keep()
                renamed += s.rename_deleted()
            fresh = []
            for q in swaps:
                base = int(q.name.split(".")[0])
                for ext in (".index", ".timeindex", ".log"):
                    sq = q.with_name(f"{base:020d}{ext}.swap")
                    os.replace(sq, sq.with_name(sq.name[: -len(".swap")]))
                fresh.append(Segment.load(self.directory, base, self.config))
            fsync_dir(self.directory)
            self._set_segments(segs[: pos[0]] + fresh + segs[pos[-1] + 1:])
            self._schedule_unlink(renamed)

    def _schedule_unlink(self, paths: list[Path]) -> None:
        delay = self.config["file.delete.delay.ms"] / 1000
        if delay <= 0:
            for p in paths:
                p.unlink(missing_ok=True)
            return
        t = threading.Timer(delay, _unlink_all, args=(paths,))
        t.daemon = True
        t.start()
        self._pending_deletes.append((time.monotonic() + delay, paths))

    # ==========================================================================================
    # Checking

    def verify(self) -> list[str]:
        """Check every batch's CRC and structure and every index entry against the data.
        Returns a list of problems (empty when the log is sound); never changes anything.
        A segment the writer deletes meanwhile (retention, compaction) is not a problem."""
        problems = []
        for seg in list(self._segments):
            size = seg.size
            if not seg.log_path.exists():
                if not self.deleted_by_writer(seg.base_offset):
                    problems.append(f"{seg.log_path}: missing (deleted outside kstore); offsets "
                                    f"{seg.base_offset}.. cannot be read")
                continue
            first_bad: int | None = None
            try:
                res = _scan_file(seg.log_path, 0, size, check_crc=True)
            except FileNotFoundError:
                if not self.deleted_by_writer(seg.base_offset):
                    problems.append(f"{seg.log_path}: missing (deleted outside kstore)")
                continue
            if res is None:
                continue
            parts = [res]
            while not res.ok:
                problems.append(f"{seg.log_path}: {res.error}")
                bad = res.valid_end
                first_bad = bad if first_bad is None else first_bad
                # A bad CRC leaves the length usable: step over that batch and keep checking.
                step = _core.span_batches(_read_at(seg.log_path, bad, size), 0, 1, 2**63 - 1)
                if res.error_code != -3 or step == 0:
                    break
                res = _scan_file(seg.log_path, bad + step, size, check_crc=True)
                if res is None:
                    break
                parts.append(res)
            if len(parts[0]) and parts[0].base_offsets[0] < seg.base_offset:
                problems.append(f"{seg.log_path}: first batch offset {parts[0].base_offsets[0]} is "
                                f"below the segment base {seg.base_offset}")
            problems += seg.verify_indexes(parts, first_bad)
        return problems

    def repair_indexes(self) -> tuple[list[str], list[str]]:
        """Rebuild every ``.index``/``.timeindex`` that ``verify`` finds wrong, from the data,
        which is left as it is (the writer only: the lock keeps other writers out). Returns
        (what was rebuilt, what was left alone and why): a segment whose data does not pass its
        CRC checks keeps its indexes; that is corruption for ``verify`` to report."""
        self._check_writable()
        rebuilt, skipped = [], []
        with self._lock, self._tail_held(segments_changed=True):
            for seg in list(self._segments):
                res = _scan_file(seg.log_path, 0, seg.size, check_crc=True)
                scans = [res] if res is not None else []
                if res is not None and not res.ok:
                    skipped.append(f"{seg.log_path}: not rebuilding its indexes: the data is "
                                   f"damaged at byte {res.valid_end} ({res.error})")
                    continue
                problems = seg.verify_indexes(scans)
                if not problems:
                    continue
                if seg.is_active:
                    seg.deactivate()
                    seg.recover(active=True)
                    self._use_active(seg)
                else:
                    seg.offset_index.close()
                    seg.time_index.close()
                    seg._rebuild_indexes()
                    seg._indexes_checked = True
                left = seg.verify_indexes(scans)
                if left:  # cannot happen unless the files change under us
                    skipped += left
                else:
                    rebuilt += [f"{p} (rebuilt)" for p in problems]
            fsync_dir(self.directory)
        return rebuilt, skipped

    def deleted_by_writer(self, base_offset: int) -> bool:
        """Whether the segment at ``base_offset``, whose file is not there, went the routine
        way: retention (below the log start now; its ``.deleted`` twin may linger for
        file.delete.delay.ms) or compaction (merged into the segment before it, a new file)."""
        path = self.directory / f"{base_offset:020d}.log"
        if path.exists():
            return False
        before = {s.base_offset: s.ro_inode for s in self._segments}
        if self.read_only:
            self._ro_refresh()
        if base_offset < self._log_start:
            return True
        if path.with_name(path.name + ".deleted").exists():
            return True
        prev = [b for b in before if b < base_offset]
        if self.read_only and prev:
            b = max(prev)
            return _inode(self.directory / f"{b:020d}.log") != before[b]
        return False

    # ==========================================================================================
    # Read-only refresh

    def _ro_refresh(self) -> None:
        """Read-only: pick up new segments and newly appended whole batches."""
        with self._lock:
            bases = self._segment_bases()
            if not bases:
                return
            # A segment is known by its base and its file: compaction swaps in a new file under
            # the same base, and segments merged into it disappear.
            stats = {b: _stat(self.directory / f"{b:020d}.log") for b in bases}
            current = {b: st[0] for b, st in stats.items() if st[0] >= 0}  # gone since listed
            # A file cut below what we knew (a writer's recovery moved damage to a side file,
            # keeping the inode) is read afresh: its old mapping must not be touched.
            segs = [s for s in self._segments
                    if s.base_offset in current and s.ro_inode == current[s.base_offset]
                    and stats[s.base_offset][1] >= s.size]
            known = {s.base_offset for s in segs}
            for b in current:
                if b not in known:
                    try:
                        seg = Segment.load(self.directory, b, self.config)
                    except SegmentGone:
                        continue
                    seg.read_only = True
                    seg.ro_inode = current[b]
                    seg._size = 0
                    segs.append(seg)
            if not segs:
                return
            segs.sort(key=lambda s: s.base_offset)
            for i, seg in enumerate(segs):
                if seg.ro_complete:
                    continue
                seg.ro_advance()
                if i < len(segs) - 1:
                    seg.ro_complete = True  # a later segment exists: this one is final
            self._set_segments(segs)
            if segs[-1].next_offset is not None:
                self._leo = segs[-1].next_offset
            elif len(segs) > 1 and segs[-2].next_offset is not None:
                self._leo = segs[-2].next_offset
            else:
                self._leo = segs[-1].base_offset
            lso_ck = self._lso_file.get(self._key, 0) or 0
            self._log_start = max(lso_ck, segs[0].base_offset)

    # ==========================================================================================
    # Closing

    def close(self) -> None:
        """Flush, trim the indexes, write the recovery point and the clean-shutdown marker.

        When the disk refuses (full, EIO...), the log is closed all the same (files and the
        directory lock released) without the clean-shutdown marker, and KafkaStorageError is
        raised: the next open recovers the segments, keeping every record that was written."""
        if self._closed:
            return
        # Background fsyncs of rolled segments take the lock when they finish: wait outside it.
        for t in list(self._flush_threads):
            t.join()
        failures: list[OSError] = []
        with self._lock:
            if self._closed:
                return
            try:
                shared = self._tail is not None
                if shared:
                    failures += self._close_shared()
                elif not self.read_only:
                    try:
                        self.flush()
                    except OSError as exc:
                        failures.append(exc)
                for seg in [] if shared else self._segments:
                    try:
                        seg.close()
                    except OSError as exc:
                        failures.append(exc)
                        seg.abandon()
                if not self.read_only and not shared:
                    if not failures:
                        marker = self.directory / CLEAN_SHUTDOWN_MARKER
                        try:
                            atomic_write(marker, b'{"version":0}\n')
                        except OSError as exc:
                            failures.append(exc)
                    for _, paths in self._pending_deletes:
                        _unlink_all(paths)
            finally:
                self._closed = True
                if self._fast is not None:
                    self._ro_leo = self._fast.leo
                    self._ro_recovery_point = self._fast.recovery_point
                    self._fast = None
                self._release()
        with self._cond:
            self._cond.notify_all()
        self._wake_async(everyone=True)
        if failures:
            first = failures[0]
            raise KafkaStorageError(
                f"closing {self.directory} failed: {first.strerror or first}; it is closed "
                f"without its clean-shutdown marker, so the next open recovers it from the "
                f"segments (records already written are kept)") from first

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        # The tail's file last: closing it lets the next open or close of this log in.
        if self._tail is not None:
            self._tail.release()
            self._tail = None
        if self._tail_map is not None:
            try:
                self._tail_map.close()
            except BufferError:
                pass
            self._tail_map = None
        if self._tail_fd >= 0:
            os.close(self._tail_fd)
            self._tail_fd = -1


def _base_offset(seg: Segment) -> int:
    return seg.base_offset


def _stat(path: Path) -> tuple[int, int]:
    """(inode, size) of a file, (-1, -1) when it is not there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1, -1
    return st.st_ino, st.st_size


def _inode(path: Path) -> int:
    return _stat(path)[0]


def _read_at(path: Path, position: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(position)
        return f.read(min(size - position, 1 << 20))


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not delete %s: %s", p, exc)
