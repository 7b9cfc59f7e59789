"""Fetch over the wire from a segment with a damaged batch (issue 13, item 1).

Before, a damaged header ended the broker's read as if the segment ended there: the answer
had error_code 0 and the rest of the segment (1,300 records) was skipped without a word. Now a
Fetch that starts at the damaged batch is answered CORRUPT_MESSAGE (2) for that partition, as
Kafka answers when its log read meets a batch it cannot parse; a Fetch that starts before it
gets the good batches before it with no error. Damage only the CRC shows is answered the same
way: Kafka's broker leaves the CRC to the client, but librdkafka does not check it by default,
so kstore checks every batch it sends.
"""

from __future__ import annotations

import shutil

import pytest

from kstore.records import iter_batches
from tests.log import damage as D
from tests.server.rawclient import ServerThread

FETCH = 1
TOPICS = {name: f"d-{name}" for name in D.DAMAGES}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    data = tmp_path_factory.mktemp("fetchdamage") / "data"
    D.build(data, list(TOPICS.values()))
    damages = {name: D.damage(data, topic, name) for name, topic in TOPICS.items()}
    s = ServerThread(data)
    s.damages = damages
    yield s
    s.stop()


def fetch(client, topic: str, offset: int, max_bytes: int) -> dict:
    res = client.call(FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": max_bytes,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [
            {"partition": 0, "current_leader_epoch": -1, "fetch_offset": offset,
             "log_start_offset": -1, "partition_max_bytes": max_bytes}]}],
        "forgotten_topics_data": [], "rack_id": ""})
    return res["responses"][0]["partitions"][0]


def records(raw) -> list:
    """Decode as a client does, CRCs checked; a partial batch at the end is dropped."""
    return [r for b in iter_batches(bytes(raw), allow_partial=True) for r in b.records()]


@pytest.mark.parametrize("name", D.DAMAGES)
def test_fetch_at_the_damaged_batch_answers_corrupt_message(srv, name):
    dmg = srv.damages[name]
    with srv.client() as c:
        for offset in (dmg.lo, (dmg.lo + dmg.hi) // 2, dmg.hi):
            p = fetch(c, TOPICS[name], offset, 1 << 20)
            if dmg.structural or offset <= dmg.last:
                # Damage only the CRC shows is answered the same: clients that do not check
                # CRCs (librdkafka's default) would take the damaged values for data.
                assert p["error_code"] == 2, (offset, p["error_code"])
                assert bytes(p["records"]) == b""
                if dmg.structural:
                    assert p["high_watermark"] == dmg.end
        # Past the damage, the partition reads on.
        p = fetch(c, TOPICS[name], dmg.hi + 1, 1 << 20)
        assert p["error_code"] == 0
        got = records(p["records"])
        assert got[0].offset == dmg.hi + 1 and got[0].value == D.value(dmg.hi + 1)


@pytest.mark.parametrize("name", D.DAMAGES)
def test_client_walking_the_partition_gets_every_good_record_then_the_error(srv, name):
    """A client fetching from 0 (64 KiB at a time) receives every offset before the damage,
    in order and intact, then CORRUPT_MESSAGE at the damage."""
    dmg = srv.damages[name]
    got: list[int] = []
    with srv.client() as c:
        offset = 0
        while offset < dmg.end:
            p = fetch(c, TOPICS[name], offset, 65536)
            if p["error_code"] == 2:
                break
            assert p["error_code"] == 0
            # Every batch sent is whole and sound: the damaged one is never among them.
            recs = [r for r in records(p["records"]) if r.offset >= offset]
            assert recs, offset
            for r in recs:
                assert r.value == D.value(r.offset)
            got += [r.offset for r in recs]
            offset = recs[-1].offset + 1
    assert got == list(range(dmg.lo))
    assert offset == dmg.lo


def test_server_logs_the_damage_once(tmp_path, caplog):
    data = tmp_path / "data"
    D.build(data, ["one"])
    dmg = D.damage(data, "one", "length_past_the_file")
    s = ServerThread(data)
    try:
        with caplog.at_level("ERROR", logger="kstore.server"), s.client() as c:
            for _ in range(3):
                assert fetch(c, "one", dmg.lo, 1 << 20)["error_code"] == 2
    finally:
        s.stop()
    lines = [r.getMessage() for r in caplog.records if "corrupt batch" in r.getMessage()]
    assert len(lines) == 1, lines
    assert dmg.path.name in lines[0] and f"{dmg.lo}..{dmg.hi}" in lines[0], lines


def test_fresh_copy_is_unaffected(tmp_path):
    """The pristine data reads whole over the wire (checked reads flag nothing valid)."""
    data = tmp_path / "data"
    D.build(data, ["ok"])
    s = ServerThread(data)
    try:
        with s.client() as c:
            got, offset = [], 0
            while offset < D.BATCHES * D.BATCH:
                p = fetch(c, "ok", offset, 65536)
                assert p["error_code"] == 0
                recs = [r for r in records(p["records"]) if r.offset >= offset]
                got += [r.offset for r in recs]
                offset = recs[-1].offset + 1
        assert got == list(range(D.BATCHES * D.BATCH))
    finally:
        s.stop()
    shutil.rmtree(data)


# ---- large fetches: the span is longer than the index jump, the damage in its middle --------

BIG_BATCHES = 300  # ~1 KiB each, one 1 MB segment: a 1 MiB fetch spans all of them
STRUCTURAL = sorted(D.HEADER_DAMAGE)  # every field: structural ones and those only the CRC shows


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One topic per structural damage: a single closed segment of 300 batches with a dense
    offset index, batch 150 damaged, so a 1 MiB Fetch from 0 crosses it in mid-span."""
    import kstore
    from kstore.records import scan
    data = tmp_path_factory.mktemp("bigfetch") / "data"
    with kstore.open(data, retention_check_interval_ms=0) as store:
        for name in STRUCTURAL:
            store.create_topic(f"b-{name}", 1, config={"segment.bytes": 1 << 20,
                                                       "index.interval.bytes": 1024})
            lg = store.partition(f"b-{name}", 0)
            for i in range(BIG_BATCHES):
                lg.append_batch(D.make_batch(i * D.BATCH))
            lg.roll()
    victims = {}
    for name in STRUCTURAL:
        path = sorted((data / f"b-{name}-0").glob("*.log"))[0]
        raw = bytearray(path.read_bytes())
        res = scan(raw)
        pos, size = int(res.positions[150]), int(res.sizes[150])
        D.HEADER_DAMAGE[name][0](raw, pos, size)
        path.write_bytes(bytes(raw))
        victims[name] = int(res.base_offsets[150])
    s = ServerThread(data)
    s.victims = victims
    yield s
    s.stop()


@pytest.mark.parametrize("name", STRUCTURAL)
def test_large_fetch_never_carries_a_damaged_header_in_mid_span(big, name):
    """With 1 MiB fetches (past the 64 KiB where reads jump through the offset index), every
    batch sent is a whole, sound batch and the damaged one is never among them: the client gets
    the good records before it, in order, then CORRUPT_MESSAGE, as with small fetches."""
    victim = big.victims[name]
    got: list[int] = []
    with big.client() as c:
        offset = 0
        for _ in range(BIG_BATCHES):
            p = fetch(c, f"b-{name}", offset, 1 << 20)
            if p["error_code"] == 2:
                break
            assert p["error_code"] == 0
            raw = bytes(p["records"])
            batches = list(iter_batches(raw))  # no partial batch, no garbage after the last
            assert sum(b.size for b in batches) == len(raw)
            recs = [r for b in batches for r in b.records() if r.offset >= offset]
            assert recs, offset
            got += [r.offset for r in recs]
            offset = recs[-1].offset + 1
    assert got[:victim] == list(range(victim)) and offset <= victim
