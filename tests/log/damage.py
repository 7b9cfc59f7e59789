"""A store whose every offset has known content, and hand-made damage to one batch of a closed
segment: each field of its header, and cuts of the file (leveldb's log_test habits). Shared by
the read-path tests of the log, the consumer, the CLI and the server's Fetch."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kstore
from kstore.records import BatchBuilder, scan

BATCH = 10  # records per batch
BATCHES = 40  # per topic
SEGMENT_BYTES = 6000  # a few batches a segment: several closed segments
TS0 = 1_700_000_000_000
SEGMENT = 1  # the damaged segment: the second (closed, with segments on both sides)
VICTIM = 2  # the damaged batch within it (good batches before and after)


def value(offset: int) -> bytes:
    return b"v%d-" % offset + b"x" * (offset * 7 % 50)


def make_batch(base: int) -> bytes:
    b = BatchBuilder()
    for off in range(base, base + BATCH):
        b.append(value(off), key=b"k%d" % off, timestamp=TS0 + off)
    return b.build()


@dataclass(frozen=True)
class Damage:
    """What was done to the batch at ``position`` of ``path`` (offsets ``base``..``last``):
    after it, offsets ``lo``..``hi`` cannot be read and every other offset reads as written.
    ``structural``: the header no longer parses, so the log's read itself refuses it (and a
    Fetch answers CORRUPT_MESSAGE); otherwise only the CRC tells, which the consumer (or
    the Kafka client) checks."""

    name: str
    path: Path
    position: int
    base: int
    last: int
    lo: int
    hi: int
    structural: bool
    end: int  # the log end offset


def _set(fmt: str, at: int, fn: Callable[[int], int]) -> Callable[[bytearray, int, int], None]:
    def apply(raw: bytearray, pos: int, size: int) -> None:
        (old,) = struct.unpack_from(fmt, raw, pos + at)
        struct.pack_into(fmt, raw, pos + at, fn(old))
    return apply


# name -> (damage, structural). Byte positions of the header: kafka-storage.md section 1.
HEADER_DAMAGE: dict[str, tuple[Callable[[bytearray, int, int], None], bool]] = {
    "base_offset_too_large": (_set(">q", 0, lambda v: v + 1000), True),
    "base_offset_overlaps_next": (_set(">q", 0, lambda v: v + 3), True),
    "base_offset_below_previous": (_set(">q", 0, lambda v: v - 15), True),
    "base_offset_negative": (_set(">q", 0, lambda v: -1), True),
    "length_too_small": (_set(">i", 8, lambda v: 20), True),
    "length_negative": (_set(">i", 8, lambda v: -5), True),
    "length_a_little_short": (_set(">i", 8, lambda v: v - 13), True),
    "length_a_little_long": (_set(">i", 8, lambda v: v + 40), True),
    "length_past_the_file": (_set(">i", 8, lambda v: 10**6), True),
    "length_zero": (_set(">i", 8, lambda v: 0), True),
    "magic_1": (_set(">b", 16, lambda v: 1), True),
    "magic_3": (_set(">b", 16, lambda v: 3), True),
    "crc": (_set(">I", 17, lambda v: v ^ 0x10), False),
    "attributes_codec_7": (_set(">h", 21, lambda v: v | 7), True),
    "attributes_timestamp_type": (_set(">h", 21, lambda v: v ^ 8), False),
    "last_offset_delta_too_large": (_set(">i", 23, lambda v: v + 5), True),
    "last_offset_delta_negative": (_set(">i", 23, lambda v: -1), True),
    "last_offset_delta_too_small": (_set(">i", 23, lambda v: 0), True),
    "base_timestamp": (_set(">q", 27, lambda v: v + 1), False),
    "max_timestamp": (_set(">q", 35, lambda v: v - 1), False),
    "producer_id": (_set(">q", 43, lambda v: v ^ 1), False),
    "producer_epoch": (_set(">h", 51, lambda v: v ^ 1), False),
    "base_sequence": (_set(">i", 53, lambda v: v ^ 4), False),
    "records_count_too_large": (_set(">i", 57, lambda v: v + 1), True),
    "records_count_too_small": (_set(">i", 57, lambda v: v - 1), False),
    "records_count_negative": (_set(">i", 57, lambda v: -1), True),
    "record_byte": (lambda raw, pos, size: raw.__setitem__(pos + 70, raw[pos + 70] ^ 0xFF), False),
}

# Cuts of the damaged segment's file, relative to the victim batch (structural: the batch runs
# past the end of the file). Everything from the victim to the end of the segment is lost.
TRUNCATIONS: dict[str, Callable[[int, int], int]] = {
    "cut_in_length_field": lambda pos, size: pos + 10,
    "cut_in_header": lambda pos, size: pos + 30,
    "cut_in_records": lambda pos, size: pos + size // 2,
    "cut_last_byte_of_batch": lambda pos, size: pos + size - 1,
}

DAMAGES = sorted(HEADER_DAMAGE) + sorted(TRUNCATIONS)


def build(data: Path, topics: list[str]) -> None:
    """One topic per name, each BATCHES batches of BATCH records over several segments."""
    with kstore.open(data, retention_check_interval_ms=0) as store:
        for t in topics:
            store.create_topic(t, 1, config={"segment.bytes": SEGMENT_BYTES,
                                              "index.interval.bytes": 1000})
            lg = store.partition(t, 0)
            for i in range(BATCHES):
                lg.append_batch(make_batch(i * BATCH))


def damage(data: Path, topic: str, name: str, victim: int = VICTIM) -> Damage:
    """Apply damage ``name`` to batch ``victim`` of the second segment of ``topic``-0."""
    logs = sorted((data / f"{topic}-0").glob("*.log"))
    assert len(logs) >= 3, logs
    path = logs[SEGMENT]
    next_base = int(logs[SEGMENT + 1].name[:-4])
    raw = bytearray(path.read_bytes())
    res = scan(raw)
    assert res.ok and len(res) > victim + 1, res
    pos, size = int(res.positions[victim]), int(res.sizes[victim])
    base, last = int(res.base_offsets[victim]), int(res.last_offsets[victim])
    if name in HEADER_DAMAGE:
        fn, structural = HEADER_DAMAGE[name]
        fn(raw, pos, size)
        hi = last
    else:
        del raw[TRUNCATIONS[name](pos, size):]
        structural, hi = True, next_base - 1
    path.write_bytes(bytes(raw))
    return Damage(name, path, pos, base, last, base, hi, structural, BATCHES * BATCH)
