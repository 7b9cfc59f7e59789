"""One Store-API suite, two backends (STYLE.md: "one suite, two implementations").

``store`` is parametrized over ``embedded`` (``kstore.open(tmp_path)``) and ``cluster``
(``kstore.connect`` at one ``kstore serve`` subprocess started for the whole session, the
stand-in for a Kafka cluster here). Tests isolate themselves on the shared server by unique
topic and group names (``names``). Where the backends legitimately differ, a test asks
``backend`` and asserts each side's documented behaviour.

The server runs with ``--no-auto-create`` (the embedded store creates no topic by itself) and
``--group-initial-rebalance-delay-ms 0`` (a group's first member gets its partitions without
Kafka's 3 s wait).
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kstore
from tests.server.conftest import KServer, kserver, wait_until  # noqa: F401 - kserver: a fixture

BACKENDS = ("embedded", "cluster")


@pytest.fixture(scope="session")
def cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServer]:
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed "
                        "(pip install -e '.[test]')")
    base = tmp_path_factory.mktemp("api-cluster")
    srv = KServer(base / "data", ["--no-auto-create", "--group-initial-rebalance-delay-ms", "0",
                                  "--log-level", "warning"], None, base, "api-server")
    srv.start()
    yield srv
    log = srv.stop(check=False)
    print(f"==== api server log ====\n{log[-20000:]}")
    KServer.check_log(log)
    assert srv.returncodes == [0], f"kstore serve exited with {srv.returncodes}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect_url(request: pytest.FixtureRequest) -> str:
    srv = request.getfixturevalue("cluster_server")
    return f"kafka://{srv.bootstrap}"


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    if backend == "embedded":
        s: Any = kstore.open(tmp_path / "data")
    else:
        s = kstore.connect(request.getfixturevalue("connect_url"))
    yield s
    s.close()


_counter = itertools.count()


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``names("t")`` -> a topic/group name unique to this test (the server is shared)."""
    base = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:80]
    tag = uuid.uuid4().hex[:6]

    def make(kind: str = "t") -> str:
        return f"{base}-{kind}-{tag}-{next(_counter)}"

    return make


def poll_all(consumer: Any, n: int, timeout: float = 30.0, **kw: Any) -> list[Any]:
    """Poll until ``n`` records came (fails after ``timeout``); returns them in arrival order."""
    out: list[Any] = []

    def enough() -> bool:
        out.extend(consumer.poll(timeout=0.2, **kw))
        return len(out) >= n

    wait_until(enough, timeout, f"{n} records (got {len(out)})", interval=0)
    return out
