"""Kafka's sparse .index and .timeindex files, mmapped (kafka-storage.md sections 3.3-3.4).

The active segment's index files are preallocated to ``segment.index.bytes`` (rounded down to
whole entries) and mapped writable; the SegmentAppender writes entries into the mapping. When a
segment stops being active, or on close, the file is trimmed to ``entries * entry_size``.
Closed segments map their (trimmed) indexes read-only.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from kstore import _core
from kstore.errors import KafkaStorageError

OFFSET_ENTRY = 8
TIME_ENTRY = 12


class IndexFile:
    def __init__(self, path: Path, entry_size: int) -> None:
        self.path = path
        self.entry_size = entry_size
        self.is_time = entry_size == TIME_ENTRY
        self.mm: mmap.mmap | None = None
        self.entries = 0
        self.writable = False
        self.fd = -1  # the file, while writable

    # -- opening ------------------------------------------------------------------------

    def open_readonly(self, entries: int | None = None) -> None:
        """Map the file read-only. ``entries`` None: the file length decides (a trimmed index)."""
        self.close()
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            size = 0
        usable = size - size % self.entry_size
        self.entries = usable // self.entry_size if entries is None else min(entries, usable // self.entry_size)
        self.writable = False
        if usable:
            with open(self.path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), usable, access=mmap.ACCESS_READ)

    def load_snapshot(self) -> None:
        """Read the file's real entries into memory (read-only opens: the writer may resize it)."""
        self.close()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        data = data[: len(data) - len(data) % self.entry_size]
        self.mm = data  # type: ignore[assignment]  # any buffer works for the lookups
        self.writable = False
        self.entries = _core.index_valid_entries(data, len(data) // self.entry_size, self.is_time) if data else 0

    def open_writable(self, max_bytes: int, entries: int) -> None:
        """Active segment: the entries live in anonymous memory sized for ``segment.index.bytes``
        (pages come on first use) and reach the file through the appender's pwrites. The file
        keeps only real entries, so a crash never leaves zero padding behind."""
        self.close()
        size = max(max_bytes - max_bytes % self.entry_size, self.entry_size * 2)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            entries = min(entries, size // self.entry_size)
            data = os.pread(fd, entries * self.entry_size, 0) if entries else b""
            entries = len(data) // self.entry_size
            os.ftruncate(fd, entries * self.entry_size)
        except OSError as exc:
            raise KafkaStorageError(f"cannot open index {self.path}: {exc}") from exc
        mm = mmap.mmap(-1, size)
        mm[: len(data)] = data
        self.mm = mm
        self.fd = fd
        self.entries = entries
        self.writable = True

    def open_shared(self, max_bytes: int, persisted: int) -> None:
        """Active segment of a shared tail (several processes append): like ``open_writable``,
        but the file is never cut (other processes' entries are in it); its first
        ``persisted`` entries are loaded."""
        self.close()
        size = max(max_bytes - max_bytes % self.entry_size, self.entry_size * 2)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            want = min(persisted, size // self.entry_size) * self.entry_size
            data = os.pread(fd, want, 0) if want else b""
        except OSError as exc:
            raise KafkaStorageError(f"cannot open index {self.path}: {exc}") from exc
        if len(data) != want:
            os.close(fd)
            raise KafkaStorageError(f"index {self.path} holds {len(data)} bytes, fewer than the "
                                    f"{want} its shared tail says were written")
        mm = mmap.mmap(-1, size)
        mm[: len(data)] = data
        self.mm = mm
        self.fd = fd
        self.entries = len(data) // self.entry_size
        self.writable = True

    def valid_entries_in_file(self) -> int:
        """Real entries in a possibly zero-padded file (a crash left it untrimmed)."""
        if self.mm is None:
            return 0
        return _core.index_valid_entries(self.mm, len(self.mm) // self.entry_size, self.is_time)

    # -- lookups ------------------------------------------------------------------------

    def lookup(self, target: int) -> tuple[int, int, int]:
        """Offset index: (slot, relative offset, position); time index: (slot, ts, rel offset)."""
        if self.mm is None or self.entries == 0:
            return (-1, -1, 0) if self.is_time else (-1, 0, 0)
        if self.is_time:
            return _core.time_index_lookup(self.mm, self.entries, target)
        return _core.offset_index_lookup(self.mm, self.entries, target)

    def entry(self, slot: int) -> tuple[int, int]:
        assert self.mm is not None
        return _core.index_entry(self.mm, slot, self.is_time)

    def last_entry(self) -> tuple[int, int] | None:
        return self.entry(self.entries - 1) if self.entries else None

    # -- closing ------------------------------------------------------------------------

    def flush(self) -> None:
        """fsync what the appender has persisted."""
        if self.fd >= 0:
            os.fsync(self.fd)

    def trim(self) -> None:
        """Stop being writable: the file holds exactly ``entries`` entries (the appender has
        persisted them); map it read-only."""
        entries = self.entries
        if self.fd >= 0:
            os.ftruncate(self.fd, entries * self.entry_size)
            os.fsync(self.fd)
        self.close()
        self.open_readonly(entries)

    def reset(self) -> None:
        """Drop every entry (recovery rebuilds the index)."""
        self.close()
        self.entries = 0
        if self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.mm is not None:
            mm, self.mm = self.mm, None
            if not isinstance(mm, mmap.mmap):
                return
            try:
                mm.close()
            except BufferError:
                # A reader still holds a view; the mapping goes when the view does.
                pass

    def rename(self, new_path: Path) -> None:
        if self.path.exists():
            os.replace(self.path, new_path)
        self.path = new_path


# -- checking index files against the data (``kstore verify``) ---------------------------------


def _whole_entries(path: Path, entry: int, in_flight: bool) -> tuple[bytes | None, str | None]:
    """(the index file's bytes, None), or (None, its problem or None when there is nothing to
    check): missing, or not a whole number of ``entry``-byte entries (both fine while a writer
    is appending), or empty."""
    raw = _read_index(path)
    if raw is None:
        return None, None if in_flight else f"{path}: missing"
    if len(raw) % entry and not in_flight:
        return None, f"{path}: {len(raw)} bytes, not a whole number of {entry}-byte entries"
    if len(raw) < entry:
        return None, None
    return raw, None


def check_offset_index(path: Path, base_offset: int, positions: np.ndarray,
                       base_offsets: np.ndarray, last_offsets: np.ndarray, data_end: int,
                       in_flight: bool = False) -> str | None:
    """The first problem with the ``.index`` file ``path`` of the segment ``base_offset``,
    whose batches (from a scan of its data up to byte ``data_end``) start at ``positions``
    and hold ``base_offsets``..``last_offsets``; None when it is sound.

    Kafka's rules: whole 8-byte entries; relative offsets and positions rise strictly; a
    position is never 0 (a segment's first batch is never indexed) and is the start of a batch
    below ``data_end``, and the entry's offset lies within that batch (Kafka writes its last
    offset). ``in_flight``: a writer is appending to this segment, so entries at or past
    ``data_end`` and a missing file or a partial last entry are not problems yet.
    """
    raw, problem = _whole_entries(path, OFFSET_ENTRY, in_flight)
    if raw is None:
        return problem
    n = len(raw) // OFFSET_ENTRY
    entries = np.frombuffer(raw, dtype=">u4", count=n * 2).reshape(n, 2).astype(np.int64)
    rel, pos = entries[:, 0], entries[:, 1]
    past = pos >= data_end
    if in_flight and past.any():
        n = int(np.argmax(past))  # not written yet, as far as our scan of the data knows
        rel, pos, past = rel[:n], pos[:n], past[:n]
    # Every rule at once (a 1 GB segment has 250 k entries), then the first slot that breaks one.
    rising = np.ones(n, dtype=bool)
    rising[1:] = (rel[1:] > rel[:-1]) & (pos[1:] > pos[:-1])
    at = np.searchsorted(positions, pos)
    hit = np.minimum(at, max(len(positions) - 1, 0))
    if len(positions):
        starts = (at < len(positions)) & (positions[hit] == pos)
        inside = starts & (base_offsets[hit] <= base_offset + rel) & (base_offset + rel <= last_offsets[hit])
    else:
        starts = inside = np.zeros(n, dtype=bool)
    bad = past | (pos == 0) | ~rising | ~inside
    if not bad.any():
        return None
    slot = int(np.argmax(bad))
    r, p = int(rel[slot]), int(pos[slot])
    what = f"{path}: entry {slot} (offset {base_offset + r}, position {p})"
    if past[slot]:
        return f"{what} points past the end of the data, {data_end} bytes"
    if p == 0:
        return f"{what} points at the first batch, which is never indexed (a zero-filled entry?)"
    if not rising[slot]:
        return (f"{what} does not follow entry {slot - 1} (offset "
                f"{base_offset + int(rel[slot - 1])}, position {int(pos[slot - 1])}): entries "
                f"must rise")
    if not starts[slot]:
        return f"{what} points inside a batch, not at the start of one"
    i = int(hit[slot])
    return (f"{what} names an offset outside the batch there, which holds offsets "
            f"{int(base_offsets[i])}..{int(last_offsets[i])}")


def check_time_index(path: Path, base_offset: int, base_offsets: np.ndarray,
                     last_offsets: np.ndarray, max_timestamps: np.ndarray,
                     in_flight: bool = False) -> str | None:
    """The first problem with the ``.timeindex`` file ``path`` of the segment ``base_offset``
    whose batches hold ``base_offsets``..``last_offsets`` with ``max_timestamps``; None when
    sound.

    Kafka's rules: whole 12-byte entries; timestamps rise strictly and offsets do not fall; an
    entry's offset lies within a batch of the segment and its timestamp is that batch's max
    timestamp (entries are (max timestamp so far, offset of the batch that holds it)).
    ``in_flight`` as for ``check_offset_index`` (entries past the last scanned batch wait).
    """
    raw, problem = _whole_entries(path, TIME_ENTRY, in_flight)
    if raw is None:
        return problem
    n = len(raw) // TIME_ENTRY
    rec = np.frombuffer(raw, dtype=np.dtype([("ts", ">i8"), ("rel", ">u4")]), count=n)
    ts = rec["ts"].astype(np.int64)
    off = base_offset + rec["rel"].astype(np.int64)
    last = int(last_offsets[-1]) if len(last_offsets) else base_offset - 1
    rising = np.ones(n, dtype=bool)
    rising[1:] = (ts[1:] > ts[:-1]) & (off[1:] >= off[:-1])
    past = off > last
    if in_flight and past.any():
        n = int(np.argmax(past))
        ts, off, rising, past = ts[:n], off[:n], rising[:n], past[:n]
    at = np.searchsorted(last_offsets, off)
    hit = np.minimum(at, max(len(last_offsets) - 1, 0))
    if len(last_offsets):
        held = (at < len(last_offsets)) & (base_offsets[hit] <= off)
        matches = held & (max_timestamps[hit] == ts)
    else:
        held = matches = np.zeros(n, dtype=bool)
    bad = ~rising | past | ~matches
    if not bad.any():
        return None
    slot = int(np.argmax(bad))
    what = f"{path}: entry {slot} (timestamp {int(ts[slot])}, offset {int(off[slot])})"
    if not rising[slot]:
        return (f"{what} does not follow entry {slot - 1} (timestamp {int(ts[slot - 1])}, "
                f"offset {int(off[slot - 1])}): timestamps must rise and offsets must not fall")
    if past[slot]:
        return f"{what} names an offset past the segment's last, {last}"
    if not held[slot]:
        return f"{what} names an offset no batch of the segment holds"
    return (f"{what} does not match the batch holding that offset, whose max timestamp is "
            f"{int(max_timestamps[int(hit[slot])])}")


def _read_index(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
