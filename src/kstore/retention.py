"""Delete-based retention (kafka-storage.md section 5.1): whole segments, oldest first.

Three passes, as Kafka runs them: the log start offset (segments wholly below it), size
(``retention.bytes`` per partition) and time (``retention.ms`` against each segment's largest
timestamp). Each pass walks from the oldest segment and stops at the first one it must keep, so
retention never leaves holes. When every segment qualifies, the active one is rolled first and
an empty active segment stays. Deleted files are renamed ``*.deleted`` and unlinked after
``file.delete.delay.ms``, so slices already handed out keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

from kstore.log import PartitionLog


@dataclass(frozen=True)
class RetentionResult:
    deleted_segments: int
    log_start_offset: int
    reason: str | None  # "size", "time", "log start offset" or None


def _breaches(log: PartitionLog, now_ms: int) -> tuple[int, str | None]:
    """How many leading segments (the active one included) the size and time rules remove."""
    cfg = log.config
    segs = log.segments()
    if "delete" not in cfg["cleanup.policy"]:
        return 0, None
    count, reason = 0, None
    limit = cfg["retention.bytes"]
    if limit >= 0:
        diff = sum(s.size for s in segs) - limit
        n = 0
        for s in segs:
            if s.size == 0 or diff - s.size < 0:
                break
            diff -= s.size
            n += 1
        if n > count:
            count, reason = n, "size"
    ms = cfg["retention.ms"]
    if ms >= 0:
        n = 0
        for s in segs:
            if s.size == 0:
                break  # an empty (active) segment is never deleted
            largest = s.max_timestamp if s.max_timestamp >= 0 else _mtime_ms(s)
            if now_ms - largest <= ms:
                break
            n += 1
        if n > count:
            count, reason = n, "time"
    return count, reason


def _mtime_ms(seg) -> int:
    return int(seg.path.stat().st_mtime * 1000)


def enforce_retention(log: PartitionLog, now_ms: int) -> RetentionResult:
    """Apply the three passes to one partition log."""
    count, reason = _breaches(log, now_ms)
    deleted = 0
    if count:
        segs = log.segments()
        target = segs[count].base_offset if count < len(segs) else log.log_end_offset
        deleted = log.delete_segments_before(max(target, log.log_start_offset))
    else:
        # Pass 1 alone: segments left wholly below a start offset moved by delete_records.
        deleted = log.delete_segments_before(log.log_start_offset)
        reason = "log start offset" if deleted else None
    return RetentionResult(deleted, log.log_start_offset, reason)
