"""A flush that flush.messages / flush.ms asks for, failing after the batch is written (a full
disk refusing the recovery-point checkpoint, an fsync error), must not turn a stored batch into
a failed append: readers already see it, so an error would make a producer's retry store it a
second time (an idempotent producer's retry was not recognised as a duplicate). The append
returns its offsets and the failure is logged at ERROR; after a failed fsync the recovery point
stays behind."""

from __future__ import annotations

import errno
import logging
import os
import time

import pytest

import kstore
from kstore.errors import KafkaStorageError
from kstore.log import checkpoint


@pytest.fixture
def failing_flush(monkeypatch):
    """``fail[kind] = n``: the next n recovery-point writes ("checkpoint") or fsyncs ("fsync")
    are refused by the disk."""
    fail = {"checkpoint": 0, "fsync": 0}
    real_update = checkpoint.CheckpointFile.update
    real_fsync = os.fsync

    def update(self, changes):
        if fail["checkpoint"] and self.path.name == checkpoint.RECOVERY_POINT:
            fail["checkpoint"] -= 1
            raise KafkaStorageError(f"cannot write {self.path}: No space left on device")
        return real_update(self, changes)

    def fsync(fd):
        if fail["fsync"]:
            fail["fsync"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.CheckpointFile, "update", update)
    monkeypatch.setattr(os, "fsync", fsync)
    return fail


@pytest.mark.parametrize("kind", ["checkpoint", "fsync"])
def test_a_failed_flush_after_the_write_does_not_fail_the_append(tmp_path, caplog,
                                                                failing_flush, kind):
    with kstore.open(tmp_path / "d", retention_check_interval_ms=0) as s:
        s.create_topic("t", 1, {"flush.messages": 1})
        lg = s.partition("t", 0)
        lg.append(b"zero")
        rp = lg.recovery_point
        failing_flush[kind] = 1
        with caplog.at_level(logging.ERROR, logger="kstore.log"):
            first, last, _ = lg.append(b"one")
        assert (first, last) == (1, 1) and lg.log_end_offset == 2
        assert [r.value for r in lg.read_records(0)] == [b"zero", b"one"]
        if kind == "fsync":
            assert lg.recovery_point == rp  # not known to be on disk
        assert any("offsets 1..1 are appended, but the flush" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)
        lg.append(b"two")  # the next flush goes through and moves the recovery point
        assert lg.recovery_point == 3


def test_idempotent_retry_after_a_failed_flush_is_stored_once(tmp_path, failing_flush):
    ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    from tests.server.rawclient import ServerThread
    srv = ServerThread(tmp_path / "d")
    try:
        srv.call_soon(lambda: srv.store.create_topic("w", 1, {"flush.messages": 1}))
        p = ck.Producer({"bootstrap.servers": f"127.0.0.1:{srv.port}", "enable.idempotence": True,
                         "linger.ms": 0, "message.timeout.ms": 20000, "retry.backoff.ms": 50})
        done = []
        failing_flush["checkpoint"] = 1
        p.produce("w", b"only-once", on_delivery=lambda err, m: done.append((err, m.offset())))
        p.flush(30)
        assert done == [(None, 0)]
        deadline = time.monotonic() + 10
        while srv.call_soon(lambda: srv.store.partition("w", 0).log_end_offset) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        recs = srv.call_soon(lambda: [r.value for r in srv.store.partition("w", 0).read_records(0)])
        assert recs == [b"only-once"]
    finally:
        srv.stop()
