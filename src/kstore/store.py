"""Store: one data directory holding topics, their partition logs, and consumer offsets.

    with kstore.open("./kstore-data") as store:
        store.create_topic("clicks", partitions=4, config={"retention.ms": 86_400_000})
        producer = store.producer()
        consumer = store.consumer(group="etl", topics=["clicks"])

The directory looks like a Kafka broker's log directory: ``<topic>-<partition>/`` folders of
segments, Kafka's checkpoint files, and ``__consumer_offsets-N/`` for committed offsets. The
topic registry is ``kstore.json`` (replaced atomically). One process may hold a store for writing
By default several processes (and several Stores in one process) may open one directory at once
and all write to it: appends to a partition are serialised by a robust process-shared mutex
(``kstore.log.partition``), topic changes by an flock around the registry, retention and
compaction run in one process at a time. ``exclusive=True`` keeps the directory to one Store
(an fcntl lock on ``<dir>/.lock``); others open it with ``read_only=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import json
import logging
import os
import shutil
import mmap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kstore import _core, offsets
from kstore.config import TOPIC_CONFIG, resolve_config, validate_config
from kstore.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidRequestError,
    KafkaStorageError,
    KStoreError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from kstore.log import PartitionLog
from kstore.log.checkpoint import (
    CLEANER_OFFSET,
    LOG_START_OFFSET,
    RECOVERY_POINT,
    CheckpointFile,
    atomic_write,
    lock_directory,
    lock_shared,
    share_lock,
)
from kstore.log.txn import COMMIT, control_type
from kstore.topic import refuse_internal, validate_topic_name

log = logging.getLogger("kstore.store")

REGISTRY = "kstore.json"
LOCK_FILE = ".lock"
#: Shared mode: a mapped counter that moves whenever a process changes the registry.
SHARED_FILE = ".kstore-shared"
#: Shared mode: flocks serialising registry changes and maintenance passes between processes.
REGISTRY_LOCK = ".kstore-registry.lock"
MAINTENANCE_LOCK = ".kstore-maintenance.lock"
PRODUCER_IDS = ".kstore-producer-ids"  # the next producer id free in a shared store
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 104857600,
                        "compression.type": "producer"}


class DataSignal:
    """Wakes consumers when any partition of the store gets data. A version counter makes a
    wait that starts after the data arrived return at once (no lost wake-ups)."""

    def __init__(self) -> None:
        self.version = 0
        self.waiters = 0
        self._cond = threading.Condition(threading.Lock())
        # Parked wait_async calls: future -> its loop. Each wait removes its own entry when it
        # ends (woken, timed out or cancelled), so waits that time out leave nothing behind.
        self._async: dict[asyncio.Future, asyncio.AbstractEventLoop] = {}
        self._async_lock = threading.Lock()
        #: Set when a wait starts (shared stores watch other processes' appends meanwhile).
        self.waiting = threading.Event()

    def notify(self) -> None:
        with self._cond:
            self.version += 1
            self._cond.notify_all()
        if self._async:
            with self._async_lock:
                waiters, self._async = self._async, {}
            for fut, loop in waiters.items():
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    pass

    def wait(self, version: int, timeout: float | None) -> bool:
        """Wait until the version moves past ``version``; False on timeout."""
        with self._cond:
            self.waiters += 1
            self.waiting.set()
            try:
                return self._cond.wait_for(lambda: self.version != version, timeout)
            finally:
                self.waiters -= 1

    async def wait_async(self, version: int, timeout: float | None) -> bool:
        if self.version != version:
            return True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._async_lock:
            self._async[fut] = loop
        with self._cond:
            self.waiters += 1
            self.waiting.set()
        try:
            if self.version != version:
                return True
            try:
                await asyncio.wait_for(fut, timeout)
            except (TimeoutError, asyncio.TimeoutError):
                return self.version != version
            return True
        finally:
            with self._cond:
                self.waiters -= 1
            # Gone already if a notify() took it; otherwise (timeout, cancellation, the early
            # return) it must not stay: a long-polling server times out constantly.
            with self._async_lock:
                self._async.pop(fut, None)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)


class Store:
    """A kstore data directory. Use ``kstore.open(path)``."""

    def __init__(self, path: str | os.PathLike = "./kstore-data", read_only: bool = False, *,
                 auto_create_topics: bool = False, num_partitions: int = 1,
                 clock: Callable[[], int] | None = None,
                 retention_check_interval_ms: int = 300_000,
                 offsets_retention_minutes: int = 10080, exclusive: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.exclusive = exclusive
        #: Other processes may write to this directory at the same time (see the module doc).
        self.shared = not read_only and not exclusive
        self._shared_map: mmap.mmap | None = None
        self._registry_seen = 0
        self._registry_depth = 0
        self._maintenance_fd = -1
        self.auto_create_topics = auto_create_topics
        self.default_partitions = num_partitions
        self._clock = clock
        self._lock = threading.RLock()
        self._lock_fd = -1
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._topics: dict[str, dict[str, Any]] = {}
        self._closed = False
        self.signal = DataSignal()
        self._clients: set[Any] = set()
        self._groups: dict[str, Any] = {}  # in-process consumer groups (kstore.consumer)
        self._committed: dict[str, dict[tuple[str, int], offsets.OffsetCommit]] | None = None
        self._committed_lock = threading.Lock()
        self._txn_lock = threading.Lock()
        self._pid_lock = threading.Lock()
        self._pid_block: tuple[int, int] | None = None  # producer ids taken, not handed out
        self._txn_coordinator: Any = None
        self._offsets_warned: set[tuple[int, int]] = set()  # bad __consumer_offsets records
        self.topic_epoch = 0  # moves on every topic change; producers drop cached topic state
        # Group activity seen outside this Store (a Kafka-protocol server's coordinator), for
        # offset expiry (KIP-211). Each callable returns ({group: last_active_ms}, floor_ms):
        # last_active_ms is now for a group with members and the time it became Empty for an
        # empty one; a group it does not name counts as active at floor_ms (when it started
        # watching, so a restart never expires offsets within the retention). Called from the
        # maintenance thread.
        self.group_activity_hooks: list[Callable[[], tuple[dict[str, int], int]]] = []
        if not isinstance(retention_check_interval_ms, int) or retention_check_interval_ms < 0:
            raise InvalidConfigError(
                f"log.retention.check.interval.ms must be a non-negative int (0: no background "
                f"maintenance), not {retention_check_interval_ms!r}")
        self.retention_check_interval_ms = retention_check_interval_ms
        if not isinstance(offsets_retention_minutes, int) or offsets_retention_minutes < 1:
            raise InvalidConfigError(f"offsets.retention.minutes must be a positive int, not "
                                     f"{offsets_retention_minutes!r}")
        self.offsets_retention_ms = offsets_retention_minutes * 60_000
        self._maintenance_stop = threading.Event()
        self._maintenance_thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._open()
        if self.shared:
            # Groups with live members in other processes are active: maintenance here must
            # not expire their offsets, even when this process has no consumer of its own.
            from kstore import localgroups

            hook = localgroups.activity_hook(self.path, self.now_ms)
            hook.kstore_local_groups = True  # type: ignore[attr-defined]
            self.group_activity_hooks.append(hook)
            self._watcher = threading.Thread(target=self._watch_other_processes,
                                             name="kstore-watch", daemon=True)
            self._watcher.start()
        if not read_only and retention_check_interval_ms > 0:
            self._maintenance_thread = threading.Thread(
                target=self._maintenance_loop, name="kstore-maintenance", daemon=True)
            self._maintenance_thread.start()

    # ==========================================================================================
    # Opening and the registry

    def _open(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise KafkaStorageError(f"{p} is a file, not a kstore data directory")
        if self.read_only:
            if not p.is_dir():
                raise KafkaStorageError(f"data directory {p} does not exist")
        elif self.shared:
            self._lock_fd, first = lock_shared(p, "data directory")
        else:
            self._lock_fd = lock_directory(p, "data directory")
        try:
            if self.shared:
                if first:
                    share_lock(self._lock_fd, p, "data directory")
                fd = os.open(p / SHARED_FILE, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if os.fstat(fd).st_size < mmap.PAGESIZE:
                        # Allocated, not sparse: storing into a mapped hole on a full disk
                        # would be SIGBUS.
                        try:
                            os.posix_fallocate(fd, 0, mmap.PAGESIZE)
                        except OSError as exc:
                            raise KafkaStorageError(
                                f"cannot make {p / SHARED_FILE}: {exc.strerror or exc}; free "
                                f"disk space and retry") from exc
                    self._shared_map = mmap.mmap(fd, mmap.PAGESIZE)
                finally:
                    os.close(fd)
                self._registry_seen = self._registry_version()
            self._topics = self._read_registry()
        except BaseException:
            self._release_locks()  # a failed open must not keep the directory locked
            raise

    def _watch_other_processes(self) -> None:
        """Shared mode: appends by other processes wake nobody here, so while someone waits
        for data (a Consumer's poll, a server's Fetch), look at the shared tails of the open
        logs every millisecond and wake the waiters when one moved. Idle otherwise."""
        seen: dict[tuple[str, int], int] = {}
        sig = self.signal
        while not self._closed:
            if not sig.waiters:
                sig.waiting.clear()
                if not sig.waiters:
                    sig.waiting.wait(1.0)
                continue
            moved = False
            for key, lg in list(self._logs.items()):
                tail = lg._tail
                if tail is None:
                    continue
                try:
                    seq = tail.seq
                except AttributeError:  # closed meanwhile
                    continue
                if seen.get(key) != seq:
                    moved = moved or key in seen
                    seen[key] = seq
            if moved:
                sig.notify()
            self._maintenance_stop.wait(0.001)

    def _release_locks(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._shared_map is not None:
            self._shared_map.close()
            self._shared_map = None

    # -- the registry across processes --------------------------------------------------------

    def _registry_version(self) -> int:
        m = self._shared_map
        return int.from_bytes(m[:8], "little") if m is not None else 0

    def _sync_registry(self) -> None:
        """Shared mode: take in registry changes other processes made (cheap when none)."""
        m = self._shared_map
        if m is None or int.from_bytes(m[:8], "little") == self._registry_seen:
            return
        with self._lock:
            v = self._registry_version()
            if v != self._registry_seen and not self._closed:
                self._apply_registry(self._read_registry())
                self._registry_seen = v

    def _apply_registry(self, topics: dict[str, dict[str, Any]]) -> None:
        """Make ``topics`` this Store's registry (under ``_lock``): logs of topics deleted (or
        deleted and made again) are closed, config changes reach the open logs."""
        old = self._topics
        for key, lg in list(self._logs.items()):
            new_t, old_t = topics.get(key[0]), old.get(key[0])
            if new_t is None or (old_t is not None
                                 and new_t.get("topic_id") != old_t.get("topic_id")):
                del self._logs[key]
                try:
                    lg.close()
                except OSError as exc:
                    log.warning("closing %s of a deleted topic: %s", lg.directory, exc)
            elif old_t is not None and new_t.get("config") != old_t.get("config"):
                lg.update_config(resolve_config(new_t.get("config")))
        self._topics = topics
        self.topic_epoch += 1

    @contextlib.contextmanager
    def _registry_lock(self) -> Iterator[None]:
        """Hold the registry against other processes (shared mode) and this one's threads."""
        with self._lock:
            if not self.shared or self._registry_depth:
                self._registry_depth += 1
                try:
                    yield
                finally:
                    self._registry_depth -= 1
                return
            try:
                fd = os.open(self.path / REGISTRY_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise KafkaStorageError(f"cannot lock the topic registry of {self.path}: "
                                        f"{exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._sync_registry()
                self._registry_depth = 1
                yield
            finally:
                self._registry_depth = 0
                os.close(fd)

    def _change_registry(self, change: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        """Apply ``change`` to a copy of the registry as it is now (in every process), write
        it, then make it this Store's. ``change`` raising, or the disk refusing the write
        (KafkaStorageError), changes nothing anywhere. Returns what ``change`` returned."""
        with self._registry_lock():
            topics = copy.deepcopy(self._topics)
            out = change(topics)
            if topics == self._topics:
                return out
            self._write_registry(topics)
            m = self._shared_map
            if m is not None:
                v = self._registry_version() + 1
                m[:8] = v.to_bytes(8, "little")
                self._registry_seen = v
            self._apply_registry(topics)
            return out

    def _read_registry(self) -> dict[str, dict[str, Any]]:
        path = self.path / REGISTRY
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            topics = data["topics"]
            for name, t in topics.items():
                validate_topic_name(name)
                if not isinstance(t["partitions"], int) or t["partitions"] < 1:
                    raise ValueError(f"topic {name}: bad partition count {t['partitions']!r}")
                validate_config(t.get("config", {}))
            return topics
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KafkaStorageError(
                f"the topic registry {path} is corrupt ({exc}); restore it from a backup, or "
                f"move it away to start with no topics (the partition folders are untouched)"
            ) from None

    def _write_registry(self, topics: dict[str, dict[str, Any]] | None = None,
                        undo: Callable[[], object] | None = None) -> None:
        """Replace kstore.json with ``topics`` (default: the topics in memory). When the disk
        refuses, ``undo`` returns memory to what the file still says, and KafkaStorageError is
        raised."""
        data = {"version": 1, "topics": self._topics if topics is None else topics}
        try:
            atomic_write(self.path / REGISTRY,
                         (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        except BaseException:
            if undo is not None:
                undo()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"store {self.path} was opened read_only")

    def _refresh_registry(self) -> None:
        if self.read_only:
            self._topics = self._read_registry()

    # ==========================================================================================
    # Topics

    def create_topic(self, name: str, partitions: int = 1,
                     config: Mapping[str, Any] | None = None) -> None:
        """Create a topic. Raises TopicAlreadyExistsError, InvalidTopicError (bad name),
        InvalidPartitionsError, InvalidConfigError (naming the key), InternalTopicError (a
        name starting with ``__``: kstore creates __consumer_offsets itself)."""
        self._check_writable()
        validate_topic_name(name)
        refuse_internal(name, "create")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise InvalidPartitionsError(f"partitions must be a positive int, not {partitions!r}")
        cfg = validate_config(config)

        def change(topics: dict[str, dict[str, Any]]) -> None:
            if name in topics:
                raise TopicAlreadyExistsError(f"topic {name!r} already exists")
            topics[name] = {"partitions": partitions, "config": _jsonable(cfg),
                            "topic_id": uuid.uuid4().hex}

        self._change_registry(change)

    def create_topics(self, topics: Iterable[tuple[str, int] | tuple[str, int, Mapping[str, Any] | None]],
                      ) -> dict[str, KStoreError]:
        """Create many topics with one registry write: ``[(name, partitions), (name,
        partitions, config), ...]``. create_topic rewrites the whole registry (and fsyncs it)
        per topic, so n topics made one by one cost O(n^2) bytes written; here they cost one
        write. Returns the topics that were not created, each with its error
        (TopicAlreadyExistsError, InvalidTopicError, InvalidPartitionsError, InvalidConfigError,
        InvalidRequestError for a name given twice); the others are all created, made visible
        together once the registry is on disk. Thread-safe: readers of the topics see the old
        or the new set, never a half-made one. Raises ReadOnlyError/ClosedError, or
        KafkaStorageError when the registry cannot be written (then none is created)."""
        self._check_writable()
        failed: dict[str, KStoreError] = {}
        wanted: dict[str, dict[str, Any]] = {}
        specs = list(topics)
        seen: dict[Any, int] = {}
        for spec in specs:
            seen[spec[0]] = seen.get(spec[0], 0) + 1
        for spec in specs:
            name, partitions = spec[0], spec[1]
            config = spec[2] if len(spec) > 2 else None  # type: ignore[misc]
            try:
                if seen[name] > 1:  # which one was meant? Neither (Kafka's CreateTopics agrees)
                    raise InvalidRequestError(f"topic {name!r} is named more than once")
                validate_topic_name(name)
                refuse_internal(name, "create")
                if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
                    raise InvalidPartitionsError(
                        f"topic {name!r}: partitions must be a positive int, not {partitions!r}")
                cfg = validate_config(config)
            except KStoreError as exc:
                failed.setdefault(name, exc)
                continue
            wanted[name] = {"partitions": partitions, "config": _jsonable(cfg),
                            "topic_id": uuid.uuid4().hex}
        if not wanted:
            return failed

        def change(topics: dict[str, dict[str, Any]]) -> None:
            for name, t in wanted.items():
                if name in topics:
                    failed[name] = TopicAlreadyExistsError(f"topic {name!r} already exists")
                else:
                    topics[name] = t

        self._check_writable()
        try:
            # One assignment of the new registry: a reader on another thread sees all of them
            # or none.
            self._change_registry(change)
        except OSError as exc:
            raise KafkaStorageError(
                f"cannot write the topic registry {self.path / REGISTRY}: "
                f"{exc.strerror or exc}; no topic was created (free space or fix "
                f"permissions, then retry)") from None
        return failed

    def topics(self, internal: bool = False) -> list[str]:
        """Topic names (``internal=True`` includes ``__consumer_offsets``)."""
        self._refresh_registry()
        self._sync_registry()
        return sorted(t for t in self._topics if internal or not t.startswith("__"))

    def _topic(self, name: str) -> dict[str, Any]:
        if self._shared_map is not None:
            self._sync_registry()
        t = self._topics.get(name)
        if t is None:
            self._refresh_registry()
            t = self._topics.get(name)
        if t is None:
            if self.auto_create_topics and not self.read_only and not name.startswith("__"):
                try:
                    self.create_topic(name, self.default_partitions)
                except TopicAlreadyExistsError:
                    pass
                return self._topics[name]
            raise UnknownTopicOrPartitionError(
                f"topic {name!r} does not exist; create it with store.create_topic({name!r}) "
                f"(or open the store with auto_create_topics=True)")
        return t

    def topic_config(self, name: str) -> dict[str, Any]:
        """Every config value of a topic: Kafka's defaults overlaid with its own settings."""
        return resolve_config(self._topic(name).get("config"))

    def describe_topic(self, name: str) -> dict[str, Any]:
        t = self._topic(name)
        parts = []
        for p in range(t["partitions"]):
            lg = self.partition(name, p)
            parts.append({"partition": p, "log_start_offset": lg.log_start_offset,
                          "log_end_offset": lg.log_end_offset, "size_bytes": lg.size_bytes,
                          "segments": len(lg.segments())})
        return {"name": name, "partitions": t["partitions"], "topic_id": t.get("topic_id"),
                "config": dict(t.get("config", {})), "partition_info": parts}

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Set config keys (a value of None returns that key to its default). Raises
        InternalTopicError for an internal topic."""
        self._check_writable()
        refuse_internal(name, "alter the config of")
        sets = {k: v for k, v in config.items() if v is not None}
        cfg = validate_config(sets)
        for k in config:
            if k not in TOPIC_CONFIG:
                validate_config({k: None})
        def change(topics: dict[str, dict[str, Any]]) -> None:
            t = topics.get(name)
            if t is None:
                self._topic(name)  # UnknownTopicOrPartitionError, with its advice
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
            merged = dict(t.get("config", {}))
            for k, v in config.items():
                if v is None:
                    merged.pop(k, None)
            merged.update(_jsonable(cfg))
            t["config"] = merged

        self._change_registry(change)  # the open logs get the new config (_apply_registry)

    def create_partitions(self, name: str, count: int) -> None:
        """Grow a topic to ``count`` partitions (partitions only grow). Raises
        InternalTopicError for an internal topic."""
        self._check_writable()
        refuse_internal(name, "add partitions to")
        def change(topics: dict[str, dict[str, Any]]) -> None:
            self._topic(name)  # UnknownTopicOrPartitionError, with its advice
            t = topics[name]
            if not isinstance(count, int) or count <= t["partitions"]:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {t['partitions']} partitions; the new count must be "
                    f"larger, not {count!r}")
            t["partitions"] = count

        self._change_registry(change)

    def _stop_other_writers(self, d: Path) -> None:
        """Shared mode, deleting a topic whose registry entry is gone: processes that still
        have a partition open are told through its shared tail, so their next append or read
        raises UnknownTopicOrPartitionError instead of writing into a folder about to go."""
        from kstore.log.checkpoint import writer_holds_lock

        if not writer_holds_lock(d):
            return
        try:
            lg = PartitionLog.open(d, shared=True, clock=self._clock)
        except KStoreError as exc:
            log.warning("deleting %s: cannot tell its other writers: %s", d, exc)
            return
        try:
            lg.mark_deleted()
        finally:
            try:
                lg.close()
            except OSError as exc:
                log.warning("deleting %s: %s", d, exc)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its data (committed offsets for it are kept until they expire).
        Raises InternalTopicError for an internal topic."""
        self._check_writable()
        refuse_internal(name, "delete")
        with self._registry_lock():
            t = self._topic(name)

            def change(topics: dict[str, dict[str, Any]]) -> None:
                del topics[name]

            # On failure the topic stays, as the file still says (its logs stay open).
            self._change_registry(change)  # closes this Store's logs of the topic
            for p in range(t["partitions"]):
                d = self.path / f"{name}-{p}"
                if self.shared and d.exists():
                    self._stop_other_writers(d)
            # A topic made again under this name starts at 0, as in Kafka: its partitions'
            # checkpoints go with it (else its log start would be the deleted one's),
            # before its folders go, so a crash in between leaves no stale entry.
            gone_keys: dict[tuple[str, int], int | None] = {
                (name, p): None for p in range(t["partitions"])}
            for ck_name in (LOG_START_OFFSET, RECOVERY_POINT, CLEANER_OFFSET):
                if (self.path / ck_name).exists():
                    CheckpointFile.for_path(self.path / ck_name).update(gone_keys)
            for p in range(t["partitions"]):
                d = self.path / f"{name}-{p}"
                if d.exists():
                    # Kafka shortens the topic in the "-delete" name so it stays under 255 bytes.
                    gone = self.path / f"{name[:180]}-{p}.{uuid.uuid4().hex}-delete"
                    os.replace(d, gone)
                    shutil.rmtree(gone, ignore_errors=True)

    # ==========================================================================================
    # Partitions

    def partition(self, topic: str, partition: int) -> PartitionLog:
        """The PartitionLog of one partition (opened on first use), for servers that embed
        kstore. Raises UnknownTopicOrPartitionError."""
        if self._shared_map is not None:
            self._sync_registry()
        key = (topic, partition)
        lg = self._logs.get(key)
        if lg is not None:
            return lg
        self._check_open()
        with self._lock:
            lg = self._logs.get(key)
            if lg is not None:
                return lg
            t = self._topic(topic)
            if not isinstance(partition, int) or not 0 <= partition < t["partitions"]:
                raise UnknownTopicOrPartitionError(
                    f"partition {partition!r} does not exist: topic {topic!r} has "
                    f"{t['partitions']} (0..{t['partitions'] - 1})")
            lg = PartitionLog.open(self.path / f"{topic}-{partition}",
                                   resolve_config(t.get("config")), read_only=self.read_only,
                                   clock=self._clock, shared=self.shared)
            lg._signal = self.signal
            self._logs[key] = lg
            return lg

    def partitions_for(self, topic: str) -> int:
        return self._topic(topic)["partitions"]

    def _producer_topic(self, topic: str) -> tuple[int, int, str | None, bool]:
        """(partitions, max.message.bytes, codec the topic imposes or None for 'producer',
        whether records need keys: compacted topics). Producers go through here: an internal
        topic raises InternalTopicError."""
        self._check_writable()
        refuse_internal(topic, "produce to")
        t = self._topic(topic)
        cfg = resolve_config(t.get("config"))
        codec = cfg["compression.type"]
        codec = None if codec == "producer" else "none" if codec == "uncompressed" else codec
        return t["partitions"], cfg["max.message.bytes"], codec, "compact" in cfg["cleanup.policy"]

    # ==========================================================================================
    # Clients

    def producer(self, **kwargs: Any) -> Any:
        """A Producer (see kstore.producer.Producer for the arguments)."""
        from kstore.producer import Producer

        self._check_writable()
        p = Producer(self, **kwargs)
        self._clients.add(p)
        return p

    def transactions(self, new_producer_id: Callable[[], tuple[int, int]] | None = None) -> Any:
        """The store's transaction coordinator (kstore.transactions), made on first use;
        ``new_producer_id`` hands out producer ids (the server passes its own, so that its
        idempotent and transactional producers never share one)."""
        with self._txn_lock:
            if self._txn_coordinator is None:
                from kstore.transactions import TransactionCoordinator

                if new_producer_id is None:
                    from kstore.server.producers import ProducerStates

                    new_producer_id = ProducerStates(
                        allocate=self.allocate_producer_id if self.shared else None
                    ).new_producer_id
                self._txn_coordinator = TransactionCoordinator(self, new_producer_id)
            return self._txn_coordinator

    #: Producer ids taken from the shared counter at a time.
    PRODUCER_ID_BLOCK = 256

    def allocate_producer_id(self) -> int:
        """A producer id no other process of this shared store hands out: taken in blocks
        from ``.kstore-producer-ids`` (the next free id, under an flock), starting no lower
        than the clock in ms << 8, as ids did per process (two processes starting in the same
        millisecond drew the same ids, and a partition keys transactions by producer id)."""
        with self._pid_lock:
            block = self._pid_block
            if block is not None and block[0] < block[1]:
                pid = block[0]
                self._pid_block = (pid + 1, block[1])
                return pid
            path = self.path / PRODUCER_IDS
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                raw = os.pread(fd, 8, 0)
                stored = int.from_bytes(raw, "big") if len(raw) == 8 else 0
                first = max(stored, int(time.time() * 1000) << 8)
                os.pwrite(fd, (first + self.PRODUCER_ID_BLOCK).to_bytes(8, "big"), 0)
            finally:
                os.close(fd)  # the flock goes with it
            self._pid_block = (first + 1, first + self.PRODUCER_ID_BLOCK)
            return first

    def consumer(self, **kwargs: Any) -> Any:
        """A Consumer (see kstore.consumer.Consumer for the arguments)."""
        from kstore.consumer import Consumer

        self._check_open()
        c = Consumer(self, **kwargs)
        self._clients.add(c)
        return c

    def _forget(self, client: Any) -> None:
        self._clients.discard(client)

    # ==========================================================================================
    # Committed offsets (__consumer_offsets, Kafka's record format)

    # Where the cached commits stand: the next offset to replay per __consumer_offsets
    # partition, and the data directory's mtime when missing partition folders were last
    # looked for (set with _committed).
    _committed_next: dict[int, int]
    _committed_scan: int = -1
    # Transactional offset commits (TxnOffsetCommit) read back but not yet decided:
    # (partition, producer id) -> their (key, value) records, applied on a COMMIT marker,
    # dropped on an ABORT (kafka-storage.md 7.2).
    _committed_txn: dict[tuple[int, int], list[tuple[bytes | None, bytes | None]]]

    def _committed_look(self) -> bool:
        """Whether partition folders may have appeared since the last look: the data
        directory's mtime moved, or is too recent to trust (a folder created in the same
        clock tick as the last look leaves it unchanged)."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return True
        look = mtime != self._committed_scan or time.time_ns() - mtime < 2_000_000_000
        self._committed_scan = mtime
        return look

    def _load_committed(self) -> dict[str, dict[tuple[str, int], offsets.OffsetCommit]]:
        """Every group's committed offsets. A writable store caches them and, on each call,
        replays only what other processes appended to __consumer_offsets since the last call
        (a comparison of log ends per partition when nothing moved; partition folders that
        do not exist yet are looked for again when the data directory changed: one stat)."""
        with self._committed_lock:
            if self._committed is not None and not self.read_only:
                if offsets.OFFSETS_TOPIC not in self._topics:
                    return self._committed
                nxt = self._committed_next
                look = self._committed_look()
                for p in range(self._topics[offsets.OFFSETS_TOPIC]["partitions"]):
                    if p not in nxt:
                        if not look or not self._offsets_data(p):
                            continue
                        nxt[p] = 0
                    lg = self.partition(offsets.OFFSETS_TOPIC, p)
                    end = lg.log_end_offset
                    if end == nxt[p]:
                        continue
                    if end < nxt[p]:  # cut back under us: start over
                        self._committed = None
                        break
                    nxt[p] = self._replay_offsets(self._committed, p, nxt[p])
                else:
                    return self._committed
            committed: dict[str, dict[tuple[str, int], offsets.OffsetCommit]] = {}
            self._committed_next = {}
            self._committed_txn = {}
            self._committed_look()
            if offsets.OFFSETS_TOPIC in self._topics or (self.read_only and offsets.OFFSETS_TOPIC in self._read_registry()):
                if self.read_only:
                    self._topics = self._read_registry()
                for p in range(self._topics[offsets.OFFSETS_TOPIC]["partitions"]):
                    if not self._offsets_data(p):
                        continue
                    self._committed_next[p] = self._replay_offsets(committed, p)
            self._committed = committed
            return committed

    def _offsets_data(self, p: int) -> bool:
        """Whether __consumer_offsets-<p> holds any bytes to replay: a folder a refused first
        commit left behind (a full disk) has none, and opening it would only fail again."""
        if (offsets.OFFSETS_TOPIC, p) in self._logs:
            return True
        try:
            with os.scandir(self.path / f"{offsets.OFFSETS_TOPIC}-{p}") as it:
                return any(e.name.endswith(".log") and e.stat().st_size > 0 for e in it)
        except FileNotFoundError:
            return False

    def _replay_offsets(self, committed: dict, p: int, start: int = 0) -> int:
        """Apply one __consumer_offsets partition to ``committed``. A record that cannot be
        parsed (garbage key or value, an unknown record type or value version, truncated
        fields, an impossible topic or partition) is skipped with one warning naming its
        partition and offset, as Kafka's coordinator loader skips record types it does not
        know: one bad record must not take every group of the store down. A batch that fails
        its CRC is skipped the same way; batches that cannot be framed end the replay of that
        partition (logged as an error), the other partitions still load. Replays from
        ``start`` (or the log start, when later); returns the offset to go on from next time
        (the log end it saw)."""
        tp = f"{offsets.OFFSETS_TOPIC}-{p}"
        lg = self.partition(offsets.OFFSETS_TOPIC, p)
        off = max(start, lg.log_start_offset)
        try:
            while off < lg.log_end_offset:
                try:
                    fs = lg.read(off, 1 << 20)
                except CorruptRecordError as exc:  # a damaged batch header: step past it
                    if exc.last_offset is None or exc.last_offset < off:
                        raise
                    self._warn_offsets(p, off, f"skipping the damaged batches at offsets "
                                       f"{off}..{exc.last_offset} of {tp}: {exc}")
                    off = exc.last_offset + 1
                    continue
                nxt = fs.next_offset
                for b in fs.batches():
                    if b.is_transactional:
                        if b.last_offset >= off:
                            self._replay_txn_batch(committed, p, b, tp)
                        continue
                    try:
                        records = b.records(min_offset=off)
                    except (KStoreError, ValueError) as exc:
                        self._warn_offsets(p, b.base_offset, "skipping the batch at offsets "
                                           f"{b.base_offset}..{b.last_offset} of {tp}: {exc}")
                        continue
                    for r in records:
                        try:
                            _apply_offset_record(committed, r.key, r.value)
                        except (KStoreError, ValueError) as exc:
                            self._warn_offsets(p, r.offset, f"skipping the record at offset "
                                               f"{r.offset} of {tp}, which cannot be parsed: {exc}")
                if nxt <= off:
                    break
                off = nxt
        except (KStoreError, ValueError) as exc:
            log.error("%s: committed offsets from offset %d on cannot be read (%s); they are "
                      "ignored until the partition is repaired (see `kstore verify`)", tp, off, exc)
            return lg.log_end_offset
        return off

    def _replay_txn_batch(self, committed: dict, p: int, b: _core.Batch, tp: str) -> None:
        """A transactional batch of __consumer_offsets: its commits wait for the marker."""
        pending = self._committed_txn
        key = (p, b.producer_id)
        try:
            if b.is_control:
                kind = control_type(b)
                records = pending.pop(key, [])
                if kind != COMMIT:
                    return
                for k, v in records:
                    try:
                        _apply_offset_record(committed, k, v)
                    except (KStoreError, ValueError) as exc:
                        self._warn_offsets(p, b.base_offset, f"skipping a transactional "
                                           f"offset commit of {tp} that cannot be parsed: {exc}")
                return
            pending.setdefault(key, []).extend((r.key, r.value) for r in b.records())
        except (KStoreError, ValueError) as exc:
            self._warn_offsets(p, b.base_offset, "skipping the batch at offsets "
                               f"{b.base_offset}..{b.last_offset} of {tp}: {exc}")

    def commit_offsets_transactional(self, group: str, commits: Mapping[tuple[str, int], tuple[int, str, int]],
                                     producer_id: int, producer_epoch: int) -> int:
        """TxnOffsetCommit: append ``commits`` for ``group`` as a transactional batch of the
        producer's; they take effect when its transaction's COMMIT marker is written to the
        group's __consumer_offsets partition (returned) and vanish with an ABORT."""
        self._check_writable()
        self._ensure_offsets_topic()
        now = self._clock() if self._clock else _core.now_ms()
        b = _core.BatchBuilder(producer_id=producer_id, producer_epoch=producer_epoch,
                               base_sequence=0, transactional=True)
        for (t, p), (off, meta, epoch) in commits.items():
            b.append(offsets.encode_offset_commit_value(off, epoch, meta, now),
                     key=offsets.encode_offset_commit_key(group, t, p), timestamp=now)
        part = offsets.group_partition(group)
        if commits:
            self.partition(offsets.OFFSETS_TOPIC, part).append_batch(
                b.build(), validate_records=False, verify_crc=False, _internal=True)
        return part

    def _warn_offsets(self, p: int, offset: int, message: str) -> None:
        # Once per record: read-only stores replay on every call.
        if (p, offset) not in self._offsets_warned:
            self._offsets_warned.add((p, offset))
            log.warning("%s", message)

    def commit_offsets(self, group: str, commits: Mapping[tuple[str, int], tuple[int, str, int]],
                       *, _past_log_end: bool = False) -> None:
        """Commit ``{(topic, partition): (offset, metadata, leader_epoch)}`` for ``group``:
        appended to ``__consumer_offsets`` in Kafka's key (v1) and value (v3) format. Raises
        OffsetOutOfRangeError for an offset outside [0, log end] (nothing is committed).
        ``_past_log_end``: kstore serve's OffsetCommit, which takes any offset >= 0 as Kafka
        does."""
        if self.read_only:
            raise ReadOnlyError(
                f"store {self.path} is open read_only: this process can consume but not commit "
                f"offsets; commit from the writing process")
        self._check_open()
        if not isinstance(group, str) or not group:
            raise InvalidRequestError("committing offsets needs a non-empty group id")
        for (t, p), (off, meta, _) in commits.items():
            self._check_commit_offset(t, p, off, past_log_end=_past_log_end)
            if len(meta.encode()) > 4096:
                raise InvalidRequestError(f"commit metadata for {t}-{p} is over 4096 bytes")
        self._ensure_offsets_topic()
        now = self._clock() if self._clock else _core.now_ms()
        b = _core.BatchBuilder()
        entries = []
        for (t, p), (off, meta, epoch) in commits.items():
            k = offsets.encode_offset_commit_key(group, t, p)
            v = offsets.encode_offset_commit_value(off, epoch, meta, now)
            b.append(v, key=k, timestamp=now)
            entries.append(offsets.OffsetCommit(group, t, p, off, epoch, meta, now))
        if not entries:
            return
        part = offsets.group_partition(group)
        committed = self._load_committed()
        lg = self.partition(offsets.OFFSETS_TOPIC, part)
        # Append and publish under one lock: expire_offsets re-checks its candidates under it
        # before writing tombstones, so a commit is never tombstoned right after it landed.
        with self._committed_lock:
            lg.append_batch(b.build(), validate_records=False, verify_crc=False, _internal=True)
            g = committed.setdefault(group, {})
            for e in entries:
                g[(e.topic, e.partition)] = e

    def _check_commit_offset(self, topic: str, partition: int, offset: Any, *,
                             past_log_end: bool = False) -> None:
        """The embedded API's rule for a committed offset (consumer.commit, commit_offsets,
        producer.send_offsets_to_transaction): a position in the partition, from 0 to its log
        end; OffsetOutOfRangeError otherwise. A Kafka broker, and kstore serve
        (``past_log_end``), take offsets past the log end: a remote client may commit records
        still in flight. Here nothing is in flight that the log end does not count, so past it
        is a mistake."""
        end = self.partition(topic, partition).log_end_offset
        if (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0
                or (offset > end and not past_log_end)):
            where = "be an int >= 0" if past_log_end else f"lie in [0, {end}] (the log end)"
            raise OffsetOutOfRangeError(
                f"cannot commit offset {offset!r} for {topic}-{partition}: it must {where}")

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        c = self._load_committed().get(group, {}).get((topic, partition))
        return None if c is None else c.offset

    def _ensure_offsets_topic(self) -> None:
        if offsets.OFFSETS_TOPIC not in self._topics:
            def change(topics: dict[str, dict[str, Any]]) -> None:
                if offsets.OFFSETS_TOPIC not in topics:
                    topics[offsets.OFFSETS_TOPIC] = {
                        "partitions": offsets.OFFSETS_PARTITIONS,
                        "config": dict(OFFSETS_TOPIC_CONFIG), "topic_id": uuid.uuid4().hex,
                        "internal": True}

            self._change_registry(change)

    def groups(self) -> list[str]:
        """Groups with committed offsets, or with live members in this process or in any
        other process on this data directory (kstore.localgroups)."""
        from kstore import localgroups

        names = set(self._load_committed()) | {g for g, s in self._groups.items() if s.members}
        names.update(localgroups.list_groups(self.path))
        return sorted(names)

    def describe_group(self, group: str) -> dict[str, Any]:
        """Committed offsets, log ends and lag per partition, and the live members: those of
        every process on this data directory (with their pid and host), and the in-process
        members of groups on a read_only store."""
        from kstore import localgroups

        committed = self._load_committed().get(group, {})
        members = [{"member_id": mid, "assignment": sorted(info["assignment"]),
                    "client_id": info.get("client_id"), "pid": info.get("pid"),
                    "host": info.get("host")}
                   for mid, info in sorted(localgroups.live_members(self.path, group).items())]
        state = self._groups.get(group)
        listed = {m["member_id"] for m in members}
        if state is not None:
            members += [{"member_id": m.member_id, "assignment": sorted(m.assignment()),
                         "client_id": m.client_id, "pid": os.getpid(), "host": None}
                        for m in list(state.members) if m.member_id not in listed]
        parts = []
        for (t, p), c in sorted(committed.items()):
            try:
                end = self.partition(t, p).log_end_offset
            except UnknownTopicOrPartitionError:
                end = None
            parts.append({"topic": t, "partition": p, "committed": c.offset,
                          "log_end_offset": end, "lag": None if end is None else max(end - c.offset, 0),
                          "metadata": c.metadata, "commit_timestamp": c.commit_timestamp})
        return {"group": group, "state": "Stable" if members else "Empty", "members": members,
                "partitions": parts}

    # ==========================================================================================
    # Retention and maintenance

    def now_ms(self) -> int:
        return self._clock() if self._clock else _core.now_ms()

    def delete_records(self, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Kafka's DeleteRecords: move each partition's log start offset up to the given offset
        (-1: the log end), deleting the segments wholly below it. Returns the new log start
        offsets. Reads below them raise OffsetOutOfRangeError; an internal topic raises
        InternalTopicError (nothing is deleted)."""
        self._check_writable()
        for t, _ in offsets:
            refuse_internal(t, "delete records of")
        out = {}
        for (t, p), off in offsets.items():
            lg = self.partition(t, p)
            if not isinstance(off, int) or isinstance(off, bool) or off < -1:
                raise OffsetOutOfRangeError(f"cannot delete records of {t}-{p} before {off!r}")
            lg.delete_segments_before(lg.log_end_offset if off == -1 else off)
            out[(t, p)] = lg.log_start_offset
        return out

    def run_maintenance(self) -> dict[str, Any]:
        """Apply retention and compaction to every partition now (compacted topics, including
        __consumer_offsets, are cleaned when their dirty ratio calls for it). Returns what was
        deleted or cleaned, per partition. A partition whose topic is deleted meanwhile is
        skipped; any other failure of one partition is logged and the pass goes on with the
        rest. Raises ClosedError only when the store itself is closed.

        Shared mode: one process at a time runs a pass (an flock on
        ``.kstore-maintenance.lock``); when another one is running its pass, this returns
        ``{"skipped": "..."}`` at once and changes nothing."""
        self._check_writable()
        if not self.shared:
            return self._run_maintenance()
        try:
            fd = os.open(self.path / MAINTENANCE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise KafkaStorageError(f"cannot open {self.path / MAINTENANCE_LOCK}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return {"skipped": "another process is running maintenance on this directory"}
            return self._run_maintenance()
        finally:
            os.close(fd)

    def _run_maintenance(self) -> dict[str, Any]:
        from kstore.cleaner import clean_log
        from kstore.retention import enforce_retention

        self._sync_registry()
        now = self.now_ms()
        report: dict[str, Any] = {}
        for name, t in list(self._topics.items()):
            for p in range(t["partitions"]):
                if (name, p) not in self._logs and not (self.path / f"{name}-{p}").exists():
                    continue  # never written: nothing to do, nothing to open
                lg: PartitionLog | None = None
                try:
                    lg = self.partition(name, p)
                    if "compact" in lg.config["cleanup.policy"]:
                        cleaned = clean_log(lg, now)
                        if cleaned is not None and cleaned.cleaned_segments:
                            report[f"{name}-{p} compaction"] = cleaned
                    res = enforce_retention(lg, now)
                except UnknownTopicOrPartitionError:
                    continue  # deleted meanwhile
                except ClosedError:
                    if self._closed:
                        raise
                    if lg is not None and self._logs.get((name, p)) is not lg:
                        continue  # delete_topic closed it under us: nothing left to maintain
                    log.warning("maintenance of %s-%d failed", name, p, exc_info=True)
                    continue
                except OSError as exc:  # a full or failing disk: one line, no traceback
                    log.warning("maintenance of %s-%d failed: %s", name, p, exc)
                    continue
                except Exception:  # one bad partition must not starve the others
                    log.warning("maintenance of %s-%d failed", name, p, exc_info=True)
                    continue
                if res.deleted_segments:
                    report[f"{name}-{p}"] = res
        expired = self.expire_offsets(now)
        if expired:
            report["expired_offsets"] = expired
        if self._txn_coordinator is not None or (
                self.shared and "__transaction_state" in self._topics):
            # Transactions past transaction.timeout.ms: this process's producers' (kstore
            # serve checks its own every second) and, in a shared store, those a process that
            # died left open (their locks are free); a live process's are its own to expire.
            try:
                aborted = self.transactions().expire()
            except (KStoreError, OSError) as exc:
                log.warning("aborting timed-out transactions failed: %s", exc)
            else:
                if aborted:
                    report["aborted_transactions"] = aborted
        return report

    def expire_offsets(self, now_ms: int | None = None) -> dict[str, list[tuple[str, int]]]:
        """Drop committed offsets by writing tombstones to __consumer_offsets, as Kafka does
        since 2.1 (KIP-211): a committed offset goes once offsets.retention.minutes have passed
        since the later of its commit and the last time its group was active. Groups with
        members in this process never expire; for others ``group_activity_hooks`` say when
        they were last active (a group with members elsewhere: now; an Empty one: when it
        became Empty; one a hook never saw: when that hook started watching). Without a hook,
        the commit time alone counts (standalone consumers). Returns what went, per group."""
        self._check_writable()
        now = self.now_ms() if now_ms is None else now_ms
        retention = self.offsets_retention_ms
        committed = self._load_committed()
        with self._committed_lock:
            snapshot = {g: dict(entries) for g, entries in committed.items()}
        # Asked after the snapshot: activity that starts meanwhile is seen.
        activity = [hook() for hook in list(self.group_activity_hooks)]
        out: dict[str, list[tuple[str, int]]] = {}
        for group, entries in snapshot.items():
            state = self._groups.get(group)
            if state is not None and state.members:
                continue
            active = max((acts.get(group, floor) for acts, floor in activity), default=None)

            def expired(c: offsets.OffsetCommit, active: int | None = active) -> bool:
                ref = c.commit_timestamp if active is None else max(c.commit_timestamp, active)
                return now - ref >= retention

            old = [tp for tp, c in entries.items() if expired(c)]
            if not old:
                continue
            gone = self._tombstone_offsets(group, old, now, expired)
            if gone:
                out[group] = sorted(gone)
        return out

    def delete_group_offsets(self, group: str) -> list[tuple[str, int]]:
        """Kafka's DeleteGroups, for the offsets: tombstone every committed offset of ``group``
        so that ``committed()`` returns None for them, now and after a reopen. Returns the
        (topic, partition) pairs removed, sorted; [] if the group had none. Whether the group
        may be deleted (no members) is the caller's decision."""
        self._check_writable()
        parts = sorted(self._load_committed().get(group, {}))
        if parts:
            self._tombstone_offsets(group, parts, self.now_ms())
        return parts

    def _tombstone_offsets(self, group: str, parts: list[tuple[str, int]], now: int,
                           still: Callable[[offsets.OffsetCommit], bool] | None = None,
                           ) -> list[tuple[str, int]]:
        """Append one tombstone per partition to the group's __consumer_offsets partition
        (replay and compaction then drop the commits) and forget them in memory. With
        ``still``, only the partitions whose current commit still passes it go: the check,
        the append and the in-memory update hold the lock commit_offsets appends under, so a
        commit that landed since the caller looked is kept. Returns the partitions that went."""
        committed = self._load_committed()
        lg = self.partition(offsets.OFFSETS_TOPIC, offsets.group_partition(group))
        with self._committed_lock:
            entries = committed.get(group)
            if still is not None:
                parts = [tp for tp in parts if entries is not None and tp in entries
                         and still(entries[tp])]
            if not parts:
                return []
            b = _core.BatchBuilder()
            for t, p in parts:
                b.append(None, key=offsets.encode_offset_commit_key(group, t, p), timestamp=now)
            lg.append_batch(b.build(), validate_records=False, verify_crc=False, _internal=True)
            if entries is not None:
                for tp in parts:
                    entries.pop(tp, None)
                if not entries:
                    committed.pop(group, None)
        return parts

    def _maintenance_loop(self) -> None:
        interval = self.retention_check_interval_ms / 1000
        while not self._maintenance_stop.wait(interval):
            if self._closed:
                return
            try:
                self.run_maintenance()
            except ClosedError:
                if self._closed or self._maintenance_stop.is_set():
                    return  # the store is closing: stop
                # Some log closed under us (a topic deleted meanwhile): not the store's end.
                log.warning("maintenance of %s failed", self.path, exc_info=True)
            except Exception:  # keep the thread alive; say what failed
                log.warning("maintenance of %s failed", self.path, exc_info=True)

    # ==========================================================================================
    # Life cycle

    def flush(self) -> None:
        """fsync every open partition log."""
        for lg in list(self._logs.values()):
            if not lg.read_only and not lg.closed:
                lg.flush()

    def close(self) -> None:
        """Close producers (flushing them), consumers (committing if they auto-commit), and
        every partition log (clean shutdown). When the disk refuses (full...), every log is
        still closed and the directory lock released, then KafkaStorageError is raised (no
        ``.tmp`` files are left; the next open recovers the logs that could not be closed
        cleanly)."""
        if self._closed:
            return
        self._maintenance_stop.set()
        if self._maintenance_thread is not None and self._maintenance_thread is not threading.current_thread():
            self._maintenance_thread.join()
        self.signal.waiting.set()
        for c in list(self._clients):
            try:
                c.close()
            except Exception as exc:  # keep closing the rest; say what failed
                log.warning("closing %r failed: %s", c, exc)
        if self._txn_coordinator is not None:
            self._txn_coordinator.close()  # lets its transactional ids go
        failures: list[OSError] = []
        with self._lock:
            self._closed = True
            try:
                for lg in self._logs.values():
                    try:
                        lg.close()
                    except OSError as exc:  # KafkaStorageError: close the others all the same
                        failures.append(exc)
                        log.error("%s", exc)
                self._logs.clear()
            finally:
                self._release_locks()
                if self._maintenance_fd >= 0:
                    os.close(self._maintenance_fd)
                    self._maintenance_fd = -1
        self.signal.notify()
        if failures:
            raise KafkaStorageError(
                f"closing store {self.path}: {len(failures)} partition log(s) could not be "
                f"closed cleanly, first: {failures[0]}") from failures[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path} {len(self._topics)} topics{' read-only' if self.read_only else ''}>"


def _apply_offset_record(committed: dict, key: bytes | None, value: bytes | None) -> None:
    """Raises CorruptRecordError (or InvalidTopicError) for a record kstore cannot use."""
    rec = offsets.decode_record(key, value)
    if rec is None:
        return
    kind, obj = rec
    if kind in ("offset", "offset_delete"):
        assert isinstance(obj, (offsets.OffsetCommit, offsets.OffsetCommitKey))
        # Well-formed bytes naming a topic or partition that cannot exist: nothing kstore or
        # Kafka commits; reading it back would send consumers and `groups describe` there.
        validate_topic_name(obj.topic)
        if obj.partition < 0:
            raise CorruptRecordError(f"offset commit for {obj.topic} has partition {obj.partition}")
    if kind == "offset":
        assert isinstance(obj, offsets.OffsetCommit)
        committed.setdefault(obj.group, {})[(obj.topic, obj.partition)] = obj
    elif kind == "offset_delete":
        assert isinstance(obj, offsets.OffsetCommitKey)
        entries = committed.get(obj.group)
        if entries is not None:
            entries.pop((obj.topic, obj.partition), None)
            if not entries:  # a group whose offsets are all gone is gone (groups(), reopen)
                del committed[obj.group]


def _jsonable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items()}


def open(path: str | os.PathLike = "./kstore-data", read_only: bool = False,
         **kwargs: Any) -> Any:  # noqa: A001 - the API is kstore.open
    """Open (creating it unless ``read_only``) the store at ``path``. A ``kafka://host:port``
    address instead connects to a cluster: ``kstore.connect(path, **kwargs)`` (the keyword
    arguments are then client configs under Kafka's names)."""
    from kstore import _kafka

    if _kafka.is_kafka_url(path):
        from kstore.cluster import connect

        if read_only:
            raise InvalidConfigError(
                f"read_only=True has no meaning for a cluster ({path}): a cluster client may "
                f"always write; to only read, use consumers (or a principal without write ACLs)")
        local = sorted(k for k in kwargs if k in _LOCAL_ONLY)
        if local:
            raise InvalidConfigError(
                f"{', '.join(local)} apply to a local data directory, not to a cluster "
                f"({path}): the brokers' own settings govern those there (e.g. "
                f"auto.create.topics.enable, num.partitions, log.retention.check.interval.ms)")
        return connect(str(path), **kwargs)
    return Store(path, read_only, **kwargs)


#: Store() arguments that only make sense for a data directory (kstore.open refuses them with a
#: kafka:// address).
_LOCAL_ONLY = frozenset({"auto_create_topics", "num_partitions", "clock",
                         "retention_check_interval_ms", "offsets_retention_minutes", "exclusive"})
