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
