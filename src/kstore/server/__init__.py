"""kstore serve: the Kafka wire protocol over a Store, so Kafka's clients work unchanged.

    store = kstore.open("./kstore-data")
    await kstore.server.serve(store, "127.0.0.1", 9092)      # until cancelled

or ``kstore serve --data ./kstore-data --listen 127.0.0.1:9092``. One asyncio task per
connection reads frames and answers them in order, one at a time (as Kafka does; clients
pipeline and keep a separate connection for the group coordinator). Fetch responses send the
records with ``sendfile`` straight from the segment files (over TLS they are copied, as TLS
must encrypt them). See docs in kstore.server.broker for the APIs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kstore.errors import KStoreError
from kstore.server import protocol
from kstore.server.broker import (
    MANY_TOPICS,
    Broker,
    BrokerConfig,
    _CloseConnection,
    new_cluster_id,
)
from kstore.server.protocol import MalformedRequestError

if TYPE_CHECKING:
    from kstore.store import Store

__all__ = ["Server", "ServerConfig", "serve"]

log = logging.getLogger("kstore.server")

_I32 = struct.Struct(">i")
PRODUCE, METADATA, API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 0, 3, 18, 17, 36
UNSUPPORTED_VERSION = 35
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
MAX_UNAUTHENTICATED_BYTES = 524_288  # sasl.server.max.receive.size
FAILED_AUTHENTICATION_DELAY_S = 0.1  # connection.failed.authentication.delay.ms
# Requests up to this size are read without waiting for the in-flight budget, so that a budget
# held by large uploads never holds up ApiVersions, heartbeats, fetches and commits. Their
# memory is bounded apart: max_connections x this (64 MiB at 1,000 connections).
UNBUDGETED_REQUEST_BYTES = 65_536
# Requests over this size are decoded in a thread (see _handle).
DECODE_IN_THREAD_BYTES = 65_536
# The StreamReader pauses reading a socket when this much (x2) is buffered and unread: the
# bytes a connection holds beyond its request (pipelined requests, or while it waits for the
# budget) stay small.
_STREAM_LIMIT = 1 << 17


@dataclass
class ServerConfig:
    """Settings of a server (Kafka's broker config names in the comments)."""

    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str | None = None  # advertised.listeners; default: the address dialled
    advertised_port: int | None = None
    node_id: int = 1  # node.id
    auto_create_topics: bool = True  # auto.create.topics.enable
    # Topics one Metadata or Produce may auto-create; the rest are answered LEADER_NOT_AVAILABLE
    # (clients retry, and the retry creates the next ones). Kafka has no such cap.
    max_auto_create_per_request: int = 1000
    num_partitions: int = 1  # num.partitions
    delete_topic_enable: bool = True  # delete.topic.enable
    max_request_bytes: int = 104_857_600  # socket.request.max.bytes
    # Bytes of requests being received or handled, server-wide (queued.max.request.bytes): a
    # request over UNBUDGETED_REQUEST_BYTES reserves its size before its body is read, and
    # waits (its socket is not read) while the budget is taken. A request larger than the
    # budget is read when nothing else holds any.
    queued_max_request_bytes: int = 104_857_600
    # Seconds to receive a whole request once its first byte arrived (Kafka has none; a
    # trickling client would otherwise hold its buffer until the idle timeout).
    receive_timeout_s: float = 30.0
    max_connections: int = 1000  # max.connections
    max_connections_per_ip: int = 500  # max.connections.per.ip
    # Seconds a new connection has to send its first request (with SASL: to authenticate).
    first_request_timeout_s: float = 10.0
    idle_timeout_s: float = 600.0  # connections.max.idle.ms
    ssl_context: ssl.SSLContext | None = None
    sasl_users: Any = None  # kstore.server.auth.Users: SASL required when set
    sasl_mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    group_initial_rebalance_delay_ms: int = 3000  # group.initial.rebalance.delay.ms
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1_800_000
    extra: dict[str, str] = field(default_factory=dict)


class _Conn:
    """One client connection's state."""

    __slots__ = (
        "authenticated",
        "client_id",
        "closing",
        "dropped",
        "endpoint",
        "gone",
        "ip",
        "peer",
        "peer_host",
        "reader",
        "sasl",
        "sasl_raw",
        "setup_timer",
        "sock",
        "tls",
        "writer",
    )

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 authenticated: bool) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.ip: str = peer[0]
        self.peer = f"{peer[0]}:{peer[1]}"
        self.setup_timer: asyncio.TimerHandle | None = None
        self.peer_host = f"/{peer[0]}"
        sock = writer.get_extra_info("sockname") or ("127.0.0.1", 9092)
        self.endpoint = (sock[0], sock[1])
        self.client_id = ""
        self.closing = False
        self.dropped = False  # closed by the server (a limit or timer), already logged
        self.authenticated = authenticated
        self.sasl: Any = None  # the SaslAuthenticator of a handshake in progress
        self.sasl_raw = False  # SaslHandshake v0: tokens follow as bare frames
        proto = writer.transport.get_protocol()
        self.gone: asyncio.Future[None] | None = getattr(proto, "gone", None)
        self.tls = writer.get_extra_info("sslcontext") is not None
        self.sock: socket.socket | None = writer.get_extra_info("socket")


class Server:
    """A Kafka-protocol server over ``store``; ``await start()``, then ``await close()``."""

    def __init__(self, store: Store, config: ServerConfig | None = None) -> None:
        from kstore.server.groups import GroupCoordinator

        self.store = store
        self.config = config or ServerConfig()
        cfg = self.config
        self.coordinator = GroupCoordinator(
            store, initial_rebalance_delay_ms=cfg.group_initial_rebalance_delay_ms,
            min_session_timeout_ms=cfg.group_min_session_timeout_ms,
            max_session_timeout_ms=cfg.group_max_session_timeout_ms)
        store.group_activity_hooks.append(self.coordinator.group_activity)
        self.broker = Broker(store, BrokerConfig(
            node_id=cfg.node_id, cluster_id=_cluster_id(store), advertised_host=cfg.advertised_host,
            advertised_port=cfg.advertised_port, auto_create_topics=cfg.auto_create_topics,
            num_partitions=cfg.num_partitions, allow_delete_topics=cfg.delete_topic_enable,
            max_auto_create_per_request=cfg.max_auto_create_per_request,
            broker_config=dict(cfg.extra)), self.coordinator)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()
        # Connections counted against the limits, and per address; the idle ones (waiting for
        # a request's first byte, nothing in flight or parked) in the order they became idle,
        # so the longest-idle one is first.
        self._open: set[_Conn] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._idle: dict[_Conn, None] = {}
        self._budget = _RequestBudget(cfg.queued_max_request_bytes)
        self._versions = protocol.supported_versions()
        self.port = cfg.port

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self._on_client, loop), cfg.host, cfg.port, ssl=cfg.ssl_context,
            reuse_address=True, backlog=1024)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        # Transactions a restart finds open or half-ended: completed, or timed out later.
        await asyncio.to_thread(self.broker.transactions.load)
        if self.broker.transactions.has_transactions():
            self.broker._start_expiry()
        log.info("kstore serving %s on %s:%d%s%s", self.store.path, cfg.host, self.port,
                 " (TLS)" if cfg.ssl_context else "", " (SASL)" if cfg.sasl_users else "")

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await self.broker.close()
        await self.coordinator.close()
        hooks = self.store.group_activity_hooks
        if self.coordinator.group_activity in hooks:
            hooks.remove(self.coordinator.group_activity)

    # ==========================================================================================
    # Connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(reader, writer, authenticated=self.config.sasl_users is None)
        why = self._admit(conn)
        if why is not None:
            log.warning("refusing a connection from %s: %s", conn.peer, why)
            writer.close()
            return
        self._conns.add(task)
        self._open.add(conn)
        self._per_ip[conn.ip] += 1
        conn.setup_timer = asyncio.get_running_loop().call_later(
            self.config.first_request_timeout_s, self._setup_expired, conn)
        sock = conn.sock
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._serve_conn(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away (or was closed by a timer or to make room)
        except asyncio.CancelledError:
            pass
        except _Close as exc:
            if not conn.dropped:
                level = logging.INFO if isinstance(exc, _Gone) else logging.WARNING
                log.log(level, "closing connection from %s (%s): %s", conn.peer, conn.client_id,
                        exc)
        except Exception:
            log.exception("closing connection from %s (%s) after an internal error", conn.peer,
                          conn.client_id)
        finally:
            conn.closing = True
            self._conns.discard(task)
            self._forget(conn)
            writer.close()

    # ------------------------------------------------------------------------------------------
    # Limits: connections per address and in all, idle ones closed first

    def _admit(self, conn: _Conn) -> str | None:
        """Make room for ``conn`` under max.connections.per.ip and max.connections by closing
        the longest-idle connection (of its address, for the first) rather than refusing the
        newcomer, as idle clients reconnect when they need to; refuse only when every
        connection over the limit is busy (a request in flight or parked). Returns why not."""
        cfg = self.config
        if self._per_ip[conn.ip] >= cfg.max_connections_per_ip:
            victim = next((c for c in self._idle if c.ip == conn.ip), None)
            if victim is None:
                return (f"{cfg.max_connections_per_ip} connections from {conn.ip} is the limit "
                        f"(max.connections.per.ip), and none of them is idle")
            self._evict(victim, f"{cfg.max_connections_per_ip} connections from {conn.ip} is "
                                f"the limit (max.connections.per.ip)")
        if len(self._open) >= cfg.max_connections:
            victim = next(iter(self._idle), None)
            if victim is None:
                return (f"{cfg.max_connections} connections is the limit (max.connections), "
                        f"and none of them is idle")
            self._evict(victim, f"{cfg.max_connections} connections is the limit "
                                f"(max.connections)")
        return None

    def _evict(self, conn: _Conn, why: str) -> None:
        log.info("closing idle connection from %s (%s) to make room for a new one: %s",
                 conn.peer, conn.client_id, why)
        self._forget(conn)
        conn.closing = conn.dropped = True
        conn.writer.transport.abort()  # its task sees the close and ends

    def _forget(self, conn: _Conn) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._per_ip[conn.ip] -= 1
            if self._per_ip[conn.ip] <= 0:
                del self._per_ip[conn.ip]
        self._idle.pop(conn, None)
        if conn.setup_timer is not None:
            conn.setup_timer.cancel()
            conn.setup_timer = None

    def _setup_expired(self, conn: _Conn) -> None:
        conn.setup_timer = None
        if conn.closing or conn not in self._open:
            return
        t = self.config.first_request_timeout_s
        what = ("did not authenticate" if self.config.sasl_users is not None
                else "sent no whole request")
        log.warning("closing connection from %s (%s): it %s within %g s of connecting (the "
                    "first-request timeout)", conn.peer, conn.client_id, what, t)
        self._forget(conn)
        conn.closing = conn.dropped = True
        conn.writer.transport.abort()

    def _set_up(self, conn: _Conn) -> None:
        """The connection has sent its first request (and, with SASL, authenticated)."""
        if conn.setup_timer is not None and conn.authenticated:
            conn.setup_timer.cancel()
            conn.setup_timer = None

    # ------------------------------------------------------------------------------------------
    # Reading requests

    async def _read_frame(self, conn: _Conn) -> tuple[bytes | bytearray, int]:
        """The next request frame, and the bytes of the in-flight budget it holds (to be
        released once it has been handled). Raises TimeoutError when no request starts within
        the idle timeout, _Close for a bad or too slow one."""
        cfg = self.config
        reader = conn.reader
        if conn in self._open:
            self._idle[conn] = None
        try:
            # One timeout scope per phase (asyncio.wait_for makes a task and a timer for each
            # await: 9% of a small request's time in a py-spy profile).
            async with asyncio.timeout(cfg.idle_timeout_s):
                first = await reader.readexactly(1)
        finally:
            self._idle.pop(conn, None)
        receive = cfg.receive_timeout_s
        size = -1
        reserved = 0
        try:
            async with asyncio.timeout(receive):
                try:
                    head = first + await reader.readexactly(3)
                except asyncio.IncompleteReadError as exc:
                    raise _Close(f"the client closed the connection {1 + len(exc.partial)} bytes "
                                 f"into a request's 4-byte size") from None
                (size,) = _I32.unpack(head)
                if size < 0 or size > cfg.max_request_bytes:
                    raise _Close(f"request of {size} bytes (socket.request.max.bytes is "
                                 f"{cfg.max_request_bytes})")
                if not conn.authenticated and size > MAX_UNAUTHENTICATED_BYTES:
                    raise _Close(f"request of {size} bytes before SASL authentication (the limit "
                                 f"is {MAX_UNAUTHENTICATED_BYTES}, Kafka's "
                                 f"sasl.server.max.receive.size)")
                if size <= UNBUDGETED_REQUEST_BYTES:
                    try:
                        return await reader.readexactly(size), 0
                    except asyncio.IncompleteReadError as exc:
                        raise _Close(f"the client closed the connection {len(exc.partial)} bytes "
                                     f"into a {size}-byte request") from None
                await self._budget.acquire(size)
                reserved = size
                # Grown as the bytes arrive (never allocated at the announced size), straight
                # into the buffer handed on: no second copy of a large request.
                body = bytearray()
                while len(body) < size:
                    chunk = await reader.read(size - len(body))
                    if not chunk:
                        raise _Close(f"the client closed the connection {len(body)} bytes "
                                     f"into a {size}-byte request")
                    body += chunk
                return body, reserved
        except TimeoutError:
            self._budget.release(reserved)
            if size < 0:
                raise _Close(f"a request's 4-byte size did not arrive within the receive "
                             f"timeout ({receive:g} s)") from None
            raise _Close(f"a {size}-byte request did not arrive within the receive timeout "
                         f"({receive:g} s)") from None
        except BaseException:
            self._budget.release(reserved)
            raise

    async def _serve_conn(self, conn: _Conn) -> None:
        while True:
            try:
                frame, reserved = await self._read_frame(conn)
            except TimeoutError:
                log.info("closing idle connection from %s (%s)", conn.peer, conn.client_id)
                return
            self._set_up(conn)
            try:
                if conn.sasl_raw:
                    await self._sasl_raw_token(conn, frame)
                    continue
                try:
                    hdr = protocol.parse_request_header(frame)
                except MalformedRequestError as exc:
                    raise _Close(f"malformed request header: {exc}") from None
                conn.client_id = hdr.client_id
                await self._handle(conn, hdr, frame)
            finally:
                del frame
                self._budget.release(reserved)

    async def _handle(self, conn: _Conn, hdr: protocol.RequestHeader,
                      frame: bytes | bytearray) -> None:
        key, version = hdr.api_key, hdr.api_version
        rng = self._versions.get(key)
        if key == API_VERSIONS and (rng is None or version > rng[1]):
            # KIP-511: a too-new ApiVersions gets error 35 in the v0 layout with key 18's range,
            # so the client can retry with a version we know.
            lo, hi = self._versions[API_VERSIONS]
            err = struct.pack(">hiHhh", UNSUPPORTED_VERSION, 1, API_VERSIONS, lo, hi)
            await self._write(conn, [_I32.pack(len(err) + 4) + _I32.pack(hdr.correlation_id) + err])
            return
        if rng is None or not rng[0] <= version <= rng[1] or (
                key not in self.broker.handlers and key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE)):
            await self._unsupported_version(conn, hdr, frame, rng)
            return
        if not conn.authenticated and key not in (API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE):
            raise _Close(f"{protocol.api_name(key)} before SASL authentication")
        try:
            # Not exact: Kafka ignores bytes after a request body (RequestContext.parseRequest),
            # and librdkafka 2.16's Metadata v9 for all topics (AdminClient.list_topics) has one
            # more byte than its schema holds (captured in tests/server/test_hostile.py).
            if len(frame) > DECODE_IN_THREAD_BYTES and key != PRODUCE:
                # A large request of many small fields (a Metadata naming 10,000 topics: 25 ms
                # of pure Python) is decoded in a thread: the GIL changes hands every 5 ms, so
                # the other connections keep being served meanwhile. (A Produce is its records,
                # taken as one memoryview: cheap.)
                req = await asyncio.to_thread(protocol.decode, key, False, version, frame,
                                              hdr.body_offset, exact=False)
            else:
                req = protocol.decode(key, False, version, frame, hdr.body_offset, exact=False)
        except MalformedRequestError as exc:
            raise _Close(str(exc)) from None
        if key == SASL_HANDSHAKE:
            res: dict | None = self._sasl_handshake(conn, req, version)
        elif key == SASL_AUTHENTICATE:
            res = await self._sasl_authenticate(conn, req, version)
        else:
            handler = self.broker.handlers[key]
            try:
                out = handler(req, version, conn)
                if asyncio.iscoroutine(out):
                    res = await self._parked(conn, out, protocol.api_name(key))
                else:
                    res = out
            except _CloseConnection as exc:
                raise _Close(str(exc)) from None
        if res is None:
            return  # Produce with acks=0: no response at all
        if key == METADATA and len(res["topics"]) > MANY_TOPICS:
            body = await asyncio.to_thread(protocol.encode, key, True, version, res)  # as above
        else:
            body = protocol.encode(key, True, version, res)
        await self._write(conn, protocol.frame_response(key, version, hdr.correlation_id, body))
        if conn.closing:
            raise _Close("authentication failed")

    async def _unsupported_version(self, conn: _Conn, hdr: protocol.RequestHeader,
                                   frame: bytes | bytearray, rng: tuple[int, int] | None) -> None:
        """A version kstore does not serve of an API it implements: answered UNSUPPORTED_VERSION
        in that version's own response layout (every topic and partition of the request echoed
        with the error), so that the client learns why instead of seeing its connection close.
        A version no schema defines (its layout is unknown) or an unknown API closes the
        connection, as Kafka does; so does a Produce with acks=0, whose client reads no
        response."""
        key, version = hdr.api_key, hdr.api_version
        what = (f"{protocol.api_name(key)} v{version} is not supported (api key {key}; "
                f"supported: {rng})")
        known = protocol.known_versions(key)
        if rng is None or known is None or not known[0] <= version <= known[1]:
            raise _Close(what)
        if not conn.authenticated and key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE):
            raise _Close(f"{what}; sent before SASL authentication")
        try:
            req = protocol.decode(key, False, version, frame, hdr.body_offset, exact=False)
            if key == PRODUCE and req["acks"] == 0:
                raise _Close(what + "; a Produce with acks=0 reads no answer")
            res = protocol.error_response(key, version, req, UNSUPPORTED_VERSION)
            body = protocol.encode(key, True, version, res)
        except MalformedRequestError as exc:
            raise _Close(f"{what}; and the body does not parse: {exc}") from None
        log.info("%s from %s (%s): answered UNSUPPORTED_VERSION", what, conn.peer, conn.client_id)
        await self._write(conn, protocol.frame_response(key, version, hdr.correlation_id, body))

    async def _parked(self, conn: _Conn, coro: Any, what: str) -> Any:
        """Await a handler that may wait (Fetch, JoinGroup, SyncGroup), giving up if the client
        goes away meanwhile."""
        gone = conn.gone
        if gone is None:
            return await coro
        if gone.done():
            coro.close()
            raise _Gone(f"the client went away before its {what} was answered")
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise _Gone(f"the client went away while its {what} was waiting")
        return task.result()

    async def _write(self, conn: _Conn, parts: Iterable[Any]) -> None:
        # A client that stops reading must not hold the connection (and the segment files its
        # response pins) forever: the idle timeout bounds each write too.
        try:
            async with asyncio.timeout(self.config.idle_timeout_s):
                await self._write_parts(conn, parts)
        except TimeoutError:
            raise _Close(f"the client did not read its response within the idle timeout "
                         f"({self.config.idle_timeout_s:g} s)") from None

    async def _write_parts(self, conn: _Conn, parts: Iterable[Any]) -> None:
        w = conn.writer
        loop: asyncio.AbstractEventLoop | None = None
        for p in parts:
            if isinstance(p, bytes | bytearray | memoryview):
                w.write(p)
                continue
            # A FileSlice: sendfile from the segment file (plain TCP), a copy under TLS,
            # drained slice by slice so a large response is never buffered whole.
            if conn.tls:
                w.write(p.read())
                await w.drain()
                continue
            await w.drain()
            if loop is None:
                loop = asyncio.get_running_loop()
            await loop.sendfile(w.transport, cast(Any, _SliceFile(p)), p.position, p.length,
                                fallback=True)
        await w.drain()

    # ==========================================================================================
    # SASL (kafka-protocol.md section 6)

    def _sasl_handshake(self, conn: _Conn, req: dict, version: int) -> dict:
        mechs = [m for m in self.config.sasl_mechanisms] if self.config.sasl_users else []
        mech = req["mechanism"]
        if conn.authenticated or mech not in mechs:
            conn.closing = True
            return {"error_code": UNSUPPORTED_SASL_MECHANISM if not conn.authenticated
                    else ILLEGAL_SASL_STATE, "mechanisms": mechs}
        from kstore.server.auth import SaslAuthenticator

        conn.sasl = SaslAuthenticator(self.config.sasl_users, mech)
        conn.sasl_raw = version == 0
        return {"error_code": 0, "mechanisms": mechs}

    async def _sasl_step(self, conn: _Conn,
                         token: bytes | bytearray) -> tuple[bytes | None, str | None]:
        """One token: (server token, None), or (None, why) on failure. The step runs in a
        thread (PLAIN derives PBKDF2 keys: about a millisecond at 4096 iterations, much more at
        a credential's 1,000,000), and a failure is answered after a delay, as Kafka does, so
        that guessing passwords is slow and never stalls other connections."""
        if conn.sasl is None or conn.authenticated:
            return None, "SaslAuthenticate without a SaslHandshake"
        try:
            out = await asyncio.to_thread(conn.sasl.step, bytes(token))
        except KStoreError as exc:
            log.warning("SASL authentication from %s failed: %s", conn.peer, exc)
            await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
            return None, str(exc)
        if conn.sasl.complete:
            conn.authenticated = True
            self._set_up(conn)
            log.info("%s authenticated as %s", conn.peer, conn.sasl.principal)
        return out, None

    async def _sasl_authenticate(self, conn: _Conn, req: dict, version: int) -> dict:
        if conn.sasl is None or conn.sasl_raw or conn.authenticated:
            conn.closing = True
            return {"error_code": ILLEGAL_SASL_STATE, "error_message":
                    "SaslAuthenticate is not expected now", "auth_bytes": b""}
        out, why = await self._sasl_step(conn, req["auth_bytes"])
        if out is None:
            conn.closing = True
            return {"error_code": SASL_AUTHENTICATION_FAILED,
                    "error_message": f"Authentication failed: {why}", "auth_bytes": b""}
        return {"error_code": 0, "error_message": None, "auth_bytes": out,
                "session_lifetime_ms": 0}

    async def _sasl_raw_token(self, conn: _Conn, token: bytes | bytearray) -> None:
        """SaslHandshake v0: tokens travel as bare int32-length frames; failure is a close."""
        out, why = await self._sasl_step(conn, token)
        if out is None:
            raise _Close(f"SASL authentication failed: {why}")
        if conn.authenticated:
            conn.sasl_raw = False
        await self._write(conn, [_I32.pack(len(out)) + out])


class _RequestBudget:
    """Kafka's queued.max.request.bytes: bytes of requests in flight, server-wide. ``acquire``
    waits its turn (first come, first served, so a large request is not starved by small
    ones) until the bytes fit, or nothing else is held (a request larger than the whole budget
    still goes, alone). The event loop's only: not thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.in_use == 0 or self.in_use + n <= self.limit

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self.in_use += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted, but the waiter was cancelled before it resumed
            else:
                fut.cancel()
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass  # _grant dropped it already
                self._grant()  # the head may have changed
            raise

    def release(self, n: int) -> None:
        if n:
            self.in_use -= n
            self._grant()

    def _grant(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():  # cancelled; its task has not run its cleanup yet
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.in_use += n
            fut.set_result(None)


class _Close(Exception):
    """Close this connection, logging why; the others are not affected."""


class _Gone(_Close):
    """The client closed while a request was parked: routine (every consumer's close does it
    during a long-poll Fetch), logged at info."""


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, plus ``gone``: resolved when the peer closes or the
    connection drops. Nothing reads the socket while a request is parked (a long-poll Fetch, a
    JoinGroup), so without it a vanished client would hold its connection until the wait ends
    (max_wait_ms is the client's to choose, up to 24 days)."""

    def __init__(self, cb: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop), cb, loop=loop)
        self.gone: asyncio.Future[None] = loop.create_future()

    def _set_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def eof_received(self) -> bool:
        self._set_gone()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_gone()
        super().connection_lost(exc)


class _SliceFile:
    """What loop.sendfile needs of a file: a descriptor; it never reads through this object
    on a plain socket (the fallback path reads the slice's bytes)."""

    mode = "rb"

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self._pos = fs.position

    def fileno(self) -> int:
        fd: int = self._fs.file.fd
        return fd

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos
        return pos

    def readinto(self, buf: Any) -> int:  # fallback (e.g. a transport without sendfile)
        mv = self._fs._map
        end = self._fs.position + self._fs.length
        n = max(0, min(len(buf), end - self._pos))
        buf[:n] = mv[self._pos:self._pos + n]
        self._pos += n
        return n


def _cluster_id(store: Store) -> str:
    """Stable across restarts: kept in meta.properties as Kafka does."""
    path = Path(store.path) / "meta.properties"
    props: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                props[k.strip()] = v.strip()
    cid = props.get("cluster.id")
    if cid:
        return cid
    cid = new_cluster_id()
    if not store.read_only:
        from kstore.log.checkpoint import atomic_write

        atomic_write(path, f"#kstore\nversion=1\ncluster.id={cid}\n".encode())
    return cid


async def serve(store: Store, host: str = "127.0.0.1", port: int = 9092,
                **options: Any) -> None:
    """Serve ``store`` on host:port until cancelled. ``options`` are ServerConfig fields."""
    server = Server(store, ServerConfig(host=host, port=port, **options))
    await server.start()
    await server.serve_forever()
