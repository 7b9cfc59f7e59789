"""Producer: appends records to a Store's topics in batches built in C.

    producer = store.producer(linger_ms=5, batch_size=16384)
    producer.send("clicks", b"value", key=b"user-1")
    producer.send_many("clicks", values, keys=keys)       # lists, numpy arrays, (data, offsets)
    producer.flush()                                       # every record sent so far is in the log

Thread-safe: any number of threads may send through one producer. Records with a key go to
``(murmur2(key) & 0x7fffffff) % partitions`` (the Java client's choice, ``partitioner="murmur2"``;
``"consistent_random"`` is librdkafka's crc32 default); keyless records stick to one partition
for about ``batch_size`` bytes, then move on.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import numpy as np

from kstore import _core
from kstore.errors import (
    ClosedError,
    InvalidRecordError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)
from kstore.topic import validate_partitioner

RecordMetadata = _core.RecordMetadata


def check_producer_args(linger_ms: Any, batch_size: Any, compression: Any) -> None:
    """The checks of a producer's arguments (embedded and kstore.cluster alike)."""
    if not isinstance(linger_ms, int) or linger_ms < 0:
        raise ValueError(f"linger_ms must be a non-negative int, not {linger_ms!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
    if compression is not None:
        _core.codec_id(compression)


class Producer(_core.ProducerCore):
    def __init__(self, store: Any, *, linger_ms: int = 5, batch_size: int = 16384,
                 compression: str | None = None, partitioner: str = "murmur2") -> None:
        check_producer_args(linger_ms, batch_size, compression)
        self._setup(store, batch_size, linger_ms, compression, validate_partitioner(partitioner))
        # Where keyless send_many calls start. numpy's global generator is copied into forked
        # processes, so writers of a multiprocessing pool all started each call on the same
        # partition and queued behind each other's appends to it (issue 14's benchmark).
        self._spread = random.Random()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if linger_ms > 0:
            # One background flusher for every partition (no thread per partition).
            self._thread = threading.Thread(target=self._linger_loop, name="kstore-linger",
                                            daemon=True)
            self._thread.start()

    def _linger_loop(self) -> None:
        wait: float | None = self.linger_ms / 1000
        while not self.closed:
            self._wake.wait(wait)
            self._wake.clear()
            if self.closed:
                break
            try:
                due = self._expire(self.linger_ms)
                if due < 0:
                    # Nothing pending: sleep until a batch starts. Waking every linger_ms
                    # for nothing cost writer processes of one store most of their scaling
                    # (each wake-up takes the GIL from a thread that may hold a partition's
                    # shared lock). Look once more after arming, so no batch slips past.
                    self._on_pending = self._wake.set
                    due = self._expire(self.linger_ms)
                    if due >= 0:
                        self._on_pending = None
            except Exception:  # an append failed; the next send or flush reports it
                due = self.linger_ms
            wait = None if due < 0 else max(due, 1) / 1000

    def send_many(self, topic: str, values: Any, keys: Any = None, timestamps: Any = None,
                  partition: int | None = None) -> int:
        """Append many records at once, encoded into batches in C, and return how many.

        ``values`` and ``keys``: lists of bytes-like/None, 2-D uint8 numpy arrays (fixed
        width) or ``(data, offsets)``. With keys, each record goes to its key's partition;
        without, records are spread over the partitions in contiguous runs (sticky). The
        records are in the log when this returns.
        """
        if self.closed:
            raise ClosedError("send_many on a closed producer")
        nparts, max_message_bytes, codec, require_keys = self.store._producer_topic(topic)
        codec = codec if codec is not None else (self.compression or "none")
        self._flush_topic(topic)  # keep each partition's order with earlier send() calls
        n = _count(values)
        if n == 0:
            return 0
        if keys is not None and _count(keys) != n:
            raise ValueError(f"{_count(keys)} keys for {n} values")
        if require_keys and (keys is None or (isinstance(keys, list) and None in keys)):
            raise InvalidRecordError(
                f"topic {topic!r} is compacted: it cannot accept records without a key "
                f"(INVALID_RECORD); nothing was written")
        biggest = _core.max_record_size(values, keys)
        if biggest > max_message_bytes:
            # Checked before anything is written: send_many writes all of its records or none.
            raise RecordTooLargeError(
                f"a record of up to {biggest} bytes (with its batch header) exceeds "
                f"max.message.bytes={max_message_bytes} of topic {topic!r}; nothing was written")
        kw = dict(compression=codec,
                  max_batch_bytes=max(min(self.batch_size, max_message_bytes), _core.HEADER_SIZE))
        if partition is not None:
            if not 0 <= partition < nparts:
                raise UnknownTopicOrPartitionError(
                    f"partition {partition} does not exist: topic {topic!r} has {nparts}")
            self._append(topic, partition, values, keys, timestamps, np.arange(n), kw)
            return n
        if keys is None or self.partitioner == "random":
            # Keyless: contiguous runs, one per partition (stickiness at the scale of a call).
            chunk = -(-n // nparts)
            order = np.arange(n, dtype=np.int64)
            start_p = (self._spread.randrange(nparts) + os.getpid()) % nparts
            todo = [(start_p + i) % nparts for i in range(nparts)]
            for i in range(nparts):
                part = order[i * chunk:(i + 1) * chunk]
                if len(part):
                    # Any partition will do for these records: one another process is not
                    # appending to right now first (shared stores), else the next in turn.
                    p = self._idle_partition(topic, todo)
                    todo.remove(p)
                    self._append(topic, p, values, keys, timestamps, part, kw)
            return n
        parts = _core.partitions_for_keys(keys, nparts, self.partitioner)
        sticky = parts < 0
        if sticky.any():
            parts[sticky] = (self._spread.randrange(nparts) + os.getpid()) % nparts
        for p in range(nparts):
            idx = np.flatnonzero(parts == p)  # a stable argsort of 1M keys cost 26 ms; this, 2
            if len(idx):
                self._append(topic, p, values, keys, timestamps, idx, kw)
        return n

    def _idle_partition(self, topic: str, candidates: list[int]) -> int:
        if len(candidates) > 1 and self.store.shared:
            for p in candidates:
                tail = self.store.partition(topic, p)._tail
                if tail is None or not tail.busy():
                    return p
        return candidates[0]

    #: Records encoded per append in send_many: about 2 MiB, so the buffer is reused from
    #: malloc and stays in cache. Encoding a million records into one fresh 121 MB buffer spent
    #: half its time in page faults.
    CHUNK_RECORDS = 16384

    def _append(self, topic: str, partition: int, values: Any, keys: Any, timestamps: Any,
                idx: np.ndarray, kw: dict) -> None:
        log = self.store.partition(topic, partition)
        step = self.CHUNK_RECORDS
        seg_bytes = log.config["segment.bytes"]
        for a in range(0, len(idx), step):
            raw = _core.encode_batches(values, keys, timestamps, indices=idx[a:a + step], **kw)
            if len(raw) <= seg_bytes:
                log.append_batches(raw, validate_records=False, verify_crc=False)
                continue
            # One append may not exceed segment.bytes: cut the chunk at batch boundaries.
            view = memoryview(raw)
            pos = 0
            while pos < len(raw):
                n = _core.span_batches(view, pos, seg_bytes)
                log.append_batches(view[pos:pos + n], validate_records=False, verify_crc=False)
                pos += n

    def close(self) -> None:
        """Flush every pending batch and stop the linger thread."""
        if self.closed:
            return
        self.flush()
        self._mark_closed()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.store._forget(self)

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(values: Any) -> int:
    if isinstance(values, tuple) and len(values) == 2 and isinstance(values[1], np.ndarray):
        return len(values[1]) - 1
    return len(values)
