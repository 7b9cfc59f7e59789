"""The Store API on a Kafka cluster: ``kstore.connect("kafka://host:9092", **client_config)``.

    store = kstore.connect("kafka://broker1:9092,broker2:9092", security_protocol="SASL_SSL",
                           sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p")
    store.create_topic("clicks", partitions=4)
    producer = store.producer()                  # same arguments as the embedded one
    producer.send("clicks", b"value", key=b"user-1")
    consumer = store.consumer(group="etl", topics=["clicks"], auto_offset_reset="earliest")

A program written against ``kstore.open(path)`` runs unchanged: same methods, return shapes,
records (``kstore.Record``), numpy columns from ``poll_batches`` and ``kstore.errors`` classes
(Kafka's error codes map to the same classes). Behind it are confluent-kafka's (librdkafka's)
AdminClient, Producer and Consumer; ``client_config`` passes through under Kafka's names
(underscores for dots work too). ``default_api_timeout_ms`` (Java's name, default 30000) bounds
every admin and metadata call: past it, RequestTimedOutError (or NetworkError when no broker
answers), never a hang.

What differs from the embedded store (each is documented where it applies):

- ``describe_topic``: ``size_bytes`` and ``segments`` are None (files are the brokers'), and
  ``topic_id`` is None when the cluster does not say.
- ``describe_group``: ``pid`` and ``commit_timestamp`` are None; ``state`` is Kafka's
  (Stable, Empty, PreparingRebalance, CompletingRebalance, Dead).
- ``partition(...)`` (zero-copy reads of a partition's files), ``run_maintenance``,
  ``expire_offsets``, ``delete_group_offsets`` and the read_only/exclusive modes raise
  UnsupportedOnClusterError: retention, compaction and offset expiry are the brokers' work.
- Producer: keys are placed by kstore's partitioner (murmur2, as Java's client and the embedded
  store) and handed to librdkafka with an explicit partition, so a key lands on the same
  partition on both backends. A delivery that fails is raised at the next send/flush.
- ``commit_offsets`` (the store's, not a consumer's) works on a cluster only while the group
  has no members (Kafka's AlterConsumerGroupOffsets; UnknownMemberIdError otherwise).
- Consumer: a group's members rebalance through the group coordinator (Kafka's protocol), so
  ``assignment()`` is empty until a poll has joined (the embedded store assigns at
  ``subscribe``), and a rebalance revokes every partition and assigns again (eager): a member
  that commits by hand re-reads, after a rebalance, what it polled and did not commit, even on
  the partitions it keeps. Auto-committing members commit on revocation, as the embedded ones.
- ``poll_batches``: the columns' ``data`` holds each record's key then value (the embedded
  columns point into the stored batches); librdkafka hands over one object per record, so
  building them costs a few C calls per record.
- Records: timestamps, keys, values and headers as stored; ``timestamp_type`` 1 for
  LogAppendTime topics on both.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np

from kstore import _core, _kafka, errors, localgroups
from kstore.config import TOPIC_CONFIG, validate_config
from kstore.consumer import ConsumerBase, PartitionColumns, check_consumer_args
from kstore.producer import check_producer_args
from kstore.topic import Sticky, key_partition, refuse_internal, validate_partitioner, validate_topic_name

TopicPartition = tuple[str, int]

DEFAULT_API_TIMEOUT_MS = 30_000
# How long topic metadata (partition count, max.message.bytes, cleanup.policy) is trusted by a
# producer before it is asked again (Kafka's metadata.max.age.ms is 5 minutes; partitions added
# by another client are seen this soon).
METADATA_MAX_AGE_S = 30.0
# Slice of a blocking consume: how soon wakeup() and close() end a poll(timeout=None).
_POLL_SLICE_S = 0.1
_OFFSET_INVALID = -1001


def connect(url: str, **client_config: Any) -> ClusterStore:
    """A :class:`ClusterStore` on the cluster at ``url`` (``kafka://host:port[,host:port]``).
    ``client_config`` is passed to confluent-kafka under Kafka's names (``security.protocol``
    or ``security_protocol``, ``sasl.mechanism``, ``ssl.ca.location``, ...). Raises
    MissingDependencyError without confluent-kafka, InvalidConfigError for a bad address or
    config key, NetworkError/RequestTimedOutError when no broker answers in time."""
    return ClusterStore(url, **client_config)


def _wait(future: Any, timeout_s: float, what: str) -> Any:
    """The result of an admin future within ``timeout_s``, as kstore errors."""
    ck = _kafka.confluent()
    try:
        return future.result(timeout=timeout_s)
    except ck.KafkaException as exc:
        raise _kafka.error_from(exc, what) from None
    except TimeoutError:
        raise errors.RequestTimedOutError(
            f"{what}: no answer from the cluster within {timeout_s:.0f}s; whether it took effect "
            f"is unknown (raise default_api_timeout_ms if the cluster is slow)") from None
    except ValueError as exc:  # confluent-kafka checks arguments before sending
        raise errors.InvalidRequestError(f"{what}: {exc}") from None


def _client(factory: Any, config: dict[str, Any], what: str) -> Any:
    """A confluent-kafka client; a config librdkafka refuses raises InvalidConfigError."""
    ck = _kafka.confluent()
    try:
        return factory(config)
    except ck.KafkaException as exc:
        err = _kafka.error_from(exc, what)
        if isinstance(err, errors.InvalidRequestError):  # _INVALID_ARG: a property or value
            raise errors.InvalidConfigError(f"{err}; client settings take librdkafka's names "
                                            f"(CONFIGURATION.md)") from None
        raise err from None
    except (TypeError, ValueError) as exc:
        raise errors.InvalidConfigError(f"{what}: {exc}") from None


class ClusterStore:
    """The Store API on a Kafka cluster. Use ``kstore.connect(url)``. Thread-safe as the
    embedded Store is: producers may be shared by threads, a consumer is used by one thread."""

    def __init__(self, url: str, **client_config: Any) -> None:
        ck = _kafka.confluent()
        timeout_ms = client_config.pop("default_api_timeout_ms",
                                       client_config.pop("default.api.timeout.ms",
                                                         DEFAULT_API_TIMEOUT_MS))
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 1:
            raise errors.InvalidConfigError(
                f"default_api_timeout_ms must be a positive int (ms), not {timeout_ms!r}")
        self.timeout_s = timeout_ms / 1000
        self.url = url
        self.config = _kafka.client_config(url, client_config)
        self.config.setdefault("client.id", _kafka.default_client_id())
        self.read_only = False
        self.shared = False
        self._closed = False
        self._clients: set[Any] = set()
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[float, tuple[int, int, bool]]] = {}
        self.topic_epoch = 0
        self._admin: Any = _client(ck.admin.AdminClient, dict(self.config), f"connecting to {url}")
        # A first metadata round trip: a wrong address fails here, not at first use.
        try:
            self._metadata(None, f"connecting to {url}")
        except BaseException:
            self._admin = None  # its threads would go on dialling until a collection
            raise

    # ==========================================================================================
    # Plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"the connection to {self.url} is closed")

    def _metadata(self, topic: str | None, what: str) -> Any:
        ck = _kafka.confluent()
        try:
            return self._admin.list_topics(topic=topic, timeout=self.timeout_s)
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, what) from None

    def _topic_meta(self, name: str) -> Any:
        validate_topic_name(name)
        md = self._metadata(name, f"looking up topic {name!r}")
        t = md.topics.get(name)
        if t is None or (t.error is not None and t.error.code() == 3) or (
                t.error is None and not t.partitions):
            raise errors.UnknownTopicOrPartitionError(
                f"topic {name!r} does not exist on {self.url}; create it with "
                f"store.create_topic({name!r})")
        if t.error is not None:
            _kafka.raise_from(t.error, f"looking up topic {name!r}")
        return t

    def _changed(self, name: str) -> None:
        with self._lock:
            self._meta.pop(name, None)
            self.topic_epoch += 1

    def _configs(self, name: str) -> dict[str, Any]:
        ck = _kafka.confluent()
        res = ck.admin.ConfigResource("topic", name)
        futures = self._admin.describe_configs([res], request_timeout=self.timeout_s)
        return cast(dict[str, Any], _wait(futures[res], self.timeout_s,
                                         f"describing the config of topic {name!r}"))

    # ==========================================================================================
    # Topics

    def create_topic(self, name: str, partitions: int = 1,
                     config: Mapping[str, Any] | None = None) -> None:
        """Create a topic (replication factor: the cluster's default). Raises as the embedded
        store does: TopicAlreadyExistsError, InvalidTopicError, InvalidPartitionsError,
        InvalidConfigError, InternalTopicError."""
        failed = self.create_topics([(name, partitions, config)])
        if name in failed:
            raise failed[name]

    def create_topics(self, topics: Iterable[tuple[str, int] | tuple[str, int, Mapping[str, Any] | None]],
                      ) -> dict[str, errors.KStoreError]:
        """Create many topics in one CreateTopics request; returns the ones not created with
        their errors (as the embedded store)."""
        self._check_open()
        ck = _kafka.confluent()
        failed: dict[str, errors.KStoreError] = {}
        specs = list(topics)
        seen: dict[Any, int] = {}
        for spec in specs:
            seen[spec[0]] = seen.get(spec[0], 0) + 1
        new = []
        for spec in specs:
            name, partitions = spec[0], spec[1]
            config = spec[2] if len(spec) > 2 else None  # type: ignore[misc]
            try:
                if seen[name] > 1:
                    raise errors.InvalidRequestError(f"topic {name!r} is named more than once")
                validate_topic_name(name)
                refuse_internal(name, "create")
                if (not isinstance(partitions, int) or isinstance(partitions, bool)
                        or partitions < 1):
                    raise errors.InvalidPartitionsError(
                        f"topic {name!r}: partitions must be a positive int, not {partitions!r}")
                cfg = {k: _config_str(v) for k, v in (config or {}).items()}
            except errors.KStoreError as exc:
                failed.setdefault(name, exc)
                continue
            new.append(ck.admin.NewTopic(name, partitions, config=cfg))
        if not new:
            return failed
        futures = self._admin.create_topics(new, request_timeout=self.timeout_s,
                                            operation_timeout=self.timeout_s)
        for name, fut in futures.items():
            try:
                _wait(fut, self.timeout_s, f"creating topic {name!r}")
            except errors.KStoreError as exc:
                failed[name] = exc
            self._changed(name)
        return failed

    def topics(self, internal: bool = False) -> list[str]:
        """Topic names (``internal=True`` includes ``__consumer_offsets`` and the like)."""
        self._check_open()
        md = self._metadata(None, "listing topics")
        return sorted(t for t in md.topics if internal or not t.startswith("__"))

    def partitions_for(self, topic: str) -> int:
        self._check_open()
        return len(self._topic_meta(topic).partitions)

    def topic_config(self, name: str) -> dict[str, Any]:
        """Every config value of a topic, typed as the embedded store types them (Kafka's
        defaults overlaid with its own settings). Keys the cluster has and kstore does not
        know are included as the strings the cluster gives."""
        self._check_open()
        self._topic_meta(name)
        out: dict[str, Any] = {}
        for k, entry in self._configs(name).items():
            out[k] = _typed(k, entry.value)
        return out

    def describe_topic(self, name: str) -> dict[str, Any]:
        """As the embedded store's: name, partitions, topic_id, config (the topic's own
        settings) and per partition log_start_offset and log_end_offset. ``size_bytes`` and
        ``segments`` are None: a cluster keeps its files to itself. ``topic_id`` is None when
        the cluster gives none."""
        self._check_open()
        t = self._topic_meta(name)
        n = len(t.partitions)
        ck = _kafka.confluent()
        own = {k: _typed(k, e.value) for k, e in self._configs(name).items()
               if e.source == ck.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
        starts = self._list_offsets([(name, p) for p in range(n)], "earliest")
        ends = self._list_offsets([(name, p) for p in range(n)], "latest")
        topic_id = None
        try:
            futs = self._admin.describe_topics(ck.TopicCollection([name]),
                                               request_timeout=self.timeout_s)
            desc = _wait(futs[name], self.timeout_s, f"describing topic {name!r}")
            tid = str(desc.topic_id) if desc.topic_id is not None else None
            if tid and tid != "AAAAAAAAAAAAAAAAAAAAAA":  # the zero Uuid: none given
                topic_id = tid
        except errors.UnsupportedVersionError:
            pass
        parts = [{"partition": p, "log_start_offset": starts[(name, p)],
                  "log_end_offset": ends[(name, p)], "size_bytes": None, "segments": None}
                 for p in range(n)]
        return {"name": name, "partitions": n, "topic_id": topic_id, "config": own,
                "partition_info": parts}

    def _list_offsets(self, parts: list[TopicPartition], which: str) -> dict[TopicPartition, int]:
        ck = _kafka.confluent()
        spec = ck.admin.OffsetSpec.earliest() if which == "earliest" else ck.admin.OffsetSpec.latest()
        if not parts:
            return {}
        futs = self._admin.list_offsets({ck.TopicPartition(t, p): spec for t, p in parts},
                                        request_timeout=self.timeout_s)
        out = {}
        for tp, fut in futs.items():
            res = _wait(fut, self.timeout_s, f"listing the {which} offset of {tp.topic}-{tp.partition}")
            out[(tp.topic, tp.partition)] = res.offset
        return out

    def _offset_for_time(self, parts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        ck = _kafka.confluent()
        if not parts:
            return {}
        futs = self._admin.list_offsets(
            {ck.TopicPartition(t, p): ck.admin.OffsetSpec.for_timestamp(ts)
             for (t, p), ts in parts.items()}, request_timeout=self.timeout_s)
        out: dict[TopicPartition, int | None] = {}
        for tp, fut in futs.items():
            res = _wait(fut, self.timeout_s, f"looking up a time in {tp.topic}-{tp.partition}")
            out[(tp.topic, tp.partition)] = None if res.offset < 0 else res.offset
        return out

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Set config keys (None returns a key to its default), as one incremental change."""
        self._check_open()
        refuse_internal(name, "alter the config of")
        validate_topic_name(name)
        ck = _kafka.confluent()
        entries = []
        for k, v in config.items():
            if v is None:
                entries.append(ck.admin.ConfigEntry(
                    k, None, incremental_operation=ck.admin.AlterConfigOpType.DELETE))
            else:
                entries.append(ck.admin.ConfigEntry(
                    k, _config_str(v), incremental_operation=ck.admin.AlterConfigOpType.SET))
        self._topic_meta(name)
        res = ck.admin.ConfigResource("topic", name, incremental_configs=entries)
        try:
            futs = self._admin.incremental_alter_configs([res], request_timeout=self.timeout_s)
            _wait(futs[res], self.timeout_s, f"altering the config of topic {name!r}")
        except errors.UnsupportedVersionError:
            # A broker without IncrementalAlterConfigs (before Kafka 2.3): AlterConfigs
            # replaces the whole set, so send the merged one (a key another client sets between
            # the read and this write is lost; the incremental path has no such race).
            current = {k: e.value for k, e in self._configs(name).items()
                       if e.source == ck.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
            for k, v in config.items():
                if v is None:
                    current.pop(k, None)
                else:
                    current[k] = _config_str(v)
            res = ck.admin.ConfigResource("topic", name, set_config=current)
            with warnings.catch_warnings():  # deprecated for the brokers that have the other
                warnings.simplefilter("ignore", DeprecationWarning)
                futs = self._admin.alter_configs([res], request_timeout=self.timeout_s)
            _wait(futs[res], self.timeout_s, f"altering the config of topic {name!r}")
        self._changed(name)

    def create_partitions(self, name: str, count: int) -> None:
        """Grow a topic to ``count`` partitions (partitions only grow)."""
        self._check_open()
        refuse_internal(name, "add partitions to")
        ck = _kafka.confluent()
        if not isinstance(count, int) or isinstance(count, bool):
            raise errors.InvalidPartitionsError(f"the new partition count must be an int, not {count!r}")
        have = len(self._topic_meta(name).partitions)
        if count <= have:
            raise errors.InvalidPartitionsError(
                f"topic {name!r} has {have} partitions; the new count must be larger, not {count!r}")
        futs = self._admin.create_partitions([ck.admin.NewPartitions(name, count)],
                                             request_timeout=self.timeout_s,
                                             operation_timeout=self.timeout_s)
        _wait(futs[name], self.timeout_s, f"adding partitions to topic {name!r}")
        self._changed(name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its data."""
        self._check_open()
        refuse_internal(name, "delete")
        self._topic_meta(name)  # UnknownTopicOrPartitionError, with its advice
        futs = self._admin.delete_topics([name], request_timeout=self.timeout_s,
                                         operation_timeout=self.timeout_s)
        _wait(futs[name], self.timeout_s, f"deleting topic {name!r}")
        self._changed(name)

    def delete_records(self, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Kafka's DeleteRecords (-1: the log end); returns the new log start offsets."""
        self._check_open()
        ck = _kafka.confluent()
        for t, _ in offsets:
            refuse_internal(t, "delete records of")
        for (t, p), off in offsets.items():
            if not isinstance(off, int) or isinstance(off, bool) or off < -1:
                raise errors.OffsetOutOfRangeError(f"cannot delete records of {t}-{p} before {off!r}")
        futs = self._admin.delete_records(
            [ck.TopicPartition(t, p, off) for (t, p), off in offsets.items()],
            request_timeout=self.timeout_s, operation_timeout=self.timeout_s)
        out = {}
        for tp, fut in futs.items():
            res = _wait(fut, self.timeout_s, f"deleting records of {tp.topic}-{tp.partition}")
            out[(tp.topic, tp.partition)] = res.low_watermark
        return out

    # ==========================================================================================
    # What a cluster cannot do

    def partition(self, topic: str, partition: int) -> Any:
        raise errors.UnsupportedOnClusterError(
            f"store.partition({topic!r}, {partition!r}) reads a partition's segment files "
            f"without copying; on a cluster those files are the brokers'. Read through a "
            f"consumer: store.consumer().assign([({topic!r}, {partition!r})]), then poll or "
            f"poll_batches")

    def run_maintenance(self) -> dict[str, Any]:
        raise errors.UnsupportedOnClusterError(
            "run_maintenance applies retention and compaction to local files; on a cluster the "
            "brokers do it (set retention.ms / cleanup.policy with alter_topic_config)")

    def expire_offsets(self, now_ms: int | None = None) -> dict[str, list[tuple[str, int]]]:
        raise errors.UnsupportedOnClusterError(
            "expire_offsets is the group coordinator's work on a cluster (the brokers' "
            "offsets.retention.minutes); nothing to run from a client")

    def delete_group_offsets(self, group: str) -> list[tuple[str, int]]:
        raise errors.UnsupportedOnClusterError(
            "delete_group_offsets tombstones a local __consumer_offsets; on a cluster delete the "
            "group instead (kafka-consumer-groups --delete, or AdminClient.delete_consumer_groups)")

    def repair(self, *args: Any, **kwargs: Any) -> Any:
        raise errors.UnsupportedOnClusterError(
            "repair rewrites a data directory's files; a cluster's brokers recover their own logs")

    def now_ms(self) -> int:
        return _core.now_ms()

    # ==========================================================================================
    # Clients

    def producer(self, **kwargs: Any) -> ClusterProducer:
        """A ClusterProducer (the embedded Producer's arguments)."""
        self._check_open()
        p = ClusterProducer(self, **kwargs)
        self._clients.add(p)
        return p

    def consumer(self, **kwargs: Any) -> ClusterConsumer:
        """A ClusterConsumer (the embedded Consumer's arguments)."""
        self._check_open()
        c = ClusterConsumer(self, **kwargs)
        self._clients.add(c)
        return c

    def _forget(self, client: Any) -> None:
        self._clients.discard(client)

    def _producer_topic(self, topic: str) -> tuple[int, int, bool]:
        """(partitions, max.message.bytes, whether records need keys), cached for
        METADATA_MAX_AGE_S. Raises UnknownTopicOrPartitionError, InternalTopicError."""
        self._check_open()
        refuse_internal(topic, "produce to")
        now = time.monotonic()
        got = self._meta.get(topic)
        if got is not None and now - got[0] < METADATA_MAX_AGE_S:
            return got[1]
        n = len(self._topic_meta(topic).partitions)
        cfg = self._configs(topic)
        mmb = int(cfg["max.message.bytes"].value) if "max.message.bytes" in cfg else 1048588
        compact = "compact" in (cfg["cleanup.policy"].value if "cleanup.policy" in cfg else "")
        state = (n, mmb, compact)
        with self._lock:
            self._meta[topic] = (now, state)
        return state

    # ==========================================================================================
    # Committed offsets and groups

    def commit_offsets(self, group: str, commits: Mapping[tuple[str, int], tuple[int, str, int]]) -> None:
        """Commit ``{(topic, partition): (offset, metadata, leader_epoch)}`` for ``group``
        (AlterConsumerGroupOffsets: the group must have no active members, as on Kafka)."""
        self._check_open()
        ck = _kafka.confluent()
        if not isinstance(group, str) or not group:
            raise errors.InvalidRequestError("committing offsets needs a non-empty group id")
        if not commits:
            return
        tps = []
        for (t, p), (off, meta, _) in commits.items():
            if not isinstance(off, int) or off < 0:
                raise errors.OffsetOutOfRangeError(f"cannot commit offset {off!r} for {t}-{p}")
            if len(meta.encode()) > 4096:
                raise errors.InvalidRequestError(f"commit metadata for {t}-{p} is over 4096 bytes")
            tps.append(ck.TopicPartition(t, p, off, metadata=meta))
        futs = self._admin.alter_consumer_group_offsets(
            [ck.ConsumerGroupTopicPartitions(group, tps)], request_timeout=self.timeout_s)
        res = _wait(futs[group], self.timeout_s, f"committing offsets of group {group!r}")
        for tp in res.topic_partitions:
            if tp.error is not None:
                err = _kafka.error_from(tp.error, f"committing {tp.topic}-{tp.partition} for "
                                                  f"group {group!r}")
                if isinstance(err, errors.UnknownMemberIdError):
                    raise type(err)(f"{err}: the group has active members, and on a cluster "
                                    f"only they commit for it; commit through their consumer "
                                    f"(consumer.commit) or once they have left") from None
                raise err

    def _committed_many(self, group: str, parts: list[TopicPartition] | None) -> list[Any]:
        ck = _kafka.confluent()
        req = None if parts is None else [ck.TopicPartition(t, p) for t, p in parts]
        futs = self._admin.list_consumer_group_offsets(
            [ck.ConsumerGroupTopicPartitions(group, req)], request_timeout=self.timeout_s)
        res = _wait(futs[group], self.timeout_s, f"fetching the offsets of group {group!r}")
        out = []
        for tp in res.topic_partitions or []:
            if tp.error is not None:
                _kafka.raise_from(tp.error, f"fetching {tp.topic}-{tp.partition} of group {group!r}")
            out.append(tp)
        return out

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        self._check_open()
        got = self._committed_many(group, [(topic, partition)])
        return got[0].offset if got and got[0].offset >= 0 else None

    def groups(self) -> list[str]:
        """Consumer groups the cluster knows (with members or committed offsets)."""
        self._check_open()
        res = _wait(self._admin.list_consumer_groups(request_timeout=self.timeout_s),
                    self.timeout_s, "listing groups")
        if res.errors:  # a partial answer (a broker that did not answer) is no answer
            _kafka.raise_from(res.errors[0], "listing groups")
        return sorted(g.group_id for g in res.valid)

    def describe_group(self, group: str) -> dict[str, Any]:
        """As the embedded store's (committed offsets, log ends and lag per partition, the
        members with their assignments). On a cluster ``pid`` and ``commit_timestamp`` are
        None and ``state`` is the coordinator's (Stable, Empty, PreparingRebalance, ...)."""
        self._check_open()
        futs = self._admin.describe_consumer_groups([group], request_timeout=self.timeout_s)
        desc = _wait(futs[group], self.timeout_s, f"describing group {group!r}")
        members = []
        for m in sorted(desc.members, key=lambda m: m.member_id):
            parts = m.assignment.topic_partitions if m.assignment is not None else []
            members.append({"member_id": m.member_id,
                            "assignment": sorted((tp.topic, tp.partition) for tp in parts),
                            "client_id": m.client_id, "pid": None, "host": m.host})
        committed = [tp for tp in self._committed_many(group, None) if tp.offset >= 0]
        ends = self._list_offsets([(tp.topic, tp.partition) for tp in committed], "latest")
        parts_out = []
        for tp in sorted(committed, key=lambda tp: (tp.topic, tp.partition)):
            end = ends.get((tp.topic, tp.partition))
            parts_out.append({"topic": tp.topic, "partition": tp.partition, "committed": tp.offset,
                              "log_end_offset": end,
                              "lag": None if end is None else max(end - tp.offset, 0),
                              "metadata": tp.metadata or "", "commit_timestamp": None})
        state = _STATES.get(desc.state.name, desc.state.name.title())
        if state == "Dead":
            state = "Empty"  # what a group with no members is to the embedded store
        return {"group": group, "state": state, "members": members, "partitions": parts_out}

    # ==========================================================================================
    # Life cycle

    def flush(self) -> None:
        """Flush every producer of this connection (the brokers persist as they are set to)."""
        for c in list(self._clients):
            if isinstance(c, ClusterProducer) and not c.closed:
                c.flush()

    def close(self) -> None:
        """Close producers (flushing them) and consumers (committing if they auto-commit)."""
        if self._closed:
            return
        failures = []
        for c in list(self._clients):
            try:
                c.close()
            except errors.KStoreError as exc:
                failures.append(exc)
        self._closed = True
        self._admin = None  # librdkafka's threads stop now, not at a later collection
        if failures:
            raise failures[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ClusterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterStore {self.config['bootstrap.servers']}{' closed' if self._closed else ''}>"


_STATES = {"STABLE": "Stable", "EMPTY": "Empty", "DEAD": "Dead",
           "PREPARING_REBALANCING": "PreparingRebalance",
           "COMPLETING_REBALANCING": "CompletingRebalance", "UNKNOWN": "Unknown"}


def _config_str(value: Any) -> str:
    """A config value as Kafka's admin API carries it (strings; booleans lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed(name: str, value: Any) -> Any:
    """A config value from the cluster, typed as kstore's config types it (unknown keys and
    values kstore would refuse stay strings)."""
    if name not in TOPIC_CONFIG or value is None:
        return value
    try:
        return validate_config({name: value})[name]
    except errors.InvalidConfigError:
        return value


# ==============================================================================================
# Producer


class ClusterProducer:
    """The embedded Producer's API over confluent-kafka's Producer. Thread-safe."""

    def __init__(self, store: ClusterStore, *, linger_ms: int = 5, batch_size: int = 16384,
                 compression: str | None = None, partitioner: str = "murmur2",
                 transactional_id: str | None = None,
                 transaction_timeout_ms: int = 60_000) -> None:
        ck = _kafka.confluent()
        check_producer_args(linger_ms, batch_size, compression)
        if transactional_id is not None and (not isinstance(transactional_id, str)
                                             or not transactional_id):
            raise ValueError(f"transactional_id must be a non-empty str, not {transactional_id!r}")
        self.transactional_id = transactional_id
        self._in_txn = False
        self._group_meta: dict[str, Any] = {}
        self.store = store
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.compression = compression
        self.partitioner = validate_partitioner(partitioner)
        self.closed = False
        self._lock = threading.Lock()
        self._sticky: dict[str, Sticky] = {}
        self._failed: list[errors.KStoreError] = []
        cfg = dict(store.config)
        cfg.setdefault("linger.ms", linger_ms)
        cfg.setdefault("batch.size", batch_size)
        cfg.setdefault("compression.type", compression or "none")
        # Retries must not duplicate records (the embedded store never does).
        cfg.setdefault("enable.idempotence", True)
        # librdkafka reports only failures (a Python call per record less) until a send asks
        # for its own report (on_delivery): then the producer is flushed and made again with
        # every report on (_report_all).
        # (Not for a transactional producer: a second one would fence the first.)
        self._only_errors = "delivery.report.only.error" not in cfg and transactional_id is None
        if self._only_errors:
            cfg["delivery.report.only.error"] = True
        if transactional_id is not None:
            cfg["transactional.id"] = transactional_id
            cfg["transaction.timeout.ms"] = transaction_timeout_ms
        #: What librdkafka's producer was given (without the delivery callback).
        self.client_config = dict(cfg)
        cfg["on_delivery"] = self._delivered
        self._p: Any = _client(ck.Producer, cfg, "creating a producer")
        self._retired: list[Any] = []  # producers replaced by _report_all, until flushed
        # send_many's kstore._batchproducer.BatchProducer (made on first use); False: not
        # usable here (a transactional producer, TLS or SASL).
        self._batcher: Any = None
        if transactional_id is not None:
            # Fences older producers with this id, as the embedded store.producer does.
            self._txn_call(self._p.init_transactions, f"init_transactions for {transactional_id!r}")

    # -- transactions (confluent-kafka's transactional producer) ------------------------------

    def _txn_call(self, call: Any, what: str, *args: Any) -> None:
        ck = _kafka.confluent()
        try:
            call(*args, self.store.timeout_s)
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, what) from None

    def _check_transactional(self) -> None:
        if self.transactional_id is None:
            raise errors.InvalidTxnStateError(
                "this producer has no transactional_id: create it with "
                "store.producer(transactional_id=...)")
        self._check()

    def begin_transaction(self) -> None:
        """Start a transaction: every record sent until commit or abort belongs to it."""
        self._check_transactional()
        if self._in_txn:
            raise errors.InvalidTxnStateError("a transaction is already open: commit or abort it first")
        ck = _kafka.confluent()
        try:
            self._p.begin_transaction()
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, "begin_transaction") from None
        self._in_txn = True

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group: str) -> None:
        """Commit ``{(topic, partition): next offset to read}`` for consumer ``group`` as part
        of the open transaction (they take effect with its commit, never if it aborts)."""
        self._check_transactional()
        if not self._in_txn:
            raise errors.InvalidTxnStateError("send_offsets_to_transaction needs an open transaction")
        ck = _kafka.confluent()
        meta = self._group_meta.get(group)
        if meta is None:
            # confluent-kafka takes a consumer's group metadata; a consumer that never joins
            # gives the group id alone, which is what the embedded API names.
            c = _client(ck.Consumer, {**self.store.config, "group.id": group},
                        f"group metadata of {group!r}")
            try:
                meta = self._group_meta[group] = c.consumer_group_metadata()
            finally:
                c.close()
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in dict(offsets).items()]
        self._txn_call(self._p.send_offsets_to_transaction, "send_offsets_to_transaction",
                       tps, meta)

    def commit_transaction(self) -> None:
        """Deliver what is pending, then commit (read_committed readers see it from now on)."""
        self._check_transactional()
        if not self._in_txn:
            raise errors.InvalidTxnStateError("commit_transaction needs an open transaction")
        self._txn_call(self._p.commit_transaction, "commit_transaction")
        self._in_txn = False
        self._raise_failed()

    def abort_transaction(self) -> None:
        """Abort: the records sent since begin_transaction are never read by read_committed
        consumers, and its offsets are not committed."""
        self._check_transactional()
        if not self._in_txn:
            raise errors.InvalidTxnStateError("abort_transaction needs an open transaction")
        self._txn_call(self._p.abort_transaction, "abort_transaction")
        self._in_txn = False
        self._failed.clear()  # what an aborted transaction failed to deliver does not matter

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(_kafka.error_from(
                err, f"delivering a record to {msg.topic()}-{msg.partition()}"))

    def _raise_failed(self) -> None:
        if self._failed:
            first, n = self._failed[0], len(self._failed)
            self._failed.clear()
            raise type(first)(f"{first} ({n} record(s) were not delivered)")

    def _check(self) -> None:
        if self.closed:
            raise errors.ClosedError("send on a closed producer")

    def _produce(self, topic: str, value: Any, key: Any, partition: int, timestamp: int | None,
                 headers: Any, on_delivery: Any) -> None:
        ck = _kafka.confluent()
        kw: dict[str, Any] = {"partition": partition}
        if timestamp is not None:
            kw["timestamp"] = timestamp
        if headers:
            kw["headers"] = list(headers)
        if on_delivery is not None:
            kw["on_delivery"] = on_delivery
        while True:
            try:
                self._p.produce(topic, value, key, **kw)
                return
            except BufferError:  # the local queue is full: wait for deliveries, as a blocking send
                self._p.poll(0.05)
            except ck.KafkaException as exc:
                raise _kafka.error_from(exc, f"sending to {topic}-{partition}") from None

    def send(self, topic: str, value: Any, key: Any = None, headers: Any = None,
             timestamp: int | None = None, partition: int | None = None,
             on_delivery: Any = None) -> int:
        """Queue one record; returns its partition (murmur2 of the key, as the embedded store,
        or sticky for keyless records). ``on_delivery(err, RecordMetadata)`` runs in a later
        send/flush and is told of a failure (as the embedded producer's, which then does not
        raise it); a failed earlier delivery without a callback is raised here or by flush."""
        self._check()
        self._raise_failed()
        nparts, max_bytes, require_keys = self.store._producer_topic(topic)
        value = _as_bytes(value, "value")
        key = _as_bytes(key, "key")
        if key is None and require_keys:
            raise errors.InvalidRecordError(
                f"topic {topic!r} is compacted: it cannot accept records without a key "
                f"(INVALID_RECORD)")
        size = _record_size(key, value, headers)
        if size > max_bytes:
            raise errors.RecordTooLargeError(
                f"a record of about {size} bytes exceeds max.message.bytes={max_bytes} of topic "
                f"{topic!r}")
        if partition is None:
            p = key_partition(key, nparts, self.partitioner)
            if p < 0:
                with self._lock:
                    sticky = self._sticky.get(topic)
                    if sticky is None:
                        sticky = self._sticky[topic] = Sticky(self.batch_size)
                    p = sticky.choose(nparts, size)
        else:
            p = partition
            if not isinstance(p, int) or not 0 <= p < nparts:
                raise errors.UnknownTopicOrPartitionError(
                    f"partition {p} does not exist: topic {topic!r} has {nparts}")
        cb = None
        if on_delivery is not None:
            if self._only_errors:
                self._report_all()

            def cb(err: Any, msg: Any, user: Any = on_delivery) -> None:
                if err is not None:  # the callback is told; flush does not raise it again
                    user(_kafka.error_from(err, f"delivering to {msg.topic()}-{msg.partition()}"), None)
                else:
                    user(None, _core.RecordMetadata(
                        msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1]))
        self._produce(topic, value, key, p, timestamp, headers, cb)
        self._p.poll(0)
        return p

    def _report_all(self) -> None:
        """Switch to a producer that reports every delivery, once: the old one is flushed
        first, so records of one thread keep their order."""
        ck = _kafka.confluent()
        with self._lock:
            if not self._only_errors:
                return
            old = self._p
            cfg = dict(self.client_config, on_delivery=self._delivered)
            cfg["delivery.report.only.error"] = False
            while old.flush(1.0) > 0:
                pass
            self._p = _client(ck.Producer, cfg, "creating a producer")
            self.client_config["delivery.report.only.error"] = False
            self._retired.append(old)  # another thread may have sent through it meanwhile
            self._only_errors = False

    def send_many(self, topic: str, values: Any, keys: Any = None, timestamps: Any = None,
                  partition: int | None = None) -> int:
        """As the embedded send_many (lists, 2-D uint8 arrays, ``(data, offsets)``); returns
        once every record is acknowledged, raising the first delivery error otherwise. Keys
        are placed by murmur2 in C; keyless records go in contiguous runs per partition."""
        self._check()
        self._raise_failed()
        nparts, max_bytes, require_keys = self.store._producer_topic(topic)
        vals = _items(values, "values")
        n = len(vals)
        if n == 0:
            return 0
        ks = _items(keys, "keys") if keys is not None else None
        if ks is not None and len(ks) != n:
            raise ValueError(f"{len(ks)} keys for {n} values")
        if require_keys and (ks is None or any(k is None for k in ks)):
            raise errors.InvalidRecordError(
                f"topic {topic!r} is compacted: it cannot accept records without a key "
                f"(INVALID_RECORD); nothing was written")
        biggest = _core.max_record_size(values, keys)
        if biggest > max_bytes:
            raise errors.RecordTooLargeError(
                f"a record of up to {biggest} bytes (with its batch header) exceeds "
                f"max.message.bytes={max_bytes} of topic {topic!r}; nothing was written")
        if timestamps is not None and len(timestamps) != n:
            raise ValueError(f"{len(timestamps)} timestamps for {n} values")
        if partition is not None:
            if not 0 <= partition < nparts:
                raise errors.UnknownTopicOrPartitionError(
                    f"partition {partition} does not exist: topic {topic!r} has {nparts}")
            parts = np.full(n, partition, dtype=np.int32)
        elif ks is None or self.partitioner == "random":
            chunk = -(-n // nparts)
            with self._lock:
                sticky = self._sticky.setdefault(topic, Sticky(self.batch_size))
                start = sticky.rng.randrange(nparts)
            parts = ((np.arange(n) // chunk + start) % nparts).astype(np.int32)
        else:
            parts = _core.partitions_for_keys(keys, nparts, self.partitioner)
            sticky_rows = parts < 0
            if sticky_rows.any():
                with self._lock:
                    sticky = self._sticky.setdefault(topic, Sticky(self.batch_size))
                    parts[sticky_rows] = sticky.rng.randrange(nparts)
        if self._batches_ok():
            self._send_batches(topic, values, keys, timestamps, parts, nparts, max_bytes)
            return n
        plist = parts.tolist()
        tlist = None if timestamps is None else np.asarray(timestamps, dtype=np.int64).tolist()
        produce = self._p.produce
        ks_iter = itertools.repeat(None, n) if ks is None else ks
        try:
            if tlist is None:
                for v, k, p in zip(vals, ks_iter, plist):
                    try:
                        produce(topic, v, k, partition=p)
                    except BufferError:  # the local queue is full: wait for acknowledgements
                        self._produce(topic, v, k, p, None, None, None)
            else:
                for v, k, p, ts in zip(vals, ks_iter, plist, tlist):
                    try:
                        produce(topic, v, k, partition=p, timestamp=ts)
                    except BufferError:
                        self._produce(topic, v, k, p, ts, None, None)
        except _kafka.confluent().KafkaException as exc:
            raise _kafka.error_from(exc, f"sending to {topic}") from None
        self.flush()
        return n

    def _batches_ok(self) -> bool:
        """Whether send_many may encode its batches in C and send them with kstore's batch
        producer (kstore._batchproducer: librdkafka's one-record produce() call held it to
        0.54 M records/s): not in a transaction (librdkafka's transactional producer owns it)
        and PLAINTEXT (TLS/SASL stay with librdkafka)."""
        if self._batcher is None:
            from kstore._batchproducer import usable

            if self.transactional_id is not None or not usable(self.client_config):
                self._batcher = False
        return self._batcher is not False

    def _send_batches(self, topic: str, values: Any, keys: Any, timestamps: Any,
                      parts: np.ndarray, nparts: int, max_bytes: int) -> None:
        from kstore._batchproducer import BatchProducer

        # What send() queued goes first: each partition keeps the order of the calls.
        self.flush()
        with self._lock:
            bp = self._batcher
            if not isinstance(bp, BatchProducer):
                bp = self._batcher = BatchProducer(
                    self.client_config["bootstrap.servers"], timeout=self.store.timeout_s,
                    client_id=self.client_config.get("client.id") or "kstore")
            codec = self.client_config.get("compression.type") or "none"
            limit = max(min(self.batch_size, max_bytes), _core.HEADER_SIZE)
            try:
                for p in range(nparts):
                    idx = np.flatnonzero(parts == p)
                    for a in range(0, len(idx), 16384):  # about 2 MiB encoded at a time
                        raw = self._encode_within(values, keys, timestamps, idx[a:a + 16384],
                                                  codec, limit, max_bytes)
                        view = memoryview(raw)
                        for b in _core.iter_batches(view):
                            bp.produce(topic, p, view[b.position:b.position + b.size],
                                       b.record_count)
                bp.poll(wait=True)
            except BaseException:
                # What was refused or not acknowledged is reported, not sent later: the next
                # call starts a new producer (a new producer id, sequences from 0).
                bp.close()
                self._batcher = None
                raise

    @staticmethod
    def _encode_within(values: Any, keys: Any, timestamps: Any, idx: np.ndarray, codec: str,
                       limit: int, max_bytes: int) -> bytearray:
        """Batches of at most ``max_bytes`` each: the encoder bounds the bytes before
        compression, and lz4 or snappy can grow incompressible data past that; then again
        with a smaller bound."""
        while True:
            raw = bytearray(_core.encode_batches(values, keys, timestamps, indices=idx,
                                                 compression=codec, max_batch_bytes=limit))
            biggest = max(b.size for b in _core.iter_batches(raw))
            if biggest <= max_bytes or limit <= _core.HEADER_SIZE:
                return raw
            limit = max(limit * 7 // 8, _core.HEADER_SIZE)

    def flush(self) -> None:
        """Wait until every record sent so far is acknowledged (or failed: then raise the
        first failure). Bounded by librdkafka's message.timeout.ms (delivery.timeout.ms)."""
        p = self._p
        if p is None:
            return  # closed: close() flushed
        while self._retired:
            while self._retired[0].flush(1.0) > 0:
                pass
            self._retired.pop(0)
        while p.flush(1.0) > 0:
            pass
        self._raise_failed()

    def close(self) -> None:
        """Flush every pending record."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            if self._batcher:
                self._batcher.close()
            self.store._forget(self)
            # librdkafka's handle holds our delivery callback: drop it now, not at a later
            # garbage collection (its threads would keep connecting meanwhile).
            self._p = None
            self._retired = []

    @property
    def pending_records(self) -> int:
        return 0 if self._p is None else len(self._p)

    def __enter__(self) -> ClusterProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_bytes(obj: Any, what: str) -> Any:
    """Something confluent-kafka's produce takes: bytes (or None). Other buffers are copied."""
    if obj is None or type(obj) is bytes:
        return obj
    if isinstance(obj, str):
        return obj.encode()
    try:
        return bytes(memoryview(obj))
    except TypeError:
        raise TypeError(f"{what} must be bytes-like or None, not {type(obj).__name__}") from None


def _items(values: Any, what: str) -> Any:
    """A send_many column as something indexable giving bytes-like/None per record."""
    if isinstance(values, tuple) and len(values) == 2 and isinstance(values[1], np.ndarray):
        # confluent-kafka takes only objects without a buffer release (bytes, not memoryview
        # slices): one slice per record.
        data, offs = values
        b = _as_bytes(data, what)
        o = offs.tolist()
        return [b[o[i]:o[i + 1]] for i in range(len(o) - 1)]
    if isinstance(values, np.ndarray):
        if values.ndim != 2 or values.dtype != np.uint8:
            raise TypeError(f"{what} as a numpy array must be 2-D uint8, not {values.dtype} "
                            f"with {values.ndim} dimension(s)")
        w = values.shape[1]
        b = values.tobytes()
        return [b[i * w:(i + 1) * w] for i in range(values.shape[0])]
    if isinstance(values, list) and set(map(type, values)) <= _PLAIN:
        return values  # bytes and None already: nothing to convert
    return [_as_bytes(v, what) for v in values]


_PLAIN = {bytes, type(None)}


def _record_size(key: bytes | None, value: bytes | None, headers: Any) -> int:
    """About what the record takes in a batch of its own (header + record framing)."""
    n = _core.HEADER_SIZE + 21 + (len(key) if key else 0) + (len(value) if value else 0)
    for h, v in headers or ():
        n += len(h) + (len(v) if v else 0) + 10
    return n


# ==============================================================================================
# Consumer


_second = operator.itemgetter(1)


def _lengths(items: list[Any]) -> np.ndarray:
    """int32 lengths, -1 for None."""
    if None not in items:
        return np.fromiter(map(len, items), np.int32, len(items))
    return np.array([-1 if x is None else len(x) for x in items], np.int32)


class _Columns:
    """The _core.Columns interface over records fetched by librdkafka: one data buffer with
    the keys and values, numpy offsets/timestamps/positions/lengths (-1: null)."""

    def __init__(self, msgs: list[Any]) -> None:
        # map() over Message's methods: C calls per record, no Python frame per record.
        ck = _kafka.confluent()
        M = ck.Message
        n = len(msgs)
        keys = list(map(M.key, msgs))
        vals = list(map(M.value, msgs))
        self.offsets = np.fromiter(map(M.offset, msgs), np.int64, n)
        self.timestamps = np.fromiter(map(_second, map(M.timestamp, msgs)), np.int64, n)
        self.key_lengths = _lengths(keys)
        self.value_lengths = _lengths(vals)
        # Layout: key0 value0 key1 value1 ... (nulls take no bytes); positions from lengths.
        both = np.empty(2 * n, np.int64)
        both[0::2] = np.maximum(self.key_lengths, 0)
        both[1::2] = np.maximum(self.value_lengths, 0)
        ends = np.cumsum(both)
        starts = ends - both
        self.key_positions = starts[0::2].copy()
        self.value_positions = starts[1::2].copy()
        if not any(keys) and None not in vals:  # keyless records: just the values
            self.data = b"".join(vals)
        else:
            pieces: list[bytes] = [b""] * (2 * n)
            pieces[0::2] = [k or b"" for k in keys]
            pieces[1::2] = [v or b"" for v in vals]
            self.data = b"".join(pieces)

    def __len__(self) -> int:
        return len(self.offsets)

    def _get(self, pos: np.ndarray, lens: np.ndarray, i: int) -> memoryview | None:
        ln = int(lens[i])
        if ln < 0:
            return None
        p = int(pos[i])
        return memoryview(self.data)[p:p + ln]

    def value(self, i: int) -> memoryview | None:
        return self._get(self.value_positions, self.value_lengths, i)

    def key(self, i: int) -> memoryview | None:
        return self._get(self.key_positions, self.key_lengths, i)

    def values(self) -> list[bytes | None]:
        d, pos, lens = self.data, self.value_positions.tolist(), self.value_lengths.tolist()
        return [None if ln < 0 else d[p:p + ln] for p, ln in zip(pos, lens)]

    def keys(self) -> list[bytes | None]:
        d, pos, lens = self.data, self.key_positions.tolist(), self.key_lengths.tolist()
        return [None if ln < 0 else d[p:p + ln] for p, ln in zip(pos, lens)]


class ClusterConsumer(ConsumerBase):
    """The embedded Consumer's API over confluent-kafka's Consumer, with kstore's semantics:
    ``position`` is the next offset poll returns, ``commit()`` commits what poll returned (and
    seeks), auto-commit commits positions every ``auto_commit_interval_ms`` from poll, on a
    rebalance that takes partitions away and on close. Used by one thread at a time
    (``wakeup`` and ``close`` may come from another)."""

    def __init__(self, store: ClusterStore, group: str | None = None,
                 topics: Iterable[str] | None = None, *, auto_offset_reset: str = "latest",
                 enable_auto_commit: bool = True, auto_commit_interval_ms: int = 5000,
                 max_poll_records: int = 500, fetch_max_bytes: int = 1 << 20,
                 client_id: str = "kstore",
                 session_timeout_ms: int = localgroups.DEFAULT_SESSION_TIMEOUT_MS,
                 isolation_level: str = "read_uncommitted") -> None:
        ck = _kafka.confluent()
        check_consumer_args(group, auto_offset_reset, max_poll_records, session_timeout_ms,
                            isolation_level)
        self.isolation_level = isolation_level
        self.store = store
        self.group = group
        self.client_id = client_id
        self.auto_offset_reset = auto_offset_reset
        self.enable_auto_commit = enable_auto_commit and group is not None
        self.auto_commit_interval = auto_commit_interval_ms / 1000
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.session_timeout_ms = session_timeout_ms
        self.subscription: list[str] = []
        self._assigned: list[TopicPartition] = []
        self._manual = False
        self._positions: dict[TopicPartition, int] = {}
        self._committed_positions: dict[TopicPartition, int] = {}
        self._woken = False
        self._closed = False
        self._error: errors.KStoreError | None = None
        self._poll_lock = threading.Lock()
        self._last_commit = time.monotonic()
        cfg = dict(store.config)
        cfg.update({
            # A consumer without a group never commits; librdkafka wants a group.id anyway.
            "group.id": group if group is not None else f"kstore-nogroup-{id(self)}",
            "client.id": client_id,
            # kstore commits what poll returned, itself (see the class doc).
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": {"none": "error"}.get(auto_offset_reset, auto_offset_reset),
            # kstore's fetch_max_bytes is what one read of a partition takes (a first batch
            # larger than it still comes, as Kafka's); librdkafka's fetch.max.bytes (a whole
            # fetch, 50 MB) stays above it.
            "max.partition.fetch.bytes": fetch_max_bytes,
            "fetch.max.bytes": max(fetch_max_bytes, 52_428_800),
            # Corrupt bytes are never returned as data (the embedded consumer checks CRCs).
            "check.crcs": True,
            "session.timeout.ms": session_timeout_ms,
            "enable.partition.eof": False,
            # The embedded consumer's default, and the Java client's (librdkafka's is
            # read_committed).
            "isolation.level": isolation_level,
        })
        # librdkafka stops fetching once 100,000 messages wait in its queue and then backs off
        # for a second (fetch.queue.backoff.ms): a reader that drains it fast waits on that.
        for k, v in (("queued.min.messages", 1_000_000), ("fetch.queue.backoff.ms", 10)):
            if k not in store.config:
                cfg[k] = v
        if cfg["session.timeout.ms"] < 6000 and group is not None:
            cfg["session.timeout.ms"] = 6000  # Kafka's group.min.session.timeout.ms
        # A member learns of a rebalance at its next heartbeat: a tenth of the session (Kafka's
        # 3 s default kept the embedded store's instant rebalances seconds away).
        cfg.setdefault("heartbeat.interval.ms",
                       max(100, min(3000, cfg["session.timeout.ms"] // 10)))
        self._c = _client(ck.Consumer, cfg, "creating a consumer")
        if topics is not None:
            if isinstance(topics, str):
                raise TypeError("topics must be a list of topic names, not a str")
            self.subscribe(list(topics))

    # ==========================================================================================
    # Assignment

    def subscribe(self, topics: list[str]) -> None:
        """Consume these topics; with a group, share their partitions with its other members
        (the cluster's group coordinator assigns them, range assignment as the embedded)."""
        self._check_open()
        if self._manual:
            raise ValueError("this consumer was assigned partitions by hand; subscribe or "
                             "assign, not both")
        counts = {}
        for t in topics:
            if not isinstance(t, str):
                raise TypeError(f"topic names must be str, not {type(t).__name__}")
            counts[t] = self.store.partitions_for(t)
        self.subscription = list(topics)
        if self.group is None:
            self._assign_raw([(t, p) for t in topics for p in range(counts[t])])
            return
        ck = _kafka.confluent()
        try:
            self._c.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                              on_lost=self._on_revoke)
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, f"subscribing to {topics}") from None

    def _on_assign(self, consumer: Any, parts: list[Any]) -> None:
        mine = [(tp.topic, tp.partition) for tp in parts]
        for tp in list(self._positions):
            if tp not in mine:
                del self._positions[tp]
        self._assigned = mine

    def _on_revoke(self, consumer: Any, parts: list[Any]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in parts]
        if self.enable_auto_commit and not self._closed:
            try:
                self._commit_positions([tp for tp in revoked if tp in self._positions])
            except errors.KStoreError:
                pass  # the group moved on; the new owner starts from the last commit
        for tp in revoked:
            self._positions.pop(tp, None)
        self._assigned = [tp for tp in self._assigned if tp not in revoked]

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Consume exactly these partitions (no group rebalancing)."""
        self._check_open()
        if self.subscription:
            raise ValueError("this consumer subscribed to topics; subscribe or assign, not both")
        parts = []
        for t, p in partitions:
            n = self.store.partitions_for(t)
            if not isinstance(p, int) or not 0 <= p < n:
                raise errors.UnknownTopicOrPartitionError(
                    f"partition {p!r} does not exist: topic {t!r} has {n}")
            parts.append((t, p))
        self._manual = True
        self._assign_raw(parts)

    def _assign_raw(self, parts: list[TopicPartition]) -> None:
        ck = _kafka.confluent()
        for tp in list(self._positions):
            if tp not in parts:
                del self._positions[tp]
        self._assigned = list(parts)
        try:
            self._c.assign([ck.TopicPartition(t, p, self._positions.get((t, p), _OFFSET_INVALID))
                            for t, p in parts])
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, "assigning partitions") from None

    def assignment(self) -> set[TopicPartition]:
        self._check_open()
        return set(self._assigned)

    # ==========================================================================================
    # Positions

    def _resolve(self, tp: TopicPartition) -> int:
        """Where a partition without a position starts: the committed offset, else
        auto_offset_reset. The consumer is then pinned there (so "latest" means the end when
        this was asked, as the embedded consumer, not when fetching starts)."""
        committed = self.committed(*tp) if self.group is not None else None
        if committed is not None:
            pos = committed
        elif self.auto_offset_reset == "none":
            raise errors.NoOffsetForPartitionError(
                f"no committed offset for {tp[0]}-{tp[1]} in group {self.group!r} and "
                f"auto_offset_reset='none'; seek() first or choose 'earliest'/'latest'")
        else:
            pos = self.store._list_offsets([tp], self.auto_offset_reset)[tp]
        self._seek_raw(tp, pos)
        return pos

    def position(self, topic: str, partition: int) -> int:
        """The offset of the next record this consumer will return for the partition."""
        self._check_open()
        tp = (topic, partition)
        if tp not in self._assigned:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        pos = self._positions.get(tp)
        if pos is None:
            pos = self._resolve(tp)
        return pos

    def _seek_raw(self, tp: TopicPartition, offset: int) -> None:
        ck = _kafka.confluent()
        self._positions[tp] = offset
        try:
            self._c.seek(ck.TopicPartition(tp[0], tp[1], offset))
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError._STATE:
                raise _kafka.error_from(exc, f"seeking {tp[0]}-{tp[1]} to {offset}") from None
            # Assigned but not fetching yet: librdkafka takes a start offset only with the
            # assignment, so assign again with every known position.
            try:
                self._c.assign([ck.TopicPartition(t, p, self._positions.get((t, p), _OFFSET_INVALID))
                                for t, p in self._assigned])
            except ck.KafkaException as exc2:
                raise _kafka.error_from(exc2, f"seeking {tp[0]}-{tp[1]} to {offset}") from None

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read the partition from ``offset`` next (out of range: auto_offset_reset applies)."""
        self._check_open()
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        tp = (topic, partition)
        if tp not in self._assigned:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        self._seek_raw(tp, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        parts = list(partitions or self.assignment())
        for tp, off in self.store._list_offsets(parts, "earliest").items():
            self.seek(tp[0], tp[1], off)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        parts = list(partitions or self.assignment())
        for tp, off in self.store._list_offsets(parts, "latest").items():
            self.seek(tp[0], tp[1], off)

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """For each partition, the first offset whose timestamp >= the given one (or None)."""
        self._check_open()
        return self.store._offset_for_time(timestamps)

    def committed(self, topic: str, partition: int) -> int | None:
        if self.group is None:
            return None
        return self.store.committed(self.group, topic, partition)

    # ==========================================================================================
    # Fetching

    def _consume(self, max_records: int, timeout: float | None) -> list[Any]:
        """Up to ``max_records`` messages, waiting up to ``timeout`` (None: until some arrive,
        wakeup() or close()), in slices so that wakeup() is seen."""
        ck = _kafka.confluent()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        while True:
            if self._woken or self._closed:
                self._woken = False
                return []
            self._maybe_auto_commit()
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            slice_s = _POLL_SLICE_S if remaining is None else min(_POLL_SLICE_S, remaining)
            with self._poll_lock:  # close() from another thread waits for this slice
                if self._closed:
                    return []
                try:
                    # What is queued now, as the embedded poll returns: librdkafka's
                    # consume(n, t) waits out t for n messages, which held poll_batches to
                    # 0.12 M records/s. Only with nothing queued, wait for one, then take what
                    # came with it.
                    msgs = self._c.consume(max_records, 0)
                    if not msgs and slice_s > 0:
                        msgs = self._c.consume(1, slice_s)
                        if msgs and max_records > 1:
                            msgs += self._c.consume(max_records - 1, 0)
                except ck.KafkaException as exc:
                    raise _kafka.error_from(exc, "polling") from None
            good = msgs
            if any(map(ck.Message.error, msgs)):  # rare: look at each only then
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                        continue
                    if err.code() == ck.KafkaError._PARTITION_EOF:
                        continue
                    failure = self._fetch_error(err, f"fetching {m.topic()}-{m.partition()}",
                                                (m.topic(), m.partition()))
                    if good:  # deliver what came before; the error is raised by the next poll
                        self._error = failure
                        break
                    raise failure
            if good:
                return good
            if remaining is not None and remaining <= 0:
                return []

    def _fetch_error(self, err: Any, what: str, tp: TopicPartition) -> errors.KStoreError:
        ck = _kafka.confluent()
        if err.code() == ck.KafkaError._AUTO_OFFSET_RESET:
            if tp not in self._positions and self.committed(*tp) is None:
                return errors.NoOffsetForPartitionError(
                    f"no committed offset for {tp[0]}-{tp[1]} in group {self.group!r} and "
                    f"auto_offset_reset='none'; seek() first or choose 'earliest'/'latest'")
            return errors.OffsetOutOfRangeError(
                f"{what}: {err.str()} (auto_offset_reset='none'); seek() to a valid offset")
        return _kafka.error_from(err, what)

    def poll(self, timeout: float | None = 1.0, max_records: int | None = None) -> list[_core.Record]:
        """Records from the assigned partitions, up to ``max_records``; waits up to ``timeout``
        seconds (None: until data, wakeup or close)."""
        self._check_open()
        msgs = self._consume(max_records or self.max_poll_records, timeout)
        Record = _core.Record
        out = []
        positions = self._positions
        for m in msgs:
            ts_type, ts = m.timestamp()
            h = m.headers()
            r = Record(m.offset(), ts, m.key(), m.value(), tuple(h) if h else (),
                       1 if ts_type == 2 else 0, m.topic(), m.partition())
            positions[(m.topic(), r.partition)] = r.offset + 1
            out.append(r)
        return out

    def poll_batches(self, timeout: float | None = 1.0,
                     max_records: int = 100_000) -> list[PartitionColumns]:
        """Like ``poll`` but columnar, one PartitionColumns per partition. librdkafka hands
        over one object per record, so the columns cost a few Python calls per record (the
        embedded consumer's cost none); the offsets, positions and lengths are numpy."""
        self._check_open()
        msgs = self._consume(max_records, timeout)
        if not msgs:
            return []
        M = _kafka.confluent().Message
        topics = list(map(M.topic, msgs))
        parts = np.fromiter(map(M.partition, msgs), np.int32, len(msgs))
        by: dict[TopicPartition, list[Any]] = {}
        if len(set(topics)) == 1 and (parts == parts[0]).all():  # the usual: one partition
            by[(topics[0], int(parts[0]))] = msgs
        else:
            for m, t, p in zip(msgs, topics, parts.tolist()):
                by.setdefault((t, p), []).append(m)
        out = []
        for (t, p), ms in by.items():
            cols = _Columns(ms)
            self._positions[(t, p)] = int(cols.offsets[-1]) + 1
            out.append(PartitionColumns(t, p, cast(_core.Columns, cols), 0, len(cols)))
        return out

    async def poll_async(self, timeout: float | None = 1.0,
                         max_records: int | None = None) -> list[_core.Record]:
        """``poll`` for asyncio programs: looks without blocking and sleeps on the loop."""
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            recs = self.poll(timeout=0, max_records=max_records)
            if recs or self._woken or self._closed:
                self._woken = False
                return recs
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            await asyncio.sleep(0.005 if remaining is None else min(0.005, remaining))

    def wakeup(self) -> None:
        """Make a blocked (or the next) poll return at once; ends ``for record in consumer``."""
        self._woken = True

    # ==========================================================================================
    # Committing

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None,
               metadata: str = "") -> None:
        """Commit the current positions (or ``offsets``) of the group."""
        self._check_open()
        if self.group is None:
            raise errors.InvalidGroupIdError("this consumer has no group: there is nothing to commit to")
        if offsets is None:
            self._commit_positions([tp for tp in self._assigned if tp in self._positions])
            return
        self._send_commit(dict(offsets), metadata)

    def _send_commit(self, offsets: Mapping[TopicPartition, int], metadata: str = "") -> None:
        ck = _kafka.confluent()
        if not offsets:
            return
        for (t, p), o in offsets.items():
            if not isinstance(o, int) or o < 0:
                raise errors.OffsetOutOfRangeError(f"cannot commit offset {o!r} for {t}-{p}")
        try:
            res = self._c.commit(offsets=[ck.TopicPartition(t, p, o, metadata=metadata)
                                          for (t, p), o in offsets.items()], asynchronous=False)
        except ck.KafkaException as exc:
            raise _kafka.error_from(exc, f"committing offsets of group {self.group!r}") from None
        for tp in res or []:
            if tp.error is not None:
                _kafka.raise_from(tp.error, f"committing {tp.topic}-{tp.partition} of group "
                                            f"{self.group!r}")

    # ==========================================================================================
    # Closing

    def close(self) -> None:
        """Commit (when auto-committing), leave the group, and end any iteration."""
        if self._closed:
            return
        try:
            if self.enable_auto_commit and not self.store.closed:
                self._commit_positions([tp for tp in self._assigned if tp in self._positions])
        finally:
            self._closed = True
            with self._poll_lock:  # a poll in another thread ends within its slice
                try:
                    self._c.close()
                except RuntimeError:
                    pass  # closed already
            self.store._forget(self)

    def __repr__(self) -> str:
        return f"<ClusterConsumer group={self.group!r} assigned={len(self._assigned)}>"
