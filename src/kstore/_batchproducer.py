"""kstore's own Kafka client for whole batches: an idempotent producer of sealed RecordBatch v2
bytes (kstore mirror from a data directory to a cluster, and kstore.connect's send_many) and a
read_committed fetcher of whole batches (kstore mirror from a cluster to a data directory).

Why it is written here rather than left to confluent-kafka: librdkafka takes one record per
``produce()`` call, and for 100-byte records that call alone held the mirror to 0.51 M records/s
(a bare ``produce()`` loop over the same records reached 0.82 M/s; benchmarks/
test_bench_mirror.py). A data directory's batches are Kafka's bytes already: this client sends
them as they are, with only the producer fields of their headers rewritten (producer id, epoch,
base sequence, base offset 0, CRC), so a batch of 8,000 records costs one header patch and one
CRC instead of 8,000 calls.

It speaks only what a producer needs: ApiVersions, Metadata, InitProducerId (no transactional
id) and Produce with acks=all, over PLAINTEXT. With TLS or SASL settings the mirror keeps
confluent-kafka. Kafka's rules it follows:

* one batch per partition per Produce request (brokers refuse more for magic 2);
* at most 5 requests in flight per connection, so at most 5 batches per partition, which is
  what brokers keep per producer to recognise a resent batch as a duplicate;
* a retriable error (leadership moved, a timeout, a dropped connection) resends every batch not
  yet acknowledged, in order and with the sequence numbers it had: the broker appends those it
  lacks and answers the others as duplicates, so nothing is lost or written twice.

Everything else (a record too large, authorization, an unknown producer id) is raised as the
kstore error of its Kafka code, and the producer sends nothing more.

The fetcher (BatchFetcher) sends Fetch v4-11 with isolation_level 1 to each partition's leader
and hands back the bytes, the last stable offset and the aborted transactions; what a
read_committed reader keeps of them is decided by kstore.mirror (Kafka's consumer rule).
"""

from __future__ import annotations

import collections
import select
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kstore import _core
from kstore import errors as kerr
from kstore.server import protocol

PRODUCE, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 3, 18, 22
# The highest version of each request this client writes (all well tested against kstore serve
# and spoken by every Kafka since 2.4); a broker's lower maximum wins.
_CAPS = {PRODUCE: 9, METADATA: 9, INIT_PRODUCER_ID: 4}
_MIN_PRODUCE = 3  # RecordBatch v2
MAX_IN_FLIGHT = 5
MAX_QUEUED_BYTES = 64 << 20  # produce() waits for acknowledgements beyond this
_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)

# Kafka's retriable errors a producer sees (NOT_LEADER_OR_FOLLOWER and kin, timeouts, a broker
# still loading), plus OUT_OF_ORDER_SEQUENCE_NUMBER, which follows a batch that failed before
# it and is cured by resending from that batch.
RETRIABLE = frozenset({3, 5, 6, 7, 13, 14, 15, 16, 19, 20, 45, 56, 74, 75})
_DUPLICATE_SEQUENCE = 46

# RecordBatch v2 header fields this client rewrites (kafka-storage.md).
_BASE_OFFSET = struct.Struct(">q")
_LEADER_EPOCH_AT = 12
_CRC_AT = 17
_ATTRIBUTES_AT = 21
_PRODUCER_AT = 43  # producer id (int64), epoch (int16), base sequence (int32)
_PRODUCER = struct.Struct(">qhi")
_I32 = struct.Struct(">i")
_ATTR_TRANSACTIONAL = 0x10


def seal(buf: bytearray | memoryview, producer_id: int, epoch: int, sequence: int) -> None:
    """Make a stored batch a producer's: base offset 0, no leader epoch, not transactional,
    the producer's id, epoch and base sequence, and the CRC over the result."""
    _BASE_OFFSET.pack_into(buf, 0, 0)
    _I32.pack_into(buf, _LEADER_EPOCH_AT, -1)
    buf[_ATTRIBUTES_AT + 1] &= ~_ATTR_TRANSACTIONAL & 0xFF
    _PRODUCER.pack_into(buf, _PRODUCER_AT, producer_id, epoch, sequence)
    struct.pack_into(">I", buf, _CRC_AT, _core.crc32c(memoryview(buf)[_ATTRIBUTES_AT:]))


def usable(conf: Mapping[str, Any]) -> bool:
    """Whether this client can reach a cluster with these confluent-kafka settings: PLAINTEXT,
    no TLS or SASL settings (those stay with librdkafka)."""
    proto = str(conf.get("security.protocol", "plaintext")).lower()
    return proto == "plaintext" and not any(k.startswith(("ssl.", "sasl.")) for k in conf)


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    out = []
    for part in servers.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise kerr.InvalidConfigError(f"bootstrap server {part!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise kerr.InvalidConfigError("no bootstrap servers")
    return out


class _Item:
    """One sealed batch on its way: where it goes, how many records, what to report."""

    __slots__ = ("tp", "buf", "count", "token")

    def __init__(self, tp: tuple[str, int], buf: bytearray | memoryview, count: int,
                 token: Any) -> None:
        self.tp = tp
        self.buf = buf
        self.count = count
        self.token = token


class _Connection:
    """One broker connection: requests written whole, responses read in order."""

    def __init__(self, address: tuple[str, int], timeout: float, client_id: str) -> None:
        try:
            self.sock = socket.create_connection(address, timeout=timeout)
        except OSError as exc:
            raise kerr.NetworkError(f"cannot connect to {address[0]}:{address[1]}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.address = address
        self.client_id = client_id
        self.corr = 0
        self.rbuf = bytearray()
        # (correlation id, api key, version, items) of each request sent, oldest first
        self.inflight: collections.deque[tuple[int, int, int, list[_Item]]] = collections.deque()

    def close(self) -> None:
        self.sock.close()

    def send(self, api_key: int, version: int, body: dict[str, Any], items: list[_Item]) -> None:
        self.corr += 1
        frame = protocol.encode_request(api_key, version, self.corr, body, self.client_id)
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise kerr.NetworkError(f"{self._name()}: sending failed: {exc}") from None
        self.inflight.append((self.corr, api_key, version, items))

    def _name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def fill(self) -> None:
        """Read what the socket holds (it is readable)."""
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError as exc:
            raise kerr.NetworkError(f"{self._name()}: receiving failed: {exc}") from None
        if not chunk:
            raise kerr.NetworkError(f"{self._name()} closed the connection")
        self.rbuf += chunk

    def response(self) -> tuple[list[_Item], dict[str, Any], int] | None:
        """The oldest request's (items, decoded response, api key) once it is whole here."""
        if len(self.rbuf) < 4:
            return None
        (size,) = _I32.unpack_from(self.rbuf, 0)
        if len(self.rbuf) < 4 + size:
            return None
        frame = bytes(self.rbuf[4:4 + size])
        del self.rbuf[:4 + size]
        if not self.inflight:
            raise kerr.NetworkError(f"{self._name()} answered a request that was not sent")
        corr, api_key, version, items = self.inflight.popleft()
        (got,) = _I32.unpack_from(frame, 0)
        if got != corr:
            raise kerr.NetworkError(f"{self._name()} answered request {got}, expected {corr}")
        pos = 4
        if protocol.is_flexible(api_key, version) and api_key != API_VERSIONS:
            pos = _skip_tags(frame, pos)
        try:
            return items, protocol.decode(api_key, True, version, frame, pos), api_key
        except Exception as exc:  # noqa: BLE001 - any decoding fault is the broker's
            raise kerr.CorruptRecordError(
                f"{self._name()}: an undecodable {protocol.api_name(api_key)} response: "
                f"{exc}") from None

    def call(self, api_key: int, version: int, body: dict[str, Any], timeout: float) -> dict:
        """One request and its response, synchronously (nothing else in flight)."""
        self.send(api_key, version, body, [])
        deadline = time.monotonic() + timeout
        while True:
            got = self.response()
            if got is not None:
                return got[1]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise kerr.RequestTimedOutError(
                    f"{self._name()} did not answer {protocol.api_name(api_key)} within "
                    f"{timeout:g}s")
            self.fill()


def _first_reachable(addresses: list[tuple[str, int]], timeout: float,
                     client_id: str) -> _Connection:
    """A connection to the first broker of ``addresses`` that answers."""
    errors = []
    for addr in addresses:
        try:
            return _Connection(addr, timeout, client_id)
        except kerr.NetworkError as exc:
            errors.append(str(exc))
    raise kerr.NetworkError("no broker reachable: " + "; ".join(errors))


def _skip_tags(buf: bytes, pos: int) -> int:
    """Past a tagged-field section (a response header v1)."""
    def uvarint(p: int) -> tuple[int, int]:
        v = shift = 0
        while True:
            b = buf[p]
            p += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v, p
            shift += 7

    n, pos = uvarint(pos)
    for _ in range(n):
        _, pos = uvarint(pos)
        size, pos = uvarint(pos)
        pos += size
    return pos


class BatchProducer:
    """Sends sealed batches to the partitions' leaders and reports, per batch in order, the
    destination offset after it.

    ``produce(topic, partition, buf, count, token)`` takes a whole stored RecordBatch v2
    (``buf`` is rewritten in place by ``seal``); ``poll(wait)`` returns ``[(token, next_offset)]``
    for the batches acknowledged since the last call, ``wait``: first until every batch is.
    ``timeout``: how long the cluster may acknowledge nothing (then RequestTimedOutError).
    """

    def __init__(self, bootstrap: str, *, timeout: float = 30.0,
                 client_id: str = "kstore-mirror", max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self.timeout = timeout
        self.client_id = client_id
        self.max_in_flight = max(1, min(max_in_flight, MAX_IN_FLIGHT))
        self._conns: dict[int, _Connection] = {}
        self._addresses: dict[int, tuple[str, int]] = {}
        self._leaders: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], collections.deque[_Item]] = {}
        self._unacked: dict[tuple[str, int], collections.deque[_Item]] = {}
        self._seq: dict[tuple[str, int], int] = {}
        self._next: dict[tuple[str, int], int] = {}  # destination offset after the last ack
        self._acks: list[tuple[Any, int]] = []
        self._queued_bytes = 0
        self._last_progress = time.monotonic()
        self.resets = 0  # retriable failures recovered from (for tests and the summary)
        self.closed = False
        #: The refusal (a non-retriable error) that stopped this producer, if one did.
        self.failed: BaseException | None = None
        self._versions = self._negotiate()
        self.producer_id, self.epoch = self._init_producer_id()

    # -- setup ----------------------------------------------------------------------------------

    def _any_connection(self) -> _Connection:
        return _first_reachable(list(self._addresses.values()) + self.bootstrap, self.timeout,
                                self.client_id)

    def _negotiate(self) -> dict[int, int]:
        c = self._any_connection()
        try:
            res = c.call(API_VERSIONS, 0, {}, self.timeout)
        finally:
            c.close()
        if res["error_code"]:
            raise kerr.error_for_code(res["error_code"])(
                f"ApiVersions refused by {c.address[0]}:{c.address[1]}")
        theirs = {k["api_key"]: (k["min_version"], k["max_version"]) for k in res["api_keys"]}
        out = {}
        for key, cap in _CAPS.items():
            ours = protocol.known_versions(key)
            if key not in theirs or ours is None:
                raise kerr.UnsupportedVersionError(
                    f"the broker does not serve {protocol.api_name(key)}")
            lo, hi = theirs[key]
            v = min(hi, cap, ours[1])
            if v < max(lo, ours[0], _MIN_PRODUCE if key == PRODUCE else 0):
                raise kerr.UnsupportedVersionError(
                    f"the broker serves {protocol.api_name(key)} {lo}-{hi}; this client needs "
                    f"{_MIN_PRODUCE if key == PRODUCE else ours[0]}-{min(cap, ours[1])}")
            out[key] = v
        return out

    def _init_producer_id(self) -> tuple[int, int]:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            c = self._any_connection()
            try:
                res = c.call(INIT_PRODUCER_ID, self._versions[INIT_PRODUCER_ID],
                             {"transactional_id": None, "transaction_timeout_ms": 60_000,
                              "producer_id": -1, "producer_epoch": -1}, self.timeout)
            finally:
                c.close()
            err = res["error_code"]
            if not err:
                return res["producer_id"], res["producer_epoch"]
            if err not in RETRIABLE or time.monotonic() > deadline:
                raise kerr.error_for_code(err)(f"InitProducerId refused (Kafka error {err})")
            time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1

    def _refresh(self, topics: Iterable[str]) -> None:
        """Leaders of every partition of ``topics`` and of the topics with batches on their
        way (waits out a topic just created). Topics with nothing on its way are not asked
        for: one deleted since must not stop the others."""
        busy = {tp[0] for q in (self._pending, self._unacked) for tp, items in q.items() if items}
        want = sorted(set(topics) | busy)
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            c = self._any_connection()
            try:
                res = c.call(METADATA, self._versions[METADATA],
                             {"topics": [{"name": t} for t in want],
                              "allow_auto_topic_creation": False}, self.timeout)
            finally:
                c.close()
            self._addresses.update({b["node_id"]: (b["host"], b["port"]) for b in res["brokers"]})
            problems = []
            for t in res["topics"]:
                if t["error_code"]:
                    problems.append((t["name"], t["error_code"]))
                    continue
                for p in t["partitions"]:
                    if p["error_code"] and p["error_code"] not in (9,):  # 9: replica not available
                        problems.append((f"{t['name']}-{p['partition_index']}", p["error_code"]))
                    elif p["leader_id"] < 0:
                        problems.append((f"{t['name']}-{p['partition_index']}", 5))
                    else:
                        self._leaders[(t["name"], p["partition_index"])] = p["leader_id"]
            if not problems:
                return
            name, err = problems[0]
            if err not in RETRIABLE or time.monotonic() > deadline:
                raise kerr.error_for_code(err)(f"no leader for {name} (Kafka error {err})")
            time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1

    def _conn(self, node: int) -> _Connection:
        c = self._conns.get(node)
        if c is None:
            addr = self._addresses.get(node)
            if addr is None:
                raise kerr.LeaderNotAvailableError(f"broker {node} is not in the metadata")
            c = self._conns[node] = _Connection(addr, self.timeout, self.client_id)
        return c

    # -- producing ------------------------------------------------------------------------------

    def produce(self, topic: str, partition: int, buf: bytearray | memoryview, count: int,
                token: Any = None) -> None:
        """Queue one stored batch of ``count`` records (sealed here, in place)."""
        if self.closed:
            raise kerr.ClosedError("produce on a closed BatchProducer")
        if self.failed is not None:
            raise self.failed
        tp = (topic, partition)
        if tp not in self._leaders:
            self._refresh([topic])
            if tp not in self._leaders:
                raise kerr.UnknownTopicOrPartitionError(f"{topic}-{partition} is not at the cluster")
        if not self.pending():
            # Nothing was outstanding: the silence allowed (timeout) starts now, not at the
            # last acknowledgement, which may be long ago.
            self._last_progress = time.monotonic()
        seq = self._seq.get(tp, 0)
        seal(buf, self.producer_id, self.epoch, seq)
        self._seq[tp] = (seq + count) & 0x7FFFFFFF
        self._pending.setdefault(tp, collections.deque()).append(_Item(tp, buf, count, token))
        self._queued_bytes += len(buf)
        self._pump()
        while self._queued_bytes > MAX_QUEUED_BYTES:
            self._serve(block=True)

    def _pump(self) -> None:
        """Send requests while connections have room: each takes the oldest unsent batch of
        every partition its broker leads (one per partition, as brokers require)."""
        if self.failed is not None:
            return  # nothing more goes out after a refusal: what was queued stays unsent
        by_node: dict[int, list[tuple[str, int]]] = {}
        for tp, q in self._pending.items():
            if q:
                by_node.setdefault(self._leaders[tp], []).append(tp)
        for node, tps in by_node.items():
            try:
                c = self._conn(node)
                while len(c.inflight) < self.max_in_flight:
                    items = [self._pending[tp].popleft() for tp in tps if self._pending[tp]]
                    if not items:
                        break
                    for it in items:
                        self._unacked.setdefault(it.tp, collections.deque()).append(it)
                    c.send(PRODUCE, self._versions[PRODUCE], self._request(items), items)
            except kerr.NetworkError as exc:
                self._reset(exc)
                return

    def _request(self, items: list[_Item]) -> dict[str, Any]:
        topics: dict[str, list[dict[str, Any]]] = {}
        for it in items:
            topics.setdefault(it.tp[0], []).append({"index": it.tp[1], "records": bytes(it.buf)})
        return {"transactional_id": None, "acks": -1, "timeout_ms": int(self.timeout * 1000),
                "topic_data": [{"name": t, "partition_data": ps} for t, ps in topics.items()]}

    def _serve(self, block: bool) -> None:
        """Handle the responses that came (``block``: wait for at least one, up to the
        timeout since the last acknowledgement)."""
        conns = [c for c in self._conns.values() if c.inflight]
        if not conns:
            if block and any(self._pending.values()):
                self._pump()
            return
        left = self._last_progress + self.timeout - time.monotonic()
        if block and left <= 0:
            raise kerr.RequestTimedOutError(
                f"the cluster acknowledged nothing for {self.timeout:g}s; the batches not "
                f"acknowledged ({self.pending()}) may or may not have been written")
        try:
            ready = select.select([c.sock for c in conns], [], [], max(left, 0) if block else 0)[0]
            for c in conns:
                if c.sock not in ready:
                    continue
                c.fill()
                while (got := c.response()) is not None:
                    self._handle(*got)
        except (kerr.NetworkError, _Retry) as exc:
            self._reset(exc)
            return
        self._pump()

    def _handle(self, items: list[_Item], res: dict[str, Any], api_key: int) -> None:
        by = {(t["name"], p["index"]): p for t in res["responses"] for p in t["partition_responses"]}
        retry: BaseException | None = None
        for it in items:
            p = by.get(it.tp)
            err = p["error_code"] if p is not None else 13
            if err in RETRIABLE:
                retry = retry or _Retry(f"{it.tp[0]}-{it.tp[1]}: Kafka error {err}")
                continue
            if err and err != _DUPLICATE_SEQUENCE:
                msg = (p or {}).get("error_message") or ""
                self.failed = kerr.error_for_code(err)(
                    f"the cluster refused a batch of {it.count} records for {it.tp[0]}-{it.tp[1]}"
                    f" (Kafka error {err}){': ' + msg if msg else ''}")
                raise self.failed
            q = self._unacked[it.tp]
            if not q or q[0] is not it:
                # An answer for a batch behind one still unanswered: cannot happen on one
                # connection; resend from the oldest.
                retry = retry or _Retry(f"{it.tp[0]}-{it.tp[1]}: answers out of order")
                continue
            q.popleft()
            base = p["base_offset"] if p is not None else -1
            if base >= 0:
                nxt = base + it.count
            elif it.tp in self._next:  # a duplicate without its offset: right after the last
                nxt = self._next[it.tp] + it.count
            else:
                raise kerr.UnknownServerError(
                    f"{it.tp[0]}-{it.tp[1]}: the cluster acknowledged a batch without its offset")
            self._next[it.tp] = nxt
            self._queued_bytes -= len(it.buf)
            self._last_progress = time.monotonic()
            self._acks.append((it.token, nxt))
        if retry is not None:
            raise retry

    def _reset(self, why: BaseException) -> None:
        """After a retriable failure: drop every connection, find the leaders again and queue
        each partition's unacknowledged batches first, as they were (same sequences)."""
        if time.monotonic() - self._last_progress > self.timeout:
            raise kerr.RequestTimedOutError(
                f"the cluster acknowledged nothing for {self.timeout:g}s (last: {why}); the "
                f"batches not acknowledged ({self.pending()}) may or may not have been "
                f"written") from None
        for c in self._conns.values():
            c.close()
        self._conns.clear()
        for tp, q in self._unacked.items():
            if q:
                pend = self._pending.setdefault(tp, collections.deque())
                pend.extendleft(reversed(q))
                q.clear()
        time.sleep(_BACKOFF_S[min(self.resets, len(_BACKOFF_S) - 1)])
        self.resets += 1
        try:
            self._refresh(())
        except (kerr.NetworkError, kerr.RequestTimedOutError):
            pass  # tried again by the next _pump, within the timeout

    def poll(self, wait: bool = False) -> list[tuple[Any, int]]:
        """``[(token, next_offset)]`` of the batches acknowledged since the last call, in
        order per partition; ``wait``: first until nothing is unacknowledged."""
        self._serve(block=False)
        if wait:
            while any(self._pending.values()) or any(c.inflight for c in self._conns.values()):
                if self.failed is not None:
                    raise self.failed
                self._serve(block=True)
        acks, self._acks = self._acks, []
        return acks

    def pending(self) -> int:
        """Batches not yet acknowledged."""
        return (sum(len(q) for q in self._pending.values())
                + sum(len(q) for q in self._unacked.values()))

    def close(self) -> None:
        self.closed = True
        for c in self._conns.values():
            c.close()
        self._conns.clear()


class _Retry(Exception):
    """A retriable error in a response: resend from the oldest unacknowledged batch."""


# ==============================================================================================
# Fetching whole batches (the mirror from a cluster to a data directory)

FETCH, LIST_OFFSETS = 1, 2
_FETCH_CAP = 11  # the last Fetch with topic names (v13 uses topic ids)
_OFFSET_OUT_OF_RANGE = 1


class FetchedPartition:
    """One partition of a Fetch answer: its batches' bytes (the last may be cut short: a
    broker sends up to the byte limit), where they start, and what the broker said."""

    __slots__ = ("records", "high_watermark", "last_stable_offset", "log_start_offset",
                 "aborted", "error")

    def __init__(self, p: dict[str, Any]) -> None:
        self.records = p["records"] or b""
        self.high_watermark = p["high_watermark"]
        self.last_stable_offset = p["last_stable_offset"]
        self.log_start_offset = p["log_start_offset"]
        self.aborted = [(a["producer_id"], a["first_offset"])
                        for a in (p["aborted_transactions"] or [])]
        self.error = p["error_code"]


class BatchFetcher:
    """Reads whole batches with Fetch, read_committed (stops at the last stable offset and
    names the aborted transactions), from the partitions' leaders, one request per leader.

    ``fetch({(topic, partition): offset})`` -> ``{(topic, partition): FetchedPartition}``;
    retriable errors find the leaders again and retry within ``timeout``."""

    def __init__(self, bootstrap: str, *, timeout: float = 30.0, client_id: str = "kstore-mirror",
                 partition_max_bytes: int = 8 << 20, max_wait_ms: int = 100) -> None:
        self._meta = _Metadata(bootstrap, timeout, client_id)
        self.timeout = timeout
        self.partition_max_bytes = partition_max_bytes
        self.max_wait_ms = max_wait_ms
        theirs = self._meta.versions
        if FETCH not in theirs:
            raise kerr.UnsupportedVersionError("the broker does not serve Fetch")
        lo, hi = theirs[FETCH]
        ours = protocol.known_versions(FETCH)
        v = min(hi, _FETCH_CAP, ours[1] if ours else 0)
        if v < max(lo, 4):  # isolation_level and aborted_transactions came with v4
            raise kerr.UnsupportedVersionError(f"the broker serves Fetch {lo}-{hi}; this client "
                                               f"needs 4-{_FETCH_CAP}")
        self.version = v

    def close(self) -> None:
        self._meta.close()

    def fetch(self, positions: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], FetchedPartition]:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                return self._fetch_once(positions)
            except (kerr.NetworkError, _Retry) as exc:
                if time.monotonic() > deadline:
                    raise kerr.RequestTimedOutError(
                        f"fetching from the cluster failed for {self.timeout:g}s: {exc}") from None
                self._meta.reset()
                time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1

    def _fetch_once(self, positions: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], FetchedPartition]:
        by_node: dict[int, list[tuple[str, int]]] = {}
        for tp in positions:
            by_node.setdefault(self._meta.leader(tp), []).append(tp)
        sent = []
        for node, tps in by_node.items():
            topics: dict[str, list[dict[str, Any]]] = {}
            for t, p in tps:
                topics.setdefault(t, []).append(
                    {"partition": p, "current_leader_epoch": -1, "fetch_offset": positions[(t, p)],
                     "log_start_offset": -1, "partition_max_bytes": self.partition_max_bytes})
            body = {"replica_id": -1, "max_wait_ms": self.max_wait_ms, "min_bytes": 1,
                    "max_bytes": 64 << 20, "isolation_level": 1, "session_id": 0,
                    "session_epoch": -1, "rack_id": "",
                    "topics": [{"topic": t, "partitions": ps} for t, ps in topics.items()]}
            c = self._meta.connection(node)
            c.send(FETCH, self.version, body, [])
            sent.append(c)
        out: dict[tuple[str, int], FetchedPartition] = {}
        deadline = time.monotonic() + self.timeout + self.max_wait_ms / 1000
        for c in sent:
            while (got := c.response()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([c.sock], [], [], left)[0]:
                    raise kerr.NetworkError(f"{c._name()} did not answer a Fetch")
                c.fill()
            res = got[1]
            if res.get("error_code"):
                raise kerr.error_for_code(res["error_code"])(
                    f"the cluster refused a Fetch (Kafka error {res['error_code']})")
            retry = None
            for t in res["responses"]:
                for p in t["partitions"]:
                    fp = FetchedPartition(p)
                    if fp.error in RETRIABLE:
                        retry = _Retry(f"{t['topic']}-{p['partition_index']}: Kafka error "
                                       f"{fp.error}")
                    elif fp.error and fp.error != _OFFSET_OUT_OF_RANGE:
                        raise kerr.error_for_code(fp.error)(
                            f"reading {t['topic']}-{p['partition_index']} from the cluster "
                            f"(Kafka error {fp.error})")
                    out[(t["topic"], p["partition_index"])] = fp
            if retry is not None:
                raise retry
        return out


class _Metadata:
    """Versions, leaders and one connection per broker, for the fetcher."""

    def __init__(self, bootstrap: str, timeout: float, client_id: str) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self.timeout = timeout
        self.client_id = client_id
        self.addresses: dict[int, tuple[str, int]] = {}
        self.leaders: dict[tuple[str, int], int] = {}
        self.conns: dict[int, _Connection] = {}
        c = self._any()
        try:
            res = c.call(API_VERSIONS, 0, {}, timeout)
        finally:
            c.close()
        self.versions = {k["api_key"]: (k["min_version"], k["max_version"])
                         for k in res["api_keys"]}
        lo, hi = self.versions.get(METADATA, (0, -1))
        self.metadata_version = min(hi, _CAPS[METADATA])
        if self.metadata_version < max(lo, 1):
            raise kerr.UnsupportedVersionError(f"the broker serves Metadata {lo}-{hi}")

    def _any(self) -> _Connection:
        return _first_reachable(list(self.addresses.values()) + self.bootstrap, self.timeout,
                                self.client_id)

    def leader(self, tp: tuple[str, int]) -> int:
        node = self.leaders.get(tp)
        if node is None:
            self.refresh({tp[0]} | {t for t, _ in self.leaders})
            node = self.leaders.get(tp)
            if node is None:
                raise _Retry(f"no leader for {tp[0]}-{tp[1]}")
        return node

    def refresh(self, topics: Iterable[str]) -> None:
        c = self._any()
        try:
            res = c.call(METADATA, self.metadata_version,
                         {"topics": [{"name": t} for t in sorted(topics)],
                          "allow_auto_topic_creation": False}, self.timeout)
        finally:
            c.close()
        self.addresses.update({b["node_id"]: (b["host"], b["port"]) for b in res["brokers"]})
        for t in res["topics"]:
            if t["error_code"] and t["error_code"] not in RETRIABLE:
                raise kerr.error_for_code(t["error_code"])(
                    f"topic {t['name']!r} at the cluster (Kafka error {t['error_code']})")
            for p in t["partitions"]:
                if p["leader_id"] >= 0:
                    self.leaders[(t["name"], p["partition_index"])] = p["leader_id"]

    def connection(self, node: int) -> _Connection:
        c = self.conns.get(node)
        if c is None:
            addr = self.addresses.get(node)
            if addr is None:
                raise _Retry(f"broker {node} is not in the metadata")
            c = self.conns[node] = _Connection(addr, self.timeout, self.client_id)
        return c

    def reset(self) -> None:
        """After a failure: new connections and leaders on next use."""
        self.close()
        self.leaders.clear()

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()
