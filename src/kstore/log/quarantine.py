"""Side files for the bytes recovery cuts: nothing a crash recovery removes is destroyed.

When an unclean open finds a batch that fails its checks, the log must end before it (offsets
go on from there, as in Kafka). The bytes from that batch to the end of its segment are first
copied to ``<segment>.log.corrupt-<position>`` beside it, and every later segment's ``.log``
(which recovery removes from the log) is renamed to ``<its name>.log.corrupt-0``; both are
fsynced, with the directory, before the segment is cut. ``<position>`` is the byte of the
segment the side file starts at, so ``side file byte i == segment byte position + i`` at the
time of the cut. A name already taken gets ``.1``, ``.2``... appended: a later recovery never
overwrites an earlier side file (a crash between the copy and the cut makes the next recovery
copy the same bytes again, under the next name). When the copy cannot be made (disk full),
nothing is cut and opening the log raises KafkaStorageError.

The names end in neither ``.log`` nor an index suffix, so Kafka's log loader and kstore's own
(``PartitionLog.open``, read-only opens, retention, the cleaner) ignore them; deleting the
topic deletes them. ``kstore verify`` lists them and ``kstore dump-log <side file>`` prints the
batches in them.

Not quarantined (nothing would be kept): a partial write at the very end of the last segment
(its header is sound and names the next offset, but the file ends before the batch does: a
write the crash cut short) and cut bytes that are all zero (pages never written).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

from kstore import _core
from kstore.errors import KafkaStorageError
from kstore.log.checkpoint import fsync_dir

SIDE_INFIX = ".log.corrupt-"
_COPY_CHUNK = 1 << 20
_MAGIC_POSITION = 16  # RecordBatch v2 header: base offset (8 bytes), batch length (4), epoch (4), magic
_LENGTH_POSITION = 8


def is_side_file(name: str) -> bool:
    """True for a quarantine side file (not a leftover ``.tmp`` of one)."""
    return SIDE_INFIX in name and not name.endswith(".tmp")


def side_files(directory: Path) -> list[Path]:
    """The quarantine side files in a partition directory, by name."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if is_side_file(n))


def _free_name(log_path: Path, position: int) -> Path:
    first = log_path.with_name(f"{log_path.name}.corrupt-{position}")
    path, n = first, 0
    while path.exists() or path.with_name(path.name + ".tmp").exists():
        n += 1
        path = first.with_name(f"{first.name}.{n}")
    return path


def keep_bytes(log_path: Path, position: int, end: int) -> Path | None:
    """Copy bytes [position, end) of ``log_path`` to a new side file, fsynced (with the
    directory). Returns its path, or None when every byte is zero (nothing to keep)."""
    side = _free_name(log_path, position)
    tmp = side.with_name(side.name + ".tmp")  # a crash mid-copy leaves a .tmp: the next open drops it
    nonzero = False
    try:
        with open(log_path, "rb") as src, open(tmp, "wb") as dst:
            src.seek(position)
            left = end - position
            while left > 0:
                chunk = src.read(min(left, _COPY_CHUNK))
                if not chunk:
                    break
                nonzero = nonzero or bool(chunk.strip(b"\0"))
                dst.write(chunk)
                left -= len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if not nonzero:
            tmp.unlink()
            return None
        os.replace(tmp, side)
        fsync_dir(log_path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KafkaStorageError(
            f"recovery must cut {end - position} bytes from {log_path} at byte {position} but "
            f"cannot keep them in {side}: {exc}; nothing was cut. Free that much space (or fix "
            f"the permissions) and open the log again") from exc
    return side


def keep_segment(log_path: Path) -> Path | None:
    """Move a whole segment file to a side file (position 0), fsync the directory. An empty
    file is removed instead; returns the side file or None."""
    if os.path.getsize(log_path) == 0:
        log_path.unlink()
        fsync_dir(log_path.parent)
        return None
    side = _free_name(log_path, 0)
    try:
        os.replace(log_path, side)
        fsync_dir(log_path.parent)
    except OSError as exc:
        raise KafkaStorageError(f"recovery cannot move {log_path} to {side}: {exc}") from exc
    return side


def is_partial_write(log_path: Path, position: int, end: int, next_offset: int,
                     config: dict[str, Any]) -> bool:
    """Whether the bytes [position, end), which end before the batch they start, look like a
    write cut short by a crash: what is there of the header names ``next_offset``, magic 2 and
    a batch no larger than ``max.message.bytes`` allows. A damaged length field that runs past
    the end of the file (mid-segment corruption) fails this and is quarantined instead."""
    with open(log_path, "rb") as f:
        f.seek(position)
        head = f.read(min(end - position, _core.HEADER_SIZE))
    if len(head) >= 8 and int.from_bytes(head[:8], "big", signed=True) != next_offset:
        return False
    if len(head) >= _core.LOG_OVERHEAD:
        whole = _core.LOG_OVERHEAD + int.from_bytes(head[_LENGTH_POSITION:_core.LOG_OVERHEAD],
                                                    "big", signed=True)
        limit = max(int(config.get("max.message.bytes", 0)), 1048588)
        if not (_core.HEADER_SIZE <= whole <= limit) or whole <= end - position:
            return False
    return len(head) <= _MAGIC_POSITION or head[_MAGIC_POSITION] == 2


def next_sound_batch(buf: Any, start: int, end: int) -> int:
    """The first position >= ``start`` where a whole batch with a valid CRC starts in
    ``buf[:end]``, or ``end``. Candidates are the bytes that could be its magic (2, 16 bytes
    in); the CRC-32C check makes a false match as likely as a random CRC collision."""
    at = start + _MAGIC_POSITION
    while True:
        at = buf.find(b"\x02", at, end)
        if at < 0:
            return end
        pos = at - _MAGIC_POSITION
        res = _core.scan(buf, pos, end, True, False, 1)
        if len(res) == 1 and int(res.base_offsets[0]) >= 0:
            return pos
        at += 1


def last_offset_in(path: Path, start: int = 0, end: int | None = None) -> int | None:
    """The last offset of the last batch in [start, end) whose CRC checks out, walking over
    damaged batches (by their length while it can be trusted, else to the next sound batch),
    or None when there is none."""
    size = os.path.getsize(path) if end is None else end
    if size <= start:
        return None
    last: int | None = None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
        pos = start
        while pos < size:
            res = _core.scan(mm, pos, size, True, False)
            if len(res):
                last = int(res.last_offsets[-1])
            if res.ok:
                break
            step = 0 if res.torn else _core.span_batches(mm, res.valid_end, 1, 2**63 - 1, size)
            pos = res.valid_end + step if step > 0 else next_sound_batch(mm, res.valid_end + 1, size)
            del res
    return last
