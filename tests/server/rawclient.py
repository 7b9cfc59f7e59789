"""A minimal Kafka client over a raw socket, for tests that need exact requests: it frames
requests with kstore.server.protocol and decodes the responses (real clients are tested in the
test_kcat / test_confluent / test_kafka_python files)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import kstore
from kstore.server import Server, ServerConfig, protocol


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes; ConnectionError if the peer closes first."""
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def read_frame(sock: socket.socket) -> bytes:
    """One int32-size-prefixed frame (without its size)."""
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    return recv_exact(sock, size)


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.corr = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, api_key: int, version: int, body: dict[str, Any]) -> int:
        self.corr += 1
        self.sock.sendall(protocol.encode_request(api_key, version, self.corr, body, "rawclient"))
        return self.corr

    def recv_frame(self) -> bytes:
        return read_frame(self.sock)

    def recv(self, api_key: int, version: int, corr: int | None = None) -> dict[str, Any]:
        data = self.recv_frame()
        (got,) = struct.unpack_from(">i", data, 0)
        if corr is not None:
            assert got == corr, f"correlation id {got}, expected {corr}"
        pos = 4
        if protocol.is_flexible(api_key, version) and api_key != 18:
            assert data[4] == 0, "response header tags"
            pos = 5
        return protocol.decode(api_key, True, version, data, pos)

    def call(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        corr = self.send(api_key, version, body)
        return self.recv(api_key, version, corr)


class ServerThread:
    """An in-process server on its own event loop thread (port 0: a free port)."""

    def __init__(self, data: Any, **config: Any) -> None:
        self.store = kstore.open(data, retention_check_interval_ms=0)
        config.setdefault("group_initial_rebalance_delay_ms", 0)
        self.server = Server(self.store, ServerConfig(port=0, **config))
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.port = self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def call_soon(self, fn: Any, *args: Any) -> Any:
        """Run fn on the server's loop and wait for it (to touch the store safely)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed back to the test
                box.append(exc)
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def client(self) -> RawClient:
        return RawClient(self.port)

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.close(), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self.store.close()
