"""Kafka's checkpoint text files (kafka-storage.md section 4.1), written crash-safely.

Format: ``0\\n<count>\\n`` then one ``topic partition offset`` line per entry. Writes go to
``<file>.tmp``, are fsynced, renamed over the target, and the directory is fsynced.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("kstore.log")

RECOVERY_POINT = "recovery-point-offset-checkpoint"
LOG_START_OFFSET = "log-start-offset-checkpoint"
CLEANER_OFFSET = "cleaner-offset-checkpoint"


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new content.
    ``mode``: the new file's permission bits, whatever the umask, from its creation on (for
    secrets: never readable by others, not even briefly); by default 0644 less the umask.

    Raises KafkaStorageError when the disk refuses (full, EFBIG, EIO, read-only, permission):
    the ``.tmp`` file is removed and ``path`` keeps its previous content."""
    from kstore.errors import KafkaStorageError

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    replaced = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                     0o644 if mode is None else mode & 0o600)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        replaced = True
        fsync_dir(path.parent)
    except OSError as exc:
        if not replaced:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # never created, or the directory is gone: nothing to clean
        state = ("it may not be durable yet" if replaced
                 else f"the previous {path.name} is unchanged")
        raise KafkaStorageError(
            f"cannot write {path}: {exc.strerror or exc} (errno {exc.errno}); {state}. Free "
            f"disk space (or fix the file system) and retry") from exc


def format_checkpoint(entries: dict[tuple[str, int], int]) -> bytes:
    lines = ["0", str(len(entries))]
    lines += [f"{t} {p} {o}" for (t, p), o in sorted(entries.items())]
    return ("\n".join(lines) + "\n").encode()


def parse_checkpoint(text: str, source: str = "checkpoint") -> dict[tuple[str, int], int]:
    """Parse a checkpoint; raises ValueError saying what is wrong."""
    if not text.strip():
        return {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2 or lines[0].strip() != "0":
        raise ValueError(f"{source}: unsupported version line {lines[0]!r}" if lines else source)
    try:
        count = int(lines[1])
    except ValueError:
        raise ValueError(f"{source}: bad entry count {lines[1]!r}") from None
    entries = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{source}: malformed line {line!r}")
        entries[(parts[0], int(parts[1]))] = int(parts[2])
    if len(entries) != count:
        raise ValueError(f"{source}: {len(entries)} entries, header says {count}")
    return entries


def read_checkpoint(path: str | os.PathLike) -> dict[tuple[str, int], int]:
    """Entries of a checkpoint file; a missing or unparsable file counts as empty (as Kafka)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    try:
        return parse_checkpoint(text, str(path))
    except ValueError as exc:
        log.warning("ignoring unreadable checkpoint: %s", exc)
        return {}


class CheckpointFile:
    """One checkpoint file shared by every partition of a data directory.

    ``update`` merges entries under a thread lock and an flock on the directory, so partitions
    opened separately (even by different processes) never drop each other's entries.
    """

    _registry: dict[Path, "CheckpointFile"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def for_path(cls, path: str | os.PathLike) -> "CheckpointFile":
        p = Path(path).resolve()
        with cls._registry_lock:
            cp = cls._registry.get(p)
            if cp is None:
                cp = cls._registry[p] = cls(p)
            return cp

    def read(self) -> dict[tuple[str, int], int]:
        return read_checkpoint(self.path)

    def get(self, key: tuple[str, int], default: int | None = None) -> int | None:
        return self.read().get(key, default)

    def update(self, changes: dict[tuple[str, int], int | None]) -> None:
        """Set (or, with None, remove) entries and rewrite the file atomically. Raises
        KafkaStorageError when the disk refuses; the file keeps its previous entries."""
        with self._lock:
            try:
                dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                from kstore.errors import KafkaStorageError

                raise KafkaStorageError(f"cannot update {self.path}: {exc}") from exc
            try:
                fcntl.flock(dfd, fcntl.LOCK_EX)
                entries = self.read()
                for k, v in changes.items():
                    if v is None:
                        entries.pop(k, None)
                    else:
                        entries[k] = v
                atomic_write(self.path, format_checkpoint(entries))
            finally:
                os.close(dfd)  # releases the flock


def _open_lock_file(directory: Path, what: str) -> int:
    """Create ``directory`` if needed and open ``<dir>/.lock`` (not locked yet)."""
    from kstore.errors import KafkaStorageError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise KafkaStorageError(f"cannot write to {what} {directory}: {exc.strerror}; check its "
                                f"permissions or open it with read_only=True") from exc
    except OSError as exc:
        raise KafkaStorageError(f"cannot use {directory} as a {what}: {exc}") from exc


def lock_directory(directory: Path, what: str) -> int:
    """Create ``directory`` if needed and take the exclusive writer lock on ``<dir>/.lock``
    (flock: per open file, so a second open in this process is refused too). Returns the fd
    holding the lock. Raises LogLockedError when another writer has it, KafkaStorageError when
    the directory cannot be used."""
    from kstore.errors import KafkaStorageError, LogLockedError

    fd = _open_lock_file(directory, what)
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            if busy and attempt < 19:
                # A writer_holds_lock() probe holds it for a moment: a few retries tell it
                # apart from a writer.
                time.sleep(0.001)
                continue
            os.close(fd)
            if busy:
                raise LogLockedError(
                    f"{what} {directory} is already open for writing (by this or another "
                    f"process) without sharing it; close the other, open both with "
                    f"shared writes (the default of kstore.open), or open this one with "
                    f"read_only=True") from None
            raise KafkaStorageError(f"cannot lock {directory}: {exc}") from exc
    raise AssertionError("unreachable")


def writer_holds_lock(directory: Path) -> bool:
    """Whether a writer (in any process, this one included; exclusive or shared) holds
    ``<dir>/.lock`` now. A probe with an exclusive lock, released at once: shared writers
    opening meanwhile retry (``lock_shared``); an exclusive writer's open may be refused as
    if a writer were there, which it then was."""
    try:
        fd = os.open(directory / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


def lock_shared(directory: Path, what: str, probe_first: bool = True) -> tuple[int, bool]:
    """Create ``directory`` if needed and take ``<dir>/.lock`` for a shared writer (several
    processes write at once). Returns (fd, first): ``first`` when no other writer had it, in
    which case the fd holds the lock exclusively and the caller, still serialised against
    other openers, calls ``share_lock(fd)`` once it has set things up. Raises LogLockedError
    when an exclusive writer (``shared=False``) has it."""
    from kstore.errors import KafkaStorageError, LogLockedError

    fd = _open_lock_file(directory, what)
    if probe_first:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise KafkaStorageError(f"cannot lock {directory}: {exc}") from exc
    # Someone holds it: shared writers (join them) or an exclusive one (refuse). A probe by
    # writer_holds_lock() holds it exclusively for a moment: try for a while before refusing.
    for attempt in range(70):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd, False
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise KafkaStorageError(f"cannot lock {directory}: {exc}") from exc
        time.sleep(0.001 if attempt < 50 else 0.005)
    os.close(fd)
    raise LogLockedError(
        f"{what} {directory} is open for writing by a process that does not share it "
        f"(opened with exclusive=True / shared=False); close it, or open this one with "
        f"read_only=True")


def share_lock(fd: int, directory: Path, what: str) -> None:
    """Turn the exclusive lock ``lock_shared`` gave a first opener into a shared one."""
    from kstore.errors import LogLockedError

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise LogLockedError(f"{what} {directory} was taken by an exclusive writer while this "
                             f"process opened it; close that one or retry") from None
