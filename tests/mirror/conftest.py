"""One ``kstore serve`` per test module (tests use their own topic names), data directories
per test, and helpers to read a whole partition and a group's commits for comparison."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import KServer

pytest.importorskip("confluent_kafka", reason="kstore mirror needs confluent-kafka ([test] extra)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServer]:
    d = tmp_path_factory.mktemp("serve")
    srv = KServer(d / "data", [], None, d, "server").start()
    yield srv
    srv.stop()


def records_of(store: Any, topic: str, partition: int) -> list[tuple]:
    """Every record of a partition as (offset, key, value, headers, timestamp)."""
    lg = store.partition(topic, partition)
    out, off = [], lg.log_start_offset
    while off < lg.log_end_offset:
        recs = lg.read_records(off, 1 << 22)
        if not recs:
            break
        out += [(r.offset, r.key, r.value, tuple(r.headers), r.timestamp) for r in recs]
        off = recs[-1].offset + 1
    return out


def commits_of(store: Any, group: str) -> dict[tuple[str, int], tuple[int, str]]:
    return {(r["topic"], r["partition"]): (r["committed"], r["metadata"])
            for r in store.describe_group(group)["partitions"]}


def server_store(srv: KServer) -> Any:
    """The server's data directory, read-only beside it."""
    import kstore

    return kstore.open(srv.data, read_only=True)


@pytest.fixture
def url(server: KServer) -> str:
    return f"kafka://{server.bootstrap}"


@pytest.fixture
def src_dir(tmp_path: Path) -> Path:
    return tmp_path / "src"
