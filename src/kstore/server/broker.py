"""The Kafka APIs over a Store: one method per API, taking the decoded request dict and
returning the response dict (kstore.server.protocol encodes both).

The broker is one more client of the Store (never a second storage path): produced batches go
through ``PartitionLog.append_batches`` (validated in C and appended as they are), fetches
return ``FileSlice`` objects that the connection sends with ``sendfile``, and offsets are
committed to the same ``__consumer_offsets`` the embedded Consumer uses.

Everything runs on the server's event loop. Appends and reads are page-cache operations of a few
microseconds; nothing here waits for the disk except an explicit fsync policy of the topic.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kstore.config import TOPIC_CONFIG
from kstore.errors import (
    CorruptRecordError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    InvalidTopicError,
    KafkaStorageError,
    KStoreError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from kstore import _core
from kstore.log.fileslice import FileSlice
from kstore.log.partition import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from kstore.offsets import OFFSETS_TOPIC
from kstore.server import legacy, protocol
from kstore.server.groups import (
    OFFSET_METADATA_MAX_BYTES,
    OFFSET_METADATA_TOO_LARGE,
    commit_response,
)
from kstore.server.producers import ProducerStates
from kstore.transactions import EXPIRY_CHECK_S, TransactionCoordinator
from kstore.topic import validate_topic_name

if TYPE_CHECKING:
    from kstore.store import Store

log = logging.getLogger("kstore.server")

# Kafka error codes answered here (kafka-protocol.md section 7).
NONE = 0
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
COORDINATOR_NOT_AVAILABLE = 15
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
CLUSTER_AUTHORIZATION_FAILED = 31
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
INVALID_REQUEST = 42
INVALID_TXN_STATE = 48
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87
UNKNOWN_SERVER_ERROR = -1

# IncrementalAlterConfigs' config_operation.
CONFIG_SET, CONFIG_DELETE, CONFIG_APPEND, CONFIG_SUBTRACT = 0, 1, 2, 3

LEADER_EPOCH = 0  # one node, one epoch, forever (kafka-protocol.md rule 9)
AUTHORIZED_OPERATIONS_OMITTED = -(2**31)
MAX_TIMESTAMP = -3
EARLIEST_LOCAL_TIMESTAMP = -4  # ListOffsets v8+ (KIP-405): no tiered storage, the log start
LATEST_TIERED_TIMESTAMP = -5  # ListOffsets v9+: nothing is tiered, so no offset (-1)
UNKNOWN_TOPIC_ID = 100
# How long a Metadata or Produce that auto-creates topics waits for the creation (done in a
# thread) before answering LEADER_NOT_AVAILABLE for the topics not made yet, as Kafka answers
# while its controller creates them; clients retry. One creation of up to a thousand topics
# takes a registry write and an fsync (tens of milliseconds), so the common case still gets its
# partitions in one round trip.
AUTO_CREATE_WAIT_S = 1.0
# A Metadata answer of more topics than this is built and encoded in a thread: thousands of
# entries are tens of milliseconds of pure Python, and the GIL changes hands every 5 ms, so
# other connections are served meanwhile.
MANY_TOPICS = 500

_BATCH_HEADER = struct.Struct(">qiiBiHiqqqhi")  # base offset .. base sequence (57 bytes)
_ATTR_CODEC = 0x07
_ATTR_TRANSACTIONAL = 0x10
_ATTR_CONTROL = 0x20
_ZSTD = 4


@dataclass
class BrokerConfig:
    node_id: int = 1
    cluster_id: str = ""
    advertised_host: str | None = None
    advertised_port: int | None = None
    auto_create_topics: bool = True
    num_partitions: int = 1
    max_auto_create_per_request: int = 1000
    allow_delete_topics: bool = True
    broker_config: dict[str, str] = field(default_factory=dict)


class Broker:
    """Answers requests for one Store. ``endpoint`` gives (host, port) as clients reach us."""

    def __init__(self, store: Store, config: BrokerConfig, coordinator: Any) -> None:
        self.store = store
        self.config = config
        self.coordinator = coordinator
        # A shared store's ids come from its counter: unique across the processes on it.
        self.producers = ProducerStates(
            allocate=store.allocate_producer_id if getattr(store, "shared", False) else None)
        self.transactions: TransactionCoordinator = store.transactions(
            self.producers.new_producer_id)
        # Clients go on with their open transactions after a restart (not aborted at load).
        self.transactions.keep_ongoing = True
        self._expiry_task: asyncio.Task[None] | None = None
        # Partitions whose last append the disk refused: logged at ERROR once, until an append
        # to them succeeds again (a full disk must not flood the log, one line per request).
        self._storage_failed: set[tuple[str, int]] = set()
        # Auto-creations in progress (in a thread): topic -> the future of its batch.
        self._creating: dict[str, asyncio.Future[Any]] = {}
        self._damage_logged: set[tuple[str | None, int | None]] = set()  # once per place
        self.handlers: dict[int, Any] = {
            0: self.produce, 1: self.fetch, 2: self.list_offsets, 3: self.metadata,
            8: self.offset_commit, 9: self.offset_fetch, 10: self.find_coordinator,
            11: self.join_group, 12: self.heartbeat, 13: self.leave_group, 14: self.sync_group,
            15: self.describe_groups, 16: self.list_groups, 18: self.api_versions,
            19: self.create_topics, 20: self.delete_topics, 21: self.delete_records,
            22: self.init_producer_id, 23: self.offset_for_leader_epoch,
            32: self.describe_configs, 33: self.alter_configs, 37: self.create_partitions,
            42: self.delete_groups, 44: self.incremental_alter_configs, 60: self.describe_cluster,
            24: self.add_partitions_to_txn, 25: self.add_offsets_to_txn, 26: self.end_txn,
            28: self.txn_offset_commit, 65: self.describe_transactions,
            66: self.list_transactions,
        }

    # ==========================================================================================
    # Cluster

    def api_versions(self, req: dict, version: int, conn: Any) -> dict:
        if version >= 3:
            log.debug("%s: client software %s %s", conn.peer, req.get("client_software_name"),
                      req.get("client_software_version"))
        keys = [{"api_key": k, "min_version": lo, "max_version": hi}
                for k, (lo, hi) in protocol.supported_versions().items()]
        return {"error_code": NONE, "api_keys": keys}

    def _broker(self, conn: Any) -> dict:
        host, port = conn.endpoint
        return {"node_id": self.config.node_id, "host": self.config.advertised_host or host,
                "port": self.config.advertised_port or port, "rack": None}

    def metadata(self, req: dict, version: int, conn: Any) -> Any:
        wanted = req["topics"]
        all_topics = wanted is None or (version == 0 and not wanted)
        allow_create = (self.config.auto_create_topics and not all_topics
                        and (version < 4 or req["allow_auto_topic_creation"]))
        names = self.store.topics(internal=True) if all_topics else [t["name"] for t in wanted]
        if allow_create:
            new = self._creatable(names)
            if new or any(n in self._creating for n in names if n is not None):
                return self._metadata_after_create(names, new, conn)
        if len(names) > MANY_TOPICS:
            return asyncio.to_thread(self._metadata_answer, names, conn, ())
        return self._metadata_answer(names, conn, ())

    async def _metadata_after_create(self, names: list[str], new: list[str], conn: Any) -> dict:
        later = await self._auto_create(new, names, conn, "Metadata")
        if len(names) > MANY_TOPICS:
            return await asyncio.to_thread(self._metadata_answer, names, conn, later)
        return self._metadata_answer(names, conn, later)

    def _metadata_answer(self, names: list[str], conn: Any, later: Any) -> dict:
        topics = [self._topic_metadata(name, later) for name in names]
        b = self._broker(conn)
        return {"brokers": [b], "cluster_id": self.config.cluster_id,
                "controller_id": self.config.node_id, "topics": topics,
                "cluster_authorized_operations": AUTHORIZED_OPERATIONS_OMITTED}

    def _topic_metadata(self, name: str, later: Any) -> dict:
        node = self.config.node_id
        if name is None:
            # Metadata v10+ may name a topic by id alone: kstore's topics have no ids (all
            # zero in its answers), so no id is known.
            return {"error_code": UNKNOWN_TOPIC_ID, "name": None, "partitions": []}
        try:
            validate_topic_name(name)
            if name not in self.store._topics and (name in self._creating or name in later):
                return {"error_code": LEADER_NOT_AVAILABLE, "name": name, "partitions": []}
            n = self.store.partitions_for(name)
        except InvalidTopicError:
            return {"error_code": INVALID_TOPIC_EXCEPTION, "name": name, "partitions": []}
        except UnknownTopicOrPartitionError:
            return {"error_code": UNKNOWN_TOPIC_OR_PARTITION, "name": name, "partitions": []}
        parts = [{"error_code": NONE, "partition_index": p, "leader_id": node,
                  "leader_epoch": LEADER_EPOCH, "replica_nodes": [node], "isr_nodes": [node],
                  "offline_replicas": []} for p in range(n)]
        return {"error_code": NONE, "name": name, "is_internal": name == OFFSETS_TOPIC,
                "partitions": parts, "topic_authorized_operations": AUTHORIZED_OPERATIONS_OMITTED}

    # ------------------------------------------------------------------------------------------
    # Auto-creation: off the event loop, one registry write per batch, capped per request

    def _creatable(self, names: Any) -> list[str]:
        """The names a request may auto-create: valid, not internal, not there, not being made
        (each once, in order)."""
        topics, creating = self.store._topics, self._creating
        out = []
        for name in dict.fromkeys(names):
            if (name is None or name in topics or name in creating or name.startswith("__")):
                continue
            try:
                validate_topic_name(name)
            except InvalidTopicError:
                continue
            out.append(name)
        return out

    async def _auto_create(self, new: list[str], names: Any, conn: Any, what: str) -> set[str]:
        """Start creating ``new`` (at most max_auto_create_per_request of them) in a thread and
        wait up to AUTO_CREATE_WAIT_S for it and for creations already under way of ``names``.
        Returns the names left for a later request (over the cap): answered
        LEADER_NOT_AVAILABLE, as are those still being made, so that clients retry."""
        cap = self.config.max_auto_create_per_request
        later: set[str] = set()
        if len(new) > cap:
            later = set(new[cap:])
            log.warning("%s from %s (%s) names %d new topics: auto-creating %d now (the limit per "
                        "request), the rest are answered LEADER_NOT_AVAILABLE until a retry",
                        what, conn.peer, conn.client_id, len(new), cap)
            new = new[:cap]
        if new:
            self._start_creating(new)
        waits = {self._creating[n] for n in dict.fromkeys(names) if n in self._creating}
        if waits:
            # asyncio.wait leaves the creations running if this request is cancelled.
            await asyncio.wait(waits, timeout=AUTO_CREATE_WAIT_S)
        return later

    def _start_creating(self, names: list[str]) -> None:
        n = self.config.num_partitions
        fut = asyncio.ensure_future(
            asyncio.to_thread(self.store.create_topics, [(name, n) for name in names]))
        for name in names:
            self._creating[name] = fut

        def done(f: asyncio.Future[Any]) -> None:
            for name in names:
                if self._creating.get(name) is f:
                    del self._creating[name]
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("auto-creating %d topic(s) failed: %s", len(names), exc)
                return
            failed = f.result()
            made = [x for x in names if x not in failed]
            for name, err in failed.items():
                if not isinstance(err, TopicAlreadyExistsError):
                    log.warning("auto-creating topic %r failed: %s", name, err)
            if len(made) == 1:
                log.info("auto-created topic %r with %d partition(s)", made[0], n)
            elif made:
                log.info("auto-created %d topics with %d partition(s) each (%r ... %r)",
                         len(made), n, made[0], made[-1])

        fut.add_done_callback(done)

    async def close(self) -> None:
        """Wait for auto-creations under way (a thread cannot be cancelled; the store must not
        close under it)."""
        pending = set(self._creating.values())
        if pending:
            await asyncio.wait(pending)
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            try:
                await self._expiry_task
            except asyncio.CancelledError:
                pass
            self._expiry_task = None

    def describe_cluster(self, req: dict, version: int, conn: Any) -> dict:
        b = self._broker(conn)
        return {"error_code": NONE, "endpoint_type": 1, "cluster_id": self.config.cluster_id,
                "controller_id": self.config.node_id,
                "brokers": [{"broker_id": b["node_id"], "host": b["host"], "port": b["port"],
                             "rack": None}],
                "cluster_authorized_operations": AUTHORIZED_OPERATIONS_OMITTED}

    # ==========================================================================================
    # Produce

    def produce(self, req: dict, version: int, conn: Any) -> Any:
        acks = req["acks"]
        if acks not in (-1, 0, 1):
            err = INVALID_REQUIRED_ACKS
            return self._produce_all_failed(req, err) if acks != 0 else None
        if self.config.auto_create_topics:
            names = [t["name"] for t in req["topic_data"]]
            new = self._creatable(names)
            if new or any(n in self._creating for n in names if n is not None):
                return self._produce_after_create(req, version, conn, names, new)
        return self._produce(req, version, ())

    async def _produce_after_create(self, req: dict, version: int, conn: Any, names: list[str],
                                    new: list[str]) -> dict | None:
        later = await self._auto_create(new, names, conn, "Produce")
        return self._produce(req, version, later)

    def _produce(self, req: dict, version: int, later: Any) -> dict | None:
        acks = req["acks"]
        txn = req["transactional_id"]
        responses = []
        failed = False
        for t in req["topic_data"]:
            name = t["name"]
            parts = []
            for p in t["partition_data"]:
                r = self._produce_partition(name, p["index"], p["records"], version,
                                            txn, later)
                failed |= r["error_code"] != NONE
                parts.append(r)
            responses.append({"name": name, "partition_responses": parts})
        if acks == 0:
            if failed:
                # Kafka closes the connection when an acks=0 append fails: the client has no
                # other way to learn of it.
                raise _CloseConnection("a Produce with acks=0 failed")
            return None
        return {"responses": responses}

    def _produce_all_failed(self, req: dict, err: int) -> dict:
        return {"responses": [
            {"name": t["name"], "partition_responses": [
                {"index": p["index"], "error_code": err, "base_offset": -1}
                for p in t["partition_data"]]}
            for t in req["topic_data"]]}

    def _crc_checked(self, fs: FileSlice, topic: str, partition: int,
                     offset: int) -> FileSlice | None:
        """``fs`` up to its first batch whose CRC-32C fails, or None when that is the first
        one (answered CORRUPT_MESSAGE, logged once per batch). Kafka's broker leaves the CRC to
        the client, but librdkafka does not check it unless check.crcs is set, so a damaged
        value would reach the application as data. In C, GIL released: about 13 GB/s, against
        the 2 GB/s sendfile of the same bytes."""
        with fs.memoryview() as mv:
            res = _core.scan(mv, check_crc=True, check_offsets=False)
        if res.ok:
            return fs
        if res.valid_end:
            return FileSlice(fs.file, fs.position, res.valid_end, fs._map, fs.base_offset)
        place = (fs.file.path, fs.position)
        if place not in self._damage_logged:
            self._damage_logged.add(place)
            log.error("fetch %s-%d at offset %d: the batch at byte %d of %s is corrupt: %s",
                      topic, partition, offset, fs.position, fs.file.path, res.error)
        return None

    def _produce_partition(self, topic: str, partition: int, records: Any, version: int,
                           transactional_id: str | None, later: Any) -> dict:
        out: dict[str, Any] = {"index": partition, "error_code": NONE, "base_offset": -1,
                               "log_append_time_ms": -1, "log_start_offset": -1}
        try:
            if self.config.auto_create_topics and topic not in self.store._topics:
                validate_topic_name(topic)
                if topic in self._creating or topic in later:
                    raise _Refused(LEADER_NOT_AVAILABLE, f"topic {topic!r} is being created")
            if topic.startswith("__"):
                raise _Refused(INVALID_TOPIC_EXCEPTION, f"{topic} is internal")
            lg = self.store.partition(topic, partition)
            out["log_start_offset"] = lg.log_start_offset
            mv = memoryview(records) if records is not None else memoryview(b"")
            if legacy.is_legacy(mv, version):  # a v0/v1 message set: the log stays all v2
                mv = memoryview(legacy.up_convert(mv))
            hdr = self._check_batches(mv, version, transactional_id)
            pid, epoch, base_seq, last_delta, txnl = hdr
            if txnl:
                err = self.transactions.verify_produce(pid, epoch, topic, partition)
                if err:
                    raise _Refused(err, f"producer {pid} epoch {epoch} ({transactional_id!r}) "
                                        f"may not write to {topic}-{partition} now (error {err})")
            if pid >= 0:
                if pid < self.producers.first_id and not self.producers.known(pid, topic, partition):
                    self._restore_producer(lg, pid, topic, partition)
                dup = self.producers.check(pid, epoch, base_seq, last_delta, topic, partition)
                if dup is not None:
                    out["base_offset"] = dup.first_offset
                    out["log_append_time_ms"] = dup.log_append_time
                    return out
            first, last, append_time = lg.append_batches(mv)
            if txnl:
                lg.transactions.note(pid, first, last)
            if pid >= 0:
                self.producers.record(pid, epoch, base_seq, last_delta, topic, partition,
                                      first, last, append_time)
            out["base_offset"] = first
            out["log_append_time_ms"] = append_time
            out["log_start_offset"] = lg.log_start_offset
            if self._storage_failed and (topic, partition) in self._storage_failed:
                self._storage_failed.discard((topic, partition))
                log.info("produce to %s-%d: the disk accepts writes again", topic, partition)
        except _Refused as exc:
            out["error_code"] = exc.code
            out["error_message"] = exc.message
            log.info("produce to %s-%d refused: %s", topic, partition, exc.message)
        except KafkaStorageError as exc:
            self._storage_error(out, topic, partition, exc)
        except KStoreError as exc:
            out["error_code"] = exc.code
            out["error_message"] = str(exc)
            log.info("produce to %s-%d refused: %s", topic, partition, exc)
        except OSError as exc:  # opening a partition's files on a full or broken disk
            self._storage_error(out, topic, partition, KafkaStorageError(
                f"{topic}-{partition}: {exc.strerror or exc} (errno {exc.errno})"))
        return out

    def _storage_error(self, out: dict, topic: str, partition: int,
                       exc: KafkaStorageError) -> None:
        """KAFKA_STORAGE_ERROR (56), as Kafka answers for a failed log directory; logged at
        ERROR once per partition until a write to it succeeds again."""
        out["error_code"] = KafkaStorageError.code
        out["error_message"] = str(exc)
        if (topic, partition) not in self._storage_failed:
            self._storage_failed.add((topic, partition))
            log.error("produce to %s-%d failed: the disk refused the write: %s (answering "
                      "KAFKA_STORAGE_ERROR until a write succeeds; logged once)",
                      topic, partition, exc)

    def _check_batches(self, mv: memoryview, version: int,
                       transactional_id: str | None) -> tuple[int, int, int, int, bool]:
        """Checks the C append path does not make (they depend on the request): magic 2,
        one batch per partition from v3, zstd from v7, no control batch from a client,
        transactional batches only in a Produce naming a transactional id. Returns the first
        batch's (producer id, epoch, base sequence, last offset delta, transactional)."""
        n = mv.nbytes
        if n > 16 and mv[16] != 2:
            # Produce v0-v2 message sets were up-converted before this; v3+ carries RecordBatch
            # v2 only (Kafka's ProduceRequest.validateRecords answers INVALID_RECORD).
            if version >= 3:
                raise _Refused(INVALID_RECORD, f"Produce v{version} carries RecordBatch v2 "
                                               f"(magic 2) only, not magic {mv[16]}")
            raise _Refused(CORRUPT_MESSAGE, f"magic {mv[16]} is no message format: the records "
                                            f"are corrupt")
        if n < _BATCH_HEADER.size:
            raise _Refused(CORRUPT_MESSAGE, f"{n} bytes of records cannot hold a batch")
        (_, length, _, magic, _, attrs, last_delta, _, _, pid, epoch,
         base_seq) = _BATCH_HEADER.unpack_from(mv, 0)
        if (version >= 3 or pid >= 0) and length + 12 != n:
            # Idempotent batches are checked one per request (their sequences are the unit).
            raise _Refused(INVALID_RECORD, "Produce v3+ (and any idempotent Produce) carries "
                                           "exactly one batch per partition")
        if attrs & _ATTR_CONTROL:
            raise _Refused(INVALID_RECORD, "control batches (transaction markers) come from "
                                           "the transaction coordinator, not from clients")
        txnl = bool(attrs & _ATTR_TRANSACTIONAL)
        if txnl and (transactional_id is None or pid < 0 or length + 12 != n):
            raise _Refused(INVALID_TXN_STATE, "a transactional batch needs a Produce (v3+) "
                                              "naming its transactional id, and a producer id")
        if attrs & _ATTR_CODEC == _ZSTD and version < 7:
            raise _Refused(UNSUPPORTED_COMPRESSION_TYPE, "zstd needs Produce v7 or later")
        return pid, epoch, base_seq, last_delta, txnl

    def _restore_producer(self, lg: Any, pid: int, topic: str, partition: int) -> None:
        """A producer from before this process (a restart or a crash) sends to a partition:
        find its last batches in the newest segments so that its retries are still recognised
        as duplicates and its sequence continues (Kafka rebuilds the same from snapshots and
        the log). Reads batch headers only; at most the last two segments."""
        found: list[tuple[int, int, int, int, int, int]] = []
        for seg in list(lg._segments)[-2:][::-1]:
            start = max(seg.base_offset, lg.log_start_offset)
            if start >= lg.log_end_offset:
                continue
            try:
                fs = lg.read(start, max(seg.size, 1))
            except KStoreError:
                continue
            mine = [(b.producer_epoch, b.base_sequence, b.last_offset_delta, b.base_offset,
                     b.last_offset, b.max_timestamp if b.timestamp_type == 1 else -1)
                    for b in fs.batches() if b.producer_id == pid and not b.is_control]
            found = mine + found
            if len(found) >= 5:
                break
        if found:
            self.producers.restore(pid, topic, partition, found)
            log.info("restored producer %d on %s-%d from the log: %d batch(es), last sequence "
                     "%d", pid, topic, partition, len(found),
                     found[-1][1] + found[-1][2])

    def init_producer_id(self, req: dict, version: int, conn: Any) -> dict:
        if req["transactional_id"] is not None:
            self._start_expiry()
            err, pid, epoch = self.transactions.init_producer_id(
                req["transactional_id"], req["transaction_timeout_ms"],
                req["producer_id"] if version >= 3 else -1,
                req["producer_epoch"] if version >= 3 else -1, version)
            return {"error_code": err, "producer_id": pid, "producer_epoch": epoch}
        # Without a transactional id Kafka always hands out a new id at epoch 0, even when the
        # request names its old id (KIP-360's bump is for transactional producers): a retried
        # request can never fence its own producer, and nobody can fence another's id.
        pid, epoch = self.producers.new_producer_id()
        return {"error_code": NONE, "producer_id": pid, "producer_epoch": epoch}

    # ==========================================================================================
    # Fetch

    async def fetch(self, req: dict, version: int, conn: Any) -> dict:
        if req["session_id"] != 0 or req["session_epoch"] > 0:
            # No fetch sessions (KIP-227): every fetch is a full one.
            return {"error_code": FETCH_SESSION_ID_NOT_FOUND, "session_id": 0, "responses": []}
        max_wait = req["max_wait_ms"]
        min_bytes = req["min_bytes"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(max_wait, 0) / 1000
        signal = self.store.signal
        magic = legacy.message_format_for_fetch(version)
        while True:
            seen = signal.version
            if magic < 2:
                # Down-conversion is Python record by record (about 2 us a record): in a
                # thread, so that the GIL changes hands every 5 ms and other connections are
                # served meanwhile (the Store is thread-safe).
                responses, total, error = await asyncio.to_thread(self._read_fetch, req, magic)
            else:
                responses, total, error = self._read_fetch(req)
            remaining = deadline - loop.time()
            if max_wait <= 0 or total >= min_bytes or error or remaining <= 0:
                return {"error_code": NONE, "session_id": 0, "responses": responses}
            # Parked until an append anywhere in the store moves the version, or the wait ends.
            await signal.wait_async(seen, remaining)
            if conn.closing:
                return {"error_code": NONE, "session_id": 0, "responses": responses}

    def _read_fetch(self, req: dict, magic: int = 2) -> tuple[list[dict], int, bool]:
        budget = req["max_bytes"] if req["max_bytes"] > 0 else 2**31 - 1
        committed_only = req["isolation_level"] == 1
        total = 0
        error = False
        responses = []
        for t in req["topics"]:
            name = t["topic"]
            parts = []
            for p in t["partitions"]:
                r: dict[str, Any] = {"partition_index": p["partition"], "error_code": NONE,
                                     "high_watermark": -1, "last_stable_offset": -1,
                                     "log_start_offset": -1, "aborted_transactions": None,
                                     "preferred_read_replica": -1, "records": b""}
                parts.append(r)
                try:
                    lg = self.store.partition(name, p["partition"])
                except (UnknownTopicOrPartitionError, InvalidTopicError, TypeError):
                    r["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
                    error = True
                    continue
                epoch = p["current_leader_epoch"]
                if epoch != -1 and epoch != LEADER_EPOCH:
                    r["error_code"] = UNKNOWN_LEADER_EPOCH if epoch > LEADER_EPOCH else FENCED_LEADER_EPOCH
                    error = True
                    continue
                leo = lg.log_end_offset
                # read_committed stops at the LSO (the oldest open transaction). Others get
                # the LSO when this log's transactions are already known, else the log end (a
                # read_uncommitted fetch never pays for the first scan of a log's headers).
                lso = (lg.last_stable_offset() if committed_only or lg._txn is not None
                       else leo)
                r["high_watermark"] = leo
                r["last_stable_offset"] = lso
                r["log_start_offset"] = lg.log_start_offset
                offset = p["fetch_offset"]
                if budget - total <= 0 and total > 0:
                    continue  # the response is full: later partitions come next time
                limit = min(p["partition_max_bytes"], budget - total) if total else p["partition_max_bytes"]
                try:
                    # Every header checked: many clients do not check CRCs (librdkafka's
                    # check.crcs is off by default), and a damaged length or offset in mid-span
                    # would misframe what they parse, silently dropping records.
                    fs = lg.read(offset, max(limit, 1), lso if committed_only else None,
                                 every_header=True)
                except OffsetOutOfRangeError:
                    r["error_code"] = OFFSET_OUT_OF_RANGE
                    error = True
                    continue
                except CorruptRecordError as exc:
                    # Kafka answers CORRUPT_MESSAGE when its read meets a batch it cannot
                    # parse (the CorruptRecordException of the log read maps to code 2);
                    # KAFKA_STORAGE_ERROR is for an I/O failure that takes the whole log
                    # directory offline, while here one batch is bad and the rest readable: a
                    # client can seek past it. A fetch that starts before the damage gets the
                    # good batches before it with no error; this answer comes when a fetch
                    # starts at the damaged batch.
                    place = (exc.path, exc.position)
                    if place not in self._damage_logged:
                        self._damage_logged.add(place)
                        log.error("fetch %s-%d at offset %d: %s", name, p["partition"], offset, exc)
                    r["error_code"] = CORRUPT_MESSAGE
                    error = True
                    continue
                if len(fs):
                    checked = self._crc_checked(fs, name, p["partition"], offset)
                    if checked is None:
                        r["error_code"] = CORRUPT_MESSAGE
                        error = True
                        continue
                    fs = checked
                data: FileSlice | bytes = fs
                if magic < 2 and len(fs):
                    # Fetch v0-v3: the message format the version implies, converted in memory
                    # (no sendfile), within the same limit.
                    try:
                        # A copy, not a view of the mapping: an error's traceback would keep
                        # the converter's batches (views) alive past the release.
                        data = legacy.down_convert(fs.read(), magic, offset, limit)
                    except KStoreError as exc:
                        r["error_code"] = exc.code
                        error = True
                        log.info("fetch %s-%d at offset %d (message format v%d): %s", name,
                                 p["partition"], offset, magic, exc)
                        continue
                r["high_watermark"] = max(leo, lg.log_end_offset)
                if not committed_only and lg._txn is None:
                    r["last_stable_offset"] = r["high_watermark"]
                if len(data) and (total == 0 or total + len(data) <= budget):
                    if committed_only:
                        r["aborted_transactions"] = [
                            {"producer_id": a.producer_id, "first_offset": a.first_offset}
                            for a in lg.aborted_transactions(offset, fs.next_offset)]
                    # KIP-74: the first batch of the first non-empty partition is whole even
                    # when it is larger than max_bytes; later partitions stay within the budget
                    # (read() returns a first batch whole: drop it if it does not fit).
                    r["records"] = data
                    total += len(data)
            responses.append({"topic": name, "partitions": parts})
        return responses, total, error

    # ==========================================================================================
    # Offsets by time, leader epochs, records deletion

    def list_offsets(self, req: dict, version: int, conn: Any) -> dict:
        topics = []
        for t in req["topics"]:
            parts = []
            for p in t["partitions"]:
                parts.append(self._list_offset(t["name"], p, version,
                                               req.get("isolation_level", 0) == 1))
            topics.append({"name": t["name"], "partitions": parts})
        return {"topics": topics}

    def _list_offset(self, topic: str, p: dict, version: int = 1,
                     committed_only: bool = False) -> dict:
        out = {"partition_index": p["partition_index"], "error_code": NONE, "timestamp": -1,
               "offset": -1, "leader_epoch": -1}
        epoch = p["current_leader_epoch"]
        if epoch not in (-1, LEADER_EPOCH):
            out["error_code"] = UNKNOWN_LEADER_EPOCH if epoch > LEADER_EPOCH else FENCED_LEADER_EPOCH
            return out
        try:
            lg = self.store.partition(topic, p["partition_index"])
        except (UnknownTopicOrPartitionError, InvalidTopicError):
            out["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
            return out
        ts = p["timestamp"]
        if version == 0:
            out["old_style_offsets"] = legacy.old_style_offsets(lg, ts, p["max_num_offsets"],
                                                                _core.now_ms())
            return out
        if ts == LATEST_TIMESTAMP:
            out["offset"] = lg.last_stable_offset() if committed_only else lg.log_end_offset
        elif ts == EARLIEST_TIMESTAMP or (ts == EARLIEST_LOCAL_TIMESTAMP and version >= 8):
            out["offset"] = lg.log_start_offset
        elif ts == LATEST_TIERED_TIMESTAMP and version >= 9:
            return out  # Kafka without remote storage: offset and timestamp -1, no error
        elif ts == MAX_TIMESTAMP:
            best = (-1, -1)
            for seg in lg._segments:
                m = seg.max_timestamp
                if m[0] > best[0] and m[1] >= lg.log_start_offset:
                    best = m
            out["timestamp"], out["offset"] = best
        elif ts >= 0:
            off = lg.offset_for_time(ts)
            if off is not None:
                try:
                    out["timestamp"] = _timestamp_at(lg, off)
                    out["offset"] = off
                except CorruptRecordError:  # the batch holding it is damaged (as in Fetch)
                    out["error_code"] = CORRUPT_MESSAGE
        else:
            out["error_code"] = INVALID_REQUEST
            return out
        out["leader_epoch"] = LEADER_EPOCH if out["offset"] >= 0 else -1
        return out

    def offset_for_leader_epoch(self, req: dict, version: int, conn: Any) -> dict:
        topics = []
        for t in req["topics"]:
            parts = []
            for p in t["partitions"]:
                r = {"error_code": NONE, "partition": p["partition"], "leader_epoch": -1,
                     "end_offset": -1}
                cur = p["current_leader_epoch"]
                try:
                    lg = self.store.partition(t["topic"], p["partition"])
                except (UnknownTopicOrPartitionError, InvalidTopicError):
                    r["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
                else:
                    if cur not in (-1, LEADER_EPOCH):
                        r["error_code"] = (UNKNOWN_LEADER_EPOCH if cur > LEADER_EPOCH
                                           else FENCED_LEADER_EPOCH)
                    elif p["leader_epoch"] == LEADER_EPOCH:
                        # The only epoch there has been: it ends at the log end. Any other epoch
                        # is unknown: (-1, -1), as Kafka's LeaderEpochFileCache.endOffsetFor.
                        r["leader_epoch"] = LEADER_EPOCH
                        r["end_offset"] = lg.log_end_offset
                parts.append(r)
            topics.append({"topic": t["topic"], "partitions": parts})
        return {"topics": topics}

    def delete_records(self, req: dict, version: int, conn: Any) -> dict:
        topics = []
        for t in req["topics"]:
            parts = []
            for p in t["partitions"]:
                r = {"partition_index": p["partition_index"], "low_watermark": -1,
                     "error_code": NONE}
                if t["name"].startswith("__"):  # internal: Kafka refuses too
                    r["error_code"] = INVALID_TOPIC_EXCEPTION
                    parts.append(r)
                    continue
                try:
                    lg = self.store.partition(t["name"], p["partition_index"])
                    off = p["offset"]
                    if off > lg.log_end_offset or off < -1:
                        raise OffsetOutOfRangeError(f"offset {off} is beyond the log end")
                    res = self.store.delete_records({(t["name"], p["partition_index"]): off})
                    r["low_watermark"] = res[(t["name"], p["partition_index"])]
                except (UnknownTopicOrPartitionError, InvalidTopicError):
                    r["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
                except KStoreError as exc:
                    r["error_code"] = exc.code
                parts.append(r)
            topics.append({"name": t["name"], "partitions": parts})
        return {"topics": topics}

    # ==========================================================================================
    # Topics and configs

    async def create_topics(self, req: dict, version: int, conn: Any) -> dict:
        # Checked here, created in one batch in a thread: one registry write for the request,
        # and the event loop keeps serving other connections meanwhile.
        out = []
        todo: dict[str, tuple[dict[str, Any], int, dict[str, Any]]] = {}
        counts: dict[str, int] = {}
        for t in req["topics"]:
            counts[t["name"]] = counts.get(t["name"], 0) + 1
        for t in req["topics"]:
            name = t["name"]
            r: dict[str, Any] = {"name": name, "error_code": NONE, "error_message": None,
                                 "num_partitions": -1, "replication_factor": -1, "configs": None}
            out.append(r)
            try:
                if counts[name] > 1:  # as Kafka: every entry of a repeated name is refused
                    raise InvalidRequestError(f"topic {name!r} is named more than once in the "
                                              f"request")
                n = t["num_partitions"]
                rf = t["replication_factor"]
                if t["assignments"]:
                    if n != -1 or rf != -1:
                        raise InvalidRequestError(
                            "give either assignments or num_partitions/replication_factor")
                    n = len(t["assignments"])
                    if any(list(a["broker_ids"]) != [self.config.node_id] for a in t["assignments"]):
                        raise InvalidReplicationFactorError(
                            f"this server is one broker (id {self.config.node_id})")
                    rf = 1
                if n == -1:
                    n = self.config.num_partitions
                if rf == -1:
                    rf = 1
                if rf != 1:
                    raise InvalidReplicationFactorError(
                        f"replication factor {rf} is larger than the 1 available broker")
                if n < 1:
                    raise InvalidPartitionsError(f"number of partitions must be positive, not {n}")
                configs = {c["name"]: c["value"] for c in t["configs"]}
                validate_topic_name(name)
                if name.startswith("__"):
                    raise InvalidTopicError(f"{name!r}: names starting with '__' are internal")
                from kstore.config import validate_config
                validate_config(configs)
                if req["validate_only"]:
                    if name in self.store._topics:
                        raise TopicAlreadyExistsError(f"topic {name!r} already exists")
                    self._created(r, name, n, rf, configs, version)
                else:
                    todo[name] = (r, n, configs)
            except KStoreError as exc:
                r["error_code"], r["error_message"] = exc.code, str(exc)
        if todo:
            try:
                failed = await asyncio.to_thread(
                    self.store.create_topics, [(name, n, c) for name, (_, n, c) in todo.items()])
            except KStoreError as exc:
                failed = dict.fromkeys(todo, exc)
            for name, (r, n, configs) in todo.items():
                err = failed.get(name)
                if err is not None:
                    r["error_code"], r["error_message"] = err.code, str(err)
                else:
                    self._created(r, name, n, 1, configs, version)
        return {"topics": out}

    def _created(self, r: dict[str, Any], name: str, n: int, rf: int, configs: dict[str, Any],
                 version: int) -> None:
        r["num_partitions"], r["replication_factor"] = n, rf
        if version >= 5:
            r["configs"] = [self._config_entry(name, k, v, set(configs))
                            for k, v in self._topic_config(name, configs).items()]

    def _topic_config(self, name: str, overrides: dict | None = None) -> dict[str, Any]:
        if overrides is not None and name not in self.store._topics:
            from kstore.config import resolve_config
            return resolve_config(overrides)
        return self.store.topic_config(name)

    def _config_entry(self, topic: str, key: str, value: Any, explicit: set[str]) -> dict:
        return {"name": key, "value": _config_string(value), "read_only": False,
                "config_source": 1 if key in explicit else 5, "is_sensitive": False}

    async def delete_topics(self, req: dict, version: int, conn: Any) -> dict:
        out = []
        # v6 names topics as {name, topic_id}: kstore's topics have no ids, so one named by id
        # alone is unknown.
        names = req["topic_names"] if version < 6 else [t["name"] for t in req["topics"]]
        for name in names:
            r: dict[str, Any] = {"name": name, "error_code": NONE, "error_message": None}
            try:
                if name is None and version >= 6:
                    r["error_code"], r["error_message"] = UNKNOWN_TOPIC_ID, "topic ids are unknown"
                elif name is None or name.startswith("__"):
                    raise InvalidTopicError(f"{name!r} cannot be deleted")
                elif not self.config.allow_delete_topics:
                    r["error_code"], r["error_message"] = 73, "topic deletion is disabled"
                else:
                    # In a thread: closing the logs fsyncs them, and the files are removed.
                    await asyncio.to_thread(self.store.delete_topic, name)
                    self.producers.forget_partition(name)
            except KStoreError as exc:
                r["error_code"], r["error_message"] = exc.code, str(exc)
            out.append(r)
        return {"responses": out}

    def create_partitions(self, req: dict, version: int, conn: Any) -> dict:
        out = []
        for t in req["topics"]:
            r: dict[str, Any] = {"name": t["name"], "error_code": NONE, "error_message": None}
            try:
                if t["assignments"] is not None and any(
                        list(a["broker_ids"]) != [self.config.node_id] for a in t["assignments"]):
                    raise InvalidReplicationFactorError("this server is one broker")
                cur = self.store.partitions_for(t["name"])
                if t["count"] <= cur:
                    raise InvalidPartitionsError(
                        f"topic {t['name']!r} has {cur} partitions; the new count must be larger, "
                        f"not {t['count']}")
                if not req["validate_only"]:
                    self.store.create_partitions(t["name"], t["count"])
            except KStoreError as exc:
                r["error_code"], r["error_message"] = exc.code, str(exc)
            out.append(r)
        return {"results": out}

    def describe_configs(self, req: dict, version: int, conn: Any) -> dict:
        results = []
        for res in req["resources"]:
            rtype, rname, keys = res["resource_type"], res["resource_name"], res["configuration_keys"]
            r: dict[str, Any] = {"error_code": NONE, "error_message": None,
                                 "resource_type": rtype, "resource_name": rname, "configs": []}
            try:
                if rtype == 2:  # topic
                    explicit = set(self.store._topic(rname).get("config", {}))
                    values = self.store.topic_config(rname)
                    entries = [(k, v, 1 if k in explicit else 5) for k, v in values.items()]
                elif rtype == 4:  # broker
                    if rname not in ("", str(self.config.node_id)):
                        raise InvalidRequestError(f"unknown broker {rname!r}")
                    entries = [(k, v, 4) for k, v in self._broker_configs().items()]
                else:
                    raise InvalidRequestError(f"resource type {rtype} is not supported")
                for k, v, source in entries:
                    if keys is not None and k not in keys:
                        continue
                    c = {"name": k, "value": _config_string(v), "read_only": rtype == 4,
                         "is_default": source == 5, "config_source": source,
                         "is_sensitive": False, "synonyms": [],
                         "config_type": _config_type(k, v),
                         "documentation": TOPIC_CONFIG[k].doc if k in TOPIC_CONFIG else None}
                    if req["include_synonyms"] and source != 5:
                        c["synonyms"] = [{"name": k, "value": _config_string(v), "source": source}]
                    r["configs"].append(c)
            except KStoreError as exc:
                r["error_code"], r["error_message"] = exc.code, str(exc)
            results.append(r)
        return {"results": results}

    def _broker_configs(self) -> dict[str, Any]:
        base = {
            "auto.create.topics.enable": self.config.auto_create_topics,
            "num.partitions": self.config.num_partitions,
            "default.replication.factor": 1,
            "offsets.topic.num.partitions": 50,
            "delete.topic.enable": self.config.allow_delete_topics,
            "log.dirs": str(self.store.path),
            "broker.id": self.config.node_id,
        }
        base.update(self.config.broker_config)
        return base

    def alter_configs(self, req: dict, version: int, conn: Any) -> dict:
        def change_of(rname: str, configs: Any) -> dict[str, Any]:
            new = {c["name"]: c["value"] for c in configs}
            # AlterConfigs replaces the topic's whole set: keys not given return to defaults.
            change: dict[str, Any] = {k: None for k in self._explicit_config(rname)
                                      if k not in new}
            change.update(new)
            return change

        return {"responses": self._alter_topic_configs(req, change_of)}

    def incremental_alter_configs(self, req: dict, version: int, conn: Any) -> dict:
        # Resources named twice are refused, each entry, as Kafka does (neither is applied).
        seen: dict[tuple[int, str], int] = {}
        for res in req["resources"]:
            key = (res["resource_type"], res["resource_name"])
            seen[key] = seen.get(key, 0) + 1
        twice = {k for k, n in seen.items() if n > 1}
        return {"responses": self._alter_topic_configs(
            req, self._incremental_change,
            lambda res: (res["resource_type"], res["resource_name"]) in twice)}

    def _alter_topic_configs(self, req: dict, change_of: Any, repeated: Any = None) -> list[dict]:
        """AlterConfigs and IncrementalAlterConfigs: per resource, ``change_of(name,
        configs)`` gives the {key: value, or None for the default} to apply, checked by the
        store's own config rules; nothing of a resource is applied unless all of it is valid."""
        from kstore.config import validate_config

        out = []
        for res in req["resources"]:
            rtype, rname = res["resource_type"], res["resource_name"]
            r: dict[str, Any] = {"error_code": NONE, "error_message": None,
                                 "resource_type": rtype, "resource_name": rname}
            try:
                if repeated is not None and repeated(res):
                    raise InvalidRequestError(
                        f"resource {rname!r} (type {rtype}) is named more than once; name each "
                        f"resource once per request")
                if rtype != 2:
                    raise InvalidRequestError("only topic configs can be altered here")
                if rname.startswith("__"):
                    raise InvalidTopicError(f"the config of {rname} cannot be altered")
                change = change_of(rname, res["configs"])
                validate_config({k: v for k, v in change.items() if v is not None})
                if not req["validate_only"]:
                    self.store.alter_topic_config(rname, change)
            except KStoreError as exc:
                r["error_code"], r["error_message"] = exc.code, str(exc)
            out.append(r)
        return out

    def _explicit_config(self, name: str) -> dict[str, Any]:
        """The topic's own settings (UnknownTopicOrPartitionError if there is no such topic)."""
        return dict(self.store._topic(name).get("config", {}))

    def _incremental_change(self, name: str, configs: Any) -> dict[str, Any]:
        """IncrementalAlterConfigs' operations on one topic as a change for
        ``store.alter_topic_config``: SET a value, DELETE (back to the default), APPEND to or
        SUBTRACT from a list config (its current value: its own setting, else the default)."""
        counts: dict[str, int] = {}
        for c in configs:
            counts[c["name"]] = counts.get(c["name"], 0) + 1
        twice = sorted(k for k, n in counts.items() if n > 1)
        if twice:
            raise InvalidRequestError(f"config keys named more than once: {', '.join(twice)}; "
                                      f"give one operation per key")
        nulls = [c["name"] for c in configs
                 if c["config_operation"] != CONFIG_DELETE and c["value"] is None]
        if nulls:
            raise InvalidRequestError(f"null value for {', '.join(nulls)}: only DELETE may "
                                      f"leave the value out")
        explicit = self._explicit_config(name)
        change: dict[str, Any] = {}
        for c in configs:
            key, op, value = c["name"], c["config_operation"], c["value"]
            if op == CONFIG_SET:
                change[key] = value
            elif op == CONFIG_DELETE:
                if key in TOPIC_CONFIG:  # an unknown key is set nowhere: nothing to delete
                    change[key] = None
            elif op in (CONFIG_APPEND, CONFIG_SUBTRACT):
                what = "APPEND to" if op == CONFIG_APPEND else "SUBTRACT from"
                ck = TOPIC_CONFIG.get(key)
                if ck is None or not ck.is_list:
                    raise InvalidConfigError(
                        f"cannot {what} {key!r}: it is not a list config (those are "
                        f"{', '.join(k for k, v in TOPIC_CONFIG.items() if v.is_list)}); "
                        f"SET it instead")
                items = _list_items(explicit.get(key, ck.default))
                for v in _list_items(value):
                    if op == CONFIG_APPEND and v not in items:
                        items.append(v)
                    elif op == CONFIG_SUBTRACT and v in items:
                        items.remove(v)
                change[key] = ",".join(items)
            else:
                raise InvalidRequestError(
                    f"unknown config operation {op} for {key!r} (0 SET, 1 DELETE, 2 APPEND, "
                    f"3 SUBTRACT)")
        return change

    # ==========================================================================================
    # Groups: the coordinator does the work

    def find_coordinator(self, req: dict, version: int, conn: Any) -> dict:
        b = self._broker(conn)
        keys = req["coordinator_keys"] if version >= 4 else [req["key"]]
        coords = []
        for key in keys:
            share = req["key_type"] == 2 and version >= 6
            if req["key_type"] not in (0, 1):  # 0 group, 1 transaction: both here
                coords.append({"key": key, "node_id": -1, "host": "", "port": -1,
                               # key_type 2 (share groups) exists from v6 on; before it, as
                               # any other type, it is not a key type at all.
                               "error_code": (COORDINATOR_NOT_AVAILABLE if share
                                              else INVALID_REQUEST),
                               "error_message": ("share groups are not supported" if share
                                                 else f"unknown key_type {req['key_type']}")})
            else:
                coords.append({"key": key, "node_id": b["node_id"], "host": b["host"],
                               "port": b["port"], "error_code": NONE, "error_message": None})
        if version >= 4:
            return {"coordinators": coords}
        c = coords[0]
        return {"error_code": c["error_code"], "error_message": c["error_message"],
                "node_id": c["node_id"], "host": c["host"], "port": c["port"]}

    # ==========================================================================================
    # Transactions (kstore.transactions)

    def _start_expiry(self) -> None:
        """The timer that aborts transactions past their timeout, from the first
        transactional request (or a restart that finds transactions) on."""
        if self._expiry_task is None:
            self._expiry_task = asyncio.ensure_future(self._expire_loop())

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_S)
            try:
                self.transactions.expire()
            except KStoreError as exc:
                log.error("aborting timed-out transactions failed: %s (retrying)", exc)

    def add_partitions_to_txn(self, req: dict, version: int, conn: Any) -> dict:
        self._start_expiry()
        parts = [(t["name"], p) for t in req["v3_and_below_topics"] for p in t["partitions"]]
        res = self.transactions.add_partitions(
            req["v3_and_below_transactional_id"], req["v3_and_below_producer_id"],
            req["v3_and_below_producer_epoch"], parts, version)
        return {"results_by_topic_v3_and_below": [
            {"name": t["name"], "results_by_partition": [
                {"partition_index": p, "partition_error_code": res[(t["name"], p)]}
                for p in t["partitions"]]}
            for t in req["v3_and_below_topics"]]}

    def add_offsets_to_txn(self, req: dict, version: int, conn: Any) -> dict:
        self._start_expiry()
        err = self.transactions.add_offsets(req["transactional_id"], req["producer_id"],
                                            req["producer_epoch"], req["group_id"], version)
        return {"error_code": err}

    def txn_offset_commit(self, req: dict, version: int, conn: Any) -> dict:
        group = req["group_id"]
        err = self.transactions.check_offset_commit(
            req["transactional_id"], req["producer_id"], req["producer_epoch"], group, version)
        if not err and version >= 3:
            err = self.coordinator._commit_error(
                group, req["generation_id"], req["member_id"] or "", req["group_instance_id"])
        errors: dict[tuple[str, int], int] = {}
        commits: dict[tuple[str, int], tuple[int, str, int]] = {}
        for t in req["topics"]:
            for p in t["partitions"]:
                tp = (t["name"], p["partition_index"])
                if err:
                    errors[tp] = err
                    continue
                try:
                    self.store.partition(*tp)  # the partition exists (else its error)
                except KStoreError as exc:
                    errors[tp] = exc.code
                    continue
                off = p["committed_offset"]
                # As Kafka: any offset, the log end or past it too (records of the transaction
                # may still be in flight). Negative ones are no position at all.
                if off < 0:
                    errors[tp] = OFFSET_OUT_OF_RANGE
                    continue
                meta = p["committed_metadata"] or ""
                if len(meta.encode("utf-8", "surrogatepass")) > OFFSET_METADATA_MAX_BYTES:
                    errors[tp] = OFFSET_METADATA_TOO_LARGE
                    continue
                commits[tp] = (off, meta, p["committed_leader_epoch"] if version >= 2 else -1)
        if commits:
            try:
                self.store.commit_offsets_transactional(group, commits, req["producer_id"],
                                                        req["producer_epoch"])
            except KStoreError as exc:
                for tp in commits:
                    errors[tp] = exc.code
        return commit_response(req["topics"], errors)

    def end_txn(self, req: dict, version: int, conn: Any) -> dict:
        err = self.transactions.end_txn(req["transactional_id"], req["producer_id"],
                                        req["producer_epoch"], req["committed"], version)
        return {"error_code": err}

    def describe_transactions(self, req: dict, version: int, conn: Any) -> dict:
        return {"transaction_states": [self.transactions.describe(tid)
                                       for tid in req["transactional_ids"]]}

    def list_transactions(self, req: dict, version: int, conn: Any) -> dict:
        unknown, found = self.transactions.list(
            list(req["state_filters"]), list(req["producer_id_filters"]),
            req["duration_filter"] if version >= 1 else -1)
        return {"error_code": NONE, "unknown_state_filters": unknown,
                "transaction_states": found}

    async def join_group(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = await self.coordinator.join_group(req, version, conn.client_id, conn.peer_host)
        return res

    async def sync_group(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = await self.coordinator.sync_group(req, version)
        return res

    def heartbeat(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.heartbeat(req, version)
        return res

    def leave_group(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.leave_group(req, version)
        return res

    def offset_commit(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.offset_commit(req, version)
        return res

    def offset_fetch(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.offset_fetch(req, version)
        return res

    def list_groups(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.list_groups(req, version)
        return res

    def describe_groups(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.describe_groups(req, version)
        return res

    def delete_groups(self, req: dict, version: int, conn: Any) -> dict:
        res: dict = self.coordinator.delete_groups(req, version)
        return res


# ==============================================================================================
# Helpers

CORRUPT_MESSAGE = CorruptRecordError.code
FETCH_SESSION_ID_NOT_FOUND = 70


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _CloseConnection(Exception):
    """The connection must be closed (the reason is logged)."""


def _config_string(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _config_type(key: str, v: Any) -> int:
    # DescribeConfigsResponse ConfigType: 1 BOOLEAN, 2 STRING, 3 INT, 5 LONG, 6 DOUBLE, 7 LIST
    ck = TOPIC_CONFIG.get(key)
    if ck is not None and ck.is_list:
        return 7
    if isinstance(v, bool):
        return 1
    if isinstance(v, int):
        return 5
    if isinstance(v, float):
        return 6
    return 2


def _list_items(v: Any) -> list[str]:
    """A list config's value as its items ("compact, delete" -> ["compact", "delete"])."""
    return [p.strip() for p in _config_string(v).split(",") if p.strip()]


def _timestamp_at(lg: Any, offset: int) -> int:
    """The timestamp of the record at ``offset`` (ListOffsets answers with it)."""
    fs = lg.read(offset, 1)
    for b in fs.batches():
        for rec in b.records(min_offset=offset):
            if rec.offset == offset:
                return int(rec.timestamp)
    return -1


def new_cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding."""
    import base64
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


