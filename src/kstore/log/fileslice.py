"""FileSlice: whole batches of one segment, as (file, position, length), read without copying."""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kstore import _core

if TYPE_CHECKING:
    from kstore._core import Batch, Record


class SegmentFile:
    """A read-only file descriptor shared by a segment and the slices read from it; it closes
    when the last of them is gone, so a slice stays readable after its segment is deleted."""

    __slots__ = ("fd", "path", "__weakref__")

    def __init__(self, path: str | os.PathLike) -> None:
        self.fd = -1  # so that __del__ of a failed open has nothing to close
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class FileSlice:
    """Whole batches ``[position, position + length)`` of a segment file.

    ``memoryview()`` is a zero-copy view over an mmap of the segment (the mapping stays alive,
    and the segment cannot be unmapped, while the view does); ``sendfile()`` sends the bytes to
    a socket or file descriptor with ``os.sendfile``; ``read()`` copies them.
    """

    __slots__ = ("file", "position", "length", "base_offset", "_map", "_next")

    def __init__(self, file: SegmentFile, position: int, length: int, mapping: mmap.mmap,
                 base_offset: int) -> None:
        self.file = file
        self.position = position
        self.length = length
        self._map = mapping
        self.base_offset = base_offset  # of the first batch in the slice
        self._next = -1

    @classmethod
    def empty(cls, offset: int) -> "FileSlice":
        """No data (a read at the log end)."""
        return cls(None, 0, 0, b"", offset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        path = self.file.path if self.file is not None else None
        return (f"FileSlice({path!r}, position={self.position}, length={self.length}, "
                f"base_offset={self.base_offset})")

    def memoryview(self) -> memoryview:
        return memoryview(self._map)[self.position:self.position + self.length]

    def read(self) -> bytes:
        return self._map[self.position:self.position + self.length]

    @property
    def next_offset(self) -> int:
        """The offset after the slice's last batch (headers only: nothing is decoded)."""
        if self.length == 0:
            return self.base_offset
        if self._next < 0:
            res = _core.scan(self.memoryview(), 0, -1, False, False)
            self._next = int(res.last_offsets[-1]) + 1
        return self._next

    def batches(self) -> Iterator[Batch]:
        return _core.iter_batches(self.memoryview())

    def records(self) -> list[Record]:
        return [r for b in self.batches() for r in b.records()]

    def sendfile(self, out: socket.socket | int, timeout: float | None = None) -> int:
        """Send the slice with os.sendfile, resuming after partial sends. Works with blocking
        and non-blocking sockets (waiting for writability). Returns the bytes sent."""
        if self.length == 0:
            return 0
        out_fd = out if isinstance(out, int) else out.fileno()
        offset = self.position
        end = self.position + self.length
        while offset < end:
            try:
                sent = os.sendfile(out_fd, self.file.fd, offset, end - offset)
            except BlockingIOError:
                # poll, not select: select refuses descriptors >= 1024, which a server has.
                p = select.poll()
                p.register(out_fd, select.POLLOUT)
                if not p.poll(None if timeout is None else timeout * 1000):
                    raise TimeoutError(f"socket not writable within {timeout} s") from None
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                raise
            if sent == 0:
                raise BrokenPipeError(f"sendfile sent nothing at {offset} of {end}")
            offset += sent
        return self.length
