"""The transaction coordinator of a Store: ``kstore serve``'s (kafka-protocol.md, the
transaction APIs; kafka-storage.md 9.3) and the embedded transactional producers' (one per
Store, ``Store.transactions()``, shared by both when a server runs over the store in-process).

One node is every coordinator, so what Kafka spreads over brokers happens here in-process:
InitProducerId with a transactional.id hands out (or bumps the epoch of) the producer id and
aborts what the previous incarnation left open; AddPartitionsToTxn / AddOffsetsToTxn record the
partitions; TxnOffsetCommit writes transactional offset commits; EndTxn writes the decision to
``__transaction_state`` (PrepareCommit / PrepareAbort), the COMMIT or ABORT marker to every
partition of the transaction (Kafka's WriteTxnMarkers) and then the completion. Every state
change is a ``__transaction_state`` record in Kafka's format, so a restart finds each
transaction where it was: an Ongoing one goes on (or is aborted once transaction.timeout.ms has
passed since it started), a Prepare* one has its markers written again and completes.

A produce of transactional batches is checked against this state (Kafka's KIP-890
verification): the producer's epoch must be the current one (else INVALID_PRODUCER_EPOCH: a
zombie is fenced even on a partition its successor has not written yet), and the partition must
have been added to its ongoing transaction (else INVALID_TXN_STATE).

Thread-safe: one lock around every state change (the server's event loop and embedded
producers' threads); appends are page-cache writes.

Several processes on one data directory (a shared Store): a coordinator acts on a transactional
id only while it holds that id's lock, an flock on ``.kstore-txn/<hash>.lock`` that the kernel
lets go when the process dies, also on SIGKILL. It takes the lock when a producer initialises
with the id (another live process holding it: CONCURRENT_TRANSACTIONS, the embedded producer's
ConcurrentTransactionsError) and first replays what the previous holder wrote there; it takes
the locks of the transactions a dead process left open or half-committed when it loads, and
then completes the half-committed ones and aborts the open ones once transaction.timeout.ms has
passed since they started (Kafka's rule), so a crashed process cannot hold back read_committed
readers for ever. A producer's close, and the store's, let the lock go.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kstore import _core, offsets
from kstore.errors import ClosedError, KStoreError, UnknownTopicOrPartitionError
from kstore.txnlog import (
    TXN_PARTITIONS,
    TXN_TOPIC,
    TXN_TOPIC_CONFIG,
    TxnMetadata,
    TxnStatus,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
    txn_partition,
)

if TYPE_CHECKING:
    from kstore.store import Store

log = logging.getLogger("kstore.transactions")

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_NOT_AVAILABLE = 15
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
CONCURRENT_TRANSACTIONS = 51
OPERATION_NOT_ATTEMPTED = 55
PRODUCER_FENCED = 90
TRANSACTIONAL_ID_NOT_FOUND = 105

MAX_TIMEOUT_MS = 900_000  # transaction.max.timeout.ms
MAX_EPOCH = 32767 - 1  # Short.MaxValue - 1: past it a new producer id is handed out
SWEEP_INTERVAL_S = 60.0  # unused transactional-id lock files are removed at most this often
EXPIRY_CHECK_S = 1.0  # Kafka: transaction.abort.timed.out.transaction.cleanup.interval.ms 10 s


def _same_file(fd: int, path: str) -> bool:
    """Whether ``fd`` is the file at ``path`` now (not one removed since it was opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)


_COORDINATORS: weakref.WeakSet[TransactionCoordinator] = weakref.WeakSet()


def _forget_locks_after_fork() -> None:
    for c in list(_COORDINATORS):
        c._after_fork_in_child()


os.register_at_fork(after_in_child=_forget_locks_after_fork)


class TransactionCoordinator:
    """Transactions of one store. ``new_producer_id`` hands out ids (the broker's, so that
    idempotent and transactional producers never share one)."""

    def __init__(self, store: Store, new_producer_id: Callable[[], tuple[int, int]],
                 clock: Callable[[], int] = _core.now_ms) -> None:
        self.store = store
        self._new_id = new_producer_id
        self._clock = clock
        self._lock = threading.RLock()
        self._txns: dict[str, TxnMetadata] = {}
        self._by_pid: dict[int, TxnMetadata] = {}
        self._loaded = False
        # Logs written here, kept: Store.partition syncs the registry on every call in shared
        # mode (about 20 us), four times per transaction.
        self._logs: dict[tuple[str, int], Any] = {}
        # Shared stores: the transactional ids whose lock this coordinator holds (fd each), and
        # how far each __transaction_state partition was replayed.
        self._shared = bool(getattr(store, "shared", False))
        self._held: dict[str, int] = {}
        self._replayed: dict[int, int] = {}
        self._orphans: set[str] = set()  # held only to finish a dead process's transaction
        self._current: dict[str, tuple[int, int]] = {}  # id -> (pid, epoch) of our producer
        self._next_sweep = 0.0
        _COORDINATORS.add(self)
        #: A server's coordinator keeps the open transactions it finds (its clients go on).
        self.keep_ongoing = False

    # ------------------------------------------------------------------------------------------
    # __transaction_state

    def load(self) -> None:
        """Replay __transaction_state (once), then finish what a crash left half done."""
        with self._lock:
            if self._loaded:
                return
            # Set first: completing a Prepare* transaction below writes through methods that
            # load. Callers on other threads wait for the lock, so none sees half the state.
            self._loaded = True
            if TXN_TOPIC not in self.store.topics(internal=True):
                return
            for p in range(TXN_PARTITIONS):
                if not (self.store.path / f"{TXN_TOPIC}-{p}").is_dir():
                    continue
                self._replay(p)
            for m in list(self._txns.values()):
                if m.status in (TxnStatus.EMPTY, TxnStatus.COMPLETE_COMMIT,
                                TxnStatus.COMPLETE_ABORT, TxnStatus.DEAD):
                    continue
                if self._shared and not self._acquire(m.transactional_id):
                    continue  # a live process runs it
                m = self._txns[m.transactional_id]  # as the previous holder left it
                self._orphans.add(m.transactional_id)
                if m.status in (TxnStatus.PREPARE_COMMIT, TxnStatus.PREPARE_ABORT):
                    log.info("transaction %r of producer %d was %s at the last stop: writing "
                             "its markers", m.transactional_id, m.producer_id,
                             m.status.kafka_name)
                    self._complete(m, m.status is TxnStatus.PREPARE_COMMIT,
                                   persist_completion=True)
                elif m.status is TxnStatus.ONGOING:
                    log.info("transaction %r of producer %d is ongoing (%d partition(s)); it "
                             "goes on, or is aborted after its timeout", m.transactional_id,
                             m.producer_id, len(m.partitions))
            self._let_orphans_go()

    def _let_orphans_go(self) -> None:
        """Shared stores: give back the ids of dead processes' transactions taken to complete
        or abort them, so that a producer restarting with one in any process gets it at once
        (it aborts what is left open, as Kafka's InitProducerId does). A server keeps them
        (``keep_ongoing``): its clients go on with open ones after a restart."""
        if self.keep_ongoing:
            return  # a server holds every id it took: its clients cannot say they have gone
        for tid in list(self._orphans):
            self._orphans.discard(tid)
            self._drop_if_unused(tid)

    def _replay(self, p: int) -> None:
        """Apply partition ``p``'s records from where the last replay stopped (records are
        upserts by transactional id: the last one wins), except to the ids this coordinator
        holds (it wrote their latest records itself)."""
        lg = self.store.partition(TXN_TOPIC, p)
        off = max(self._replayed.get(p, 0), lg.log_start_offset)
        while off < lg.log_end_offset:
            fs = lg.read(off, 1 << 20)
            if len(fs) == 0:
                break
            for b in fs.batches():
                for r in b.records(min_offset=off):
                    try:
                        tid = decode_key(r.key or b"")
                        if tid in self._held:
                            continue
                        if r.value is None:
                            m = self._txns.pop(tid, None)
                            if m is not None:
                                self._by_pid.pop(m.producer_id, None)
                            continue
                        m = decode_value(tid, r.value)
                    except (KStoreError, ValueError) as exc:
                        log.warning("%s-%d: skipping the record at offset %d: %s", TXN_TOPIC,
                                    p, r.offset, exc)
                        continue
                    old = self._txns.get(tid)
                    if old is not None:
                        self._by_pid.pop(old.producer_id, None)
                    self._txns[tid] = m
                    self._by_pid[m.producer_id] = m
            nxt = fs.next_offset
            if nxt <= off:
                break
            off = nxt
        self._replayed[p] = off

    # ------------------------------------------------------------------------------------------
    # Transactional ids across processes (shared stores)

    def _lock_path(self, tid: str) -> str:
        digest = hashlib.sha1(tid.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.store.path, ".kstore-txn", digest + ".lock")

    def _acquire(self, tid: str) -> bool:
        """Take ``tid``'s lock (False: a live process holds it), then replay what the last
        holder wrote. Under self._lock."""
        if not self._shared or tid in self._held:
            return True
        path = self._lock_path(tid)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, path):
                break
            os.close(fd)  # sweep_locks removed the file after we opened it: the lock is void
        try:
            if TXN_TOPIC in self.store.topics(internal=True):
                self._replay(txn_partition(tid))
        except BaseException:
            os.close(fd)
            raise
        self._held[tid] = fd
        return True

    def sweep_locks(self) -> int:
        """Remove the lock files no process holds (ids used once and let go would pile up),
        each while holding it; ``_acquire`` checks that the file it locked is still the one
        at its path. Returns how many went."""
        folder = os.path.join(self.store.path, ".kstore-txn")
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        mine = {os.path.basename(self._lock_path(t)) for t in self._held}
        removed = 0
        for name in names:
            if not name.endswith(".lock") or name in mine:
                continue
            path = os.path.join(folder, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    os.unlink(path)
                    removed += 1
            except BlockingIOError:
                pass  # held: in use
            finally:
                os.close(fd)
        return removed

    def _after_fork_in_child(self) -> None:
        """A forked child shares the parent's locks (one open file each): it lets go of its
        copies, so that the locks live as long as the parent, and holds nothing itself."""
        for fd in self._held.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._held.clear()
        self._current.clear()
        self._orphans.clear()

    def held_elsewhere(self, tid: str) -> bool:
        """Whether another live process holds ``tid`` (for the error a producer raises)."""
        return self._shared and tid not in self._held

    def retain(self, tid: str, pid: int, epoch: int) -> None:
        """An embedded producer of this process initialised with ``tid`` as (pid, epoch): the
        id stays held while it is the id's current producer here (a newer one, or an abort
        of its transaction on timeout, fences it)."""
        with self._lock:
            self._current[tid] = (pid, epoch)

    def release(self, tid: str, pid: int, epoch: int) -> None:
        """An embedded producer with ``tid`` closed: with no current producer of the id left
        here, another process may take it from now on (a fenced one's close only checks)."""
        with self._lock:
            if self._current.get(tid) == (pid, epoch):
                del self._current[tid]
            self._drop_if_unused(tid)

    def _drop_if_unused(self, tid: str) -> None:
        """Give ``tid``'s lock back unless a current producer of this process uses it, it is a
        dead process's transaction being finished, or this is a server's coordinator (its
        clients cannot say they have gone)."""
        if self.keep_ongoing or tid in self._current or tid in self._orphans:
            return
        fd = self._held.pop(tid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._held.values():
                os.close(fd)
            self._held.clear()

    def _write(self, m: TxnMetadata) -> None:
        """Persist ``m`` (before anything depends on it)."""
        m.last_update_ms = self._clock()
        self._ensure_topic()
        b = _core.BatchBuilder()
        b.append(encode_value(m), key=encode_key(m.transactional_id), timestamp=m.last_update_ms)
        lg = self._log(TXN_TOPIC, txn_partition(m.transactional_id))
        lg.append_batch(b.build(), validate_records=False, verify_crc=False, _internal=True)

    def _log(self, topic: str, partition: int) -> Any:
        lg = self._logs.get((topic, partition))
        if lg is None or lg.closed:
            lg = self._logs[(topic, partition)] = self.store.partition(topic, partition)
        return lg

    def _ensure_topic(self) -> None:
        store = self.store
        if TXN_TOPIC in store._topics:
            return

        def change(topics: dict[str, dict[str, Any]]) -> None:
            if TXN_TOPIC not in topics:
                import uuid
                topics[TXN_TOPIC] = {"partitions": TXN_PARTITIONS,
                                     "config": dict(TXN_TOPIC_CONFIG),
                                     "topic_id": uuid.uuid4().hex, "internal": True}

        store._change_registry(change)

    # ------------------------------------------------------------------------------------------
    # Markers

    def _complete(self, m: TxnMetadata, commit: bool, persist_completion: bool = False) -> None:
        """Prepare* (persisted), markers to every partition, Complete*.

        The Complete* record is written only when ``persist_completion`` (recovery): the
        transaction's next record (Ongoing, or an epoch bump) supersedes it, and a restart that
        finds Prepare* writes the markers again, which changes nothing in a partition whose
        transaction they already ended. One record fewer per transaction."""
        m.status = TxnStatus.PREPARE_COMMIT if commit else TxnStatus.PREPARE_ABORT
        self._write(m)
        for topic, part in sorted(m.partitions):
            try:
                self._log(topic, part).write_marker(m.producer_id, m.producer_epoch, commit)
            except (UnknownTopicOrPartitionError, ClosedError) as exc:
                # The topic was deleted meanwhile: nothing left to mark.
                self._logs.pop((topic, part), None)
                log.warning("transaction %r: no marker for %s-%d: %s", m.transactional_id,
                            topic, part, exc)
        m.status = TxnStatus.COMPLETE_COMMIT if commit else TxnStatus.COMPLETE_ABORT
        m.partitions = set()
        if persist_completion:
            self._write(m)

    def _bump(self, m: TxnMetadata) -> None:
        if m.producer_epoch >= MAX_EPOCH:
            self._by_pid.pop(m.producer_id, None)
            m.producer_id, m.producer_epoch = self._new_id()
            self._by_pid[m.producer_id] = m
        else:
            m.producer_epoch += 1

    def has_transactions(self) -> bool:
        return bool(self._txns)

    def expire(self) -> list[str]:
        """Abort the ongoing transactions older than their timeout, fencing their producer (the
        epoch goes up, as Kafka's timed-out abort does). Returns their ids.

        Shared stores: those of this process, and those a dead process left (their locks are
        free): replayed first, half-committed ones completed, open ones aborted once timed
        out."""
        self.load()
        now = self._clock()
        out = []
        with self._lock:
            if self._shared and TXN_TOPIC in self.store.topics(internal=True):
                for p in range(TXN_PARTITIONS):
                    if (self.store.path / f"{TXN_TOPIC}-{p}").is_dir():
                        self._replay(p)
                for m in list(self._txns.values()):
                    tid = m.transactional_id
                    if tid in self._held or m.status in (
                            TxnStatus.EMPTY, TxnStatus.COMPLETE_COMMIT, TxnStatus.COMPLETE_ABORT,
                            TxnStatus.DEAD):
                        continue
                    if not self._acquire(tid):
                        continue  # its process is alive: it expires its own
                    self._orphans.add(tid)
                    m = self._txns[tid]
                    if m.status in (TxnStatus.PREPARE_COMMIT, TxnStatus.PREPARE_ABORT):
                        log.info("transaction %r of a process that stopped was %s: writing its "
                                 "markers", tid, m.status.kafka_name)
                        self._complete(m, m.status is TxnStatus.PREPARE_COMMIT,
                                       persist_completion=True)
            for m in list(self._txns.values()):
                if self._shared and m.transactional_id not in self._held:
                    continue
                if m.status is TxnStatus.ONGOING and now - m.start_ms > m.timeout_ms:
                    log.warning("transaction %r of producer %d has been open for %d ms, over "
                                "its transaction.timeout.ms %d: aborting it", m.transactional_id,
                                m.producer_id, now - m.start_ms, m.timeout_ms)
                    self._bump(m)
                    self._complete(m, commit=False)
                    out.append(m.transactional_id)
                    # Its producer is fenced now: the id is free for any process.
                    self._current.pop(m.transactional_id, None)
                    self._drop_if_unused(m.transactional_id)
            self._let_orphans_go()
            if self._shared and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                self.sweep_locks()
        return out

    # ------------------------------------------------------------------------------------------
    # APIs

    def _check(self, tid: str, pid: int, epoch: int, fenced: int) -> tuple[int, TxnMetadata | None]:
        if self._shared and tid not in self._held:
            # Act only on what this process holds, as the holder left it (replayed): a
            # producer of ours whose id another process took since is fenced by that replay.
            if not self._acquire(tid):
                return CONCURRENT_TRANSACTIONS, None
            self._orphans.discard(tid)
            err, m = self._check_held(tid, pid, epoch, fenced)
            if err:
                self._drop_if_unused(tid)  # a zombie's call must not keep the id from others
            return err, m
        return self._check_held(tid, pid, epoch, fenced)

    def _check_held(self, tid: str, pid: int, epoch: int,
                    fenced: int) -> tuple[int, TxnMetadata | None]:
        m = self._txns.get(tid)
        if m is None or m.producer_id != pid:
            return INVALID_PRODUCER_ID_MAPPING, None
        if epoch != m.producer_epoch:
            return fenced, None
        if m.status in (TxnStatus.PREPARE_COMMIT, TxnStatus.PREPARE_ABORT,
                        TxnStatus.PREPARE_EPOCH_FENCE):
            return CONCURRENT_TRANSACTIONS, None
        return NONE, m

    def init_producer_id(self, tid: str, timeout_ms: int, pid: int, epoch: int,
                         version: int) -> tuple[int, int, int]:
        """(error, producer id, epoch)."""
        self.load()
        if not tid:
            return INVALID_PRODUCER_ID_MAPPING, -1, -1
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            return INVALID_TRANSACTION_TIMEOUT, -1, -1
        with self._lock:
            if not self._acquire(tid):
                log.info("transactional id %r is held by another process on %s", tid,
                         self.store.path)
                return CONCURRENT_TRANSACTIONS, -1, -1
            self._orphans.discard(tid)  # a producer of this process takes it over
            m = self._txns.get(tid)
            if m is None:
                new_pid, new_epoch = self._new_id()
                m = TxnMetadata(tid, new_pid, new_epoch, timeout_ms)
                self._txns[tid] = m
                self._by_pid[new_pid] = m
                self._write(m)
                return NONE, m.producer_id, m.producer_epoch
            if pid != -1 and (pid, epoch) != (m.producer_id, m.producer_epoch):
                # KIP-360: a producer that names its id must be the current one.
                self._drop_if_unused(tid)
                return (PRODUCER_FENCED if version >= 4 else INVALID_PRODUCER_EPOCH), -1, -1
            self._bump(m)
            m.timeout_ms = timeout_ms
            if m.status is TxnStatus.ONGOING:
                # The previous incarnation's transaction: aborted under the new epoch, which
                # fences that producer everywhere.
                log.info("transaction %r: a new producer aborts the ongoing transaction of "
                         "the previous one", tid)
                self._complete(m, commit=False)
            m.status = TxnStatus.EMPTY
            m.partitions = set()
            m.start_ms = -1
            self._write(m)
            return NONE, m.producer_id, m.producer_epoch

    def add_partitions(self, tid: str, pid: int, epoch: int,
                       parts: list[tuple[str, int]], version: int) -> dict[tuple[str, int], int]:
        self.load()
        with self._lock:
            err, m = self._check(tid, pid, epoch,
                                 PRODUCER_FENCED if version >= 2 else INVALID_PRODUCER_EPOCH)
            if m is None:
                return {tp: err for tp in parts}
            unknown = {tp for tp in parts if not self._exists(*tp)}
            if unknown:
                return {tp: UNKNOWN_TOPIC_OR_PARTITION if tp in unknown
                        else OPERATION_NOT_ATTEMPTED for tp in parts}
            started = m.status is not TxnStatus.ONGOING
            if started:
                m.status = TxnStatus.ONGOING
                m.start_ms = self._clock()
                m.partitions = set()
            if started or not set(parts) <= m.partitions:
                m.partitions |= set(parts)
                self._write(m)
            return {tp: NONE for tp in parts}

    def _exists(self, topic: str, partition: int) -> bool:
        if topic == offsets.OFFSETS_TOPIC:
            return 0 <= partition < offsets.OFFSETS_PARTITIONS
        if topic.startswith("__"):
            return False
        try:  # (store.topics() sorts every name: once per transaction, that showed)
            return 0 <= partition < self.store.partitions_for(topic)
        except UnknownTopicOrPartitionError:
            return False

    def add_offsets(self, tid: str, pid: int, epoch: int, group: str, version: int) -> int:
        tp = (offsets.OFFSETS_TOPIC, offsets.group_partition(group))
        res = self.add_partitions(tid, pid, epoch, [tp], version)
        return res[tp]

    def check_offset_commit(self, tid: str, pid: int, epoch: int, group: str,
                            version: int) -> int:
        """TxnOffsetCommit: the producer is current and its transaction holds the group's
        __consumer_offsets partition (added by AddOffsetsToTxn)."""
        self.load()
        with self._lock:
            err, m = self._check(tid, pid, epoch, INVALID_PRODUCER_EPOCH)
            if m is None:
                return err
            tp = (offsets.OFFSETS_TOPIC, offsets.group_partition(group))
            if m.status is not TxnStatus.ONGOING or tp not in m.partitions:
                return INVALID_TXN_STATE
            return NONE

    def end_txn(self, tid: str, pid: int, epoch: int, commit: bool, version: int) -> int:
        self.load()
        with self._lock:
            err, m = self._check(tid, pid, epoch,
                                 PRODUCER_FENCED if version >= 2 else INVALID_PRODUCER_EPOCH)
            if m is None:
                return err
            if m.status is TxnStatus.ONGOING:
                self._complete(m, commit)
                return NONE
            # A retry of the EndTxn that completed it is answered as it was.
            if m.status is (TxnStatus.COMPLETE_COMMIT if commit else TxnStatus.COMPLETE_ABORT):
                return NONE
            return INVALID_TXN_STATE

    def verify_produce(self, pid: int, epoch: int, topic: str, partition: int) -> int:
        """A transactional batch may be appended (NONE) or the error to answer."""
        m = self._by_pid.get(pid)
        if m is None:
            self.load()  # waits for a load under way on another thread
            with self._lock:
                m = self._by_pid.get(pid)
        if m is not None and self._shared and m.transactional_id not in self._held:
            tid = m.transactional_id
            with self._lock:
                if not self._acquire(tid):
                    return CONCURRENT_TRANSACTIONS
                self._orphans.discard(tid)
                err = self._verify(self._by_pid.get(pid), epoch, topic, partition)
                if err:
                    self._drop_if_unused(tid)
                return err
        return self._verify(m, epoch, topic, partition)

    @staticmethod
    def _verify(m: TxnMetadata | None, epoch: int, topic: str, partition: int) -> int:
        if m is None:
            return INVALID_PRODUCER_ID_MAPPING
        if epoch != m.producer_epoch:
            return INVALID_PRODUCER_EPOCH
        if m.status is not TxnStatus.ONGOING or (topic, partition) not in m.partitions:
            return INVALID_TXN_STATE
        return NONE

    def describe(self, tid: str) -> dict[str, Any]:
        self.load()
        m = self._txns.get(tid)
        if m is None:
            return {"error_code": TRANSACTIONAL_ID_NOT_FOUND, "transactional_id": tid,
                    "transaction_state": "", "transaction_timeout_ms": 0,
                    "transaction_start_time_ms": -1, "producer_id": -1, "producer_epoch": -1,
                    "topics": []}
        by_topic: dict[str, list[int]] = {}
        for t, p in sorted(m.partitions):
            by_topic.setdefault(t, []).append(p)
        return {"error_code": NONE, "transactional_id": tid,
                "transaction_state": m.status.kafka_name, "transaction_timeout_ms": m.timeout_ms,
                "transaction_start_time_ms": m.start_ms, "producer_id": m.producer_id,
                "producer_epoch": m.producer_epoch,
                "topics": [{"topic": t, "partitions": ps} for t, ps in by_topic.items()]}

    def list(self, states: list[str], pids: list[int], min_duration_ms: int) -> tuple[list[str], list[dict]]:
        """ListTransactions: (unknown state filters, matching transactions)."""
        self.load()
        known = {s.kafka_name for s in TxnStatus}
        unknown = [s for s in states if s not in known]
        now = self._clock()
        out = []
        for m in list(self._txns.values()):
            if states and m.status.kafka_name not in states:
                continue
            if pids and m.producer_id not in pids:
                continue
            if min_duration_ms >= 0 and (m.start_ms < 0 or now - m.start_ms < min_duration_ms):
                continue
            out.append({"transactional_id": m.transactional_id, "producer_id": m.producer_id,
                        "transaction_state": m.status.kafka_name})
        return unknown, out
