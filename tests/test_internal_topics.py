"""Internal topics (``__consumer_offsets``, any ``__`` name) are written only by kstore's own
offsets code: the embedded API and the CLI refuse to produce to, create, delete or alter them
(InternalTopicError, Kafka's INVALID_TOPIC_EXCEPTION 17). And a record in __consumer_offsets that
cannot be parsed is skipped with one warning instead of failing every group of the store: one
garbage record used to make every group command and every group connection of `kstore serve`
fail."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kstore
from kstore import _core
from kstore import offsets as koffsets
from kstore.errors import InternalTopicError, InvalidTopicError, error_for_code
from kstore.store import REGISTRY

OT = koffsets.OFFSETS_TOPIC
GROUP = "g"
GP = koffsets.group_partition(GROUP)
TS = 1_700_000_000_000


def _kstore(data: Path, *args: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kstore", "--data", str(data), *args],
                          input=input, capture_output=True, timeout=120, check=False)


@pytest.fixture
def store(tmp_path):
    s = kstore.open(tmp_path / "d", retention_check_interval_ms=0)
    s.create_topic("t", partitions=2)
    for p in range(2):
        s.partition("t", p).append_many([b"a", b"b", b"c"])
    s.commit_offsets(GROUP, {("t", 0): (2, "m", 0)})
    yield s
    s.close()


def _state(s: kstore.Store) -> tuple:
    ends = {p: s.partition(OT, p).log_end_offset for p in range(koffsets.OFFSETS_PARTITIONS)
            if (s.path / f"{OT}-{p}").exists()}
    ends = {p: e for p, e in ends.items() if e}
    return ends, (s.path / REGISTRY).read_bytes()


def _raw_batch(key: bytes | None = b"k", value: bytes | None = b"v") -> bytes:
    b = _core.BatchBuilder()
    b.append(value, key=key, timestamp=TS)
    return b.build()


REFUSALS = {
    "send": lambda s: s.producer(linger_ms=0).send(OT, b"junk", key=b"k"),
    "send-linger": lambda s: s.producer(linger_ms=50).send(OT, b"junk", key=b"k"),
    "send_many": lambda s: s.producer().send_many(OT, [b"junk"], keys=[b"k"]),
    "send_many-partition": lambda s: s.producer().send_many(OT, [b"junk"], partition=GP),
    "append_batch": lambda s: s.partition(OT, GP).append_batch(_raw_batch()),
    "append_batches": lambda s: s.partition(OT, GP).append_batches(_raw_batch() * 2),
    "append": lambda s: s.partition(OT, GP).append(b"junk", key=b"k"),
    "append_many": lambda s: s.partition(OT, GP).append_many([b"junk"]),
    "append-other-partition": lambda s: s.partition(OT, (GP + 1) % 50).append(b"junk"),
    "truncate_to": lambda s: s.partition(OT, GP).truncate_to(0),
    "create": lambda s: s.create_topic(OT, partitions=50),
    "create-transaction-state": lambda s: s.create_topic("__transaction_state"),
    "create-dunder": lambda s: s.create_topic("__mine"),
    "delete": lambda s: s.delete_topic(OT),
    "alter-config": lambda s: s.alter_topic_config(OT, {"retention.ms": 1}),
    "alter-config-reset": lambda s: s.alter_topic_config(OT, {"cleanup.policy": None}),
    "create-partitions": lambda s: s.create_partitions(OT, 60),
    "delete-records": lambda s: s.delete_records({(OT, GP): -1}),
    "delete-records-mixed": lambda s: s.delete_records({("t", 0): 1, (OT, GP): -1}),
}


@pytest.mark.parametrize("action", sorted(REFUSALS))
def test_the_public_api_cannot_touch_an_internal_topic(store, action):
    before = _state(store)
    before_t0 = store.partition("t", 0).log_start_offset
    with pytest.raises(InternalTopicError) as ei:
        REFUSALS[action](store)
    exc = ei.value
    assert isinstance(exc, InvalidTopicError) and exc.code == 17
    assert error_for_code(17) is InvalidTopicError
    assert "internal" in str(exc) and "__" in str(exc)
    assert _state(store) == before  # nothing appended, created or changed
    assert store.partition("t", 0).log_start_offset == before_t0  # all or nothing
    # kstore's own offsets code still writes it
    store.commit_offsets(GROUP, {("t", 1): (3, "", 0)})
    assert store.committed(GROUP, "t", 0) == 2 and store.committed(GROUP, "t", 1) == 3


def test_kstores_own_offsets_code_keeps_writing_the_internal_topic(tmp_path):
    now = [TS]
    s = kstore.open(tmp_path / "d", retention_check_interval_ms=0, clock=lambda: now[0],
                    offsets_retention_minutes=1)
    s.create_topic("t", partitions=2)
    s.partition("t", 0).append_many([b"a", b"b", b"c"])
    s.alter_topic_config("t", {"retention.ms": 86_400_000})
    c = s.consumer(group=GROUP, topics=["t"], enable_auto_commit=False,
                   auto_offset_reset="earliest")
    assert len(c.poll(timeout=5)) == 3
    c.commit()
    assert s.committed(GROUP, "t", 0) == 3
    s.commit_offsets("other", {("t", 1): (0, "", 0)})
    assert s.delete_group_offsets("other") == [("t", 1)]
    c.close()
    now[0] += 120_000
    assert s.expire_offsets() == {GROUP: [("t", 0), ("t", 1)]}  # tombstones: internal appends
    assert s.committed(GROUP, "t", 0) is None
    # compaction of __consumer_offsets (the cleaner rewrites segments of the internal topic)
    lg = s.partition(OT, GP)
    s.commit_offsets(GROUP, {("t", 0): (1, "", 0)})
    lg.roll()
    s.run_maintenance()
    assert s.committed(GROUP, "t", 0) == 1
    s.close()
    with kstore.open(tmp_path / "d", retention_check_interval_ms=0) as s2:
        assert s2.committed(GROUP, "t", 0) == 1 and s2.committed("other", "t", 1) is None


@pytest.mark.parametrize("args", [
    ["produce", OT],
    ["produce", OT, "-K", ":"],
    ["topics", "create", OT, "--partitions", "50"],
    ["topics", "create", "__anything"],
    ["topics", "delete", OT],
    ["topics", "alter", OT, "--config", "retention.ms=1"],
    ["topics", "alter", OT, "--partitions", "60"],
], ids=lambda a: "-".join(a[:2]) + ("-" + a[-1] if len(a) > 3 else ""))
def test_the_cli_cannot_touch_an_internal_topic(tmp_path, args):
    data = tmp_path / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t")
        s.partition("t", 0).append(b"x")
        s.commit_offsets(GROUP, {("t", 0): (1, "", 0)})
        before = _state(s)
    r = _kstore(data, *args, input=b"k:garbage\n")
    err = r.stderr.decode()
    assert r.returncode not in (0, None), err
    assert "internal" in err, err
    assert "Traceback" not in err
    with kstore.open(data, retention_check_interval_ms=0) as s:
        assert _state(s) == before
        assert s.committed(GROUP, "t", 0) == 1


# ==============================================================================================
# Garbage in __consumer_offsets


def _key(group: str = GROUP, topic: str = "t", partition: int = 0) -> bytes:
    return koffsets.encode_offset_commit_key(group, topic, partition)


def _value(offset: int) -> bytes:
    return koffsets.encode_offset_commit_value(offset, 0, "", TS)


def _str16(b: bytes) -> bytes:
    return struct.pack(">h", len(b)) + b


V3 = _value(7)
# (name, key, value): each is a record kstore cannot use.
GARBAGE = [
    ("null-key", None, V3),
    ("empty-key", b"", V3),
    ("one-byte-key", b"\x00", V3),
    ("unknown-key-type-16", struct.pack(">h", 16) + _key()[2:], V3),
    ("unknown-key-type-99", struct.pack(">h", 99) + b"junk", V3),
    ("negative-key-type", struct.pack(">h", -1) + _key()[2:], V3),
    ("random-key", bytes(range(200, 256)), V3),
    ("key-string-overruns", struct.pack(">hh", 1, 500) + b"g", V3),
    ("key-negative-string-length", struct.pack(">hh", 1, -5) + b"g", V3),
    ("key-truncated-partition", _key()[:-2], V3),
    ("key-trailing-bytes", _key() + b"\x00", V3),
    ("key-bad-utf8-group", struct.pack(">h", 1) + _str16(b"\xff\xfe") + _str16(b"t")
     + struct.pack(">i", 0), V3),
    ("key-illegal-topic-name", _key(topic="bad/topic"), V3),
    ("key-empty-topic-name", _key(topic=""), V3),
    ("key-negative-partition", _key(partition=-1), V3),
    ("empty-value", _key(), b""),
    ("one-byte-value", _key(), b"\x00"),
    ("value-unknown-version-99", _key(), struct.pack(">h", 99) + V3[2:]),
    ("value-negative-version", _key(), struct.pack(">h", -3) + V3[2:]),
    ("value-truncated", _key(), V3[:-3]),
    ("value-trailing-bytes", _key(), V3 + b"\x01\x02"),
    ("value-metadata-overruns", _key(), V3[:14] + struct.pack(">h", 9000) + V3[16:]),
    ("value-v4-bad-tagged-fields", _key(), struct.pack(">hqi", 4, 7, 0) + b"\x01"
     + struct.pack(">q", TS) + b"\xff\xff\xff\xff\xff\xff"),
    ("random-value", _key(), bytes(range(0, 256, 3))),
    ("group-metadata-one-byte-value", koffsets.encode_group_metadata_key(GROUP), b"\x01"),
    ("group-metadata-negative-version", koffsets.encode_group_metadata_key(GROUP),
     struct.pack(">h", -1)),
]


def _fill_with_garbage(data: Path) -> dict[int, str]:
    """A store whose group GROUP has good commits before, between and after every kind of
    garbage record (written through the internal path, bypassing the guards).
    Returns {offset of each bad record: its name}."""
    bad: dict[int, str] = {}
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t", partitions=2)
        for p in range(2):
            s.partition("t", p).append_many([b"%d" % i for i in range(10)])
        s.commit_offsets(GROUP, {("t", 0): (1, "", 0), ("t", 1): (9, "", 0)})
        s.commit_offsets("h", {("t", 0): (4, "", 0)})
        lg = s.partition(OT, GP)
        for i, (name, key, value) in enumerate(GARBAGE):
            first, _, _ = lg.append_batch(_raw_batch(key, value), validate_records=False, _internal=True)
            bad[first] = name
            s.commit_offsets(GROUP, {("t", 0): (2 + i % 5, "", 0)})
        # a whole garbage batch: several bad records in one
        b = _core.BatchBuilder()
        for name, key, value in GARBAGE[:4]:
            b.append(value, key=key, timestamp=TS)
        first, last, _ = lg.append_batch(b.build(), validate_records=False, _internal=True)
        for o in range(first, last + 1):
            bad[o] = GARBAGE[o - first][0]
        s.commit_offsets(GROUP, {("t", 0): (8, "last good", 0)})
    return bad


def _check_group(s: kstore.Store) -> None:
    assert s.committed(GROUP, "t", 0) == 8
    assert s.committed(GROUP, "t", 1) == 9
    assert s.committed("h", "t", 0) == 4
    assert s.groups() == ["g", "h"]
    d = s.describe_group(GROUP)
    assert [(p["topic"], p["partition"], p["committed"]) for p in d["partitions"]] == [
        ("t", 0, 8), ("t", 1, 9)]


def _bad_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "kstore.store" and r.levelno >= logging.WARNING]


def test_garbage_in_consumer_offsets_is_skipped_once_each_and_good_commits_survive(
        tmp_path, caplog):
    data = tmp_path / "d"
    bad = _fill_with_garbage(data)
    # The filling Store replays what was appended behind its cache (as it would another
    # process's commits) and warns once itself; count the reopened Store's warnings only.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = kstore.open(data, retention_check_interval_ms=0)
        try:
            _check_group(s)
            _check_group(s)  # cached: no second round of warnings
            warned = _bad_warnings(caplog)
            tp = f"{OT}-{GP}"
            for off, name in bad.items():
                hits = [w for w in warned if f"offset {off} of {tp}" in w]
                assert len(hits) == 1, (name, off, warned)
            # Consumer commit/committed still work on top of it
            c = s.consumer(group=GROUP, topics=["t"], enable_auto_commit=False)
            got = c.poll(timeout=5)
            assert sorted((r.partition, r.offset) for r in got) == [(0, 8), (0, 9), (1, 9)]
            c.commit()
            assert s.committed(GROUP, "t", 0) == 10 and s.committed(GROUP, "t", 1) == 10
            c.close()
        finally:
            s.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ro = kstore.open(data, read_only=True)
        try:
            assert ro.committed(GROUP, "t", 0) == 10
            n = len(_bad_warnings(caplog))
            assert n == len(bad)
            assert ro.committed(GROUP, "t", 0) == 10  # a read-only store replays again:
            assert len(_bad_warnings(caplog)) == n     # but warns once per record
        finally:
            ro.close()


def test_a_crc_damaged_batch_mid_consumer_offsets_is_skipped(tmp_path, caplog):
    """Not at the tail (so recovery keeps it), a batch failing its CRC is skipped whole with a
    warning; the commits on both sides of it load."""
    data = tmp_path / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t")
        s.partition("t", 0).append_many([b"x"] * 10)
        s.commit_offsets(GROUP, {("t", 0): (3, "", 0)})
        lg = s.partition(OT, GP)
        at = lg.log_end_offset
        pos = lg.segments()[-1].size
        s.commit_offsets(GROUP, {("t", 0): (5, "", 0)})
        s.commit_offsets("h", {("t", 0): (6, "", 0)})
        seg = lg.segments()[-1].path
    with open(seg, "r+b") as f:  # flip a byte of the second commit's value: its CRC fails
        f.seek(pos + 61 + 10)
        byte = f.read(1)
        f.seek(pos + 61 + 10)
        f.write(bytes([byte[0] ^ 0x55]))
    with caplog.at_level(logging.WARNING), kstore.open(data, retention_check_interval_ms=0) as s:
        assert s.committed(GROUP, "t", 0) == 3  # the damaged commit is not applied
        assert s.committed("h", "t", 0) == 6
        assert s.groups() == ["g", "h"]
    hits = [w for w in _bad_warnings(caplog) if f"offsets {at}..{at}" in w]
    assert len(hits) == 1, _bad_warnings(caplog)


def test_cli_group_commands_work_over_garbage(tmp_path):
    data = tmp_path / "d"
    _fill_with_garbage(data)
    with kstore.open(data, retention_check_interval_ms=0):
        pass  # recover once, so the CLI (read-only) sees the recovered log
    r = _kstore(data, "groups", "list", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert {g["group"] for g in json.loads(r.stdout)} == {"g", "h"}
    r = _kstore(data, "groups", "describe", GROUP, "--json")
    assert r.returncode == 0, r.stderr.decode()
    rows = json.loads(r.stdout)
    text = json.dumps(rows)
    assert '"committed": 8' in text and '"committed": 9' in text, text
    assert "skipping the record at offset" in r.stderr.decode()


def _damage_mid_offsets_batch(tmp_path, fn):
    """Commits (3, then a damaged one, then 7 and 8 on other partitions of the same group, all in
    one __consumer_offsets partition); the middle commit's batch damaged by ``fn``."""
    data = tmp_path / "d"
    with kstore.open(data, retention_check_interval_ms=0) as s:
        s.create_topic("t", partitions=3)
        for tp in range(3):
            s.partition("t", tp).append_many([b"x"] * 10)
        s.commit_offsets(GROUP, {("t", 0): (3, "", 0)})
        lg = s.partition(OT, GP)
        pos = lg.segments()[-1].size
        s.commit_offsets(GROUP, {("t", 0): (5, "", 0)})
        size = lg.segments()[-1].size - pos
        s.commit_offsets(GROUP, {("t", 1): (7, "", 0)})
        s.commit_offsets(GROUP, {("t", 2): (8, "", 0)})
        seg = lg.segments()[-1].path
        lg.roll()  # a closed segment: a clean open does not recover it, reads meet the damage
    raw = bytearray(seg.read_bytes())
    fn(raw, pos, size)
    seg.write_bytes(bytes(raw))
    return data


from tests.log.damage import HEADER_DAMAGE  # noqa: E402


@pytest.mark.parametrize("read_only", [False, True], ids=["writer", "read_only"])
@pytest.mark.parametrize("name", sorted(HEADER_DAMAGE))
def test_any_damaged_header_mid_consumer_offsets_skips_only_that_batch(tmp_path, caplog, name,
                                                                       read_only):
    """Every header field of a mid-partition offsets batch damaged (the class of fault, not only
    its CRC): the commits before and after it still load, the damage is logged, nothing fails.
    (Reads raise CorruptRecordError at a damaged header; the replay must step past it.)"""
    data = _damage_mid_offsets_batch(tmp_path, HEADER_DAMAGE[name][0])
    with caplog.at_level(logging.WARNING), kstore.open(data, retention_check_interval_ms=0,
                                                        read_only=read_only) as s:
        assert s.committed(GROUP, "t", 0) in (3, 5)  # 5 only if the damage left it readable
        assert s.committed(GROUP, "t", 1) == 7
        assert s.committed(GROUP, "t", 2) == 8
        assert s.groups() == [GROUP]
        damaged_applied = s.committed(GROUP, "t", 0) == 5
    if not damaged_applied:
        assert any("skipping" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING), caplog.text[-2000:]
