"""Idempotent producer state: the sequence checks Kafka's broker applies per producer and
partition (kafka-storage.md section 9.1, kafka-protocol.md section 5).

Kafka keeps the last five batches of each producer on each partition, which is why clients cap
in-flight requests at five: a retried batch that already landed is recognised and answered with
its first offsets instead of being appended twice.

The state lives in memory and is rebuilt from the log: producer ids grow with the clock, so an
id below the first this process handed out belongs to a producer from before a restart, and the
first batch it sends to a partition makes the broker read that producer's last batches back from
the partition's newest segments (``restore``). A retry that straddles a restart (or a crash) is
then still recognised, as Kafka does with its producer state snapshots.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kstore.errors import (
    InvalidProducerEpochError,
    InvalidRecordError,
    OutOfOrderSequenceNumberError,
)

INT32_MAX = 2**31 - 1
KEEP_BATCHES = 5


@dataclass(frozen=True)
class BatchMeta:
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    log_append_time: int


class _Entry:
    __slots__ = ("batches", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: deque[BatchMeta] = deque(maxlen=KEEP_BATCHES)


def last_sequence(base_seq: int, last_offset_delta: int) -> int:
    """A batch's last sequence: sequences wrap at INT32_MAX to 0."""
    s = base_seq + last_offset_delta
    return s - INT32_MAX - 1 if s > INT32_MAX else s


class ProducerStates:
    """Per (producer id, topic, partition): the epoch and the last five batches.

    A producer's state goes after ``expiration_s`` without a batch (Kafka's
    producer.id.expiration.ms, a day): every idempotent producer (kafka-python's default) takes
    a new id, and ids must not pile up forever."""

    def __init__(self, expiration_s: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic,
                 allocate: Callable[[], int] | None = None) -> None:
        #: Hands out producer ids when given (a shared store's: unique across its processes).
        self._allocate = allocate
        self._lock = threading.Lock()
        self._state: dict[tuple[int, str, int], _Entry] = {}
        self._last_used: dict[tuple[int, str, int], float] = {}
        self._expiration_s = expiration_s
        self._clock = clock
        self._next_prune = clock() + min(expiration_s, 60.0)
        # Ids must not repeat across restarts (a restarted server meeting an old producer id
        # would match it against a new producer's sequences): start from the clock.
        self._next_id = int(time.time() * 1000) << 8
        self.first_id = self._next_id  # ids below it were handed out before this process

    def new_producer_id(self) -> tuple[int, int]:
        with self._lock:
            if self._allocate is not None:
                pid = self._allocate()
            else:
                pid = self._next_id
                self._next_id += 1
            self._prune()
            return pid, 0

    def __len__(self) -> int:
        return len(self._state)

    def _prune(self) -> None:
        """Drop producers idle for longer than the expiration (under the lock; at most once a
        minute, so the scan is amortised)."""
        now = self._clock()
        if now < self._next_prune:
            return
        self._next_prune = now + min(self._expiration_s, 60.0)
        cutoff = now - self._expiration_s
        for key in [k for k, t in self._last_used.items() if t < cutoff]:
            del self._last_used[key]
            self._state.pop(key, None)

    def check(self, producer_id: int, epoch: int, base_seq: int, last_offset_delta: int,
              topic: str, partition: int) -> BatchMeta | None:
        """Before an append: the earlier result for an exact duplicate, None for a batch in
        sequence; raises OutOfOrderSequenceNumberError / InvalidProducerEpochError."""
        if base_seq < 0:
            raise InvalidRecordError(
                f"producer {producer_id} sent a batch with sequence {base_seq}: an idempotent "
                f"batch needs a sequence >= 0")
        last_seq = last_sequence(base_seq, last_offset_delta)
        with self._lock:
            e = self._state.get((producer_id, topic, partition))
            if e is None:
                return None  # unknown here: any sequence starts it
            if epoch < e.epoch:
                raise InvalidProducerEpochError(
                    f"producer {producer_id} epoch {epoch} is older than {e.epoch}")
            if epoch > e.epoch:
                if base_seq != 0:
                    raise OutOfOrderSequenceNumberError(
                        f"producer {producer_id}: a new epoch {epoch} must start at sequence 0, "
                        f"not {base_seq} ({topic}-{partition})")
                return None
            for b in e.batches:
                if b.first_seq == base_seq and b.last_seq == last_seq:
                    return b
            if not e.batches:
                return None
            expected = e.batches[-1].last_seq + 1
            if expected > INT32_MAX:
                expected = 0
            if base_seq != expected:
                raise OutOfOrderSequenceNumberError(
                    f"producer {producer_id} epoch {epoch} on {topic}-{partition}: expected "
                    f"sequence {expected}, got {base_seq}")
            return None

    def known(self, producer_id: int, topic: str, partition: int) -> bool:
        return (producer_id, topic, partition) in self._state

    def restore(self, producer_id: int, topic: str, partition: int,
                batches: list[tuple[int, int, int, int, int, int]]) -> None:
        """Seed a producer's state on a partition from its batches found in the log, oldest
        first: (epoch, base sequence, last offset delta, first offset, last offset,
        log append time). Only the newest epoch's last five count."""
        if not batches:
            return
        epoch = batches[-1][0]
        with self._lock:
            key = (producer_id, topic, partition)
            e = self._state[key] = _Entry(epoch)
            for ep, seq, delta, first, last, t in batches:
                if ep == epoch:
                    e.batches.append(BatchMeta(seq, last_sequence(seq, delta), first, last, t))
            self._last_used[key] = self._clock()

    def record(self, producer_id: int, epoch: int, base_seq: int, last_offset_delta: int,
               topic: str, partition: int, first_offset: int, last_offset: int,
               log_append_time: int) -> None:
        """After a successful append."""
        meta = BatchMeta(base_seq, last_sequence(base_seq, last_offset_delta), first_offset,
                         last_offset, log_append_time)
        with self._lock:
            key = (producer_id, topic, partition)
            e = self._state.get(key)
            if e is None or e.epoch != epoch:
                e = self._state[key] = _Entry(epoch)
            e.batches.append(meta)
            self._last_used[key] = self._clock()
            self._prune()

    def forget_partition(self, topic: str) -> None:
        """A deleted topic's producer state goes with it."""
        with self._lock:
            for key in [k for k in self._state if k[1] == topic]:
                del self._state[key]
                self._last_used.pop(key, None)
