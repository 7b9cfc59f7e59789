"""kstore mirror: copy topics, records and committed group offsets between a data directory and
a Kafka cluster (or two data directories), resumably.

    from kstore.mirror import Mirror
    stats = Mirror("./kstore-data", "kafka://broker:9092", client_config={...}).run()

What is copied: every selected topic (its partition count and the configs both sides know; the
others are reported in ``stats.skipped_configs``), its records (key, value, headers, timestamp,
partition; tombstones and binary bytes as they are; control records and aborted transactions are
not copied: a cluster is read ``read_committed``), and the committed offsets of consumer groups,
translated to the destination's offsets (the destination numbers the records it receives from its
own log end, so offsets differ wherever the source had gaps, e.g. after compaction).

Resuming. The checkpoint (JSON, replaced atomically: tmp + fsync + rename) holds, per partition,
a list of anchors ``[src_next, dst_next]``: the source records below ``src_next`` are the
destination records below ``dst_next``. An anchor is added after each chunk the destination
acknowledged; a run of dense chunks (as many source offsets as records) keeps only its last
anchor, so the list stays short unless the source has gaps. The destination producer is
idempotent with ``enable.gapless.guarantee`` (a data directory's producer appends whole batches in
order), so what landed of a chunk is a prefix of it. A resumed run reads the destination's log
end; if it is ``k`` records past the last anchor (a chunk that landed but was not checkpointed
before a kill), it skips the next ``k`` source *records* (not offsets: a compacted source has
gaps) and produces from there: nothing lost, nothing twice. The first anchor of a partition is
written before anything is produced to it.

Group offsets: a committed source offset ``X`` becomes ``anchor.dst + (records in [anchor.src,
X))`` for the last anchor at or below ``X`` (counted arithmetically between two anchors of a dense
run, else by reading the source); at or past the copied end it is the destination end of the
copy (the group re-reads what was not copied yet, it skips nothing); below the first anchor it
is the first anchor's destination offset.

Default checkpoint: ``<data dir>/.kstore-mirror/<the other side>.json`` in the data directory
side (the destination if both are); a Store ignores dot-folders in its directory (it only opens
the topics its registry names). Cluster to cluster needs ``checkpoint=``.

Not covered: a process that dies with a produce request already written to its socket may have
that request land after the resumed run read the destination's end; Kafka's cure is a
transactional producer (fencing), which the mirror does not use yet.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kstore import _core, _kafka
from kstore import errors as kerr
from kstore.config import validate_config
from kstore._batchproducer import seal
from kstore.consumer import _left_out
from kstore.log.checkpoint import atomic_write

CHECKPOINT_DIR = ".kstore-mirror"
CHECKPOINT_VERSION = 1
DEFAULT_CHUNK_RECORDS = 100_000  # records read per partition per round
DEFAULT_TIMEOUT_S = 30.0  # reaching a cluster; a destination that acknowledges nothing for this long
GROUP_INTERVAL_S = 5.0  # --follow: how often group offsets are copied
TOPIC_INTERVAL_S = 5.0  # --follow: how often new topics are looked for
CHUNK_BYTES = 8 << 20  # bytes read from a data directory per partition per round

# confluent-kafka's ConfigEntry.source for a value set on the topic (DYNAMIC_TOPIC_CONFIG).
_TOPIC_SET = 1
# librdkafka: end of partition (enable.partition.eof).
_PARTITION_EOF = -191

Anchors = list[list[int]]


def _is_internal(name: str) -> bool:
    return name.startswith("__")


@dataclass
class Stats:
    """What a run did (also what the progress callback gets, while it runs)."""

    records: int = 0
    seconds: float = 0.0
    lag: int = 0  # source records not yet copied (at the last look)
    topics: list[str] = field(default_factory=list)
    created_topics: list[str] = field(default_factory=list)
    skipped_configs: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # group -> partitions committed
    group_errors: dict[str, str] = field(default_factory=dict)
    resumed_partitions: int = 0  # partitions continued from a checkpoint
    skipped_on_resume: int = 0  # records found already at the destination past the checkpoint
    interrupted: bool = False
    checkpoint: str = ""

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


# ==============================================================================================
# Anchors and translation


def add_anchor(anchors: Anchors, src: int, dst: int) -> None:
    """Append ``(src, dst)``; when it and the previous anchor both close a dense run (as many
    source offsets as destination offsets), the previous one says nothing and is replaced."""
    if anchors and anchors[-1] == [src, dst]:
        return
    if len(anchors) >= 2:
        (s0, d0), (s1, d1) = anchors[-2], anchors[-1]
        if s1 - s0 == d1 - d0 and src - s1 == dst - d1:
            anchors[-1] = [src, dst]
            return
    anchors.append([src, dst])


def translate(anchors: Anchors, offset: int, count: Callable[[int, int], int]) -> int | None:
    """The destination offset for source offset ``offset`` (see the module doc). ``count(lo,
    hi)`` counts the source records with offsets in ``[lo, hi)``. None without anchors."""
    if not anchors:
        return None
    if offset <= anchors[0][0]:
        return anchors[0][1]
    if offset >= anchors[-1][0]:
        return anchors[-1][1]
    lo, hi = 0, len(anchors) - 1  # anchors[lo].src < offset < anchors[hi].src
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if anchors[mid][0] <= offset:
            lo = mid
        else:
            hi = mid
    (s0, d0), (s1, d1) = anchors[lo], anchors[lo + 1]
    if s1 - s0 == d1 - d0:  # dense between the two: no need to read
        return d0 + (offset - s0)
    return d0 + min(count(s0, offset), d1 - d0)


# ==============================================================================================
# Checkpoint


class Checkpoint:
    """The anchors of every partition, kept in one JSON file replaced atomically."""

    def __init__(self, path: Path, source: str, destination: str) -> None:
        self.path = path
        self.source = source
        self.destination = destination
        self.partitions: dict[str, dict[int, Anchors]] = {}
        self.dirty = False
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise kerr.KafkaStorageError(f"cannot read the mirror checkpoint {path}: "
                                         f"{exc.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            parts = {t: {int(p): [[int(s), int(d)] for s, d in a] for p, a in ps.items()}
                     for t, ps in doc["partitions"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise kerr.InvalidRequestError(
                f"the mirror checkpoint {path} is damaged ({exc}); delete it to copy from the "
                f"start again (records already copied would then be copied twice: delete the "
                f"destination's topics too)") from None
        if (doc.get("source"), doc.get("destination")) != (source, destination):
            raise kerr.InvalidRequestError(
                f"the mirror checkpoint {path} belongs to a mirror of {doc.get('source')} to "
                f"{doc.get('destination')}, not of {source} to {destination}; pass another "
                f"--checkpoint")
        self.partitions = parts

    def anchors(self, topic: str, partition: int) -> Anchors | None:
        return self.partitions.get(topic, {}).get(partition)

    def set_anchors(self, topic: str, partition: int, anchors: Anchors) -> None:
        self.partitions.setdefault(topic, {})[partition] = anchors
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        doc = {"version": CHECKPOINT_VERSION, "source": self.source,
               "destination": self.destination,
               "partitions": {t: {str(p): a for p, a in sorted(ps.items())}
                              for t, ps in sorted(self.partitions.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, separators=(",", ":")).encode())
        self.dirty = False


# ==============================================================================================
# A data directory


def _copy_out(batches: Iterable[Any], keep: Callable[[Any], bool], pos: int, end: int,
              codec: str, max_bytes: int, max_records: int, where: str
              ) -> tuple[list[tuple[bytearray, int]], int, int]:
    """The records of ``batches`` (in order) from offset ``pos`` below ``end`` whose batch
    ``keep`` accepts, as whole batches: ``([(batch, records)], next offset, records)``. A batch
    is taken as it is (a copy, for the writer to seal) when it is whole from ``pos``, dense
    (compaction removed nothing from it), CreateTime, in ``codec`` and at most ``max_bytes``,
    after its CRC is checked; the records of other batches are encoded into new ones
    (consecutive ones together). Stops after about ``max_records``."""
    out: list[tuple[bytearray, int]] = []
    n = 0
    nxt = pos
    builder: Any = None
    held: list[Any] = []  # the records in builder
    maxdec = _core.DEFAULT_MAX_DECOMPRESSED_BYTES

    def encode(recs: list[Any]) -> None:
        """One batch of ``recs``, or, when the codec made it larger than ``max_bytes`` (the
        builder bounds the bytes before compression; lz4 and snappy grow incompressible
        data), two halves."""
        bb = _core.BatchBuilder(codec, max_batch_bytes=1 << 62)
        for r in recs:
            bb.append(r.value, r.key, r.headers, r.timestamp)
        raw = bb.build()
        if len(raw) <= max_bytes or len(recs) == 1:
            out.append((bytearray(raw), len(recs)))
            return
        half = len(recs) // 2
        encode(recs[:half])
        encode(recs[half:])

    def flush() -> None:
        nonlocal builder
        if builder is not None and builder.count:
            raw = builder.build()
            if len(raw) <= max_bytes:
                out.append((bytearray(raw), builder.count))
            else:
                encode(held)
        builder = None
        held.clear()

    for b in batches:
        if b.next_offset <= nxt:
            continue
        if b.base_offset >= end:
            break
        if keep(b):
            if (b.base_offset >= nxt and b.record_count == b.last_offset_delta + 1
                    and b.timestamp_type == 0 and not b.has_delete_horizon
                    and b.compression == codec and b.size <= max_bytes):
                flush()
                b.validate(deep=False)  # the CRC, before its bytes go on under a new one
                out.append((bytearray(b.raw()), b.record_count))
                n += b.record_count
            else:
                for r in b.records(True, maxdec, None, -1, nxt):
                    if builder is None:
                        builder = _core.BatchBuilder(codec, max_batch_bytes=max_bytes)
                    if not builder.append(r.value, r.key, r.headers, r.timestamp):
                        flush()
                        builder = _core.BatchBuilder(codec, max_batch_bytes=max_bytes)
                        if not builder.append(r.value, r.key, r.headers, r.timestamp):
                            raise kerr.RecordTooLargeError(
                                f"{where} offset {r.offset}: the record does not fit a batch "
                                f"of {max_bytes} bytes")
                    held.append(r)
                    n += 1
        nxt = b.next_offset
        if n >= max_records:
            break
    flush()
    return out, nxt, n


def _fetched_keep(aborted: list[tuple[int, int]]) -> Callable[[Any], bool]:
    """For the batches of one Fetch answer, in order: whether a read_committed reader takes
    each (Kafka's consumer rule: a transactional batch of a producer with an aborted
    transaction begun at or before it is dropped until that producer's ABORT marker; markers
    are never taken)."""
    from kstore.log.txn import ABORT, control_type

    pending = sorted(aborted, key=lambda a: a[1])
    active: set[int] = set()
    i = 0

    def keep(b: Any) -> bool:
        nonlocal i
        if b.is_control:
            if b.record_count and control_type(b) == ABORT:
                active.discard(b.producer_id)
            return False
        if not b.is_transactional:
            return True
        while i < len(pending) and pending[i][1] <= b.last_offset:
            active.add(pending[i][0])
            i += 1
        return b.producer_id not in active

    return keep


class _StoreSide:
    """A data directory as a source (read-only: works beside a running writer) or a
    destination (a shared writer)."""

    kind = "store"

    def __init__(self, path: str | os.PathLike, write: bool, compression: str | None) -> None:
        import kstore

        self.path = Path(path)
        self.name = str(self.path.resolve())
        if not write and not (self.path / "kstore.json").exists():
            raise kerr.UnknownTopicOrPartitionError(
                f"{self.path} is not a kstore data directory (no kstore.json); pass the "
                f"directory the data is in, or kafka://host:port for a cluster")
        self.store = kstore.open(self.path, read_only=not write, retention_check_interval_ms=0)
        self._producer: Any = None
        self._compression = None if compression in (None, "none") else compression

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        self.store.close()

    # -- topics ---------------------------------------------------------------------------------

    def list_topics(self) -> list[str]:
        return [t for t in self.store.topics() if not _is_internal(t)]

    def topic_info(self, topic: str) -> tuple[int, dict[str, str]] | None:
        if topic not in self.store.topics(internal=True):
            return None
        d = self.store.describe_topic(topic)
        return d["partitions"], {k: _config_text(v) for k, v in d["config"].items()}

    def create_topic(self, topic: str, partitions: int, config: dict[str, str]) -> list[str]:
        known, skipped = {}, []
        for k, v in config.items():
            try:
                validate_config({k: v})
                known[k] = v
            except kerr.InvalidConfigError:
                skipped.append(k)
        self.store.create_topic(topic, partitions, config=known)
        return skipped

    # -- offsets --------------------------------------------------------------------------------

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        lg = self.store.partition(topic, partition)
        return lg.log_start_offset, lg.log_end_offset

    def ends(self, parts: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The last stable offsets: what lies past one (an open transaction) is not copied
        until that transaction ends."""
        return {tp: self.store.partition(*tp).last_stable_offset() for tp in parts}

    known_ends = ends

    # -- reading --------------------------------------------------------------------------------

    def _span(self, topic: str, partition: int, pos: int, hi: int | None = None) -> tuple[Any, Any, int]:
        """(log, slice of whole batches from ``pos`` below the last stable offset and ``hi``,
        aborted-transaction index or None) as a read_committed reader sees the log: the caller
        leaves out control batches and the batches ``_left_out`` names."""
        lg = self.store.partition(topic, partition)
        end = lg.last_stable_offset()
        if hi is not None:
            end = min(end, hi)
        fs = lg.read(pos, CHUNK_BYTES, end)
        aborted = [(a.producer_id, a.first_offset, a.last_offset)
                   for a in lg.aborted_transactions(pos, fs.next_offset)] if len(fs) else []
        return fs, _core._aborted_index(aborted) if aborted else None, end

    def read(self, topic: str, partition: int, pos: int, max_records: int) -> tuple[list[Any], int]:
        """(records from ``pos`` on, at most about ``max_records``; the offset to read next).
        Control batches and aborted transactions are skipped (their offsets too); nothing at or
        past the last stable offset is read."""
        try:
            fs, index, end = self._span(topic, partition, pos)
        except kerr.OffsetOutOfRangeError:
            start = self.store.partition(topic, partition).log_start_offset
            if pos >= start:
                raise
            # Retention removed what was not copied yet: go on from the log start (Kafka's
            # MirrorMaker does the same with auto.offset.reset=earliest).
            return [], start
        recs: list[Any] = []
        nxt = pos
        maxdec = _core.DEFAULT_MAX_DECOMPRESSED_BYTES
        for b in fs.batches():
            if b.next_offset <= nxt:
                continue
            if b.base_offset >= end:
                break
            if not _left_out(b, index):
                recs += b.records(True, maxdec, None, -1, nxt)
            nxt = b.next_offset
            if len(recs) >= max_records:
                break
        return recs, nxt

    def read_batches(self, topic: str, partition: int, pos: int, max_records: int,
                     hi: int | None, codec: str, max_bytes: int
                     ) -> tuple[list[tuple[bytearray, int]], int, int]:
        """read()'s records as whole batches for a cluster: ``([(batch, records)], the offset
        to read next, records)`` (see _copy_out)."""
        try:
            fs, index, end = self._span(topic, partition, pos, hi)
        except kerr.OffsetOutOfRangeError:
            start = self.store.partition(topic, partition).log_start_offset
            if pos >= start:
                raise
            return [], start, 0
        return _copy_out(fs.batches(), lambda b: not _left_out(b, index), pos, end, codec,
                         max_bytes, max_records, f"{topic}-{partition}")

    def count(self, topic: str, partition: int, lo: int, hi: int) -> int:
        """Records copied from offsets [lo, hi): not control records nor aborted ones."""
        lg = self.store.partition(topic, partition)
        n, pos = 0, max(lo, lg.log_start_offset)
        while pos < hi:
            fs, index, _ = self._span(topic, partition, pos, hi)
            if not len(fs):
                break
            for b in fs.batches():
                if not _left_out(b, index) and b.next_offset > pos:
                    offs = b.columns().offsets
                    n += int(((offs >= pos) & (offs < hi)).sum())
                pos = max(pos, b.next_offset)
        return n

    def skip(self, topic: str, partition: int, pos: int, k: int) -> int:
        """The offset after the next ``k`` records from ``pos`` (fewer if the log ends)."""
        while k > 0:
            recs, nxt = self.read(topic, partition, pos, k)
            if not recs and nxt == pos:
                break
            if len(recs) > k:
                return recs[k - 1].offset + 1
            k -= len(recs)
            pos = nxt if k > 0 or not recs else recs[-1].offset + 1
        return pos

    # -- groups ---------------------------------------------------------------------------------

    def committed(self, topics: set[str]) -> dict[str, dict[tuple[str, int], tuple[int, str]]]:
        out: dict[str, dict[tuple[str, int], tuple[int, str]]] = {}
        for g in self.store.groups():
            parts = {(r["topic"], r["partition"]): (r["committed"], r.get("metadata") or "")
                     for r in self.store.describe_group(g)["partitions"] if r["topic"] in topics}
            if parts:
                out[g] = parts
        return out

    def commit(self, group: str, offsets: dict[tuple[str, int], tuple[int, str]]) -> None:
        self.store.commit_offsets(group, {tp: (off, meta, -1) for tp, (off, meta) in offsets.items()})

    # -- writing --------------------------------------------------------------------------------

    def writer(self, timeout: float) -> _StoreWriter:
        # Batches fill to batch_size (linger 0 would append each record alone); every round
        # ends with a flush.
        self._producer = self.store.producer(linger_ms=1000, batch_size=1 << 20,
                                             compression=self._compression)
        w = _StoreWriter(self.store, self._producer)
        w.codec = self._compression or "none"
        return w


class _StoreWriter:
    """Appends with kstore's Producer; a chunk is acknowledged when flushed."""

    def __init__(self, store: Any, producer: Any) -> None:
        self.store = store
        self.producer = producer
        self._chunks: list[tuple[str, int, int, int]] = []  # topic, partition, src_next, records

    def write(self, topic: str, partition: int, recs: list[Any], kind: str, src_next: int) -> int:
        send = self.producer.send
        nbytes = 0
        if kind == "store":
            for r in recs:
                send(topic, r.value, r.key, r.headers or None, r.timestamp, partition)
        else:  # confluent-kafka Message
            for m in recs:
                send(topic, m.value(), m.key(), m.headers(), m.timestamp()[1], partition)
        self._chunks.append((topic, partition, src_next, len(recs)))
        return nbytes

    batches_in = True  # takes whole batches (write_batches) from a cluster's Fetch
    codec: str = "none"
    max_bytes = 1 << 62  # the topic's max.message.bytes applies (Mirror._max_bytes)

    def write_batches(self, topic: str, partition: int, batches: list[tuple[bytearray, int]],
                      src_next: int) -> None:
        """Append whole batches (no producer: id, epoch and sequence -1), in order after what
        write() sent (flushed first)."""
        lg = self.store.partition(topic, partition)
        if batches and self.producer.pending_records:
            self.producer.flush()
        for buf, _ in batches:
            seal(buf, -1, -1, -1)
            lg.append_batches(buf)
        self._chunks.append((topic, partition, src_next, sum(c for _, c in batches)))

    def acknowledged(self, wait: bool) -> list[tuple[str, int, int, int]]:
        """(topic, partition, src_next, dst_next) of each chunk written since the last call,
        once on disk; the producer appends in order, so every call acknowledges all."""
        if not self._chunks:
            return []
        self.producer.flush()
        done, self._chunks = self._chunks, []
        ends: dict[tuple[str, int], int] = {}
        out = []
        for t, p, s, _ in done:
            if (t, p) not in ends:
                ends[(t, p)] = self.store.partition(t, p).log_end_offset
            out.append((t, p, s, ends[(t, p)]))
        # Only the last chunk of a partition ends at its log end; earlier ones are implied.
        last: dict[tuple[str, int], tuple[str, int, int, int]] = {}
        for c in out:
            last[(c[0], c[1])] = c
        return list(last.values())

    def pending(self) -> int:
        return len(self._chunks)

    def close(self) -> None:
        pass


def _config_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ==============================================================================================
# A cluster


def _not_gapless_notice(record: logging.LogRecord) -> bool:
    """librdkafka warns at each producer's start that enable.gapless.guarantee is
    experimental; the mirror turns it on knowingly (see writer()), so the line is dropped."""
    return "gapless.guarantee is experimental" not in record.getMessage()


_LIBRDKAFKA_LOG = logging.getLogger("kstore.mirror.librdkafka")
_LIBRDKAFKA_LOG.addFilter(_not_gapless_notice)


class _ClusterSide:
    """A Kafka cluster through confluent-kafka: an AdminClient for topics and groups, a Consumer
    (read_committed) as a source, an idempotent gapless Producer as a destination."""

    kind = "cluster"

    def __init__(self, url: str, config: Mapping[str, Any] | None, compression: str | None,
                 timeout: float, forward: bool = True) -> None:
        self.ck = _kafka.confluent()
        import confluent_kafka.admin

        self.admin_mod = confluent_kafka.admin
        self.url = url
        self.conf = _kafka.client_config(url, config)
        self.conf.setdefault("client.id", _kafka.default_client_id())
        if "log_level" not in self.conf and "log.level" not in self.conf:
            # librdkafka's own lines (a refused connection, 20 a second) go to Python logging;
            # what matters reaches the caller as a kstore error.
            self.conf.setdefault("logger", _LIBRDKAFKA_LOG)
        self.name = "kafka://" + self.conf["bootstrap.servers"]
        self.timeout = timeout
        self.compression = compression or "none"
        self.forward = forward
        self._forwarder: _ForwardWriter | None = None
        self.fetcher: Any = None  # a BatchFetcher when the mirror reads batches from here
        self._seen_ends: dict[tuple[str, int], int] = {}
        self._errors: list[Any] = []
        admin_conf: dict[str, Any] = {**self.conf, "error_cb": self._errors.append}
        self.admin = self.admin_mod.AdminClient(admin_conf)
        self._consumer: Any = None
        self._producer: Any = None
        self._meta = self._metadata()

    def _metadata(self) -> Any:
        try:
            return self.admin.list_topics(timeout=self.timeout)
        except self.ck.KafkaException as exc:
            what = f"cannot reach the cluster at {self.url} within {self.timeout:g}s"
            err = _kafka.error_from(exc, what)
            hint = "check the address, that the brokers run, and the -X security settings"
            err.args = (f"{err}; {hint}",)
            raise err from None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.flush(0)
        if self._forwarder is not None:
            self._forwarder.close()
        if self.fetcher is not None:
            self.fetcher.close()

    def _result(self, fut: Any, what: str) -> Any:
        try:
            return fut.result(timeout=self.timeout + 5)
        except self.ck.KafkaException as exc:
            raise _kafka.error_from(exc, what) from None
        except concurrent.futures.TimeoutError:
            raise kerr.RequestTimedOutError(f"{what}: no answer from {self.url} within "
                                            f"{self.timeout:g}s") from None

    # -- topics ---------------------------------------------------------------------------------

    def list_topics(self) -> list[str]:
        self._meta = self._metadata()
        return sorted(t for t in self._meta.topics if not _is_internal(t))

    def topic_info(self, topic: str) -> tuple[int, dict[str, str]] | None:
        md = self._meta.topics.get(topic)
        if md is None or md.error is not None:
            self._meta = self._metadata()
            md = self._meta.topics.get(topic)
            if md is None or md.error is not None:
                return None
        res = self.admin_mod.ConfigResource(self.admin_mod.ConfigResource.Type.TOPIC, topic)
        fut = self.admin.describe_configs([res], request_timeout=self.timeout)[res]
        entries = self._result(fut, f"describing the configs of {topic!r}")
        config = {n: e.value for n, e in entries.items()
                  if int(getattr(e.source, "value", e.source)) == _TOPIC_SET and e.value is not None}
        return len(md.partitions), config

    def create_topic(self, topic: str, partitions: int, config: dict[str, str]) -> list[str]:
        nt = self.admin_mod.NewTopic(topic, partitions, replication_factor=-1, config=config)
        fut = self.admin.create_topics([nt], request_timeout=self.timeout)[topic]
        self._result(fut, f"creating topic {topic!r} on {self.url}")
        self._wait_topic(topic, partitions)
        return []

    def _wait_topic(self, topic: str, partitions: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            md = self.admin.list_topics(topic, timeout=self.timeout).topics.get(topic)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return
            if time.monotonic() > deadline:
                raise kerr.RequestTimedOutError(
                    f"topic {topic!r} was created on {self.url} but its {partitions} partitions "
                    f"did not appear within {self.timeout:g}s")
            time.sleep(0.05)

    # -- offsets --------------------------------------------------------------------------------

    def _list_offsets(self, parts: Iterable[tuple[str, int]], latest: bool) -> dict[tuple[str, int], int]:
        """One ListOffsets for many partitions (read_committed: the last stable offset)."""
        admin = self.admin_mod
        spec = admin.OffsetSpec.latest() if latest else admin.OffsetSpec.earliest()
        req = {self.ck.TopicPartition(t, p): spec for t, p in parts}
        if not req:
            return {}
        futs = self.admin.list_offsets(req, isolation_level=self.ck.IsolationLevel.READ_COMMITTED,
                                       request_timeout=self.timeout)
        return {(tp.topic, tp.partition): int(self._result(f, f"reading the offsets of "
                                                              f"{tp.topic}-{tp.partition}").offset)
                for tp, f in futs.items()}

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        tp = (topic, partition)
        return self._list_offsets([tp], False)[tp], self._list_offsets([tp], True)[tp]

    def ends(self, parts: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return self._list_offsets(parts, True)

    def known_ends(self, pos: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """The high watermarks the copy's fetches brought (no request; for the lag shown)."""
        if self.fetcher is not None:
            return {tp: max(self._seen_ends.get(tp, at), at) for tp, at in pos.items()}
        c = self._reader()
        out = {}
        for (t, p), at in pos.items():
            try:
                _, hi = c.get_watermark_offsets(self.ck.TopicPartition(t, p), cached=True)
            except self.ck.KafkaException:
                hi = at
            out[(t, p)] = max(int(hi), at)
        return out

    # -- reading --------------------------------------------------------------------------------

    def _reader(self) -> Any:
        if self._consumer is None:
            # Larger fetches than librdkafka's defaults (1 MB a partition): +40% records/s
            # from `kstore serve` here. -X settings win.
            conf = {"group.id": "kstore-mirror", "max.partition.fetch.bytes": 10 << 20,
                    "fetch.max.bytes": 100 << 20, "queued.min.messages": 1_000_000,
                    **self.conf, "enable.auto.commit": False, "enable.auto.offset.store": False,
                    "isolation.level": "read_committed", "enable.partition.eof": True,
                    "auto.offset.reset": "earliest", "error_cb": self._errors.append}
            self._consumer = self.ck.Consumer(conf)
        return self._consumer

    def assign(self, positions: Mapping[tuple[str, int], int]) -> None:
        if self.fetcher is not None:
            return  # fetch_batches is told the positions each time
        tps = [self.ck.TopicPartition(t, p, off) for (t, p), off in positions.items()]
        self._reader().assign(tps)

    def use_fetcher(self) -> bool:
        """Read whole batches with kstore's BatchFetcher (PLAINTEXT; librdkafka hands over one
        message object per record, 0.41 M records/s into a data directory)."""
        from kstore._batchproducer import BatchFetcher, usable

        if self.forward and usable(self.conf):
            self.fetcher = BatchFetcher(self.conf["bootstrap.servers"], timeout=self.timeout,
                                        client_id=self.conf.get("client.id") or "kstore-mirror")
        return self.fetcher is not None

    def fetch_batches(self, pos: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int] | None,
                      codec: str, max_bytes: Callable[[str], int], max_records: int
                      ) -> dict[tuple[str, int], tuple[list[tuple[bytearray, int]], int, int]]:
        """For every partition not at its end: (whole batches to append, the offset to read
        next, records), as a read_committed reader sees them (see _copy_out)."""
        assert self.fetcher is not None
        want = {tp: off for tp, off in pos.items() if ends is None or off < ends.get(tp, 0)}
        if not want:
            return {}
        out: dict[tuple[str, int], tuple[list[tuple[bytearray, int]], int, int]] = {}
        for tp, fp in self.fetcher.fetch(want).items():
            at = want[tp]
            self._seen_ends[tp] = max(fp.high_watermark, at)
            if fp.error:  # OFFSET_OUT_OF_RANGE: retention at the cluster went past it
                if at >= fp.log_start_offset >= 0:
                    raise kerr.OffsetOutOfRangeError(
                        f"{tp[0]}-{tp[1]} at {self.url}: offset {at} is out of range "
                        f"(log start {fp.log_start_offset}, end {fp.high_watermark})")
                out[tp] = ([], max(fp.log_start_offset, 0), 0)
                continue
            end = fp.last_stable_offset if fp.last_stable_offset >= 0 else fp.high_watermark
            if ends is not None:
                end = min(end, ends.get(tp, end))
            buf = fp.records
            whole = _core.span_batches(buf, 0, len(buf)) if len(buf) >= 61 else 0
            batches = _core.iter_batches(buf, 0, whole) if whole else iter(())
            got, nxt, k = _copy_out(batches, _fetched_keep(fp.aborted), at, end, codec,
                                    max_bytes(tp[0]), max_records, f"{tp[0]}-{tp[1]}")
            if nxt == at and not got and end > at and whole == 0 and len(buf) > 0:
                raise kerr.RecordTooLargeError(
                    f"{tp[0]}-{tp[1]} at {self.url}: the batch at offset {at} is larger than "
                    f"the fetch size ({self.fetcher.partition_max_bytes} bytes)")
            out[tp] = (got, nxt, k)
        return out

    def poll(self, max_records: int, timeout: float) -> tuple[dict[tuple[str, int], list[Any]],
                                                              dict[tuple[str, int], int]]:
        """Records by partition, and the next offset of each partition seen (EOF included)."""
        msgs = self._reader().consume(max_records, timeout)
        by: dict[tuple[str, int], list[Any]] = {}
        nxt: dict[tuple[str, int], int] = {}
        for m in msgs:
            err = m.error()
            tp = (m.topic(), m.partition())
            if err is not None:
                if err.code() == _PARTITION_EOF:
                    nxt[tp] = max(nxt.get(tp, 0), m.offset())
                    continue
                raise _kafka.error_from(err, f"reading {tp[0]}-{tp[1]} from {self.url}")
            lst = by.get(tp)
            if lst is None:
                by[tp] = lst = []
            lst.append(m)
        for tp, lst in by.items():
            nxt[tp] = max(nxt.get(tp, 0), lst[-1].offset() + 1)
        return by, nxt

    def _offsets_from(self, topic: str, partition: int, start: int) -> Iterator[int]:
        """The offsets of the records from ``start`` to the partition's end (read_committed),
        read by a consumer of their own (the copy's keeps its place)."""
        c = self.ck.Consumer({**self.conf, "group.id": "kstore-mirror-count",
                              "enable.auto.commit": False, "isolation.level": "read_committed",
                              "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        try:
            c.assign([self.ck.TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + self.timeout
            while True:
                msgs = c.consume(10_000, 0.5)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == _PARTITION_EOF:
                            return
                        raise _kafka.error_from(err, f"reading {topic}-{partition}")
                    yield m.offset()
                if msgs:
                    deadline = time.monotonic() + self.timeout
                elif time.monotonic() > deadline:
                    raise kerr.RequestTimedOutError(
                        f"reading {topic}-{partition} from offset {start}: no answer from "
                        f"{self.url} in {self.timeout:g}s")
        finally:
            c.close()

    def count(self, topic: str, partition: int, lo: int, hi: int) -> int:
        """Records with offsets in [lo, hi)."""
        n = 0
        for off in self._offsets_from(topic, partition, lo):
            if off >= hi:
                break
            n += 1
        return n

    def skip(self, topic: str, partition: int, pos: int, k: int) -> int:
        """The offset after the next ``k`` records from ``pos`` (fewer if the log ends)."""
        if k <= 0:
            return pos
        for off in self._offsets_from(topic, partition, pos):
            pos = off + 1
            k -= 1
            if k == 0:
                break
        return pos

    # -- groups ---------------------------------------------------------------------------------

    def committed(self, topics: set[str]) -> dict[str, dict[tuple[str, int], tuple[int, str]]]:
        ck = self.ck
        listed = self._result(self.admin.list_consumer_groups(request_timeout=self.timeout),
                              f"listing the groups of {self.url}")
        if listed.errors:  # librdkafka lists what answered and puts the rest here: no answer
            _kafka.raise_from(listed.errors[0], f"listing the groups of {self.url}")
        out: dict[str, dict[tuple[str, int], tuple[int, str]]] = {}
        for g in sorted(x.group_id for x in listed.valid):
            futs = self.admin.list_consumer_group_offsets(
                [ck.ConsumerGroupTopicPartitions(g)], request_timeout=self.timeout)
            res = self._result(futs[g], f"reading the committed offsets of group {g!r}")
            parts = {(tp.topic, tp.partition): (tp.offset, tp.metadata or "")
                     for tp in res.topic_partitions if tp.topic in topics and tp.offset >= 0}
            if parts:
                out[g] = parts
        return out

    def commit(self, group: str, offsets: dict[tuple[str, int], tuple[int, str]]) -> None:
        ck = self.ck
        # confluent-kafka-python sends metadata with its C string's NUL terminator (a cluster
        # stores "meta\0" for "meta"; reading back it is cut at the NUL, so a store -> cluster
        # -> store round trip keeps it exact). Empty metadata is left out, or it would become
        # "\0" there.
        try:
            tps = [ck.TopicPartition(t, p, off, metadata=meta) if meta
                   else ck.TopicPartition(t, p, off)
                   for (t, p), (off, meta) in sorted(offsets.items())]
        except ValueError as exc:  # librdkafka takes metadata as a C string
            raise kerr.InvalidRequestError(
                f"group {group!r}: commit metadata that confluent-kafka cannot send ({exc}); "
                f"its offsets were not copied") from None
        futs = self.admin.alter_consumer_group_offsets(
            [ck.ConsumerGroupTopicPartitions(group, tps)], request_timeout=self.timeout)
        res = self._result(futs[group], f"committing offsets of group {group!r} on {self.url}")
        bad = [tp for tp in res.topic_partitions if tp.error is not None]
        if bad:
            raise _kafka.error_from(bad[0].error, f"committing {bad[0].topic}-{bad[0].partition} "
                                                  f"of group {group!r}")

    # -- writing --------------------------------------------------------------------------------

    def writer(self, timeout: float) -> _ClusterWriter | _ForwardWriter:
        from kstore._batchproducer import usable

        if self.forward and usable(self.conf):
            from kstore._batchproducer import BatchProducer

            bp = BatchProducer(self.conf["bootstrap.servers"], timeout=timeout,
                               client_id=self.conf.get("client.id") or "kstore-mirror")
            self._forwarder = _ForwardWriter(bp, self.compression)
            return self._forwarder
        conf = {**self.conf, "enable.idempotence": True, "enable.gapless.guarantee": True,
                "compression.type": self.compression, "linger.ms": 20,
                "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                # A message that times out is not covered by the gap-less guarantee: never let
                # one; a destination silent for `timeout` stops the run instead (_ClusterWriter).
                "message.timeout.ms": 0}
        for k, v in self.conf.items():  # -X settings win over the defaults above
            conf[k] = v
        w = _ClusterWriter(self.ck, conf, timeout, self.url)
        self._producer = w.producer
        return w


def _headers(h: Any, r: Any, topic: str, partition: int) -> list[Any]:
    """A record's headers for confluent-kafka, which takes header keys as C strings: a key
    with a NUL would be cut there, so it is refused rather than altered."""
    if "\x00" in "".join([k for k, _ in h]):
        raise kerr.InvalidRecordError(
            f"{topic}-{partition} offset {r.offset}: a header key holds a NUL character, which "
            f"confluent-kafka (librdkafka) would cut short; the records before it were copied. "
            f"Leave the topic out (--topic/--include) or mirror it to a data directory")
    return list(h)


class _ForwardWriter:
    """Sends a data directory's batches with kstore's BatchProducer (stored batches as they
    are; see kstore._batchproducer), one acknowledgement per chunk (its last batch)."""

    batches = True
    max_bytes = 1_000_000  # below Kafka's default message.max.bytes (1,048,588)

    def __init__(self, producer: Any, compression: str) -> None:
        self.producer = producer
        self.codec = compression
        self._acks: list[tuple[str, int, int, int]] = []
        # The chunk of a partition still in flight: a later chunk without records (control
        # batches or a gap at the source) hands its src_next to it.
        self._tail: dict[tuple[str, int], list[int]] = {}

    def write_batches(self, topic: str, partition: int, batches: list[tuple[bytearray, int]],
                      src_next: int) -> None:
        tp = (topic, partition)
        if not batches:
            tail = self._tail.get(tp)
            if tail is not None:
                tail[0] = max(tail[0], src_next)
            else:
                self._acks.append((topic, partition, src_next, -1))
            return
        slot = [src_next]
        self._tail[tp] = slot
        last = len(batches) - 1
        for i, (buf, count) in enumerate(batches):
            self.producer.produce(topic, partition, buf, count,
                                  (tp, slot) if i == last else None)

    def acknowledged(self, wait: bool) -> list[tuple[str, int, int, int]]:
        for token, nxt in self.producer.poll(wait):
            if token is None:
                continue
            tp, slot = token
            self._acks.append((tp[0], tp[1], slot[0], nxt))
            if self._tail.get(tp) is slot:
                del self._tail[tp]
        acks, self._acks = self._acks, []
        return acks

    def pending(self) -> int:
        return self.producer.pending()

    def close(self) -> None:
        self.producer.close()


class _ClusterWriter:
    """Produces with confluent-kafka, one delivery callback per chunk (its last record): under
    the gap-less guarantee, the last record delivered means the whole chunk was."""

    def __init__(self, ck: Any, conf: dict[str, Any], timeout: float, url: str) -> None:
        self.ck = ck
        self.url = url
        self.timeout = timeout
        self._fatal: list[Any] = []
        self._acks: list[tuple[str, int, int, int]] = []
        self._inflight = 0
        self._last_progress = time.monotonic()
        self._last_queued = 0
        self.producer = ck.Producer({**conf, "error_cb": self._on_error})
        self._produce = self.producer.produce
        # Chunks with no records (a gap or control batches at the source) after an in-flight
        # chunk of the same partition: their src_next rides on that chunk's acknowledgement.
        self._tail: dict[tuple[str, int], list[int]] = {}

    def _on_error(self, err: Any) -> None:
        if err.fatal() or err.code() in (-169,):  # _AUTHENTICATION
            self._fatal.append(err)

    def _check(self) -> None:
        if self._fatal:
            raise _kafka.error_from(self._fatal[0], f"producing to {self.url}")

    def _stalled(self) -> bool:
        """Whether nothing left the queue for ``timeout`` seconds (delivered records leave it,
        the last of a chunk or not)."""
        queued = len(self.producer)
        now = time.monotonic()
        if queued < self._last_queued:
            self._last_progress = now
        self._last_queued = queued
        return now - self._last_progress > self.timeout

    def write(self, topic: str, partition: int, recs: list[Any], kind: str, src_next: int) -> int:
        self._check()
        tp = (topic, partition)
        if not recs:
            tail = self._tail.get(tp)
            if tail is not None:
                tail[0] = max(tail[0], src_next)
            else:
                self._acks.append((topic, partition, src_next, -1))  # -1: nothing new there
            return 0
        slot = [src_next]
        self._tail[tp] = slot

        def delivered(err: Any, msg: Any, slot: list[int] = slot) -> None:
            self._inflight -= 1
            self._last_progress = time.monotonic()
            if err is not None:
                self._fatal.append(err)
                return
            self._acks.append((topic, partition, slot[0], msg.offset() + 1))
            if self._tail.get(tp) is slot:
                del self._tail[tp]

        # Positional: (topic, value, key, partition, callback, on_delivery, timestamp,
        # headers); keywords cost a dict per call.
        produce = self._produce
        last = len(recs) - 1
        i = 0
        while True:
            try:
                if kind == "store":
                    while i < last:
                        r = recs[i]
                        h = r.headers
                        produce(topic, r.value, r.key, partition, None, None, r.timestamp,
                                _headers(h, r, topic, partition) if h else None)
                        i += 1
                    r = recs[last]
                    h = r.headers
                    produce(topic, r.value, r.key, partition, delivered, None, r.timestamp,
                            _headers(h, r, topic, partition) if h else None)
                else:
                    while i < last:
                        m = recs[i]
                        produce(topic, m.value(), m.key(), partition, None, None,
                                m.timestamp()[1], m.headers())
                        i += 1
                    m = recs[last]
                    produce(topic, m.value(), m.key(), partition, delivered, None,
                            m.timestamp()[1], m.headers())
                break
            except BufferError:
                # The local queue is full (messages or bytes): serve delivery reports until
                # it has room, then go on from record i (which was not queued).
                self._wait_room()
        self._inflight += 1
        return 0

    def _wait_room(self) -> None:
        """Until the queue is at most half as long as now."""
        queued = len(self.producer)
        self._serve_until(lambda: len(self.producer) <= queued // 2)

    def _serve_until(self, done: Callable[[], bool]) -> None:
        """Serve delivery reports until ``done()``; RequestTimedOutError when the cluster
        acknowledges nothing for ``timeout`` seconds, the fatal error if one came."""
        self._last_progress = time.monotonic()
        while not done():
            self.producer.poll(0.05)
            self._check()
            if self._stalled():
                raise kerr.RequestTimedOutError(
                    f"{self.url} acknowledged nothing for {self.timeout:g}s; the next run "
                    f"copies what it did not acknowledge, once")

    def acknowledged(self, wait: bool) -> list[tuple[str, int, int, int]]:
        """(topic, partition, src_next, dst_next) of the chunks delivered since the last call
        (dst_next -1: a chunk without records, nothing new at the destination); ``wait``:
        first until every chunk sent is delivered."""
        self.producer.poll(0)
        if wait:
            self._serve_until(lambda: self._inflight <= 0)
        self._check()
        acks, self._acks = self._acks, []
        return acks

    def pending(self) -> int:
        return self._inflight

    def close(self) -> None:
        pass


# ==============================================================================================
# The mirror


def _side(target: str | os.PathLike, write: bool, config: Mapping[str, Any] | None,
          compression: str | None, timeout: float, forward: bool = True) -> Any:
    if _kafka.is_kafka_url(target):
        return _ClusterSide(str(target), config, compression, timeout, forward)
    return _StoreSide(target, write, compression)


def default_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``<data dir>/.kstore-mirror/<other side>.json``, in the destination if it is a data
    directory, else in the source. Raises InvalidRequestError for cluster to cluster."""
    for home, other in ((dst, src), (src, dst)):
        if not _kafka.is_kafka_url(home):
            if _kafka.is_kafka_url(other):
                label = "from-" if home is dst else "to-"
                label += _kafka.bootstrap_servers(str(other))
            else:
                label = ("from-" if home is dst else "to-") + str(Path(other).resolve())
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
            return Path(home) / CHECKPOINT_DIR / f"{safe}.json"
    raise kerr.InvalidRequestError(
        "mirroring one cluster to another needs a checkpoint file: pass --checkpoint PATH")


class Mirror:
    """One mirror run from ``src`` to ``dst`` (each a data directory or ``kafka://...``).

    ``topics``: names to copy (each must exist at the source); ``include``: a regular expression
    the whole name must match; neither: every topic but internal ones (``__*``).
    ``client_config``: confluent-kafka (librdkafka) settings for the cluster side(s), Kafka's
    names (SASL, TLS). ``follow``: keep copying new records until :meth:`stop`. ``groups``: copy
    committed group offsets. ``compression``: the destination's. ``on_progress(stats)`` is
    called after each acknowledged round. ``max_rate``: records/s at most (0: no limit).
    ``forward_batches``: between a data directory and a PLAINTEXT cluster, move whole batches
    as they are with kstore's own producer and fetcher (kstore._batchproducer: several times
    faster); False, or TLS/SASL settings: record by record through confluent-kafka.

    Raises (kstore.errors): InvalidPartitionsError when a destination topic exists with another
    partition count (nothing is copied), UnknownTopicOrPartitionError for a named topic the
    source lacks, NetworkError / RequestTimedOutError when a cluster does not answer within
    ``timeout`` seconds, InvalidRequestError for a checkpoint of another mirror.
    """

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike, *,
                 topics: Iterable[str] = (), include: str | None = None,
                 client_config: Mapping[str, Any] | None = None, follow: bool = False,
                 checkpoint: str | os.PathLike | None = None, groups: bool = True,
                 compression: str | None = "lz4", chunk_records: int = DEFAULT_CHUNK_RECORDS,
                 max_rate: float = 0, timeout: float = DEFAULT_TIMEOUT_S,
                 on_progress: Callable[[Stats], None] | None = None,
                 forward_batches: bool = True) -> None:
        self.src_target, self.dst_target = src, dst
        self.topic_names = list(topics)
        try:
            self.include = re.compile(include) if include is not None else None
        except re.error as exc:
            raise kerr.InvalidConfigError(f"--include {include!r} is not a regular expression: "
                                          f"{exc}") from None
        self.client_config = dict(client_config or {})
        self.follow = follow
        self.copy_groups = groups
        self.compression = compression
        self.chunk_records = max(1, int(chunk_records))
        self.max_rate = float(max_rate or 0)
        self.timeout = float(timeout)
        self.on_progress = on_progress
        self.forward_batches = forward_batches
        self.checkpoint_path = (Path(checkpoint) if checkpoint is not None
                                else default_checkpoint(src, dst))
        self._stop = threading.Event()
        self._max_bytes: dict[str, int] = {}
        self.stats = Stats(checkpoint=str(self.checkpoint_path))

    def stop(self) -> None:
        """Finish the round in progress (its acknowledged records are checkpointed), copy the
        group offsets, and return from :meth:`run`. Safe from a signal handler or a thread."""
        self._stop.set()

    # ------------------------------------------------------------------------------------------

    def run(self) -> Stats:
        src = _side(self.src_target, False, self.client_config, None, self.timeout,
                    self.forward_batches)
        try:
            dst = _side(self.dst_target, True, self.client_config, self.compression,
                        self.timeout, self.forward_batches)
        except BaseException:
            src.close()
            raise
        try:
            return self._run(src, dst)
        finally:
            dst.close()
            src.close()

    def _select(self, src: Any) -> list[str]:
        available = src.list_topics()
        if self.topic_names:
            missing = [t for t in self.topic_names if t not in available]
            if missing:
                raise kerr.UnknownTopicOrPartitionError(
                    f"the source {src.name} has no topic {', '.join(map(repr, missing))}; "
                    f"its topics: {', '.join(available) or '(none)'}")
        chosen = set(self.topic_names)
        if self.include is not None:
            chosen |= {t for t in available if self.include.fullmatch(t)}
        if not self.topic_names and self.include is None:
            chosen = set(available)
        return sorted(chosen)

    def _prepare(self, src: Any, dst: Any, topics: list[str]) -> dict[str, int]:
        """Check every destination topic first (nothing is created or copied if one has
        another partition count), then create the missing ones."""
        infos: dict[str, tuple[int, dict[str, str]]] = {}
        problems = []
        for t in topics:
            info = src.topic_info(t)
            if info is None:
                continue  # deleted meanwhile
            infos[t] = info
            have = dst.topic_info(t)
            if have is not None and have[0] != info[0]:
                problems.append(f"{t!r} has {info[0]} partitions at the source and {have[0]} at "
                                f"the destination")
        if problems:
            raise kerr.InvalidPartitionsError(
                f"cannot mirror {src.name} to {dst.name}: " + "; ".join(problems) +
                ". Nothing was copied. Delete or recreate the destination topic with the source's "
                "partition count (records keep their partition), or leave it out with --topic / "
                "--include")
        out = {}
        for t, (n, config) in infos.items():
            with contextlib.suppress(KeyError, ValueError):
                # Re-encoded batches stay within the topic's limit (copied to the destination).
                self._max_bytes[t] = int(config["max.message.bytes"])
            if dst.topic_info(t) is None:
                try:
                    skipped = dst.create_topic(t, n, config)
                    self.stats.created_topics.append(t)
                except kerr.TopicAlreadyExistsError:  # created meanwhile: checked below
                    skipped = []
                    have = dst.topic_info(t)
                    if have is not None and have[0] != n:
                        raise kerr.InvalidPartitionsError(
                            f"{t!r} appeared at {dst.name} with {have[0]} partitions while "
                            f"the mirror created it with the source's {n}") from None
                if skipped:
                    self.stats.skipped_configs[t] = skipped
            out[t] = n
        return out

    def _run(self, src: Any, dst: Any) -> Stats:
        started = time.monotonic()
        cp = Checkpoint(self.checkpoint_path, src.name, dst.name)
        writer = dst.writer(self.timeout)
        if src.kind == "cluster" and getattr(writer, "batches_in", False):
            src.use_fetcher()
        pos: dict[tuple[str, int], int] = {}  # next source offset to read
        anchors: dict[tuple[str, int], Anchors] = {}
        topics: dict[str, int] = {}

        def add_topics(names: list[str]) -> None:
            new = [t for t in names if t not in topics]
            if not new:
                return
            prepared = self._prepare(src, dst, new)
            for t, n in prepared.items():
                topics[t] = n
                self.stats.topics.append(t)
                for p in range(n):
                    self._start_partition(src, dst, cp, t, p, pos, anchors)
            cp.save()  # first anchors before anything is produced
            if src.kind == "cluster":
                src.assign(pos)

        add_topics(self._select(src))
        ends = src.ends(pos) if not self.follow else {}
        last_topics = last_groups = time.monotonic()
        interval_start, interval_records = time.monotonic(), 0
        lag_at = time.monotonic()
        def absorb(wait: bool) -> None:
            """Anchors for the chunks acknowledged so far, then the checkpoint."""
            for t, p, s, d in writer.acknowledged(wait=wait):
                a = anchors[(t, p)]
                add_anchor(a, s, d if d >= 0 else a[-1][1])
                cp.set_anchors(t, p, a)
            cp.save()

        clean = False
        try:
            while True:
                if self._stop.is_set():
                    self.stats.interrupted = True
                    break
                n = self._round(src, writer, pos, ends)
                # Toward a cluster, chunks stay in flight across rounds (waiting for each
                # round's acknowledgements drained the pipeline: 9% of the time at 1 M
                # records); the anchors follow the delivery reports.
                absorb(wait=False)
                self.stats.records += n
                now = time.monotonic()
                self.stats.seconds = now - started
                if now - lag_at > 1.0:
                    self._lag(src, pos)
                    lag_at = now
                if self.on_progress is not None:
                    self.on_progress(self.stats)
                if not self.follow and all(pos[tp] >= ends.get(tp, 0) for tp in pos):
                    break
                if self.follow:
                    if self.copy_groups and now - last_groups > GROUP_INTERVAL_S:
                        self._copy_groups(src, dst, anchors, set(topics))
                        last_groups = now
                    if now - last_topics > TOPIC_INTERVAL_S:
                        add_topics(self._select(src))
                        last_topics = now
                    if n == 0 and src.kind == "store":
                        self._stop.wait(0.05)
                if self.max_rate > 0:
                    interval_records += n
                    ahead = interval_records / self.max_rate - (time.monotonic() - interval_start)
                    if ahead > 0:
                        self._stop.wait(ahead)
            absorb(wait=True)
            clean = True
        finally:
            if not clean:
                # What was acknowledged so far is checkpointed even when the run stops on an
                # error (a chunk still in flight is found at the destination next time).
                with contextlib.suppress(kerr.KStoreError):
                    absorb(wait=False)
        if self.copy_groups:
            self._copy_groups(src, dst, anchors, set(topics))
        self._lag(src, pos)
        self.stats.seconds = time.monotonic() - started
        if self.on_progress is not None:
            self.on_progress(self.stats)
        return self.stats

    def _lag(self, src: Any, pos: dict) -> None:
        current = src.known_ends(pos)
        self.stats.lag = sum(max(current[tp] - pos[tp], 0) for tp in pos)

    def _start_partition(self, src: Any, dst: Any, cp: Checkpoint, t: str, p: int,
                         pos: dict, anchors: dict) -> None:
        tp = (t, p)
        a = cp.anchors(t, p)
        _, d_end = dst.bounds(t, p)
        if a is None:
            s_start, _ = src.bounds(t, p)
            a = [[s_start, d_end]]
            cp.set_anchors(t, p, a)
        else:
            self.stats.resumed_partitions += 1
            s_last, d_last = a[-1]
            if d_end < d_last:
                raise kerr.InvalidRequestError(
                    f"{t}-{p} at the destination {dst.name} ends at offset {d_end}, but the "
                    f"checkpoint {cp.path} says {d_last} records were copied there: the "
                    f"destination lost data or was recreated. Delete the checkpoint (and the "
                    f"destination topic) to copy from the start")
            k = d_end - d_last
            if k:
                # A chunk landed but its anchor was not written before the last run stopped.
                s_new = src.skip(t, p, s_last, k)
                add_anchor(a, s_new, d_end)
                cp.set_anchors(t, p, a)
                self.stats.skipped_on_resume += k
        anchors[tp] = a
        pos[tp] = a[-1][0]

    def _round(self, src: Any, writer: Any, pos: dict, ends: dict) -> int:
        """Read and write one chunk per partition with records; the number written."""
        n = 0
        chunk = self.chunk_records
        if self.max_rate > 0:
            chunk = max(1, min(chunk, int(self.max_rate / 10) or 1))
        if src.kind == "store":
            for tp in list(pos):
                if not self.follow and pos[tp] >= ends.get(tp, 0):
                    continue
                if getattr(writer, "batches", False):
                    hi = None if self.follow else ends.get(tp, 0)
                    max_bytes = min(writer.max_bytes, self._max_bytes.get(tp[0], 1 << 62))
                    batches, nxt, k = src.read_batches(tp[0], tp[1], pos[tp], chunk, hi,
                                                       writer.codec, max_bytes)
                    if nxt == pos[tp] and not batches:
                        continue
                    writer.write_batches(tp[0], tp[1], batches, nxt)
                    pos[tp] = nxt
                    n += k
                    continue
                recs, nxt = src.read(tp[0], tp[1], pos[tp], chunk)
                if not self.follow and nxt > ends[tp]:
                    # Copy what was there when the run started (a live writer keeps adding);
                    # every batch below the end was read whole.
                    end = ends[tp]
                    recs = [r for r in recs if r.offset < end]
                    nxt = end
                if nxt == pos[tp] and not recs:
                    continue
                writer.write(tp[0], tp[1], recs, "store", nxt)
                pos[tp] = nxt
                n += len(recs)
        elif getattr(writer, "batches_in", False) and src.fetcher is not None:
            got = src.fetch_batches(pos, None if self.follow else ends, writer.codec,
                                    lambda t: min(writer.max_bytes, self._max_bytes.get(t, 1 << 62)),
                                    chunk)
            for tp, (batches, nxt, k) in got.items():
                if nxt == pos[tp] and not batches:
                    continue
                writer.write_batches(tp[0], tp[1], batches, nxt)
                pos[tp] = nxt
                n += k
            if not got and self.follow:
                self._stop.wait(0.05)
        else:
            by, nxt = src.poll(chunk, 0.1)
            for tp, off in nxt.items():
                recs = by.get(tp, [])
                writer.write(tp[0], tp[1], recs, "message", off)
                pos[tp] = max(pos.get(tp, 0), off)
                n += len(recs)
        return n

    def _copy_groups(self, src: Any, dst: Any, anchors: dict, topics: set[str]) -> None:
        try:
            committed = src.committed(topics)
        except kerr.KStoreError as exc:
            self.stats.group_errors["*"] = str(exc)
            return
        for group, parts in committed.items():
            out: dict[tuple[str, int], tuple[int, str]] = {}
            for (t, p), (off, meta) in parts.items():
                a = anchors.get((t, p))
                if not a:
                    continue
                d = translate(a, off, functools.partial(src.count, t, p))
                if d is not None:
                    out[(t, p)] = (d, meta)
            if not out:
                continue
            try:
                dst.commit(group, out)
                self.stats.groups[group] = len(out)
                self.stats.group_errors.pop(group, None)
            except kerr.KStoreError as exc:
                self.stats.group_errors[group] = str(exc)


def mirror(src: str | os.PathLike, dst: str | os.PathLike, **kwargs: Any) -> Stats:
    """``Mirror(src, dst, **kwargs).run()``."""
    return Mirror(src, dst, **kwargs).run()
