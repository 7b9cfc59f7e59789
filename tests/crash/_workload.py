"""The crash tests' writer: a deterministic log, and a child process that appends it.

Every record's content is a function of its offset, and every batch's size and codec are a
function of its base offset, so the whole log is one fixed sequence of batches: a writer that
reopens the log continues the same sequence from the log end, and the parent can check any
offset without having seen it written.

Run as a script, it prints ``start`` once imported, opens ``PartitionLog.open(<dir>, CONFIG)``
(recovering the log if the last writer crashed), prints ``open <log end>``, then appends
batches until killed, printing each acknowledged last offset on its own line with one ``write``
after ``append_batch`` returns (a SIGKILL cannot leave half a line).
"""

from __future__ import annotations

import os
import sys
import time

from kstore.records import BatchBuilder

EPOCH_MS = 1_700_000_000_000
SEGMENT_BYTES = 256 * 1024
CONFIG = {"segment.bytes": SEGMENT_BYTES}


def record(offset: int) -> tuple[bytes | None, bytes, tuple[tuple[str, bytes | None], ...], int]:
    """(key, value, headers, timestamp) of the record at ``offset``."""
    key = None if offset % 5 == 0 else b"key-%d" % (offset % 97)
    value = b"rec-%d-" % offset + bytes([97 + offset % 26]) * ((offset * 37) % 301)
    headers: tuple[tuple[str, bytes | None], ...] = ()
    if offset % 7 == 0:
        headers = (("seq", b"%d" % offset), ("empty", None))
    return key, value, headers, EPOCH_MS + offset


def batch_records(base_offset: int) -> int:
    """How many records the batch starting at ``base_offset`` holds (1..24)."""
    return 1 + ((base_offset * 2654435761) >> 7) % 24


def batch_codec(base_offset: int) -> str:
    if base_offset % 11 == 0:
        return "gzip"  # its header carries a time: not byte-reproducible, compare records only
    if base_offset % 17 == 0:
        return "zstd"
    return "none"


def build_batch(base_offset: int) -> bytes:
    b = BatchBuilder(compression=batch_codec(base_offset))
    for offset in range(base_offset, base_offset + batch_records(base_offset)):
        key, value, headers, ts = record(offset)
        b.append(value, key=key, headers=list(headers) or None, timestamp=ts)
    return b.build()


def main(directory: str, max_seconds: float) -> int:
    from kstore.log import PartitionLog

    os.write(1, b"start\n")
    log = PartitionLog.open(directory, CONFIG)
    base = log.log_end_offset
    os.write(1, b"open %d\n" % base)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        first, last, _ = log.append_batch(build_batch(base))
        if first != base:
            raise AssertionError(f"append gave offsets from {first}, expected {base}")
        os.write(1, b"%d\n" % last)
        base = last + 1
    # Only reached when nobody killed us: the parent treats this as a failure.
    os.write(1, b"timeout\n")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
