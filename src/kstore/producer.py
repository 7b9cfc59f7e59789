"""Producer: appends records to a Store's topics in batches built in C.

    producer = store.producer(linger_ms=5, batch_size=16384)
    producer.send("clicks", b"value", key=b"user-1")
    producer.send_many("clicks", values, keys=keys)       # lists, numpy arrays, (data, offsets)
    producer.flush()                                       # every record sent so far is in the log

Transactions (Kafka's, on disk and to kstore serve's clients alike):

    producer = store.producer(transactional_id="orders-app")   # fences older "orders-app"s
    producer.begin_transaction()
    producer.send("out", b"...")
    producer.send_offsets_to_transaction({("in", 0): 42}, "my-group")
    producer.commit_transaction()                          # or abort_transaction()

Thread-safe: any number of threads may send through one producer. Records with a key go to
``(murmur2(key) & 0x7fffffff) % partitions`` (the Java client's choice, ``partitioner="murmur2"``;
``"consistent_random"`` is librdkafka's crc32 default); keyless records stick to one partition
for about ``batch_size`` bytes, then move on.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import numpy as np

from kstore import _core
from kstore.errors import (
    ClosedError,
    InvalidRecordError,
    InvalidTxnStateError,
    KStoreError,
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
                 compression: str | None = None, partitioner: str = "murmur2",
                 transactional_id: str | None = None,
                 transaction_timeout_ms: int = 60_000) -> None:
        check_producer_args(linger_ms, batch_size, compression)
        self._setup(store, batch_size, linger_ms, compression, validate_partitioner(partitioner))
        self.transactional_id = transactional_id
        self._txn = None
        self._transactional = False
        self._pid = self._epoch_ = -1
        self._seqs: dict[tuple[str, int], int] = {}
        if transactional_id is not None:
            self._init_transactions(transaction_timeout_ms)
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

    # ------------------------------------------------------------------------------------------
    # Transactions

    def _init_transactions(self, timeout_ms: int) -> None:
        """Kafka's init_transactions: a producer id and a new epoch for the transactional id,
        which fences every earlier producer with that id and aborts what it left open."""
        if not isinstance(self.transactional_id, str) or not self.transactional_id:
            raise ValueError(f"transactional_id must be a non-empty str, not "
                             f"{self.transactional_id!r}")
        coord = self.store.transactions()
        deadline = time.monotonic() + 2.0
        while True:
            err, pid, epoch = coord.init_producer_id(self.transactional_id, timeout_ms, -1, -1, 4)
            # CONCURRENT_TRANSACTIONS: another process holds the id, maybe only for a moment
            # (finishing what a dead process left): retried for a while, as Kafka's clients do.
            if err != 51 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if err == 51 and coord.held_elsewhere(self.transactional_id):
            from kstore.errors import ConcurrentTransactionsError

            raise ConcurrentTransactionsError(
                f"transactional id {self.transactional_id!r} is in use by another process on "
                f"{self.store.path}: one data directory has one live producer per id (Kafka "
                f"fences the older one; processes here cannot). Close that producer or stop "
                f"its process (its open transaction is then aborted) and try again")
        _raise_txn(err, f"init_transactions for {self.transactional_id!r}")
        coord.retain(self.transactional_id, pid, epoch)
        self._coord = coord
        self._pid, self._epoch_ = pid, epoch
        self._transactional = True

    @property
    def producer_id(self) -> int:
        return self._pid

    @property
    def producer_epoch(self) -> int:
        return self._epoch_

    def _check_transactional(self) -> None:
        if not self._transactional:
            raise InvalidTxnStateError("this producer has no transactional_id: create it with "
                                       "store.producer(transactional_id=...)")
        if self.closed:
            raise ClosedError("the producer is closed")

    def begin_transaction(self) -> None:
        """Start a transaction: every record sent until commit or abort belongs to it."""
        self._check_transactional()
        if self._txn is not None:
            raise InvalidTxnStateError("a transaction is already open: commit or abort it first")
        self._txn = _Transaction(self)

    def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
        """Commit ``{(topic, partition): next offset to read}`` for consumer ``group`` as part
        of the open transaction: they take effect with its commit, and never if it aborts.
        Raises OffsetOutOfRangeError for an offset outside [0, log end], as consumer.commit
        does (nothing is committed then)."""
        self._check_transactional()
        txn = self._txn
        if txn is None:
            raise InvalidTxnStateError("send_offsets_to_transaction needs an open transaction")
        tid, pid, epoch = self.transactional_id, self._pid, self._epoch_
        _raise_txn(self._coord.add_offsets(tid, pid, epoch, group, 4), "send_offsets_to_transaction")
        txn.added.add(("__consumer_offsets", -1))
        _raise_txn(self._coord.check_offset_commit(tid, pid, epoch, group, 4),
                   "send_offsets_to_transaction")
        commits = {}
        for (topic, part), off in dict(offsets).items():
            self.store._check_commit_offset(topic, part, off)  # as consumer.commit's
            commits[(topic, part)] = (off, "", -1)
        self.store.commit_offsets_transactional(group, commits, pid, epoch)

    def commit_transaction(self) -> None:
        """Append what is pending, then commit: a COMMIT marker on every partition the
        transaction wrote (read_committed readers see its records from now on)."""
        self._end(True)

    def abort_transaction(self) -> None:
        """Abort: what the transaction wrote stays in the log, marked aborted, and
        read_committed readers never see it; its offsets are not committed."""
        self._end(False)

    def _end(self, commit: bool) -> None:
        self._check_transactional()
        txn = self._txn
        if txn is None:
            raise InvalidTxnStateError("no transaction is open")
        try:
            self.flush()
        finally:
            self._txn = None
        if txn.added:  # as Kafka's clients: a transaction that wrote nothing needs no EndTxn
            err = self._coord.end_txn(self.transactional_id, self._pid, self._epoch_, commit, 4)
            _raise_txn(err, "commit_transaction" if commit else "abort_transaction")

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
        kw: dict[str, Any] = dict(
            compression=codec,
            max_batch_bytes=max(min(self.batch_size, max_message_bytes), _core.HEADER_SIZE))
        if self._transactional and self._txn is None:
            raise InvalidTxnStateError(
                "this producer is transactional: call begin_transaction() before sending")
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
        txn = self._txn
        for a in range(0, len(idx), step):
            if txn is not None:
                txn.append_many(topic, partition, log, values, keys, timestamps,
                                idx[a:a + step], kw)
                continue
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
        """Flush every pending batch and stop the linger thread. An open transaction is
        aborted."""
        if self.closed:
            return
        if self._txn is not None:
            try:
                self.abort_transaction()
            except KStoreError as exc:  # fenced: its successor aborted it already
                import logging

                logging.getLogger("kstore.producer").info(
                    "closing producer %r: its open transaction was not aborted: %s",
                    self.transactional_id, exc)
        try:
            self.flush()
        finally:
            if self._transactional:
                # Another process may use the id from now on (if this is its current producer).
                self._coord.release(self.transactional_id, self._pid, self._epoch_)
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


_SEQUENCE_OFFSET = 53  # base sequence in a batch header (kafka-storage.md, RecordBatch v2)
_CRC_OFFSET = 17
_ATTRIBUTES_OFFSET = 21


def _raise_txn(err: int, what: str) -> None:
    if err:
        from kstore.errors import error_for_code

        cls = error_for_code(err)
        raise cls(f"{what}: {cls.__name__} (Kafka error {err}); a fenced producer (a newer one "
                  f"has the same transactional_id) must be closed")


class _Transaction:
    """The open transaction of a Producer: called per batch (never per record) by the
    compiled producer to add a partition to the transaction, number the batch, and append it
    under the coordinator's lock after checking the producer is still current (a zombie's
    batch must not land after its successor aborted its transaction)."""

    def __init__(self, producer: Producer) -> None:
        self.p = producer
        self.added: set[tuple[str, int]] = set()

    def batch_header(self, topic: str, partition: int) -> tuple[int, int, int]:
        p = self.p
        tp = (topic, partition)
        if tp not in self.added:
            res = p._coord.add_partitions(p.transactional_id, p._pid, p._epoch_, [tp], 4)
            _raise_txn(res[tp], f"adding {topic}-{partition} to the transaction")
            self.added.add(tp)
        return p._pid, p._epoch_, p._seqs.get(tp, 0)

    def append(self, topic: str, partition: int, log: Any, raw: bytes,
               n: int) -> tuple[int, int, int]:
        p = self.p
        coord = p._coord
        with coord._lock:
            _raise_txn(coord.verify_produce(p._pid, p._epoch_, topic, partition),
                       f"append to {topic}-{partition}")
            res = log.append_batch(raw, validate_records=False, verify_crc=False)
        log.transactions.note(p._pid, res[0], res[1])
        self._advance(topic, partition, n)
        return res

    def _advance(self, topic: str, partition: int, n: int) -> None:
        seqs = self.p._seqs
        seqs[(topic, partition)] = (seqs.get((topic, partition), 0) + n) % (2**31)

    def append_many(self, topic: str, partition: int, log: Any, values: Any, keys: Any,
                    timestamps: Any, idx: Any, kw: dict) -> None:
        """send_many's records for one partition: batches encoded in C, then numbered (each
        its own base sequence, as the CRC covers it: recomputed per batch)."""
        pid, epoch, seq = self.batch_header(topic, partition)
        raw = bytearray(_core.encode_batches(
            values, keys, timestamps, indices=idx, producer_id=pid, producer_epoch=epoch,
            base_sequence=0, transactional=True, **kw))
        view = memoryview(raw)
        total = 0
        for b in _core.iter_batches(view):
            pos = b.position
            raw[pos + _SEQUENCE_OFFSET:pos + _SEQUENCE_OFFSET + 4] = (
                (seq + total) % (2**31)).to_bytes(4, "big")
            crc = _core.crc32c(view[pos + _ATTRIBUTES_OFFSET:pos + b.size])
            raw[pos + _CRC_OFFSET:pos + _CRC_OFFSET + 4] = crc.to_bytes(4, "big")
            total += b.record_count
        del b
        view.release()
        seg_bytes = log.config["segment.bytes"]
        pos = 0
        with memoryview(raw) as mv:
            while pos < len(raw):
                n = _core.span_batches(mv, pos, seg_bytes)
                coord = self.p._coord
                with coord._lock:
                    _raise_txn(coord.verify_produce(pid, epoch, topic, partition),
                               f"append to {topic}-{partition}")
                    first, last, _ = log.append_batches(mv[pos:pos + n],
                                                        validate_records=False, verify_crc=False)
                log.transactions.note(pid, first, last)
                pos += n
        self._advance(topic, partition, total)
