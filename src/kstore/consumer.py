"""Consumer: reads a Store's topics from positions it keeps per partition, waits for new data
without polling, and commits offsets to ``__consumer_offsets`` the way Kafka does.

    consumer = store.consumer(group="etl", topics=["clicks"], auto_offset_reset="earliest")
    for record in consumer:          # blocks for new records until close() or wakeup()
        ...
    consumer.poll(timeout=1.0, max_records=500)          # list of Record
    consumer.poll_batches(timeout=1.0)                   # numpy columns per partition

Consumers of one group split the subscribed partitions between them (Kafka's range
assignment) and rebalance when one joins, closes or dies, whether they live in one process or
in several processes on one data directory (kstore.localgroups: no server; a dead process is
seen within ``session_timeout_ms`` by the lock it held). A store opened ``read_only`` cannot
commit, so its group consumers balance only among themselves, in this process.
``group=None`` consumes without committing, as a Kafka consumer without ``group.id``. A Consumer is used by one thread at a
time (``wakeup`` and ``close`` may come from another).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kstore import _core, localgroups
from kstore.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
    UnsupportedCompressionTypeError,
)
from kstore.log import EARLIEST_TIMESTAMP

TopicPartition = tuple[str, int]
# What decoding a stored batch raises when its bytes are damaged (an unknown codec id in a
# stored batch is damage too: nothing with one was ever accepted).
_DAMAGE = (CorruptRecordError, UnsupportedCompressionTypeError)
# Reads up to this size walk every batch header (larger ones jump through the offset index):
# after a read fails to decode, the consumer reads again this small to find the damage.
CHECKED_READ_BYTES = _core.INDEX_JUMP_MIN_BYTES
RESETS = ("earliest", "latest", "none")


def _columns_end(mv: Any, pos: int, want: int) -> tuple[int, int]:
    """Where the batches of ``mv`` that hold ``want`` records at or after ``pos`` end, and the
    offset after them ((-1, -1): all of them). A read takes up to 16 MiB, which compressed batches inflate to far more records
    than a poll returns; decoding all of it on every poll made reading a topic O(n^2) (0.67 M
    records/s instead of 5 M for lz4 at max_records=100,000). Header reads only: nothing is
    decompressed here."""
    at = n = 0
    for b in _core.iter_batches(mv):
        at += _core.LOG_OVERHEAD + b.batch_length
        n += b.record_count if b.base_offset >= pos else max(0, b.last_offset - pos + 1)
        if n >= want:
            return at, b.last_offset + 1
    return -1, -1


@dataclass
class PartitionColumns:
    """Records of one partition as numpy columns (see kstore.records.Columns), zero-copy over
    the segment for uncompressed data. Only rows ``start:end`` of ``columns`` belong to this
    poll; the properties below are already cut to them."""

    topic: str
    partition: int
    columns: _core.Columns
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def data(self) -> Any:
        return self.columns.data

    @property
    def offsets(self) -> np.ndarray:
        return self.columns.offsets[self.start:self.end]

    @property
    def timestamps(self) -> np.ndarray:
        return self.columns.timestamps[self.start:self.end]

    @property
    def key_positions(self) -> np.ndarray:
        return self.columns.key_positions[self.start:self.end]

    @property
    def key_lengths(self) -> np.ndarray:
        return self.columns.key_lengths[self.start:self.end]

    @property
    def value_positions(self) -> np.ndarray:
        return self.columns.value_positions[self.start:self.end]

    @property
    def value_lengths(self) -> np.ndarray:
        return self.columns.value_lengths[self.start:self.end]

    def values(self) -> list[bytes | None]:
        return self.columns.values()[self.start:self.end]

    def keys(self) -> list[bytes | None]:
        return self.columns.keys()[self.start:self.end]


class GroupState:
    """An in-process consumer group: members, generation, range assignment."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Consumer] = []
        self.generation = 0
        self.assignments: dict[str, list[TopicPartition]] = {}
        # Who reads each partition now. A partition moved by a rebalance goes to its new
        # member only after the old one committed its position and let go (Kafka's rebalance
        # barrier): otherwise the new member starts from an older commit and repeats records.
        self.holders: dict[TopicPartition, str] = {}
        self.lock = threading.Lock()

    def join(self, member: "Consumer") -> None:
        with self.lock:
            if member not in self.members:
                self.members.append(member)
            self._rebalance(member.store)
        self._sync_others(member)

    def leave(self, member: "Consumer") -> None:
        with self.lock:
            if member in self.members:
                self.members.remove(member)
            for tp, holder in list(self.holders.items()):
                if holder == member.member_id:
                    del self.holders[tp]
            self._rebalance(member.store)
        self._sync_others(member)

    def _sync_others(self, member: "Consumer") -> None:
        """Let the other members commit and release what they lose now, unless one is inside a
        poll (it does so itself on its next pass, woken by the notify below). Members that
        commit by hand are left to do it in their own next poll or commit, as a Kafka
        consumer's rebalance happens in its own poll: taking a partition away from them here,
        between their poll and their commit, would drop records they were given and the new
        owner would deliver them again."""
        for m in list(self.members):
            if m is not member and m.enable_auto_commit and m._sync_lock.acquire(blocking=False):
                try:
                    m._sync_assignment()
                finally:
                    m._sync_lock.release()
        member.store.signal.notify()

    def view(self, member: "Consumer") -> tuple[int, list[TopicPartition]]:
        """(generation, the partitions assigned to ``member`` in it)."""
        with self.lock:
            return self.generation, list(self.assignments.get(member.member_id, []))

    def check_interval(self, member: "Consumer") -> float | None:
        """How often a waiting poll must look at the group (None: it is woken when needed)."""
        return None

    def claim(self, member: "Consumer", tp: TopicPartition) -> bool:
        """Take a partition assigned to ``member`` unless its previous owner still holds it."""
        with self.lock:
            holder = self.holders.get(tp)
            if holder is None or holder == member.member_id:
                self.holders[tp] = member.member_id
                return True
            return False

    def release(self, member: "Consumer", parts: Iterable[TopicPartition]) -> None:
        with self.lock:
            for tp in parts:
                if self.holders.get(tp) == member.member_id:
                    del self.holders[tp]
        member.store.signal.notify()  # the new owner may be waiting for it

    def _rebalance(self, store: Any) -> None:
        """Kafka's RangeAssignor: per topic, partitions in order, members sorted by id, the
        first ``n % m`` members get one extra."""
        self.generation += 1
        counts: dict[str, int] = {}
        for t in {t for m in self.members for t in m.subscription}:
            try:
                counts[t] = store.partitions_for(t)
            except UnknownTopicOrPartitionError:
                continue
        out = localgroups.range_assign({m.member_id: list(m.subscription) for m in self.members},
                                       counts)
        self.assignments = out


class SharedGroupState(GroupState):
    """A consumer group whose members may live in several processes on the store's data
    directory (kstore.localgroups). ``members`` are the Consumers of this process only; the
    assignment, generations and the rebalance barrier (claim locks) are the group files'."""

    def __init__(self, name: str, store: Any) -> None:
        super().__init__(name)
        self._store = store
        # Expiry (KIP-211) must not drop the commits of a group with members elsewhere.
        if not any(getattr(h, "kstore_local_groups", False) for h in store.group_activity_hooks):
            hook = localgroups.activity_hook(store.path, store.now_ms)
            hook.kstore_local_groups = True  # type: ignore[attr-defined]
            store.group_activity_hooks.append(hook)

    def join(self, member: "Consumer") -> None:
        if member._member is None:
            member._member = localgroups.GroupMember(
                member.store.path, self.name, member.member_id, member.store.partitions_for,
                session_timeout_ms=member.session_timeout_ms, client_id=member.client_id)
        with member._sync_lock:
            member._member.join(member.subscription)
        with self.lock:
            if member not in self.members:
                self.members.append(member)
        self._sync_others(member)

    def leave(self, member: "Consumer") -> None:
        with self.lock:
            if member in self.members:
                self.members.remove(member)
        if member._member is not None:
            member._member.leave()
        self._sync_others(member)

    def view(self, member: "Consumer") -> tuple[int, list[TopicPartition]]:
        if member._member is None:
            return self.generation, []
        generation, parts = member._member.refresh()
        return generation, list(parts)

    def check_interval(self, member: "Consumer") -> float | None:
        return None if member._member is None else member._member.check_interval

    def claim(self, member: "Consumer", tp: TopicPartition) -> bool:
        return member._member is not None and member._member.claim(tp)

    def release(self, member: "Consumer", parts: Iterable[TopicPartition]) -> None:
        if member._member is not None:
            member._member.release(parts)
        member.store.signal.notify()  # a new owner in this process may be waiting for it


def check_consumer_args(group: Any, auto_offset_reset: Any, max_poll_records: Any,
                        session_timeout_ms: Any, isolation_level: Any = "read_uncommitted") -> None:
    """The checks of a consumer's arguments (embedded and kstore.cluster alike)."""
    if group is not None and (not isinstance(group, str) or not group):
        raise InvalidGroupIdError(f"group must be a non-empty str or None, not {group!r}")
    if auto_offset_reset not in RESETS:
        raise ValueError(f"auto_offset_reset must be one of {', '.join(RESETS)}, "
                         f"not {auto_offset_reset!r}")
    if not isinstance(max_poll_records, int) or max_poll_records < 1:
        raise ValueError(f"max_poll_records must be a positive int, not {max_poll_records!r}")
    if (not isinstance(session_timeout_ms, int) or isinstance(session_timeout_ms, bool)
            or session_timeout_ms < 1):
        raise InvalidSessionTimeoutError(
            f"session_timeout_ms must be a positive int (ms within which the group sees "
            f"that a member's process died), not {session_timeout_ms!r}")
    if isolation_level not in ISOLATION_LEVELS:
        raise ValueError(f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}, "
                         f"not {isolation_level!r}")


class ConsumerBase:
    """What the embedded Consumer and kstore.cluster's ClusterConsumer share: iteration, the
    bookkeeping of committed positions, the closed check and the context manager. Subclasses
    set the attributes below and implement ``poll``, ``poll_async`` and ``_send_commit``."""

    group: str | None
    enable_auto_commit: bool
    auto_commit_interval: float
    max_poll_records: int
    _assigned: list[TopicPartition]
    _positions: dict[TopicPartition, int]
    _committed_positions: dict[TopicPartition, int]
    _last_commit: float
    _closed: bool

    def poll(self, timeout: float | None = 1.0, max_records: int | None = None) -> list[_core.Record]:
        raise NotImplementedError

    async def poll_async(self, timeout: float | None = 1.0,
                         max_records: int | None = None) -> list[_core.Record]:
        raise NotImplementedError

    def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[_core.Record]:
        """Every record, waiting for new ones, until ``close()`` or ``wakeup()``."""
        while not self._closed:
            recs = self.poll(timeout=None, max_records=max(self.max_poll_records, 10_000))
            if not recs:
                return
            yield from recs

    async def __aiter__(self) -> AsyncIterator[_core.Record]:
        while not self._closed:
            recs = await self.poll_async(timeout=None, max_records=max(self.max_poll_records, 10_000))
            if not recs:
                return
            for r in recs:
                yield r

    def _commit_positions(self, parts: list[TopicPartition]) -> None:
        todo = {tp: self._positions[tp] for tp in parts
                if self._committed_positions.get(tp) != self._positions[tp]}
        if todo:
            self._send_commit(todo)
            self._committed_positions.update(todo)
        self._last_commit = time.monotonic()

    def _maybe_auto_commit(self) -> None:
        if self.enable_auto_commit and time.monotonic() - self._last_commit >= self.auto_commit_interval:
            self._commit_positions([tp for tp in self._assigned if tp in self._positions])

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Consumer(ConsumerBase):
    def __init__(self, store: Any, group: str | None = None,
                 topics: Iterable[str] | None = None, *, auto_offset_reset: str = "latest",
                 enable_auto_commit: bool = True, auto_commit_interval_ms: int = 5000,
                 max_poll_records: int = 500, fetch_max_bytes: int = 1 << 20,
                 client_id: str = "kstore",
                 session_timeout_ms: int = localgroups.DEFAULT_SESSION_TIMEOUT_MS,
                 isolation_level: str = "read_uncommitted") -> None:
        check_consumer_args(group, auto_offset_reset, max_poll_records, session_timeout_ms,
                            isolation_level)
        self.store = store
        self.group = group
        # read_committed: stop at each partition's last stable offset and leave out aborted
        # transactions. Either way, transaction markers (control batches) are never records.
        self.isolation_level = isolation_level
        self._committed_only = isolation_level == "read_committed"
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self._member: localgroups.GroupMember | None = None
        self.member_id = f"{client_id}-{uuid.uuid4()}"
        self.auto_offset_reset = auto_offset_reset
        self.enable_auto_commit = enable_auto_commit and group is not None and not store.read_only
        self.auto_commit_interval = auto_commit_interval_ms / 1000
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.subscription: list[str] = []
        self._assigned: list[TopicPartition] = []
        self._manual = False
        self._generation = -1
        self._positions: dict[TopicPartition, int] = {}
        self._committed_positions: dict[TopicPartition, int] = {}
        self._pending: dict[TopicPartition, list[_core.Record]] = {}
        self._unclaimed: set[TopicPartition] = set()
        self._sync_lock = threading.RLock()  # held while this consumer fetches
        self._rr = 0
        self._woken = False
        self._closed = False
        self._last_commit = time.monotonic()
        if topics is not None:
            if isinstance(topics, str):
                raise TypeError("topics must be a list of topic names, not a str")
            self.subscribe(list(topics))

    # ==========================================================================================
    # Assignment

    def subscribe(self, topics: list[str]) -> None:
        """Consume these topics; with a group, share their partitions with the group's other
        consumers, in this process and (unless the store is read_only) in other processes on
        the same data directory."""
        self._check_open()
        if self._manual:
            raise ValueError("this consumer was assigned partitions by hand; subscribe or "
                             "assign, not both")
        for t in topics:
            if not isinstance(t, str):
                raise TypeError(f"topic names must be str, not {type(t).__name__}")
            self.store.partitions_for(t)  # UnknownTopicOrPartitionError (or auto-create)
        self.subscription = list(topics)
        if self.group is not None:
            state = self.store._groups.get(self.group)
            if state is None:
                new = (GroupState(self.group) if self.store.read_only
                       else SharedGroupState(self.group, self.store))
                state = self.store._groups.setdefault(self.group, new)
            state.join(self)
            self._sync_assignment()
        else:
            self._set_assignment([(t, p) for t in topics for p in range(self.store.partitions_for(t))])

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Consume exactly these partitions (no group rebalancing)."""
        self._check_open()
        if self.subscription:
            raise ValueError("this consumer subscribed to topics; subscribe or assign, not both")
        parts = []
        for t, p in partitions:
            n = self.store.partitions_for(t)
            if not isinstance(p, int) or not 0 <= p < n:
                raise UnknownTopicOrPartitionError(f"partition {p!r} does not exist: topic {t!r} has {n}")
            parts.append((t, p))
        self._manual = True
        self._set_assignment(parts)

    def assignment(self) -> set[TopicPartition]:
        self._sync_assignment()
        return set(self._assigned)

    def _set_assignment(self, parts: list[TopicPartition]) -> None:
        new = set(parts)
        for tp in list(self._positions):
            if tp not in new:
                del self._positions[tp]
                self._pending.pop(tp, None)
        self._assigned = list(parts)

    def _sync_assignment(self) -> None:
        if self.group is None or not self.subscription:
            return
        # Also called from another consumer's thread (_sync_others) and by assignment():
        # the group member's files and claims are used by one thread at a time.
        with self._sync_lock:
            self._sync_assignment_locked()

    def _sync_assignment_locked(self) -> None:
        state = self.store._groups.get(self.group)
        if state is None:
            return
        generation, mine = state.view(self)
        if generation == self._generation and mine == self._assigned:
            return
        before = set(self._assigned)
        revoked = [tp for tp in self._assigned if tp not in set(mine)]
        if revoked and self.enable_auto_commit:
            self._commit_positions([tp for tp in revoked if tp in self._positions])
        self._set_assignment(mine)
        self._generation = generation
        if revoked:
            state.release(self, revoked)
        # Partitions new to this member wait for their previous owner to let go; the ones it
        # kept it holds already (or is still waiting for).
        self._unclaimed = (self._unclaimed & set(mine)) | (set(mine) - before)

    def _usable(self, tp: TopicPartition) -> bool:
        """False while a partition new to this member is still held by its previous owner."""
        if tp not in self._unclaimed:
            return True
        state = self.store._groups.get(self.group)
        if state is None or state.claim(self, tp):
            self._unclaimed.discard(tp)
            return True
        return False

    # ==========================================================================================
    # Positions

    def _position(self, tp: TopicPartition) -> int:
        pos = self._positions.get(tp)
        if pos is None:
            committed = None
            if self.group is not None:
                committed = self.store.committed(self.group, *tp)
            pos = self._reset(tp) if committed is None else committed
            self._positions[tp] = pos
        return pos

    def _reset(self, tp: TopicPartition) -> int:
        lg = self.store.partition(*tp)
        if self.auto_offset_reset == "earliest":
            return lg.log_start_offset
        if self.auto_offset_reset == "latest":
            return lg.log_end_offset
        raise NoOffsetForPartitionError(
            f"no committed offset for {tp[0]}-{tp[1]} in group {self.group!r} and "
            f"auto_offset_reset='none'; seek() first or choose 'earliest'/'latest'")

    def position(self, topic: str, partition: int) -> int:
        """The offset of the next record this consumer will return for the partition."""
        self._check_open()
        tp = (topic, partition)
        self._sync_assignment()
        if tp not in self._assigned:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        return self._position(tp)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read the partition from ``offset`` next (out of range: auto_offset_reset applies)."""
        self._check_open()
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        tp = (topic, partition)
        self._sync_assignment()
        if tp not in self._assigned:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        self._pending.pop(tp, None)
        self._positions[tp] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or self.assignment():
            self.seek(tp[0], tp[1], self.store.partition(*tp).log_start_offset)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or self.assignment():
            self.seek(tp[0], tp[1], self.store.partition(*tp).log_end_offset)

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """For each partition, the first offset whose timestamp >= the given one (or None)."""
        return {tp: self.store.partition(*tp).offset_for_time(ts) for tp, ts in timestamps.items()}

    def committed(self, topic: str, partition: int) -> int | None:
        if self.group is None:
            return None
        return self.store.committed(self.group, topic, partition)

    # ==========================================================================================
    # Fetching

    def _fetch_partition(self, tp: TopicPartition, budget: int) -> list[_core.Record]:
        pending = self._pending.pop(tp, None)
        if pending:
            take, rest = pending[:budget], pending[budget:]
            if rest:
                self._pending[tp] = rest
            self._positions[tp] = take[-1].offset + 1
            return take
        lg = self.store.partition(*tp)
        pos = self._position(tp)
        if pos == lg.log_end_offset:
            return []
        lso = lg.last_stable_offset() if self._committed_only else None
        if lso is not None and pos >= lso:
            return []
        pos, fs = self._read(lg, tp, pos, self.fetch_max_bytes, lso)
        aborted = self._aborted(lg, pos, fs)
        index = _core._aborted_index(aborted) if aborted else None
        recs: list[_core.Record] = []
        topic, part = tp
        try:
            last = pos - 1
            for b in fs.batches():
                # Offsets must rise and stay below the log end: a base offset is outside the
                # CRC, and a large read walks only the headers near its end (as Kafka's do).
                if b.base_offset <= last and b.position:
                    raise CorruptRecordError("batch offsets do not rise")
                last = b.last_offset
                if b.attributes & _ATTR_TRANSACTIONAL and _left_out(b, index):
                    continue
                recs += b.records(True, _core.DEFAULT_MAX_DECOMPRESSED_BYTES, topic, part, pos)
            if last >= lg.cached_log_end_offset:
                raise CorruptRecordError("batch offsets run past the log end")
        except _DAMAGE:
            # Deliver every record before the damaged batch; raise at it on the next poll
            # (or now, when it comes first), with the offsets it covers.
            fs, good, after = self._checked_prefix(lg, tp, pos)
            recs = []
            for b in _core.iter_batches(fs.memoryview(), 0, good):
                if b.attributes & _ATTR_TRANSACTIONAL and _left_out(b, index):
                    continue
                recs += b.records(True, _core.DEFAULT_MAX_DECOMPRESSED_BYTES, topic, part, pos)
            if not recs:
                self._positions[tp] = max(pos, after)
                return []
        if not recs:
            if len(fs):
                self._positions[tp] = max(pos, fs.next_offset)
            return []
        if len(recs) > budget:
            self._pending[tp] = recs[budget:]
            recs = recs[:budget]
        self._positions[tp] = recs[-1].offset + 1
        return recs

    def _aborted(self, lg: Any, pos: int, fs: Any) -> list[tuple[int, int, int]]:
        """read_committed: the aborted transactions that may hold records of ``fs``."""
        if not self._committed_only or not len(fs):
            return []
        return [(a.producer_id, a.first_offset, a.last_offset)
                for a in lg.aborted_transactions(pos, fs.next_offset)]

    def _read(self, lg: Any, tp: TopicPartition, pos: int, max_bytes: int,
              max_offset: int | None = None) -> tuple[int, Any]:
        """(position, slice read there). Out of range (e.g. retention deleted the segment it
        was in), the position resets as auto_offset_reset says, or OffsetOutOfRangeError is
        raised with 'none'. A writer deleting more meanwhile moves the log start again, so the
        reset is tried a few times."""
        for attempt in range(3):
            try:
                return pos, lg.read(pos, max_bytes, max_offset)
            except OffsetOutOfRangeError:
                if self.auto_offset_reset == "none" or attempt == 2:
                    raise
                self._positions[tp] = pos = self._reset(tp)
        raise AssertionError("unreachable")

    def _checked_prefix(self, lg: Any, tp: TopicPartition, pos: int) -> tuple[Any, int, int]:
        """After a read failed to decode: read again, small enough that the log checks every
        header (CHECKED_READ_BYTES), and cut before the first batch that fails its CRC or does
        not decode: (slice, bytes of good batches, the offset after them). Raises the
        CorruptRecordError, with the offsets the damage covers, when it comes first."""
        fs = lg.read(pos, CHECKED_READ_BYTES)
        good, after, err = self._good_prefix(tp, fs)
        if good == 0 and err is not None:
            raise err from None
        return fs, good, after

    def _good_prefix(self, tp: TopicPartition,
                     fs: Any) -> tuple[int, int, CorruptRecordError | None]:
        """(bytes of the good batches at the start of a slice, the offset after them, the
        error for the damaged batch after them, naming its offsets, file and byte, or None)."""
        # Over the whole mapping, so that the positions in messages are the file's.
        good, after = fs.position, fs.base_offset
        it = _core.iter_batches(fs._map, fs.position, fs.position + len(fs))
        while True:
            try:
                b = next(it)
            except StopIteration:
                return len(fs), after, None
            except _DAMAGE as exc:
                # The log checked these headers: only a file changed under us gets here.
                err, lo, hi = exc, after, None
                break
            try:
                b.validate(deep=True)
            except _DAMAGE as exc:
                err, lo, hi = exc, b.base_offset, b.last_offset
                break
            good, after = b.position + b.size, b.last_offset + 1
        topic, part = tp
        at = good
        good -= fs.position
        span = f"offsets {lo}..{hi}" if hi is not None else f"offsets from {lo}"
        skip = (f"Seek to {hi + 1} to read on past it (`kstore consume --offset {hi + 1}`); "
                if hi is not None else "")
        cls = type(err) if isinstance(err, CorruptRecordError) else CorruptRecordError
        out = cls(f"{topic}-{part}: corrupt batch at byte {at} of {fs.file.path} "
                  f"({span}): {err}. {skip}`kstore verify` lists every damaged batch")
        out.locate(topic=topic, partition=part, offset=lo, last_offset=hi, path=fs.file.path,
                   position=at)
        return good, after, out

    def _fetch(self, max_records: int) -> list[_core.Record]:
        self._sync_assignment()
        parts = self._assigned
        n = len(parts)
        out: list[_core.Record] = []
        for i in range(n):
            if len(out) >= max_records:
                break
            tp = parts[(self._rr + i) % n]
            if self._unclaimed and not self._usable(tp):
                continue
            out += self._fetch_partition(tp, max_records - len(out))
        if n:
            self._rr = (self._rr + 1) % n
        return out

    def poll(self, timeout: float | None = 1.0, max_records: int | None = None) -> list[_core.Record]:
        """Records from the assigned partitions, up to ``max_records``; waits up to ``timeout``
        seconds (None: until data, wakeup or close) when there are none yet."""
        self._check_open()
        max_records = max_records or self.max_poll_records
        deadline = None if timeout is None else time.monotonic() + timeout
        sig = self.store.signal
        while True:
            version = sig.version
            with self._sync_lock:
                self._maybe_auto_commit()
                recs = self._fetch(max_records)
            if recs or self._woken or self._closed:
                self._woken = False
                return recs
            if not self._wait(sig, version, deadline):
                return []

    def _wait(self, sig: Any, version: int, deadline: float | None) -> bool:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        if self.store.read_only:
            # Another process writes: nothing in this process is woken by its appends.
            time.sleep(0.002 if remaining is None else min(0.002, remaining))
            return True
        sig.wait(version, self._wait_cap(remaining))
        return not self._closed

    def _wait_cap(self, remaining: float | None) -> float | None:
        """``remaining``, cut to the group's check interval when members in other processes
        may die, join or let go of a partition without waking this one."""
        state = self.store._groups.get(self.group) if self.group is not None else None
        cap = None if state is None else state.check_interval(self)
        if cap is None:
            return remaining
        return cap if remaining is None else min(cap, remaining)

    def poll_batches(self, timeout: float | None = 1.0,
                     max_records: int = 100_000) -> list[PartitionColumns]:
        """Like ``poll`` but columnar: per partition, numpy offsets and timestamps and the
        positions of keys and values in one buffer. No Python object per record."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        sig = self.store.signal
        while True:
            version = sig.version
            with self._sync_lock:
                self._maybe_auto_commit()
                out = self._fetch_columns(max_records)
            if out or self._woken or self._closed:
                self._woken = False
                return out
            if not self._wait(sig, version, deadline):
                return []

    def _fetch_columns(self, max_records: int) -> list[PartitionColumns]:
        self._sync_assignment()
        out = []
        left = max_records
        parts = self._assigned
        n = len(parts)
        for i in range(n):
            if left <= 0:
                break
            tp = parts[(self._rr + i) % n]
            if self._unclaimed and not self._usable(tp):
                continue
            pending = self._pending.pop(tp, None)
            if pending:
                self._positions[tp] = pending[0].offset
            lg = self.store.partition(*tp)
            pos = self._position(tp)
            if pos == lg.log_end_offset:
                continue
            lso = lg.last_stable_offset() if self._committed_only else None
            if lso is not None and pos >= lso:
                continue
            pos, fs = self._read(lg, tp, pos, max(self.fetch_max_bytes, 16 << 20), lso)
            if not len(fs):
                continue
            aborted = self._aborted(lg, pos, fs)
            after = cut = cut_next = -1
            try:
                mv = fs.memoryview()
                cut, cut_next = _columns_end(mv, pos, left)
                cols = _core.columns(mv, 0, cut, data_only=True, aborted=aborted)
                offs = cols.offsets
                # As in _fetch_partition: offsets rise and stay below the log end.
                if len(offs) and (offs[-1] >= lg.cached_log_end_offset
                                  or (len(offs) > 1 and bool((np.diff(offs) <= 0).any()))):
                    raise CorruptRecordError("batch offsets do not rise")
            except _DAMAGE:
                fs, good, after = self._checked_prefix(lg, tp, pos)
                cols = _core.columns(fs.memoryview(), 0, good, data_only=True, aborted=aborted)
            start = int(np.searchsorted(cols.offsets, pos))
            end = min(len(cols), start + left)
            if end > start:
                out.append(PartitionColumns(tp[0], tp[1], cols, start, end))
                left -= end - start
                self._positions[tp] = int(cols.offsets[end - 1]) + 1
            else:
                # Nothing to return (markers, aborted data): past what was looked at only.
                if after < 0:
                    after = fs.next_offset if cut < 0 else cut_next
                self._positions[tp] = max(pos, after)
        if n:
            self._rr = (self._rr + 1) % n
        return out

    async def poll_async(self, timeout: float | None = 1.0,
                         max_records: int | None = None) -> list[_core.Record]:
        """``poll`` for asyncio programs: waits on the event loop, not in a thread."""
        self._check_open()
        max_records = max_records or self.max_poll_records
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        sig = self.store.signal
        while True:
            version = sig.version
            with self._sync_lock:
                self._maybe_auto_commit()
                recs = self._fetch(max_records)
            if recs or self._woken or self._closed:
                self._woken = False
                return recs
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            if self.store.read_only:
                await asyncio.sleep(0.002)
            else:
                await sig.wait_async(version, self._wait_cap(remaining))

    def wakeup(self) -> None:
        """Make a blocked (or the next) poll return at once; ends ``for record in consumer``."""
        self._woken = True
        self.store.signal.notify()

    # ==========================================================================================
    # Committing

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None,
               metadata: str = "") -> None:
        """Commit the current positions (or ``offsets``) of the group to __consumer_offsets."""
        self._check_open()
        if self.group is None:
            raise InvalidGroupIdError("this consumer has no group: there is nothing to commit to")
        if offsets is None:
            # What this consumer returned, before looking at the group: a partition a rebalance
            # just took away is still held (the new owner waits for its release), and its
            # records were delivered; committing after the sync would drop them and the new
            # owner would deliver them again.
            with self._sync_lock:
                self._commit_positions([tp for tp in self._assigned if tp in self._positions])
                self._sync_assignment()
            return
        self.store.commit_offsets(self.group, {tp: (o, metadata, 0) for tp, o in offsets.items()})

    def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.store.commit_offsets(self.group, {tp: (o, "", 0) for tp, o in offsets.items()})

    # ==========================================================================================
    # Closing

    def close(self) -> None:
        """Commit (when auto-committing), leave the group, and end any iteration."""
        if self._closed:
            return
        try:
            if self.enable_auto_commit and not self.store.closed:
                self._sync_assignment()
                self._commit_positions([tp for tp in self._assigned if tp in self._positions])
        finally:
            self._closed = True
            if self.group is not None and (self.subscription or self._member is not None):
                state = self.store._groups.get(self.group)
                if state is not None:
                    state.leave(self)
            self.store._forget(self)
            self.store.signal.notify()

    def __repr__(self) -> str:
        return f"<Consumer group={self.group!r} member={self.member_id} assigned={len(self._assigned)}>"


__all__ = ["Consumer", "ConsumerBase", "GroupState", "SharedGroupState", "PartitionColumns", "EARLIEST_TIMESTAMP"]


ISOLATION_LEVELS = ("read_uncommitted", "read_committed")
_ATTR_TRANSACTIONAL = 0x10
_ATTR_CONTROL = 0x20


def _left_out(b: _core.Batch, index: dict[int, tuple[list[int], list[int]]] | None) -> bool:
    """A transactional batch no application sees: a marker, or (read_committed) data of an
    aborted transaction (``index``: kstore._core._aborted_index). Per batch, never per
    record."""
    if b.attributes & _ATTR_CONTROL:
        return True
    return index is not None and _core._in_aborted(index, b.producer_id, b.base_offset)
